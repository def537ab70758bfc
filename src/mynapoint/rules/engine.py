"""The programme rules: who may apply, and what each resident has earned on a given day.

One :class:`ResidentEvaluator` holds one resident's state and takes that resident's events in time order.
Both ways of running the rules use it, so a rule is decided in one place:

* :func:`evaluate_resident` runs one resident's history (the per-resident path of the batch and the platform);
* :func:`evaluate_world` runs several people's events together (scenarios), routing each event to its
  resident and keeping the one cross-resident fact the rules need: which person an account is linked to.

The order of the application checks is program.md D5; the earning rules are D2–D4.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from mynapoint.rules.codes import (
    APPLICATION_REJECTIONS,
    MEASURE_LABELS,
    REGISTRATION_REJECTIONS,
    STATUS_LABELS,
    Status,
)
from mynapoint.rules.kana import kana_key
from mynapoint.rules.model import (
    MEASURES,
    Account,
    Apply,
    Event,
    Person,
    Provider,
    Refund,
    RegisterHealthInsurance,
    RegisterPublicFundAccount,
    ReplaceAccount,
    Transaction,
)
from mynapoint.rules.parameters import Parameters, ParameterValue

__all__ = [
    "ApplicationDecision",
    "Explanation",
    "Link",
    "MeasureOutcome",
    "RegistrationDecision",
    "ResidentEvaluator",
    "ResidentHistory",
    "ResidentResult",
    "WorldOutcome",
    "evaluate_resident",
    "evaluate_world",
    "evaluator_for",
    "feed",
]

PREMIUM: Final = "premium"
HEALTH: Final = "health_insurance"
PUBLIC_FUND: Final = "public_fund"
_MEASURE_INDEX: Final[dict[str, int]] = {m: i for i, m in enumerate(MEASURES)}

_DEFAULT_PROVIDER_CACHE: dict[str, Provider] = {}


def _default_provider(key: str) -> Provider:
    """A provider the facts do not describe: both modes, no deadlines of its own (scenarios.md)."""
    provider = _DEFAULT_PROVIDER_CACHE.get(key)
    if provider is None:
        provider = _DEFAULT_PROVIDER_CACHE[key] = Provider(key=key)
    return provider


def _d(day: int) -> str:
    return dt.date.fromordinal(day).isoformat()


def _yen(amount: int) -> str:
    return f"{amount:,}"


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a result is what it is: sentences in Japanese and English, the parameter values and the facts."""

    ja: tuple[str, ...]
    en: tuple[str, ...]
    parameters: tuple[ParameterValue, ...] = ()
    facts: tuple[str, ...] = ()

    def text_ja(self) -> str:
        lines = list(self.ja)
        if self.facts:
            lines.append("根拠となった記録: " + "、".join(self.facts))
        lines.extend(
            f"パラメータ {p.label_ja} = {_fmt_value(p.value)}（出典: {p.source}）" for p in self.parameters
        )
        return "\n".join(lines)

    def text_en(self) -> str:
        lines = list(self.en)
        if self.facts:
            lines.append("records used: " + ", ".join(self.facts))
        lines.extend(
            f"parameter {p.name} = {_fmt_value(p.value)} (source: {p.source})" for p in self.parameters
        )
        return "\n".join(lines)


def _fmt_value(value: object) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    if value is None:
        return "なし"
    return str(value)


_Note = Callable[[], tuple[tuple[str, ...], str, str]]


def _recorded_note() -> tuple[tuple[str, ...], str, str]:
    return (), "記録済みの判定（再判定していません）", "recorded decision (not decided again)"


