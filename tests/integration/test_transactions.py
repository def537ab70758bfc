"""Transactions and refunds reported by providers: idempotent by the provider's id, validated field by field,
audited, and counted by the rules once the account is linked."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from concurrency_hooks import AFTER_READ, race
from django.db import connection
from pytest_django import Settings
from support import NOW, SELF

from mynapoint.applications.models import PaymentAccount
from mynapoint.applications.selectors import resident_status
from mynapoint.applications.services import apply_for_measure
from mynapoint.applications.transactions import (
    TransactionConflict,
    TransactionError,
    record_refund,
    record_transaction,
)
from mynapoint.audit.models import AuditEvent
from mynapoint.audit.selectors import verify_chain
from mynapoint.audit.services import Actor
from mynapoint.identity.models import Resident
from mynapoint.identity.mynumber import MyNumberRefused
from mynapoint.providers.models import Provider, ProviderRefund, ProviderTransaction

pytestmark = pytest.mark.django_db

PROVIDER = Actor(actor="provider:wallet", channel="system", terminal="")
AT = NOW - dt.timedelta(hours=1)


def charge(**overrides: Any) -> tuple[ProviderTransaction, bool]:
    kwargs: dict[str, Any] = {
        "provider_key": "wallet",
        "txid": "tx-1",
        "service_id": "9001",
        "kind": "charge",
        "amount": 20000,
        "at": AT,
        "now": NOW,
        "who": PROVIDER,
    }
    return record_transaction(**{**kwargs, **overrides})


def refund(**overrides: Any) -> tuple[ProviderRefund, bool]:
    kwargs: dict[str, Any] = {
        "provider_key": "wallet",
        "refund_id": "rf-1",
        "txid": "tx-1",
        "amount": 4000,
        "at": AT + dt.timedelta(minutes=30),
        "now": NOW,
        "who": PROVIDER,
    }
    return record_refund(**{**kwargs, **overrides})


def test_a_transaction_on_an_unknown_account_creates_the_account_and_is_audited(
    providers: dict[str, Provider],
) -> None:
    tx, created = charge()
    assert created
    assert (tx.kind, tx.amount, tx.at, tx.recorded_at) == ("charge", 20000, AT, NOW)
    account = PaymentAccount.objects.get(provider=providers["wallet"], service_id="9001")
    assert tx.account == account
    assert account.linked_resident is None  # reported, not linked: linking is the resident's application
    event = AuditEvent.objects.get(action="transaction_recorded")
    assert (event.subject_type, event.subject_id, event.channel) == (
        "payment_account",
        "wallet/9001",
        "system",
    )
    assert event.after == {
        "txid": "tx-1",
        "kind": "charge",
        "amount": 20000,
        "at": str(AT),
        "new_account": True,
    }
    assert verify_chain().ok


def test_the_same_report_again_returns_the_row_already_recorded(providers: dict[str, Provider]) -> None:
    first, _ = charge()
    events = AuditEvent.objects.count()
    again, created = charge(at=AT.astimezone(dt.UTC), now=NOW + dt.timedelta(days=1))  # the same instant
    assert not created
    assert again.pk == first.pk
    assert ProviderTransaction.objects.count() == 1
    assert AuditEvent.objects.count() == events  # a repeat changes nothing and logs nothing


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"amount": 20001}, "amount"),
        ({"kind": "purchase"}, "kind"),
        ({"service_id": "9002"}, "service_id"),
        ({"at": AT + dt.timedelta(seconds=1)}, "at"),
    ],
)
def test_the_same_txid_with_another_body_is_a_conflict_naming_the_id(
    providers: dict[str, Provider], change: dict[str, Any], differs: str
) -> None:
    charge()
    with pytest.raises(TransactionConflict) as caught:
        charge(**change)
    error = caught.value
    assert (error.code, error.field, error.status) == ("conflict", "txid", 409)
    assert "tx-1" in error.ja
    assert "すでに異なる内容で記録されています" in error.ja
    assert "'tx-1' is already recorded with a different body" in error.en
    assert differs in error.en
    assert ProviderTransaction.objects.count() == 1


def test_the_same_txid_at_another_provider_is_another_transaction(providers: dict[str, Provider]) -> None:
    charge()
    _, created = charge(provider_key="card", kind="purchase")
    assert created
    assert ProviderTransaction.objects.count() == 2


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"provider_key": "nowhere"}, "unknown_provider", "provider"),
        ({"service_id": "bad id!"}, "unknown_account", "service_id"),
        ({"service_id": ""}, "unknown_account", "service_id"),
        ({"kind": "refund"}, "bad_kind", "kind"),
        ({"amount": 0}, "bad_amount", "amount"),
        ({"amount": -500}, "bad_amount", "amount"),
        ({"amount": True}, "bad_amount", "amount"),
        ({"amount": 2_147_483_648}, "bad_amount", "amount"),
        ({"txid": ""}, "bad_txid", "txid"),
        ({"txid": "tx 1"}, "bad_txid", "txid"),
        ({"at": dt.datetime(2022, 7, 1, 9, 0)}, "bad_at", "at"),  # noqa: DTZ001 - the point of the test
        ({"at": NOW + dt.timedelta(hours=1)}, "at_in_future", "at"),
    ],
)
def test_a_report_that_cannot_be_recorded_names_the_field_and_records_nothing(
    providers: dict[str, Provider], change: dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(TransactionError) as caught:
        charge(**change)
    assert (caught.value.code, caught.value.field, caught.value.status) == (code, field, 422)
    assert caught.value.ja
    assert caught.value.en
    assert not isinstance(caught.value, TransactionConflict)
    assert ProviderTransaction.objects.count() == 0
    assert PaymentAccount.objects.count() == 0
    assert not AuditEvent.objects.filter(action="transaction_recorded").exists()


def test_a_my_number_as_service_id_is_refused_without_echoing_it(providers: dict[str, Provider]) -> None:
    with pytest.raises(MyNumberRefused) as caught:
        charge(service_id="123456789018")
    assert "123456789018" not in str(caught.value)
    assert PaymentAccount.objects.count() == 0


def test_a_refund_is_recorded_once_and_audited(providers: dict[str, Provider]) -> None:
    tx, _ = charge()
    first, created = refund()
    assert created
    assert (first.transaction, first.amount) == (tx, 4000)
    again, created_again = refund(now=NOW + dt.timedelta(days=1))
    assert (again.pk, created_again) == (first.pk, False)
    event = AuditEvent.objects.get(action="refund_recorded")
    assert event.subject_id == "wallet/9001"
    assert event.after is not None
    assert event.after["txid"] == "tx-1"
    assert verify_chain().ok


@pytest.mark.parametrize(
    ("change", "differs"),
    [({"amount": 4001}, "amount"), ({"txid": "tx-2"}, "txid"), ({"at": AT + dt.timedelta(minutes=45)}, "at")],
)
def test_the_same_refund_id_with_another_body_is_a_conflict(
    providers: dict[str, Provider], change: dict[str, Any], differs: str
) -> None:
    charge()
    charge(txid="tx-2")
    refund()
    with pytest.raises(TransactionConflict) as caught:
        refund(**change)
    assert caught.value.field == "refund_id"
    assert "rf-1" in caught.value.ja
    assert "'rf-1'" in caught.value.en
    assert differs in caught.value.en
    assert ProviderRefund.objects.count() == 1


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"txid": "never-reported"}, "unknown_transaction", "txid"),
        ({"at": AT - dt.timedelta(minutes=1)}, "refund_before_transaction", "at"),
        ({"amount": 0}, "bad_amount", "amount"),
        ({"refund_id": "r/1"}, "bad_refund_id", "refund_id"),
        ({"provider_key": "card"}, "unknown_transaction", "txid"),  # the txid is wallet's, not card's
        ({"provider_key": "nowhere"}, "unknown_provider", "provider"),
    ],
)
def test_a_refund_that_cannot_be_recorded_names_the_field(
    providers: dict[str, Provider], change: dict[str, Any], code: str, field: str
) -> None:
    charge()
    with pytest.raises(TransactionError) as caught:
        refund(**change)
    assert (caught.value.code, caught.value.field) == (code, field)
    assert ProviderRefund.objects.count() == 0
    assert not AuditEvent.objects.filter(action="refund_recorded").exists()


def test_reported_transactions_and_refunds_earn_through_the_rules_once_linked(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = make_resident(accounts={"wallet/9001": ["1234"]})
    charge(txid="before", amount=10000, at=NOW - dt.timedelta(days=1))  # before the link: does not count
    result = apply_for_measure(
        resident=hanako,
        measure="premium",
        provider_key="wallet",
        service_id="9001",
        security_codes=["1234"],
        mode="charge",
        operated_by=None,
        present=[],
        now=NOW,
        who=SELF,
    )
    assert result.accepted
    later = NOW + dt.timedelta(days=1)
    charge(txid="c1", amount=20000, at=later, now=later)
    charge(txid="p1", kind="purchase", amount=8000, at=later, now=later)  # the other mode: does not count
    refund(refund_id="r1", txid="c1", amount=4000, at=later, now=later)
    refund(refund_id="r2", txid="c1", amount=90000, at=later, now=later)  # clamped to what is left (P8)
    assert resident_status(hanako, as_of=later.date()).premium == 0
    charge(txid="c2", amount=2000, at=later, now=later)
    assert resident_status(hanako, as_of=later.date()).premium == 500


# ------------------------------------------------------------------------ simultaneous reports of one id


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_the_same_transaction_reported_twice_at_once_is_recorded_once(
    settings: Settings, providers: dict[str, Provider]
) -> None:
    """Both threads look for the txid before either writes (the after-read barrier). On PostgreSQL the second
    insert then waits on the first's unique-index entry and fails, and the retry answers it as a repeat. SQLite
    serialises the two at BEGIN IMMEDIATE (the first goes on alone when the wait times out), so there the
    second simply finds the first's row."""
    settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK = AFTER_READ
    postgres = connection.vendor == "postgresql"
    outcome = race({"a": charge, "b": charge}, barrier_timeout=30.0 if postgres else 1.0)
    assert outcome.errors == {}
    assert sorted(created for _, created in outcome.results.values()) == [False, True]
    assert len({tx.pk for tx, _ in outcome.results.values()}) == 1
    if postgres:
        assert outcome.met == ("a", "b"), "both read 'not yet recorded' before either wrote"
    assert ProviderTransaction.objects.count() == 1
    assert PaymentAccount.objects.count() == 1
    assert AuditEvent.objects.filter(action="transaction_recorded").count() == 1
    assert verify_chain().ok
