"""Provider use cases: onboarding a payment service, editing its settings, its API keys, and the accounts it
declares valid.

Each write is one durable transaction with its audit event. Onboarding and editing check a provider's settings
with one function (:func:`check_settings`); an edit may not take from residents what they already rely on.
API keys are shown once and stored as a sha256 hash; a rotation issues a new key while the old one keeps
working until it is revoked. Declared accounts (verification = registry) keep their security codes only as an
HMAC (:func:`security_codes_hash`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Final, TypedDict, Unpack

from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet

from mynapoint.audit.services import Actor, record
from mynapoint.identity.models import Resident
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
from mynapoint.rules.model import JST, MEASURES

__all__ = [
    "MAX_DECLARED_ACCOUNTS",
    "PROGRAMME_OFFICE",
    "SETTINGS",
    "AccountDeclaration",
    "DeclaredAccounts",
    "ProviderChanges",
    "ProviderError",
    "ProviderSettings",
    "ProviderUpdate",
    "check_settings",
    "declare_accounts",
    "issue_api_key",
    "note_api_key_used",
    "onboard_provider",
    "revoke_api_key",
    "rotate_api_key",
    "update_provider",
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


# ------------------------------------------------------------------------------------------------ settings

# the accepted-application status, as applications.models.ApplicationStatus.ACCEPTED spells it (the
# applications context sits above this one: it is reached through the Provider → accounts → applications
# relation, never imported)
_ACCEPTED: Final = "accepted"
_GRANT_DAYS: Final = {
    GrantSchedule.IMMEDIATE: (0, 0),
    GrantSchedule.MONTHLY: (1, 28),
    GrantSchedule.DAYS_AFTER: (1, 365),
}


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What the programme office sets for a provider: every column of :class:`Provider` but its key, which
    never changes (it is in every link_ref, security-code hash, ledger account and API key row)."""

    name_ja: str
    name_en: str
    kind: str
    modes: tuple[str, ...]
    measures: tuple[str, ...]
    grant_schedule: str
    grant_schedule_days: int
    charge_deadline: dt.date | None
    application_deadline: dt.date | None
    pre_registration_required: bool
    security_code_count: int
    verification: str
    verify_url: str
    grant_delivery: str
    webhook_url: str
    webhook_secret: str
    active: bool

    @classmethod
    def of(cls, provider: Provider) -> ProviderSettings:
        values = {name: getattr(provider, name) for name in SETTINGS}
        return cls(**{**values, "modes": tuple(provider.modes), "measures": tuple(provider.measures)})

    @property
    def signed(self) -> bool:
        """Whether the platform signs what it sends the provider (verification callbacks, pushed grants)."""
        return self.verification == Verification.CALLBACK or self.grant_delivery == GrantDelivery.PUSH

    def column(self, name: str) -> Any:
        value = getattr(self, name)
        return list(value) if isinstance(value, tuple) else value


SETTINGS: Final = tuple(f.name for f in fields(ProviderSettings))


class ProviderChanges(TypedDict, total=False):
    """The settings :func:`update_provider` may change; a setting not given stays as it is."""

    name_ja: str
    name_en: str
    kind: str
    modes: Sequence[str]
    measures: Sequence[str]
    grant_schedule: str
    grant_schedule_days: int
    charge_deadline: dt.date | None
    application_deadline: dt.date | None
    pre_registration_required: bool
    security_code_count: int
    verification: str
    verify_url: str
    grant_delivery: str
    webhook_url: str
    webhook_secret: str
    active: bool