@dataclass(slots=True)  # not frozen: built once per event on the hot path
class ApplicationDecision:
    event: Apply
    code: str | None  # None: accepted
    params: Parameters = field(repr=False, compare=False)
    note: _Note = field(repr=False, compare=False)

    @property
    def accepted(self) -> bool:
        return self.code is None

    def as_expected_form(self) -> str | dict[str, str]:
        return "accepted" if self.code is None else {"rejected": self.code}

    @property
    def explanation(self) -> Explanation:
        ev, code = self.event, self.code
        params_used, note_ja, note_en = self.note()
        label = MEASURE_LABELS[ev.measure][0]
        if code is None:
            ja = f"{label}の申込（{_d(ev.day)}、{ev.account}）を受け付けました"
            en = f"application for {ev.measure} on {_d(ev.day)} with {ev.account} accepted"
        else:
            ja = f"{label}の申込（{_d(ev.day)}）は受け付けられません: {APPLICATION_REJECTIONS[code][0]}"
            en = f"application for {ev.measure} on {_d(ev.day)} rejected ({code}): {APPLICATION_REJECTIONS[code][1]}"
        return Explanation(
            ja=(ja, note_ja) if note_ja else (ja,),
            en=(en, note_en) if note_en else (en,),
            parameters=tuple(self.params.value(n) for n in params_used),
            facts=(f"申込 {ev.at} {ev.person} {ev.measure} {ev.account}",),
        )


@dataclass(slots=True)  # not frozen: built once per event on the hot path
class RegistrationDecision:
    event: RegisterPublicFundAccount
    code: str | None
    holder_checked: bool
    person_kana: str | None = field(repr=False)

    @property
    def accepted(self) -> bool:
        return self.code is None

    def as_expected_form(self) -> str | dict[str, str]:
        return "accepted" if self.code is None else {"rejected": self.code}

    @property
    def explanation(self) -> Explanation:
        ev, code, checked = self.event, self.code, self.holder_checked
        if code is None:
            ja = f"公金受取口座の登録（{_d(ev.day)}）を受け付けました" + (
                "" if checked else "（名義は未照合）"
            )
            en = f"public-fund account registration of {_d(ev.day)} accepted" + (
                "" if checked else " (holder name not checked: a kana name is missing)"
            )
        else:
            ja = f"公金受取口座の登録（{_d(ev.day)}）は受け付けられません: {REGISTRATION_REJECTIONS[code][0]}"
            en = f"registration of {_d(ev.day)} rejected ({code}): {REGISTRATION_REJECTIONS[code][1]}"
        return Explanation(
            ja=(ja, f"口座名義カナ: {ev.holder_kana or '不明'}、本人カナ: {self.person_kana or '不明'}"),
            en=(en,),
            facts=(f"公金受取口座登録 {ev.at}",),
        )


@dataclass(slots=True)
class Link:
    """An accepted application: a measure linked to a payment account from an event on."""

    measure: str
    account: str
    mode: str
    seq: int
    day: int
    carried_over: bool = False  # a phase-1 link carried into phase 2 (program.md D2)
    # every account the link has had, with the event seq from which it counts (replacements, §4)
    accounts: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MeasureOutcome:
    measure: str
    earned: int
    status: str
    explanation: Explanation


@dataclass(slots=True)  # not frozen: built once per event on the hot path
class ResidentResult:
    """What one resident has earned at the end of ``as_of`` (JST), per measure, with statuses."""

    person: str
    as_of_day: int
    premium: int
    health_insurance: int
    public_fund: int
    statuses: tuple[str, str, str]
    evaluator: ResidentEvaluator = field(repr=False, compare=False)

    @property
    def earned(self) -> dict[str, int]:
        return {PREMIUM: self.premium, HEALTH: self.health_insurance, PUBLIC_FUND: self.public_fund}

    @property
    def total(self) -> int:
        return self.premium + self.health_insurance + self.public_fund

    def status(self, measure: str) -> str:
        return self.statuses[_MEASURE_INDEX[measure]]

    def outcomes(self) -> list[MeasureOutcome]:
        """Each measure with its explanation (built on demand: the batch path does not need it)."""
        return self.evaluator.outcomes()


# ---------------------------------------------------------------------------------------------- evaluator


