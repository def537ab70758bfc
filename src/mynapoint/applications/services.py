"""Application use cases: applying for a measure, registrations, account replacement, death, and the merge
of a duplicate resident. Each is one durable transaction that locks the rows owning its invariants and
writes its audit event. Every rule is asked of :mod:`mynapoint.rules`."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils.module_loading import import_string

from mynapoint.applications.adapters import provider_adapter
from mynapoint.applications.models import (
    AccountReplacement,
    ApplicationStatus,
    HealthInsuranceRegistration,
    HolderRole,
    LinkEvent,
    LinkEventKind,
    LinkSequence,
    LinkStatus,
    Measure,
    PaymentAccount,
    PointApplication,
    PublicFundRegistration,
)
from mynapoint.applications.selectors import (
    account_key,
    holder_key,
    parameters,
    person_of,
    resident_history,
    rules_provider,
)
from mynapoint.audit.services import Actor, record
from mynapoint.identity.models import Certificate, CertificateRenewal, Resident
from mynapoint.identity.mynumber import refuse_my_number
from mynapoint.identity.services import resolve
from mynapoint.providers.models import Provider
from mynapoint.rules.engine import ResidentEvaluator, feed
from mynapoint.rules.kana import kana_key
from mynapoint.rules.model import JST, Account, Apply, RegisterPublicFundAccount, jst_day

__all__ = [
    "ApplicationError",
    "ApplicationResult",
    "CardFacts",
    "apply_certificate_renewal",
    "apply_for_measure",
    "merge_duplicate_resident",
    "record_card_facts",
    "record_death",
    "record_health_insurance_registration",
    "record_public_fund_registration",
    "replace_lost_account",
]

_SERVICE_ID = re.compile(r"^[0-9A-Za-z\-]{1,64}$")
_SECURITY_CODE = re.compile(r"^[0-9A-Za-z]{1,16}$")


class ApplicationError(ValueError):
    """Input that cannot be decided on (not a rules rejection): says what was wrong, in Japanese and English."""

    def __init__(self, code: str, ja: str, en: str, *, field: str = "") -> None:
        self.code, self.ja, self.en, self.field = code, ja, en, field
        super().__init__(f"{code}: {en}" + (f" ({field})" if field else ""))


@dataclass(frozen=True, slots=True)
class ApplicationResult:
    application: PointApplication
    accepted: bool
    code: str | None
    message_ja: str
    message_en: str


def _locking() -> bool:
    return bool(settings.MYNAPOINT_APPLICATION_LOCKS)


def _after_read_hook() -> None:
    """A seam for the concurrency tests (settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK): called after the
    facts are read and before the decision is written."""
    hook = getattr(settings, "MYNAPOINT_APPLICATION_AFTER_READ_HOOK", None)
    if hook:
        import_string(hook)()


def _lock(queryset: Any) -> Any:
    if not _locking():
        return queryset
    if connection.vendor == "postgresql":
        return queryset.select_for_update(no_key=True, of=("self",))
    return queryset  # SQLite: the IMMEDIATE transaction already holds the database's write lock


def _provider_under_lock(pk: int, provider_key: str) -> Provider:
    """The provider's row, read inside the application's transaction under a lock that an edit of the provider
    (``update_provider``: ``FOR NO KEY UPDATE``) conflicts with and other applications do not: ``FOR SHARE``
    on PostgreSQL (``FOR KEY SHARE`` would not conflict with the edit). An edit in progress is waited for and
    its settings are read; an edit that comes later waits until this application has committed, and then
    counts it. SQLite: the IMMEDIATE transaction already holds the database's write lock."""
    if _locking() and connection.vendor == "postgresql":
        meta = Provider._meta
        table, column = connection.ops.quote_name(meta.db_table), connection.ops.quote_name(meta.pk.column)
        sql = f"SELECT * FROM {table} WHERE {column} = %s FOR SHARE"  # noqa: S608 - names from the model
        provider = next(iter(Provider.objects.raw(sql, [pk])), None)
    else:
        provider = Provider.objects.filter(pk=pk).first()
    if provider is None:  # pragma: no cover - providers are never deleted (PROTECT)
        raise ApplicationError(
            "unknown_provider",
            "決済サービスが見つかりません",
            f"unknown payment service {provider_key!r}",
            field="provider",
        )
    return provider


