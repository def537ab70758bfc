"""The provider API through Django's test client, with real API keys: every operation and its error path.

The provider's account-verification endpoint (verification = callback) is a fake outside the system: a tiny
HTTP server on 127.0.0.1 in a thread, which checks the platform's signature like a real provider would.
"""

from __future__ import annotations

import codecs
import datetime as dt
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from concurrency_hooks import AFTER_READ, race
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.client import MULTIPART_CONTENT
from pytest_django import Settings
from support import NOW, SELF

from mynapoint import clock
from mynapoint.api.provider import export_schema
from mynapoint.applications.models import AccountReplacement, PaymentAccount
from mynapoint.applications.selectors import resident_status
from mynapoint.applications.services import ApplicationError, ApplicationResult, apply_for_measure
from mynapoint.audit.models import AuditEvent
from mynapoint.audit.selectors import verify_chain
from mynapoint.grants.models import Grant
from mynapoint.grants.services import grant_due_points
from mynapoint.identity.models import Resident
from mynapoint.ledger.selectors import balance
from mynapoint.providers.models import Provider, ProviderAccount, ProviderRefund, ProviderTransaction
from mynapoint.providers.selectors import link_ref, sign
from mynapoint.providers.services import issue_api_key, onboard_provider

pytestmark = pytest.mark.django_db

API = "/api/provider/v1"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "provider-v1.json"
ADAPTER = "mynapoint.applications.adapters.ProviderApiAdapter"
AT = NOW - dt.timedelta(hours=1)
KANA, BORN = "ヤマダ ハナコ", dt.date(1990, 1, 15)


class ProviderClient:
    """Django's test client with a provider's API key on every request."""

    def __init__(self, key: str) -> None:
        self.client, self.key = Client(), key

    def get(self, path: str, **query: Any) -> Any:
        return self.client.get(f"{API}{path}", query, HTTP_X_API_KEY=self.key)

    def post(self, path: str, body: Any) -> Any:
        return self.client.post(
            f"{API}{path}", json.dumps(body), content_type="application/json", HTTP_X_API_KEY=self.key
        )

    def put(self, path: str, body: Any) -> Any:
        return self.client.put(
            f"{API}{path}", json.dumps(body), content_type="application/json", HTTP_X_API_KEY=self.key
        )

    def delete(self, path: str) -> Any:
        return self.client.delete(f"{API}{path}", HTTP_X_API_KEY=self.key)

    def upload(self, name: str, data: bytes) -> Any:
        return self.client.post(
            f"{API}/transactions/csv",
            {"file": SimpleUploadedFile(name, data, content_type="text/csv")},
            content_type=MULTIPART_CONTENT,
            HTTP_X_API_KEY=self.key,
        )


def error(answer: Any, status: int, code: str | None = None) -> str:
    """The one error shape: exactly {code, message}, the message in Japanese / English."""
    assert answer.status_code == status, answer.content.decode()
    body = answer.json()
    assert set(body) == {"code", "message"}, body
    assert " / " in body["message"]
    if code is not None:
        assert body["code"] == code, body
    return str(body["message"])


@pytest.fixture(autouse=True)
def _provider_api_adapter(settings: Settings) -> None:
    settings.MYNAPOINT_PROVIDER_ADAPTER = ADAPTER


def _onboard(key: str, **overrides: Any) -> Provider:
    kwargs: dict[str, Any] = {
        "key": key,
        "name_ja": f"{key} ペイ",
        "kind": "qr",
        "modes": ["charge", "purchase"],
        "now": NOW,
    }
    return onboard_provider(**{**kwargs, **overrides})


@pytest.fixture
def wallet() -> Provider:
    return _onboard("wallet")


@pytest.fixture
def api(wallet: Provider) -> ProviderClient:
    plaintext, _ = issue_api_key(provider=wallet, label="test", now=NOW)
    return ProviderClient(plaintext)


@pytest.fixture
def other_api() -> ProviderClient:
    plaintext, _ = issue_api_key(provider=_onboard("other"), label="test", now=NOW)
    return ProviderClient(plaintext)


def account(
    service_id: str, *codes: str, kana: str = KANA, born: str | None = BORN.isoformat()
) -> dict[str, Any]:
    return {
        "service_id": service_id,
        "security_codes": list(codes or ["1234"]),
        "holder_kana": kana,
        "holder_born": born,
    }


def apply(
    resident: Resident,
    service_id: str,
    codes: list[str],
    *,
    provider: str = "wallet",
    measure: str = "premium",
) -> ApplicationResult:
    return apply_for_measure(
        resident=resident, measure=measure, provider_key=provider, service_id=service_id, security_codes=codes,
        mode="charge", operated_by=None, present=[], now=NOW - dt.timedelta(hours=2), who=SELF,
    )  # fmt: skip


def tx(txid: str, service_id: str = "S-1", amount: int = 1000, **overrides: Any) -> dict[str, Any]:
    return {
        "kind": "charge",
        "txid": txid,
        "service_id": service_id,
        "amount": amount,
        "at": AT.isoformat(),
        **overrides,
    }


