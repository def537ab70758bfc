"""A PC/SC transport for :class:`~mynapoint.identity.jpki.client.JpkiClient`, using pyscard.

pyscard (LGPL) is imported lazily, so this module imports on machines without it; using the transport
there raises :class:`PcscUnavailableError`.  pyscard builds from source with Debian ``swig`` and
``libpcsclite-dev`` and needs a running ``pcscd``.

APDUs are never logged here (a VERIFY carries the PIN).
"""

from __future__ import annotations

import importlib
from types import ModuleType, TracebackType
from typing import Any

__all__ = ["PcscError", "PcscTransport", "PcscUnavailableError", "list_readers"]


class PcscError(Exception):
    """PC/SC failed: no reader, no card, or the service is not running."""


class PcscUnavailableError(PcscError):
    """pyscard is not installed."""


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PcscUnavailableError(
            "pyscard is not installed: pip install pyscard==2.3.1 (needs Debian swig and libpcsclite-dev)"
        ) from exc


def _reader_objects() -> list[Any]:
    system = _import("smartcard.System")
    try:
        found: list[Any] = list(system.readers())
    except Exception as exc:  # pyscard raises its own exception types when pcscd is not running
        raise PcscError(f"cannot list PC/SC readers (is pcscd running?): {exc}") from exc
    return found


def list_readers() -> list[str]:
    """Names of the PC/SC readers pcscd knows."""
    return [str(reader) for reader in _reader_objects()]


def _release(connection: Any, exceptions: ModuleType) -> None:
    try:
        connection.release()
    except exceptions.SmartcardException:
        # pcscd is gone and the context with it.  pyscard keeps the handle and would retry (and raise) from
        # __del__ at some later garbage collection: drop the dead handle.
        inner = getattr(connection, "component", connection)  # createConnection() returns a decorator
        if hasattr(inner, "hcontext"):
            inner.hcontext = None


class PcscTransport:
    """``transmit(bytes) -> bytes`` over a PC/SC reader.

    ``reader`` selects the first reader whose name contains it; ``None`` takes the first reader with a card.
    """

    def __init__(self, reader: str | None = None) -> None:
        exceptions = _import("smartcard.Exceptions")
        candidates = [r for r in _reader_objects() if reader is None or reader in str(r)]
        if not candidates:
            raise PcscError(f"no PC/SC reader matches {reader!r}" if reader else "no PC/SC reader found")
        last_error: Exception | None = None
        for candidate in candidates:
            try:
                connection = candidate.createConnection()
            except exceptions.SmartcardException as exc:
                raise PcscError(f"cannot open a PC/SC context (is pcscd running?): {exc}") from exc
            try:
                connection.connect()
            except exceptions.SmartcardException as exc:
                last_error = exc
                # Release the PC/SC context now: pyscard would otherwise release it when the object is
                # garbage-collected, possibly after pcscd has gone, and raise from __del__.
                _release(connection, exceptions)
                continue
            self._connection: Any = connection
            self.reader_name = str(candidate)
            self._exceptions = exceptions
            return
        raise PcscError(f"no card in the PC/SC reader(s): {last_error}")

    @property
    def atr(self) -> bytes:
        return bytes(self._connection.getATR())

    def transmit(self, apdu: bytes) -> bytes:
        try:
            data, sw1, sw2 = self._connection.transmit(list(apdu))
        except self._exceptions.SmartcardException as exc:
            raise PcscError(f"PC/SC transmit failed on {self.reader_name}: {exc}") from exc
        return bytes(data) + bytes([sw1, sw2])

    def close(self) -> None:
        """Disconnect and release the PC/SC context (idempotent)."""
        _release(self._connection, self._exceptions)

    def __enter__(self) -> PcscTransport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
