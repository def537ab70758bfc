"""Link notices as an append-only change sequence (``GET /links``): a link that changes after its provider pulled
it — voided or moved to the original resident's pseudonym by the merge of a duplicate MyKey ID, stopped by a
death, carried to a replacement card — comes again after the provider's cursor, with its new state. Every
change is made through the real services (a renewal notice, the provider's own stop notices); the provider
reads with Django's test client and its API key.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.db import connection, transaction
from pytest_django import Settings
from support import FEED, NOW, SELF
from test_provider_api import ADAPTER, ProviderClient, account, apply, linked, stop, tx

from mynapoint.applications.models import (
    AccountReplacement,
    LinkEvent,
    LinkSequence,
    PaymentAccount,
    PointApplication,
)
from mynapoint.applications.services import apply_certificate_renewal
from mynapoint.grants.services import grant_due_points
from mynapoint.identity.models import Certificate, Resident
from mynapoint.providers.models import Provider
from mynapoint.providers.selectors import link_ref
from mynapoint.providers.services import issue_api_key, onboard_provider

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _provider_api_adapter(settings: Settings) -> None:
    settings.MYNAPOINT_PROVIDER_ADAPTER = ADAPTER


def _onboard(key: str) -> Provider:
    return onboard_provider(key=key, name_ja=f"{key} ペイ", kind="qr", modes=["charge", "purchase"], now=NOW)


@pytest.fixture
def api() -> ProviderClient:
    plaintext, _ = issue_api_key(provider=_onboard("wallet"), label="test", now=NOW)
    return ProviderClient(plaintext)


@pytest.fixture
def other_api() -> ProviderClient:
    plaintext, _ = issue_api_key(provider=_onboard("other"), label="test", now=NOW)
    return ProviderClient(plaintext)


def pull(api: ProviderClient, after: int = 0, limit: int = 1000) -> dict[str, Any]:
    answer = api.get("/links", after=after, limit=limit)
    assert answer.status_code == 200, answer.content.decode()
    page: dict[str, Any] = answer.json()
    return page


def pull_all(api: ProviderClient, after: int = 0) -> list[dict[str, Any]]:
    """Every notice after a cursor, one at a time (as a provider with a small page would)."""
    items: list[dict[str, Any]] = []
    while True:
        page = pull(api, after, limit=1)
        if not page["items"]:
            assert page["next_cursor"] == after
            return items
        items += page["items"]
        after = page["next_cursor"]


def ref(resident: Resident, provider: str = "wallet") -> str:
    return link_ref(provider_key=provider, resident_id=resident.pk)


def renew(original: Resident, duplicate: Resident) -> str:
    """The renewal notice that arrives after the renewed card already logged in on its own: a merge."""
    old, new = Certificate.objects.get(resident=original), Certificate.objects.get(resident=duplicate)
    return apply_certificate_renewal(
        old_issuer=old.issuer, old_serial=old.serial, new_issuer=new.issuer, new_serial=new.serial,
        now=NOW, who=FEED,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ merge


def test_a_link_voided_by_a_merge_comes_again_after_the_cursor_with_its_new_state(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    accounts = [account("S-1"), account("S-2"), account("S-3")]
    assert api.put("/accounts", {"accounts": accounts}).status_code == 200
    original = make_resident()
    duplicate = make_resident()  # her renewed card logged in before its renewal notice: a second MyKey ID
    assert apply(original, "S-1", ["1234"]).accepted
    voided_app = apply(duplicate, "S-2", ["1234"]).application
    moved_app = apply(duplicate, "S-3", ["1234"], measure="health_insurance").application
    assert voided_app.status == moved_app.status == "accepted"

    first = pull(api)
    assert [(i["service_id"], i["event"], i["status"]) for i in first["items"]] == [
        ("S-1", "linked", "linked"),
        ("S-2", "linked", "linked"),
        ("S-3", "linked", "linked"),
    ]
    cursor = first["next_cursor"]
    assert pull(api, cursor) == {"next_cursor": cursor, "items": []}  # the provider is up to date

    assert renew(original, duplicate) == "merged"
    later = pull(api, cursor)
    voided, merged = later["items"]
    assert voided == {
        "cursor": voided["cursor"],
        "link_id": voided_app.pk,
        "event": "voided",
        "link_ref": ref(duplicate),  # the pseudonym the provider knew the link by
        "measure": "premium",
        "mode": "charge",
        "service_id": "S-2",
        "previous_service_id": None,
        "linked_at": voided["linked_at"],
        "changed_at": voided["changed_at"],
        "status": "voided",
    }
    assert dt.datetime.fromisoformat(voided["changed_at"]) == NOW
    assert dt.datetime.fromisoformat(voided["linked_at"]) == voided_app.applied_at
    # the duplicate's other link stays, now under the original resident's pseudonym
    assert (merged["link_id"], merged["event"], merged["status"]) == (moved_app.pk, "merged", "linked")
    assert (merged["link_ref"], merged["service_id"], merged["measure"]) == (
        ref(original),
        "S-3",
        "health_insurance",
    )
    assert cursor < voided["cursor"] < merged["cursor"] == later["next_cursor"]
    # the link ids are the ones of the first pull: the provider finds the links it has
    assert {i["link_id"] for i in first["items"]} >= {voided["link_id"], merged["link_id"]}
    text = json.dumps([first, later])
    assert original.mykey_id not in text
    assert duplicate.mykey_id not in text


def test_pulling_is_idempotent_and_ordered(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    api.put("/accounts", {"accounts": [account("S-1"), account("S-2"), account("S-3")]})
    original, duplicate = make_resident(), make_resident()
    apply(original, "S-1", ["1234"])
    apply(duplicate, "S-2", ["1234"])
    cursor = pull(api)["next_cursor"]
    renew(original, duplicate)
    apply(original, "S-3", ["1234"], measure="public_fund")

    everything = pull(api)
    assert pull(api) == everything  # the same cursor, the same page
    assert pull(api, cursor) == pull(api, cursor)
    assert pull_all(api) == everything["items"]  # page by page as in one page
    positions = [i["cursor"] for i in everything["items"]]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    assert [(i["service_id"], i["event"]) for i in everything["items"]] == [
        ("S-1", "linked"),
        ("S-2", "linked"),
        ("S-2", "voided"),
        ("S-3", "linked"),
    ]
    # each link's current state is its last notice
    last = {i["link_id"]: i["status"] for i in everything["items"]}
    assert sorted(last.values()) == ["linked", "linked", "voided"]
    # the events are appended, never changed: the database refuses an update
    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        LinkEvent.objects.update(status="linked")


# ------------------------------------------------------------------------------------------ stops


def test_a_death_notice_stops_the_links_and_says_so_once(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    hanako = linked(api, make_resident, "S-1")
    api.put("/accounts", {"accounts": [account("S-2")]})
    apply(hanako, "S-2", ["1234"], measure="public_fund")
    cursor = pull(api)["next_cursor"]
    assert api.post("/stops", stop("death")).json() == {"status": "recorded"}
    stopped = pull(api, cursor)["items"]
    assert [(i["service_id"], i["measure"], i["event"], i["status"]) for i in stopped] == [
        ("S-1", "premium", "stopped", "stopped"),
        ("S-2", "public_fund", "stopped", "stopped"),
    ]
    assert {i["link_ref"] for i in stopped} == {ref(hanako)}
    after = pull(api, cursor)["next_cursor"]
    assert api.post("/stops", stop("death")).json() == {"status": "unchanged"}
    assert pull(api, after)["items"] == []  # nothing changed, nothing announced


def test_a_replaced_card_moves_the_link_and_a_second_replacement_moves_it_again(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    hanako = linked(api, make_resident, "S-1")
    [made] = pull(api)["items"]
    assert api.post("/stops", stop("card_replaced", new_service_id="S-1b")).json() == {"status": "recorded"}
    [moved] = pull(api, made["cursor"])["items"]
    assert (moved["link_id"], moved["event"], moved["status"]) == (made["link_id"], "moved", "linked")
    assert (moved["previous_service_id"], moved["service_id"], moved["link_ref"]) == (
        "S-1",
        "S-1b",
        made["link_ref"],
    )
    assert api.post("/stops", stop("card_replaced", new_service_id="S-1b")).json() == {"status": "unchanged"}
    assert pull(api, moved["cursor"])["items"] == []
    # the new card is lost too: the link moves on from where it is now
    api.post("/stops", stop("card_replaced", "S-1b", new_service_id="S-1c"))
    [again] = pull(api, moved["cursor"])["items"]
    assert (again["previous_service_id"], again["service_id"]) == ("S-1b", "S-1c")
    # the link notices and the grants agree on where the points go
    api.post("/transactions", tx("c-1", service_id="S-1c", amount=4000))
    [grant] = grant_due_points(resident=hanako, today=NOW.date(), now=NOW, who=SELF)
    assert grant.account.service_id == again["service_id"]


def test_a_refused_replacement_and_a_rejected_application_announce_nothing(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    linked(api, make_resident, "S-1")
    linked(api, make_resident, "S-2", kana="サトウ タロウ")
    cursor = pull(api)["next_cursor"]
    assert api.post("/stops", stop("card_replaced", new_service_id="S-2")).json() == {"status": "refused"}
    assert not AccountReplacement.objects.get().accepted
    hanako_again = Resident.objects.get(pk=PaymentAccount.objects.get(service_id="S-1").linked_resident_id)
    api.put("/accounts", {"accounts": [account("S-3")]})
    assert not apply(hanako_again, "S-3", ["1234"]).accepted  # premium once per person
    assert pull(api, cursor)["items"] == []


def test_another_providers_link_changes_are_not_announced(
    api: ProviderClient, other_api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    linked(api, make_resident, "S-1")
    api.post("/stops", stop("death"))
    assert len(pull(api)["items"]) == 2
    assert pull(other_api) == {"next_cursor": 0, "items": []}
    # each provider's positions are its own
    assert other_api.put("/accounts", {"accounts": [account("O-1")]}).status_code == 200
    assert apply(make_resident(), "O-1", ["1234"], provider="other").accepted
    [first] = pull(other_api)["items"]
    assert first["cursor"] == 1


# ------------------------------------------------------------------------------------------ the backfill


def test_the_migration_gives_old_links_their_notices_and_keeps_old_cursors(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    """Links made before there were link events (written here without the services, as the bench does):
    the backfill gives each a ``linked`` notice at its application id (a cursor a provider kept still means the
    same place), and appends what changed since."""
    backfill = importlib.import_module("mynapoint.applications.migrations.0003_link_events").backfill
    provider = Provider.objects.get(key="wallet")
    hanako, taro = make_resident(), make_resident(kana="サトウ タロウ")
    s1, s2, s3 = (
        PaymentAccount.objects.create(provider=provider, service_id=s) for s in ("S-1", "S-2", "S-3")
    )

    def app(
        resident: Resident, account: PaymentAccount, status: str, measure: str = "premium"
    ) -> PointApplication:
        return PointApplication.objects.create(
            resident=resident, measure=measure, account=account, mode="charge", holder_role="self",
            operated_by=resident, channel="self", actor="test", applied_at=NOW, status=status,
            explanation_ja="-", explanation_en="-", parameter_edition="seed",
        )  # fmt: skip

    a1, a2 = app(hanako, s1, "accepted"), app(taro, s2, "voided")
    app(taro, s2, "rejected", measure="public_fund")
    AccountReplacement.objects.create(resident=hanako, from_account=s1, to_account=s3, at=NOW, accepted=True)
    Resident.objects.filter(pk=hanako.pk).update(died=NOW.date())
    assert not LinkEvent.objects.exists()
    backfill(django_apps, None)

    items = pull(api)["items"]
    assert [(i["link_id"], i["event"], i["service_id"], i["status"]) for i in items] == [
        (a1.pk, "linked", "S-1", "linked"),
        (a2.pk, "linked", "S-2", "linked"),
        (a2.pk, "voided", "S-2", "voided"),
        (a1.pk, "moved", "S-3", "linked"),
        (a1.pk, "stopped", "S-3", "stopped"),
    ]
    assert [i["cursor"] for i in items] == [a1.pk, a2.pk, a2.pk + 1, a2.pk + 2, a2.pk + 3]
    # a provider that had pulled up to hanako's application (its id, the cursor of before) hears the rest
    assert [i["cursor"] for i in pull(api, a1.pk)["items"]] == [a2.pk, a2.pk + 1, a2.pk + 2, a2.pk + 3]
    assert LinkSequence.objects.get(provider=provider).last == a2.pk + 3
    # and the next link event continues the sequence
    api.put("/accounts", {"accounts": [account("S-4", kana="タナカ ミキ")]})
    assert apply(make_resident(kana="タナカ ミキ"), "S-4", ["1234"]).accepted
    assert pull(api, a2.pk + 3)["items"][0]["cursor"] == a2.pk + 4


# ------------------------------------------------------------------------------------------ the sequence lock


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_a_providers_positions_commit_in_the_order_they_are_taken() -> None:
    """A transaction that takes a position holds the provider's sequence row until it ends: another one waits
    for it, so a provider can never page past a position that is still to be committed."""
    from mynapoint.applications.services import _take_positions

    provider = _onboard("wallet")
    holding, released = threading.Event(), threading.Event()
    taken: dict[str, int] = {}
    committed: dict[str, float] = {}

    def first() -> None:
        try:
            with transaction.atomic(durable=True):
                taken["first"] = _take_positions(provider.pk, 1)
                holding.set()
                released.wait(10)
            committed["first"] = time.monotonic()
        finally:
            connection.close()

    def second() -> None:
        try:
            holding.wait(10)
            with transaction.atomic(durable=True):
                taken["second"] = _take_positions(provider.pk, 1)
            committed["second"] = time.monotonic()
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    holding.wait(10)
    time.sleep(0.5)  # the second transaction has had time to take a position, were it not waiting
    assert "second" not in taken
    released.set()
    for thread in threads:
        thread.join(20)
    assert taken == {"first": 1, "second": 2}
    assert committed["first"] <= committed["second"]
