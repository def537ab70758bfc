"""Full login through PC/SC: JpkiClient -> pcsc.py -> pcscd -> vpcd -> VpcdConnector -> SoftwareCard.

Needs Debian ``pcscd`` and ``vsmartcard-vpcd`` (whose ``/etc/reader.conf.d/vpcd`` makes vpcd listen on port
35963) and pyscard in the venv; otherwise the test is skipped, naming what is missing.  If pcscd is not
running, the test starts ``pcscd --foreground`` itself and stops it afterwards.  pcscd is never started with
``-a``/``--apdu`` or ``-d``: those would log the VERIFY APDU, i.e. the PIN.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509

from mynapoint.identity.jpki.ca import TestCA
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.client import JpkiClient, PinIncorrect
from mynapoint.identity.jpki.verify import InMemoryNonceStore, JpkiVerifier
from mynapoint.identity.jpki.vpcd import DEFAULT_VPCD_PORT, VpcdConnector

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
VPCD_CONFIG = Path("/etc/reader.conf.d/vpcd")
READER = "Virtual PCD 00 00"  # the first vpcd slot: TCP port 35963
T = TypeVar("T")


def _missing() -> list[str]:
    missing = []
    if shutil.which("pcscd") is None and not Path("/usr/sbin/pcscd").exists():
        missing.append("pcscd (Debian package pcscd)")
    if not VPCD_DRIVER.exists() or not VPCD_CONFIG.exists():
        missing.append(f"vpcd driver/config {VPCD_DRIVER}, {VPCD_CONFIG} (Debian package vsmartcard-vpcd)")
    if importlib.util.find_spec("smartcard") is None:
        missing.append("pyscard in this Python (pip install pyscard==2.3.1; needs swig and libpcsclite-dev)")
    return missing


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except Exception as exc:  # pcscd/pyscard raise several types while starting up
            last_error = exc
            result = None
        if result is not None:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


def _vpcd_listening() -> bool | None:
    try:
        with socket.create_connection(("127.0.0.1", DEFAULT_VPCD_PORT), timeout=0.5):
            pass
    except OSError:
        return None
    return True


@dataclass
class PcscSetup:
    card: SoftwareCard
    connector: VpcdConnector


@pytest.fixture
def pcsc_card(ca: TestCA, pin: str, now: datetime) -> Iterator[PcscSetup]:
    missing = _missing()
    if missing:
        message = "PC/SC test needs: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + " (CI installs these: .ci/run)")  # CI must run it, never skip it
        pytest.skip(message)
    from mynapoint.identity.jpki.pcsc import PcscError, list_readers

    started: subprocess.Popen[bytes] | None = None
    try:
        list_readers()
    except PcscError:
        pcscd = shutil.which("pcscd") or "/usr/sbin/pcscd"
        started = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [pcscd, "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    try:
        readers = _wait_for("pcscd to list its readers", lambda: list_readers() or None)
        if not any(READER in name for name in readers):
            message = f"pcscd is running but shows no vpcd reader {READER!r} (readers: {readers})"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        _wait_for(f"vpcd on 127.0.0.1:{DEFAULT_VPCD_PORT}", _vpcd_listening)
        card = SoftwareCard.issue(ca=ca, pin=pin, now=now - timedelta(days=1))
        connector = VpcdConnector(card).start()
        try:
            _wait_for("the connector to reach vpcd", lambda: connector.connected.is_set() or None)
            yield PcscSetup(card=card, connector=connector)
        finally:
            connector.stop()
    finally:
        if started is not None:
            started.terminate()
            try:
                started.wait(timeout=10)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait(timeout=10)


def _open_transport() -> object:
    from mynapoint.identity.jpki.pcsc import PcscTransport

    return _wait_for("a card in the vpcd reader", lambda: PcscTransport(READER))


def test_full_login_through_pcscd_and_vpcd(
    pcsc_card: PcscSetup, ca: TestCA, crl: x509.CertificateRevocationList, pin: str, now: datetime
) -> None:
    from mynapoint.identity.jpki.pcsc import PcscTransport

    transport = _open_transport()
    assert isinstance(transport, PcscTransport)
    with transport:
        assert transport.atr == pcsc_card.card.atr
        store = InMemoryNonceStore()
        verifier = JpkiVerifier([ca.certificate], [crl], nonce_store=store)
        client = JpkiClient(transport)
        assert client.tries_left() == 3

        with pytest.raises(PinIncorrect) as wrong:
            client.sign(b"nonce", "0000")
        assert wrong.value.tries_left == 2
        assert pcsc_card.card.tries_left == 2

        nonce = store.issue(now=now)
        response = client.login(nonce, pin)  # extended-length READ BINARY through pcscd
        assert response.certificate_der == pcsc_card.card.certificate_der
        identity = verifier.verify_login(
            certificate_der=response.certificate_der, signature=response.signature, nonce=nonce, now=now
        )
        assert identity.serial == x509.load_der_x509_certificate(pcsc_card.card.certificate_der).serial_number
        assert pcsc_card.card.tries_left == 3

        short = JpkiClient(transport, extended_length=False)
        assert short.read_certificate() == pcsc_card.card.certificate_der
