"""The sandbox provider デモ決済 and the whole loop over HTTP.

End to end: the demo server on a real port (with the grant engine running in it), Hanako applying with her
software card, her wallet charged 20,000 yen at the sandbox, the 5,000 points pushed to the sandbox's webhook,
acknowledged through the provider API, and spent at a shop; the ledger checked from the same data folder.
Unit level: the webhook credits a grant once per grant_id and refuses a bad signature with 401.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from demo_server import MYNAPOINT, running_demo, running_served
from django.test import Client

from mynapoint import clock
from mynapoint.grants.outbox import sign
from mynapoint.sandbox import services
from mynapoint.sandbox.client import ProviderApiClient, ProviderApiError
from mynapoint.sandbox.models import ReceivedGrant, Wallet

# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module", params=["demo", "serve"])
def demo_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """The demo's server (Django's, the grant engine in a thread), or the same data served as in production
    (``mynapoint serve``: gunicorn's workers, each with the grant engine's thread, one cycle at a time)."""
    data = tmp_path_factory.mktemp(f"sandbox-{request.param}")
    with (running_demo if request.param == "demo" else running_served)(data) as (url, env):
        yield url, data, env


def mynapoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own command
        [*MYNAPOINT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def wallet(env: dict[str, str], url: str, service_id: str) -> dict[str, Any]:
    done = mynapoint(env, "sandbox", "wallet", "--server", url, "--service-id", service_id, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_apply_charge_20000_receive_5000_points_and_spend_them_at_a_shop(
    demo_server: tuple[str, Path, dict[str, str]],
) -> None:
    url, data, env = demo_server
    log = data / "server.log"
    card = data / "demo" / "cards" / "hanako.json"

    # the sandbox declared its wallets through the provider API before the server opened
    assert wallet(env, url, "4000-0001")["declared"] is True

    applied = mynapoint(
        {**env, "MYNAPOINT_PIN": "4071"}, "resident", "apply", "--server", url, "--card", str(card),
        "--measure", "premium", "--provider", "demo", "--service-id", "4000-0001", "--code", "1234",
        "--mode", "charge",
    )  # fmt: skip
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "を受け付けました" in applied.stdout

    charged = mynapoint(
        env, "sandbox", "charge", "--server", url, "--service-id", "4000-0001", "--amount", "20000"
    )
    assert charged.returncode == 0, charged.stdout + charged.stderr
    assert "報告済 / reported to the platform" in charged.stdout
    assert "残高 / balance 20,000 円" in charged.stdout

    # the points are credited when the grant arrives (webhook or pull); the acknowledgement follows in its own call
    deadline = time.monotonic() + 30
    seen = wallet(env, url, "4000-0001")
    while (seen["points_balance"] < 5000 or not all(g["acknowledged"] for g in seen["grants"])) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
        seen = wallet(env, url, "4000-0001")
    assert seen["points_balance"] == 5000, log.read_text()
    [grant] = seen["grants"]
    assert grant["amount"] == 5000
    assert grant["measure"] == "premium"
    assert grant["acknowledged"] is True
    assert seen["yen_balance"] == 20000

    shops = mynapoint(env, "sandbox", "shops", "--server", url)
    assert "konbini" in shops.stdout

    too_much = mynapoint(
        env, "sandbox", "pay", "--server", url, "--service-id", "4000-0001", "--shop", "konbini",
        "--amount", "6000", "--use-points", "6000",
    )  # fmt: skip
    assert too_much.returncode == 1
    assert "ポイントが足りません" in too_much.stderr

    paid = mynapoint(
        env, "sandbox", "pay", "--server", url, "--service-id", "4000-0001", "--shop", "konbini",
        "--amount", "5000", "--use-points", "5000",
    )  # fmt: skip
    assert paid.returncode == 0, paid.stdout + paid.stderr
    after = wallet(env, url, "4000-0001")
    assert after["points_balance"] == 0
    assert after["yen_balance"] == 20000  # paid with points only
    purchase = after["transactions"][0]
    assert (purchase["kind"], purchase["shop"], purchase["yen"], purchase["points_used"]) == (
        "purchase", "konbini", 5000, 5000,
    )  # fmt: skip

    verified = mynapoint(env, "ledger", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ledger OK" in verified.stdout
    balances = mynapoint(env, "ledger", "balance", "resident:*")
    assert balances.returncode == 0, balances.stderr
    [line] = balances.stdout.splitlines()
    assert line.endswith(":premium\t5,000")  # acknowledged: payable → resident
    payable = mynapoint(env, "ledger", "balance", "payable:demo")
    assert payable.stdout.strip() == "payable:demo\t0"

    # the sandbox used the provider API over HTTP, with its key, and received the push
    text = log.read_text()
    for call in ('"PUT /api/provider/v1/accounts', '"POST /api/provider/v1/transactions', '"POST /sandbox/webhook',
                 '"POST /api/provider/v1/grants/ack'):  # fmt: skip
        assert call in text, call


# ------------------------------------------------------------------------------------------------ unit level

SECRET = "sandbox-test-secret-0123456789"  # noqa: S105 - a test signing key


@pytest.fixture
def sandbox_setup(db: Any, settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """A configured sandbox with Hanako's wallet; acknowledgements are recorded instead of sent."""
    settings.MYNAPOINT_SANDBOX_CONFIG = tmp_path / "sandbox.json"
    services.save_setup(
        services.Setup(
            provider_key="demo", server="http://127.0.0.1:9", api_key="mnp_x", webhook_secret=SECRET
        )
    )
    spec = services.WalletSpec("4000-0001", "1234", "ヤマダ ハナコ", None)
    services.open_wallet(spec=spec, now=clock.now())
    acks: list[list[Any]] = []

    def ack(self: ProviderApiClient, items: list[dict[str, Any]]) -> dict[str, int]:
        acks.append(items)
        return {"acknowledged": len(items), "already": 0}

    monkeypatch.setattr(ProviderApiClient, "ack_grants", ack)
    return acks


