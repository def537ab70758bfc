"""The relying party of the 認証アプリ route: OpenID Connect authorization code + PKCE (S256), with Authlib.

:meth:`RelyingParty.begin` builds the authorization URL with a fresh ``state``, ``nonce`` and PKCE
``code_verifier`` (the caller keeps the three, e.g. in the browser session); :meth:`RelyingParty.finish`
exchanges the code and validates the ID token: its RS256 signature against the provider's JWKS, then ``iss``,
``aud``, ``exp``, ``iat``, ``nonce`` (and ``azp``, ``at_hash`` when present). The result is the issuer, the
pairwise ``sub`` and the user-authentication certificate the provider verified
(:data:`~mynapoint.identity.oidc.CERTIFICATE_CLAIM`).

The provider's metadata comes from its discovery document, whose ``issuer`` must be the configured one.
JOSE is done with joserfc, the library Authlib itself now uses (``authlib.jose`` is deprecated).
Time is an argument (``now``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from cryptography import x509
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from mynapoint.identity.oidc import CERTIFICATE_CLAIM

__all__ = [
    "AuthorizationRequest",
    "OidcError",
    "OidcLogin",
    "RelyingParty",
    "RelyingPartyConfig",
    "verify_id_token",
]

ID_TOKEN_ALGORITHMS = ("RS256",)


class OidcError(Exception):
    """A refused or failed OpenID Connect login, with a Japanese and an English message and an HTTP status."""

    def __init__(self, code: str, ja: str, en: str, *, status: int = 401) -> None:
        self.code, self.ja, self.en, self.status = code, ja, en, status
        super().__init__(f"{code}: {en}")


def _unavailable(en: str) -> OidcError:
    return OidcError(
        "oidc_unavailable",
        "認証アプリのサービスに接続できませんでした。しばらくしてからもう一度お試しください。",
        en,
        status=503,
    )


def _id_token_invalid(en: str) -> OidcError:
    return OidcError(
        "oidc_id_token_invalid",
        "認証アプリからの応答を確認できませんでした。もう一度最初からお試しください。",
        en,
    )


@dataclass(frozen=True)
class RelyingPartyConfig:
    """Our registration at the provider. Without ``client_secret`` we are a public client (PKCE only)."""

    issuer: str
    client_id: str
    redirect_uri: str
    client_secret: str | None = None
    timeout: float = 10.0
    leeway: int = 60  # seconds of clock skew allowed on exp / iat


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the browser, and what to keep until the callback."""

    url: str
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True)
class OidcLogin:
    """A validated ID token: who (issuer + pairwise sub) and the certificate the provider verified."""

    issuer: str
    sub: str
    certificate_der: bytes | None


def verify_id_token(
    id_token: str,
    *,
    jwks: Mapping[str, Any],
    issuer: str,
    client_id: str,
    nonce: str,
    now: dt.datetime,
    access_token: str | None = None,
    leeway: int = 60,
) -> OidcLogin:
    """Check an ID token's signature against ``jwks`` (RS256 only) and its claims; raise :class:`OidcError`."""
    try:
        keys = KeySet.import_key_set(cast(Any, jwks))
    except (JoseError, ValueError, KeyError, TypeError) as exc:
        raise _id_token_invalid(f"the provider's JWKS is unusable ({exc})") from None
    try:
        token = jwt.decode(id_token, keys, algorithms=list(ID_TOKEN_ALGORITHMS))
    except (JoseError, ValueError) as exc:
        raise _id_token_invalid(f"the ID token signature does not verify ({exc})") from None
    claims = CodeIDToken(
        token.claims,
        token.header,
        options={
            "iss": {"essential": True, "value": issuer},
            "aud": {"essential": True, "value": client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
            "iat": {"essential": True},
            "nonce": {"essential": True, "value": nonce},
        },
        params={"nonce": nonce, "client_id": client_id, "access_token": access_token},
    )
    try:
        claims.validate(now=int(now.timestamp()), leeway=leeway)
    except JoseError as exc:
        raise _id_token_invalid(f"the ID token was refused ({exc})") from None
    # joserfc compares with ==; compare the nonce again in constant time, as a plain string
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode("utf-8"), nonce.encode("utf-8")):
        raise _id_token_invalid("the ID token's nonce is not the one sent")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise _id_token_invalid("the ID token's sub is not a usable identifier")
    certificate_der: bytes | None = None
    encoded = claims.get(CERTIFICATE_CLAIM)
    if encoded is not None:
        try:
            certificate_der = base64.b64decode(str(encoded), validate=True)
            x509.load_der_x509_certificate(certificate_der)
        except ValueError:
            raise _id_token_invalid("the certificate claim is not a base64 DER certificate") from None
    return OidcLogin(issuer=issuer, sub=sub, certificate_der=certificate_der)


