"""A small, real OpenID Provider that signs residents in with their マイナンバーカード (tests and the demo).

It stands in for the Digital Agency's 認証アプリ, which lies outside our system: a phone app reads the card over
NFC, the resident enters the user-authentication PIN, and the app answers the provider's challenge with the
card's signature. Here the same exchange is plain HTTP, so that a test or the demo can drive it with a
:class:`~mynapoint.identity.jpki.card.SoftwareCard` through :func:`sign_in_with_card`.

It is a standalone WSGI application (no Django), served on the loopback interface by
:func:`start_local_provider`:

* ``GET /.well-known/openid-configuration`` — discovery metadata;
* ``GET /jwks`` — the public key that signs ID tokens (RS256);
* ``GET /authorize`` — an authorization request (``response_type=code``, ``scope`` with ``openid``, PKCE
  ``S256`` required; ``plain`` or no challenge is refused). The answer is the card challenge: a transaction
  id and a fresh single-use nonce for the card to sign;
* ``POST /authorize`` — the card's answer (``transaction``, ``certificate``, ``signature``, base64). The
  provider checks it with a :class:`~mynapoint.identity.jpki.verify.JpkiVerifier` (chain to the trust anchors,
  validity, signature over its nonce, CRL) and redirects back with a single-use code valid for one minute;
  ``cancel=1`` instead redirects back with ``error=access_denied``;
* ``POST /token`` — code + ``code_verifier`` for an ID token with ``iss``, ``sub``, ``aud``, ``nonce``,
  ``iat``, ``exp`` and the verified certificate (claim :data:`~mynapoint.identity.oidc.CERTIFICATE_CLAIM`).

``sub`` is pairwise: an HMAC, under a secret of the provider, of the client's sector (the redirect URI's host)
and the certificate's issuer and serial. It is stable for a certificate holder at one client, tells nothing
about the card, and is written in letters only, so it can never look like a My Number. Time is an argument:
the provider asks the ``clock`` it is given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit, urlunsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from mynapoint.identity.jpki.client import JpkiClient, Transport
from mynapoint.identity.jpki.verify import (
    CrlProvider,
    InMemoryNonceStore,
    JpkiVerifier,
    LoginRejected,
    VerifiedIdentity,
)
from mynapoint.identity.oidc import CERTIFICATE_CLAIM

__all__ = [
    "CardSignInRefused",
    "LocalProvider",
    "LocalProviderHandle",
    "RegisteredClient",
    "sign_in_with_card",
    "start_local_provider",
]

Clock = Callable[[], datetime]

CODE_TTL: Final = timedelta(seconds=60)
CHALLENGE_TTL: Final = timedelta(minutes=5)
ID_TOKEN_TTL: Final = timedelta(minutes=5)
_MAX_BODY: Final = 64 * 1024
_PKCE_VALUE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1 (verifier) and §4.2 (S256 challenge)
_SUB_ALPHABET: Final = string.ascii_letters  # letters only: a subject never holds a run of digits
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_NO_STORE: Final = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]


@dataclass(frozen=True)
class RegisteredClient:
    """A relying party the provider knows. ``client_secret`` ``None``: a public client (PKCE only)."""

    client_id: str
    redirect_uris: tuple[str, ...]
    client_secret: str | None = None


@dataclass(frozen=True)
class _Transaction:
    """An authorization request waiting for the card's answer."""

    client_id: str
    redirect_uri: str
    state: str | None
    nonce: str | None
    code_challenge: str
    challenge: bytes
    expires_at: datetime


