"""References of the bulk-loaded tables (transactions, ledger postings, grants) are checked set by set by
triggers instead of row-by-row foreign keys (dbutil.checked_references): the database still refuses a row that
names a missing parent, or a transaction on another provider's account, and refuses to delete a parent that is
still referenced — on SQLite and on PostgreSQL, for INSERT, COPY and UPDATE."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from support import NOW

from mynapoint.applications.models import PaymentAccount
from mynapoint.applications.transactions import _insert_rows
from mynapoint.grants.models import Grant
from mynapoint.identity.models import Resident
from mynapoint.ledger.models import Entry, LedgerAccount, Posting
from mynapoint.providers.models import Provider, ProviderTransaction

pytestmark = pytest.mark.django_db

MISSING = 987_654_321


@pytest.fixture
def accounts(providers: dict[str, Provider]) -> dict[str, PaymentAccount]:
    return {
        key: PaymentAccount.objects.create(provider=provider, service_id=f"{key}-1")
        for key, provider in providers.items()
    }


def _tx(provider: Provider, account_id: int, txid: str = "T1") -> dict[str, Any]:
    return {
        "provider": provider,
        "txid": txid,
        "account_id": account_id,
        "kind": "charge",
        "amount": 1000,
        "at": NOW,
        "recorded_at": NOW,
    }


def _refused(action: Any) -> str:
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        action()
    return str(caught.value)


def test_a_transaction_on_a_missing_account_is_refused(
    providers: dict[str, Provider], accounts: dict[str, PaymentAccount]
) -> None:
    message = _refused(lambda: ProviderTransaction.objects.create(**_tx(providers["wallet"], MISSING)))
    assert "not present in applications_paymentaccount" in message
    assert not ProviderTransaction.objects.exists()


def test_a_transaction_on_another_providers_account_is_refused(
    providers: dict[str, Provider], accounts: dict[str, PaymentAccount]
) -> None:
    _refused(lambda: ProviderTransaction.objects.create(**_tx(providers["wallet"], accounts["card"].pk)))
    ProviderTransaction.objects.create(**_tx(providers["wallet"], accounts["wallet"].pk))  # its own: fine
    assert ProviderTransaction.objects.count() == 1


def test_one_bad_row_in_a_bulk_load_refuses_the_whole_statement(
    providers: dict[str, Provider], accounts: dict[str, PaymentAccount]
) -> None:
    wallet = providers["wallet"]
    good = [(wallet.pk, f"G{i}", accounts["wallet"].pk, "charge", 100, NOW, NOW) for i in range(50)]
    bad = (wallet.pk, "BAD", MISSING, "charge", 100, NOW, NOW)
    fields = ("provider", "txid", "account", "kind", "amount", "at", "recorded_at")
    # COPY on PostgreSQL, executemany on SQLite: the path record_batch takes
    _refused(lambda: _insert_rows(ProviderTransaction, fields, [*good[:25], bad, *good[25:]]))
    assert not ProviderTransaction.objects.exists()
    _insert_rows(ProviderTransaction, fields, good)
    assert ProviderTransaction.objects.count() == 50


def test_moving_a_transaction_to_a_missing_account_is_refused(
    providers: dict[str, Provider], accounts: dict[str, PaymentAccount]
) -> None:
    tx = ProviderTransaction.objects.create(**_tx(providers["wallet"], accounts["wallet"].pk))
    _refused(lambda: ProviderTransaction.objects.filter(pk=tx.pk).update(account_id=MISSING))
    tx.refresh_from_db()
    assert tx.account_id == accounts["wallet"].pk


def test_a_referenced_account_cannot_be_deleted_or_rekeyed(
    providers: dict[str, Provider], accounts: dict[str, PaymentAccount]
) -> None:
    ProviderTransaction.objects.create(**_tx(providers["wallet"], accounts["wallet"].pk))
    table = PaymentAccount._meta.db_table
    with connection.cursor() as cursor:
        delete = f"DELETE FROM {table} WHERE id = %s"  # noqa: S608 - a table name from the model
        message = _refused(lambda: cursor.execute(delete, [accounts["wallet"].pk]))
        assert "still referenced from providers_providertransaction" in message
        _refused(
            lambda: cursor.execute(
                f"UPDATE {table} SET provider_id = %s WHERE id = %s",  # noqa: S608
                [providers["card"].pk, accounts["wallet"].pk],
            )
        )
        cursor.execute(delete, [accounts["card"].pk])  # not referenced: deleted
    assert set(PaymentAccount.objects.values_list("service_id", flat=True)) == {"wallet-1"}


def test_ledger_postings_need_their_entry_and_account() -> None:
    entry = Entry.objects.create(
        kind="grant_instructed", at=NOW, effective_date=NOW.date(), idempotency_key="k1", rule_edition="seed"
    )
    budget = LedgerAccount.objects.create(code="budget", kind="budget")
    _refused(
        lambda: Posting.objects.create(entry_id=MISSING, account=budget, amount=1, effective_date=NOW.date())
    )
    _refused(
        lambda: Posting.objects.create(entry=entry, account_id=MISSING, amount=1, effective_date=NOW.date())
    )
    Posting.objects.create(entry=entry, account=budget, amount=0, effective_date=NOW.date())
    with connection.cursor() as cursor:
        table = LedgerAccount._meta.db_table
        _refused(lambda: cursor.execute(f"DELETE FROM {table} WHERE id = %s", [budget.pk]))  # noqa: S608
    assert Posting.objects.count() == 1


def test_a_grant_needs_its_resident_provider_account_and_entry(
    providers: dict[str, Provider], accounts: dict[str, PaymentAccount]
) -> None:
    resident = Resident.objects.create(mykey_id="REF00001", created_at=NOW, born=dt.date(1980, 1, 1))
    entry = Entry.objects.create(
        kind="grant_instructed", at=NOW, effective_date=NOW.date(), idempotency_key="k2", rule_edition="seed"
    )
    grant: dict[str, Any] = {
        "resident_id": resident.pk,
        "measure": "premium",
        "provider_id": providers["wallet"].pk,
        "account_id": accounts["wallet"].pk,
        "ordinal": 1,
        "amount": 500,
        "cumulative_after": 500,
        "due_as_of": NOW.date(),
        "instructed_at": NOW,
        "instruction_entry_id": entry.pk,
    }
    for field in ("resident_id", "provider_id", "account_id", "instruction_entry_id"):
        _refused(lambda field=field: Grant.objects.create(**{**grant, field: MISSING}))
    Grant.objects.create(**grant)
    with connection.cursor() as cursor:
        table = Resident._meta.db_table
        _refused(lambda: cursor.execute(f"DELETE FROM {table} WHERE id = %s", [resident.pk]))  # noqa: S608
    assert Grant.objects.count() == 1
