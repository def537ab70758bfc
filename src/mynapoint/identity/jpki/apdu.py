"""ISO 7816-4 APDU constants and helpers shared by the software card and the client.

Only the JPKI *user-authentication* AP is known here.  The card's 券面事項入力補助AP (which holds the
My Number) is deliberately absent: nothing in this package may select it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "DIGEST_INFO_PREFIXES",
    "EF_CA_CERTIFICATE",
    "EF_CERTIFICATE",
    "EF_PIN",
    "EF_PRIVATE_KEY",
    "JPKI_AUTH_AID",
    "MAX_PIN_TRIES",
    "SHA256_DIGEST_INFO_PREFIX",
    "Apdu",
    "ApduFormatError",
    "build_apdu",
    "parse_apdu",
    "sha256_digest_info",
]

JPKI_AUTH_AID: Final = bytes.fromhex("D3 92 F0 00 26 01 00 00 00 01")
EF_CERTIFICATE: Final = bytes.fromhex("000A")
EF_CA_CERTIFICATE: Final = bytes.fromhex("000B")
EF_PRIVATE_KEY: Final = bytes.fromhex("0017")
EF_PIN: Final = bytes.fromhex("0018")
MAX_PIN_TRIES: Final = 3
PIN_LENGTH: Final = 4

CLA_ISO: Final = 0x00
CLA_PROPRIETARY: Final = 0x80
INS_SELECT: Final = 0xA4
INS_VERIFY: Final = 0x20
INS_READ_BINARY: Final = 0xB0
INS_COMPUTE_SIGNATURE: Final = 0x2A

# Status words (ISO 7816-4 section 5.1.3).
SW_OK: Final = b"\x90\x00"
SW_END_OF_FILE: Final = b"\x62\x82"  # end of file reached before reading Le bytes
SW_WRONG_LENGTH: Final = b"\x67\x00"
SW_INCOMPATIBLE_FILE: Final = b"\x69\x81"
SW_SECURITY_NOT_SATISFIED: Final = b"\x69\x82"
SW_AUTH_BLOCKED: Final = b"\x69\x83"
SW_NO_CURRENT_EF: Final = b"\x69\x86"
SW_WRONG_DATA: Final = b"\x6a\x80"
SW_FILE_NOT_FOUND: Final = b"\x6a\x82"
SW_WRONG_P1P2: Final = b"\x6a\x86"
SW_OFFSET_OUT_OF_FILE: Final = b"\x6b\x00"
SW_INS_NOT_SUPPORTED: Final = b"\x6d\x00"
SW_CLA_NOT_SUPPORTED: Final = b"\x6e\x00"

# DER DigestInfo prefixes (RFC 8017 section 9.2, note 1), keyed by hash name.
DIGEST_INFO_PREFIXES: Final[dict[str, bytes]] = {
    "sha256": bytes.fromhex("30 31 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 04 20"),
    "sha384": bytes.fromhex("30 41 30 0d 06 09 60 86 48 01 65 03 04 02 02 05 00 04 30"),
    "sha512": bytes.fromhex("30 51 30 0d 06 09 60 86 48 01 65 03 04 02 03 05 00 04 40"),
}
SHA256_DIGEST_INFO_PREFIX: Final = DIGEST_INFO_PREFIXES["sha256"]


def sha256_digest_info(digest: bytes) -> bytes:
    """DER DigestInfo for a SHA-256 digest (what COMPUTE DIGITAL SIGNATURE expects)."""
    if len(digest) != 32:
        raise ValueError("a SHA-256 digest is 32 bytes")
    return SHA256_DIGEST_INFO_PREFIX + digest


class ApduFormatError(ValueError):
    """The bytes are not a well-formed command APDU."""


@dataclass(frozen=True)
class Apdu:
    """A parsed command APDU.  ``le`` is ``None`` when absent; never 0 (256 / 65536 are spelled out)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None
    extended: bool

    def __repr__(self) -> str:
        # Never show the data field: for VERIFY it is the PIN.
        return (
            f"Apdu(cla={self.cla:02X}, ins={self.ins:02X}, p1={self.p1:02X}, p2={self.p2:02X}, "
            f"lc={len(self.data)}, le={self.le}, extended={self.extended})"
        )


def parse_apdu(raw: bytes) -> Apdu:
    """Parse a command APDU in any of the ISO 7816-4 cases 1, 2S/E, 3S/E, 4S/E."""
    if len(raw) < 4:
        raise ApduFormatError("an APDU has at least 4 bytes")
    cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
    body = raw[4:]
    if not body:  # case 1
        return Apdu(cla, ins, p1, p2, b"", None, extended=False)
    if len(body) == 1:  # case 2S
        return Apdu(cla, ins, p1, p2, b"", body[0] or 256, extended=False)
    if body[0] != 0:  # short Lc
        lc = body[0]
        if len(body) == 1 + lc:  # case 3S
            return Apdu(cla, ins, p1, p2, bytes(body[1:]), None, extended=False)
        if len(body) == 2 + lc:  # case 4S
            return Apdu(cla, ins, p1, p2, bytes(body[1 : 1 + lc]), body[-1] or 256, extended=False)
        raise ApduFormatError("Lc does not match the APDU length")
    # Extended length: body starts with 00.
    if len(body) == 3:  # case 2E
        le = int.from_bytes(body[1:3], "big") or 65536
        return Apdu(cla, ins, p1, p2, b"", le, extended=True)
    if len(body) < 4:
        raise ApduFormatError("truncated extended-length APDU")
    lc = int.from_bytes(body[1:3], "big")
    if lc == 0:
        raise ApduFormatError("extended Lc of zero")
    if len(body) == 3 + lc:  # case 3E
        return Apdu(cla, ins, p1, p2, bytes(body[3:]), None, extended=True)
    if len(body) == 5 + lc:  # case 4E
        le = int.from_bytes(body[-2:], "big") or 65536
        return Apdu(cla, ins, p1, p2, bytes(body[3 : 3 + lc]), le, extended=True)
    raise ApduFormatError("extended Lc does not match the APDU length")


def build_apdu(
    cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None, *, extended: bool = False
) -> bytes:
    """Encode a command APDU.  ``le`` is the number of bytes wanted (256 short / 65536 extended = "all")."""
    header = bytes([cla, ins, p1, p2])
    need_extended = extended or len(data) > 255 or (le is not None and le > 256)
    if not need_extended:
        out = header
        if data:
            out += bytes([len(data)]) + data
        if le is not None:
            if not 1 <= le <= 256:
                raise ValueError("short Le is 1..256")
            out += bytes([le % 256])
        return out
    if len(data) > 65535 or (le is not None and not 1 <= le <= 65536):
        raise ValueError("extended Lc is 1..65535 and Le 1..65536")
    out = header
    if data:
        out += b"\x00" + len(data).to_bytes(2, "big") + data
    if le is not None:
        le_bytes = (le % 65536).to_bytes(2, "big")
        out += le_bytes if data else b"\x00" + le_bytes
    return out