@dataclass(frozen=True)
class _Grant:
    """What a code stands for until it is redeemed (once)."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    sub: str
    certificate_der: bytes
    auth_time: datetime
    expires_at: datetime


@dataclass(frozen=True)
class _Reply:
    status: str
    headers: list[tuple[str, str]]
    body: bytes = b""


class _TokenError(Exception):
    def __init__(self, error: str, description: str, *, status: str = "400 Bad Request") -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status


def _json(status: str, payload: Mapping[str, Any], *, extra: Sequence[tuple[str, str]] = ()) -> _Reply:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return _Reply(status, [("Content-Type", "application/json; charset=utf-8"), *extra], body)


def _redirect(uri: str, params: Mapping[str, str | None]) -> _Reply:
    parts = urlsplit(uri)
    query = urlencode([(k, v) for k, v in params.items() if v is not None])
    target = urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))
    return _Reply("302 Found", [("Location", target), *_NO_STORE])


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _letters(digest: bytes) -> str:
    number, out = int.from_bytes(digest, "big"), []
    base = len(_SUB_ALPHABET)
    for _ in range(44):  # 52**44 > 2**250: (almost) the whole HMAC
        number, rest = divmod(number, base)
        out.append(_SUB_ALPHABET[rest])
    return "".join(out)


def _single(params: Mapping[str, list[str]]) -> dict[str, str] | None:
    """The parameters as single values, or ``None`` when one was sent twice (RFC 6749 §3.1)."""
    if any(len(values) != 1 for values in params.values()):
        return None
    return {key: values[0] for key, values in params.items()}


def _read_form(environ: WSGIEnvironment) -> dict[str, str] | None:
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or "0")
    except ValueError:
        return None
    if not 0 <= length <= _MAX_BODY:
        return None
    raw = environ["wsgi.input"].read(length).decode("utf-8", errors="replace")
    return _single(parse_qs(raw, keep_blank_values=True))


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


class LocalProvider:
    """The OpenID Provider as a WSGI application. Thread-safe."""

    def __init__(
        self,
        *,
        issuer: str,
        trust_anchors: Sequence[x509.Certificate],
        crls: Iterable[x509.CertificateRevocationList] | CrlProvider,
        clients: Iterable[RegisteredClient],
        subject_secret: bytes,
        clock: Clock,
        signing_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        if len(subject_secret) < 32:
            raise ValueError("the subject secret needs at least 256 bits")
        self.issuer = issuer.rstrip("/")
        self._clients = {client.client_id: client for client in clients}
        self._subject_secret = subject_secret
        self._clock = clock
        self._challenges = InMemoryNonceStore(ttl=CHALLENGE_TTL)
        self._verifier = JpkiVerifier(trust_anchors, crls, nonce_store=self._challenges)
        private = signing_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._key = RSAKey.import_key(pem, parameters={"use": "sig", "alg": "RS256"})
        self._key.ensure_kid()
        self._transactions: dict[str, _Transaction] = {}
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ WSGI
    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        reply = self._route(environ)
        start_response(reply.status, [*reply.headers, ("Content-Length", str(len(reply.body)))])
        return [reply.body]

    def _route(self, environ: WSGIEnvironment) -> _Reply:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        routes: dict[tuple[str, str], Callable[[WSGIEnvironment], _Reply]] = {
            ("GET", "/.well-known/openid-configuration"): self._discovery,
            ("GET", "/jwks"): self._jwks,
            ("GET", "/authorize"): self._authorize,
            ("POST", "/authorize"): self._card_answer,
            ("POST", "/token"): self._token,
        }
        handler = routes.get((method, path))
        if handler is not None:
            return handler(environ)
        if any(route_path == path for _, route_path in routes):
            return _json("405 Method Not Allowed", {"error": "method_not_allowed"})
        return _json("404 Not Found", {"error": "not_found"})

    # ------------------------------------------------------------------------------------------- metadata
    def _discovery(self, _environ: WSGIEnvironment) -> _Reply:
        return _json(
            "200 OK",
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": [
                    "none",
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "claims_supported": [
                    "iss",
                    "sub",
                    "aud",
                    "exp",
                    "iat",
                    "auth_time",
                    "nonce",
                    "amr",
                    CERTIFICATE_CLAIM,
                ],
                "authorization_response_iss_parameter_supported": True,
            },
        )

    def _jwks(self, _environ: WSGIEnvironment) -> _Reply:
        return _json("200 OK", {"keys": [self._key.as_dict(private=False)]})

    # ---------------------------------------------------------------------------------------- authorization
    def _authorize(self, environ: WSGIEnvironment) -> _Reply:
        params = _single(parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        if params is None:
            return _json(
                "400 Bad Request", {"error": "invalid_request", "error_description": "a repeated parameter"}
            )
        client = self._clients.get(params.get("client_id", ""))
        redirect_uri = params.get("redirect_uri", "")
        # An unknown client or redirect URI is never redirected to (RFC 6749 §4.1.2.1).
        if client is None:
            return _json(
                "400 Bad Request", {"error": "invalid_request", "error_description": "unknown client_id"}
            )
        if redirect_uri not in client.redirect_uris:
            return _json(
                "400 Bad Request",
                {"error": "invalid_request", "error_description": "redirect_uri is not registered"},
            )
        state = params.get("state")

        def refuse(error: str, description: str) -> _Reply:
            return _redirect(
                redirect_uri,
                {"error": error, "error_description": description, "state": state, "iss": self.issuer},
            )

        if params.get("response_type") != "code":
            return refuse("unsupported_response_type", "only response_type=code is supported")
        if "openid" not in params.get("scope", "").split():
            return refuse("invalid_scope", "the openid scope is required")
        challenge = params.get("code_challenge")
        if not challenge:
            return refuse(
                "invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256"
            )
        if params.get("code_challenge_method") != "S256":  # absent means plain (RFC 7636 §4.3): refused too
            return refuse("invalid_request", "only code_challenge_method=S256 is supported")
        if len(challenge) != 43 or not _PKCE_VALUE.fullmatch(challenge):
            return refuse("invalid_request", "code_challenge is not a base64url SHA-256 value")
        now = self._clock()
        nonce = self._challenges.issue(now=now)
        transaction_id = secrets.token_urlsafe(32)
        expires_at = now + CHALLENGE_TTL
        with self._lock:
            self._purge(now)
            self._transactions[transaction_id] = _Transaction(
                client_id=client.client_id,
                redirect_uri=redirect_uri,
                state=state,
                nonce=params.get("nonce"),
                code_challenge=challenge,
                challenge=nonce,
                expires_at=expires_at,
            )
        return _json(
            "200 OK",
            {
                "transaction": transaction_id,
                "challenge": base64.b64encode(nonce).decode("ascii"),
                "expires_at": expires_at.isoformat(),
                "message": "マイナンバーカードを読み取り、利用者証明用電子証明書の暗証番号（数字4桁）を入力してください",
                "message_en": "read the card and enter the 4-digit user-authentication PIN",
            },
            extra=_NO_STORE,
        )

    def _card_answer(self, environ: WSGIEnvironment) -> _Reply:
        form = _read_form(environ)
        if form is None:
            return _json(
                "400 Bad Request", {"error": "invalid_request", "error_description": "a form is expected"}
            )
        now = self._clock()
        with self._lock:
            transaction = self._transactions.pop(
                form.get("transaction", ""), None
            )  # one answer per challenge
        if transaction is None or transaction.expires_at <= now:
            return _json(
                "400 Bad Request",
                {
                    "error": "invalid_request",
                    "code": "transaction_unknown",
                    "message": "このログイン要求は無効か、有効時間が過ぎています。もう一度最初からお試しください。",
                    "message_en": "the sign-in request is unknown, used or expired",
                },
            )
        back = {"state": transaction.state, "iss": self.issuer}
        if form.get("cancel") == "1":
            return _redirect(
                transaction.redirect_uri,
                {"error": "access_denied", "error_description": "the resident cancelled", **back},
            )
        certificate_der = _b64(form.get("certificate", ""))
        signature = _b64(form.get("signature", ""))
        if certificate_der is None or signature is None:
            return _json(
                "400 Bad Request",
                {"error": "invalid_request", "error_description": "certificate and signature are base64"},
            )
        try:
            identity = self._verifier.verify_login(
                certificate_der=certificate_der, signature=signature, nonce=transaction.challenge, now=now
            )
        except LoginRejected as exc:
            # Told to the resident in the app; the relying party hears nothing until she tries again or cancels.
            return _json(
                "401 Unauthorized",
                {
                    "error": "access_denied",
                    "code": exc.code,
                    "message": exc.message_ja,
                    "message_en": exc.message_en,
                },
            )
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._grants[code] = _Grant(
                client_id=transaction.client_id,
                redirect_uri=transaction.redirect_uri,
                code_challenge=transaction.code_challenge,
                nonce=transaction.nonce,
                sub=self._subject(redirect_uri=transaction.redirect_uri, identity=identity),
                certificate_der=certificate_der,
                auth_time=now,
                expires_at=now + CODE_TTL,
            )
        return _redirect(transaction.redirect_uri, {"code": code, **back})

    def _subject(self, *, redirect_uri: str, identity: VerifiedIdentity) -> str:
        sector = urlsplit(redirect_uri).hostname or ""
        message = "\n".join((sector, identity.issuer, identity.serial_hex)).encode("utf-8")
        return _letters(hmac.new(self._subject_secret, message, hashlib.sha256).digest())

    def _purge(self, now: datetime) -> None:
        for key in [k for k, t in self._transactions.items() if t.expires_at <= now]:
            del self._transactions[key]
        for key in [k for k, g in self._grants.items() if g.expires_at <= now]:
            del self._grants[key]

    # ------------------------------------------------------------------------------------------------ token
    def _token(self, environ: WSGIEnvironment) -> _Reply:
        try:
            return _json("200 OK", self._exchange(environ), extra=_NO_STORE)
        except _TokenError as exc:
            extra = [("WWW-Authenticate", 'Basic realm="token"')] if exc.status.startswith("401") else []
            return _json(
                exc.status,
                {"error": exc.error, "error_description": exc.description},
                extra=[*extra, *_NO_STORE],
            )

    def _authenticate_client(self, environ: WSGIEnvironment, form: Mapping[str, str]) -> RegisteredClient:
        header = environ.get("HTTP_AUTHORIZATION", "")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if header.lower().startswith("basic "):
            decoded = _b64(header[6:].strip())
            if decoded is None or b":" not in decoded:
                raise _TokenError("invalid_client", "malformed Basic credentials", status="401 Unauthorized")
            raw_id, _, raw_secret = decoded.decode("utf-8", errors="replace").partition(":")
            if client_id is not None and client_id != unquote_plus(raw_id):
                raise _TokenError("invalid_request", "two different client_id values")
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        client = self._clients.get(client_id or "")
        if client is None:
            raise _TokenError("invalid_client", "unknown client", status="401 Unauthorized")
        if client.client_secret is not None and not (
            secret is not None
            and hmac.compare_digest(secret.encode("utf-8"), client.client_secret.encode("utf-8"))
        ):
            raise _TokenError("invalid_client", "client authentication failed", status="401 Unauthorized")
        return client

    def _exchange(self, environ: WSGIEnvironment) -> dict[str, Any]:
        form = _read_form(environ)
        if form is None:
            raise _TokenError("invalid_request", "a form with each parameter once is expected")
        client = self._authenticate_client(environ, form)
        if form.get("grant_type") != "authorization_code":
            raise _TokenError("unsupported_grant_type", "only authorization_code is supported")
        now = self._clock()
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)  # single use: gone at the first try
        if grant is None or grant.expires_at <= now:
            raise _TokenError("invalid_grant", "the code is unknown, already used or expired")
        if grant.client_id != client.client_id:
            raise _TokenError("invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise _TokenError("invalid_grant", "redirect_uri does not match the authorization request")
        verifier = form.get("code_verifier")
        if not verifier:
            raise _TokenError("invalid_grant", "code_verifier is required (PKCE)")
        if not _PKCE_VALUE.fullmatch(verifier) or not hmac.compare_digest(
            _s256(verifier).encode("ascii"), grant.code_challenge.encode("ascii")
        ):
            raise _TokenError("invalid_grant", "code_verifier does not match the code_challenge")
        access_token = secrets.token_urlsafe(32)
        return {
            "access_token": access_token,  # no resource server here: the token opens nothing
            "token_type": "Bearer",
            "expires_in": int(ID_TOKEN_TTL.total_seconds()),
            "scope": "openid",
            "id_token": self._id_token(grant, client_id=client.client_id, access_token=access_token, now=now),
        }

    def _id_token(self, grant: _Grant, *, client_id: str, access_token: str, now: datetime) -> str:
        issued = int(now.timestamp())
        half = hashlib.sha256(access_token.encode("ascii")).digest()[:16]
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": grant.sub,
            "aud": client_id,
            "azp": client_id,
            "iat": issued,
            "exp": issued + int(ID_TOKEN_TTL.total_seconds()),
            "auth_time": int(grant.auth_time.timestamp()),
            "amr": ["hwk", "pin"],  # RFC 8176: a hardware-held key, unlocked with a PIN
            "at_hash": base64.urlsafe_b64encode(half).rstrip(b"=").decode("ascii"),
            CERTIFICATE_CLAIM: base64.b64encode(grant.certificate_der).decode("ascii"),
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": self._key.kid}, claims, self._key)


# ---------------------------------------------------------------------------------------------- serving
class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


def _not_ready(_environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


@dataclass
class LocalProviderHandle:
    """A running local provider: its issuer URL, the provider, and :meth:`stop`."""

    issuer: str
    provider: LocalProvider
    _server: WSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalProviderHandle:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_local_provider(
    *,
    trust_anchors: Sequence[x509.Certificate],
    crls: Iterable[x509.CertificateRevocationList] | CrlProvider,
    clients: Iterable[RegisteredClient],
    clock: Clock,
    subject_secret: bytes | None = None,
    signing_key: rsa.RSAPrivateKey | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    wrap: Callable[[WSGIApplication], WSGIApplication] | None = None,
) -> LocalProviderHandle:
    """Serve a :class:`LocalProvider` on ``host:port`` (port 0: any free port) in a daemon thread.

    Loopback only. Without ``subject_secret`` a random one is drawn: subjects then stay the same for the life
    of this provider only. ``wrap`` puts a WSGI middleware in front of the provider (tests use it to play a
    tampered token endpoint).
    """
    if host not in _LOOPBACK:
        raise ValueError("the local provider listens on the loopback interface only")
    server = make_server(host, port, _not_ready, handler_class=_QuietHandler)
    issuer = f"http://{host}:{server.server_port}"
    provider = LocalProvider(
        issuer=issuer,
        trust_anchors=trust_anchors,
        crls=crls,
        clients=clients,
        subject_secret=subject_secret if subject_secret is not None else secrets.token_bytes(32),
        clock=clock,
        signing_key=signing_key,
    )
    server.set_app(wrap(provider) if wrap is not None else provider)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-openid-provider", daemon=True
    )
    thread.start()
    return LocalProviderHandle(issuer=issuer, provider=provider, _server=server, _thread=thread)


# ------------------------------------------------------------------------------------ the app's side
class CardSignInRefused(Exception):  # noqa: N818 - a refusal, told to the resident
    """The provider refused the card's answer (or the request); ``code`` and the messages say why."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self.code = str(body.get("code") or body.get("error") or "refused")
        self.message_ja = str(body.get("message") or "認証アプリでのログインができませんでした。")
        self.message_en = str(body.get("message_en") or body.get("error_description") or "sign-in refused")
        super().__init__(f"{status} {self.code}: {self.message_en}")