def _offered(provider: Provider, measure: str, security_codes: Sequence[str], mode: str | None) -> str:
    """What the provider's settings say of the application: the number of security codes, the measure and the
    mode must be ones it offers, and it must be taking part (``active``). Returns the mode (the provider's only
    one when none was chosen)."""
    if not provider.active:
        raise ApplicationError(
            "provider_inactive",
            "この決済サービスは現在マイナポイントの申込を受け付けていません",
            "this payment service is not taking Mynapoint applications at present (inactive)",
            field="provider",
        )
    if len(security_codes) != provider.security_code_count:
        raise ApplicationError(
            "security_code_count",
            f"この決済サービスのセキュリティコードは{provider.security_code_count}個です",
            f"this payment service uses {provider.security_code_count} security code(s)",
            field="security_codes",
        )
    if measure not in (provider.measures or Measure.values):
        raise ApplicationError(
            "measure_not_offered",
            "この決済サービスはこの施策の申込を受け付けていません",
            f"this payment service does not take applications for {measure}",
            field="measure",
        )
    modes = list(provider.modes or ["charge", "purchase"])
    if mode is None and len(modes) == 1:
        mode = modes[0]
    if mode is None or mode not in modes:
        raise ApplicationError(
            "choose_mode",
            "ポイントを受け取る方式（チャージまたはお買い物）を選んでください（申込後は変更できません）",
            f"choose how points are earned: one of {', '.join(modes)} (cannot be changed later)",
            field="mode",
        )
    return mode


def _holder_role(resident: Resident, holder_kana: str | None, holder_born: dt.date | None) -> str:
    """Whose account is it? Compare the provider's holder with the applicant and her representative."""

    def same(person: Resident | None) -> bool:
        return (
            person is not None
            and bool(person.kana)
            and holder_kana is not None
            and kana_key(person.kana) == kana_key(holder_kana)
            and person.born == holder_born
        )

    if same(resident):
        return HolderRole.SELF
    if same(resident.legal_representative):
        return HolderRole.REPRESENTATIVE
    return HolderRole.OTHER


