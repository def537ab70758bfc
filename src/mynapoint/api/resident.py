"""The resident HTTP API (``/api/resident/v1/``): card login, profile, point applications, status.

Operations parse input, call one service or selector, and answer. Errors have one shape, ``{code, message,
message_en}``; Japanese first. The session is the resident's and ends itself after 30 minutes.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from django.http import HttpRequest
from ninja import NinjaAPI, Schema, Status
from ninja.errors import ValidationError
from ninja.security import APIKeyCookie

from mynapoint import clock
from mynapoint.applications.models import PointApplication
from mynapoint.applications.selectors import resident_status
from mynapoint.applications.services import ApplicationError, apply_for_measure
from mynapoint.audit.services import Actor
from mynapoint.identity.jpki.verify import LoginRejected
from mynapoint.identity.models import Resident
from mynapoint.identity.mynumber import MyNumberRefused
from mynapoint.identity.services import IdentityError, declare_profile, issue_login_challenge, login_with_jpki
from mynapoint.rules.model import MEASURES

SESSION_KEY = "mynapoint_resident"

api = NinjaAPI(
    title="mynapoint resident API",
    version="1",
    urls_namespace="resident_api",
    description="マイナポイント 利用者向けAPI: カードでのログイン、申込、状況の確認",
)


class Error(Schema):
    code: str
    message: str
    message_en: str


class ResidentSession(APIKeyCookie):
    param_name = "sessionid"

    def authenticate(self, request: HttpRequest, key: str | None) -> Resident | None:
        resident_id = request.session.get(SESSION_KEY)
        if resident_id is None:
            return None
        return Resident.objects.select_related("legal_representative").filter(pk=resident_id).first()


session_auth = ResidentSession(csrf=False)


def _resident(request: HttpRequest) -> Resident:
    """The logged-in resident (set by :class:`ResidentSession`)."""
    resident = getattr(request, "auth", None)
    assert isinstance(resident, Resident)  # noqa: S101 - the operation requires session_auth
    return resident


def _who(request: HttpRequest, actor: str) -> Actor:
    terminal = request.headers.get("X-Terminal-Id", "")[:100]
    channel = request.headers.get("X-Channel", "self")
    return Actor(
        actor=actor, channel=channel if channel in ("self", "desk", "spot") else "self", terminal=terminal
    )


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise IdentityError(
            "bad_request", f"{what} の形式が正しくありません", f"{what} is not valid base64"
        ) from None


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> Any:
    where = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body')}: {e.get('msg', '')}" for e in exc.errors
    )
    return api.create_response(
        request,
        {
            "code": "invalid_input",
            "message": f"入力内容に誤りがあります（{where}）",
            "message_en": f"invalid input: {where}",
        },
        status=422,
    )


@api.exception_handler(ApplicationError)
def _application_error(request: HttpRequest, exc: ApplicationError) -> Any:
    return api.create_response(
        request, {"code": exc.code, "message": exc.ja, "message_en": exc.en}, status=422
    )


@api.exception_handler(IdentityError)
def _identity_error(request: HttpRequest, exc: IdentityError) -> Any:
    return api.create_response(
        request, {"code": exc.code, "message": exc.ja, "message_en": exc.en}, status=400
    )


@api.exception_handler(MyNumberRefused)
def _my_number(request: HttpRequest, exc: MyNumberRefused) -> Any:
    ja, en = str(exc).split(" / ", 1)
    return api.create_response(
        request, {"code": "my_number_refused", "message": ja, "message_en": en}, status=422
    )


class Challenge(Schema):
    nonce: str
    expires_at: dt.datetime


@api.post("/login/challenge", response={200: Challenge}, summary="ログイン用のチャレンジ（使い捨て）")
def login_challenge(request: HttpRequest) -> Any:
    nonce, expires = issue_login_challenge(now=clock.now())
    return {"nonce": base64.b64encode(nonce).decode(), "expires_at": expires}


class JpkiLogin(Schema):
    certificate: str  # base64 DER of the user-authentication certificate
    signature: str  # base64 signature over the nonce
    nonce: str


class LoggedIn(Schema):
    mykey_id: str
    first_login: bool
    message: str


@api.post(
    "/login/jpki", response={200: LoggedIn, 400: Error, 401: Error}, summary="マイナンバーカードでログイン"
)
def login_jpki(request: HttpRequest, body: JpkiLogin) -> Any:
    try:
        resident, created = login_with_jpki(
            certificate_der=_b64(body.certificate, "certificate"),
            signature=_b64(body.signature, "signature"),
            nonce=_b64(body.nonce, "nonce"),
            now=clock.now(),
            who=_who(request, "login"),
        )
    except LoginRejected as exc:
        return Status(401, {"code": exc.code, "message": exc.message_ja, "message_en": exc.message_en})
    request.session.cycle_key()  # a new session for each login: nothing carries over on a shared terminal
    request.session[SESSION_KEY] = resident.pk
    message = "マイキーIDを発行しました" if created else "ログインしました"
    return {"mykey_id": resident.mykey_id, "first_login": created, "message": message}


@api.post("/logout", response={204: None}, auth=session_auth, summary="ログアウト")
def logout(request: HttpRequest) -> Any:
    request.session.flush()
    return Status(204, None)


class Profile(Schema):
    born: dt.date | None = None
    kana: str | None = None


class MeasureState(Schema):
    measure: str
    earned: int
    status: str
    explanation: str


class Me(Schema):
    mykey_id: str
    born: dt.date | None
    kana: str
    as_of: dt.date
    total: int
    measures: list[MeasureState]


def _me(resident: Resident) -> dict[str, Any]:
    as_of = clock.today_jst()
    result = resident_status(resident, as_of=as_of)
    return {
        "mykey_id": resident.mykey_id,
        "born": resident.born,
        "kana": resident.kana,
        "as_of": as_of,
        "total": result.total,
        "measures": [
            {
                "measure": o.measure,
                "earned": o.earned,
                "status": o.status,
                "explanation": o.explanation.text_ja(),
            }
            for o in result.outcomes()
        ],
    }


@api.get("/me", response={200: Me}, auth=session_auth, summary="自分の状況")
def me(request: HttpRequest) -> Any:
    return _me(_resident(request))


@api.put(
    "/me/profile",
    response={200: Me, 400: Error, 422: Error},
    auth=session_auth,
    summary="生年月日と氏名カナの登録",
)
def put_profile(request: HttpRequest, body: Profile) -> Any:
    resident = declare_profile(
        resident=_resident(request),
        born=body.born,
        kana=body.kana,
        now=clock.now(),
        who=_who(request, _resident(request).mykey_id),
    )
    return _me(resident)


class ApplicationIn(Schema):
    measure: str
    provider: str
    service_id: str
    security_codes: list[str]
    mode: str | None = None
    # a legal representative applying for a minor: the minor's MyKey ID, and whether the minor is present
    on_behalf_of: str | None = None
    ward_present: bool = False


class ApplicationOut(Schema):
    id: int
    measure: str
    account: str
    accepted: bool
    code: str | None
    message: str
    message_en: str
    explanation: str


@api.post(
    "/applications",
    response={200: ApplicationOut, 422: Error},
    auth=session_auth,
    summary="ポイントの申込（決済サービスとの紐づけ）",
)
def post_application(request: HttpRequest, body: ApplicationIn) -> Any:
    operator = _resident(request)
    if body.measure not in MEASURES:
        raise ApplicationError(
            "unknown_measure", "施策の指定が正しくありません", f"unknown measure {body.measure!r}"
        )
    applicant, present = operator, [operator]
    if body.on_behalf_of:
        ward = Resident.objects.filter(mykey_id=body.on_behalf_of, legal_representative=operator).first()
        if ward is None:
            raise ApplicationError(
                "not_representative",
                "法定代理人として登録されている方のみ代理で申し込めます",
                "you are not registered as this person's legal representative",
                field="on_behalf_of",
            )
        applicant = ward
        present = [operator, ward] if body.ward_present else [operator]
    result = apply_for_measure(
        resident=applicant,
        measure=body.measure,
        provider_key=body.provider,
        service_id=body.service_id,
        security_codes=body.security_codes,
        mode=body.mode,
        operated_by=operator,
        present=present,
        now=clock.now(),
        who=_who(request, operator.mykey_id),
    )
    app = result.application
    return {
        "id": app.pk,
        "measure": app.measure,
        "account": f"{body.provider}/{body.service_id}",
        "accepted": result.accepted,
        "code": result.code,
        "message": result.message_ja,
        "message_en": result.message_en,
        "explanation": app.explanation_ja,
    }


@api.get("/applications", response={200: list[ApplicationOut]}, auth=session_auth, summary="申込の一覧")
def list_applications(request: HttpRequest) -> Any:
    resident = _resident(request)
    return [
        {
            "id": a.pk,
            "measure": a.measure,
            "account": f"{a.account.provider.key}/{a.account.service_id}",
            "accepted": a.status == "accepted",
            "code": a.rejection_code or None,
            "message": a.explanation_ja.splitlines()[0],
            "message_en": a.explanation_en.splitlines()[0],
            "explanation": a.explanation_ja,
        }
        for a in PointApplication.objects.select_related("account__provider").filter(resident=resident)
    ]