def refund(refund_id: str, of_txid: str, amount: int = 100, **overrides: Any) -> dict[str, Any]:
    return {
        "kind": "refund",
        "refund_id": refund_id,
        "of_txid": of_txid,
        "amount": amount,
        "at": AT.isoformat(),
        **overrides,
    }


def linked(
    api: ProviderClient, make_resident: Callable[..., Resident], service_id: str = "S-1", **facts: Any
) -> Resident:
    """A resident whose account at the wallet is declared and linked to the premium measure."""
    assert (
        api.put("/accounts", {"accounts": [account(service_id, kana=facts.get("kana", KANA))]}).status_code
        == 200
    )
    resident = make_resident(**facts)
    assert apply(resident, service_id, ["1234"]).accepted
    return resident


# ------------------------------------------------------------------------------------------ accounts (registry)


def test_declared_accounts_are_created_then_updated_with_their_codes_hashed(api: ProviderClient) -> None:
    answer = api.put("/accounts", {"accounts": [account("A-1"), account("A-2", "9999")]})
    assert answer.status_code == 200
    assert answer.json() == {"created": 2, "updated": 0}
    again = api.put("/accounts", {"accounts": [account("A-2", "0000"), account("A-3")]})
    assert again.json() == {"created": 1, "updated": 1}
    rows = {row.service_id: row for row in ProviderAccount.objects.all()}
    assert set(rows) == {"A-1", "A-2", "A-3"}
    # a keyed hash, not the code and not a plain sha256 of it (a substring test on random hex would be flaky)
    plain = hashlib.sha256(b"1234").hexdigest()
    assert all(
        len(row.security_codes_hash) == 64 and row.security_codes_hash not in ("1234", plain)
        for row in rows.values()
    )
    assert rows["A-1"].security_codes_hash != rows["A-3"].security_codes_hash  # bound to the account
    assert (rows["A-1"].holder_kana, rows["A-1"].holder_born) == (KANA, BORN)
    events = AuditEvent.objects.filter(action="accounts_declared")
    assert events.count() == 2
    assert '"1234"' not in json.dumps(
        [e.after for e in events]
    )  # no code as a value (the digest is random hex)


def test_a_refused_declaration_keeps_nothing_and_names_the_item(api: ProviderClient) -> None:
    message = error(api.put("/accounts", {"accounts": [account("A-1"), account("A-2", "1", "2")]}), 422)
    assert "accounts[1].security_codes" in message
    assert "accounts[1]" in error(api.put("/accounts", {"accounts": [account("A-1"), account("A-1")]}), 422)
    assert "accounts[0].holder_kana" in error(
        api.put("/accounts", {"accounts": [account("A-9", kana="")]}), 422
    )
    assert "accounts[0].service_id" in error(api.put("/accounts", {"accounts": [account("A 9")]}), 422)
    assert "accounts[0].security_codes" in error(
        api.put("/accounts", {"accounts": [{"service_id": "A-1"}]}), 422
    )
    error(
        api.put("/accounts", {"accounts": [account("A-1"), account("4111-1111-1111")]}),
        422,
        "my_number_refused",
    )
    assert not ProviderAccount.objects.exists()


def test_more_than_10000_accounts_is_a_413(api: ProviderClient) -> None:
    accounts = [{"service_id": f"A{i}", "security_codes": ["1"], "holder_kana": "カ"} for i in range(10_001)]
    error(api.put("/accounts", {"accounts": accounts}), 413, "too_many")
    assert not ProviderAccount.objects.exists()