def _grant_body(grant_id: int = 7, amount: int = 5000) -> bytes:
    data = {
        "grant_id": grant_id, "link_ref": "ABCDEFGHIJKLMNOP", "service_id": "4000-0001", "measure": "premium",
        "amount": amount, "cumulative_after": amount, "due_as_of": "2023-03-15",
        "instructed_at": "2023-03-15T10:00:00+09:00", "status": "instructed",
    }  # fmt: skip
    return json.dumps({"topic": "grant", "data": data}, sort_keys=True).encode()


def _deliver(body: bytes, *, secret: str = SECRET, at: int | None = None) -> Any:
    signature = sign(secret, body, timestamp=int(clock.now().timestamp()) if at is None else at)
    return Client().post(
        "/sandbox/webhook",
        data=body,
        content_type="application/json",
        headers={"X-Mynapoint-Signature": signature},
    )


def test_a_grant_delivered_twice_is_credited_once_and_acknowledged_once(
    sandbox_setup: list[list[Any]],
) -> None:
    body = _grant_body()
    first = _deliver(body)
    assert first.status_code == 200, first.content
    assert first.json() == {"status": "credited", "grant_id": 7, "acknowledged": True}
    again = _deliver(body)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert Wallet.objects.get(service_id="4000-0001").points_balance == 5000
    assert sandbox_setup == [[{"grant_id": 7, "reference": ReceivedGrant.objects.get().reference}]]
    assert ReceivedGrant.objects.get().acknowledged_at is not None