def apply_for_measure(
    *,
    resident: Resident,
    measure: str,
    provider_key: str,
    service_id: str,
    security_codes: Sequence[str],
    mode: str | None,
    operated_by: Resident | None,
    present: Sequence[Resident],
    now: dt.datetime,
    who: Actor,
) -> ApplicationResult:
    """Apply for a measure with a payment account: verify the account, then let the rules decide.

    Raises :class:`ApplicationError` for input that cannot be decided on (unknown provider, wrong security
    code, missing profile); a decision of the rules, accepted or rejected, is recorded and returned.
    """
    if measure not in Measure.values:
        raise ApplicationError(
            "unknown_measure", "施策の指定が正しくありません", f"unknown measure {measure!r}", field="measure"
        )
    provider = Provider.objects.filter(key=provider_key).first()
    if provider is None:
        raise ApplicationError(
            "unknown_provider",
            "決済サービスが見つかりません",
            f"unknown payment service {provider_key!r}",
            field="provider",
        )
    refuse_my_number(service_id, where="service_id")
    if not _SERVICE_ID.match(service_id):
        raise ApplicationError(
            "bad_service_id",
            "決済サービスIDの形式が正しくありません",
            "the service ID has a wrong format",
            field="service_id",
        )
    if not 1 <= len(security_codes) <= 3 or not all(_SECURITY_CODE.match(c) for c in security_codes):
        raise ApplicationError(
            "bad_security_code",
            "セキュリティコードは1〜3個、英数字で入力してください",
            "give 1 to 3 alphanumeric security codes",
            field="security_codes",
        )
    _offered(provider, measure, security_codes, mode)  # fails fast; decided again under the lock
    if resident.born is None or not resident.kana:
        raise ApplicationError(
            "profile_missing",
            "申込の前に生年月日と氏名（カナ）を登録してください",
            "declare your birth date and kana name before applying",
            field="profile",
        )
    verification = provider_adapter().verify(
        provider=provider.key, service_id=service_id, security_codes=security_codes
    )
    if not verification.valid:
        raise ApplicationError(
            "account_not_verified",
            "決済サービスIDまたはセキュリティコードが正しくありません",
            "the service ID or security code is not correct",
            field="service_id",
        )
    operator = operated_by or resident
    # who may operate (the person, her representative, someone helping while she is present) is a rule: P4, P5
    with transaction.atomic(durable=True):
        # The provider's settings as the decision uses them: read again under a lock an edit of the provider
        # conflicts with, taken before any other lock of the use case (docs/architecture.md, Q14).
        provider = _provider_under_lock(provider.pk, provider_key)
        mode = _offered(provider, measure, security_codes, mode)
        account, _ = PaymentAccount.objects.get_or_create(provider=provider, service_id=service_id)
        # no select_related: the linked resident must be read after the lock is held, not with the row before it
        account = _lock(PaymentAccount.objects.filter(pk=account.pk)).get()
        me = _lock(Resident.objects.filter(pk=resident.pk)).select_related("legal_representative").get()
        role = _holder_role(me, verification.holder_kana, verification.holder_born)
        key = account_key(account)
        history = resident_history(me)
        params = parameters()
        # the decision takes this provider's modes and deadlines from the row read under the lock
        providers = {**history.providers, provider.key: rules_provider(provider)}
        accounts = dict(history.accounts)
        accounts[key] = Account(key, provider.key, holder_key(me, role, key), mode)
        day = jst_day(now)
        evaluator = ResidentEvaluator(
            person_of(me), params, accounts=accounts, providers=providers, as_of_day=day
        )
        feed(evaluator, history)
        present_keys = tuple(p.mykey_id for p in present) or (operator.mykey_id,)
        event = Apply(
            len(history.events), day, now, me.mykey_id, measure, key, operator.mykey_id, present_keys
        )
        linked_to = account.linked_resident.mykey_id if account.linked_resident else None
        _after_read_hook()
        decision = evaluator.on_apply(event, linked_to)
        explanation = decision.explanation
        application = PointApplication.objects.create(
            resident=me,
            measure=measure,
            account=account,
            mode=mode,
            holder_role=role,
            operated_by=operator,
            present=list(present_keys),
            channel=who.channel,
            terminal=who.terminal,
            actor=who.actor,
            applied_at=now,
            status=ApplicationStatus.ACCEPTED if decision.accepted else ApplicationStatus.REJECTED,
            rejection_code=decision.code or "",
            explanation_ja=explanation.text_ja(),
            explanation_en=explanation.text_en(),
            parameter_edition=params.edition,
        )
        if decision.accepted and account.linked_resident_id is None:
            PaymentAccount.objects.filter(pk=account.pk).update(linked_resident=me, linked_at=now)
        if decision.accepted:
            status = LinkStatus.STOPPED if me.died is not None else LinkStatus.LINKED
            _append_link_events(
                [_LinkChange(application, LinkEventKind.LINKED, status, me.pk, account)], at=now
            )
        record(
            who=who,
            action="point_application",
            subject_type="resident",
            subject_id=me.mykey_id,
            before=None,
            after={
                "application": application.pk,
                "measure": measure,
                "account": key,
                "operated_by": operator.mykey_id,
                "present": list(present_keys),
                "status": application.status,
                "code": decision.code,
            },
            at=now,
        )
    return ApplicationResult(
        application, decision.accepted, decision.code, explanation.ja[0], explanation.en[0]
    )


# ------------------------------------------------------------------------------------------ registrations


