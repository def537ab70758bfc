"""Acknowledgements in bulk (``POST /grants/ack``, ``acknowledge_grants``): one durable transaction and one audit
event for a whole request, each grant acknowledged once with its first reference, a refused request keeping
nothing, and two requests naming the same grants at once acknowledging each grant once (PostgreSQL)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import test_grant_positions
from concurrency_hooks import backend_pid, blocked_by
from django.db import connection
from support import NOW, SELF
from test_grant_positions import charged
from test_provider_api import ProviderClient

from mynapoint.audit.models import AuditEvent
from mynapoint.audit.services import Actor
from mynapoint.grants import services
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


def test_acknowledgements_cross_statement_chunks_and_leave_other_grants_untouched(
    api: ProviderClient, make_resident: Callable[..., Resident], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "LOCK_CHUNK", 2)  # 5 grants: three statements each way
    monkeypatch.setattr(services, "UPDATE_CHUNK", 2)
    grants = _grants(api, make_resident, 5)
    wallet = Provider.objects.get(key="wallet")
    first = [grants[4], grants[0], grants[2]]
    done = acknowledge_grants(
        provider=wallet, acks=[(g.pk, f"A{g.pk}") for g in first], now=NOW, who=PROVIDER
    )
    assert (done.acknowledged, done.already) == (3, 0)
    status = dict(Grant.objects.values_list("pk", "provider_reference"))
    assert status == {g.pk: (f"A{g.pk}" if g in first else "") for g in grants}
    assert set(
        Grant.objects.filter(pk__in=[grants[1].pk, grants[3].pk]).values_list("status", flat=True)
    ) == {"instructed"}
    rest = acknowledge_grants(provider=wallet, acks=[(g.pk, "B") for g in grants], now=NOW, who=PROVIDER)
    assert (rest.acknowledged, rest.already) == (2, 3)
    assert dict(Grant.objects.values_list("pk", "provider_reference"))[grants[1].pk] == "B"
    assert balance("payable:wallet") == 0
    report = verify_programme_ledger()
    assert report.ok, report.problems


SQLITE_SERIALISES = (
    "needs PostgreSQL: SQLite serialises all writers (BEGIN IMMEDIATE), so two acknowledgements never overlap "
    "there and there is no lock wait to show"
)


@pytest.mark.postgres(SQLITE_SERIALISES)
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_a_second_request_for_the_same_grants_waits_for_the_first_then_finds_them_acknowledged(
    api: ProviderClient, make_resident: Callable[..., Resident], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request ("up", ascending ids) is held after it has locked and posted its grants; the second
    ("down", the same grants in descending order) is seen waiting on the first's locks — not on a cycle, and
    not going ahead — and once the first commits it finds every grant acknowledged. Meanwhile another
    provider naming one of those grants is refused at once: it never waits for locks on grants not its own."""
    grants = _grants(api, make_resident)
    wallet = Provider.objects.get(key="wallet")
    other = onboard_provider(key="other", name_ja="他社", kind="qr", modes=["charge"], now=NOW)
    ids = [g.pk for g in grants]
    held, go = threading.Event(), threading.Event()
    pids: dict[str, int] = {}
    results: dict[str, Any] = {}
    real = services._mark_acknowledged

    def hold(done: list[tuple[int, int, str]], now: Any) -> None:
        if threading.current_thread().name == "up":
            held.set()
            assert go.wait(30)
        real(done, now)

    monkeypatch.setattr(services, "_mark_acknowledged", hold)

    def acknowledge(provider: Provider, order: list[int]) -> None:
        name = threading.current_thread().name
        try:
            pids[name] = backend_pid()
            results[name] = acknowledge_grants(provider=provider, acks=[(pk, name) for pk in order], now=NOW,
                                               who=PROVIDER)  # fmt: skip
        except BaseException as error:  # reported below
            results[name] = error
        finally:
            connection.close()

    up = threading.Thread(target=acknowledge, args=(wallet, ids), name="up")
    down = threading.Thread(target=acknowledge, args=(wallet, ids[::-1]), name="down")
    theirs = threading.Thread(target=acknowledge, args=(other, ids[3:4]), name="other")
    up.start()
    try:
        assert held.wait(30), results
        down.start()
        deadline = time.monotonic() + 20
        while not ("down" in pids and blocked_by(pids["down"], pids["up"])) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert blocked_by(pids["down"], pids["up"]), "the second request did not wait for the first's locks"
        theirs.start()
        theirs.join(20)
        assert not theirs.is_alive(), "another provider's request waited for locks on grants not its own"
        assert isinstance(results["other"], NotYourGrant), results["other"]
    finally:
        go.set()
        up.join(60)
        down.join(60)
    first, second = results["up"], results["down"]
    assert not isinstance(first, BaseException), first
    assert not isinstance(second, BaseException), second
    assert (first.acknowledged, first.already) == (RESIDENTS, 0)
    assert (second.acknowledged, second.already) == (0, RESIDENTS)
    assert set(Grant.objects.values_list("provider_reference", flat=True)) == {"up"}
    assert Entry.objects.filter(kind="grant_acknowledged").count() == RESIDENTS
    assert balance("payable:wallet") == 0
    report = verify_programme_ledger()
    assert report.ok, report.problems