def test_a_bad_or_stale_signature_is_refused_with_401_and_credits_nothing(
    sandbox_setup: list[list[Any]],
) -> None:
    body = _grant_body()
    wrong_key = "another-secret-0123456789"
    assert _deliver(body, secret=wrong_key).status_code == 401
    stale = int(clock.now().timestamp()) - 3600
    assert _deliver(body, at=stale).status_code == 401
    unsigned = Client().post("/sandbox/webhook", data=body, content_type="application/json")
    assert unsigned.status_code == 401
    assert unsigned.json()["code"] == "bad_signature"
    tampered = body.replace(b"5000", b"9000")
    signature = sign(SECRET, body, timestamp=int(clock.now().timestamp()))
    forged = Client().post(
        "/sandbox/webhook",
        data=tampered,
        content_type="application/json",
        headers={"X-Mynapoint-Signature": signature},
    )
    assert forged.status_code == 401
    assert Wallet.objects.get(service_id="4000-0001").points_balance == 0
    assert not ReceivedGrant.objects.exists()
    assert sandbox_setup == []


def test_a_failed_acknowledgement_answers_503_and_the_redelivery_acknowledges_without_crediting_again(
    sandbox_setup: list[list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(self: ProviderApiClient, items: list[dict[str, Any]]) -> dict[str, int]:
        raise ProviderApiError(0, "unreachable", "ConnectionError")

    body = _grant_body(grant_id=8, amount=3000)
    with monkeypatch.context() as patch:
        patch.setattr(ProviderApiClient, "ack_grants", down)
        failed = _deliver(body)
    assert failed.status_code == 503
    assert failed.json()["code"] == "ack_failed"
    received = ReceivedGrant.objects.get(grant_id=8)
    assert received.acknowledged_at is None
    assert "unreachable" in received.ack_error
    assert Wallet.objects.get(service_id="4000-0001").points_balance == 3000

    redelivered = _deliver(body)
    assert redelivered.status_code == 200
    assert redelivered.json()["status"] == "duplicate"
    assert Wallet.objects.get(service_id="4000-0001").points_balance == 3000
    assert len(sandbox_setup) == 1
    assert ReceivedGrant.objects.get(grant_id=8).acknowledged_at is not None


def test_a_grant_for_an_unknown_wallet_is_refused_and_not_recorded(sandbox_setup: list[list[Any]]) -> None:
    body = _grant_body().replace(b'"4000-0001"', b'"4000-9999"')
    answer = _deliver(body)
    assert answer.status_code == 404
    assert answer.json()["code"] == "unknown_wallet"
    assert not ReceivedGrant.objects.exists()


def test_points_cannot_be_overspent_and_a_points_only_purchase_is_not_reported(
    sandbox_setup: list[list[Any]],
) -> None:
    assert _deliver(_grant_body(amount=500)).status_code == 200
    services.ensure_shops()
    now = clock.now()
    with pytest.raises(services.SandboxError) as refused:
        services.pay(service_id="4000-0001", shop="cafe", amount=800, use_points=600, now=now)
    assert refused.value.code == "not_enough_points"
    tx = services.pay(service_id="4000-0001", shop="cafe", amount=500, use_points=500, now=now)
    assert Wallet.objects.get(service_id="4000-0001").points_balance == 0
    sent: list[dict[str, Any]] = []

    class Recording(ProviderApiClient):
        def post_transaction(self, item: dict[str, Any]) -> dict[str, str]:
            sent.append(item)
            return {"id": item["txid"], "status": "created"}

    with Recording("http://127.0.0.1:9", "mnp_x") as api:
        assert services.report_pending(api=api, now=now) == []
    assert sent == []
    assert tx.points_used == tx.yen == 500


def test_the_sandbox_api_answers_404_where_it_is_not_set_up(db: Any, settings: Any, tmp_path: Path) -> None:
    settings.MYNAPOINT_SANDBOX_CONFIG = tmp_path / "absent.json"
    assert Client().get("/sandbox/shops").status_code == 404
    assert Client().post("/sandbox/webhook", data=b"{}", content_type="application/json").status_code == 404