class ResidentEvaluator:
    """One resident's state under the rules. Feed it the resident's events in time order."""

    __slots__ = (
        "_accounts",
        "_providers",
        "applications",
        "as_of_day",
        "cap_remaining",
        "charge_deadline_day",
        "counted",
        "eligible",
        "health_registration",
        "ignored",
        "links",
        "net",
        "params",
        "person",
        "premium_account",
        "premium_mode",
        "premium_start_day",
        "public_fund_registration",
        "refunds",
        "refused_replacements",
        "registrations",
        "replacements",
    )

    def __init__(
        self,
        person: Person,
        params: Parameters,
        *,
        accounts: Mapping[str, Account],
        providers: Mapping[str, Provider],
        as_of_day: int,
    ) -> None:
        self.person = person
        self.params = params
        self._accounts = accounts
        self._providers = providers
        self.as_of_day = as_of_day
        self.links: dict[str, Link] = {}
        self.applications: list[ApplicationDecision] = []
        self.registrations: list[RegistrationDecision] = []
        self.health_registration: RegisterHealthInsurance | None = None
        self.public_fund_registration: RegisterPublicFundAccount | None = None
        self.eligible: dict[str, int] = {}  # txid -> amount still counted after refunds
        self.net = 0
        self.counted: list[Transaction] = []
        self.refunds: list[Refund] = []
        self.ignored: list[tuple[Transaction, str]] = []
        self.replacements: list[ReplaceAccount] = []
        self.refused_replacements: list[ReplaceAccount] = []
        self.premium_account: str | None = None
        self.premium_mode = ""
        self.premium_start_day = 0
        self.charge_deadline_day = 0
        cap = params.premium_cap
        phase1 = person.phase1
        self.cap_remaining = max(0, cap - phase1.points) if phase1 else cap
        if (
            phase1 is not None
            and self.cap_remaining > 0
            and phase1.applied.toordinal() <= params.phase1_application_cutoff_day
        ):
            account = accounts[phase1.account]
            self._link(
                Link(PREMIUM, phase1.account, account.mode, -1, params.phase2_start_day, carried_over=True)
            )

    # ------------------------------------------------------------------ applications (D5)

    def on_apply(self, ev: Apply, account_linked_to: str | None) -> ApplicationDecision:
        """Decide a point application. ``account_linked_to`` is the person the account is linked to, if any."""
        if ev.recorded:
            code, note = ev.recorded_code, _recorded_note
        else:
            code, note = self._check(ev, account_linked_to)
        if code is None:
            self._link(Link(ev.measure, ev.account, self._accounts[ev.account].mode, ev.seq, ev.day))
        decision = ApplicationDecision(ev, code, self.params, note)
        self.applications.append(decision)
        return decision

    def _check(self, ev: Apply, account_linked_to: str | None) -> tuple[str | None, _Note]:
        """The first failing check of D5, and a note that explains it (built only when asked for)."""
        p = self.params
        person = self.person
        day = ev.day
        if person.died_day is not None and person.died_day <= day:
            return "person_deceased", lambda: ((), f"死亡日 {person.died}", f"died on {person.died}")
        if person.card_issued_day is None or person.card_issued_day > day:
            got = person.card_issued or "未受取"
            return "card_not_issued", lambda: ((), f"カード受取日: {got}", f"card received: {got}")
        deadline = (
            p.card_application_online_deadline_day
            if person.card_applied_online
            else p.card_application_deadline_day
        )
        if person.card_applied_day is None or person.card_applied_day > deadline:
            applied = person.card_applied or "申請なし"
            return "card_applied_after_deadline", lambda: (
                ("card_application_deadline", "card_application_online_grace_day"),
                f"カード申請日: {applied}、期限: {_d(deadline)}",
                f"card applied for: {applied}, deadline: {_d(deadline)}",
            )
        start_name = "phase2_start" if ev.measure == PREMIUM else "registration_measures_start"
        start_day = p.phase2_start_day if ev.measure == PREMIUM else p.registration_measures_start_day
        if day < start_day:
            return "application_period_not_started", lambda: (
                (start_name,),
                f"受付開始日: {_d(start_day)}",
                f"opens on {_d(start_day)}",
            )
        if day > p.point_application_deadline_day:
            return "application_period_ended", lambda: (
                ("point_application_deadline",),
                f"申込期限: {p.point_application_deadline}",
                f"deadline: {p.point_application_deadline}",
            )
        account = self._accounts[ev.account]
        provider = self._providers.get(account.provider) or _default_provider(account.provider)
        if provider.application_deadline_day is not None and day > provider.application_deadline_day:
            return "provider_application_closed", lambda: (
                (),
                f"{provider.key} の申込受付終了日: {provider.application_deadline}",
                f"{provider.key} closed applications after {provider.application_deadline}",
            )
        if ev.measure == PREMIUM and self.cap_remaining == 0:
            points = person.phase1.points if person.phase1 else 0
            return "phase1_completed", lambda: (
                ("premium_cap",),
                f"第1弾で受け取ったポイント: {_yen(points)}",
                f"phase-1 points received: {points}",
            )
        if ev.measure in self.links:
            prior = self.links[ev.measure]
            how = "第1弾からの引継ぎ" if prior.carried_over else "申込"
            return "already_applied", lambda: (
                (),
                f"既存の紐づけ: {how}（{prior.account}）",
                f"existing link: {prior.account}",
            )
        age = person.age_on(day)
        minor = age < p.minor_age
        representative = person.legal_representative
        if account.holder != person.key and not (
            minor and representative and account.holder == representative
        ):
            return "account_not_own", lambda: (
                ("minor_age",),
                f"口座名義: {account.holder}、申込者: {person.key}（{age}歳）",
                f"account holder: {account.holder}, applicant: {person.key} (aged {age})",
            )
        if age < p.representative_only_age:
            if representative is None or ev.by != representative or representative not in ev.present:
                return "representative_not_present", lambda: (
                    ("representative_only_age",),
                    f"{age}歳のため法定代理人による申込が必要です（申込者: {ev.by}）",
                    f"aged {age}: the legal representative must apply (operated by {ev.by})",
                )
        elif person.key not in ev.present:
            return "representative_not_present", lambda: (
                ("representative_only_age",),
                f"{age}歳の方の申込は本人の立会いが必要です",
                f"aged {age}: the person must be present",
            )
        elif minor and account.holder != person.key and account.holder not in ev.present:
            return "representative_not_present", lambda: (
                ("minor_age",),
                f"{age}歳で法定代理人名義の決済サービスを使うため、代理人の立会いが必要です",
                f"aged {age} using the representative's account: the representative must be present",
            )
        if account_linked_to is not None and account_linked_to != person.key:
            return "account_linked_to_another_person", lambda: (
                (),
                f"{ev.account} はすでに別の方（{account_linked_to}）に紐づけられています",
                f"{ev.account} is linked to {account_linked_to}",
            )
        return None, lambda: ((start_name, "point_application_deadline", "card_application_deadline"), "", "")

    def _link(self, link: Link) -> None:
        link.accounts.append((link.account, link.seq))
        self.links[link.measure] = link
        if link.measure == PREMIUM:
            account = self._accounts[link.account]
            provider = self._providers.get(account.provider) or _default_provider(account.provider)
            self.premium_account = link.account
            self.premium_mode = link.mode
            self.premium_start_day = link.day
            cd = provider.charge_deadline_day
            self.charge_deadline_day = cd if cd is not None else self.params.point_application_deadline_day

    # ------------------------------------------------------------------ 施策1 transactions (D2, D3)

    def on_transaction(self, ev: Transaction) -> bool:
        """Count a charge or purchase if it is eligible; return whether it counts."""
        if ev.account != self.premium_account or ev.day > self.as_of_day:
            return False
        if ev.kind != self.premium_mode:
            self.ignored.append((ev, "mode"))
            return False
        if ev.day > self.charge_deadline_day:
            self.ignored.append((ev, "deadline"))
            return False
        if ev.day < self.premium_start_day:
            self.ignored.append((ev, "before_link"))
            return False
        died = self.person.died_day
        if died is not None and ev.day >= died:
            self.ignored.append((ev, "deceased"))
            return False
        self.eligible[ev.txid] = ev.amount
        self.net += ev.amount
        self.counted.append(ev)
        return True

    def on_refund(self, ev: Refund) -> None:
        """A refund of a counted transaction lowers the net amount, never below zero (D3)."""
        if ev.day > self.as_of_day:
            return
        remaining = self.eligible.get(ev.of)
        if remaining is None:
            return
        cut = ev.amount if ev.amount < remaining else remaining
        self.eligible[ev.of] = remaining - cut
        self.net -= cut
        self.refunds.append(ev)

    # ------------------------------------------------------------------ registrations (§5, D4)

    def on_register_health_insurance(self, ev: RegisterHealthInsurance) -> None:
        if self.health_registration is None and ev.day <= self.as_of_day:
            self.health_registration = ev

    def on_register_public_fund(self, ev: RegisterPublicFundAccount) -> RegistrationDecision:
        person_kana = self.person.kana
        checked = person_kana is not None and ev.holder_kana is not None
        code = None
        if ev.recorded:
            code = ev.recorded_code
        elif checked and kana_key(person_kana or "") != kana_key(ev.holder_kana or ""):
            code = "holder_name_mismatch"
        decision = RegistrationDecision(ev, code, checked, person_kana)
        self.registrations.append(decision)
        if code is None and self.public_fund_registration is None and ev.day <= self.as_of_day:
            self.public_fund_registration = ev
        return decision

    def on_replace(self, ev: ReplaceAccount, account_linked_to: str | None = None) -> bool:
        """A lost card replaced: the link, its mode and the cap carry over to the new account (§4).

        A replacement onto an account linked to another person is refused (one account, one person)."""
        self.replacements.append(ev)
        if account_linked_to is not None and account_linked_to != self.person.key:
            self.refused_replacements.append(ev)
            return False
        for link in self.links.values():
            if link.account == ev.from_account:
                link.account = ev.to_account
                link.accounts.append((ev.to_account, ev.seq))
        if self.premium_account == ev.from_account:
            self.premium_account = ev.to_account
        return True

    # ------------------------------------------------------------------ results

    def result(self) -> ResidentResult:
        premium, premium_status = self._premium()
        health, health_status = self._registration(
            HEALTH, self.health_registration, self.params.health_insurance_confirmation_lag_days
        )
        fund, fund_status = self._registration(
            PUBLIC_FUND, self.public_fund_registration, self.params.public_fund_confirmation_lag_days
        )
        return ResidentResult(
            self.person.key,
            self.as_of_day,
            premium,
            health,
            fund,
            (premium_status, health_status, fund_status),
            self,
        )

    def _premium(self) -> tuple[int, str]:
        cap = self.cap_remaining
        if cap == 0:
            return 0, Status.CAP_REACHED
        link = self.links.get(PREMIUM)
        if link is None or link.day > self.as_of_day:
            return 0, Status.NOT_APPLIED
        earned = self.net * self.params.premium_rate_percent // 100
        if earned >= cap:
            return cap, Status.CAP_REACHED
        died = self.person.died_day
        if died is not None and died <= self.as_of_day:
            return earned, Status.STOPPED
        return earned, Status.APPLIED

    def _registration(self, measure: str, registration: Event | None, lag: int) -> tuple[int, str]:
        link = self.links.get(measure)
        if link is None or link.day > self.as_of_day:
            return 0, Status.NOT_APPLIED
        if registration is None or registration.day > self.params.point_application_deadline_day:
            died = self.person.died_day
            if died is not None and died <= self.as_of_day:
                return 0, Status.STOPPED
            return 0, Status.APPLIED
        confirmed_day = max(registration.day, link.day) + lag
        died = self.person.died_day
        if died is not None and confirmed_day >= died:
            return 0, Status.STOPPED if died <= self.as_of_day else Status.PENDING
        if confirmed_day > self.as_of_day:
            return 0, Status.PENDING
        return self.params.registration_points, Status.CONFIRMED

    def outcomes(self) -> list[MeasureOutcome]:
        result = self.result()
        return [
            MeasureOutcome(PREMIUM, result.premium, result.statuses[0], self._explain_premium(result)),
            MeasureOutcome(
                HEALTH,
                result.health_insurance,
                result.statuses[1],
                self._explain_registration(
                    HEALTH, result.health_insurance, result.statuses[1], self.health_registration
                ),
            ),
            MeasureOutcome(
                PUBLIC_FUND,
                result.public_fund,
                result.statuses[2],
                self._explain_registration(
                    PUBLIC_FUND, result.public_fund, result.statuses[2], self.public_fund_registration
                ),
            ),
        ]

    def _explain_premium(self, result: ResidentResult) -> Explanation:
        p = self.params
        label = MEASURE_LABELS[PREMIUM][0]
        status = result.statuses[0]
        head_ja = f"{label}: {_yen(result.premium)}ポイント（{status}）"
        head_en = f"premium: {result.premium} points ({STATUS_LABELS[status]})"
        ja = [head_ja]
        en = [head_en]
        phase1 = self.person.phase1
        if phase1 is not None:
            ja.append(
                f"第1弾で {_yen(phase1.points)} ポイント受取済み: 残りの上限は {_yen(self.cap_remaining)}"
            )
            en.append(f"phase 1 paid {phase1.points} points: {self.cap_remaining} remain under the cap")
        link = self.links.get(PREMIUM)
        if link is not None and link.day <= self.as_of_day:
            how = "第1弾の紐づけを引継ぎ" if link.carried_over else f"{_d(link.day)} に申込"
            mode = "チャージ" if link.mode == "charge" else "お買い物"
            accounts = [a for a, _ in link.accounts]
            ja.append(f"{how}（{' → '.join(accounts)}、{mode}で付与）")
            en.append(f"linked on {_d(link.day)} to {' -> '.join(accounts)}, earning on {link.mode}")
            raw = self.net * p.premium_rate_percent // 100
            ja.append(
                f"対象額の累計 {_yen(self.net)}円 × {p.premium_rate_percent}% = {_yen(raw)}（切り捨て）、"
                f"上限 {_yen(self.cap_remaining)} までで {_yen(result.premium)}"
            )
            en.append(
                f"net eligible {self.net} yen x {p.premium_rate_percent}% = {raw} (rounded down), "
                f"capped at {self.cap_remaining}: {result.premium}"
            )
            reasons = {
                "mode": ("申込時に選んだ方式と異なる取引", "of the other mode"),
                "deadline": ("チャージ・お買い物の期限後の取引", "after the charge deadline"),
                "before_link": ("紐づけ開始前の取引", "before the link"),
                "deceased": ("死亡日以降の取引", "on or after the day of death"),
            }
            for tx, why in self.ignored:
                ja.append(f"対象外: {tx.txid}（{tx.at}、{_yen(tx.amount)}円）{reasons[why][0]}")
                en.append(f"not counted: {tx.txid} ({tx.at}, {tx.amount} yen) {reasons[why][1]}")
        facts = [f"{tx.kind} {tx.txid} {tx.at} {_yen(tx.amount)}円" for tx in self.counted]
        facts += [f"返金 {r.of} {r.at} {_yen(r.amount)}円" for r in self.refunds]
        used = ("premium_rate_percent", "premium_cap", "phase2_start", "point_application_deadline")
        return Explanation(tuple(ja), tuple(en), tuple(p.value(n) for n in used), tuple(facts))

    def _explain_registration(
        self, measure: str, earned: int, status: str, registration: Event | None
    ) -> Explanation:
        p = self.params
        label = MEASURE_LABELS[measure][0]
        ja = [f"{label}: {_yen(earned)}ポイント（{status}）"]
        en = [f"{measure}: {earned} points ({STATUS_LABELS[status]})"]
        link = self.links.get(measure)
        facts: list[str] = []
        if link is not None and link.day <= self.as_of_day:
            facts.append(f"申込 {_d(link.day)} {link.account}")
        else:
            ja.append("ポイントの申込がありません（登録済みでも申込が必要です）")
            en.append("no point application (registering alone does not earn points)")
        if registration is not None:
            facts.append(f"登録 {registration.at}")
            if registration.day > p.point_application_deadline_day:
                ja.append(
                    f"登録日 {_d(registration.day)} がポイント申込期限 {p.point_application_deadline} の後です"
                )
                en.append(
                    f"registered on {_d(registration.day)}, after the deadline {p.point_application_deadline}"
                )
        else:
            ja.append("期日までの登録がありません")
            en.append("no registration by the evaluation day")
        lag_name = (
            "public_fund_confirmation_lag_days"
            if measure == PUBLIC_FUND
            else "health_insurance_confirmation_lag_days"
        )
        used = ("registration_points", lag_name, "point_application_deadline")
        return Explanation(tuple(ja), tuple(en), tuple(p.value(n) for n in used), tuple(facts))


