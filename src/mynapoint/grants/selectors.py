"""Proving the ledger: it balances, no resident is above a cap, and every grant traces to its facts; and the
grant instructions a provider pulls (:func:`grant_instructions`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db.models import Sum

from mynapoint.applications.models import HealthInsuranceRegistration, PublicFundRegistration
from mynapoint.applications.selectors import parameters
from mynapoint.grants.models import Grant
from mynapoint.grants.outbox import grant_item
from mynapoint.identity.models import Resident
from mynapoint.ledger.models import Entry
from mynapoint.ledger.selectors import LedgerReport, verify_ledger
from mynapoint.providers.models import Provider, ProviderTransaction
from mynapoint.providers.selectors import link_ref

__all__ = ["GrantPage", "caps_for", "grant_instructions", "verify_programme_ledger"]


def caps_for() -> Callable[[str], dict[str, int]]:
    params = parameters()
    phase1 = dict(Resident.objects.exclude(phase1_points=None).values_list("mykey_id", "phase1_points"))
    points = params.registration_points

    def caps(mykey_id: str) -> dict[str, int]:
        premium = max(0, params.premium_cap - int(phase1.get(mykey_id) or 0))
        return {
            "premium": premium,
            "health_insurance": points,
            "public_fund": points,
            "total": premium + 2 * points,
        }

    return caps


def _tracer() -> Callable[[Entry], str | None]:
    transactions = {f"{p}:{t}" for p, t in ProviderTransaction.objects.values_list("provider_id", "txid")}
    has_health = set(HealthInsuranceRegistration.objects.values_list("resident__mykey_id", flat=True))
    has_fund = set(PublicFundRegistration.objects.values_list("resident__mykey_id", flat=True))
    grants = dict(Grant.objects.values_list("instruction_entry_id", "resident__mykey_id"))
    grant_ids = set(Grant.objects.values_list("pk", flat=True))

    def traced(entry: Entry) -> str | None:
        sources = [str(s) for s in entry.sources]
        if entry.kind in ("grant_acknowledged", "clawback_acknowledged"):
            ok = any(s.startswith("grant:") and int(s.split(":")[1]) in grant_ids for s in sources)
            return None if ok else "acknowledgement of an unknown grant"
        if entry.kind not in ("grant_instructed", "clawback_instructed"):
            return None
        mykey_id = grants.get(entry.pk)
        if mykey_id is None:
            return "instruction with no grant row"
        if not any(s.startswith("application:") for s in sources):
            return "no application behind it"
        measure = next(s.split(":")[1] for s in sources if s.startswith("application:"))
        if measure == "premium":
            txs = [s.removeprefix("transaction:") for s in sources if s.startswith("transaction:")]
            missing = [t for t in txs if t not in transactions]
            if missing:
                return f"transactions not found: {missing[:3]}"
            if entry.kind == "grant_instructed" and not txs:
                return "a premium grant with no transaction"
        elif measure == "health_insurance" and mykey_id not in has_health:
            return "no health-insurance registration"
        elif measure == "public_fund" and mykey_id not in has_fund:
            return "no public-fund registration"
        return None

    return traced


def verify_programme_ledger(*, progress: Callable[[int], None] | None = None) -> LedgerReport:
    report = verify_ledger(caps=caps_for(), traced=_tracer(), progress=progress)
    # the grant rows and the ledger say the same
    for row in Grant.objects.values("resident__mykey_id", "measure").annotate(total=Sum("amount")):
        if row["total"] < 0:
            report.problems.append(
                f"{row['resident__mykey_id']} {row['measure']}: instructed {row['total']} < 0"
            )
    return report


@dataclass(frozen=True, slots=True)
class GrantPage:
    next_cursor: int
    items: list[dict[str, Any]]  # as grant_item: the shape of the pull and the push alike


def grant_instructions(*, provider: Provider, after: int, limit: int) -> GrantPage:
    """The provider's grant instructions with a position after ``after``, in position order, at most ``limit``,
    each with the resident's per-provider ``link_ref``. ``next_cursor`` is the last grant's position, or
    ``after`` when none. Positions commit in order (:class:`~mynapoint.grants.models.GrantSequence`), so a
    grant still to be committed always comes after the cursor."""
    grants = list(
        Grant.objects.select_related("account")
        .filter(provider=provider, position__gt=after)
        .order_by("position")[:limit]
    )

    def ref(grant: Grant) -> str:
        return link_ref(provider_key=provider.key, resident_id=grant.resident_id)

    return GrantPage(
        next_cursor=int(grants[-1].position or after) if grants else after,
        items=[grant_item(grant, ref) for grant in grants],
    )


def grant_link_ref(grant: Grant) -> str:
    """The ``link_ref`` a grant is announced with: the resident's pseudonym for the grant's provider."""
    return link_ref(provider_key=grant.provider.key, resident_id=grant.resident_id)