def test_a_withdrawn_account_no_longer_verifies(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    api.put("/accounts", {"accounts": [account("A-1")]})
    answer = api.delete("/accounts/A-1")
    assert answer.status_code == 204
    assert answer.content == b""
    assert api.delete("/accounts/A-1").status_code == 204  # withdrawing again changes nothing
    error(api.delete("/accounts/NOPE"), 404, "unknown_account")
    with pytest.raises(ApplicationError) as refused:
        apply(make_resident(), "A-1", ["1234"])
    assert refused.value.code == "account_not_verified"
    assert api.put("/accounts", {"accounts": [account("A-1")]}).json() == {"created": 0, "updated": 1}
    assert apply(make_resident(), "A-1", ["1234"]).accepted  # declared again: valid again


def test_registry_verification_checks_the_codes_and_gives_the_holder(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    api.put("/accounts", {"accounts": [account("A-1"), account("A-2", kana="スズキ イチロウ")]})
    hanako = make_resident()
    for service_id, codes in (("A-1", ["1235"]), ("A-1", ["12345"]), ("NOPE", ["1234"])):
        with pytest.raises(ApplicationError) as refused:
            apply(hanako, service_id, codes)
        assert refused.value.code == "account_not_verified"
    result = apply(hanako, "A-1", ["1234"])
    assert result.accepted
    assert result.application.holder_role == "self"
    other = apply(make_resident(kana="タナカ ミキ"), "A-2", ["1234"])
    assert other.application.holder_role == "other"  # the holder the provider declared is not the applicant


def test_a_callback_provider_does_not_take_declared_accounts(settings: Settings) -> None:
    provider = _onboard("cb", verification="callback", verify_url="https://cb.example/verify")
    plaintext, _ = issue_api_key(provider=provider, label="", now=NOW)
    error(
        ProviderClient(plaintext).put("/accounts", {"accounts": [account("A-1")]}),
        422,
        "wrong_verification_mode",
    )


# ------------------------------------------------------------------------------------------ accounts (callback)


class FakeVerifyEndpoint:
    """A provider's verification endpoint: checks the platform's signature, answers from its own accounts."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.accounts: dict[str, dict[str, Any]] = {}
        self.mode = "ok"  # ok | error | garbage | slow
        self.calls: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signature = self.headers.get("X-Mynapoint-Signature", "")
                timestamp = int(dict(p.split("=", 1) for p in signature.split(","))["t"])
                signed = signature == sign(endpoint.secret, body, timestamp=timestamp)
                request = json.loads(body)
                endpoint.calls.append({"body": request, "signed": signed})
                if endpoint.mode == "slow":
                    time.sleep(1.0)
                if not signed or endpoint.mode == "error":
                    self._answer(500, b'{"error": "boom"}')
                    return
                if endpoint.mode == "garbage":
                    self._answer(200, b"<html>maintenance</html>")
                    return
                known = endpoint.accounts.get(request["service_id"])
                if known is None or known["security_codes"] != request["security_codes"]:
                    self._answer(200, b'{"valid": false}')
                    return
                answer = {
                    "valid": True,
                    "holder_kana": known["holder_kana"],
                    "holder_born": known["holder_born"],
                }
                self._answer(200, json.dumps(answer).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/verify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVerifyEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def verify_endpoint() -> Iterator[FakeVerifyEndpoint]:
    with FakeVerifyEndpoint(secret="callback-secret-" + "x" * 16) as endpoint:
        yield endpoint


def test_callback_verification_asks_the_provider_with_a_signed_request(
    verify_endpoint: FakeVerifyEndpoint, make_resident: Callable[..., Resident]
) -> None:
    _onboard(
        "cb", verification="callback", verify_url=verify_endpoint.url, webhook_secret=verify_endpoint.secret,
        security_code_count=2,
    )  # fmt: skip
    verify_endpoint.accounts["C-1"] = {
        "security_codes": ["12", "AB"],
        "holder_kana": KANA,
        "holder_born": "1990-01-15",
    }
    hanako = make_resident()
    with pytest.raises(ApplicationError) as refused:
        apply(hanako, "C-1", ["12", "AC"], provider="cb")
    assert refused.value.code == "account_not_verified"
    result = apply(hanako, "C-1", ["12", "AB"], provider="cb")
    assert result.accepted
    assert result.application.holder_role == "self"
    assert [c["signed"] for c in verify_endpoint.calls] == [True, True]
    assert verify_endpoint.calls[-1]["body"] == {"service_id": "C-1", "security_codes": ["12", "AB"]}


@pytest.mark.parametrize("mode", ["error", "garbage", "slow", "down"])
def test_a_failing_provider_endpoint_is_provider_unavailable_never_an_acceptance(
    mode: str, verify_endpoint: FakeVerifyEndpoint, make_resident: Callable[..., Resident], settings: Settings
) -> None:
    settings.MYNAPOINT_PROVIDER_VERIFY_TIMEOUT = 0.3
    url = verify_endpoint.url
    if mode == "down":  # a port nothing listens on
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/verify"
    _onboard("cb", verification="callback", verify_url=url, webhook_secret=verify_endpoint.secret)
    verify_endpoint.accounts["C-1"] = {
        "security_codes": ["1"],
        "holder_kana": KANA,
        "holder_born": "1990-01-15",
    }
    verify_endpoint.mode = mode
    from mynapoint.applications import adapters

    adapters._ADAPTERS.clear()  # the adapter reads its timeout when it is made
    with pytest.raises(ApplicationError) as refused:
        apply(make_resident(), "C-1", ["1"], provider="cb")
    assert refused.value.code == "provider_unavailable"
    assert " / " not in refused.value.ja
    assert "try again" in refused.value.en
    assert not PaymentAccount.objects.exists()
    adapters._ADAPTERS.clear()


def test_the_platform_calls_only_https_or_loopback(make_resident: Callable[..., Resident]) -> None:
    provider = _onboard("cb", verification="callback", verify_url="https://cb.example/verify")
    Provider.objects.filter(pk=provider.pk).update(
        verify_url="http://10.0.0.8/verify"
    )  # slipped past onboarding
    with pytest.raises(ApplicationError) as refused:
        apply(make_resident(), "C-1", ["1"], provider="cb")
    assert refused.value.code == "provider_unavailable"
    assert "loopback" in refused.value.en


# ------------------------------------------------------------------------------------------ link notices


def test_link_notices_carry_a_per_provider_pseudonym_never_the_mykey_id(
    api: ProviderClient, other_api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    hanako = linked(api, make_resident, "S-1")
    taro = linked(api, make_resident, "S-2", kana="サトウ タロウ")
    page = api.get("/links").json()
    assert [item["service_id"] for item in page["items"]] == ["S-1", "S-2"]
    first = page["items"][0]
    assert (first["measure"], first["mode"], first["status"]) == ("premium", "charge", "linked")
    refs = [item["link_ref"] for item in page["items"]]
    assert all(re.fullmatch(r"[A-Z2-7]{16}", ref) for ref in refs)
    assert len(set(refs)) == 2
    for resident, ref in ((hanako, refs[0]), (taro, refs[1])):
        assert resident.mykey_id not in json.dumps(page)
        assert resident.mykey_id not in ref
        assert ref == link_ref(provider_key="wallet", resident_id=resident.pk)
        assert ref != link_ref(
            provider_key="other", resident_id=resident.pk
        )  # another provider: another name
    assert other_api.get("/links").json() == {"next_cursor": 0, "items": []}  # only the provider's own links


def test_link_notices_page_by_cursor(api: ProviderClient, make_resident: Callable[..., Resident]) -> None:
    linked(api, make_resident, "S-1")
    linked(api, make_resident, "S-2", kana="サトウ タロウ")
    one = api.get("/links", limit=1).json()
    assert [i["service_id"] for i in one["items"]] == ["S-1"]
    assert one["next_cursor"] == one["items"][0]["cursor"]
    two = api.get("/links", after=one["next_cursor"], limit=1).json()
    assert [i["service_id"] for i in two["items"]] == ["S-2"]
    done = api.get("/links", after=two["next_cursor"]).json()
    assert done == {"next_cursor": two["next_cursor"], "items": []}
    assert "limit" in error(api.get("/links", limit=0), 422, "invalid_input")
    assert "after" in error(api.get("/links", after="x"), 422)


# ------------------------------------------------------------------------------------------ transactions


def test_a_transaction_is_idempotent_by_txid(api: ProviderClient) -> None:
    first = api.post("/transactions", tx("t-1"))
    assert first.status_code == 200
    assert first.json() == {"id": "t-1", "status": "created"}
    assert api.post("/transactions", tx("t-1")).json() == {"id": "t-1", "status": "unchanged"}
    message = error(api.post("/transactions", tx("t-1", amount=999)), 409, "conflict")
    assert "amount" in message
    assert ProviderTransaction.objects.get().amount == 1000
    assert AuditEvent.objects.filter(action="transaction_recorded").count() == 1


def test_a_refund_is_idempotent_by_refund_id(api: ProviderClient) -> None:
    api.post("/transactions", tx("t-1"))
    assert api.post("/transactions", refund("r-1", "t-1")).json() == {"id": "r-1", "status": "created"}
    assert api.post("/transactions", refund("r-1", "t-1")).json() == {"id": "r-1", "status": "unchanged"}
    error(api.post("/transactions", refund("r-1", "t-1", amount=5)), 409, "conflict")
    assert "of_txid" in error(api.post("/transactions", refund("r-2", "t-9")), 422, "unknown_transaction")
    assert ProviderRefund.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (tx("t-1", amount=0), "amount"),
        (tx("t-1", amount=-5), "amount"),
        (tx("t-1", at="2022-07-01T09:00:00"), "at"),  # no UTC offset
        (tx("t-1", at=(NOW + dt.timedelta(days=1)).isoformat()), "at"),
        (tx("t-1", kind="gift"), "kind"),
        (tx("t 1"), "txid"),
        (tx("t-1", service_id=""), "service_id"),
        ({"kind": "charge", "txid": "t-1", "amount": 1, "at": AT.isoformat()}, "service_id"),
        (refund("r-1", "t-1", amount="many"), "amount"),
    ],
)
def test_an_invalid_transaction_is_a_422_naming_the_field(
    api: ProviderClient, body: dict[str, Any], field: str
) -> None:
    assert field in error(api.post("/transactions", body), 422)
    assert not ProviderTransaction.objects.exists()


def test_a_my_number_in_a_service_id_is_refused(api: ProviderClient) -> None:
    error(api.post("/transactions", tx("t-1", service_id="123456789018")), 422, "my_number_refused")


def test_malformed_json_is_a_400(api: ProviderClient) -> None:
    answer = api.client.post(
        f"{API}/transactions", "{not json", content_type="application/json", HTTP_X_API_KEY=api.key
    )
    error(answer, 400, "malformed")


def _timed(what: str, call: Callable[[], Any], count: int) -> Any:
    started = time.perf_counter()
    answer = call()
    seconds = time.perf_counter() - started
    print(f"\n{what} on {connection.vendor}: {count} items in {seconds:.2f} s = {count / seconds:,.0f}/s")
    return answer


def test_a_batch_of_10000_is_accepted_and_replayed_unchanged_and_10001_refused(api: ProviderClient) -> None:
    items = [tx(f"t-{i}", service_id=f"S-{i % 500}", amount=100 + i) for i in range(10_000)]
    answer = _timed("batch (HTTP, new)", lambda: api.post("/transactions/batch", {"items": items}), 10_000)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["created"], body["unchanged"]) == (10_000, 0)
    assert body["items"][9_999] == {"index": 9_999, "status": "created"}
    assert ProviderTransaction.objects.count() == 10_000
    assert PaymentAccount.objects.count() == 500
    [event] = AuditEvent.objects.filter(action="transaction_batch_recorded")
    assert event.after["created"] == 10_000
    assert len(event.after["digest"]) == 64
    again = _timed("batch (HTTP, replay)", lambda: api.post("/transactions/batch", {"items": items}), 10_000)
    assert (again.json()["created"], again.json()["unchanged"]) == (0, 10_000)
    too_many = [*items, tx("t-extra")]
    error(api.post("/transactions/batch", {"items": too_many}), 413, "too_many")
    assert ProviderTransaction.objects.count() == 10_000
    assert verify_chain().ok


def test_a_refused_batch_keeps_nothing_and_names_the_items(api: ProviderClient) -> None:
    api.post("/transactions", tx("old", amount=500))
    bad_field = [tx("a"), tx("b"), tx("c", amount=0), refund("r", "a"), tx("d", at="yesterday")]
    message = error(api.post("/transactions/batch", {"items": bad_field}), 422)
    assert "items[2].amount" in message
    assert "items[4].at" in message
    conflict = [tx("a"), tx("old", amount=501), refund("r", "a")]
    assert "items[1]" in error(api.post("/transactions/batch", {"items": conflict}), 409, "conflict")
    repeated = [tx("a"), tx("a", amount=2)]
    assert "items[1]" in error(api.post("/transactions/batch", {"items": repeated}), 409, "conflict")
    unknown = [tx("a"), refund("r", "nowhere")]
    assert "items[1]" in error(
        api.post("/transactions/batch", {"items": unknown}), 422, "unknown_transaction"
    )
    early = [tx("a"), refund("r", "a", at=(AT - dt.timedelta(minutes=1)).isoformat())]
    assert "items[1]" in error(api.post("/transactions/batch", {"items": early}), 422)
    assert list(ProviderTransaction.objects.values_list("txid", flat=True)) == ["old"]
    assert not ProviderRefund.objects.exists()
    assert not AuditEvent.objects.filter(action="transaction_batch_recorded").exists()


def test_a_batch_mixes_new_known_and_repeated_items_and_refunds_in_the_same_batch(
    api: ProviderClient,
) -> None:
    api.post("/transactions", tx("old"))
    items = [
        refund("r-1", "new"),
        tx("new", amount=3000),
        tx("old"),
        tx("new", amount=3000),
        refund("r-2", "old"),
    ]
    body = api.post("/transactions/batch", {"items": items}).json()
    statuses = [item["status"] for item in body["items"]]
    assert statuses == ["created", "created", "unchanged", "unchanged", "created"]
    assert (body["created"], body["unchanged"]) == (3, 2)
    assert {
        r.refund_id: r.transaction.txid for r in ProviderRefund.objects.select_related("transaction")
    } == {
        "r-1": "new",
        "r-2": "old",
    }


def test_an_empty_batch_records_nothing_but_answers(api: ProviderClient) -> None:
    assert api.post("/transactions/batch", {"items": []}).json() == {
        "created": 0,
        "unchanged": 0,
        "items": [],
    }


CSV_ROWS = [
    ["kind", "txid", "service_id", "amount", "at", "refund_id", "of_txid", "note"],
    ["charge", "c-1", "S-1", "20000", AT.isoformat(), "", "", "コンビニでチャージ"],
    ["purchase", "p-1", "S-2", "1500", AT.isoformat(), "", "", "お買い物（ポイント対象）"],
    ["refund", "", "", "500", AT.isoformat(), "r-1", "p-1", "返品・返金"],
]


def _csv(rows: list[list[str]], encoding: str, bom: bool = False) -> bytes:
    text = "\r\n".join(",".join(row) for row in rows) + "\r\n"
    return (codecs.BOM_UTF8 if bom else b"") + text.encode(encoding)


@pytest.mark.parametrize(("encoding", "bom"), [("utf-8", True), ("utf-8", False), ("cp932", False)])
def test_a_csv_in_utf8_or_cp932_with_japanese_notes(api: ProviderClient, encoding: str, bom: bool) -> None:
    data = _csv(CSV_ROWS, encoding, bom)
    if encoding == "cp932":
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")  # really Shift_JIS bytes, not UTF-8 by accident
    answer = api.upload("report.csv", data)
    assert answer.status_code == 200, answer.content.decode()
    assert answer.json() == {
        "created": 3,
        "unchanged": 0,
        "items": [{"index": i, "status": "created"} for i in range(3)],
    }
    assert api.upload("report.csv", data).json()["unchanged"] == 3
    assert ProviderRefund.objects.get().transaction.txid == "p-1"


def test_a_csv_with_a_bad_row_header_or_encoding_is_refused(api: ProviderClient) -> None:
    bad_row = [*CSV_ROWS[:2], ["charge", "c-2", "S-1", "lots", AT.isoformat(), "", "", "メモ"]]
    message = error(api.upload("r.csv", _csv(bad_row, "cp932")), 422, "invalid_input")
    assert "items[1] (line 3) amount" in message
    error(
        api.upload("r.csv", _csv([["kind", "txid", "amount"], ["charge", "c", "1"]], "utf-8")),
        422,
        "bad_header",
    )
    error(api.upload("r.csv", b"kind,txid\r\n\x81\x20\xff"), 400, "bad_encoding")
    conflict = [*CSV_ROWS[:2], ["charge", "c-1", "S-1", "1", AT.isoformat(), "", "", ""]]
    assert "items[1]" in error(api.upload("r.csv", _csv(conflict, "utf-8")), 409, "conflict")
    error(api.client.post(f"{API}/transactions/csv", {}, HTTP_X_API_KEY=api.key), 422)  # no file
    assert not ProviderTransaction.objects.exists()


def test_a_csv_of_more_than_10000_rows_is_a_413(api: ProviderClient) -> None:
    rows = [CSV_ROWS[0]] + [
        ["charge", f"c-{i}", "S-1", "1", AT.isoformat(), "", "", ""] for i in range(10_001)
    ]
    error(api.upload("big.csv", _csv(rows, "utf-8")), 413, "too_many")
    assert not ProviderTransaction.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_the_same_batch_sent_twice_at_once_is_recorded_once(settings: Settings) -> None:
    """Both threads read 'not yet recorded' before either writes (on PostgreSQL). The loser's bulk insert then
    meets the winner's unique index entries, and its retry answers every item as unchanged."""
    settings.MYNAPOINT_PROVIDER_ADAPTER = ADAPTER
    settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK = AFTER_READ
    plaintext, _ = issue_api_key(provider=_onboard("wallet"), label="", now=NOW)
    items = [tx(f"t-{i}", service_id=f"S-{i % 7}") for i in range(50)]

    def send() -> dict[str, Any]:
        try:
            return dict(ProviderClient(plaintext).post("/transactions/batch", {"items": items}).json())
        finally:
            connection.close()

    postgres = connection.vendor == "postgresql"
    outcome = race({"a": send, "b": send}, barrier_timeout=30.0 if postgres else 1.0)
    assert outcome.errors == {}
    assert sorted(r["created"] for r in outcome.results.values()) == [0, 50]
    if postgres:
        assert outcome.met == ("a", "b"), "both read before either wrote"
    assert ProviderTransaction.objects.count() == 50
    assert PaymentAccount.objects.count() == 7
    assert AuditEvent.objects.filter(action="transaction_batch_recorded").count() == 1


# ------------------------------------------------------------------------------------------ grants


def _granted(api: ProviderClient, make_resident: Callable[..., Resident]) -> tuple[Resident, Grant]:
    hanako = linked(api, make_resident)
    assert api.post("/transactions", tx("c-1", amount=20_000)).status_code == 200
    [grant] = grant_due_points(resident=hanako, today=NOW.date(), now=NOW, who=SELF)
    return hanako, grant


def test_grants_are_paged_for_their_provider_with_the_link_ref_of_the_link_notice(
    api: ProviderClient, other_api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    hanako, grant = _granted(api, make_resident)
    page = api.get("/grants").json()
    assert page["next_cursor"] == grant.pk
    [item] = page["items"]
    assert item == {
        "cursor": grant.pk,  # a grant's position is its id unless a later id committed first
        "grant_id": grant.pk,
        "link_ref": api.get("/links").json()["items"][0]["link_ref"],
        "service_id": "S-1",
        "measure": "premium",
        "amount": 5000,
        "cumulative_after": 5000,
        "due_as_of": NOW.date().isoformat(),
        "instructed_at": item["instructed_at"],
        "status": "instructed",
    }
    assert dt.datetime.fromisoformat(item["instructed_at"]) == NOW
    assert hanako.mykey_id not in json.dumps(page)
    assert api.get("/grants", after=grant.pk).json() == {"next_cursor": grant.pk, "items": []}
    assert other_api.get("/grants").json()["items"] == []


def test_an_acknowledgement_posts_to_the_resident_exactly_once(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    hanako, grant = _granted(api, make_resident)
    first = api.post("/grants/ack", {"items": [{"grant_id": grant.pk, "reference": "PAY-0001"}]})
    assert first.status_code == 200
    assert first.json() == {"acknowledged": 1, "already": 0}
    again = api.post("/grants/ack", {"items": [{"grant_id": grant.pk, "reference": "PAY-0001"}]})
    assert again.json() == {"acknowledged": 0, "already": 1}
    twice_in_one = api.post("/grants/ack", {"items": [{"grant_id": grant.pk, "reference": "x"}] * 2})
    assert twice_in_one.json() == {"acknowledged": 0, "already": 2}
    assert balance(f"resident:{hanako.mykey_id}:premium") == 5000
    assert balance("payable:wallet") == 0
    grant.refresh_from_db()
    assert (grant.status, grant.provider_reference) == ("acknowledged", "PAY-0001")
    assert api.get("/grants").json()["items"][0]["status"] == "acknowledged"


def test_acknowledging_another_providers_or_an_unknown_grant_is_refused_and_acknowledges_nothing(
    api: ProviderClient, other_api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    _, grant = _granted(api, make_resident)
    assert "items[0]" in error(
        other_api.post("/grants/ack", {"items": [{"grant_id": grant.pk, "reference": "x"}]}), 403
    )
    unknown = {
        "items": [{"grant_id": grant.pk, "reference": "x"}, {"grant_id": grant.pk + 99, "reference": "y"}]
    }
    assert "items[1]" in error(api.post("/grants/ack", unknown), 404, "unknown_grant")
    error(api.post("/grants/ack", {"items": [{"grant_id": grant.pk, "reference": "r" * 101}]}), 422)
    error(api.post("/grants/ack", {"items": [{"grant_id": "one", "reference": "x"}]}), 422)
    grant.refresh_from_db()
    assert grant.status == "instructed"


# ------------------------------------------------------------------------------------------ stops


def stop(kind: str, service_id: str = "S-1", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "service_id": service_id, "occurred_on": NOW.date().isoformat(), **extra}


def test_a_death_notice_records_the_date_and_stops_the_points(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    hanako = linked(api, make_resident)
    assert api.post("/stops", stop("death")).json() == {"status": "recorded"}
    hanako.refresh_from_db()
    assert hanako.died == NOW.date()
    api.post("/transactions", tx("c-1", amount=20_000))
    assert (
        resident_status(hanako, as_of=NOW.date()).premium == 0
    )  # from the day of death, nothing counts (P7)
    assert api.post("/stops", stop("death")).json() == {"status": "unchanged"}
    other_day = stop("death", occurred_on=(NOW.date() - dt.timedelta(days=1)).isoformat())
    error(api.post("/stops", other_day), 409, "conflict")
    [event] = AuditEvent.objects.filter(action="death_recorded")
    assert event.actor == "provider:wallet"


def test_a_replaced_card_carries_the_link_and_the_cap_over(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    hanako = linked(api, make_resident)
    assert api.post("/stops", stop("card_replaced", new_service_id="S-1b")).json() == {"status": "recorded"}
    assert api.post("/stops", stop("card_replaced", new_service_id="S-1b")).json() == {"status": "unchanged"}
    [replacement] = AccountReplacement.objects.all()
    assert replacement.accepted
    assert replacement.to_account.linked_resident_id == hanako.pk
    api.post("/transactions", tx("c-new", service_id="S-1b", amount=4000))
    assert resident_status(hanako, as_of=NOW.date()).premium == 1000
    error(api.post("/stops", stop("card_replaced")), 422, "new_service_id_missing")
    error(api.post("/stops", stop("card_replaced", new_service_id="S-1")), 422, "same_account")


def test_a_replacement_onto_another_persons_account_is_refused(
    api: ProviderClient, make_resident: Callable[..., Resident]
) -> None:
    linked(api, make_resident, "S-1")
    linked(api, make_resident, "S-2", kana="サトウ タロウ")
    assert api.post("/stops", stop("card_replaced", new_service_id="S-2")).json() == {"status": "refused"}


def test_an_improper_transaction_notice_is_recorded_for_the_office(api: ProviderClient) -> None:
    api.post("/transactions", tx("c-1"))  # an account the provider reported on, linked or not
    note = "同一端末から短時間に多数のチャージ"
    assert api.post("/stops", stop("improper", note=note)).json() == {"status": "recorded"}
    [event] = AuditEvent.objects.filter(action="improper_transaction_reported")
    assert (event.subject_id, event.after["note"], event.after["linked"]) == ("wallet/S-1", note, False)


def test_stop_notices_error_paths(api: ProviderClient) -> None:
    error(api.post("/stops", stop("death", "NOPE")), 404, "unknown_account")
    api.post("/transactions", tx("c-1"))
    error(api.post("/stops", stop("death")), 422, "not_linked")
    assert "kind" in error(api.post("/stops", stop("vanished")), 422, "invalid_input")
    tomorrow = (NOW.date() + dt.timedelta(days=1)).isoformat()
    error(api.post("/stops", stop("improper", occurred_on=tomorrow)), 422, "in_future")
    error(api.post("/stops", stop("improper", note="x" * 1001)), 422, "bad_note")
    error(api.post("/stops", stop("improper", note="番号 1234 5678 9018")), 422, "my_number_refused")


# ------------------------------------------------------------------------------------------ the schema


def test_the_committed_openapi_schema_is_the_one_the_code_makes() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == export_schema(), (
        "docs/openapi/provider-v1.json differs from the provider API. Regenerate it with:\n"
        "  DJANGO_SETTINGS_MODULE=mynapoint.config.test_settings .venv/bin/python -c "
        '"import django; django.setup(); from pathlib import Path; from mynapoint.api.provider import export_schema; '
        "Path('docs/openapi/provider-v1.json').write_text(export_schema(), encoding='utf-8')\""
    )


def test_every_operation_documents_its_error_statuses_with_the_error_shape() -> None:
    schema = json.loads(export_schema())
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"401", "500"} <= statuses, (method, path)
            for status in statuses - {"200", "204"}:
                ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (method, path, status)
            assert operation["security"] == [{"ProviderKey": []}]
    assert schema["components"]["securitySchemes"]["ProviderKey"] == {
        "in": "header",
        "name": "X-API-Key",
        "type": "apiKey",
    }
    assert "413" in schema["paths"][f"{API}/transactions/batch"]["post"]["responses"]


def test_the_clock_is_the_platforms(api: ProviderClient) -> None:
    clock.start_at(NOW + dt.timedelta(days=2))
    future = tx("t-1", at=(NOW + dt.timedelta(days=1)).isoformat())
    assert api.post("/transactions", future).json()["status"] == "created"


# ------------------------------------------------------------------------------------------ the one error shape


@pytest.mark.parametrize("with_key", [True, False])
@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/nope"), ("post", "/nope"), ("put", "/links/extra"), ("delete", "/v2/grants"), ("get", "/")],
)
def test_an_unknown_path_under_the_prefix_is_a_404_in_the_error_shape(
    api: ProviderClient, method: str, path: str, with_key: bool
) -> None:
    headers = {"HTTP_X_API_KEY": api.key} if with_key else {}
    answer = getattr(api.client, method)(f"{API}{path}", **headers)  # a POST without a CSRF token too
    assert answer["Content-Type"].startswith("application/json")
    message = error(answer, 404, "unknown_path")
    assert f"{method.upper()} {API}{path}" in message  # says what was asked for ...
    assert "docs/provider-api.md" in message  # ... and where the operations are
    assert f"{API}/openapi.json" in message


def test_a_path_with_a_trailing_slash_says_paths_end_without_one(api: ProviderClient) -> None:
    message = error(api.client.get(f"{API}/links/", HTTP_X_API_KEY=api.key), 404, "unknown_path")
    assert "without a slash" in message
    assert "without a slash" not in error(api.client.get(f"{API}/", HTTP_X_API_KEY=api.key), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("delete", "/links", "GET"),
        ("post", "/grants", "GET"),
        ("put", "/grants/ack", "POST"),
        ("get", "/transactions", "POST"),
        ("patch", "/stops", "POST"),
        ("get", "/accounts/A-1", "DELETE"),
        ("post", "/accounts", "PUT"),
    ],
)
def test_a_wrong_method_on_a_known_path_is_a_405_naming_the_allowed_methods(
    api: ProviderClient, method: str, path: str, allowed: str
) -> None:
    answer = getattr(api.client, method)(f"{API}{path}", HTTP_X_API_KEY=api.key)
    message = error(answer, 405, "method_not_allowed")
    assert answer["Allow"] == allowed
    assert f"{method.upper()} is not allowed on {API}{path}; use {allowed}" in message
    # the same without a key: the method is wrong whoever asks
    error(getattr(api.client, method)(f"{API}{path}"), 405, "method_not_allowed")


def test_http404_raised_inside_an_operation_is_in_the_error_shape() -> None:
    from django.http import Http404
    from django.test import RequestFactory

    from mynapoint.api.provider import api as provider_api

    request = RequestFactory().get(f"{API}/grants")
    answer = provider_api.on_exception(request, Http404("No Grant matches the given query."))
    assert answer.status_code == 404
    body = json.loads(answer.content)
    assert body["code"] == "not_found"
    assert set(body) == {"code", "message"}
    assert f"not found: GET {API}/grants" in body["message"]
    assert "Grant matches" not in body["message"]  # Django's text names a model: not for providers


def test_the_error_statuses_are_documented() -> None:
    contract = (Path(__file__).resolve().parents[2] / "docs" / "provider-api.md").read_text(encoding="utf-8")
    for status in ("400", "401", "403", "404", "405", "409", "413", "422", "500"):
        assert f"| {status} |" in contract, status
    for code in ("unknown_path", "method_not_allowed", "not_found"):
        assert f"`{code}`" in contract, code
