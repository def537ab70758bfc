"""Writing settlements: compute a claim as a draft, fix it. Each is one durable transaction with its audit event.

* ``compute_monthly_claim`` — the 概算払 of one provider for one month that is over: every acknowledged
  posting dated in that month that no fixed claim has settled (see :mod:`mynapoint.settlement.selectors` for
  what is claimed). Computing again replaces the month's draft; a fixed month is never computed again.
* ``compute_final_settlement`` — the 精算: everything acknowledged up to today less everything the fixed
  claims have settled. A claw-back acknowledged after its month's claim was fixed is not in that claim, so it
  is deducted here, on a line of its own month (``late`` when that month was fixed). After a fixed final
  settlement no monthly claim is made; a later final settlement is supplementary (追加精算) and holds only
  what was acknowledged since.
* ``fix_claim`` — fixes a draft: the selection is computed again and must give the draft's digest and totals
  (else the ledger moved: compute again); the settled postings are written down as the claim's items (each
  posting once, a unique constraint), and the claim can no longer change (database triggers).

The provider's row is locked for each of them (PostgreSQL ``FOR NO KEY UPDATE``; SQLite transactions are
``IMMEDIATE``), so two fixes or a compute and a fix of one provider do not interleave.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, Final

from django.db import connection, transaction
from django.db.models import Max, QuerySet, Sum

from mynapoint.audit.services import Actor, record
from mynapoint.providers.models import Provider
from mynapoint.rules.model import JST
from mynapoint.settlement.models import Claim, ClaimItem, ClaimKind, ClaimLine, ClaimStatus
from mynapoint.settlement.selectors import (
    ClaimSummary,
    SettledPosting,
    acknowledged_postings,
    acknowledged_total,
    fixed_monthly_periods,
    month_end,
    month_start,
    summarize,
)

__all__ = ["SettlementError", "compute_final_settlement", "compute_monthly_claim", "fix_claim"]

_ITEM_BATCH = 5000


class SettlementError(RuntimeError):
    """A claim cannot be computed or fixed; ``code`` says why (for the CLI and the API's error shape)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _jst_day(now: dt.datetime) -> dt.date:
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(JST).date()


SETTLEMENT_LOCKS: Final = 0x5345_5454  # the advisory-lock space of settlement: one lock per provider


def _lock_provider(provider: Provider) -> Provider:
    """Serialise the settlement of one provider (claims computed, fixed, settled one at a time) until the
    transaction ends. On PostgreSQL an advisory lock keyed by the provider, not its row: applications to the
    provider read that row under FOR SHARE (Q14) and must not wait while a claim is computed. SQLite's
    IMMEDIATE transactions serialise the writers already."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [SETTLEMENT_LOCKS, provider.pk])
    return Provider.objects.get(pk=provider.pk)


def _fixed(provider: Provider) -> QuerySet[Claim]:
    return Claim.objects.filter(provider=provider, status=ClaimStatus.FIXED)


def _claimed_before(provider: Provider) -> int:
    return int(_fixed(provider).aggregate(total=Sum("amount"))["total"] or 0)


def _refuse_if_settled(provider: Provider, period: dt.date) -> None:
    if _fixed(provider).filter(kind=ClaimKind.FINAL).exists():
        raise SettlementError(
            "settled",
            f"{provider.key} has a fixed final settlement: no more monthly claims "
            f"({period:%Y-%m}); a later correction goes into a supplementary final settlement",
        )


def _snapshot(claim: Claim) -> dict[str, Any]:
    return {
        "provider": claim.provider.key,
        "kind": claim.kind,
        "period": claim.period.isoformat(),
        "through": claim.through.isoformat(),
        "status": claim.status,
        "amount": claim.amount,
        "granted_points": claim.granted_points,
        "clawback_points": claim.clawback_points,
        "digest": claim.digest,
    }


def _write_draft(
    *,
    provider: Provider,
    kind: str,
    period: dt.date,
    through: dt.date,
    summary: ClaimSummary,
    acknowledged: int,
    claimed_before: int,
    now: dt.datetime,
    who: Actor,
) -> Claim:
    drafts = Claim.objects.filter(provider=provider, kind=kind, status=ClaimStatus.DRAFT)
    if kind == ClaimKind.MONTHLY:
        drafts = drafts.filter(period=period)
    claim = drafts.first()
    before = _snapshot(claim) if claim is not None else None
    if claim is None:
        claim = Claim(provider=provider, kind=kind)
    else:
        ClaimLine.objects.filter(claim=claim).delete()
    claim.period = period
    claim.through = through
    claim.grant_count = summary.grant_count
    claim.granted_points = summary.granted_points
    claim.clawback_count = summary.clawback_count
    claim.clawback_points = summary.clawback_points
    claim.amount = summary.amount
    claim.acknowledged_total = acknowledged
    claim.claimed_before = claimed_before
    claim.digest = summary.digest
    claim.computed_at = now
    claim.computed_by = who.actor
    claim.save()
    ClaimLine.objects.bulk_create(
        [
            ClaimLine(
                claim=claim,
                period=line.period,
                measure=line.measure,
                grant_count=line.grant_count,
                granted_points=line.granted_points,
                clawback_count=line.clawback_count,
                clawback_points=line.clawback_points,
                amount=line.amount,
                late=line.late,
            )
            for line in summary.lines
        ]
    )
    record(
        who=who,
        action="claim_computed",
        subject_type="claim",
        subject_id=str(claim.pk),
        before=before,
        after={**_snapshot(claim), "postings": summary.postings},
        at=now,
    )
    return claim


def compute_monthly_claim(*, provider: Provider, month: dt.date, now: dt.datetime, who: Actor) -> Claim:
    """The draft 概算払 claim of ``provider`` for the month of ``month`` (which must be over on ``now``)."""
    period = month_start(month)
    through = month_end(period)
    today = _jst_day(now)
    if through >= today:
        raise SettlementError(
            "period_open", f"{period:%Y-%m} is not over on {today}: claim it from next month"
        )
    with transaction.atomic(durable=True):
        me = _lock_provider(provider)
        _refuse_if_settled(me, period)
        if _fixed(me).filter(kind=ClaimKind.MONTHLY, period=period).exists():
            raise SettlementError(
                "already_fixed",
                f"the claim of {me.key} for {period:%Y-%m} is fixed: a later correction goes into the final "
                "settlement",
            )
        summary = summarize(
            acknowledged_postings(provider=me, start=period, through=through),
            provider_key=me.key,
            kind=ClaimKind.MONTHLY,
            period=period,
            through=through,
        )
        return _write_draft(
            provider=me,
            kind=ClaimKind.MONTHLY,
            period=period,
            through=through,
            summary=summary,
            acknowledged=acknowledged_total(provider=me, through=through),
            claimed_before=_claimed_before(me),
            now=now,
            who=who,
        )


def compute_final_settlement(*, provider: Provider, now: dt.datetime, who: Actor) -> Claim:
    """The draft 精算 of ``provider``: everything acknowledged through today (JST) less what fixed claims
    settled, so late claw-backs are deducted."""
    through = _jst_day(now)
    period = month_start(through)
    with transaction.atomic(durable=True):
        me = _lock_provider(provider)
        furthest = _fixed(me).aggregate(last=Max("through"))["last"]
        if furthest is not None and furthest > through:
            raise SettlementError(
                "out_of_order", f"a fixed claim of {me.key} runs to {furthest}, after {through}"
            )
        summary = summarize(
            acknowledged_postings(provider=me, start=None, through=through),
            provider_key=me.key,
            kind=ClaimKind.FINAL,
            period=period,
            through=through,
            late_periods=fixed_monthly_periods(provider=me),
        )
        acknowledged = acknowledged_total(provider=me, through=through)
        claimed_before = _claimed_before(me)
        if acknowledged != claimed_before + summary.amount:
            raise SettlementError(
                "inconsistent",
                f"{me.key}: acknowledged {acknowledged} ≠ claimed {claimed_before} + unclaimed {summary.amount}",
            )
        return _write_draft(
            provider=me,
            kind=ClaimKind.FINAL,
            period=period,
            through=through,
            summary=summary,
            acknowledged=acknowledged,
            claimed_before=claimed_before,
            now=now,
            who=who,
        )


def _writing_items(claim: Claim, postings: Iterator[SettledPosting]) -> Iterator[SettledPosting]:
    """Pass the postings on, writing each down as an item of ``claim`` (in batches) on the way."""
    batch: list[ClaimItem] = []
    for posting in postings:
        batch.append(
            ClaimItem(
                claim=claim,
                posting_id=posting.posting_id,
                grant_id=posting.grant_id,
                measure=posting.measure,
                amount=posting.amount,
                effective_date=posting.effective_date,
            )
        )
        if len(batch) >= _ITEM_BATCH:
            ClaimItem.objects.bulk_create(batch)
            batch = []
        yield posting
    if batch:
        ClaimItem.objects.bulk_create(batch)


def fix_claim(*, claim: Claim, now: dt.datetime, who: Actor, digest: str | None = None) -> Claim:
    """Fix a draft claim. ``digest``: the one on the statement that was approved (refused if it differs)."""
    with transaction.atomic(durable=True):
        me = _lock_provider(claim.provider)
        current = Claim.objects.select_related("provider").get(pk=claim.pk)
        if current.status != ClaimStatus.DRAFT:
            raise SettlementError("already_fixed", f"claim #{current.pk} is fixed already")
        if digest is not None and digest != current.digest:
            raise SettlementError(
                "digest_differs",
                f"claim #{current.pk} has digest {current.digest}, not the approved {digest}",
            )
        if current.kind == ClaimKind.MONTHLY:
            _refuse_if_settled(me, current.period)
            start: dt.date | None = current.period
            late: frozenset[dt.date] = frozenset()
        else:
            start = None
            late = fixed_monthly_periods(provider=me)
        claimed_before = _claimed_before(me)
        summary = summarize(
            _writing_items(current, acknowledged_postings(provider=me, start=start, through=current.through)),
            provider_key=me.key,
            kind=current.kind,
            period=current.period,
            through=current.through,
            late_periods=late,
        )
        now_seen = (summary.digest, summary.amount, claimed_before)
        if now_seen != (current.digest, current.amount, current.claimed_before):
            # the items written above go with the rollback
            raise SettlementError(
                "out_of_date",
                f"the ledger moved since claim #{current.pk} was computed at {current.computed_at}: compute it again",
            )
        before = _snapshot(current)
        current.status = ClaimStatus.FIXED
        current.fixed_at = now
        current.fixed_by = who.actor
        current.save(update_fields=["status", "fixed_at", "fixed_by"])
        record(
            who=who,
            action="claim_fixed",
            subject_type="claim",
            subject_id=str(current.pk),
            before=before,
            after={**_snapshot(current), "items": summary.postings},
            at=now,
        )
        return current
