"""The sandbox provider デモ決済 pulls the grants a lost webhook did not bring (``GET /grants`` from its cursor).

End to end: the demo server on a real port; the sandbox's webhook refuses the platform's push (its signing
secret no longer matches: the webhook is lost), and ``mynapoint sandbox sync`` pulls the grant through the
provider API, credits it once and acknowledges it. Unit level, against a fake of the platform's provider API:
a grant that comes both ways is credited once, the cursor moves only past what was credited, and a grant for a
wallet the sandbox does not know holds the cursor until it can be credited.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from demo_server import running_demo
from django.test import Client
from test_sandbox_loop import SECRET, _deliver, _grant_body, mynapoint, wallet

from mynapoint import clock
from mynapoint.sandbox import services
from mynapoint.sandbox.client import ProviderApiClient
from mynapoint.sandbox.models import PullCursor, ReceivedGrant, Wallet

# ------------------------------------------------------------------------------------------------ end to end

LOST_WEBHOOK = re.compile(r'"POST /sandbox/webhook[^"]*" 401')


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, str]]]:
    data = tmp_path_factory.mktemp("sandbox-pull")
    with running_demo(data) as (url, env):
        yield url, data, env


def test_a_lost_webhook_is_made_up_for_by_pulling_the_grant(
    demo_server: tuple[str, Path, dict[str, str]],
) -> None:
    url, data, env = demo_server
    log = data / "server.log"
    # the sandbox's secret no longer matches the platform's: every grant webhook is refused, so lost
    config = data / "sandbox" / "config.json"
    setup = json.loads(config.read_text(encoding="utf-8"))
    config.write_text(json.dumps({**setup, "webhook_secret": "rotated-on-one-side-only-0123456789"}))

    card = data / "demo" / "cards" / "hanako.json"
    applied = mynapoint(
        {**env, "MYNAPOINT_PIN": "4071"}, "resident", "apply", "--server", url, "--card", str(card),
        "--measure", "premium", "--provider", "demo", "--service-id", "4000-0001", "--code", "1234",
        "--mode", "charge",
    )  # fmt: skip
    assert applied.returncode == 0, applied.stdout + applied.stderr
    charged = mynapoint(
        env, "sandbox", "charge", "--server", url, "--service-id", "4000-0001", "--amount", "20000"
    )
    assert charged.returncode == 0, charged.stdout + charged.stderr

    deadline = time.monotonic() + 30
    while not LOST_WEBHOOK.search(log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert LOST_WEBHOOK.search(log.read_text()), log.read_text()  # the grant was pushed and refused

    synced = mynapoint(env, "sandbox", "sync", "--server", url)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "synced" in synced.stdout
    seen = wallet(env, url, "4000-0001")
    assert seen["points_balance"] == 5000, synced.stdout + log.read_text()
    [grant] = seen["grants"]
    assert (grant["amount"], grant["via"], grant["acknowledged"]) == (5000, "pull", True)

    again = mynapoint(env, "sandbox", "sync", "--server", url)  # nothing new: nothing credited twice
    assert "grants pulled 0" in again.stdout
    assert wallet(env, url, "4000-0001")["points_balance"] == 5000

    verified = mynapoint(env, "ledger", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    payable = mynapoint(env, "ledger", "balance", "payable:demo")
    assert payable.stdout.strip() == "payable:demo\t0"  # acknowledged: payable → resident
    text = log.read_text()
    for call in ('"GET /api/provider/v1/grants', '"POST /api/provider/v1/grants/ack', '"POST /sandbox/sync'):
        assert call in text, call


# ------------------------------------------------------------------------------------------------ unit level


class FakePlatform(ProviderApiClient):
    """The provider API as the platform answers it (cursor paging by grant id), in memory."""

    def __init__(self, grants: list[dict[str, Any]]) -> None:
        super().__init__("http://127.0.0.1:9", "mnp_x")
        self.instructed = grants
        self.pulls: list[int] = []
        self.acks: list[int] = []

    def grants(self, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        self.pulls.append(after)
        items = [g for g in self.instructed if g["grant_id"] > after][:limit]
        return {"next_cursor": items[-1]["grant_id"] if items else after, "items": items}

    def ack_grants(self, items: list[dict[str, Any]]) -> dict[str, int]:
        self.acks += [item["grant_id"] for item in items]
        return {"acknowledged": len(items), "already": 0}

    def put_accounts(self, accounts: list[dict[str, Any]]) -> dict[str, int]:
        return {"created": len(accounts), "updated": 0}


def grant(grant_id: int, amount: int = 5000, service_id: str = "4000-0001") -> dict[str, Any]:
    return json.loads(_grant_body(grant_id, amount))["data"] | {"service_id": service_id}  # type: ignore[no-any-return]


@pytest.fixture
def sandbox(db: Any, settings: Any, tmp_path: Path) -> None:
    """A configured sandbox with Hanako's wallet; the platform's URL answers nothing (see FakePlatform)."""
    settings.MYNAPOINT_SANDBOX_CONFIG = tmp_path / "sandbox.json"
    services.save_setup(
        services.Setup(
            provider_key="demo", server="http://127.0.0.1:9", api_key="mnp_x", webhook_secret=SECRET
        )
    )
    services.open_wallet(
        spec=services.WalletSpec("4000-0001", "1234", "ヤマダ ハナコ", None), now=clock.now()
    )


def points(service_id: str = "4000-0001") -> int:
    return Wallet.objects.get(service_id=service_id).points_balance


@pytest.mark.usefixtures("sandbox")
def test_a_pulled_grant_is_credited_and_acknowledged_once_and_its_late_webhook_credits_nothing() -> None:
    platform = FakePlatform([grant(7)])
    report = services.sync(api=platform, now=clock.now())
    assert (report.pulled, report.acknowledged, report.errors) == (1, 1, [])
    assert points() == 5000
    assert ReceivedGrant.objects.get().via == "pull"
    assert PullCursor.objects.get(feed="grants").after == 7
    assert platform.acks == [7]

    again = services.sync(api=platform, now=clock.now())
    assert (again.pulled, again.acknowledged) == (0, 0)
    assert platform.pulls[-1] == 7  # from the stored cursor
    late = _deliver(_grant_body(7))  # the webhook the platform retried, arriving at last
    assert late.status_code == 200, late.content
    assert late.json()["status"] == "duplicate"
    assert points() == 5000
    assert platform.acks == [7]


@pytest.mark.usefixtures("sandbox")
def test_a_grant_that_came_by_webhook_is_not_credited_again_by_the_pull() -> None:
    pushed = _deliver(_grant_body(8, amount=3000))  # credited; its acknowledgement fails (nobody at :9)
    assert pushed.status_code == 503
    assert points() == 3000
    platform = FakePlatform([grant(8, 3000), grant(9, 2000)])
    report = services.sync(api=platform, now=clock.now())
    assert (report.pulled, report.acknowledged) == (1, 2)  # 9 pulled; 8 and 9 acknowledged
    assert points() == 5000
    assert dict(ReceivedGrant.objects.values_list("grant_id", "via")) == {8: "webhook", 9: "pull"}
    assert sorted(platform.acks) == [8, 9]


@pytest.mark.usefixtures("sandbox")
def test_the_pull_pages_and_stops_at_a_grant_it_cannot_credit_until_it_can() -> None:
    platform = FakePlatform(
        [grant(1, 100), grant(2, 200, service_id="4000-0009"), grant(3, 300), grant(4, -50)]
    )
    credited, errors = services.pull_grants(api=platform, now=clock.now(), page_size=1)
    assert (credited, errors) == (1, [f"GET /grants: unknown_wallet: no wallet {'4000-0009'!r}"])
    assert PullCursor.objects.get(feed="grants").after == 1  # not past grant 2
    report = services.sync(api=platform, now=clock.now())
    assert (report.pulled, report.errors) == (0, errors)  # tried again from grant 2, and kept there
    assert points() == 100

    services.open_wallet(spec=services.WalletSpec("4000-0009", "1", "サトウ タロウ", None), now=clock.now())
    assert services.pull_grants(api=platform, now=clock.now(), page_size=2) == (3, [])
    assert (points(), points("4000-0009")) == (100 + 300 - 50, 200)  # a claw-back takes points back
    assert PullCursor.objects.get(feed="grants").after == 4
    assert services.pull_grants(api=platform, now=clock.now()) == (0, [])
    assert ReceivedGrant.objects.count() == 4


@pytest.mark.usefixtures("sandbox")
def test_the_cursor_never_moves_back() -> None:
    PullCursor.objects.create(feed="grants", after=40)
    platform = FakePlatform([grant(12)])  # below the cursor: already applied before
    assert services.pull_grants(api=platform, now=clock.now()) == (0, [])
    assert platform.pulls == [40]
    assert PullCursor.objects.get(feed="grants").after == 40


@pytest.mark.usefixtures("sandbox")
def test_the_sync_action_answers_in_json_and_keeps_the_errors() -> None:
    answer = Client().post("/sandbox/sync")  # the platform at :9 answers nothing
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"declared", "pulled", "acknowledged", "errors"}
    assert any(error.startswith("GET /grants: unreachable") for error in body["errors"]), body
    assert Client().get("/sandbox/sync").status_code == 405