# ---------------------------------------------------------------------------------------------- runners


@dataclass(frozen=True, slots=True)
class ResidentHistory:
    """Everything the rules need about one resident.

    ``events`` are the resident's own events and the transactions and refunds on the accounts involved, in
    time order. ``linked_elsewhere`` maps an account to ``(seq, person)`` when another person linked it at
    event ``seq`` (the one fact about other residents the rules depend on).
    """

    person: Person
    accounts: Mapping[str, Account]
    providers: Mapping[str, Provider]
    events: Sequence[Event]
    linked_elsewhere: Mapping[str, tuple[int, str]] = field(default_factory=dict)


def feed(evaluator: ResidentEvaluator, history: ResidentHistory) -> None:
    """Feed a resident's history to an evaluator, in order (the per-resident path)."""
    elsewhere = history.linked_elsewhere
    on_transaction, on_refund = evaluator.on_transaction, evaluator.on_refund
    # exact type checks: cheaper than isinstance on the batch hot path (the event classes are final)
    for ev in history.events:
        kind = type(ev)
        if kind is Transaction:
            on_transaction(ev)  # type: ignore[arg-type]
        elif kind is Apply:
            other = elsewhere.get(ev.account)  # type: ignore[attr-defined]
            evaluator.on_apply(ev, other[1] if other is not None and other[0] < ev.seq else None)  # type: ignore[arg-type]
        elif kind is Refund:
            on_refund(ev)  # type: ignore[arg-type]
        elif kind is RegisterHealthInsurance:
            evaluator.on_register_health_insurance(ev)  # type: ignore[arg-type]
        elif kind is RegisterPublicFundAccount:
            evaluator.on_register_public_fund(ev)  # type: ignore[arg-type]
        elif kind is ReplaceAccount:
            other = elsewhere.get(ev.to_account)  # type: ignore[attr-defined]
            evaluator.on_replace(ev, other[1] if other is not None and other[0] < ev.seq else None)  # type: ignore[arg-type]


