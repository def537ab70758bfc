"""Reading provider facts, and what the platform computes for providers without writing anything.

- :func:`provider_by_key`, :func:`all_providers` and :func:`api_keys_of` are what the programme office reads
  (``mynapoint providers``).
- :func:`api_key_for` finds the live API key a request presented (sha256 compared in constant time).
- :func:`link_ref` is the per-provider pseudonym of a resident in link notices and grant instructions (pull
  and push alike): a provider can follow one resident across its own notices, cannot compute it for another
  provider, and never learns her MyKey ID.
- :func:`security_codes_hash` is how declared accounts keep their security codes (HMAC-SHA256 keyed by the
  platform's secret), so the account registry and the verification adapter hash the same way.
- :func:`sign` is the ``X-Mynapoint-Signature`` header of webhooks and verification callbacks, and
  :func:`outbound_url_problem` says why the platform refuses to call a provider URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from django.conf import settings

from mynapoint.providers.models import Provider, ProviderAccount, ProviderApiKey

__all__ = [
    "API_KEY_PREFIX",
    "all_providers",
    "api_key_by_prefix",
    "api_key_for",
    "api_keys_of",
    "declared_account",
    "hash_api_key",
    "link_ref",
    "outbound_url_problem",
    "provider_by_key",
    "security_codes_hash",
    "sign",
]

API_KEY_PREFIX: Final = "mnp_"  # every key starts so: easy to spot in logs and secret scanners
KEY_LOOKUP_CHARS: Final = 12  # ProviderApiKey.prefix: the first characters of the key, to find the row


def _derived_key(purpose: str) -> bytes:
    """A key for one purpose, derived from settings.SECRET_KEY (one secret, separate uses)."""
    return hashlib.sha256(f"mynapoint:{purpose}\x00{settings.SECRET_KEY}".encode()).digest()


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def api_key_for(presented: str | None) -> ProviderApiKey | None:
    """The API key row for a presented key, if it is known, not revoked, and its provider is active."""
    if not presented or not presented.startswith(API_KEY_PREFIX) or len(presented) > 200:
        return None
    row = (
        ProviderApiKey.objects.select_related("provider").filter(prefix=presented[:KEY_LOOKUP_CHARS]).first()
    )
    if row is None:
        hmac.compare_digest(hash_api_key(presented), "0" * 64)  # same work whether the prefix exists or not
        return None
    if not hmac.compare_digest(hash_api_key(presented), row.key_hash):
        return None
    if row.revoked_at is not None or not row.provider.active:
        return None
    return row


def provider_by_key(*, key: str) -> Provider | None:
    return Provider.objects.filter(key=key).first()


def all_providers() -> list[Provider]:
    """Every provider, active or not, by key."""
    return list(Provider.objects.order_by("key"))


def api_keys_of(*, provider: Provider) -> list[ProviderApiKey]:
    """A provider's API keys, revoked ones included, in the order they were made (rows only: the keys
    themselves were shown once and are gone)."""
    return list(ProviderApiKey.objects.filter(provider=provider).order_by("id"))


def api_key_by_prefix(*, provider: Provider, prefix: str) -> ProviderApiKey | None:
    """One of the provider's API keys by the prefix shown when it was made (``mnp_`` and 8 characters)."""
    return ProviderApiKey.objects.filter(provider=provider, prefix=prefix).first()


def link_ref(*, provider_key: str, resident_id: int) -> str:
    """The pseudonym of resident ``resident_id`` (her database id, never her MyKey ID) for one provider.

    HMAC-SHA256 keyed by a key derived from settings.SECRET_KEY over ``"<provider key>:<resident id>"``,
    base32, the first 16 characters (80 bits). Stable for as long as SECRET_KEY is: rotating SECRET_KEY
    changes every link_ref, so a deployment must keep it."""
    mac = hmac.new(_derived_key("link_ref"), f"{provider_key}:{resident_id}".encode(), hashlib.sha256)
    return base64.b32encode(mac.digest()).decode("ascii")[:16]


def security_codes_hash(*, provider_key: str, service_id: str, security_codes: Sequence[str]) -> str:
    """HMAC-SHA256 (keyed by a key derived from settings.SECRET_KEY) of an account's security codes, bound to
    the account so that two accounts with the same codes do not share a hash. Hex, 64 characters."""
    message = "\x1f".join([provider_key, service_id, *security_codes]).encode("utf-8")
    return hmac.new(_derived_key("security_codes"), message, hashlib.sha256).hexdigest()


def declared_account(*, provider_id: int, service_id: str) -> ProviderAccount | None:
    """An account the provider declares valid now (withdrawn ones are not)."""
    return ProviderAccount.objects.filter(
        provider_id=provider_id, service_id=service_id, withdrawn_at__isnull=True
    ).first()


def sign(secret: str, body: bytes, *, timestamp: int) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` (docs/provider-api.md)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def outbound_url_problem(url: str) -> str | None:
    """Why the platform will not call ``url`` (None: it will). Only https, or http to this machine's
    loopback (a provider's sandbox, the tests); no credentials in the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "not a URL"
    if not host:
        return "no host"
    if parts.username or parts.password:
        return "credentials in the URL"
    if parts.scheme == "https":
        return None
    if parts.scheme != "http":
        return f"scheme {parts.scheme!r} (https only)"
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return "plain http is only allowed to the loopback address"
