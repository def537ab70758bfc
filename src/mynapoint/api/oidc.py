"""Login through the Digital Agency's 認証アプリ (OpenID Connect, authorization code + PKCE S256).

``GET /auth/oidc/start`` keeps a fresh state, nonce and PKCE code_verifier in the session and sends the browser
to the provider; ``GET /auth/oidc/callback`` checks the state, exchanges the code, validates the ID token and
logs the resident in exactly like the card login of the resident API (a new session key, then the resident).
The answer is JSON ``{mykey_id}``; errors have the resident API's shape ``{code, message, message_en}``.
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from mynapoint import clock
from mynapoint.api.resident import SESSION_KEY
from mynapoint.audit.services import Actor
from mynapoint.identity.jpki.verify import LoginRejected
from mynapoint.identity.oidc.client import OidcError, RelyingParty, RelyingPartyConfig
from mynapoint.identity.services import IdentityError, login_with_oidc_subject

__all__ = ["FLOW_KEY", "oidc_callback", "oidc_start"]

FLOW_KEY = "mynapoint_oidc_flow"
FLOW_TTL = dt.timedelta(minutes=10)  # the resident has this long to finish in the app


def _error(status: int, code: str, ja: str, en: str) -> JsonResponse:
    response = JsonResponse(
        {"code": code, "message": ja, "message_en": en},
        status=status,
        json_dumps_params={"ensure_ascii": False},
    )
    response["Cache-Control"] = "no-store"
    return response


def _relying_party(request: HttpRequest) -> RelyingParty | None:
    issuer = settings.MYNAPOINT_OIDC_ISSUER
    if not issuer:
        return None
    redirect_uri = settings.MYNAPOINT_OIDC_REDIRECT_URI or request.build_absolute_uri(
        reverse("oidc_callback")
    )
    return RelyingParty(
        RelyingPartyConfig(
            issuer=issuer,
            client_id=settings.MYNAPOINT_OIDC_CLIENT_ID,
            client_secret=settings.MYNAPOINT_OIDC_CLIENT_SECRET or None,
            redirect_uri=redirect_uri,
        )
    )


def _not_configured() -> JsonResponse:
    return _error(
        503,
        "oidc_not_configured",
        "認証アプリでのログインは現在ご利用いただけません。マイナンバーカードでのログインをご利用ください。",
        "login through the 認証アプリ is not configured (MYNAPOINT_OIDC_ISSUER is empty)",
    )


def _who(request: HttpRequest) -> Actor:
    return Actor(actor="oidc", channel="self", terminal=request.headers.get("X-Terminal-Id", "")[:100])


@require_GET
def oidc_start(request: HttpRequest) -> HttpResponse:
    relying_party = _relying_party(request)
    if relying_party is None:
        return _not_configured()
    try:
        flow = relying_party.begin()
    except OidcError as exc:
        return _error(exc.status, exc.code, exc.ja, exc.en)
    request.session[FLOW_KEY] = {
        "state": flow.state,
        "nonce": flow.nonce,
        "code_verifier": flow.code_verifier,
        "started_at": clock.now().isoformat(),
    }
    return HttpResponseRedirect(flow.url)


def _flow_ok(flow: Any, state: str, now: dt.datetime) -> bool:
    if not isinstance(flow, dict) or not all(
        isinstance(flow.get(k), str) for k in ("state", "nonce", "code_verifier")
    ):
        return False
    try:
        started = dt.datetime.fromisoformat(str(flow.get("started_at")))
    except ValueError:
        return False
    fresh = started <= now < started + FLOW_TTL
    return fresh and bool(state) and hmac.compare_digest(state.encode(), str(flow["state"]).encode())


@require_GET
def oidc_callback(request: HttpRequest) -> HttpResponse:
    relying_party = _relying_party(request)
    if relying_party is None:
        return _not_configured()
    now = clock.now()
    flow = request.session.pop(FLOW_KEY, None)  # one callback per start, whatever its outcome
    if not _flow_ok(flow, request.GET.get("state", ""), now):
        return _error(
            400,
            "oidc_state_mismatch",
            "ログインの要求が確認できませんでした。もう一度最初からお試しください。",
            "the state does not match a login started in this browser (or it expired)",
        )
    if "error" in request.GET:
        return _error(
            401,
            "oidc_denied",
            "認証アプリでのログインが完了しませんでした。もう一度お試しください。",
            f"the provider answered {request.GET['error'][:50]}",
        )
    code = request.GET.get("code", "")
    if not code:
        return _error(
            400,
            "oidc_no_code",
            "ログインの応答が正しくありません。",
            "the callback carries no authorization code",
        )
    try:
        login = relying_party.finish(
            code=code,
            iss=request.GET.get("iss"),
            code_verifier=flow["code_verifier"],
            nonce=flow["nonce"],
            now=now,
        )
        resident = login_with_oidc_subject(
            issuer=login.issuer,
            sub=login.sub,
            certificate_der=login.certificate_der,
            now=now,
            who=_who(request),
        )
    except OidcError as exc:
        return _error(exc.status, exc.code, exc.ja, exc.en)
    except LoginRejected as exc:
        return _error(401, exc.code, exc.message_ja, exc.message_en)
    except IdentityError as exc:
        return _error(401, exc.code, exc.ja, exc.en)
    request.session.cycle_key()  # a new session for each login: nothing carries over on a shared terminal
    request.session[SESSION_KEY] = resident.pk
    response = JsonResponse({"mykey_id": resident.mykey_id})
    response["Cache-Control"] = "no-store"
    return response