def _resident_by_mykey(mykey_id: str) -> Resident:
    resident = Resident.objects.filter(mykey_id=mykey_id).first()
    if resident is None:
        raise ApplicationError(
            "unknown_resident",
            "マイキーIDが見つかりません",
            f"unknown MyKey ID {mykey_id!r}",
            field="mykey_id",
        )
    return resident


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What J-LIS knows of a resident's card: the day it was applied for, whether online, the day it was issued
    (None: not yet)."""

    applied: dt.date
    applied_online: bool
    issued: dt.date | None


def record_card_facts(
    *, mykey_id: str, facts: CardFacts, now: dt.datetime, who: Actor
) -> tuple[Resident, bool]:
    """Record a resident's card facts from J-LIS (decision Q22). A MyKey ID merged into another resident gives
    its facts to that resident. The same facts again change nothing; other facts replace those recorded (J-LIS
    is the source of card facts: a correction, or the card issued since), with the change in the audit log;
    an issue day the feed does not know yet keeps the one recorded (the first login records it from the
    certificate). Refused: an issue day before the application day, a day after today (JST). Returns the
    resident and whether anything changed. Decisions already recorded are not re-decided (Q5)."""
    today = now.astimezone(JST).date()
    for name, day in (("card_applied", facts.applied), ("card_issued", facts.issued)):
        if day is not None and day > today:
            raise ApplicationError(
                "future_date",
                f"{day.isoformat()} は今日（{today.isoformat()}）より後の日付です",
                f"{name} {day.isoformat()} is after today ({today.isoformat()}, JST)",
                field=name,
            )
    if facts.issued is not None and facts.issued < facts.applied:
        raise ApplicationError(
            "issued_before_applied",
            "交付日が申請日より前です",
            f"card_issued {facts.issued.isoformat()} is before card_applied {facts.applied.isoformat()}",
            field="card_issued",
        )
    found = resolve(_resident_by_mykey(mykey_id))
    with transaction.atomic(durable=True):
        resident = Resident.objects.select_for_update().get(pk=found.pk)
        before = {
            "card_applied": resident.card_applied,
            "card_applied_online": resident.card_applied_online,
            "card_issued": resident.card_issued,
        }
        issued = facts.issued if facts.issued is not None else resident.card_issued
        if issued is not None and issued < facts.applied:
            raise ApplicationError(
                "issued_before_applied",
                "記録済みの交付日が申請日より前になります",
                f"the card_issued recorded ({issued.isoformat()}) is before card_applied {facts.applied.isoformat()}",
                field="card_applied",
            )
        after = {
            "card_applied": facts.applied,
            "card_applied_online": facts.applied_online,
            "card_issued": issued,
        }
        if after == before:
            return resident, False
        Resident.objects.filter(pk=resident.pk).update(**after)
        record(
            who=who,
            action="card_facts_recorded",
            subject_type="resident",
            subject_id=resident.mykey_id,
            before={k: v for k, v in before.items() if before[k] != after[k]},
            after={k: v for k, v in after.items() if before[k] != after[k]},
            at=now,
        )
        resident.refresh_from_db()
        return resident, True


def record_health_insurance_registration(
    *, mykey_id: str, registered_at: dt.datetime, external_id: str, source: str, now: dt.datetime, who: Actor
) -> tuple[HealthInsuranceRegistration, bool]:
    """Record a 健康保険証利用登録 from the feed. The same id again with the same facts is a no-op; with
    different facts it is an error. Returns the registration and whether it was new."""
    refuse_my_number(external_id, where="external_id")
    resident = _resident_by_mykey(mykey_id)
    with transaction.atomic(durable=True):
        existing = HealthInsuranceRegistration.objects.filter(external_id=external_id).first()
        if existing is not None:
            if existing.resident_id != resident.pk or existing.registered_at != registered_at:
                raise ApplicationError(
                    "conflict",
                    "同じ登録IDで内容の異なる登録がすでにあります",
                    f"registration {external_id!r} already exists with other facts",
                    field="external_id",
                )
            return existing, False
        registration = HealthInsuranceRegistration.objects.create(
            resident=resident,
            registered_at=registered_at,
            external_id=external_id,
            source=source,
            recorded_at=now,
        )
        record(
            who=who,
            action="health_insurance_registered",
            subject_type="resident",
            subject_id=resident.mykey_id,
            before=None,
            after={"registered_at": registered_at, "external_id": external_id, "source": source},
            at=now,
        )
        return registration, True


@dataclass(frozen=True, slots=True)
class BankAccount:
    bank_code: str
    branch_code: str
    account_type: str
    account_number: str


def validate_bank_account(
    *, bank_code: str, branch_code: str, account_type: str, account_number: str
) -> BankAccount:
    """Bank and branch codes from zengin-code; type 1 普通, 2 当座, 4 貯蓄; a 7-digit number."""
    from zengin_code import Bank

    bank = Bank.all.get(bank_code)
    if bank is None:
        raise ApplicationError(
            "unknown_bank",
            "金融機関コードが見つかりません",
            f"unknown bank code {bank_code!r}",
            field="bank_code",
        )
    if branch_code not in bank.branches:
        raise ApplicationError(
            "unknown_branch",
            "支店コードが見つかりません",
            f"bank {bank_code} has no branch {branch_code!r}",
            field="branch_code",
        )
    if account_type not in ("1", "2", "4"):
        raise ApplicationError(
            "bad_account_type",
            "預金種目は 1（普通）、2（当座）、4（貯蓄）です",
            "account type must be 1, 2 or 4",
            field="account_type",
        )
    if not re.fullmatch(r"\d{7}", account_number):
        raise ApplicationError(
            "bad_account_number",
            "口座番号は7桁の数字です",
            "account number must be 7 digits",
            field="account_number",
        )
    return BankAccount(bank_code, branch_code, account_type, account_number)


def yucho_to_bank_account(*, symbol: str, number: str) -> BankAccount:
    """ゆうちょ銀行 記号・番号 → 支店・口座番号 (通常貯金: 記号 1nnn0, 番号 ending in 1)."""
    if not (re.fullmatch(r"1\d{3}0", symbol) and re.fullmatch(r"\d{1,8}", number) and number.endswith("1")):
        raise ApplicationError(
            "bad_yucho",
            "ゆうちょ銀行の記号・番号の形式が正しくありません",
            "not a Japan Post Bank ordinary savings symbol/number",
            field="symbol",
        )
    return BankAccount("9900", symbol[1:3] + "8", "1", number.zfill(8)[:7])


def record_public_fund_registration(
    *,
    mykey_id: str,
    registered_at: dt.datetime,
    external_id: str,
    source: str,
    bank: BankAccount,
    holder_kana: str,
    now: dt.datetime,
    who: Actor,
) -> tuple[PublicFundRegistration, bool]:
    """Record a 公金受取口座登録; the rules check the holder's kana name against the resident's (§5)."""
    refuse_my_number(external_id, where="external_id")
    refuse_my_number(holder_kana, where="holder_kana")
    validate_bank_account(
        bank_code=bank.bank_code,
        branch_code=bank.branch_code,
        account_type=bank.account_type,
        account_number=bank.account_number,
    )
    resident = _resident_by_mykey(mykey_id)
    with transaction.atomic(durable=True):
        existing = PublicFundRegistration.objects.filter(external_id=external_id).first()
        if existing is not None:
            same = (
                existing.resident_id == resident.pk
                and existing.registered_at == registered_at
                and (existing.bank_code, existing.branch_code, existing.account_type, existing.account_number)
                == (bank.bank_code, bank.branch_code, bank.account_type, bank.account_number)
                and existing.holder_kana == holder_kana
            )
            if not same:
                raise ApplicationError(
                    "conflict",
                    "同じ登録IDで内容の異なる登録がすでにあります",
                    f"registration {external_id!r} already exists with other facts",
                    field="external_id",
                )
            return existing, False
        me = _lock(Resident.objects.filter(pk=resident.pk)).get()
        history = resident_history(me)  # the evaluator needs her accounts (a phase-1 link among them)
        evaluator = ResidentEvaluator(
            person_of(me), parameters(), accounts=history.accounts, providers=history.providers,
            as_of_day=jst_day(registered_at),
        )  # fmt: skip
        decision = evaluator.on_register_public_fund(
            RegisterPublicFundAccount(0, jst_day(registered_at), registered_at, me.mykey_id, holder_kana)
        )
        registration = PublicFundRegistration.objects.create(
            resident=me,
            registered_at=registered_at,
            external_id=external_id,
            source=source,
            bank_code=bank.bank_code,
            branch_code=bank.branch_code,
            account_type=bank.account_type,
            account_number=bank.account_number,
            holder_kana=holder_kana,
            status=ApplicationStatus.ACCEPTED if decision.accepted else ApplicationStatus.REJECTED,
            rejection_code=decision.code or "",
            holder_checked=decision.holder_checked,
            recorded_at=now,
        )
        record(
            who=who,
            action="public_fund_registered",
            subject_type="resident",
            subject_id=me.mykey_id,
            before=None,
            after={
                "registered_at": registered_at,
                "external_id": external_id,
                "bank": f"{bank.bank_code}-{bank.branch_code}",
                "status": registration.status,
                "code": decision.code,
                "holder_checked": decision.holder_checked,
            },
            at=now,
        )
        return registration, True


# ------------------------------------------------------------------------------------------ link changes

# Every change of a link is appended to its provider's link events (LinkEvent), which GET /links pages over:
# linked (an accepted application), voided and merged (a duplicate MyKey ID merged), stopped (a death), moved
# (a lost card replaced). Each event keeps the link's state after it. Positions are taken from the provider's
# LinkSequence row, whose update locks it until commit, after every other lock of the use case (so no cycle).


@dataclass(frozen=True, slots=True)
class _LinkChange:
    application: PointApplication
    kind: str  # LinkEventKind
    status: str  # LinkStatus after the change
    resident_id: int  # whose link it is after the change
    account: PaymentAccount  # the account it is on after the change
    previous_account_id: int | None = None


def _take_positions(provider_id: int, count: int) -> int:
    """Reserve ``count`` positions of a provider's link events; returns the last one. The sequence row stays
    locked until the transaction ends, so the provider's positions commit in the order they are taken."""
    if not LinkSequence.objects.filter(provider_id=provider_id).update(last=F("last") + count):
        try:
            with transaction.atomic():
                LinkSequence.objects.create(provider_id=provider_id, last=count)
        except IntegrityError:  # made at the same moment by another transaction (now committed)
            LinkSequence.objects.filter(provider_id=provider_id).update(last=F("last") + count)
        else:
            return count
    return int(LinkSequence.objects.values_list("last", flat=True).get(provider_id=provider_id))


