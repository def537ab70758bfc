"""Reading settlements: what the ledger says a provider may claim, the claims, their statements and proofs.

**Where a claim comes from.** The ledger, not the grant rows: a claim settles the *postings on resident
accounts of entries that also post on* ``payable:<provider>``. Those are exactly the provider's
acknowledgements (``grant_acknowledged``: payable → resident, a positive resident posting; and
``clawback_acknowledged``: resident → payable, a negative one) and any later entry that reverses one. An
instruction (budget → payable) has no resident leg, so it is not claimed: the provider is paid for what it
has confirmed it gave. A posting counts in the month of its ``effective_date`` (the JST day of the
acknowledgement). The grant row whose ``acknowledgement_entry`` it is gives the grant id, which the provider
knows, for the statement's detail and the reconciliation.

**The digest** of a claim is the SHA-256 of a header line (canonical JSON of provider, kind, period and
through) followed by one line per settled posting, in posting order:
``posting_id,entry_id,grant_id,measure,amount,effective_date``. A fixed claim's digest can be recomputed from
its items (:func:`verify_claim`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.db.models import Exists, OuterRef, QuerySet, Subquery, Sum

from mynapoint.grants.models import Grant
from mynapoint.ledger.models import LedgerAccount, Posting
from mynapoint.ledger.services import payable
from mynapoint.providers.models import Provider
from mynapoint.rules.codes import MEASURE_LABELS
from mynapoint.settlement.models import Claim, ClaimItem, ClaimKind, ClaimLine, ClaimStatus

__all__ = [
    "ClaimSummary",
    "LineSummary",
    "SettledPosting",
    "Statement",
    "StatementLine",
    "acknowledged_postings",
    "acknowledged_total",
    "claim_digest",
    "claim_items",
    "claim_statement",
    "claims_of",
    "find_claim",
    "fixed_monthly_periods",
    "measure_label",
    "month_end",
    "month_start",
    "provider_by_key",
    "summarize",
    "verify_claim",
]


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def month_end(day: dt.date) -> dt.date:
    following = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return following - dt.timedelta(days=1)


def measure_label(measure: str) -> str:
    return MEASURE_LABELS.get(measure, (measure, measure))[0]


@dataclass(frozen=True, slots=True)
class SettledPosting:
    """One resident posting of an acknowledgement entry of the provider: what a claim settles."""

    posting_id: int
    entry_id: int
    grant_id: int | None
    measure: str
    amount: int
    effective_date: dt.date

    def digest_line(self) -> str:
        grant = "" if self.grant_id is None else str(self.grant_id)
        return (
            f"{self.posting_id},{self.entry_id},{grant},{self.measure},{self.amount},"
            f"{self.effective_date.isoformat()}\n"
        )


def _payable_account_id(provider: Provider) -> int | None:
    return LedgerAccount.objects.filter(code=payable(provider.key)).values_list("pk", flat=True).first()


def _acknowledgement_postings(
    provider: Provider, *, start: dt.date | None, through: dt.date
) -> QuerySet[Posting]:
    account_id = _payable_account_id(provider)
    if account_id is None:
        return Posting.objects.none()
    # the resident legs of the entries with a leg on the provider's payable in the period, as one join from those
    # payable legs (their index) through the entries' legs (the entry index): a plan that stays linear when the
    # statistics are stale after a bulk load (an IN (subquery) was planned as a nested loop over both sides,
    # 17 s for 20,000 acknowledgements)
    dated: dict[str, object] = (
        {"effective_date__lte": through} if start is None else {"effective_date__range": (start, through)}
    )
    on_payable = {f"entry__postings__{name}": value for name, value in dated.items()}
    return Posting.objects.filter(
        account__kind="resident", entry__postings__account_id=account_id, **on_payable, **dated
    ).distinct()  # once, even for an entry with two legs on the payable


def acknowledged_postings(
    *, provider: Provider, start: dt.date | None, through: dt.date, unclaimed: bool = True
) -> Iterator[SettledPosting]:
    """The provider's acknowledged postings dated ``start``–``through`` (``start`` None: from the beginning),
    in posting order; ``unclaimed``: only those no fixed claim has settled yet."""
    postings = _acknowledgement_postings(provider, start=start, through=through)
    if unclaimed:
        postings = postings.filter(~Exists(ClaimItem.objects.filter(posting_id=OuterRef("pk"))))
    grant = Grant.objects.filter(acknowledgement_entry_id=OuterRef("entry_id")).values("pk")[:1]
    rows = (
        postings.annotate(grant_id=Subquery(grant))
        .order_by("pk")
        .values_list("pk", "entry_id", "grant_id", "account__measure", "amount", "effective_date")
    )
    for posting_id, entry_id, grant_id, measure, amount, effective_date in rows.iterator(chunk_size=5000):
        yield SettledPosting(posting_id, entry_id, grant_id, measure, int(amount), effective_date)


def acknowledged_total(*, provider: Provider, through: dt.date) -> int:
    """Everything the provider has acknowledged through a day, net of claw-backs (claimed or not)."""
    total = _acknowledgement_postings(provider, start=None, through=through).aggregate(total=Sum("amount"))
    return int(total["total"] or 0)


def fixed_monthly_periods(*, provider: Provider) -> frozenset[dt.date]:
    return frozenset(
        Claim.objects.filter(provider=provider, kind=ClaimKind.MONTHLY, status=ClaimStatus.FIXED).values_list(
            "period", flat=True
        )
    )


def _digest_header(*, provider_key: str, kind: str, period: dt.date, through: dt.date) -> str:
    header = {
        "provider": provider_key,
        "kind": kind,
        "period": period.isoformat(),
        "through": through.isoformat(),
    }
    return json.dumps(header, sort_keys=True, separators=(",", ":")) + "\n"


@dataclass
class LineSummary:
    period: dt.date
    measure: str
    grant_count: int = 0
    granted_points: int = 0
    clawback_count: int = 0
    clawback_points: int = 0
    late: bool = False

    @property
    def amount(self) -> int:
        return self.granted_points - self.clawback_points


@dataclass
class ClaimSummary:
    """A claim as computed: its lines, totals and digest, from one pass over the postings it settles."""

    lines: list[LineSummary] = field(default_factory=list)
    postings: int = 0
    digest: str = ""

    @property
    def grant_count(self) -> int:
        return sum(line.grant_count for line in self.lines)

    @property
    def granted_points(self) -> int:
        return sum(line.granted_points for line in self.lines)

    @property
    def clawback_count(self) -> int:
        return sum(line.clawback_count for line in self.lines)

    @property
    def clawback_points(self) -> int:
        return sum(line.clawback_points for line in self.lines)

    @property
    def amount(self) -> int:
        return self.granted_points - self.clawback_points


def summarize(
    postings: Iterator[SettledPosting],
    *,
    provider_key: str,
    kind: str,
    period: dt.date,
    through: dt.date,
    late_periods: frozenset[dt.date] = frozenset(),
) -> ClaimSummary:
    """Lines per (month, measure), totals and the digest of a set of postings, in one pass."""
    digest = hashlib.sha256(
        _digest_header(provider_key=provider_key, kind=kind, period=period, through=through).encode()
    )
    lines: dict[tuple[dt.date, str], LineSummary] = {}
    summary = ClaimSummary()
    for posting in postings:
        digest.update(posting.digest_line().encode())
        month = month_start(posting.effective_date)
        line = lines.get((month, posting.measure))
        if line is None:
            line = lines[month, posting.measure] = LineSummary(
                period=month, measure=posting.measure, late=month in late_periods
            )
        if posting.amount > 0:
            line.grant_count += 1
            line.granted_points += posting.amount
        else:
            line.clawback_count += 1
            line.clawback_points += -posting.amount
        summary.postings += 1
    summary.lines = [lines[key] for key in sorted(lines)]
    summary.digest = digest.hexdigest()
    return summary


def claim_items(*, claim: Claim) -> Iterator[SettledPosting]:
    """What a fixed claim settled, in posting order (a draft has no items)."""
    rows = (
        ClaimItem.objects.filter(claim=claim)
        .order_by("posting_id")
        .values_list("posting_id", "posting__entry_id", "grant_id", "measure", "amount", "effective_date")
    )
    for posting_id, entry_id, grant_id, measure, amount, effective_date in rows.iterator(chunk_size=5000):
        yield SettledPosting(posting_id, entry_id, grant_id, measure, int(amount), effective_date)


def claim_digest(*, claim: Claim) -> str:
    """The digest of a fixed claim recomputed from its items."""
    return summarize(
        claim_items(claim=claim),
        provider_key=claim.provider.key,
        kind=claim.kind,
        period=claim.period,
        through=claim.through,
    ).digest


def verify_claim(*, claim: Claim) -> list[str]:
    """Problems with a fixed claim: its items, lines, totals and digest must agree (empty: it verifies)."""
    if claim.status != ClaimStatus.FIXED:
        return [f"claim #{claim.pk} is not fixed"]
    problems: list[str] = []
    summary = summarize(
        claim_items(claim=claim),
        provider_key=claim.provider.key,
        kind=claim.kind,
        period=claim.period,
        through=claim.through,
    )
    if summary.digest != claim.digest:
        problems.append(f"claim #{claim.pk}: its items do not give its digest")
    stored = {
        (line.period, line.measure): (
            line.grant_count,
            line.granted_points,
            line.clawback_count,
            line.clawback_points,
        )
        for line in claim.lines.all()
    }
    computed = {
        (line.period, line.measure): (
            line.grant_count,
            line.granted_points,
            line.clawback_count,
            line.clawback_points,
        )
        for line in summary.lines
    }
    if stored != computed:
        problems.append(f"claim #{claim.pk}: its lines do not add up to its items")
    totals = (claim.grant_count, claim.granted_points, claim.clawback_count, claim.clawback_points)
    if totals != (
        summary.grant_count,
        summary.granted_points,
        summary.clawback_count,
        summary.clawback_points,
    ):
        problems.append(f"claim #{claim.pk}: its totals do not add up to its items")
    return problems


def provider_by_key(*, key: str) -> Provider | None:
    return Provider.objects.filter(key=key).first()


def find_claim(*, claim_id: int) -> Claim | None:
    return Claim.objects.select_related("provider").filter(pk=claim_id).first()


def claims_of(*, provider: Provider | None = None) -> QuerySet[Claim]:
    claims = Claim.objects.select_related("provider").order_by("provider__key", "period", "id")
    return claims.filter(provider=provider) if provider is not None else claims


@dataclass(frozen=True, slots=True)
class StatementLine:
    period: dt.date
    measure: str
    measure_label: str
    grant_count: int
    granted_points: int
    clawback_count: int
    clawback_points: int
    amount: int
    late: bool


@dataclass(frozen=True, slots=True)
class Statement:
    """What a statement (CSV or PDF) shows of one claim."""

    claim_id: int
    provider_key: str
    provider_name: str
    kind: str
    kind_label: str
    status: str
    status_label: str
    period: dt.date
    through: dt.date
    computed_at: dt.datetime
    fixed_at: dt.datetime | None
    lines: tuple[StatementLine, ...]
    grant_count: int
    granted_points: int
    clawback_count: int
    clawback_points: int
    amount: int
    acknowledged_total: int
    claimed_before: int
    digest: str

    @property
    def period_label(self) -> str:
        if self.kind == ClaimKind.MONTHLY:
            return f"{self.period.year}年{self.period.month}月分"
        return f"{self.through.year}年{self.through.month}月{self.through.day}日までの承認分"


def claim_statement(*, claim: Claim) -> Statement:
    provider = claim.provider
    lines = tuple(
        StatementLine(
            period=line.period,
            measure=line.measure,
            measure_label=measure_label(line.measure),
            grant_count=line.grant_count,
            granted_points=line.granted_points,
            clawback_count=line.clawback_count,
            clawback_points=line.clawback_points,
            amount=line.amount,
            late=line.late,
        )
        for line in ClaimLine.objects.filter(claim=claim).order_by("period", "measure")
    )
    return Statement(
        claim_id=claim.pk,
        provider_key=provider.key,
        provider_name=provider.name_ja,
        kind=claim.kind,
        kind_label=ClaimKind(claim.kind).label,
        status=claim.status,
        status_label=ClaimStatus(claim.status).label,
        period=claim.period,
        through=claim.through,
        computed_at=claim.computed_at,
        fixed_at=claim.fixed_at,
        lines=lines,
        grant_count=claim.grant_count,
        granted_points=claim.granted_points,
        clawback_count=claim.clawback_count,
        clawback_points=claim.clawback_points,
        amount=claim.amount,
        acknowledged_total=claim.acknowledged_total,
        claimed_before=claim.claimed_before,
        digest=claim.digest,
    )
