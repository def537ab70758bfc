"""The only writer of the ledger. Call inside the use case's transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from mynapoint.dbutil import IN_LIST_MAX
from mynapoint.ledger.models import Entry, LedgerAccount, Posting

__all__ = [
    "BUDGET",
    "LedgerConflict",
    "NewEntry",
    "account_ids",
    "payable",
    "post_entries",
    "post_entry",
    "resident_account",
]

BUDGET = "budget"


class LedgerConflict(RuntimeError):  # noqa: N818 - a 409-style conflict
    """The same idempotency key was posted before with other legs."""


def payable(provider_key: str) -> str:
    return f"payable:{provider_key}"


def resident_account(mykey_id: str, measure: str) -> str:
    return f"resident:{mykey_id}:{measure}"


def _account_fields(code: str) -> dict[str, str]:
    kind, _, rest = code.partition(":")
    fields: dict[str, str] = {"kind": kind}
    if kind == "payable":
        fields["provider_key"] = rest
    elif kind == "resident":
        mykey_id, _, measure = rest.partition(":")
        fields.update(mykey_id=mykey_id, measure=measure)
    return fields


def account_ids(codes: Iterable[str]) -> dict[str, int]:
    """The ledger accounts named by ``codes`` (``budget``, ``payable:<provider>``,
    ``resident:<MyKey ID>:<measure>``), made where missing: code → id."""
    wanted = set(codes)
    known: dict[str, int] = {}
    ordered = sorted(wanted)
    for start in range(0, len(ordered), IN_LIST_MAX):
        known.update(
            LedgerAccount.objects.filter(code__in=ordered[start : start + IN_LIST_MAX]).values_list(
                "code", "pk"
            )
        )
    missing = sorted(wanted - known.keys())
    if missing:  # in code order: two use cases making the same accounts wait for each other in one order
        LedgerAccount.objects.bulk_create(
            [LedgerAccount(code=code, **_account_fields(code)) for code in missing], ignore_conflicts=True
        )
        for start in range(0, len(missing), IN_LIST_MAX):
            known.update(
                LedgerAccount.objects.filter(code__in=missing[start : start + IN_LIST_MAX]).values_list(
                    "code", "pk"
                )
            )
    return known


@dataclass(frozen=True)
class NewEntry:
    """One balanced entry to post (see :func:`post_entries`)."""

    kind: str
    at: dt.datetime
    effective_date: dt.date
    key: str
    legs: Sequence[tuple[str, int]]
    rule_edition: str
    parameters: dict[str, Any]
    sources: list[Any]
    memo: str = ""
    reverses: Entry | None = None


def post_entry(
    *,
    kind: str,
    at: dt.datetime,
    effective_date: dt.date,
    key: str,
    legs: Sequence[tuple[str, int]],
    rule_edition: str,
    parameters: dict[str, Any],
    sources: list[Any],
    memo: str = "",
    reverses: Entry | None = None,
) -> tuple[Entry, bool]:
    """Post one balanced entry. The same key again with the same legs returns the first entry (idempotent);
    with other legs it raises :class:`LedgerConflict`. Returns the entry and whether it is new."""
    [posted] = post_entries(
        [NewEntry(kind, at, effective_date, key, legs, rule_edition, parameters, sources, memo, reverses)]
    )
    return posted


def post_entries(entries: Sequence[NewEntry]) -> list[tuple[Entry, bool]]:
    """Post balanced entries, each as :func:`post_entry` would (the same checks, the same idempotency), with a
    few statements for all of them instead of a few for each. Returns ``(entry, new)`` in the given order."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("ledger entries are posted inside the use case's transaction")
    keys = [new.key for new in entries]
    if len(set(keys)) != len(keys):
        raise ValueError("the same idempotency key twice in one posting")
    for new in entries:
        if sum(amount for _, amount in new.legs) != 0:
            raise ValueError(f"entry {new.key!r} does not balance: {list(new.legs)}")
        if any(amount == 0 for _, amount in new.legs):
            raise ValueError(f"entry {new.key!r} has a zero leg")
    existing: dict[str, Entry] = {}
    for start in range(0, len(keys), IN_LIST_MAX):
        existing.update(
            (entry.idempotency_key, entry)
            for entry in Entry.objects.filter(idempotency_key__in=keys[start : start + IN_LIST_MAX])
        )
    if existing:
        before: dict[int, list[tuple[str, int]]] = {entry.pk: [] for entry in existing.values()}
        entry_ids = list(before)
        for start in range(0, len(entry_ids), IN_LIST_MAX):
            for entry_id, code, amount in Posting.objects.filter(
                entry_id__in=entry_ids[start : start + IN_LIST_MAX]
            ).values_list("entry_id", "account__code", "amount"):
                before[entry_id].append((code, amount))
        for new in entries:
            if new.key in existing and sorted(before[existing[new.key].pk]) != sorted(new.legs):
                raise LedgerConflict(
                    f"entry {new.key!r} was posted before with other legs: {sorted(before[existing[new.key].pk])}"
                )
    fresh = [new for new in entries if new.key not in existing]
    accounts = account_ids(code for new in fresh for code, _ in new.legs)
    made = Entry.objects.bulk_create(
        [
            Entry(
                kind=new.kind,
                at=new.at,
                effective_date=new.effective_date,
                idempotency_key=new.key,
                rule_edition=new.rule_edition,
                parameters=new.parameters,
                sources=new.sources,
                memo=new.memo,
                reverses=new.reverses,
            )
            for new in fresh
        ]
    )
    Posting.objects.bulk_create(
        [
            Posting(entry=entry, account_id=accounts[code], amount=amount, effective_date=new.effective_date)
            for new, entry in zip(fresh, made, strict=True)
            for code, amount in new.legs
        ]
    )
    by_key = {entry.idempotency_key: entry for entry in made}
    return [(existing[key], False) if key in existing else (by_key[key], True) for key in keys]