def _append_link_events(changes: Sequence[_LinkChange], *, at: dt.datetime) -> None:
    by_provider: dict[int, list[_LinkChange]] = {}
    for change in changes:
        by_provider.setdefault(change.account.provider_id, []).append(change)
    for provider_id in sorted(by_provider):  # one order for every transaction: no deadlock between them
        batch = by_provider[provider_id]
        first = _take_positions(provider_id, len(batch)) - len(batch) + 1
        LinkEvent.objects.bulk_create(
            LinkEvent(
                provider_id=provider_id,
                position=first + offset,
                application=change.application,
                kind=change.kind,
                status=change.status,
                resident_id=change.resident_id,
                account=change.account,
                previous_account_id=change.previous_account_id,
                at=at,
            )
            for offset, change in enumerate(batch)
        )


def _current_links(
    applications: Sequence[PointApplication],
) -> list[tuple[PointApplication, PaymentAccount, str]]:
    """Each application's link now, from its last link event: the account it is on and its status (an
    application with no event yet is on its own account, linked unless voided)."""
    latest: dict[int, LinkEvent] = {}
    events = LinkEvent.objects.select_related("account").filter(application__in=[a.pk for a in applications])
    for event in events.order_by("application_id", "position"):
        latest[event.application_id] = event
    links: list[tuple[PointApplication, PaymentAccount, str]] = []
    for app in applications:
        last = latest.get(app.pk)
        if last is not None:
            links.append((app, last.account, last.status))
        else:
            voided = app.status == ApplicationStatus.VOIDED
            links.append((app, app.account, LinkStatus.VOIDED if voided else LinkStatus.LINKED))
    return links


