"""The cursor of ``GET /grants`` pages over each grant's position (``Grant.position``), which commits in order
per provider (``GrantSequence``): a grant whose transaction commits after a grant with a later id still comes
after the cursor a provider was given in between. Without a race the position is the grant id, as the cursor
was before."""

from __future__ import annotations

import datetime as dt
import importlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.db import connection, transaction
from pytest_django import Settings
from support import FEED, NOW, SELF
from test_grants_batch import _world
from test_provider_api import ADAPTER, ProviderClient, linked, tx

from mynapoint.grants import services
from mynapoint.grants.batch import run_grants_batch
from mynapoint.grants.models import Grant, GrantSequence
from mynapoint.grants.services import grant_due_points, take_positions
from mynapoint.identity.models import Resident
from mynapoint.ledger.services import BUDGET, account_ids, payable
from mynapoint.providers.models import Provider
from mynapoint.providers.services import issue_api_key, onboard_provider

pytestmark = pytest.mark.django_db

SQLITE_SERIALISES = (
    "needs PostgreSQL: SQLite serialises all writers (BEGIN IMMEDIATE), so grant ids always commit in their "
    "order there and there is no out-of-order commit to show"
)


@pytest.fixture
def api(settings: Settings) -> ProviderClient:
    """The wallet, its accounts declared through the provider API (the batch test uses the file registry)."""
    settings.MYNAPOINT_PROVIDER_ADAPTER = ADAPTER
    provider = onboard_provider(
        key="wallet", name_ja="wallet ペイ", kind="qr", modes=["charge", "purchase"], now=NOW
    )
    plaintext, _ = issue_api_key(provider=provider, label="test", now=NOW)
    return ProviderClient(plaintext)


def pull(api: ProviderClient, after: int = 0, limit: int = 100) -> dict[str, Any]:
    answer = api.get("/grants", after=after, limit=limit)
    assert answer.status_code == 200, answer.content.decode()
    page: dict[str, Any] = answer.json()
    return page


def charged(api: ProviderClient, make_resident: Callable[..., Resident], n: int) -> Resident:
    resident = linked(api, make_resident, service_id=f"S-{n}", kana=f"テスト ジン{n}")
    assert api.post("/transactions", tx(f"c-{n}", service_id=f"S-{n}", amount=20_000)).status_code == 200
    return resident


# ------------------------------------------------------------------------------------------ the simple case


