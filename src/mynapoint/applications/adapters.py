"""Verifying a payment account with its provider, behind one interface.

``ProviderAccountAdapter.verify`` answers whether a service ID and its security codes are valid, and who
holds the account (kana name and birth date, which the platform compares with the applicant's). Which adapter
the platform uses is a setting, ``MYNAPOINT_PROVIDER_ADAPTER`` (a dotted path); nothing falls back from one
to the other, so a deployment says plainly where its accounts come from:

- :class:`ProviderApiAdapter` (``mynapoint.applications.adapters.ProviderApiAdapter``), the provider API
  (docs/provider-api.md). Each provider says how its accounts are checked (``Provider.verification``):
  ``registry``: the accounts it declared with ``PUT /accounts`` (security codes compared as HMACs, in
  constant time); ``callback``: a signed POST to its ``verify_url``. A provider whose server fails, times
  out or answers nonsense is an ``ApplicationError`` ``provider_unavailable``, never an acceptance.
- :class:`FileRegistryAdapter` (the default, for the demo and the tests), a registry of accounts read from
  the YAML file ``MYNAPOINT_PROVIDER_REGISTRY``:

    demo:                      # provider key
      "4000-0001":             # service ID (決済サービスID)
        security_codes: ["1234"]
        holder_kana: ヤマダ ハナコ
        holder_born: 1990-01-15
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
import yaml
from django.conf import settings
from django.utils.module_loading import import_string

from mynapoint import clock
from mynapoint.providers.models import Provider, Verification
from mynapoint.providers.selectors import declared_account, outbound_url_problem, security_codes_hash, sign

__all__ = [
    "AccountVerification",
    "FileRegistryAdapter",
    "ProviderAccountAdapter",
    "ProviderApiAdapter",
    "provider_adapter",
]


@dataclass(frozen=True, slots=True)
class AccountVerification:
    valid: bool
    holder_kana: str | None = None
    holder_born: dt.date | None = None


class ProviderAccountAdapter(Protocol):
    def verify(
        self, *, provider: str, service_id: str, security_codes: Sequence[str]
    ) -> AccountVerification: ...


class FileRegistryAdapter:
    """Accounts from a YAML registry file (re-read when it changes)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path or settings.MYNAPOINT_PROVIDER_REGISTRY)
        self._mtime = -1.0
        self._accounts: dict[tuple[str, str], dict[str, object]] = {}

    def _load(self) -> None:
        if not self.path.exists():
            raise FileNotFoundError(
                f"provider account registry {self.path} does not exist (MYNAPOINT_PROVIDER_REGISTRY)"
            )
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return
        doc = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        accounts = {}
        for provider, entries in doc.items():
            for service_id, entry in (entries or {}).items():
                accounts[(str(provider), str(service_id))] = dict(entry)
        self._accounts, self._mtime = accounts, mtime

    def verify(self, *, provider: str, service_id: str, security_codes: Sequence[str]) -> AccountVerification:
        self._load()
        entry = self._accounts.get((provider, service_id))
        if entry is None:
            return AccountVerification(valid=False)
        expected = [str(c) for c in entry.get("security_codes", [])]  # type: ignore[attr-defined]
        given = [str(c) for c in security_codes]
        if len(expected) != len(given) or not all(
            hmac.compare_digest(a, b) for a, b in zip(expected, given, strict=True)
        ):
            return AccountVerification(valid=False)
        born = entry.get("holder_born")
        return AccountVerification(
            valid=True,
            holder_kana=str(entry.get("holder_kana") or "") or None,
            holder_born=dt.date.fromisoformat(str(born)) if born else None,
        )

    def add(self, *, provider: str, service_id: str, entry: dict[str, object]) -> None:
        """Add an account to the registry file (demo data and tests)."""
        doc = yaml.safe_load(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        doc = doc or {}
        doc.setdefault(provider, {})[service_id] = entry
        self.path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=True), encoding="utf-8")


def _unavailable(provider: str, reason: str) -> Exception:
    """An ``ApplicationError`` saying the provider could not answer (imported here: services imports us)."""
    from mynapoint.applications.services import ApplicationError

    return ApplicationError(
        "provider_unavailable",
        "決済サービス事業者の確認窓口が応答しません。時間をおいてもう一度お試しください",
        f"the payment service {provider!r} could not verify the account now ({reason}); try again later",
        field="service_id",
    )