def _accepted(resident_id: int) -> list[PointApplication]:
    return list(
        PointApplication.objects.select_related("account")
        .filter(resident_id=resident_id, status=ApplicationStatus.ACCEPTED)
        .order_by("id")
    )


def replace_lost_account(
    *,
    resident: Resident,
    provider_key: str,
    from_service_id: str,
    to_service_id: str,
    at: dt.datetime,
    who: Actor,
    now: dt.datetime | None = None,
) -> AccountReplacement:
    """A lost payment card replaced by its provider: the link and the cap carry over to the new account from
    ``at``; the links on the old account are announced as moved (recorded at ``now``, by default ``at``)."""
    provider = Provider.objects.get(key=provider_key)
    with transaction.atomic(durable=True):
        source = PaymentAccount.objects.get(provider=provider, service_id=from_service_id)
        target, _ = PaymentAccount.objects.get_or_create(provider=provider, service_id=to_service_id)
        target = _lock(PaymentAccount.objects.filter(pk=target.pk)).get()
        accepted = (
            target.linked_resident_id in (None, resident.pk) and source.linked_resident_id == resident.pk
        )
        replacement = AccountReplacement.objects.create(
            resident=resident, from_account=source, to_account=target, at=at, accepted=accepted
        )
        if accepted and target.linked_resident_id is None:
            PaymentAccount.objects.filter(pk=target.pk).update(linked_resident=resident, linked_at=at)
        if accepted:
            moved = [
                _LinkChange(app, LinkEventKind.MOVED, status, resident.pk, target, source.pk)
                for app, account, status in _current_links(_accepted(resident.pk))
                if account.pk == source.pk
            ]
            _append_link_events(moved, at=now or at)
        record(
            who=who,
            action="account_replaced",
            subject_type="resident",
            subject_id=resident.mykey_id,
            before={"account": account_key(source)},
            after={"account": account_key(target), "accepted": accepted},
            at=at,
        )
        return replacement


