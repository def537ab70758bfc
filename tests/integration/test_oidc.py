"""Login through the 認証アプリ route (OpenID Connect, code + PKCE S256) against a local provider that signs the
resident in with her card: the same MyKey ID as the card login, and every refusal the flow depends on."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.test import Client
from joserfc import jwt
from joserfc.jwk import RSAKey
from support import NOW, PIN, card_login

from mynapoint import clock
from mynapoint.api.oidc import FLOW_KEY
from mynapoint.api.resident import SESSION_KEY
from mynapoint.identity.jpki.ca import TestCA, publish_crl
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.models import OidcSubject, Resident
from mynapoint.identity.oidc.client import OidcError, verify_id_token
from mynapoint.identity.oidc.provider import (
    CardSignInRefused,
    LocalProviderHandle,
    RegisteredClient,
    sign_in_with_card,
    start_local_provider,
)
from mynapoint.identity.trust import FolderCrlProvider, load_trust_anchors

pytestmark = pytest.mark.django_db

CLIENT_ID = "mynapoint-test"
CONFIDENTIAL_CLIENT_ID = "mynapoint-confidential"
SECRET = "s3cret-" + "x" * 30
CALLBACK = "http://testserver/auth/oidc/callback"
OP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _start(
    trust_dir: Path, wrap: Callable[[WSGIApplication], WSGIApplication] | None = None
) -> LocalProviderHandle:
    return start_local_provider(
        trust_anchors=load_trust_anchors(trust_dir),
        crls=FolderCrlProvider(trust_dir),
        clients=[
            RegisteredClient(CLIENT_ID, (CALLBACK,)),
            RegisteredClient(CONFIDENTIAL_CLIENT_ID, (CALLBACK,), client_secret=SECRET),
        ],
        clock=clock.now,
        signing_key=OP_KEY,
        wrap=wrap,
    )


def _configure(settings: Any, issuer: str, *, client_id: str = CLIENT_ID, secret: str = "") -> None:
    settings.MYNAPOINT_OIDC_ISSUER = issuer
    settings.MYNAPOINT_OIDC_CLIENT_ID = client_id
    settings.MYNAPOINT_OIDC_CLIENT_SECRET = secret
    settings.MYNAPOINT_OIDC_REDIRECT_URI = CALLBACK


@pytest.fixture
def op(trust_dir: Path, settings: Any) -> Iterator[LocalProviderHandle]:
    handle = _start(trust_dir)
    _configure(settings, handle.issuer)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def card(make_card: Callable[..., SoftwareCard]) -> SoftwareCard:
    return make_card()


def _sign_in(client: Client, card: SoftwareCard, *, edit: Callable[[str], str] = lambda url: url) -> str:
    """Start at the platform, then do in the app what the resident does: the callback URL to go back to."""
    started = client.get("/auth/oidc/start")
    assert started.status_code == 302, started.content
    back = sign_in_with_card(edit(started["Location"]), card=card, pin=PIN)
    assert back.startswith(CALLBACK + "?")
    return back


def _login(client: Client, card: SoftwareCard) -> dict[str, Any]:
    answer = client.get(_sign_in(client, card))
    assert answer.status_code == 200, answer.content
    body: dict[str, Any] = answer.json()
    return body


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {**_query(url), **changes}
    return urlunsplit(parts._replace(query=urlencode(query)))


def _assert_refused(answer: Any, status: int, code: str) -> dict[str, str]:
    assert answer.status_code == status, answer.content
    body: dict[str, str] = answer.json()
    assert body["code"] == code
    assert body["message"]
    assert body["message_en"]
    assert not body["message"].isascii()  # the resident reads Japanese first
    assert answer["Cache-Control"] == "no-store"
    return body


def _edit_flow(client: Client, **changes: str) -> None:
    session = client.session
    session[FLOW_KEY] = {**session[FLOW_KEY], **changes}
    session.save()


# ------------------------------------------------------------------------------------------ the same person


def test_an_oidc_login_logs_the_session_in(op: LocalProviderHandle, card: SoftwareCard) -> None:
    client = Client()
    body = _login(client, card)
    resident = Resident.objects.get(mykey_id=body["mykey_id"])
    assert client.session[SESSION_KEY] == resident.pk
    assert FLOW_KEY not in client.session
    me = client.get("/api/resident/v1/me")
    assert me.status_code == 200
    assert me.json()["mykey_id"] == resident.mykey_id


def test_oidc_first_then_the_card_gives_the_same_mykey_id(
    op: LocalProviderHandle, card: SoftwareCard
) -> None:
    by_oidc = _login(Client(), card)["mykey_id"]
    by_card, created = card_login(card, now=NOW + dt.timedelta(minutes=1))
    assert (by_card.mykey_id, created) == (by_oidc, False)
    assert Resident.objects.count() == 1


def test_the_card_first_then_oidc_gives_the_same_mykey_id(
    op: LocalProviderHandle, card: SoftwareCard
) -> None:
    by_card, created = card_login(card)
    assert created
    assert _login(Client(), card)["mykey_id"] == by_card.mykey_id
    assert Resident.objects.count() == 1


def test_a_second_oidc_login_reuses_the_subject(
    op: LocalProviderHandle, card: SoftwareCard, make_card: Callable[..., SoftwareCard]
) -> None:
    first = _login(Client(), card)["mykey_id"]
    subject = OidcSubject.objects.get()
    assert subject.issuer == op.issuer
    assert subject.sub.isalpha()  # pairwise and opaque: never digits, never a My Number
    second = _login(Client(), card)["mykey_id"]
    assert second == first
    again = OidcSubject.objects.get()
    assert (again.pk, again.sub, again.first_seen_at) == (subject.pk, subject.sub, subject.first_seen_at)
    other = _login(Client(), make_card())["mykey_id"]  # another person: another subject, another MyKey ID
    assert other != first
    assert OidcSubject.objects.count() == 2


def test_a_confidential_client_authenticates_at_the_token_endpoint(
    op: LocalProviderHandle, card: SoftwareCard, settings: Any
) -> None:
    _configure(settings, op.issuer, client_id=CONFIDENTIAL_CLIENT_ID, secret=SECRET)
    assert _login(Client(), card)["mykey_id"]
    _configure(settings, op.issuer, client_id=CONFIDENTIAL_CLIENT_ID, secret="wrong-" + SECRET)
    client = Client()
    _assert_refused(client.get(_sign_in(client, card)), 401, "oidc_token_refused")


# --------------------------------------------------------------------------------------------- refusals


def test_without_an_issuer_the_route_is_off(client: Client, settings: Any) -> None:
    settings.MYNAPOINT_OIDC_ISSUER = ""
    _assert_refused(client.get("/auth/oidc/start"), 503, "oidc_not_configured")


def test_a_tampered_state_is_refused(op: LocalProviderHandle, card: SoftwareCard) -> None:
    client = Client()
    back = _sign_in(client, card)
    _assert_refused(
        client.get(_with_query(back, state=secrets.token_urlsafe(32))), 400, "oidc_state_mismatch"
    )
    assert SESSION_KEY not in client.session
    # the flow is used up: the genuine callback after the attempt does not log in either
    _assert_refused(client.get(back), 400, "oidc_state_mismatch")
    assert SESSION_KEY not in client.session


def test_a_callback_in_another_browser_is_refused(op: LocalProviderHandle, card: SoftwareCard) -> None:
    back = _sign_in(Client(), card)
    other = Client()
    _assert_refused(other.get(back), 400, "oidc_state_mismatch")
    assert SESSION_KEY not in other.session


def test_a_reused_code_is_refused(op: LocalProviderHandle, card: SoftwareCard) -> None:
    client = Client()
    back = _sign_in(client, card)
    flow = dict(client.session[FLOW_KEY])
    assert client.get(back).status_code == 200
    session = client.session  # replay the callback with its flow: the provider has spent the code
    session[FLOW_KEY] = flow
    session.save()
    refused = _assert_refused(client.get(back), 401, "oidc_token_refused")
    assert "already used" in refused["message_en"]


def test_a_wrong_code_verifier_is_refused(op: LocalProviderHandle, card: SoftwareCard) -> None:
    client = Client()
    back = _sign_in(client, card)
    _edit_flow(client, code_verifier=secrets.token_urlsafe(32))
    refused = _assert_refused(client.get(back), 401, "oidc_token_refused")
    assert "code_verifier does not match" in refused["message_en"]
    assert SESSION_KEY not in client.session


def test_a_wrong_nonce_is_refused(op: LocalProviderHandle, card: SoftwareCard) -> None:
    client = Client()
    back = _sign_in(client, card)
    _edit_flow(client, nonce=secrets.token_urlsafe(32))
    refused = _assert_refused(client.get(back), 401, "oidc_id_token_invalid")
    assert "nonce" in refused["message_en"]
    assert SESSION_KEY not in client.session
    assert not OidcSubject.objects.exists()


def test_an_expired_code_is_refused(op: LocalProviderHandle, card: SoftwareCard) -> None:
    client = Client()
    back = _sign_in(client, card)
    clock.start_at(clock.now() + dt.timedelta(minutes=2))  # codes live for one minute
    refused = _assert_refused(client.get(back), 401, "oidc_token_refused")
    assert "expired" in refused["message_en"]


def test_an_authorization_response_from_another_issuer_is_refused(
    op: LocalProviderHandle, card: SoftwareCard
) -> None:
    client = Client()
    back = _sign_in(client, card)
    assert _query(back)["iss"] == op.issuer
    _assert_refused(client.get(_with_query(back, iss="http://127.0.0.1:1")), 401, "oidc_issuer_mismatch")
    assert SESSION_KEY not in client.session


def test_a_plain_pkce_request_comes_back_as_an_error(op: LocalProviderHandle, card: SoftwareCard) -> None:
    client = Client()
    back = _sign_in(client, card, edit=lambda url: _with_query(url, code_challenge_method="plain"))
    assert _query(back)["error"] == "invalid_request"
    _assert_refused(client.get(back), 401, "oidc_denied")
    assert SESSION_KEY not in client.session


def _forging(*, kid: str | None) -> Callable[[WSGIApplication], WSGIApplication]:
    """A tampered token endpoint: the ID token's claims re-signed with another RSA key."""
    rogue = RSAKey.generate_key(2048, private=True)

    def wrap(app: WSGIApplication) -> WSGIApplication:
        def forged(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            captured: list[Any] = []

            def keep(
                status: str, headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Callable[[bytes], object]:
                captured[:] = [status, headers]
                return lambda data: None

            body = b"".join(app(environ, keep))
            status, headers = captured
            if environ["PATH_INFO"] == "/token" and status.startswith("200"):
                token = json.loads(body)
                header_b64, payload_b64, _ = token["id_token"].split(".")
                claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
                header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
                new_header = {"alg": "RS256", **({"kid": kid or header["kid"]} if kid != "" else {})}
                token["id_token"] = jwt.encode(new_header, claims, rogue)
                body = json.dumps(token).encode()
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(len(body))))
            start_response(status, headers)
            return [body]

        return forged

    return wrap