def check_settings(settings: ProviderSettings, *, changed: Collection[str] = SETTINGS) -> None:
    """The checks of a provider's settings, one function for onboarding (every setting) and editing (the
    settings that change, each with the ones it must agree with: modes with kind, the days with the schedule,
    a URL with its mode). Raises :class:`ProviderError` naming the field."""
    s = settings

    def checking(*names: str) -> bool:
        return any(name in changed for name in names)

    if checking("name_ja") and (not s.name_ja.strip() or len(s.name_ja) > 100):
        raise _invalid("name_ja", "事業者名（100文字以内）が必要です", "name_ja is required (at most 100)")
    if checking("name_en") and len(s.name_en) > 100:
        raise _invalid("name_en", "英語の事業者名は100文字以内です", "name_en: at most 100 characters")
    if checking("kind") and s.kind not in ProviderKind.values:
        raise _invalid(
            "kind",
            f"決済の種類は {', '.join(ProviderKind.values)} のいずれかです",
            f"kind must be one of {', '.join(ProviderKind.values)}",
        )
    if checking("modes", "kind"):
        if not s.modes or len(set(s.modes)) != len(s.modes) or set(s.modes) - set(TransactionKind.values):
            raise _invalid(
                "modes", "方式は charge と purchase から選びます", "modes: one or both of charge and purchase"
            )
        if s.kind in (ProviderKind.CREDIT, ProviderKind.DEBIT) and TransactionKind.CHARGE in s.modes:
            raise _invalid(
                "modes",
                "クレジットカード・デビットカードにチャージ方式はありません",
                "credit and debit cards earn on purchases only",
            )
    if checking("measures") and (
        not s.measures or len(set(s.measures)) != len(s.measures) or set(s.measures) - set(MEASURES)
    ):
        raise _invalid(
            "measures", "施策の指定が正しくありません", f"measures: a subset of {', '.join(MEASURES)}"
        )
    if checking("grant_schedule", "grant_schedule_days"):
        if s.grant_schedule not in _GRANT_DAYS:
            raise _invalid(
                "grant_schedule",
                "付与時期は immediate, monthly, days_after です",
                "grant_schedule: immediate|monthly|days_after",
            )
        low, high = _GRANT_DAYS[GrantSchedule(s.grant_schedule)]
        if not low <= s.grant_schedule_days <= high:
            raise _invalid(
                "grant_schedule_days",
                f"付与時期 {s.grant_schedule} の日数は {low}〜{high} です",
                f"grant_schedule_days for {s.grant_schedule} must be {low} to {high}",
            )
    if checking("security_code_count") and not 1 <= s.security_code_count <= 3:
        raise _invalid(
            "security_code_count", "セキュリティコードの数は1〜3です", "security_code_count must be 1 to 3"
        )
    if checking("verification") and s.verification not in Verification.values:
        raise _invalid(
            "verification", "口座確認の方式は registry か callback です", "verification: registry|callback"
        )
    if checking("grant_delivery") and s.grant_delivery not in GrantDelivery.values:
        raise _invalid("grant_delivery", "付与指示の方式は pull か push です", "grant_delivery: pull|push")
    for url, mode, needed, name in (
        (s.verify_url, "verification", s.verification == Verification.CALLBACK, "verify_url"),
        (s.webhook_url, "grant_delivery", s.grant_delivery == GrantDelivery.PUSH, "webhook_url"),
    ):
        if not checking(name, mode):
            continue
        if needed and not url:
            raise _invalid(name, f"{name} が必要です", f"{name} is required for this mode")
        if url and (problem := outbound_url_problem(url)):
            raise _invalid(name, f"{name} は https（または開発用のループバック）です", f"{name}: {problem}")
    if checking("webhook_secret") and s.webhook_secret and len(s.webhook_secret) < 16:
        raise _invalid(
            "webhook_secret", "署名の鍵は16文字以上です", "webhook_secret must be at least 16 characters"
        )


def _with_secret(settings: ProviderSettings) -> ProviderSettings:
    """A provider the platform signs for gets a generated secret when it has none."""
    if settings.signed and not settings.webhook_secret:
        return replace(settings, webhook_secret=secrets.token_urlsafe(32))
    return settings


def _audited(settings: ProviderSettings, names: Iterable[str]) -> dict[str, Any]:
    """Settings as the audit log keeps them: whether a webhook secret is set, never the secret itself."""
    shown: dict[str, Any] = {}
    for name in names:
        if name == "webhook_secret":
            shown["webhook_secret_set"] = bool(settings.webhook_secret)
        else:
            shown[name] = settings.column(name)
    return shown