def record_death(*, resident: Resident, died: dt.date, now: dt.datetime, who: Actor) -> None:
    with transaction.atomic(durable=True):
        me = _lock(Resident.objects.filter(pk=resident.pk)).get()
        before = {"died": me.died}
        Resident.objects.filter(pk=me.pk).update(died=died)
        if me.died is None:  # 紐づけ停止: her links are announced as stopped
            stopped = [
                _LinkChange(app, LinkEventKind.STOPPED, LinkStatus.STOPPED, me.pk, account)
                for app, account, status in _current_links(_accepted(me.pk))
                if status == LinkStatus.LINKED
            ]
            _append_link_events(stopped, at=now)
        record(
            who=who,
            action="death_recorded",
            subject_type="resident",
            subject_id=me.mykey_id,
            before=before,
            after={"died": died},
            at=now,
        )


def merge_duplicate_resident(
    *, original: Resident, duplicate: Resident, now: dt.datetime, who: Actor
) -> None:
    """Merge a resident created by an unrecognised renewed certificate into the original (runs inside the
    caller's transaction). Applications for measures the original already has are voided, never granted twice."""
    from mynapoint.identity.models import OidcSubject

    taken = set(
        PointApplication.objects.filter(resident=original, status=ApplicationStatus.ACCEPTED).values_list(
            "measure", flat=True
        )
    )
    moved, voided = [], []
    links = {app.pk: (account, status) for app, account, status in _current_links(_accepted(duplicate.pk))}
    changes: list[_LinkChange] = []
    for app in PointApplication.objects.filter(resident=duplicate).order_by("applied_at", "id"):
        if app.status == ApplicationStatus.ACCEPTED and app.measure in taken:
            PointApplication.objects.filter(pk=app.pk).update(
                status=ApplicationStatus.VOIDED, rejection_code="already_applied"
            )
            voided.append(app.pk)
            account, _ = links[app.pk]
            changes.append(_LinkChange(app, LinkEventKind.VOIDED, LinkStatus.VOIDED, duplicate.pk, account))
            continue
        try:
            with transaction.atomic():
                PointApplication.objects.filter(pk=app.pk).update(resident=original)
        except IntegrityError:  # pragma: no cover - guarded by `taken`
            PointApplication.objects.filter(pk=app.pk).update(status=ApplicationStatus.VOIDED)
        if app.status == ApplicationStatus.ACCEPTED:
            taken.add(app.measure)
            # the link is now the original's: announced under her link_ref
            account, _ = links[app.pk]
            status = LinkStatus.STOPPED if original.died is not None else LinkStatus.LINKED
            changes.append(_LinkChange(app, LinkEventKind.MERGED, status, original.pk, account))
        moved.append(app.pk)
    _append_link_events(changes, at=now)
    PaymentAccount.objects.filter(linked_resident=duplicate).update(linked_resident=original)
    for model in (HealthInsuranceRegistration, PublicFundRegistration, AccountReplacement):
        model.objects.filter(resident=duplicate).update(resident=original)
    Certificate.objects.filter(resident=duplicate).update(resident=original)
    OidcSubject.objects.filter(resident=duplicate).update(resident=original)
    Resident.objects.filter(pk=duplicate.pk).update(merged_into=original)
    record(
        who=who,
        action="duplicate_resident_merged",
        subject_type="resident",
        subject_id=original.mykey_id,
        before={"duplicate": duplicate.mykey_id},
        after={"moved_applications": moved, "voided_applications": voided},
        at=now,
    )


