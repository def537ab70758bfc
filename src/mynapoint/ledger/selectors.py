"""Reading the ledger: balances by account and date, and the proof that it is consistent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db.models import Sum

from mynapoint.ledger.models import Entry, Posting

__all__ = ["LedgerReport", "balance", "balances", "verify_ledger"]


def balance(code: str, *, as_of: dt.date | None = None) -> int:
    """The balance of one account at the end of a JST day (default: everything posted)."""
    postings = Posting.objects.filter(account__code=code)
    if as_of is not None:
        postings = postings.filter(effective_date__lte=as_of)
    return int(postings.aggregate(total=Sum("amount"))["total"] or 0)


def balances(*, prefix: str = "", as_of: dt.date | None = None) -> dict[str, int]:
    postings = Posting.objects.all()
    if prefix:
        postings = postings.filter(account__code__startswith=prefix)
    if as_of is not None:
        postings = postings.filter(effective_date__lte=as_of)
    rows = postings.values("account__code").annotate(total=Sum("amount")).order_by("account__code")
    return {row["account__code"]: int(row["total"]) for row in rows}


@dataclass
class LedgerReport:
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_ledger(
    *,
    caps: Callable[[str], dict[str, int]] | None = None,
    traced: Callable[[Entry], str | None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> LedgerReport:
    """Every entry balances; no resident is above a cap (``caps(mykey_id)`` gives the caps per measure and
    ``"total"``); every entry traces to its facts (``traced(entry)`` returns a problem or None)."""
    report = LedgerReport()
    unbalanced = (
        Posting.objects.values("entry_id")
        .annotate(total=Sum("amount"))
        .exclude(total=0)
        .values_list("entry_id", flat=True)
    )
    for entry_id in unbalanced[:20]:
        report.problems.append(f"entry #{entry_id} does not balance")
    grand = Posting.objects.aggregate(total=Sum("amount"))["total"] or 0
    if grand != 0:
        report.problems.append(f"the ledger as a whole is off by {grand}")
    report.entries = Entry.objects.count()
    if caps is not None:
        per_resident: dict[str, dict[str, int]] = {}
        rows = (
            Posting.objects.filter(account__kind="resident")
            .values("account__mykey_id", "account__measure")
            .annotate(total=Sum("amount"))
        )
        for row in rows:
            per_resident.setdefault(row["account__mykey_id"], {})[row["account__measure"]] = int(row["total"])
        for n, (mykey_id, held) in enumerate(sorted(per_resident.items())):
            limits = caps(mykey_id)
            for measure, amount in held.items():
                if amount < 0:
                    report.problems.append(f"{mykey_id} {measure}: negative balance {amount}")
                if amount > limits.get(measure, 0):
                    report.problems.append(
                        f"{mykey_id} {measure}: {amount} is above the cap {limits.get(measure, 0)}"
                    )
            if sum(held.values()) > limits.get("total", 0):
                report.problems.append(
                    f"{mykey_id}: total {sum(held.values())} is above {limits.get('total', 0)}"
                )
            if progress and n % 1000 == 0:
                progress(n)
    if traced is not None:
        for entry in Entry.objects.order_by("id").iterator(chunk_size=2000):
            problem = traced(entry)
            if problem:
                report.problems.append(f"entry #{entry.pk} ({entry.kind}): {problem}")
    return report
