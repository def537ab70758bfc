from __future__ import annotations

import hashlib
import json
import stat
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mynapoint.identity.jpki.apdu import sha256_digest_info
from mynapoint.identity.jpki.ca import TestCA
from mynapoint.identity.jpki.card import SoftwareCard

SELECT_AP = bytes.fromhex("00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01")
SELECT_CERT = bytes.fromhex("00A4020C02000A")
SELECT_CA_CERT = bytes.fromhex("00A4020C02000B")
SELECT_KEY = bytes.fromhex("00A4020C020017")
SELECT_PIN = bytes.fromhex("00A4020C020018")
VERIFY_QUERY = bytes.fromhex("00200080")
OK = b"\x90\x00"


def verify(pin: str) -> bytes:
    return bytes.fromhex("0020008004") + pin.encode("ascii")


def sign_apdu(digest_info: bytes, le: bytes = b"\x00") -> bytes:
    return bytes.fromhex("802A0080") + bytes([len(digest_info)]) + digest_info + le


def sw(response: bytes) -> str:
    return response[-2:].hex().upper()


def open_pin(card: SoftwareCard) -> None:
    assert card.transmit(SELECT_AP) == OK
    assert card.transmit(SELECT_PIN) == OK


# ----------------------------------------------------------------------------------------------- SELECT
def test_select_ap_and_efs(card: SoftwareCard) -> None:
    assert card.transmit(SELECT_AP) == OK
    for select in (SELECT_CERT, SELECT_CA_CERT, SELECT_KEY, SELECT_PIN):
        assert card.transmit(select) == OK


def test_select_other_aid_is_file_not_found(card: SoftwareCard) -> None:
    # e.g. the 券面事項入力補助AP: this card does not have it and the client never asks for it.
    assert sw(card.transmit(bytes.fromhex("00 A4 04 0C 0A D3 92 10 00 31 00 01 01 04 08"))) == "6A82"


def test_select_ef_before_ap_is_file_not_found(card: SoftwareCard) -> None:
    assert sw(card.transmit(SELECT_CERT)) == "6A82"


def test_select_unknown_ef_is_file_not_found(card: SoftwareCard) -> None:
    card.transmit(SELECT_AP)
    assert sw(card.transmit(bytes.fromhex("00A4020C020001"))) == "6A82"


def test_select_bad_parameters(card: SoftwareCard) -> None:
    assert (
        sw(card.transmit(bytes.fromhex("00 A4 04 00 0A D3 92 F0 00 26 01 00 00 00 01"))) == "6A86"
    )  # P2 asks for FCI
    assert sw(card.transmit(bytes.fromhex("00A4080C02000A"))) == "6A86"  # select by path
    card.transmit(SELECT_AP)
    assert sw(card.transmit(bytes.fromhex("00A4020C03000A00"))) == "6700"


# -------------------------------------------------------------------------------------- CLA / INS / format
def test_unknown_instruction_and_class(card: SoftwareCard) -> None:
    assert sw(card.transmit(bytes.fromhex("00CA010000"))) == "6D00"  # GET DATA not supported
    assert sw(card.transmit(bytes.fromhex("80 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01"))) == "6E00"
    assert sw(card.transmit(bytes.fromhex("002A0080"))) == "6E00"  # signature needs CLA 80


def test_malformed_apdus_are_wrong_length(card: SoftwareCard) -> None:
    assert sw(card.transmit(b"\x00\xa4\x04")) == "6700"
    assert sw(card.transmit(bytes.fromhex("00A4040C0AD392"))) == "6700"  # Lc larger than the data


# ----------------------------------------------------------------------------------------------- VERIFY
def test_verify_needs_the_pin_ef(card: SoftwareCard, pin: str) -> None:
    assert sw(card.transmit(verify(pin))) == "6986"
    card.transmit(SELECT_AP)
    assert sw(card.transmit(verify(pin))) == "6986"
    card.transmit(SELECT_CERT)
    assert sw(card.transmit(verify(pin))) == "6986"
    assert card.tries_left == 3