# ------------------------------------------------------------------------------------------ renewals


def apply_certificate_renewal(
    *, old_issuer: str, old_serial: str, new_issuer: str, new_serial: str, now: dt.datetime, who: Actor
) -> str:
    """Record a renewal (old → new certificate) so that both map to the same MyKey ID. Idempotent.

    If the new certificate already logged in on its own (the renewal notice came late) its resident is a
    duplicate: it is merged into the original, and its applications move over or, where the original already
    has one for the measure, are voided (the 506 duplicate applications of 2022). Returns what happened.
    """
    for value, where in ((old_serial, "old_serial"), (new_serial, "new_serial")):
        refuse_my_number(value, where=where)
    with transaction.atomic(durable=True):
        _, created = CertificateRenewal.objects.get_or_create(
            old_issuer=old_issuer,
            old_serial=old_serial,
            new_issuer=new_issuer,
            new_serial=new_serial,
            defaults={"received_at": now},
        )
        if not created:
            return "already_known"
        old = (
            Certificate.objects.select_related("resident")
            .filter(issuer=old_issuer, serial=old_serial)
            .first()
        )
        new = (
            Certificate.objects.select_related("resident")
            .filter(issuer=new_issuer, serial=new_serial)
            .first()
        )
        outcome = "recorded"
        if old is not None and new is not None:
            original, duplicate = resolve(old.resident), resolve(new.resident)
            if original.pk != duplicate.pk:
                merge_duplicate_resident(original=original, duplicate=duplicate, now=now, who=who)
                outcome = "merged"
            Certificate.objects.filter(pk=old.pk).update(renewed_to=new)
        elif old is not None:
            outcome = "waiting_for_first_login"
        record(
            who=who,
            action="certificate_renewed",
            subject_type="certificate",
            subject_id=f"{old_issuer}#{old_serial}",
            before=None,
            after={"new": f"{new_issuer}#{new_serial}", "outcome": outcome},
            at=now,
        )
        return outcome