@pytest.mark.parametrize("kid", [None, "", "rogue-key"], ids=["same-kid", "no-kid", "other-kid"])
def test_an_id_token_signed_by_another_key_is_refused(
    trust_dir: Path, settings: Any, card: SoftwareCard, kid: str | None
) -> None:
    with _start(trust_dir, wrap=_forging(kid=kid)) as handle:
        _configure(settings, handle.issuer)
        client = Client()
        refused = _assert_refused(client.get(_sign_in(client, card)), 401, "oidc_id_token_invalid")
    assert "signature" in refused["message_en"]
    assert SESSION_KEY not in client.session
    assert not OidcSubject.objects.exists()
    assert not Resident.objects.exists()


def test_a_revoked_card_cannot_sign_in_at_the_provider(
    op: LocalProviderHandle, card: SoftwareCard, test_ca: TestCA, trust_dir: Path
) -> None:
    serial = x509.load_der_x509_certificate(card.certificate_der).serial_number
    publish_crl(ca=test_ca, directory=trust_dir, now=NOW - dt.timedelta(hours=1), revoked=[serial], crl_number=2,
                valid_for=dt.timedelta(days=3650))  # fmt: skip
    try:
        client = Client()
        with pytest.raises(CardSignInRefused) as refused:
            _sign_in(client, card)
        assert (refused.value.status, refused.value.code) == (401, "revoked")
        assert "失効" in refused.value.message_ja
        assert SESSION_KEY not in client.session
        assert not Resident.objects.exists()
    finally:
        publish_crl(ca=test_ca, directory=trust_dir, now=NOW - dt.timedelta(hours=1), crl_number=3,
                    valid_for=dt.timedelta(days=3650))  # fmt: skip