def test_without_a_race_a_grants_position_is_its_id_and_paging_is_as_before(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    people = [charged(api, make_resident, n) for n in (1, 2, 3)]
    grants = [g for r in people for g in grant_due_points(resident=r, today=NOW.date(), now=NOW, who=SELF)]
    ids = [g.pk for g in grants]
    assert [g.position for g in grants] == ids
    assert list(Grant.objects.order_by("pk").values_list("position", flat=True)) == ids
    assert GrantSequence.objects.get(provider__key="wallet").last == ids[-1]
    page = pull(api)
    assert page["next_cursor"] == ids[-1]
    assert [(i["cursor"], i["grant_id"]) for i in page["items"]] == [(i, i) for i in ids]
    # one at a time, from each next_cursor (a grant id, as before)
    after, seen = 0, []
    while items := (one := pull(api, after, limit=1))["items"]:
        seen.append(items[0]["grant_id"])
        after = one["next_cursor"]
    assert (seen, after) == (ids, ids[-1])
    assert pull(api, ids[0])["next_cursor"] == ids[-1]


def test_positions_take_the_larger_of_the_id_and_the_next_in_the_providers_sequence(
    providers: dict[str, Provider],
) -> None:
    wallet, card = providers["wallet"].pk, providers["card"].pk
    GrantSequence.objects.create(provider_id=wallet, last=100)
    with transaction.atomic():
        # ids 50 and 51 committing after position 100 was given: 101, 102; an id above it keeps its id
        assert take_positions([wallet, card, wallet, wallet], [51, 52, 50, 200]) == [102, 52, 101, 200]
    assert dict(GrantSequence.objects.values_list("provider_id", "last")) == {wallet: 200, card: 52}


# ------------------------------------------------------------------------------------------ the batch engine


def test_the_batch_engine_gives_positions_per_provider_in_bulk(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    _world(5, make_resident)
    # as if a grant of the wallet's had committed late and taken position 10**6
    GrantSequence.objects.create(provider=providers["wallet"], last=10**6)
    report = run_grants_batch(today=dt.date(2022, 10, 12), now=NOW, who=FEED, chunk=7)
    assert report.grants > 10
    assert not report.errors
    for key, provider in Provider.objects.in_bulk(field_name="key").items():
        rows = list(Grant.objects.filter(provider=provider).order_by("pk").values_list("pk", "position"))
        if not rows:
            continue
        ids = [pk for pk, _ in rows]
        positions = [position for _, position in rows]
        expected = [10**6 + n for n in range(1, len(rows) + 1)] if key == "wallet" else ids
        assert positions == expected, key
        assert GrantSequence.objects.get(provider=provider).last == positions[-1]
    assert not Grant.objects.filter(position=None).exists()


def test_the_migration_gives_existing_grants_their_id_and_continues_each_sequence_above_it(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    backfill = importlib.import_module("mynapoint.grants.migrations.0004_grant_positions").backfill
    grants = [
        g
        for n in (1, 2)
        for g in grant_due_points(
            resident=charged(api, make_resident, n), today=NOW.date(), now=NOW, who=SELF
        )
    ]
    Grant.objects.update(position=None)  # as they were before the migration
    GrantSequence.objects.all().delete()
    backfill(django_apps, None)
    assert list(Grant.objects.order_by("pk").values_list("position", flat=True)) == [g.pk for g in grants]
    assert GrantSequence.objects.get(provider__key="wallet").last == grants[-1].pk
    # a cursor kept from before (a grant id) means the same place
    assert [i["grant_id"] for i in pull(api, grants[0].pk)["items"]] == [grants[1].pk]
    [third] = grant_due_points(resident=charged(api, make_resident, 3), today=NOW.date(), now=NOW, who=SELF)
    assert third.position == third.pk > grants[-1].pk


# ------------------------------------------------------------------------------------------ the race


@pytest.mark.postgres(SQLITE_SERIALISES)
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_a_grant_committed_after_a_later_id_comes_after_the_cursor_given_in_between(
    api: ProviderClient, make_resident: Callable[..., Resident], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two transactions instruct grants; the one that started first (the lower grant id) commits last. A pull
    in between gets the later grant and a cursor past its id; the next pull from that cursor gets the earlier
    grant (paging by id, it would have been skipped for good)."""
    hanako, taro = charged(api, make_resident, 1), charged(api, make_resident, 2)
    account_ids({BUDGET, payable("wallet")})  # made once, committed: the two do not meet there
    real = services.take_positions
    written, go = threading.Event(), threading.Event()

    def held(providers: list[int], ids: list[int]) -> list[int]:
        if threading.current_thread().name == "earlier":  # its grant row is written, its position not yet
            written.set()
            assert go.wait(20)
        return real(providers, ids)

    monkeypatch.setattr(services, "take_positions", held)
    made: dict[str, Any] = {}

    def earlier() -> None:
        try:
            made["grants"] = grant_due_points(resident=hanako, today=NOW.date(), now=NOW, who=SELF)
        except BaseException as error:  # reported below
            made["error"] = error
        finally:
            connection.close()

    thread = threading.Thread(target=earlier, name="earlier")
    thread.start()
    try:
        assert written.wait(20), made
        [late] = grant_due_points(resident=taro, today=NOW.date(), now=NOW, who=SELF)  # commits first
        between = pull(api)
    finally:
        go.set()
        thread.join(30)
    assert "error" not in made, made
    [early] = made["grants"]
    assert early.pk < late.pk  # the ids were drawn in the other order than the commits
    assert [i["grant_id"] for i in between["items"]] == [late.pk]
    assert between["next_cursor"] == late.pk
    # the old cursor (grant id) would never come back to it: nothing of the provider's has an id above it
    assert not Grant.objects.filter(provider__key="wallet", pk__gt=between["next_cursor"]).exists()
    after = pull(api, between["next_cursor"])
    assert [(i["grant_id"], i["cursor"]) for i in after["items"]] == [(early.pk, late.pk + 1)]
    assert after["next_cursor"] == early.position == late.pk + 1
    assert pull(api, after["next_cursor"]) == {"next_cursor": after["next_cursor"], "items": []}
