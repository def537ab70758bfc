"""The only writer of the ledger. Call inside the use case's transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.db import transaction

from mynapoint.ledger.models import Entry, LedgerAccount, Posting

__all__ = ["BUDGET", "LedgerConflict", "payable", "post_entry", "resident_account"]

BUDGET = "budget"


class LedgerConflict(RuntimeError):  # noqa: N818 - a 409-style conflict
    """The same idempotency key was posted before with other legs."""


def payable(provider_key: str) -> str:
    return f"payable:{provider_key}"


def resident_account(mykey_id: str, measure: str) -> str:
    return f"resident:{mykey_id}:{measure}"


def _account_id(code: str) -> int:
    kind, _, rest = code.partition(":")
    fields: dict[str, str] = {"kind": kind}
    if kind == "payable":
        fields["provider_key"] = rest
    elif kind == "resident":
        mykey_id, _, measure = rest.partition(":")
        fields.update(mykey_id=mykey_id, measure=measure)
    account, _ = LedgerAccount.objects.get_or_create(code=code, defaults=fields)
    return account.pk


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
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("ledger entries are posted inside the use case's transaction")
    if sum(amount for _, amount in legs) != 0:
        raise ValueError(f"entry {key!r} does not balance: {legs}")
    if any(amount == 0 for _, amount in legs):
        raise ValueError(f"entry {key!r} has a zero leg")
    existing = Entry.objects.filter(idempotency_key=key).first()
    if existing is not None:
        before = sorted((p.account.code, p.amount) for p in existing.postings.select_related("account"))
        if before != sorted(legs):
            raise LedgerConflict(f"entry {key!r} was posted before with other legs: {before}")
        return existing, False
    entry = Entry.objects.create(
        kind=kind,
        at=at,
        effective_date=effective_date,
        idempotency_key=key,
        rule_edition=rule_edition,
        parameters=parameters,
        sources=sources,
        memo=memo,
        reverses=reverses,
    )
    Posting.objects.bulk_create(
        [
            Posting(entry=entry, account_id=_account_id(code), amount=amount, effective_date=effective_date)
            for code, amount in legs
        ]
    )
    return entry, True
