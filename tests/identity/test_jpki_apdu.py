from __future__ import annotations

import pytest

from mynapoint.identity.jpki.apdu import ApduFormatError, build_apdu, parse_apdu, sha256_digest_info


def test_parse_all_cases() -> None:
    case1 = parse_apdu(bytes.fromhex("00200080"))
    assert (case1.data, case1.le, case1.extended) == (b"", None, False)
    case2 = parse_apdu(bytes.fromhex("00B0000000"))
    assert (case2.le, case2.extended) == (256, False)
    case2e = parse_apdu(bytes.fromhex("00B00004000380"))
    assert (case2e.le, case2e.extended) == (0x0380, True)
    assert parse_apdu(bytes.fromhex("00B00000000000")).le == 65536
    case3 = parse_apdu(bytes.fromhex("00A4020C02000A"))
    assert (case3.data, case3.le) == (bytes.fromhex("000A"), None)
    case4 = parse_apdu(bytes.fromhex("80 2A 00 80 03 01 02 03 00"))
    assert (case4.data, case4.le) == (b"\x01\x02\x03", 256)
    case3e = parse_apdu(bytes.fromhex("80 2A 00 80 00 00 03 01 02 03"))
    assert (case3e.data, case3e.le, case3e.extended) == (b"\x01\x02\x03", None, True)
    case4e = parse_apdu(bytes.fromhex("80 2A 00 80 00 00 03 01 02 03 01 00"))
    assert (case4e.data, case4e.le) == (b"\x01\x02\x03", 256)


@pytest.mark.parametrize("raw", ["00A404", "00A4040C05D392", "00A4040C0000", "00A4040C000005D3"])
def test_parse_rejects_malformed(raw: str) -> None:
    with pytest.raises(ApduFormatError):
        parse_apdu(bytes.fromhex(raw))


def test_build_round_trips() -> None:
    assert build_apdu(0x00, 0xA4, 0x02, 0x0C, b"\x00\x0a") == bytes.fromhex("00A4020C02000A")
    assert build_apdu(0x00, 0xB0, 0x00, 0x00, le=4) == bytes.fromhex("00B0000004")
    assert build_apdu(0x00, 0xB0, 0x00, 0x00, le=256) == bytes.fromhex("00B0000000")
    assert build_apdu(0x00, 0xB0, 0x00, 0x04, le=900) == bytes.fromhex("00B00004000384")
    assert build_apdu(0x80, 0x2A, 0x00, 0x80, b"\x01", le=256) == bytes.fromhex("802A0080010100")
    long_data = bytes(300)
    parsed = parse_apdu(build_apdu(0x80, 0x2A, 0x00, 0x80, long_data, le=512))
    assert (parsed.data, parsed.le, parsed.extended) == (long_data, 512, True)


def test_repr_never_shows_the_data_field() -> None:
    verify = parse_apdu(bytes.fromhex("00 20 00 80 04 34 30 37 31"))
    assert "4071" not in repr(verify)
    assert "34303731" not in repr(verify).lower()


def test_sha256_digest_info() -> None:
    info = sha256_digest_info(bytes(32))
    assert len(info) == 51
    assert info.startswith(bytes.fromhex("30 31 30 0d 06 09 60 86 48 01 65 03 04 02 01"))
    with pytest.raises(ValueError, match="32 bytes"):
        sha256_digest_info(bytes(20))