def _locked(queryset: QuerySet[Provider]) -> QuerySet[Provider]:
    if connection.vendor == "postgresql":
        return queryset.select_for_update(no_key=True)
    return queryset  # SQLite: the IMMEDIATE transaction already holds the database's write lock


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
    wanted = ProviderSettings(
        name_ja=name_ja,
        name_en=name_en,
        kind=kind,
        modes=tuple(modes),
        measures=tuple(measures),
        grant_schedule=grant_schedule,
        grant_schedule_days=grant_schedule_days,
        charge_deadline=charge_deadline,
        application_deadline=application_deadline,
        pre_registration_required=pre_registration_required,
        security_code_count=security_code_count,
        verification=verification,
        verify_url=verify_url,
        grant_delivery=grant_delivery,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        active=True,
    )
    check_settings(wanted)
    wanted = _with_secret(wanted)
    with transaction.atomic(durable=True):
        if Provider.objects.filter(key=key).exists():
            raise ProviderError(
                "provider_exists",
                f"事業者 {key} はすでに登録されています",
                f"provider {key!r} exists",
                field="key",
            )
        provider = Provider.objects.create(key=key, **{name: wanted.column(name) for name in SETTINGS})
        record(
            who=who,
            action="provider_onboarded",
            subject_type="provider",
            subject_id=key,
            before=None,
            after=_audited(wanted, SETTINGS),
            at=now,
        )
        return provider


# ------------------------------------------------------------------------------------------------ editing


@dataclass(frozen=True, slots=True)
class ProviderUpdate:
    provider: Provider
    changed: tuple[str, ...]  # the settings that changed, in SETTINGS order (empty: nothing did)


def update_provider(
    *, provider_key: str, now: dt.datetime, who: Actor = PROGRAMME_OFFICE, **changes: Unpack[ProviderChanges]
) -> ProviderUpdate:
    """Change a provider's settings (any of :class:`ProviderChanges`; the key never changes).

    Each changed setting passes the checks onboarding uses (:func:`check_settings`), against the provider's
    other settings as they are. ``webhook_secret`` as in :func:`onboard_provider`: a new secret of at least
    16 characters, or ``""`` for none — a generated one when the provider is signed for, which is also what a
    provider switched to callback verification or pushed grants without a secret gets.

    Refused (decision Q14), with a :class:`ProviderError` naming the field: removing a mode or a measure that
    accepted applications (or phase-1 links carried over) use; changing the number of security codes while
    declared accounts are stored with the current number; moving a deadline earlier to a day already past.
    Changing nothing records nothing. One durable transaction with its ``provider_updated`` audit event.
    """
    requested: dict[str, Any] = dict(changes)
    for name in requested:
        if name not in SETTINGS:
            raise ProviderError(
                "not_editable",
                f"{name} は変更できません" + ("（事業者キーは変わりません）" if name == "key" else ""),
                f"{name} cannot be changed" + (" (a provider's key never changes)" if name == "key" else ""),
                field=name,
            )
    for name in ("modes", "measures"):
        if name in requested:
            requested[name] = tuple(requested[name])
    with transaction.atomic(durable=True):
        provider = _locked(Provider.objects.filter(key=provider_key)).first()
        if provider is None:
            raise ProviderError(
                "unknown_provider",
                f"事業者 {provider_key} は登録されていません",
                f"no provider {provider_key!r}",
                field="provider_key",
                status=404,
            )
        current = ProviderSettings.of(provider)
        wanted = replace(current, **requested)
        check_settings(wanted, changed=requested)
        wanted = _with_secret(wanted)
        changed = tuple(name for name in SETTINGS if getattr(wanted, name) != getattr(current, name))
        if not changed:
            return ProviderUpdate(provider, ())
        _refuse_taking_back(provider, current, wanted, today=now.astimezone(JST).date())
        Provider.objects.filter(pk=provider.pk).update(**{name: wanted.column(name) for name in changed})
        record(
            who=who,
            action="provider_updated",
            subject_type="provider",
            subject_id=provider.key,
            before=_audited(current, changed),
            after={**_audited(wanted, changed), "changed": list(changed)},
            at=now,
        )
        provider.refresh_from_db()
        return ProviderUpdate(provider, changed)