# ------------------------------------------------------------------------------- the provider, directly


def _s256(verifier: str) -> str:
    import hashlib

    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _authorize_url(op: LocalProviderHandle, **overrides: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": CALLBACK,
        "scope": "openid",
        "state": "st",
        "nonce": "nn",
        "code_challenge": _s256("v" * 43),
        "code_challenge_method": "S256",
        **overrides,
    }
    return f"{op.issuer}/authorize?" + urlencode({k: v for k, v in params.items() if v is not None})


def _token(op: LocalProviderHandle, **form: str) -> requests.Response:
    data = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK, **form}
    with requests.Session() as http:
        return http.post(f"{op.issuer}/token", data=data, timeout=10)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge_method": "plain", "code_challenge": "v" * 43}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),  # absent means plain
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
def test_the_provider_refuses_requests_without_s256_pkce(
    op: LocalProviderHandle, overrides: dict[str, str | None], error: str
) -> None:
    with requests.Session() as http:
        answer = http.get(_authorize_url(op, **overrides), allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    back = _query(answer.headers["Location"])
    assert (back["error"], back["state"], back["iss"]) == (error, "st", op.issuer)
    assert "code" not in back


def test_the_provider_never_redirects_to_an_unregistered_uri(op: LocalProviderHandle) -> None:
    with requests.Session() as http:
        answer = http.get(
            _authorize_url(op, redirect_uri="http://evil.invalid/cb"), allow_redirects=False, timeout=10
        )
    assert answer.status_code == 400
    assert "Location" not in answer.headers


def test_the_provider_wants_the_code_verifier_and_spends_the_code(
    op: LocalProviderHandle, card: SoftwareCard
) -> None:
    code = _query(sign_in_with_card(_authorize_url(op), card=card, pin=PIN))["code"]
    missing = _token(op, code=code)
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_grant")
    assert missing.headers["Cache-Control"] == "no-store"
    late = _token(op, code=code, code_verifier="v" * 43)  # the right verifier, but the code is spent
    assert (late.status_code, late.json()["error"]) == (400, "invalid_grant")

    code = _query(sign_in_with_card(_authorize_url(op), card=card, pin=PIN))["code"]
    good = _token(op, code=code, code_verifier="v" * 43)
    assert good.status_code == 200
    assert good.json()["token_type"] == "Bearer"  # noqa: S105 - a token type, not a password
    replay = _token(op, code=code, code_verifier="v" * 43)
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")


def test_the_provider_publishes_its_metadata(op: LocalProviderHandle) -> None:
    with requests.Session() as http:
        metadata = http.get(f"{op.issuer}/.well-known/openid-configuration", timeout=10).json()
        jwks = http.get(metadata["jwks_uri"], timeout=10).json()
    assert metadata["issuer"] == op.issuer
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert [key["kty"] for key in jwks["keys"]] == ["RSA"]
    assert "d" not in jwks["keys"][0]  # no private part


# ---------------------------------------------------------------------------- ID-token claims, one by one


def _jwks(op: LocalProviderHandle) -> dict[str, Any]:
    with requests.Session() as http:
        body: dict[str, Any] = http.get(f"{op.issuer}/jwks", timeout=10).json()
    return body


def _mint(op: LocalProviderHandle, **changes: Any) -> str:
    pem = OP_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = RSAKey.import_key(pem)
    issued = int(clock.now().timestamp())
    claims = {
        "iss": op.issuer,
        "sub": "abc",
        "aud": CLIENT_ID,
        "iat": issued,
        "exp": issued + 300,
        "nonce": "nn",
    }
    claims.update(changes)
    return jwt.encode(
        {"alg": "RS256", "kid": _jwks(op)["keys"][0]["kid"]},
        {k: v for k, v in claims.items() if v is not None},
        key,
    )


def _verify(op: LocalProviderHandle, token: str) -> Any:
    return verify_id_token(
        token, jwks=_jwks(op), issuer=op.issuer, client_id=CLIENT_ID, nonce="nn", now=clock.now()
    )


def test_a_well_formed_id_token_passes(op: LocalProviderHandle) -> None:
    login = _verify(op, _mint(op))
    assert (login.issuer, login.sub, login.certificate_der) == (op.issuer, "abc", None)


@pytest.mark.parametrize(
    "changes",
    [
        {"iss": "http://127.0.0.1:1"},
        {"aud": "someone-else"},
        {"exp": int(NOW.timestamp()) - 3600},
        {"iat": int(NOW.timestamp()) + 3600},
        {"nonce": "other"},
        {"nonce": None},
        {"sub": None},
        {"exp": None},
        {"jpki_certificate": "not base64!"},
    ],
    ids=["iss", "aud", "expired", "future-iat", "nonce", "no-nonce", "no-sub", "no-exp", "bad-certificate"],
)
def test_an_id_token_with_a_wrong_claim_is_refused(op: LocalProviderHandle, changes: dict[str, Any]) -> None:
    with pytest.raises(OidcError) as refused:
        _verify(op, _mint(op, **changes))
    assert refused.value.code == "oidc_id_token_invalid"
    assert refused.value.status == 401
