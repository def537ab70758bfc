"""Card login: MyKey ID issuance, the checks the server makes, and renewals."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from support import FEED, NOW, PIN, SELF, card_login

from mynapoint.applications.services import apply_certificate_renewal
from mynapoint.identity.jpki.ca import TestCA, publish_crl
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.jpki.client import JpkiClient
from mynapoint.identity.jpki.verify import LoginRejected
from mynapoint.identity.models import Certificate, Resident
from mynapoint.identity.services import (
    issue_login_challenge,
    login_with_jpki,
    serial_text,
)

pytestmark = pytest.mark.django_db


def test_first_login_issues_an_eight_character_mykey_id_and_the_second_finds_it(
    make_card: Callable[..., SoftwareCard],
) -> None:
    card = make_card()
    resident, created = card_login(card)
    assert created
    assert len(resident.mykey_id) == 8
    assert resident.mykey_id.isalnum()
    assert resident.card_issued == (NOW - dt.timedelta(days=200)).date()
    again, created_again = card_login(card, now=NOW + dt.timedelta(minutes=5))
    assert (again.pk, created_again) == (resident.pk, False)


def test_a_replayed_login_is_refused(make_card: Callable[..., SoftwareCard]) -> None:
    card = make_card()
    nonce, _ = issue_login_challenge(now=NOW)
    response = JpkiClient(card).login(nonce, PIN)
    kwargs = {"certificate_der": response.certificate_der, "signature": response.signature, "nonce": nonce}
    login_with_jpki(**kwargs, now=NOW, who=SELF)
    with pytest.raises(LoginRejected) as caught:
        login_with_jpki(**kwargs, now=NOW + dt.timedelta(seconds=1), who=SELF)
    assert caught.value.code == "nonce_unknown_or_used"


def test_an_expired_challenge_is_refused(make_card: Callable[..., SoftwareCard]) -> None:
    card = make_card()
    nonce, expires = issue_login_challenge(now=NOW)
    response = JpkiClient(card).login(nonce, PIN)
    with pytest.raises(LoginRejected) as caught:
        login_with_jpki(
            certificate_der=response.certificate_der,
            signature=response.signature,
            nonce=nonce,
            now=expires + dt.timedelta(seconds=1),
            who=SELF,
        )
    assert caught.value.code == "nonce_expired"


def test_a_revoked_certificate_cannot_log_in(
    make_card: Callable[..., SoftwareCard], test_ca: TestCA, trust_dir: Path
) -> None:
    card = make_card()
    serial = int.from_bytes(bytes.fromhex(serial_text(_serial(card)).replace(":", "")), "big")
    publish_crl(ca=test_ca, directory=trust_dir, now=NOW - dt.timedelta(hours=1), revoked=[serial], crl_number=2,
                valid_for=dt.timedelta(days=3650))  # fmt: skip
    try:
        with pytest.raises(LoginRejected) as caught:
            card_login(card)
        assert caught.value.code == "revoked"
        assert "失効" in caught.value.message_ja
    finally:
        publish_crl(ca=test_ca, directory=trust_dir, now=NOW - dt.timedelta(hours=1), crl_number=3,
                    valid_for=dt.timedelta(days=3650))  # fmt: skip


def _serial(card: SoftwareCard) -> int:
    from cryptography import x509

    return x509.load_der_x509_certificate(card.certificate_der).serial_number


def _cert_key(card: SoftwareCard) -> tuple[str, str]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(card.certificate_der)
    return cert.issuer.rfc4514_string(), serial_text(cert.serial_number)


def test_a_renewed_certificate_keeps_the_mykey_id_when_the_notice_comes_first(
    make_card: Callable[..., SoftwareCard],
) -> None:
    old_card, new_card = make_card(), make_card(issued=NOW - dt.timedelta(days=1))
    resident, _ = card_login(old_card)
    (oi, os_), (ni, ns) = _cert_key(old_card), _cert_key(new_card)
    assert apply_certificate_renewal(
        old_issuer=oi, old_serial=os_, new_issuer=ni, new_serial=ns, now=NOW, who=FEED
    ) == ("waiting_for_first_login")
    renewed, created = card_login(new_card, now=NOW + dt.timedelta(hours=1))
    assert (renewed.mykey_id, created) == (resident.mykey_id, False)
    assert Certificate.objects.get(issuer=oi, serial=os_).renewed_to is not None
    # the notice again changes nothing
    assert apply_certificate_renewal(
        old_issuer=oi, old_serial=os_, new_issuer=ni, new_serial=ns, now=NOW, who=FEED
    ) == ("already_known")


def test_a_late_renewal_notice_merges_the_duplicate_resident(make_card: Callable[..., SoftwareCard]) -> None:
    old_card, new_card = make_card(), make_card(issued=NOW - dt.timedelta(days=1))
    original, _ = card_login(old_card)
    duplicate, created = card_login(
        new_card
    )  # the notice has not arrived: a second MyKey ID (the 2022 failure)
    assert created
    assert duplicate.mykey_id != original.mykey_id
    (oi, os_), (ni, ns) = _cert_key(old_card), _cert_key(new_card)
    assert apply_certificate_renewal(
        old_issuer=oi, old_serial=os_, new_issuer=ni, new_serial=ns, now=NOW, who=FEED
    ) == ("merged")
    assert Resident.objects.get(pk=duplicate.pk).merged_into_id == original.pk
    again, _ = card_login(new_card, now=NOW + dt.timedelta(minutes=1))
    assert again.mykey_id == original.mykey_id


def test_a_locked_pin_tells_the_resident_to_go_to_the_municipal_office(
    make_card: Callable[..., SoftwareCard],
) -> None:
    from mynapoint.identity.jpki.client import PinIncorrect, PinLocked

    card = make_card()
    client = JpkiClient(card)
    for tries_left in (2, 1):
        with pytest.raises(PinIncorrect) as wrong:
            client.sign(b"x" * 32, "0000")
        assert wrong.value.tries_left == tries_left
    with pytest.raises((PinIncorrect, PinLocked)):
        client.sign(b"x" * 32, "0000")
    with pytest.raises(PinLocked) as locked:
        client.sign(b"x" * 32, PIN)
    assert "市区町村" in str(locked.value.message_ja)
