"""Connect a :class:`~mynapoint.identity.jpki.card.SoftwareCard` to pcscd through vsmartcard's vpcd driver.

``vpcd`` (Debian ``vsmartcard-vpcd``) is a pcscd reader driver that waits for a "virtual card" on TCP
port 35963 (its Debian config, ``/etc/reader.conf.d/vpcd``: ``DEVICENAME /dev/null:0x8C7B``).  This
connector is that virtual card: it connects (to loopback only) and answers vpcd's messages, each a
2-byte big-endian length followed by the payload:

* a 1-byte payload is a control byte: 0 power off, 1 power on, 2 reset, 4 "send the ATR";
* anything longer is a command APDU, answered with response data + SW1 SW2 in the same framing.

Once connected, pcscd shows a card in the reader "Virtual PCD 00 00".  APDUs are never logged (a VERIFY
carries the PIN).

Run a saved demo card::

    python -m mynapoint.identity.jpki.vpcd --card demo-card.json
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol

__all__ = ["DEFAULT_VPCD_PORT", "VirtualCard", "VpcdConnector", "main"]

DEFAULT_VPCD_PORT: Final = 35963
CTRL_POWER_OFF: Final = 0
CTRL_POWER_ON: Final = 1
CTRL_RESET: Final = 2
CTRL_GET_ATR: Final = 4
_POLL_SECONDS: Final = 0.2

log = logging.getLogger(__name__)


class VirtualCard(Protocol):
    atr: bytes

    def transmit(self, apdu: bytes) -> bytes: ...

    def reset(self) -> bytes: ...

    def power_off(self) -> None: ...


def _require_loopback(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_loopback:
            raise ValueError(f"vpcd connector is loopback-only; {host!r} resolves to {address}")


class _StoppedError(Exception):
    pass


class VpcdConnector:
    """Serve ``card`` to vpcd at ``host:port`` (loopback only) until :meth:`stop`.

    Reconnects when vpcd goes away (e.g. pcscd restarts).  ``on_change`` is called after every APDU that may
    have changed persistent card state (a VERIFY), e.g. to save a demo card.
    """

    def __init__(
        self,
        card: VirtualCard,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_VPCD_PORT,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        _require_loopback(host, port)
        self._card = card
        self._host = host
        self._port = port
        self._on_change = on_change
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------------------------------------- control
    def start(self) -> VpcdConnector:
        """Run in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self.run, name="vpcd-connector", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> VpcdConnector:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ loop
    def run(self) -> None:
        """Connect, serve, reconnect, until :meth:`stop`."""
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self._host, self._port), timeout=_POLL_SECONDS)
            except OSError:
                self._stop.wait(_POLL_SECONDS)
                continue
            log.info("connected to vpcd at %s:%d", self._host, self._port)
            try:
                with sock:
                    sock.settimeout(_POLL_SECONDS)
                    self.connected.set()
                    self._serve(sock)
            except _StoppedError:
                break
            except (ConnectionError, OSError) as exc:
                log.info("vpcd connection closed: %s", type(exc).__name__)
            finally:
                self.connected.clear()
                self._card.power_off()

    def _recv_exact(self, sock: socket.socket, count: int) -> bytes:
        buffer = bytearray()
        while len(buffer) < count:
            if self._stop.is_set():
                raise _StoppedError()
            try:
                chunk = sock.recv(count - len(buffer))
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionResetError("vpcd closed the connection")
            buffer += chunk
        return bytes(buffer)

    def _serve(self, sock: socket.socket) -> None:
        while True:
            (length,) = struct.unpack(">H", self._recv_exact(sock, 2))
            payload = self._recv_exact(sock, length)
            if length == 1:
                self._control(sock, payload[0])
                continue
            response = self._card.transmit(payload)
            sock.sendall(struct.pack(">H", len(response)) + response)
            if self._on_change is not None and len(payload) >= 2 and payload[1] == 0x20:
                self._on_change()

    def _control(self, sock: socket.socket, code: int) -> None:
        if code == CTRL_POWER_OFF:
            self._card.power_off()
        elif code in (CTRL_POWER_ON, CTRL_RESET):
            self._card.reset()
        elif code == CTRL_GET_ATR:
            atr = self._card.atr
            sock.sendall(struct.pack(">H", len(atr)) + atr)
        else:
            log.warning("unknown vpcd control byte %d ignored", code)


def main(argv: list[str] | None = None) -> int:
    """Serve a saved software card (``SoftwareCard.save``) to vpcd; its state is saved after each VERIFY."""
    from .card import SoftwareCard

    parser = argparse.ArgumentParser(description="Serve a JPKI software card to pcscd via vpcd (loopback).")
    parser.add_argument("--card", type=Path, required=True, help="card state written by SoftwareCard.save")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_VPCD_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    path: Path = args.card
    card = SoftwareCard.load(path)
    connector = VpcdConnector(card, host=args.host, port=args.port, on_change=lambda: card.save(path))
    try:
        connector.run()
    except KeyboardInterrupt:
        pass
    finally:
        card.save(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
