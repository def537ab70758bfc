"""The batch grant engine (Polars) and the per-resident engine instruct the same grants."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

import pytest
from support import FEED, NOW, SELF

from mynapoint.applications.models import PaymentAccount
from mynapoint.applications.services import (
    BankAccount,
    apply_for_measure,
    record_death,
    record_health_insurance_registration,
    record_public_fund_registration,
    replace_lost_account,
)
from mynapoint.applications.transactions import record_refund, record_transaction
from mynapoint.audit.models import AuditEvent
from mynapoint.grants.batch import run_grants_batch
from mynapoint.grants.models import Grant
from mynapoint.grants.selectors import verify_programme_ledger
from mynapoint.grants.services import grant_due_points, run_grants
from mynapoint.identity.models import Resident
from mynapoint.providers.models import Provider

pytestmark = pytest.mark.django_db


def _world(seed: int, make_resident: Callable[..., Resident]) -> list[Resident]:
    rng = random.Random(seed)
    Provider.objects.filter(key="card").update(
        security_code_count=1, grant_schedule="days_after", grant_schedule_days=20
    )
    Provider.objects.create(
        key="monthly",
        name_ja="月次",
        kind="emoney",
        modes=["charge"],
        grant_schedule="monthly",
        grant_schedule_days=10,
    )
    people = []
    for i in range(24):
        provider = ["wallet", "card", "monthly"][i % 3]
        mode = {"wallet": "charge", "card": "purchase", "monthly": "charge"}[provider]
        accounts = {f"{provider}/B{i}": ["1"], f"{provider}/B{i}x": ["1"]}
        facts: dict[str, object] = {}
        if i % 7 == 0:
            PaymentAccount.objects.get_or_create(
                provider=Provider.objects.get(key=provider), service_id=f"B{i}"
            )
            facts = {
                "phase1_applied": dt.date(2021, 5, 1),
                "phase1_account": f"{provider}/B{i}",
                "phase1_points": rng.choice([0, 3000, 4999]),
                "phase1_mode": mode,
            }
        resident = make_resident(kana=f"テスト ジン{i}", accounts=accounts, **facts)
        people.append(resident)
        for measure in ("premium", "health_insurance", "public_fund"):
            if rng.random() < 0.8:
                apply_for_measure(resident=resident, measure=measure, provider_key=provider, service_id=f"B{i}",
                                  security_codes=["1"], mode=mode, operated_by=None, present=[], now=NOW, who=SELF)  # fmt: skip
        for t in range(rng.randint(0, 5)):
            at = NOW + dt.timedelta(days=rng.randint(0, 60), hours=1)
            kind = mode if rng.random() < 0.85 else "purchase"
            record_transaction(provider_key=provider, txid=f"b{i}-{t}", service_id=f"B{i}", kind=kind,
                               amount=rng.choice([1000, 4999, 9000, 15000]), at=at, now=at, who=FEED)  # fmt: skip
            if rng.random() < 0.25:
                later = at + dt.timedelta(days=rng.randint(0, 30))
                record_refund(provider_key=provider, refund_id=f"r{i}-{t}", txid=f"b{i}-{t}", amount=rng.choice([500, 20000]),
                              at=later, now=later, who=FEED)  # fmt: skip
        if rng.random() < 0.6:
            record_health_insurance_registration(mykey_id=resident.mykey_id, registered_at=NOW + dt.timedelta(days=rng.randint(0, 90)),
                                                 external_id=f"h{seed}-{i}", source="t", now=NOW, who=FEED)  # fmt: skip
        if rng.random() < 0.6:
            record_public_fund_registration(mykey_id=resident.mykey_id, registered_at=NOW + dt.timedelta(days=rng.randint(0, 90)),
                                            external_id=f"p{seed}-{i}", source="t", bank=BankAccount("0001", "001", "1", "1234567"),
                                            holder_kana=rng.choice([f"テスト ジン{i}", "ベツジン"]), now=NOW, who=FEED)  # fmt: skip
        if (
            i % 5 == 0
            and PaymentAccount.objects.filter(service_id=f"B{i}", linked_resident=resident).exists()
        ):
            replace_lost_account(resident=resident, provider_key=provider, from_service_id=f"B{i}", to_service_id=f"B{i}x",
                                 at=NOW + dt.timedelta(days=10), who=FEED)  # fmt: skip
            record_transaction(provider_key=provider, txid=f"b{i}-new", service_id=f"B{i}x", kind=mode, amount=8000,
                               at=NOW + dt.timedelta(days=11), now=NOW + dt.timedelta(days=11), who=FEED)  # fmt: skip
        if i % 11 == 3:
            record_death(resident=resident, died=(NOW + dt.timedelta(days=30)).date(), now=NOW, who=FEED)
    return people


@pytest.mark.parametrize(
    ("seed", "today"), [(1, dt.date(2022, 8, 15)), (2, dt.date(2022, 10, 12)), (3, dt.date(2023, 7, 1))]
)
def test_the_batch_engine_instructs_what_the_per_resident_engine_would(
    seed: int, today: dt.date, providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    people = _world(seed, make_resident)
    report = run_grants_batch(today=today, now=NOW + dt.timedelta(days=200), who=FEED)
    assert report.grants > 10
    assert not report.errors
    for resident in people:  # the per-resident engine finds nothing left to instruct
        assert grant_due_points(resident=resident, today=today, now=NOW, who=FEED) == [], resident.mykey_id
    again = run_grants_batch(today=today, now=NOW + dt.timedelta(days=200), who=FEED)
    assert (again.grants, again.clawbacks) == (0, 0)
    assert verify_programme_ledger().ok, verify_programme_ledger().problems


def test_after_the_per_resident_engine_the_batch_finds_nothing_left(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    _world(4, make_resident)
    today = dt.date(2022, 9, 30)
    first = run_grants(today=today, now=NOW, who=FEED)
    assert first.grants > 10
    count = Grant.objects.count()
    batch = run_grants_batch(today=today, now=NOW, who=FEED)
    assert (batch.grants, batch.clawbacks, Grant.objects.count()) == (0, 0, count)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_chunks_posted_side_by_side_instruct_what_one_writer_would(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    """Small chunks on two connections (PostgreSQL; SQLite posts them one by one): the same grants as the
    per-resident engine would instruct, every chunk committed, the ledger verified, and each provider's cursor
    positions one per grant, in the order the chunks committed."""
    people = _world(5, make_resident)
    today = dt.date(2022, 10, 12)
    report = run_grants_batch(today=today, now=NOW + dt.timedelta(days=200), who=FEED, chunk=3, writers=2)
    assert report.grants > 10
    assert not report.errors
    for resident in people:
        assert grant_due_points(resident=resident, today=today, now=NOW, who=FEED) == [], resident.mykey_id
    assert verify_programme_ledger().ok, verify_programme_ledger().problems
    for provider in providers.values():
        positions = list(Grant.objects.filter(provider=provider).values_list("position", flat=True))
        assert None not in positions
        assert len(set(positions)) == len(positions)
    chunks = AuditEvent.objects.filter(action="grants_instructed_batch").count()
    assert chunks == -(-report.grants // 3) or chunks >= report.grants // 3