def evaluator_for(history: ResidentHistory, params: Parameters, *, as_of_day: int) -> ResidentEvaluator:
    evaluator = ResidentEvaluator(
        history.person, params, accounts=history.accounts, providers=history.providers, as_of_day=as_of_day
    )
    feed(evaluator, history)
    return evaluator


def evaluate_resident(history: ResidentHistory, params: Parameters, *, as_of_day: int) -> ResidentResult:
    """What one resident has earned at the end of ``as_of_day``, with statuses (the per-resident path)."""
    return evaluator_for(history, params, as_of_day=as_of_day).result()


@dataclass(frozen=True, slots=True)
class WorldOutcome:
    applications: list[ApplicationDecision]
    registrations: list[RegistrationDecision]
    residents: dict[str, ResidentResult]


def evaluate_world(
    *,
    people: Iterable[Person],
    accounts: Mapping[str, Account],
    providers: Mapping[str, Provider],
    events: Iterable[Event],
    params: Parameters,
    as_of: dt.date,
) -> WorldOutcome:
    """Run several people's events together, in order (scenarios and small populations)."""
    as_of_day = as_of.toordinal()
    evaluators: dict[str, ResidentEvaluator] = {}
    linked_to: dict[str, str] = {}  # account -> person it is linked to
    for person in people:
        evaluators[person.key] = ResidentEvaluator(
            person, params, accounts=accounts, providers=providers, as_of_day=as_of_day
        )
        if person.phase1 is not None:
            linked_to.setdefault(person.phase1.account, person.key)
    tx_account: dict[str, str] = {}
    applications: list[ApplicationDecision] = []
    registrations: list[RegistrationDecision] = []
    for ev in events:
        if isinstance(ev, Transaction):
            tx_account[ev.txid] = ev.account
            owner = linked_to.get(ev.account)
            if owner is not None:
                evaluators[owner].on_transaction(ev)
        elif isinstance(ev, Refund):
            owner = linked_to.get(tx_account.get(ev.of, ""))
            if owner is not None:
                evaluators[owner].on_refund(ev)
        elif isinstance(ev, Apply):
            decision = evaluators[ev.person].on_apply(ev, linked_to.get(ev.account))
            applications.append(decision)
            if decision.accepted:
                linked_to[ev.account] = ev.person
        elif isinstance(ev, RegisterHealthInsurance):
            evaluators[ev.person].on_register_health_insurance(ev)
        elif isinstance(ev, RegisterPublicFundAccount):
            registrations.append(evaluators[ev.person].on_register_public_fund(ev))
        elif isinstance(ev, ReplaceAccount):
            moved = evaluators[ev.person].on_replace(ev, linked_to.get(ev.to_account))
            if moved and linked_to.get(ev.from_account) == ev.person:
                linked_to[ev.to_account] = ev.person
    residents = {key: e.result() for key, e in evaluators.items()}
    return WorldOutcome(applications, registrations, residents)
