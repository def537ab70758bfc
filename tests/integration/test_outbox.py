"""Pushed grant instructions: a transactional outbox delivered as signed webhooks, with retries."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support import FEED, NOW, SELF

from mynapoint.applications.services import apply_for_measure
from mynapoint.applications.transactions import record_transaction
from mynapoint.grants.models import OutboxMessage
from mynapoint.grants.outbox import backoff, deliver_due, verify_signature
from mynapoint.grants.services import grant_due_points
from mynapoint.identity.models import Resident
from mynapoint.providers.models import Provider

pytestmark = pytest.mark.django_db
SECRET = "whsec-test"  # noqa: S105 - a test webhook secret


class Receiver:
    """The provider's webhook endpoint (a fake outside the system), on 127.0.0.1."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signed = verify_signature(
                    SECRET, body, self.headers.get("X-Mynapoint-Signature", ""), now=NOW
                )
                if receiver.fail_next or not signed:
                    receiver.fail_next = max(0, receiver.fail_next - 1)
                    self.send_response(503 if signed else 401)
                    self.end_headers()
                    return
                receiver.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _granted(providers: dict[str, Provider], make_resident: Callable[..., Resident], url: str) -> Resident:
    Provider.objects.filter(key="wallet").update(
        grant_delivery="push", webhook_url=url, webhook_secret=SECRET
    )
    hanako = make_resident(accounts={"wallet/W-1": ["1"]})
    apply_for_measure(
        resident=hanako, measure="premium", provider_key="wallet", service_id="W-1", security_codes=["1"],
        mode="charge", operated_by=None, present=[], now=NOW, who=SELF,
    )  # fmt: skip
    record_transaction(
        provider_key="wallet",
        txid="w1",
        service_id="W-1",
        kind="charge",
        amount=4000,
        at=NOW,
        now=NOW,
        who=FEED,
    )
    grant_due_points(resident=hanako, today=NOW.date(), now=NOW, who=FEED)
    return hanako


def test_a_grant_is_pushed_signed_with_no_resident_identity(
    providers: dict[str, Provider], make_resident: Callable[..., Resident], receiver: Receiver
) -> None:
    hanako = _granted(providers, make_resident, receiver.url)
    report = deliver_due(now=NOW, link_ref=lambda g: f"ref-{g.pk}")
    assert (report.delivered, report.failed) == (1, 0)
    [message] = receiver.received
    assert message["topic"] == "grant"
    assert message["data"]["amount"] == 1000
    assert message["data"]["service_id"] == "W-1"
    assert hanako.mykey_id not in json.dumps(message)
    assert deliver_due(now=NOW, link_ref=lambda g: "x").delivered == 0  # delivered once


def test_a_failing_provider_is_retried_with_backoff_until_it_answers(
    providers: dict[str, Provider], make_resident: Callable[..., Resident], receiver: Receiver
) -> None:
    _granted(providers, make_resident, receiver.url)
    receiver.fail_next = 2
    assert deliver_due(now=NOW, link_ref=str).failed == 1
    message = OutboxMessage.objects.get()
    assert message.attempts == 1
    assert message.next_attempt_at == NOW + backoff(1)
    assert "503" in message.last_error
    assert deliver_due(now=NOW + dt.timedelta(seconds=30), link_ref=str).delivered == 0  # not due yet
    assert deliver_due(now=NOW + backoff(1), link_ref=str).failed == 1
    later = NOW + backoff(1) + backoff(2)
    assert deliver_due(now=later, link_ref=str).delivered == 1
    assert OutboxMessage.objects.get().attempts == 3
    assert len(receiver.received) == 1


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n).total_seconds() / 60 for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(30) == dt.timedelta(hours=6)


def test_a_pull_provider_gets_no_outbox_message(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    hanako = make_resident(accounts={"wallet/P-1": ["1"]})
    apply_for_measure(
        resident=hanako, measure="premium", provider_key="wallet", service_id="P-1", security_codes=["1"],
        mode="charge", operated_by=None, present=[], now=NOW, who=SELF,
    )  # fmt: skip
    record_transaction(
        provider_key="wallet",
        txid="p1",
        service_id="P-1",
        kind="charge",
        amount=4000,
        at=NOW,
        now=NOW,
        who=FEED,
    )
    assert grant_due_points(resident=hanako, today=NOW.date(), now=NOW, who=FEED)
    assert not OutboxMessage.objects.exists()