def test_verify_bad_reference_is_wrong_p1p2(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    assert sw(card.transmit(bytes.fromhex("0020008104") + pin.encode())) == "6A86"


def test_tries_left_query_uses_no_try(card: SoftwareCard) -> None:
    open_pin(card)
    for _ in range(5):
        assert card.transmit(VERIFY_QUERY) == bytes.fromhex("63C3")
    assert card.tries_left == 3


def test_right_pin(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    assert card.transmit(verify(pin)) == OK
    assert card.transmit(VERIFY_QUERY) == bytes.fromhex("63C3")


def test_wrong_pin_counts_down_then_blocks_even_the_right_pin(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    assert card.transmit(verify("0000")) == bytes.fromhex("63C2")
    assert card.transmit(VERIFY_QUERY) == bytes.fromhex("63C2")
    assert card.transmit(verify("1111")) == bytes.fromhex("63C1")
    assert card.transmit(VERIFY_QUERY) == bytes.fromhex("63C1")
    assert card.transmit(verify("2222")) == bytes.fromhex("63C0")
    assert card.blocked
    assert card.transmit(verify(pin)) == bytes.fromhex("6983")
    assert card.transmit(verify("3333")) == bytes.fromhex("6983")
    assert card.transmit(VERIFY_QUERY) == bytes.fromhex("63C0")
    # a reset does not unblock
    card.reset()
    open_pin(card)
    assert card.transmit(verify(pin)) == bytes.fromhex("6983")
    card.transmit(SELECT_KEY)
    assert sw(card.transmit(sign_apdu(sha256_digest_info(b"\x00" * 32)))) == "6982"


def test_right_pin_restores_the_tries(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    card.transmit(verify("0000"))
    card.transmit(verify("0001"))
    assert card.tries_left == 1
    assert card.transmit(verify(pin)) == OK
    assert card.tries_left == 3


def test_pin_of_wrong_length_is_refused_without_using_a_try(card: SoftwareCard) -> None:
    open_pin(card)
    assert sw(card.transmit(bytes.fromhex("00 20 00 80 03 31 32 33"))) == "6700"
    assert sw(card.transmit(bytes.fromhex("00 20 00 80 05 31 32 33 34 35"))) == "6700"
    assert card.tries_left == 3


# ------------------------------------------------------------------------------------------ READ BINARY
def test_read_certificate_header_then_rest_extended(card: SoftwareCard) -> None:
    card.transmit(SELECT_AP)
    card.transmit(SELECT_CERT)
    head = card.transmit(bytes.fromhex("00B0000004"))
    assert sw(head) == "9000"
    assert head[0] == 0x30
    assert head[1] == 0x82
    total = 4 + int.from_bytes(head[2:4], "big")
    rest_len = total - 4
    rest = card.transmit(bytes.fromhex("00B00004") + b"\x00" + rest_len.to_bytes(2, "big"))
    assert sw(rest) == "9000"
    der = head[:-2] + rest[:-2]
    assert der == card.certificate_der
    x509.load_der_x509_certificate(der)


def test_read_certificate_in_short_chunks(card: SoftwareCard) -> None:
    card.transmit(SELECT_AP)
    card.transmit(SELECT_CERT)
    data = b""
    while True:
        response = card.transmit(bytes([0x00, 0xB0, len(data) >> 8, len(data) & 0xFF, 0x00]))  # Le 00 = 256
        if sw(response) == "6B00":
            break
        assert sw(response) == "9000"
        assert len(response) - 2 <= 256
        data += response[:-2]
    assert data == card.certificate_der


def test_read_past_the_end(card: SoftwareCard) -> None:
    card.transmit(SELECT_AP)
    card.transmit(SELECT_CERT)
    size = len(card.certificate_der)
    offset = size - 10
    response = card.transmit(bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, 50]))
    assert sw(response) == "6282"  # end of file before Le bytes
    assert response[:-2] == card.certificate_der[-10:]
    assert sw(card.transmit(bytes([0x00, 0xB0, size >> 8, size & 0xFF, 1]))) == "6B00"


def test_read_ca_certificate(card: SoftwareCard, ca: TestCA) -> None:
    card.transmit(SELECT_AP)
    card.transmit(SELECT_CA_CERT)
    response = card.transmit(bytes.fromhex("00B00000000000"))  # extended Le 0000 = all
    assert sw(response) == "9000"
    assert x509.load_der_x509_certificate(response[:-2]) == ca.certificate


def test_read_binary_refusals(card: SoftwareCard) -> None:
    assert sw(card.transmit(bytes.fromhex("00B0000004"))) == "6986"  # nothing selected
    card.transmit(SELECT_AP)
    assert sw(card.transmit(bytes.fromhex("00B0000004"))) == "6986"  # AP but no EF
    card.transmit(SELECT_KEY)
    assert sw(card.transmit(bytes.fromhex("00B0000004"))) == "6982"  # the key is never readable
    card.transmit(SELECT_PIN)
    assert sw(card.transmit(bytes.fromhex("00B0000004"))) == "6982"  # nor the PIN
    card.transmit(SELECT_CERT)
    assert sw(card.transmit(bytes.fromhex("00B00000"))) == "6700"  # no Le
    assert sw(card.transmit(bytes.fromhex("00B0800004"))) == "6A86"  # short EF id addressing


# --------------------------------------------------------------------------- COMPUTE DIGITAL SIGNATURE
def _signature_ok(card: SoftwareCard, signature: bytes, message: bytes) -> None:
    key = x509.load_der_x509_certificate(card.certificate_der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def test_sign_after_verify(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    assert card.transmit(verify(pin)) == OK
    assert card.transmit(SELECT_KEY) == OK
    message = b"server nonce"
    response = card.transmit(sign_apdu(sha256_digest_info(hashlib.sha256(message).digest())))
    assert sw(response) == "9000"
    assert len(response) - 2 == 256
    _signature_ok(card, response[:-2], message)
    # still verified for a second signature in the same session
    again = card.transmit(sign_apdu(sha256_digest_info(hashlib.sha256(b"second").digest())))
    _signature_ok(card, again[:-2], b"second")


def test_sign_without_verify_is_security_status_not_satisfied(card: SoftwareCard) -> None:
    card.transmit(SELECT_AP)
    card.transmit(SELECT_KEY)
    assert sw(card.transmit(sign_apdu(sha256_digest_info(b"\x01" * 32)))) == "6982"


def test_sign_after_a_wrong_pin_is_refused(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    card.transmit(verify(pin))
    card.transmit(verify("0000"))  # a failed VERIFY drops the verified state
    card.transmit(SELECT_KEY)
    assert sw(card.transmit(sign_apdu(sha256_digest_info(b"\x01" * 32)))) == "6982"


def test_sign_needs_the_key_ef(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    card.transmit(verify(pin))
    assert sw(card.transmit(sign_apdu(sha256_digest_info(b"\x01" * 32)))) == "6986"  # PIN EF selected
    card.transmit(SELECT_CERT)
    assert sw(card.transmit(sign_apdu(sha256_digest_info(b"\x01" * 32)))) == "6986"


def test_reselect_or_reset_ends_the_verified_session(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    card.transmit(verify(pin))
    card.transmit(SELECT_AP)
    card.transmit(SELECT_KEY)
    assert sw(card.transmit(sign_apdu(sha256_digest_info(b"\x01" * 32)))) == "6982"
    open_pin(card)
    card.transmit(verify(pin))
    card.reset()
    assert sw(card.transmit(SELECT_KEY)) == "6A82"  # AP no longer selected
    card.transmit(SELECT_AP)
    card.transmit(SELECT_KEY)
    assert sw(card.transmit(sign_apdu(sha256_digest_info(b"\x01" * 32)))) == "6982"


def test_sign_rejects_what_is_not_a_digest_info(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    card.transmit(verify(pin))
    card.transmit(SELECT_KEY)
    assert sw(card.transmit(sign_apdu(b"\x00" * 32))) == "6A80"  # a bare hash
    assert sw(card.transmit(sign_apdu(sha256_digest_info(b"\x01" * 32)[:-1]))) == "6A80"  # truncated
    assert sw(card.transmit(bytes.fromhex("802A0081") + b"\x01\x00\x00")) == "6A86"


def test_sign_with_too_small_le_answers_the_exact_length(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    card.transmit(verify(pin))
    card.transmit(SELECT_KEY)
    assert card.transmit(sign_apdu(sha256_digest_info(b"\x01" * 32), le=b"\x10")) == bytes.fromhex("6C00")


# ------------------------------------------------------------------------------------------ persistence
def test_state_round_trip_keeps_tries_and_block(card: SoftwareCard, pin: str) -> None:
    open_pin(card)
    card.transmit(verify("0000"))
    restored = SoftwareCard.from_dict(card.to_dict())
    assert restored.tries_left == 2
    assert restored.certificate_der == card.certificate_der
    open_pin(restored)
    assert restored.transmit(verify(pin)) == OK
    for wrong in ("0000", "0001", "0002"):
        restored.transmit(verify(wrong))
    blocked = SoftwareCard.from_dict(restored.to_dict())
    assert blocked.blocked
    open_pin(blocked)
    assert blocked.transmit(verify(pin)) == bytes.fromhex("6983")


def test_saved_card_file_holds_no_pin(card: SoftwareCard, pin: str, tmp_path: Path) -> None:
    path = tmp_path / "demo-card.json"
    card.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = json.loads(path.read_text())
    assert "pin" not in state
    assert set(state) == {
        "format",
        "certificate",
        "ca_certificate",
        "private_key",
        "pin_salt",
        "pin_hash",
        "pin_iterations",
        "tries_left",
        "atr",
    }
    loaded = SoftwareCard.load(path)
    open_pin(loaded)
    assert loaded.transmit(verify(pin)) == OK
    assert pin not in repr(loaded)
    assert not [name for name in dir(loaded) if name.lower() in {"pin", "_pin", "get_pin"}]


@pytest.mark.parametrize("bad", ["123", "12345", "abcd", "１２３４", "12 4"])
def test_pin_must_be_four_ascii_digits(ca: TestCA, now: datetime, bad: str) -> None:
    with pytest.raises(ValueError, match="4 ASCII digits"):
        SoftwareCard.issue(ca=ca, pin=bad, now=now)


def test_atr_is_a_t1_atr_with_a_valid_checksum(card: SoftwareCard) -> None:
    atr = card.atr
    assert atr[0] == 0x3B
    check = 0
    for byte in atr[1:]:
        check ^= byte
    assert check == 0
    assert card.reset() == atr