class ProviderApiAdapter:
    """Accounts as the providers state them through the provider API (see the module docstring).

    ``registry``: the declared, not withdrawn :class:`~mynapoint.providers.models.ProviderAccount`; the codes'
    HMAC is compared in constant time. ``callback``: ``POST verify_url`` with ``{service_id, security_codes}``,
    header ``X-Mynapoint-Signature`` (as webhooks, keyed by ``webhook_secret``), https or loopback http only,
    no redirects, ``MYNAPOINT_PROVIDER_VERIFY_TIMEOUT`` seconds (default 5); the answer must be a 200 with
    ``{valid, holder_kana, holder_born}``."""

    def __init__(self, *, timeout: float | None = None) -> None:
        configured: float = getattr(settings, "MYNAPOINT_PROVIDER_VERIFY_TIMEOUT", 5.0)
        self.timeout = float(timeout or configured)

    def verify(self, *, provider: str, service_id: str, security_codes: Sequence[str]) -> AccountVerification:
        found = Provider.objects.filter(key=provider).first()
        if found is None:
            return AccountVerification(valid=False)
        if found.verification == Verification.CALLBACK:
            return self._callback(found, service_id, security_codes)
        account = declared_account(provider_id=found.pk, service_id=service_id)
        given = security_codes_hash(
            provider_key=found.key, service_id=service_id, security_codes=list(security_codes)
        )
        if account is None:
            hmac.compare_digest(given, "0" * 64)  # the same work whether the account exists or not
            return AccountVerification(valid=False)
        if not hmac.compare_digest(given, account.security_codes_hash):
            return AccountVerification(valid=False)
        return AccountVerification(
            valid=True, holder_kana=account.holder_kana, holder_born=account.holder_born
        )

    def _callback(
        self, provider: Provider, service_id: str, security_codes: Sequence[str]
    ) -> AccountVerification:
        if not provider.verify_url or not provider.webhook_secret:
            raise _unavailable(provider.key, "no verify_url or signing secret configured")
        if problem := outbound_url_problem(provider.verify_url):
            raise _unavailable(provider.key, f"verify_url refused: {problem}")
        body = json.dumps(
            {"service_id": service_id, "security_codes": list(security_codes)},
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        ).encode("utf-8")
        signature = sign(provider.webhook_secret, body, timestamp=int(clock.now().timestamp()))
        try:
            response = requests.post(
                provider.verify_url,
                data=body,
                headers={"Content-Type": "application/json", "X-Mynapoint-Signature": signature},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _unavailable(provider.key, type(exc).__name__) from None
        if response.status_code != 200:
            raise _unavailable(provider.key, f"HTTP {response.status_code}")
        try:
            return _parse_answer(response.json())
        except (ValueError, TypeError, KeyError) as exc:
            raise _unavailable(provider.key, f"unexpected answer: {exc}") from None


def _parse_answer(answer: Any) -> AccountVerification:
    """``{valid, holder_kana, holder_born}``: anything else is a ValueError (an unavailable provider)."""
    if not isinstance(answer, dict) or not isinstance(answer["valid"], bool):
        raise ValueError("valid must be true or false")
    if not answer["valid"]:
        return AccountVerification(valid=False)
    kana, born = answer.get("holder_kana"), answer.get("holder_born")
    if not isinstance(kana, str) or not kana or len(kana) > 100:
        raise ValueError("holder_kana must be a name")
    if born is not None and not isinstance(born, str):
        raise ValueError("holder_born must be YYYY-MM-DD")
    return AccountVerification(
        valid=True, holder_kana=kana, holder_born=dt.date.fromisoformat(born) if born else None
    )


_ADAPTERS: dict[str, ProviderAccountAdapter] = {}


def provider_adapter() -> ProviderAccountAdapter:
    """The adapter chosen in settings (MYNAPOINT_PROVIDER_ADAPTER)."""
    dotted = settings.MYNAPOINT_PROVIDER_ADAPTER
    registry = str(settings.MYNAPOINT_PROVIDER_REGISTRY)
    key = f"{dotted}|{registry}"
    if key not in _ADAPTERS:
        _ADAPTERS[key] = import_string(dotted)()
    return _ADAPTERS[key]