def _body(response: requests.Response) -> Mapping[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def sign_in_with_card(authorization_url: str, *, card: Transport, pin: str, timeout: float = 10.0) -> str:
    """Do what the 認証アプリ does on the phone, and return where the provider sends the browser back.

    Opens the authorization request, reads the card (any :class:`~mynapoint.identity.jpki.client.Transport`:
    a software card, or a reader), signs the provider's challenge with the PIN (once; a wrong PIN raises the
    client's ``PinIncorrect`` and nothing is retried) and posts the answer. Raises :class:`CardSignInRefused`
    when the provider refuses.
    """
    endpoint = urlunsplit(urlsplit(authorization_url)._replace(query="", fragment=""))
    with requests.Session() as http:
        opened = http.get(
            authorization_url, headers={"Accept": "application/json"}, allow_redirects=False, timeout=timeout
        )
        if (
            opened.status_code == 302
        ):  # the request itself was refused: back to the relying party with an error
            return opened.headers["Location"]
        if opened.status_code != 200:
            raise CardSignInRefused(opened.status_code, _body(opened))
        request = _body(opened)
        challenge = base64.b64decode(str(request["challenge"]), validate=True)
        answer = JpkiClient(card).login(challenge, pin)
        sent = http.post(
            endpoint,
            data={
                "transaction": str(request["transaction"]),
                "certificate": base64.b64encode(answer.certificate_der).decode("ascii"),
                "signature": base64.b64encode(answer.signature).decode("ascii"),
            },
            allow_redirects=False,
            timeout=timeout,
        )
        if sent.status_code != 302:
            raise CardSignInRefused(sent.status_code, _body(sent))
        return sent.headers["Location"]