class RelyingParty:
    """Our side of the authorization code flow with one provider."""

    def __init__(self, config: RelyingPartyConfig) -> None:
        self.config = config

    def _session(self) -> Any:
        return OAuth2Session(
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            token_endpoint_auth_method="client_secret_basic" if self.config.client_secret else "none",
            scope="openid",
            redirect_uri=self.config.redirect_uri,
            code_challenge_method="S256",
            default_timeout=self.config.timeout,
        )

    def _get_json(self, http: Any, url: str) -> dict[str, Any]:
        try:
            response = http.get(url, withhold_token=True, headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise _unavailable(f"{url} cannot be reached ({type(exc).__name__})") from None
        try:
            body = response.json() if response.status_code == 200 else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _unavailable(f"{url} answered {response.status_code} without a JSON object")
        return body

    def _metadata(self, http: Any) -> dict[str, Any]:
        issuer = self.config.issuer.rstrip("/")
        metadata = self._get_json(http, f"{issuer}/.well-known/openid-configuration")
        if metadata.get("issuer") != issuer:  # OpenID Connect Discovery §4.3
            raise _unavailable("the discovery document names another issuer")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(metadata.get(key), str):
                raise _unavailable(f"the discovery document has no {key}")
        methods = metadata.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise _unavailable("the provider does not support PKCE S256")
        return metadata

    def begin(self) -> AuthorizationRequest:
        """A fresh authorization request (state, nonce and PKCE code_verifier of 256 bits each)."""
        state, nonce, code_verifier = (secrets.token_urlsafe(32) for _ in range(3))
        with self._session() as http:
            endpoint = self._metadata(http)["authorization_endpoint"]
            url, _ = http.create_authorization_url(
                endpoint, state=state, code_verifier=code_verifier, nonce=nonce
            )
        return AuthorizationRequest(url=url, state=state, nonce=nonce, code_verifier=code_verifier)

    def finish(
        self, *, code: str, iss: str | None, code_verifier: str, nonce: str, now: dt.datetime
    ) -> OidcLogin:
        """Exchange ``code`` (with the PKCE verifier) and validate the ID token.

        ``iss`` is the authorization response's ``iss`` parameter (RFC 9207), when the provider sent one.
        """
        issuer = self.config.issuer.rstrip("/")
        if iss is not None and iss != issuer:
            raise OidcError(
                "oidc_issuer_mismatch",
                "別の認証サービスからの応答です。もう一度最初からお試しください。",
                "the authorization response comes from another issuer",
            )
        with self._session() as http:
            metadata = self._metadata(http)
            try:
                token = http.fetch_token(
                    metadata["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                )
            except OAuthError as exc:
                raise OidcError(
                    "oidc_token_refused",
                    "認証アプリでのログインを完了できませんでした。もう一度最初からお試しください。",
                    f"the token endpoint refused the code: {exc.error} ({exc.description})",
                ) from None
            except requests.RequestException as exc:
                raise _unavailable(f"the token endpoint cannot be reached ({type(exc).__name__})") from None
            except ValueError as exc:  # not a JSON object
                raise _unavailable(f"the token endpoint answered without JSON ({exc})") from None
            jwks = self._get_json(http, metadata["jwks_uri"])
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise _id_token_invalid("the token response has no ID token")
        access_token = token.get("access_token")
        return verify_id_token(
            id_token,
            jwks=jwks,
            issuer=issuer,
            client_id=self.config.client_id,
            nonce=nonce,
            now=now,
            access_token=access_token if isinstance(access_token, str) else None,
            leeway=self.config.leeway,
        )
