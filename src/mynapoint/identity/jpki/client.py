"""A card-agnostic JPKI user-authentication client.

``JpkiClient`` talks to anything with ``transmit(bytes) -> bytes`` (response data followed by SW1 SW2): the
:class:`~mynapoint.identity.jpki.card.SoftwareCard` directly, or a PC/SC reader through
:class:`~mynapoint.identity.jpki.pcsc.PcscTransport`.

PIN rules: the PIN is sent once per :meth:`JpkiClient.sign` call and never retried automatically; it is never
logged, stored or put into an exception.  Only the user-authentication AP is ever selected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from . import apdu as iso

__all__ = [
    "ApplicationNotFoundError",
    "CardError",
    "JpkiClient",
    "JpkiClientError",
    "LoginResponse",
    "PinFormatError",
    "PinIncorrect",
    "PinLocked",
    "Transport",
]


class Transport(Protocol):
    def transmit(self, apdu: bytes) -> bytes: ...


class JpkiClientError(Exception):
    """Base of every client-side error.  ``message_ja`` is meant for the resident."""

    message_ja: str = "カードとの通信でエラーが発生しました。"

    def __init__(self, message_en: str, *, message_ja: str | None = None) -> None:
        super().__init__(message_en)
        if message_ja is not None:
            self.message_ja = message_ja


class CardError(JpkiClientError):
    """The card answered with an unexpected status word."""

    def __init__(self, step: str, sw: bytes) -> None:
        self.step = step
        self.sw = sw
        super().__init__(
            f"card returned status {sw.hex().upper()} during {step}",
            message_ja="カードの読み取りに失敗しました。カードを置き直してもう一度お試しください。",
        )


class ApplicationNotFoundError(JpkiClientError):
    def __init__(self, sw: bytes) -> None:
        self.sw = sw
        super().__init__(
            f"the JPKI user-authentication AP is not on this card (status {sw.hex().upper()})",
            message_ja="マイナンバーカードの利用者証明用電子証明書が見つかりません。",
        )


class PinFormatError(JpkiClientError, ValueError):
    """The PIN is not 4 digits. Raised before anything is sent: no try is used."""

    def __init__(self) -> None:
        super().__init__(
            "the user-authentication PIN is 4 digits",
            message_ja="利用者証明用電子証明書の暗証番号は数字4桁です。",
        )


class PinIncorrect(JpkiClientError):  # noqa: N818 - the agreed API name
    """Wrong PIN; ``tries_left`` tries remain before the PIN is blocked."""

    def __init__(self, tries_left: int) -> None:
        self.tries_left = tries_left
        super().__init__(
            f"incorrect PIN; {tries_left} tries left before the PIN is blocked",
            message_ja=(
                f"暗証番号が違います。あと{tries_left}回間違えるとロックされます。"
                "自動で再試行はしません。暗証番号を確かめてから入力してください。"
            ),
        )


class PinLocked(JpkiClientError):  # noqa: N818 - the agreed API name
    """The PIN is blocked; only the municipal office can reset it."""

    def __init__(self) -> None:
        super().__init__(
            "the user-authentication PIN is blocked; the resident must have it reset at the municipal office",
            message_ja=(
                "暗証番号がロックされています。"
                "マイナンバーカードをお持ちのうえ、お住まいの市区町村の窓口で暗証番号の初期化を行ってください。"
            ),
        )


@dataclass(frozen=True)
class LoginResponse:
    certificate_der: bytes
    signature: bytes


def _sw(response: bytes) -> bytes:
    if len(response) < 2:
        raise CardError("transmit", response)
    return response[-2:]


def _der_total_length(header: bytes) -> int:
    """Total length of a DER SEQUENCE from its first bytes (tag, length octets)."""
    if len(header) < 2 or header[0] != 0x30:
        raise JpkiClientError("the certificate EF does not start with a DER SEQUENCE")
    first = header[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 3 or len(header) < 2 + count:
        raise JpkiClientError("unsupported DER length in the certificate EF")
    return 2 + count + int.from_bytes(header[2 : 2 + count], "big")


class JpkiClient:
    """Drive the JPKI user-authentication AP through ``transport``.

    ``extended_length`` reads the certificate with one extended-Le READ BINARY after the 4-byte header;
    ``False`` reads it in short chunks of up to 256 bytes (for readers without extended APDUs).
    """

    HEADER_BYTES = 4

    def __init__(self, transport: Transport, *, extended_length: bool = True) -> None:
        self._transport = transport
        self._extended = extended_length

    def _send(self, command: bytes) -> bytes:
        return bytes(self._transport.transmit(command))

    def select_ap(self) -> None:
        response = self._send(iso.build_apdu(0x00, iso.INS_SELECT, 0x04, 0x0C, iso.JPKI_AUTH_AID))
        sw = _sw(response)
        if sw == iso.SW_FILE_NOT_FOUND:
            raise ApplicationNotFoundError(sw)
        if sw != iso.SW_OK:
            raise CardError("SELECT AP", sw)

    def _select_ef(self, file_id: bytes) -> None:
        sw = _sw(self._send(iso.build_apdu(0x00, iso.INS_SELECT, 0x02, 0x0C, file_id)))
        if sw != iso.SW_OK:
            raise CardError(f"SELECT EF {file_id.hex().upper()}", sw)

    def tries_left(self) -> int:
        """PIN tries left (0 = blocked).  Uses no try."""
        self.select_ap()
        self._select_ef(iso.EF_PIN)
        sw = _sw(self._send(iso.build_apdu(0x00, iso.INS_VERIFY, 0x00, 0x80)))
        if sw[0] == 0x63 and sw[1] & 0xF0 == 0xC0:
            return sw[1] & 0x0F
        if sw == iso.SW_AUTH_BLOCKED:
            return 0
        if sw == iso.SW_OK:  # already verified in this session
            return iso.MAX_PIN_TRIES
        raise CardError("VERIFY (tries left)", sw)

    def _read_ef(self, file_id: bytes) -> bytes:
        self.select_ap()
        self._select_ef(file_id)
        head = self._read_binary(0, self.HEADER_BYTES, step="READ BINARY header")
        total = _der_total_length(head)
        content = bytearray(head[:total])
        while len(content) < total:
            remaining = total - len(content)
            want = min(remaining, 65536 if self._extended else 256)
            chunk = self._read_binary(len(content), want, step="READ BINARY")
            if not chunk:
                raise JpkiClientError("the card returned no data before the end of the certificate")
            content += chunk[:remaining]
        return bytes(content)

    def _read_binary(self, offset: int, length: int, *, step: str) -> bytes:
        if offset > 0x7FFF:
            raise JpkiClientError("READ BINARY offset beyond 15 bits")
        extended = self._extended and length > 256
        command = iso.build_apdu(
            0x00, iso.INS_READ_BINARY, offset >> 8, offset & 0xFF, le=length, extended=extended
        )
        response = self._send(command)
        sw = _sw(response)
        if sw not in (iso.SW_OK, iso.SW_END_OF_FILE):
            raise CardError(step, sw)
        return response[:-2]

    def read_certificate(self) -> bytes:
        """The user-authentication certificate (DER).  Needs no PIN."""
        return self._read_ef(iso.EF_CERTIFICATE)

    def read_ca_certificate(self) -> bytes:
        """The issuing CA certificate stored on the card (DER).  Informational: never a trust anchor."""
        return self._read_ef(iso.EF_CA_CERTIFICATE)

    def sign(self, nonce: bytes, pin: str) -> bytes:
        """Sign SHA-256(nonce) with the card's user-authentication key (RSA PKCS#1 v1.5).

        VERIFYs the PIN exactly once.  Raises :class:`PinFormatError` (nothing sent), :class:`PinIncorrect`
        (with tries left) or :class:`PinLocked`.
        """
        if len(pin) != iso.PIN_LENGTH or not pin.isascii() or not pin.isdigit():
            raise PinFormatError()
        self.select_ap()
        self._select_ef(iso.EF_PIN)
        sw = _sw(self._send(iso.build_apdu(0x00, iso.INS_VERIFY, 0x00, 0x80, pin.encode("ascii"))))
        if sw == iso.SW_AUTH_BLOCKED or sw == b"\x63\xc0":
            raise PinLocked()
        if sw[0] == 0x63 and sw[1] & 0xF0 == 0xC0:
            raise PinIncorrect(sw[1] & 0x0F)
        if sw != iso.SW_OK:
            raise CardError("VERIFY", sw)
        self._select_ef(iso.EF_PRIVATE_KEY)
        digest_info = iso.sha256_digest_info(hashlib.sha256(nonce).digest())
        response = self._send(
            iso.build_apdu(iso.CLA_PROPRIETARY, iso.INS_COMPUTE_SIGNATURE, 0x00, 0x80, digest_info, le=256)
        )
        sw = _sw(response)
        if sw != iso.SW_OK:
            raise CardError("COMPUTE DIGITAL SIGNATURE", sw)
        return response[:-2]

    def login(self, nonce: bytes, pin: str) -> LoginResponse:
        """Read the certificate and sign the server's nonce: what the server's verifier needs."""
        certificate = self.read_certificate()
        return LoginResponse(certificate_der=certificate, signature=self.sign(nonce, pin))
