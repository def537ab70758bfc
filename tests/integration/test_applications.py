"""Point applications through the platform: verification, the rules' decisions, the audit trail."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from support import FEED, NOW, SELF

from mynapoint.applications.models import PaymentAccount, PointApplication
from mynapoint.applications.selectors import resident_status
from mynapoint.applications.services import (
    ApplicationError,
    BankAccount,
    apply_for_measure,
    record_health_insurance_registration,
    record_public_fund_registration,
)
from mynapoint.audit.models import AuditEvent
from mynapoint.audit.selectors import verify_chain
from mynapoint.identity.models import Resident
from mynapoint.identity.mynumber import MyNumberRefused
from mynapoint.providers.models import Provider

pytestmark = pytest.mark.django_db


def apply(resident: Resident, measure: str, account: str, codes: list[str], **kw: object):  # type: ignore[no-untyped-def]
    provider, service_id = account.split("/")
    return apply_for_measure(
        resident=resident,
        measure=measure,
        provider_key=provider,
        service_id=service_id,
        security_codes=codes,
        mode=kw.pop("mode", "charge" if provider == "wallet" else None),  # type: ignore[arg-type]
        operated_by=kw.pop("operated_by", None),  # type: ignore[arg-type]
        present=kw.pop("present", []),  # type: ignore[arg-type]
        now=kw.pop("now", NOW),  # type: ignore[arg-type]
        who=SELF,
    )


def test_apply_for_all_three_measures_and_earn_after_registrations(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = make_resident(accounts={"wallet/1001": ["1234"]})
    for measure in ("premium", "health_insurance", "public_fund"):
        result = apply(hanako, measure, "wallet/1001", ["1234"])
        assert result.accepted, result.message_en
    record_health_insurance_registration(
        mykey_id=hanako.mykey_id,
        registered_at=NOW + dt.timedelta(days=1),
        external_id="h-1",
        source="oqs",
        now=NOW,
        who=FEED,
    )
    record_public_fund_registration(
        mykey_id=hanako.mykey_id,
        registered_at=NOW + dt.timedelta(days=1),
        external_id="p-1",
        source="mynaportal",
        bank=BankAccount("0001", "001", "1", "1234567"),
        holder_kana="ﾔﾏﾀﾞ ﾊﾅｺ",
        now=NOW,
        who=FEED,
    )
    status = resident_status(hanako, as_of=(NOW + dt.timedelta(days=2)).date())
    assert status.earned == {"premium": 0, "health_insurance": 7500, "public_fund": 7500}
    assert status.statuses == ("申込済", "権利確定", "権利確定")
    assert PaymentAccount.objects.get(service_id="1001").linked_resident == hanako
    assert verify_chain().ok


def test_the_same_measure_twice_is_rejected_with_its_reason_recorded(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    taro = make_resident(kana="タナカ タロウ", accounts={"wallet/2001": ["1111"], "card/2002": ["22", "33"]})
    assert apply(taro, "premium", "wallet/2001", ["1111"]).accepted
    second = apply(taro, "premium", "card/2002", ["22", "33"], mode="purchase")
    assert (second.accepted, second.code) == (False, "already_applied")
    assert "1施策につき1人1回" in second.message_ja
    stored = PointApplication.objects.get(pk=second.application.pk)
    assert stored.rejection_code == "already_applied"
    assert stored.parameter_edition == "seed"


def test_another_persons_account_is_not_own(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    make_resident(kana="タナカ タロウ", born=dt.date(1985, 7, 1), accounts={"wallet/3001": ["1"]})
    hanako = make_resident()
    result = apply(hanako, "health_insurance", "wallet/3001", ["1"])
    assert (result.accepted, result.code) == (False, "account_not_own")


def test_an_account_serves_one_person_only(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    parent = make_resident(kana="ヤマダ タロウ", born=dt.date(1980, 1, 1), accounts={"wallet/4001": ["9"]})
    child = make_resident(kana="ヤマダ ジロウ", born=dt.date(2006, 3, 1), legal_representative=parent)
    assert apply(child, "premium", "wallet/4001", ["9"], present=[child, parent]).accepted
    result = apply(parent, "premium", "wallet/4001", ["9"])
    assert (result.accepted, result.code) == (False, "account_linked_to_another_person")


@pytest.mark.parametrize(
    ("account", "codes", "error"),
    [
        ("nowhere/1", ["1"], "unknown_provider"),
        ("wallet/5001", ["0000"], "account_not_verified"),
        ("wallet/bad id!", ["1"], "bad_service_id"),
        ("card/5002", ["1"], "security_code_count"),
        ("wallet/5001", ["1", "2", "3", "4"], "bad_security_code"),
    ],
)
def test_bad_input_is_an_error_that_names_the_problem_and_records_nothing(
    providers: dict[str, Provider],
    make_resident: Callable[..., Resident],
    account: str,
    codes: list[str],
    error: str,
) -> None:
    hanako = make_resident(accounts={"wallet/5001": ["1234"], "card/5002": ["1", "2"]})
    before = AuditEvent.objects.count()
    with pytest.raises(ApplicationError) as caught:
        apply(hanako, "premium", account, codes)
    assert caught.value.code == error
    assert caught.value.ja
    assert caught.value.en
    assert PointApplication.objects.count() == 0
    assert AuditEvent.objects.count() == before


def test_a_my_number_typed_as_service_id_is_refused(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = make_resident()
    with pytest.raises(MyNumberRefused):
        apply(hanako, "premium", "wallet/123456789018", ["1"])


def test_a_wrong_holder_name_on_the_public_fund_account_is_rejected(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = make_resident()
    registration, created = record_public_fund_registration(
        mykey_id=hanako.mykey_id,
        registered_at=NOW,
        external_id="p-9",
        source="mynaportal",
        bank=BankAccount("0001", "001", "1", "7654321"),
        holder_kana="ﾔﾏﾀﾞ ﾀﾛｳ",
        now=NOW,
        who=FEED,
    )
    assert created
    assert (registration.status, registration.rejection_code) == (
        "rejected",
        "holder_name_mismatch",
    )
    with pytest.raises(ApplicationError) as caught:
        record_public_fund_registration(
            mykey_id=hanako.mykey_id, registered_at=NOW, external_id="p-10", source="x",
            bank=BankAccount("0001", "999", "1", "7654321"), holder_kana="ﾔﾏﾀﾞ ﾊﾅｺ", now=NOW, who=FEED,
        )  # fmt: skip
    assert caught.value.field == "branch_code"


def test_registrations_are_idempotent(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = make_resident()
    kwargs = {
        "mykey_id": hanako.mykey_id,
        "registered_at": NOW,
        "external_id": "h-7",
        "source": "oqs",
        "now": NOW,
        "who": FEED,
    }
    first, created = record_health_insurance_registration(**kwargs)  # type: ignore[arg-type]
    again, created_again = record_health_insurance_registration(**kwargs)  # type: ignore[arg-type]
    assert created
    assert not created_again
    assert first.pk == again.pk
    with pytest.raises(ApplicationError) as caught:
        record_health_insurance_registration(**{**kwargs, "registered_at": NOW + dt.timedelta(days=1)})  # type: ignore[arg-type]
    assert caught.value.code == "conflict"


def test_the_audit_log_is_append_only_and_verified(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    from django.db import DatabaseError, transaction

    make_resident()
    report = verify_chain()
    assert report.ok
    assert report.checked >= 2  # MyKey ID issued, login
    event = AuditEvent.objects.order_by("id").first()
    assert event is not None
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(actor="someone else")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()


def test_audit_verify_finds_a_row_changed_behind_the_triggers(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    from django.db import connection

    make_resident()
    event = AuditEvent.objects.order_by("id").first()
    assert event is not None
    with connection.cursor() as cursor:  # what an attacker with database access would do
        if connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER audit_event_no_update")
        else:
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
        cursor.execute("UPDATE audit_auditevent SET actor = 'mallory' WHERE id = %s", [event.pk])
    report = verify_chain()
    assert not report.ok
    assert f"#{event.pk}" in report.problem
    assert "hash mismatch" in report.problem


def test_an_inactive_provider_takes_no_applications_and_an_active_one_does_again(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = make_resident(accounts={"wallet/5001": ["1234"]})
    Provider.objects.filter(key="wallet").update(active=False)
    with pytest.raises(ApplicationError) as caught:
        apply(hanako, "premium", "wallet/5001", ["1234"])
    assert (caught.value.code, caught.value.field) == ("provider_inactive", "provider")
    assert "受け付けていません" in caught.value.ja
    assert PointApplication.objects.count() == 0
    Provider.objects.filter(key="wallet").update(active=True)
    assert apply(hanako, "premium", "wallet/5001", ["1234"]).accepted
