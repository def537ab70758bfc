"""The sandbox's minimal JSON API for the demo (``/sandbox/``) and its webhook endpoint.

| method, path | body | answer |
|---|---|---|
| ``GET /sandbox/shops`` | | ``{provider, shops: [{code, name_ja, name_en}]}`` |
| ``POST /sandbox/wallets`` | ``{service_id, security_code, holder_kana, holder_born}`` | the wallet (201; 200 if it was open) |
| ``GET /sandbox/wallets/<service_id>`` | | ``{service_id, holder_kana, yen_balance, points_balance, transactions, grants}`` |
| ``POST /sandbox/wallets/<service_id>/charge`` | ``{amount}`` | ``{transaction, reported, errors, wallet}`` |
| ``POST /sandbox/wallets/<service_id>/pay`` | ``{shop, amount, use_points}`` | as charge |
| ``POST /sandbox/webhook`` | the platform's signed ``{topic, data}`` | ``{status}``; 401 on a bad signature |
| ``POST /sandbox/sync`` | | ``{declared, pulled, acknowledged, errors}``: catch up with the platform |

Errors are ``{code, message}`` (Japanese ``/`` English). Everything answers 404 while the sandbox is not set up
(no configuration in the data folder), so a deployment that never ran the demo exposes nothing here. The
demo API has no authentication: it is a sandbox on a demo server, not a payment service.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from mynapoint import clock

# the platform's published helper for providers (the one import of mynapoint.grants the contract allows)
from mynapoint.grants.outbox import verify_signature
from mynapoint.sandbox import services
from mynapoint.sandbox.client import ProviderApiError
from mynapoint.sandbox.models import Shop

__all__ = ["charge", "pay", "shops", "sync", "wallet", "wallets", "webhook"]

log = logging.getLogger(__name__)

View = Callable[..., HttpResponse]


def _error(status: int, code: str, ja: str, en: str) -> JsonResponse:
    return JsonResponse(
        {"code": code, "message": f"{ja} / {en}"}, status=status, json_dumps_params={"ensure_ascii": False}
    )


def _json(value: Any, status: int = 200) -> JsonResponse:
    return JsonResponse(value, status=status, json_dumps_params={"ensure_ascii": False})


class _NotSetUp(Exception):  # noqa: N818 - a 404, raised when the demo has not configured the sandbox
    pass


def _setup() -> services.Setup:
    setup = services.load_setup()
    if setup is None:
        raise _NotSetUp
    return setup


def _api(view: View) -> View:
    """JSON in and out: CSRF-exempt (no cookies are used), errors as ``{code, message}``."""

    @csrf_exempt
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except _NotSetUp:
            return _error(
                404, "not_set_up", "サンドボックスは設定されていません", "the sandbox is not set up here"
            )
        except services.SandboxError as exc:
            return _error(exc.status, exc.code, exc.ja, exc.en)

    return wrapped


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise services.SandboxError(
            "malformed", "JSONではありません", "the body is not JSON", status=400
        ) from None
    if not isinstance(body, dict):
        raise services.SandboxError(
            "malformed", "JSONオブジェクトを送ります", "send a JSON object", status=400
        )
    return body


@_api
@require_http_methods(["GET"])
def shops(request: HttpRequest) -> HttpResponse:  # noqa: ARG001 - Django passes the request
    setup = _setup()
    rows = Shop.objects.order_by("code").values("code", "name_ja", "name_en")
    return _json({"provider": setup.provider_key, "shops": list(rows)})


@_api
@require_http_methods(["POST"])
def wallets(request: HttpRequest) -> HttpResponse:
    """Open a wallet and declare it to the platform as a valid account."""
    setup = _setup()
    body = _body(request)
    born = body.get("holder_born")
    try:
        holder_born = dt.date.fromisoformat(born) if born else None
    except (TypeError, ValueError):
        raise services.SandboxError(
            "bad_holder_born", "生年月日は YYYY-MM-DD です", "holder_born: YYYY-MM-DD"
        ) from None
    spec = services.WalletSpec(
        service_id=str(body.get("service_id") or ""),
        security_code=str(body.get("security_code") or ""),
        holder_kana=str(body.get("holder_kana") or ""),
        holder_born=holder_born,
    )
    opened, created = services.open_wallet(spec=spec, now=clock.now())
    with services.provider_api(setup) as api:
        report = services.sync(api=api, now=clock.now())
    return _json({**services.wallet_view(opened), "errors": report.errors}, status=201 if created else 200)


@_api
@require_http_methods(["GET"])
def wallet(request: HttpRequest, service_id: str) -> HttpResponse:  # noqa: ARG001
    _setup()
    return _json(services.wallet_view(services.get_wallet(service_id)))


def _after_money(setup: services.Setup, txid: str, service_id: str) -> HttpResponse:
    with services.provider_api(setup) as api:
        report = services.sync(api=api, now=clock.now())
    view = services.wallet_view(services.get_wallet(service_id))
    tx = next((t for t in view["transactions"] if t["txid"] == txid), None)
    return _json({"transaction": tx, "errors": report.errors, "wallet": view})


@_api
@require_http_methods(["POST"])
def charge(request: HttpRequest, service_id: str) -> HttpResponse:
    """Charge the wallet, then report the charge to the platform (``POST /transactions``)."""
    setup = _setup()
    body = _body(request)
    tx = services.charge(service_id=service_id, amount=body.get("amount", 0), now=clock.now())
    return _after_money(setup, tx.txid, service_id)


@_api
@require_http_methods(["POST"])
def pay(request: HttpRequest, service_id: str) -> HttpResponse:
    """Pay at a shop with yen and points; the yen part is reported to the platform as a purchase."""
    setup = _setup()
    body = _body(request)
    tx = services.pay(
        service_id=service_id,
        shop=str(body.get("shop") or ""),
        amount=body.get("amount", 0),
        use_points=body.get("use_points", 0),
        now=clock.now(),
    )
    return _after_money(setup, tx.txid, service_id)


@_api
@require_http_methods(["POST"])
def webhook(request: HttpRequest) -> HttpResponse:
    """The platform's push: a signed ``{topic, data}``. A grant is credited once per ``grant_id`` and then
    acknowledged (``POST /grants/ack``); when the acknowledgement fails the answer is a 503, so the platform
    delivers the webhook again, which credits nothing more and retries the acknowledgement."""
    setup = _setup()
    body = request.body
    signature = request.headers.get("X-Mynapoint-Signature", "")
    if not verify_signature(setup.webhook_secret, body, signature, now=clock.now()):
        log.warning("sandbox webhook: bad or stale signature refused")
        return _error(
            401, "bad_signature", "署名が正しくないか、古すぎます", "bad or stale X-Mynapoint-Signature"
        )
    message = _body(request)
    topic = message.get("topic")
    if topic != "grant":
        return _json({"status": "ignored", "topic": topic})
    received, created = services.receive_grant(data=message.get("data"), now=clock.now())
    with services.provider_api(setup) as api:
        try:
            services.acknowledge(api=api, grants=[received], now=clock.now())
        except ProviderApiError as exc:
            log.warning(
                "sandbox webhook: grant %s credited, acknowledgement failed: %s", received.grant_id, exc
            )
            return _error(
                503,
                "ack_failed",
                "付与は記録しましたが、付与完了の通知に失敗しました（再送してください）",
                f"grant {received.grant_id} credited, but POST /grants/ack failed ({exc}): deliver it again",
            )
    return _json(
        {
            "status": "credited" if created else "duplicate",
            "grant_id": received.grant_id,
            "acknowledged": True,
        }
    )


@_api
@require_http_methods(["POST"])
def sync(request: HttpRequest) -> HttpResponse:  # noqa: ARG001
    """Catch up with the platform (:func:`~mynapoint.sandbox.services.sync`): declare, report, pull the grants
    no webhook brought (``GET /grants`` from the stored cursor), acknowledge. Errors are in the answer."""
    setup = _setup()
    with services.provider_api(setup) as api:
        report = services.sync(api=api, now=clock.now())
    return _json(asdict(report))
