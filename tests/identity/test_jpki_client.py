from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mynapoint.identity.jpki.apdu import JPKI_AUTH_AID
from mynapoint.identity.jpki.ca import TestCA
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.client import (
    ApplicationNotFoundError,
    CardError,
    JpkiClient,
    PinFormatError,
    PinIncorrect,
    PinLocked,
)


class RecordingTransport:
    """Passes APDUs to a card and keeps them, to check what the client sent."""

    def __init__(self, card: SoftwareCard) -> None:
        self.card = card
        self.sent: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        return self.card.transmit(apdu)

    def pin_verifies(self) -> int:
        return sum(1 for apdu in self.sent if apdu[:4] == bytes.fromhex("00200080") and len(apdu) > 4)


class FixedTransport:
    def __init__(self, response: bytes) -> None:
        self.response = response

    def transmit(self, apdu: bytes) -> bytes:
        return self.response


def _verify(card: SoftwareCard, signature: bytes, nonce: bytes) -> None:
    key = x509.load_der_x509_certificate(card.certificate_der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(signature, nonce, padding.PKCS1v15(), hashes.SHA256())


def test_read_certificate_extended_and_short(card: SoftwareCard, ca: TestCA) -> None:
    extended = RecordingTransport(card)
    assert JpkiClient(extended).read_certificate() == card.certificate_der
    assert any(len(apdu) == 7 and apdu[1] == 0xB0 for apdu in extended.sent)  # one extended-Le read
    short = RecordingTransport(card)
    assert JpkiClient(short, extended_length=False).read_certificate() == card.certificate_der
    assert all(len(apdu) == 5 for apdu in short.sent if apdu[1] == 0xB0)
    assert x509.load_der_x509_certificate(JpkiClient(card).read_ca_certificate()) == ca.certificate


def test_tries_left(card: SoftwareCard) -> None:
    client = JpkiClient(card)
    assert client.tries_left() == 3
    assert client.tries_left() == 3


def test_sign_round_trip(card: SoftwareCard, pin: str) -> None:
    transport = RecordingTransport(card)
    client = JpkiClient(transport)
    nonce = b"\x07" * 32
    signature = client.sign(nonce, pin)
    _verify(card, signature, nonce)
    assert transport.pin_verifies() == 1
    response = client.login(b"another nonce", pin)
    assert response.certificate_der == card.certificate_der
    _verify(card, response.signature, b"another nonce")


def test_only_the_user_authentication_ap_is_ever_selected(card: SoftwareCard, pin: str) -> None:
    transport = RecordingTransport(card)
    client = JpkiClient(transport)
    client.login(b"n", pin)
    client.tries_left()
    selects_by_name = [apdu for apdu in transport.sent if apdu[1:3] == b"\xa4\x04"]
    assert selects_by_name
    assert all(apdu[5:] == JPKI_AUTH_AID for apdu in selects_by_name)


def test_wrong_pin_is_sent_once_and_never_retried(card: SoftwareCard) -> None:
    transport = RecordingTransport(card)
    client = JpkiClient(transport)
    with pytest.raises(PinIncorrect) as caught:
        client.sign(b"nonce", "0000")
    assert caught.value.tries_left == 2
    assert transport.pin_verifies() == 1
    assert "0000" not in str(caught.value)
    assert "0000" not in caught.value.message_ja
    assert "あと2回" in caught.value.message_ja
    assert client.tries_left() == 2


def test_three_wrong_pins_lock_the_card(card: SoftwareCard, pin: str) -> None:
    client = JpkiClient(card)
    with pytest.raises(PinIncorrect):
        client.sign(b"n", "0000")
    with pytest.raises(PinIncorrect) as last_chance:
        client.sign(b"n", "0001")
    assert last_chance.value.tries_left == 1
    with pytest.raises(PinLocked) as locked:
        client.sign(b"n", "0002")
    assert "市区町村の窓口" in locked.value.message_ja
    assert "暗証番号の初期化" in locked.value.message_ja
    assert client.tries_left() == 0
    with pytest.raises(PinLocked):
        client.sign(b"n", pin)  # even the right PIN


def test_bad_pin_format_sends_nothing(card: SoftwareCard) -> None:
    transport = RecordingTransport(card)
    client = JpkiClient(transport)
    for bad in ("", "123", "12345", "abcd", "１２３４"):
        with pytest.raises(PinFormatError):
            client.sign(b"n", bad)
    assert transport.sent == []
    assert card.tries_left == 3


def test_card_without_the_ap(card: SoftwareCard) -> None:
    with pytest.raises(ApplicationNotFoundError) as caught:
        JpkiClient(FixedTransport(bytes.fromhex("6A82"))).read_certificate()
    assert caught.value.message_ja


def test_unexpected_status_word_is_a_card_error() -> None:
    with pytest.raises(CardError) as caught:
        JpkiClient(FixedTransport(bytes.fromhex("6F00"))).tries_left()
    assert caught.value.sw == bytes.fromhex("6F00")
    with pytest.raises(CardError):
        JpkiClient(FixedTransport(b"\x90")).tries_left()
