"""Acknowledgements in bulk (``POST /grants/ack``, ``acknowledge_grants``): one durable transaction and one audit
event for a whole request, each grant acknowledged once with its first reference, a refused request keeping
nothing, and two requests naming the same grants at once acknowledging each grant once (PostgreSQL)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
import test_grant_positions
from support import NOW, SELF
from test_grant_positions import charged
from test_provider_api import ProviderClient

from mynapoint.audit.models import AuditEvent
from mynapoint.audit.services import Actor
from mynapoint.grants.models import Grant
from mynapoint.grants.selectors import verify_programme_ledger
from mynapoint.grants.services import NotYourGrant, UnknownGrant, acknowledge_grants, grant_due_points
from mynapoint.identity.models import Resident
from mynapoint.ledger.models import Entry
from mynapoint.ledger.selectors import balance
from mynapoint.providers.models import Provider
from mynapoint.providers.services import onboard_provider

pytestmark = pytest.mark.django_db

api = test_grant_positions.api  # the wallet, its accounts declared through the provider API
PROVIDER = Actor(actor="wallet", channel="provider", terminal="test")
RESIDENTS = 12


def _grants(api: ProviderClient, make_resident: Callable[..., Resident], n: int = RESIDENTS) -> list[Grant]:
    grants = []
    for i in range(1, n + 1):
        grants.extend(
            grant_due_points(resident=charged(api, make_resident, i), today=NOW.date(), now=NOW, who=SELF)
        )
    return grants


def test_one_request_acknowledges_every_grant_once_in_one_transaction_with_one_audit_event(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    grants = _grants(api, make_resident)
    events = AuditEvent.objects.count()
    items = [{"grant_id": g.pk, "reference": f"PAY-{g.pk}"} for g in grants]
    items += [{"grant_id": grants[0].pk, "reference": "again"}]  # named twice: the first reference holds
    answer = api.post("/grants/ack", {"items": items})
    assert answer.status_code == 200, answer.content.decode()
    assert answer.json() == {"acknowledged": RESIDENTS, "already": 1}
    for grant in Grant.objects.filter(pk__in=[g.pk for g in grants]).select_related("resident"):
        assert (grant.status, grant.provider_reference) == ("acknowledged", f"PAY-{grant.pk}")
        assert grant.acknowledged_at is not None
        assert grant.acknowledged_at >= NOW  # the server's clock, which runs from NOW
        entry = grant.acknowledgement_entry
        assert entry is not None
        assert (entry.kind, entry.idempotency_key) == ("grant_acknowledged", f"ack:{grant.pk}")
        assert entry.sources == [f"grant:{grant.pk}", f"provider_reference:PAY-{grant.pk}"]
        assert entry.parameters["premium_cap"] == "5000"  # the instruction's parameters, carried over
        assert balance(f"resident:{grant.resident.mykey_id}:premium") == 5000
    assert balance("payable:wallet") == 0
    [event] = AuditEvent.objects.order_by("-pk")[: AuditEvent.objects.count() - events]
    assert (event.action, event.subject_type, event.subject_id) == (
        "grants_acknowledged",
        "provider",
        "wallet",
    )
    lines = "".join(f"{item['grant_id']}|{item['reference']}\n" for item in items)
    assert event.after == {
        "items": RESIDENTS + 1,
        "acknowledged": RESIDENTS,
        "already": 1,
        "first": grants[0].pk,
        "last": grants[-1].pk,
        "points": 5000 * RESIDENTS,
        "digest": hashlib.sha256(lines.encode("utf-8")).hexdigest(),
    }
    again = api.post("/grants/ack", {"items": items[:3]})
    assert again.json() == {"acknowledged": 0, "already": 3}
    assert AuditEvent.objects.count() == events + 1  # nothing acknowledged, nothing to audit
    assert Entry.objects.filter(kind="grant_acknowledged").count() == RESIDENTS
    report = verify_programme_ledger()
    assert report.ok, report.problems


def test_a_refused_request_acknowledges_nothing_and_names_the_item(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    grants = _grants(api, make_resident, 3)
    other = onboard_provider(key="other", name_ja="他社", kind="qr", modes=["charge"], now=NOW)
    acks = [(g.pk, f"R{g.pk}") for g in grants]
    with pytest.raises(NotYourGrant) as refused:
        acknowledge_grants(provider=other, acks=acks, now=NOW, who=PROVIDER)
    assert refused.value.index == 0
    wallet = Provider.objects.get(key="wallet")
    with pytest.raises(UnknownGrant) as unknown:
        acknowledge_grants(provider=wallet, acks=[*acks, (grants[-1].pk + 999, "x")], now=NOW, who=PROVIDER)
    assert (unknown.value.index, unknown.value.grant_id) == (3, grants[-1].pk + 999)
    assert set(Grant.objects.values_list("status", flat=True)) == {"instructed"}
    assert not Entry.objects.filter(kind="grant_acknowledged").exists()
    assert balance("payable:wallet") == 5000 * 3


@pytest.mark.postgres(
    "needs PostgreSQL: SQLite serialises all writers (BEGIN IMMEDIATE), so two acknowledgements never overlap "
    "there and there is no race to show"
)
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_two_requests_naming_the_same_grants_at_once_acknowledge_each_grant_once(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    """One request names the grants in ascending order, the other in descending order, both at once: the grants
    are locked in id order, so neither waits for the other in a cycle (no deadlock), and each grant is
    acknowledged by exactly one of them."""
    from django.db import connection

    grants = _grants(api, make_resident)
    wallet = Provider.objects.get(key="wallet")
    ids = [g.pk for g in grants]
    start = threading.Barrier(2)
    results: dict[str, Any] = {}

    def acknowledge(name: str, order: list[int]) -> None:
        try:
            start.wait(10)
            results[name] = acknowledge_grants(
                provider=wallet, acks=[(pk, name) for pk in order], now=NOW, who=PROVIDER
            )
        except BaseException as error:  # reported below
            results[name] = error
        finally:
            connection.close()

    threads = [
        threading.Thread(target=acknowledge, args=("up", ids)),
        threading.Thread(target=acknowledge, args=("down", ids[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    up, down = results["up"], results["down"]
    assert not isinstance(up, BaseException), up
    assert not isinstance(down, BaseException), down
    assert up.acknowledged + down.acknowledged == RESIDENTS
    assert up.already + down.already == RESIDENTS
    assert Entry.objects.filter(kind="grant_acknowledged").count() == RESIDENTS
    references = set(Grant.objects.values_list("provider_reference", flat=True))
    assert references <= {"up", "down"}
    assert balance("payable:wallet") == 0
    report = verify_programme_ledger()
    assert report.ok, report.problems
