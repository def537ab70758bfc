"""The vpcd connector against a fake vpcd (a loopback TCP server speaking vpcd's framing); no pcscd needed."""

from __future__ import annotations

import importlib
import socket
import struct
from collections.abc import Iterator
from types import ModuleType

import pytest

from mynapoint.identity.jpki import pcsc
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.vpcd import VpcdConnector


def _send(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(struct.pack(">H", len(payload)) + payload)


def _recv(conn: socket.socket) -> bytes:
    def exact(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = conn.recv(count - len(data))
            assert chunk, "connector closed the connection"
            data += chunk
        return data

    (length,) = struct.unpack(">H", exact(2))
    return exact(length)


@pytest.fixture
def fake_vpcd() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    with server:
        yield server


def test_connector_answers_vpcd_control_bytes_and_apdus(
    fake_vpcd: socket.socket, card: SoftwareCard, pin: str
) -> None:
    port = fake_vpcd.getsockname()[1]
    with VpcdConnector(card, port=port) as connector:
        conn, _ = fake_vpcd.accept()
        with conn:
            conn.settimeout(10)
            assert connector.connected.wait(10)
            _send(conn, b"\x04")  # get ATR
            assert _recv(conn) == card.atr
            _send(conn, b"\x01")  # power on: no answer
            _send(conn, bytes.fromhex("00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01"))
            assert _recv(conn) == bytes.fromhex("9000")
            _send(conn, bytes.fromhex("00A4020C020018"))
            assert _recv(conn) == bytes.fromhex("9000")
            _send(conn, bytes.fromhex("00200080"))
            assert _recv(conn) == bytes.fromhex("63C3")
            _send(conn, bytes.fromhex("0020008004") + pin.encode())
            assert _recv(conn) == bytes.fromhex("9000")
            _send(conn, b"\x02")  # reset: the verified session ends
            _send(conn, bytes.fromhex("00A4020C020017"))
            assert _recv(conn) == bytes.fromhex("6A82")  # AP no longer selected after the reset


def test_connector_saves_state_after_verify(fake_vpcd: socket.socket, card: SoftwareCard) -> None:
    port = fake_vpcd.getsockname()[1]
    changes: list[int] = []
    with VpcdConnector(card, port=port, on_change=lambda: changes.append(card.tries_left)):
        conn, _ = fake_vpcd.accept()
        with conn:
            conn.settimeout(10)
            for apdu in (
                "00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01",
                "00A4020C020018",
                "0020008004 30303030",
            ):
                _send(conn, bytes.fromhex(apdu))
                _recv(conn)
    assert changes == [2]


def test_connector_is_loopback_only(card: SoftwareCard) -> None:
    with pytest.raises(ValueError, match="loopback"):
        VpcdConnector(card, host="192.0.2.1")


def test_pcsc_module_reports_missing_pyscard(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_pyscard(name: str, package: str | None = None) -> ModuleType:
        if name.startswith("smartcard"):
            raise ImportError(name)
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", no_pyscard)
    with pytest.raises(pcsc.PcscUnavailableError, match="pyscard"):
        pcsc.list_readers()
    with pytest.raises(pcsc.PcscUnavailableError):
        pcsc.PcscTransport()
