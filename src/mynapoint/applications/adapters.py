"""Verifying a payment account with its provider, behind one interface.

``ProviderAccountAdapter.verify`` answers whether a service ID and its security codes are valid, and who
holds the account (kana name and birth date, which the platform compares with the applicant's). Until the
provider API lands, :class:`FileRegistryAdapter` reads a registry of accounts from a YAML file:

    demo:                      # provider key
      "4000-0001":             # service ID (決済サービスID)
        security_codes: ["1234"]
        holder_kana: ヤマダ ハナコ
        holder_born: 1990-01-15
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from django.conf import settings
from django.utils.module_loading import import_string

__all__ = ["AccountVerification", "FileRegistryAdapter", "ProviderAccountAdapter", "provider_adapter"]


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


_ADAPTERS: dict[str, ProviderAccountAdapter] = {}


def provider_adapter() -> ProviderAccountAdapter:
    """The adapter chosen in settings (MYNAPOINT_PROVIDER_ADAPTER)."""
    dotted = settings.MYNAPOINT_PROVIDER_ADAPTER
    registry = str(settings.MYNAPOINT_PROVIDER_REGISTRY)
    key = f"{dotted}|{registry}"
    if key not in _ADAPTERS:
        _ADAPTERS[key] = import_string(dotted)()
    return _ADAPTERS[key]
