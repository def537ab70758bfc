"""The ledger's only writer (``ledger.services``): entries posted one at a time or many at once balance, are
idempotent by key, refuse the same key with other legs, and make the accounts they name."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection, transaction
from support import NOW

from mynapoint.ledger.models import Entry, LedgerAccount, Posting
from mynapoint.ledger.selectors import balance
from mynapoint.ledger.services import (
    BUDGET,
    LedgerConflict,
    NewEntry,
    account_ids,
    payable,
    post_entries,
    post_entry,
    resident_account,
)

pytestmark = pytest.mark.django_db

DAY = dt.date(2022, 7, 1)


def _entry(key: str, amount: int = 100, *, to: str = "resident:A0000001:premium") -> NewEntry:
    return NewEntry(
        kind="grant_acknowledged",
        at=NOW,
        effective_date=DAY,
        key=key,
        legs=[(payable("wallet"), -amount), (to, amount)],
        rule_edition="seed",
        parameters={"premium_cap": "5000"},
        sources=[f"grant:{key}"],
    )


def test_many_entries_are_posted_at_once_in_the_order_given_and_make_their_accounts() -> None:
    entries = [_entry(f"k{n}", 100 + n, to=resident_account(f"A{n:07d}", "premium")) for n in range(5)]
    with transaction.atomic():
        posted = post_entries(entries)
    assert [entry.idempotency_key for entry, _ in posted] == [f"k{n}" for n in range(5)]
    assert all(new for _, new in posted)
    assert Posting.objects.count() == 10
    for n in range(5):
        assert balance(resident_account(f"A{n:07d}", "premium")) == 100 + n
    assert balance(payable("wallet")) == -sum(100 + n for n in range(5))
    account = LedgerAccount.objects.get(code=resident_account("A0000003", "premium"))
    assert (account.kind, account.mykey_id, account.measure) == ("resident", "A0000003", "premium")
    assert LedgerAccount.objects.get(code=payable("wallet")).provider_key == "wallet"


def test_the_same_keys_again_return_the_first_entries_and_other_legs_are_refused() -> None:
    with transaction.atomic():
        [(first, new)] = post_entries([_entry("once")])
    assert new
    with transaction.atomic():
        again = post_entries([_entry("once"), _entry("fresh")])
    assert again[0] == (first, False)
    assert again[1][1] is True
    with (
        pytest.raises(LedgerConflict, match="'once' was posted before with other legs"),
        transaction.atomic(),
    ):
        post_entries([_entry("other"), _entry("once", 999)])
    assert not Entry.objects.filter(idempotency_key="other").exists()  # the refused call kept nothing
    with transaction.atomic():
        entry, created = post_entry(
            kind="grant_acknowledged", at=NOW, effective_date=DAY, key="once",
            legs=[(payable("wallet"), -100), ("resident:A0000001:premium", 100)],
            rule_edition="seed", parameters={}, sources=[],
        )  # fmt: skip
    assert (entry, created) == (first, False)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_entry("a"), _entry("a")], "the same idempotency key twice"),
        (
            [NewEntry("x", NOW, DAY, "b", [(BUDGET, -5), ("payable:wallet", 4)], "seed", {}, [])],
            "does not balance",
        ),
        (
            [NewEntry("x", NOW, DAY, "c", [(BUDGET, 0), ("payable:wallet", 0)], "seed", {}, [])],
            "has a zero leg",
        ),
    ],
)
def test_a_wrong_posting_is_refused_before_anything_is_written(entries: list[NewEntry], message: str) -> None:
    with pytest.raises(ValueError, match=message), transaction.atomic():
        post_entries(entries)
    assert not Entry.objects.exists()
    assert not LedgerAccount.objects.exists()


@pytest.mark.django_db(transaction=True)  # no test transaction around it
@pytest.mark.usefixtures("flushable")
def test_entries_are_posted_only_inside_the_use_cases_transaction() -> None:
    with pytest.raises(RuntimeError, match="inside the use case's transaction"):
        post_entries([_entry("outside")])


def test_account_ids_makes_what_is_missing_once() -> None:
    codes = {BUDGET, payable("wallet"), *(resident_account(f"A{n:07d}", "premium") for n in range(1_000))}
    first = account_ids(codes)
    assert set(first) == codes
    assert account_ids(codes) == first  # known now: the same ids, nothing made
    assert LedgerAccount.objects.count() == len(codes)


def test_a_too_old_sqlite_is_named_by_the_system_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from mynapoint.ledger import apps

    if connection.vendor != "sqlite":
        assert apps.sqlite_new_enough() == []  # PostgreSQL: nothing to say
        return
    assert apps.sqlite_new_enough() == []  # this Python's SQLite is new enough
    monkeypatch.setattr(apps.sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(apps.sqlite3, "sqlite_version", "3.31.1")
    [error] = apps.sqlite_new_enough()
    assert error.id == "mynapoint.E001"
    assert "SQLite 3.31.1 is too old" in error.msg
    assert "3.35" in error.msg
