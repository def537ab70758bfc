"""A certificate renewed between the application and the registration loses nothing (program.md §5: the
real system failed to pass the status on until the resident logged in again)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from cryptography import x509
from support import FEED, NOW, SELF, card_login

from mynapoint.applications.selectors import resident_status
from mynapoint.applications.services import (
    BankAccount,
    apply_certificate_renewal,
    apply_for_measure,
    record_public_fund_registration,
)
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.models import Resident
from mynapoint.identity.services import serial_text
from mynapoint.providers.models import Provider

pytestmark = pytest.mark.django_db


def _key(card: SoftwareCard) -> tuple[str, str]:
    cert = x509.load_der_x509_certificate(card.certificate_der)
    return cert.issuer.rfc4514_string(), serial_text(cert.serial_number)


def _apply(resident: Resident, measure: str) -> bool:
    return apply_for_measure(
        resident=resident, measure=measure, provider_key="wallet", service_id="R-1", security_codes=["1"],
        mode="charge", operated_by=None, present=[], now=NOW, who=SELF,
    ).accepted  # fmt: skip


def _register(mykey_id: str, when: dt.datetime) -> None:
    record_public_fund_registration(
        mykey_id=mykey_id, registered_at=when, external_id=f"pf-{mykey_id}", source="mynaportal",
        bank=BankAccount("0001", "001", "1", "1234567"), holder_kana="ﾔﾏﾀﾞ ﾊﾅｺ", now=when, who=FEED,
    )  # fmt: skip


@pytest.mark.parametrize(
    "notice_first", [True, False], ids=["notice-before-new-login", "notice-after-new-login"]
)
def test_status_survives_a_renewal_between_application_and_registration(
    notice_first: bool,
    providers: dict[str, Provider],
    make_card: Callable[..., SoftwareCard],
    make_resident: Callable[..., Resident],
) -> None:
    hanako = make_resident(accounts={"wallet/R-1": ["1"]})
    original_cert = hanako.certificates.get()  # the card make_resident logged in with
    assert _apply(hanako, "public_fund")
    new_card = make_card(issued=NOW + dt.timedelta(days=1))
    ni, ns = _key(new_card)
    later = NOW + dt.timedelta(days=2)
    renew = {
        "old_issuer": original_cert.issuer,
        "old_serial": original_cert.serial,
        "new_issuer": ni,
        "new_serial": ns,
    }
    if notice_first:
        apply_certificate_renewal(**renew, now=later, who=FEED)
        who, created = card_login(new_card, now=later)
        assert not created
    else:
        who, created = card_login(new_card, now=later)  # logs in before the notice: a duplicate MyKey ID
        assert created
        _register(who.mykey_id, later)  # the registration arrives under the duplicate
        apply_certificate_renewal(**renew, now=later + dt.timedelta(hours=1), who=FEED)
    if notice_first:
        _register(who.mykey_id, later)
    status = resident_status(Resident.objects.get(pk=hanako.pk), as_of=(later + dt.timedelta(days=1)).date())
    assert status.public_fund == 7500
    assert status.status("public_fund") == "権利確定"