def _earning_mode(phase1_mode: str, modes: Sequence[str]) -> str:
    """The mode a phase-1 link carried over earns with (as applications.selectors.resident_history reads it)."""
    return phase1_mode or sorted(modes or TransactionKind.values)[0]


def _refuse_taking_back(
    provider: Provider, current: ProviderSettings, wanted: ProviderSettings, *, today: dt.date
) -> None:
    """What an edit may not take from residents who already rely on the provider (decision Q14)."""
    carried_over = Resident.objects.filter(phase1_account__startswith=f"{provider.key}/")

    def accepted(**lookup: Any) -> int:  # one filter(): the same application is accepted and matches
        return Provider.objects.filter(
            pk=provider.pk, accounts__applications__status=_ACCEPTED, **lookup
        ).count()

    if wanted.modes != current.modes:
        removed = set(current.modes or TransactionKind.values) - set(wanted.modes)
        applied = accepted(accounts__applications__mode__in=removed) if removed else 0
        moved = sum(
            1
            for mode in carried_over.values_list("phase1_mode", flat=True)
            if _earning_mode(mode, current.modes) != _earning_mode(mode, wanted.modes)
        )
        if applied or moved:
            names = ", ".join(sorted(removed))
            ja = [f"方式 {names} で受け付けた申込が{applied:,}件あります"] if applied else []
            en = [f"{applied:,} accepted application(s) use {names}"] if applied else []
            if moved:
                ja.append(f"第1弾から引き継いだ{moved:,}人の方式が変わります")
                en.append(f"the mode {moved:,} phase-1 link(s) carried over earn with would change")
            raise ProviderError(
                "mode_in_use",
                "。".join(ja) + "（申込後の方式は変えられません）",
                f"modes: {'; '.join(en)} (a mode cannot change after applying)",
                field="modes",
                status=409,
            )
    removed_measures = set(current.measures or MEASURES) - set(wanted.measures)
    if removed_measures:
        applied = accepted(accounts__applications__measure__in=removed_measures)
        carried = carried_over.count() if "premium" in removed_measures else 0
        if applied or carried:
            names = ", ".join(sorted(removed_measures))
            raise ProviderError(
                "measure_in_use",
                f"施策 {names} で受け付けた申込（第1弾からの引継ぎを含む）が{applied + carried:,}件あるため、外せません",
                f"measures: {applied + carried:,} accepted application(s) or phase-1 link(s) are for {names}",
                field="measures",
                status=409,
            )
    if wanted.security_code_count != current.security_code_count:
        declared = ProviderAccount.objects.filter(provider=provider, withdrawn_at__isnull=True).count()
        if declared:
            raise ProviderError(
                "security_codes_declared",
                f"登録済みの口座{declared:,}件はセキュリティコード{current.security_code_count}個で保存されて"
                "います。先に取り下げ、新しい数で登録し直してもらってください",
                f"security_code_count: {declared:,} declared accounts keep {current.security_code_count} "
                "code(s); withdraw them first and have the provider declare them again",
                field="security_code_count",
                status=409,
            )
    for name, label in (("charge_deadline", "対象取引の期限"), ("application_deadline", "申込受付の期限")):
        old, new = getattr(current, name), getattr(wanted, name)
        if new is not None and new < today and (old is None or new < old):
            raise ProviderError(
                "deadline_passed",
                f"{label}を、すでに過ぎた日（{new}）に早めることはできません（{today} 以降の日にしてください）",
                f"{name}: cannot be moved earlier to {new}, a day already past (today is {today})",
                field=name,
            )


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
