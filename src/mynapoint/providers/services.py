"""Provider use cases: onboarding a payment service, its API keys, and the accounts it declares valid.

Each write is one durable transaction with its audit event. API keys are shown once and stored as a sha256
hash; a rotation issues a new key while the old one keeps working until it is revoked. Declared accounts
(verification = registry) keep their security codes only as an HMAC (:func:`security_codes_hash`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from django.db import IntegrityError, transaction

from mynapoint.audit.services import Actor, record
from mynapoint.identity.mynumber import refuse_my_number
from mynapoint.providers.models import (
    GrantDelivery,
    GrantSchedule,
    Provider,
    ProviderAccount,
    ProviderApiKey,
    ProviderKind,
    TransactionKind,
    Verification,
)
from mynapoint.providers.selectors import (
    API_KEY_PREFIX,
    KEY_LOOKUP_CHARS,
    hash_api_key,
    outbound_url_problem,
    security_codes_hash,
)
from mynapoint.rules.model import MEASURES

__all__ = [
    "MAX_DECLARED_ACCOUNTS",
    "PROGRAMME_OFFICE",
    "AccountDeclaration",
    "DeclaredAccounts",
    "ProviderError",
    "declare_accounts",
    "issue_api_key",
    "note_api_key_used",
    "onboard_provider",
    "revoke_api_key",
    "rotate_api_key",
    "withdraw_account",
]

PROGRAMME_OFFICE: Final = Actor(actor="programme-office", channel="office")
MAX_DECLARED_ACCOUNTS: Final = 10_000
_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_SERVICE_ID = re.compile(r"^[0-9A-Za-z\-]{1,64}$")  # as apply_for_measure accepts it
_SECURITY_CODE = re.compile(r"^[0-9A-Za-z]{1,16}$")
_LAST_USED_EVERY = dt.timedelta(minutes=1)


class ProviderError(ValueError):
    """Input that cannot be recorded: says which field was wrong, in Japanese and English. ``status`` is the
    HTTP status the provider API answers with (422 invalid field, 404 unknown id, 413 too many)."""

    def __init__(self, code: str, ja: str, en: str, *, field: str = "", status: int = 422) -> None:
        self.code, self.ja, self.en, self.field, self.status = code, ja, en, field, status
        super().__init__(f"{code}: {en}" + (f" ({field})" if field else ""))


def _invalid(field: str, ja: str, en: str) -> ProviderError:
    return ProviderError(f"bad_{field.split('.')[-1].split('[')[0]}", ja, en, field=field)


# ------------------------------------------------------------------------------------------------ onboarding


def onboard_provider(
    *,
    key: str,
    name_ja: str,
    name_en: str = "",
    kind: str,
    modes: Sequence[str],
    measures: Sequence[str] = MEASURES,
    grant_schedule: str = GrantSchedule.IMMEDIATE,
    grant_schedule_days: int = 0,
    charge_deadline: dt.date | None = None,
    application_deadline: dt.date | None = None,
    pre_registration_required: bool = False,
    security_code_count: int = 1,
    verification: str = Verification.REGISTRY,
    verify_url: str = "",
    grant_delivery: str = GrantDelivery.PULL,
    webhook_url: str = "",
    webhook_secret: str = "",
    now: dt.datetime,
    who: Actor = PROGRAMME_OFFICE,
) -> Provider:
    """Register a payment service (決済事業者) with the programme.

    ``grant_schedule``: ``immediate``; ``monthly`` with ``grant_schedule_days`` = the day of the next month
    (1–28); ``days_after`` with ``grant_schedule_days`` = N days after the transaction (1–365). A provider that
    verifies by callback needs ``verify_url``; one that is pushed grants needs ``webhook_url``; both are signed
    with ``webhook_secret``, which is generated when not given. Raises :class:`ProviderError` naming the field.
    """
    if not _KEY.match(key or ""):
        raise _invalid(
            "key", "事業者キーは英小文字・数字・-・_ で40文字以内です", "key must be a lowercase slug"
        )
    if not name_ja.strip() or len(name_ja) > 100 or len(name_en) > 100:
        raise _invalid("name_ja", "事業者名（100文字以内）が必要です", "name_ja is required (at most 100)")
    if kind not in ProviderKind.values:
        raise _invalid(
            "kind",
            f"決済の種類は {', '.join(ProviderKind.values)} のいずれかです",
            f"kind must be one of {', '.join(ProviderKind.values)}",
        )
    mode_list = list(modes)
    if not mode_list or len(set(mode_list)) != len(mode_list) or set(mode_list) - set(TransactionKind.values):
        raise _invalid(
            "modes", "方式は charge と purchase から選びます", "modes: one or both of charge and purchase"
        )
    if kind in (ProviderKind.CREDIT, ProviderKind.DEBIT) and TransactionKind.CHARGE in mode_list:
        raise _invalid(
            "modes",
            "クレジットカード・デビットカードにチャージ方式はありません",
            "credit and debit cards earn on purchases only",
        )
    measure_list = list(measures)
    if not measure_list or len(set(measure_list)) != len(measure_list) or set(measure_list) - set(MEASURES):
        raise _invalid(
            "measures", "施策の指定が正しくありません", f"measures: a subset of {', '.join(MEASURES)}"
        )
    days_range = {
        GrantSchedule.IMMEDIATE: (0, 0),
        GrantSchedule.MONTHLY: (1, 28),
        GrantSchedule.DAYS_AFTER: (1, 365),
    }
    if grant_schedule not in days_range:
        raise _invalid(
            "grant_schedule",
            "付与時期は immediate, monthly, days_after です",
            "grant_schedule: immediate|monthly|days_after",
        )
    low, high = days_range[GrantSchedule(grant_schedule)]
    if not low <= grant_schedule_days <= high:
        raise _invalid(
            "grant_schedule_days",
            f"付与時期 {grant_schedule} の日数は {low}〜{high} です",
            f"grant_schedule_days for {grant_schedule} must be {low} to {high}",
        )
    if not 1 <= security_code_count <= 3:
        raise _invalid(
            "security_code_count", "セキュリティコードの数は1〜3です", "security_code_count must be 1 to 3"
        )
    if verification not in Verification.values:
        raise _invalid(
            "verification", "口座確認の方式は registry か callback です", "verification: registry|callback"
        )
    if grant_delivery not in GrantDelivery.values:
        raise _invalid("grant_delivery", "付与指示の方式は pull か push です", "grant_delivery: pull|push")
    for url, needed, name in (
        (verify_url, verification == Verification.CALLBACK, "verify_url"),
        (webhook_url, grant_delivery == GrantDelivery.PUSH, "webhook_url"),
    ):
        if needed and not url:
            raise _invalid(name, f"{name} が必要です", f"{name} is required for this mode")
        if url and (problem := outbound_url_problem(url)):
            raise _invalid(name, f"{name} は https（または開発用のループバック）です", f"{name}: {problem}")
    signed = verification == Verification.CALLBACK or grant_delivery == GrantDelivery.PUSH
    if webhook_secret and len(webhook_secret) < 16:
        raise _invalid(
            "webhook_secret", "署名の鍵は16文字以上です", "webhook_secret must be at least 16 characters"
        )
    secret = webhook_secret or (secrets.token_urlsafe(32) if signed else "")
    with transaction.atomic(durable=True):
        if Provider.objects.filter(key=key).exists():
            raise ProviderError(
                "provider_exists",
                f"事業者 {key} はすでに登録されています",
                f"provider {key!r} exists",
                field="key",
            )
        provider = Provider.objects.create(
            key=key,
            name_ja=name_ja,
            name_en=name_en,
            kind=kind,
            modes=mode_list,
            measures=measure_list,
            charge_deadline=charge_deadline,
            application_deadline=application_deadline,
            security_code_count=security_code_count,
            pre_registration_required=pre_registration_required,
            grant_schedule=grant_schedule,
            grant_schedule_days=grant_schedule_days,
            verification=verification,
            verify_url=verify_url,
            grant_delivery=grant_delivery,
            webhook_url=webhook_url,
            webhook_secret=secret,
        )
        record(
            who=who,
            action="provider_onboarded",
            subject_type="provider",
            subject_id=key,
            before=None,
            after={
                "name_ja": name_ja,
                "kind": kind,
                "modes": mode_list,
                "measures": measure_list,
                "grant_schedule": grant_schedule,
                "grant_schedule_days": grant_schedule_days,
                "charge_deadline": charge_deadline,
                "application_deadline": application_deadline,
                "pre_registration_required": pre_registration_required,
                "security_code_count": security_code_count,
                "verification": verification,
                "verify_url": verify_url,
                "grant_delivery": grant_delivery,
                "webhook_url": webhook_url,
                "webhook_secret_set": bool(secret),  # never the secret itself
            },
            at=now,
        )
        return provider


# ------------------------------------------------------------------------------------------------ API keys


def _issue(
    *, provider: Provider, label: str, now: dt.datetime, who: Actor, action: str
) -> tuple[str, ProviderApiKey]:
    if len(label) > 100:
        raise _invalid("label", "ラベルは100文字以内です", "label: at most 100 characters")
    for _ in range(5):
        plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with transaction.atomic(durable=True):
                row = ProviderApiKey.objects.create(
                    provider=provider,
                    prefix=plaintext[:KEY_LOOKUP_CHARS],
                    key_hash=hash_api_key(plaintext),
                    created_at=now,
                    label=label,
                )
                valid = list(
                    ProviderApiKey.objects.filter(provider=provider, revoked_at__isnull=True)
                    .order_by("id")
                    .values_list("prefix", flat=True)
                )
                record(
                    who=who,
                    action=action,
                    subject_type="provider",
                    subject_id=provider.key,
                    before=None,
                    after={"prefix": row.prefix, "label": label, "valid_keys": valid},
                    at=now,
                )
                return plaintext, row
        except IntegrityError:  # the same 8 random characters as another key's: draw again
            continue
    raise RuntimeError("could not draw a unique API key prefix")  # pragma: no cover


def issue_api_key(
    *, provider: Provider, label: str, now: dt.datetime, who: Actor = PROGRAMME_OFFICE
) -> tuple[str, ProviderApiKey]:
    """Make an API key: ``mnp_`` + 32 random bytes (urlsafe base64). Returns the key, to be shown once, and its
    row (which keeps only the sha256 and the first 12 characters)."""
    return _issue(provider=provider, label=label, now=now, who=who, action="api_key_issued")


def rotate_api_key(
    *, provider: Provider, label: str, now: dt.datetime, who: Actor = PROGRAMME_OFFICE
) -> tuple[str, ProviderApiKey]:
    """A new key for a provider whose current keys keep working until they are revoked (:func:`revoke_api_key`),
    so the provider can switch over without a gap."""
    return _issue(provider=provider, label=label, now=now, who=who, action="api_key_rotated")


def revoke_api_key(*, key: ProviderApiKey, now: dt.datetime, who: Actor = PROGRAMME_OFFICE) -> ProviderApiKey:
    """Revoke a key (from then on it is refused with 401). Revoking a revoked key changes nothing."""
    with transaction.atomic(durable=True):
        row = ProviderApiKey.objects.select_related("provider").get(pk=key.pk)
        if row.revoked_at is not None:
            return row
        ProviderApiKey.objects.filter(pk=row.pk).update(revoked_at=now)
        record(
            who=who,
            action="api_key_revoked",
            subject_type="provider",
            subject_id=row.provider.key,
            before={"prefix": row.prefix, "revoked_at": None},
            after={"prefix": row.prefix, "revoked_at": now},
            at=now,
        )
        row.revoked_at = now
        return row


def note_api_key_used(*, key: ProviderApiKey, now: dt.datetime) -> None:
    """Keep ``last_used_at`` roughly current (at most one write a minute per key; bookkeeping, not audited)."""
    if key.last_used_at is None or now - key.last_used_at >= _LAST_USED_EVERY:
        ProviderApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


# ------------------------------------------------------------------------------------------ declared accounts


@dataclass(frozen=True, slots=True)
class AccountDeclaration:
    service_id: str
    security_codes: Sequence[str]
    holder_kana: str
    holder_born: dt.date | None


@dataclass(frozen=True, slots=True)
class DeclaredAccounts:
    created: int
    updated: int


def _check_declaration(provider: Provider, index: int, item: AccountDeclaration) -> None:
    where = f"accounts[{index}]"
    refuse_my_number(item.service_id, where=f"{where}.service_id")
    if not _SERVICE_ID.match(item.service_id):
        raise _invalid(
            f"{where}.service_id",
            f"{where}: 決済サービスIDは英数字とハイフンで1〜64文字です",
            f"{where}: the service ID must be 1 to 64 letters, digits or hyphens",
        )
    codes = list(item.security_codes)
    if len(codes) != provider.security_code_count or not all(_SECURITY_CODE.match(c) for c in codes):
        raise _invalid(
            f"{where}.security_codes",
            f"{where}: セキュリティコードは英数字で{provider.security_code_count}個です",
            f"{where}: give {provider.security_code_count} alphanumeric security code(s)",
        )
    refuse_my_number(item.holder_kana, where=f"{where}.holder_kana")
    if not item.holder_kana.strip() or len(item.holder_kana) > 100:
        raise _invalid(
            f"{where}.holder_kana",
            f"{where}: 名義人（カナ）は1〜100文字です",
            f"{where}: holder_kana must be 1 to 100 characters",
        )


def _digest(rows: Any) -> str:
    canonical = json.dumps(rows, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def declare_accounts(
    *, provider: Provider, accounts: Sequence[AccountDeclaration], now: dt.datetime, who: Actor
) -> DeclaredAccounts:
    """Store the accounts a provider declares valid (verification = registry): new ones are created, known ones
    (withdrawn or not) take the declared codes and holder. All are checked first: a refused declaration keeps
    nothing. One audit event for the whole declaration (counts and a digest, never the codes)."""
    if provider.verification != Verification.REGISTRY:
        raise ProviderError(
            "wrong_verification_mode",
            "この事業者の口座確認は照会API（callback）で行うため、口座の登録は使われません",
            "this provider verifies accounts by callback: declared accounts would not be used",
            field="accounts",
        )
    if len(accounts) > MAX_DECLARED_ACCOUNTS:
        raise ProviderError(
            "too_many",
            f"一度に登録できる口座は{MAX_DECLARED_ACCOUNTS:,}件までです（{len(accounts):,}件）",
            f"at most {MAX_DECLARED_ACCOUNTS} accounts at once (got {len(accounts)})",
            field="accounts",
            status=413,
        )
    seen: dict[str, int] = {}
    for index, item in enumerate(accounts):
        _check_declaration(provider, index, item)
        if item.service_id in seen:
            raise _invalid(
                f"accounts[{index}].service_id",
                f"accounts[{index}]: 決済サービスID {item.service_id} が accounts[{seen[item.service_id]}] と重複しています",
                f"accounts[{index}]: service ID {item.service_id!r} repeats accounts[{seen[item.service_id]}]",
            )
        seen[item.service_id] = index
    values = {
        item.service_id: {
            "security_codes_hash": security_codes_hash(
                provider_key=provider.key,
                service_id=item.service_id,
                security_codes=list(item.security_codes),
            ),
            "holder_kana": item.holder_kana,
            "holder_born": item.holder_born,
        }
        for item in accounts
    }
    with transaction.atomic(durable=True):
        existing = {
            row.service_id: row
            for row in ProviderAccount.objects.filter(provider=provider, service_id__in=list(values))
        }
        new = [
            ProviderAccount(provider=provider, service_id=service_id, updated_at=now, **fields)
            for service_id, fields in values.items()
            if service_id not in existing
        ]
        changed = []
        for service_id, row in existing.items():
            fields = values[service_id]
            if row.withdrawn_at is not None or any(getattr(row, k) != v for k, v in fields.items()):
                for name, value in fields.items():
                    setattr(row, name, value)
                row.withdrawn_at, row.updated_at = None, now
                changed.append(row)
        ProviderAccount.objects.bulk_create(new, batch_size=1000)
        ProviderAccount.objects.bulk_update(
            changed,
            ["security_codes_hash", "holder_kana", "holder_born", "withdrawn_at", "updated_at"],
            batch_size=1000,
        )
        result = DeclaredAccounts(created=len(new), updated=len(existing))
        record(
            who=who,
            action="accounts_declared",
            subject_type="provider",
            subject_id=provider.key,
            before=None,
            after={
                "accounts": len(values),
                "created": result.created,
                "updated": result.updated,
                "changed": len(changed),
                "digest": _digest(sorted(values.items())),
            },
            at=now,
        )
        return result


def withdraw_account(*, provider: Provider, service_id: str, now: dt.datetime, who: Actor) -> None:
    """The provider no longer declares an account valid (a later application with it is refused). Withdrawing
    a withdrawn account changes nothing; an account never declared is a :class:`ProviderError` (404)."""
    with transaction.atomic(durable=True):
        row = ProviderAccount.objects.filter(provider=provider, service_id=service_id).first()
        if row is None:
            raise ProviderError(
                "unknown_account",
                f"決済サービスID {service_id} は登録されていません",
                f"no declared account {service_id!r}",
                field="service_id",
                status=404,
            )
        if row.withdrawn_at is not None:
            return
        ProviderAccount.objects.filter(pk=row.pk).update(withdrawn_at=now, updated_at=now)
        record(
            who=who,
            action="account_withdrawn",
            subject_type="payment_account",
            subject_id=f"{provider.key}/{service_id}",
            before={"withdrawn_at": None},
            after={"withdrawn_at": now},
            at=now,
        )
