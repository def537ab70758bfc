"""The grant engine: grants computed by the rules, on each provider's schedule, exactly once; the ledger."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from support import FEED, NOW, SELF

from mynapoint.applications.services import apply_for_measure, record_health_insurance_registration
from mynapoint.applications.transactions import record_refund, record_transaction
from mynapoint.grants.models import Grant
from mynapoint.grants.services import acknowledge_grant, due_cutoff, grant_due_points, run_grants
from mynapoint.identity.models import Resident
from mynapoint.ledger.selectors import balance, balances, verify_ledger
from mynapoint.providers.models import Provider

pytestmark = pytest.mark.django_db
OFFICE = FEED


def _charge(txid: str, amount: int, when: dt.datetime, service_id: str = "G-1") -> None:
    record_transaction(
        provider_key="wallet",
        txid=txid,
        service_id=service_id,
        kind="charge",
        amount=amount,
        at=when,
        now=when,
        who=FEED,
    )


def _linked(make_resident: Callable[..., Resident], measure: str = "premium") -> Resident:
    hanako = make_resident(accounts={"wallet/G-1": ["1"]})
    assert apply_for_measure(
        resident=hanako, measure=measure, provider_key="wallet", service_id="G-1", security_codes=["1"],
        mode="charge", operated_by=None, present=[], now=NOW, who=SELF,
    ).accepted  # fmt: skip
    return hanako


def test_an_immediate_provider_gets_a_grant_for_a_charge_and_a_clawback_after_a_refund(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = _linked(make_resident)
    later = NOW + dt.timedelta(days=1)
    _charge("c1", 20000, later)
    [grant] = grant_due_points(resident=hanako, today=later.date(), now=later, who=OFFICE)
    assert (grant.amount, grant.cumulative_after, grant.provider.key) == (5000, 5000, "wallet")
    assert grant_due_points(resident=hanako, today=later.date(), now=later, who=OFFICE) == []  # nothing twice
    record_refund(
        provider_key="wallet", refund_id="r1", txid="c1", amount=8000, at=later, now=later, who=FEED
    )
    [clawback] = grant_due_points(resident=hanako, today=later.date(), now=later, who=OFFICE)
    assert (clawback.amount, clawback.cumulative_after) == (-2000, 3000)
    entry = grant.instruction_entry
    assert entry.rule_edition == "seed"
    assert entry.parameters["premium_rate_percent"] == "25"
    assert any(source.endswith(":c1") for source in entry.sources)
    assert balance("payable:wallet") == 3000
    assert balance("budget") == -3000


def test_acknowledgement_moves_points_to_the_resident_and_the_ledger_verifies(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = _linked(make_resident, "health_insurance")
    record_health_insurance_registration(
        mykey_id=hanako.mykey_id, registered_at=NOW, external_id="h-g", source="oqs", now=NOW, who=FEED
    )
    [grant] = grant_due_points(resident=hanako, today=NOW.date(), now=NOW, who=OFFICE)
    assert grant.amount == 7500
    done = acknowledge_grant(grant=grant, provider=providers["wallet"], reference="W-77", now=NOW, who=FEED)
    again = acknowledge_grant(grant=grant, provider=providers["wallet"], reference="W-77", now=NOW, who=FEED)
    assert done.status == again.status == "acknowledged"
    assert balances(prefix="resident:") == {f"resident:{hanako.mykey_id}:health_insurance": 7500}
    assert balance("payable:wallet") == 0
    report = verify_ledger(
        caps=lambda _: {"premium": 5000, "health_insurance": 7500, "public_fund": 7500, "total": 20000}
    )
    assert report.ok, report.problems


@pytest.mark.parametrize(
    ("schedule", "days", "today", "cutoff"),
    [
        ("immediate", 0, dt.date(2023, 3, 15), dt.date(2023, 3, 15)),
        ("monthly", 10, dt.date(2023, 3, 9), dt.date(2023, 1, 31)),
        ("monthly", 10, dt.date(2023, 3, 10), dt.date(2023, 2, 28)),
        ("monthly", 28, dt.date(2023, 3, 28), dt.date(2023, 2, 28)),
        ("days_after", 30, dt.date(2023, 3, 31), dt.date(2023, 3, 1)),
    ],
)
def test_grants_are_due_on_the_providers_schedule(
    schedule: str, days: int, today: dt.date, cutoff: dt.date
) -> None:
    provider = Provider(key="p", grant_schedule=schedule, grant_schedule_days=days)
    assert due_cutoff(provider, today) == cutoff


def test_a_monthly_provider_is_instructed_next_month_on_its_day(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    Provider.objects.filter(key="wallet").update(grant_schedule="monthly", grant_schedule_days=10)
    hanako = _linked(make_resident)
    _charge("m1", 4000, NOW + dt.timedelta(days=2))  # 2022-07-03
    assert grant_due_points(resident=hanako, today=dt.date(2022, 8, 9), now=NOW, who=OFFICE) == []
    [grant] = grant_due_points(resident=hanako, today=dt.date(2022, 8, 10), now=NOW, who=OFFICE)
    assert (grant.amount, grant.due_as_of) == (1000, dt.date(2022, 7, 31))


def test_run_grants_reports_progress_and_is_idempotent(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = _linked(make_resident)
    _charge("c9", 10000, NOW + dt.timedelta(hours=1))
    seen: list[tuple[int, int]] = []
    first = run_grants(
        today=NOW.date(), now=NOW, who=OFFICE, progress=lambda n, total: seen.append((n, total))
    )
    second = run_grants(today=NOW.date(), now=NOW, who=OFFICE)
    assert (first.grants, first.points, second.grants) == (1, 2500, 0)
    assert seen == [(1, 1)]
    assert Grant.objects.filter(resident=hanako).count() == 1
