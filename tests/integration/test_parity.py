"""Every scenario replayed through the platform's services and database gives the pure engine's outcome.

For each scenario in ``tests/scenarios`` the world is built in the database (providers, residents with their card
facts and phase-1 history, accounts in the provider registry), its events are replayed in order through the
services a feed, a provider or a resident would call (``apply_for_measure``, the registration feeds,
``record_transaction``/``record_refund``, ``replace_lost_account``, ``apply_certificate_renewal``), each at the
event's time, and then the platform's outcome (each application's and each public-fund registration's decision,
points and statuses per person at ``as_of``, from ``resident_status``) is compared with
``run_scenario(scenario).outcome``. So the engine the scenarios test and the platform that runs the programme
cannot drift apart.

Facts the platform needs and a scenario may not give are filled in here, visibly:

* **Kana.** A resident must declare a kana name before applying (``profile_missing``), and the account holder
  is matched on kana and birth date. A person without ``kana`` who applies, or whose representative role
  matters, gets a made-up kana (:func:`made_up_kana`), used for her declared profile and her accounts in the
  registry. People who never need one keep none, so their public-fund registrations stay unchecked as in the
  engine (P9).
* **The bank account.** A registration without ``holder_kana`` is the person's own account: its holder kana is
  hers (or a placeholder when she has none, which the platform then leaves unchecked). Bank 0001, branch 001.
* **Times.** A date-only ``at`` becomes the start of that JST day, or a microsecond after the event before it on
  the same day, so the platform's time order is the file order (P17).
* **Ids.** Refunds, registrations and certificates get ids from the event's position.

The engine's outcome is computed on the same facts (the made-up kana included). Where that changes the engine's
answer, the scenario is a *fact gap* listed in :data:`FACT_GAPS` with its reason; the test checks that the list
is exact, so a new gap cannot hide.

Where the platform and the engine really disagree and the platform was left as it is, the scenario is in
:data:`KNOWN_DIFFERENCES` with the reason and the exact differences expected: the test fails if they change,
including when they go away. :data:`PROBES` adds cases the scenario files lack (a refused account replacement).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pytest_django import Settings

from mynapoint.applications.adapters import FileRegistryAdapter
from mynapoint.applications.models import ApplicationStatus, PaymentAccount
from mynapoint.applications.selectors import resident_status
from mynapoint.applications.services import (
    ApplicationError,
    BankAccount,
    apply_certificate_renewal,
    apply_for_measure,
    record_health_insurance_registration,
    record_public_fund_registration,
    replace_lost_account,
)
from mynapoint.applications.transactions import record_refund, record_transaction
from mynapoint.audit.services import Actor
from mynapoint.identity.models import Certificate, Resident
from mynapoint.identity.services import MYKEY_ALPHABET, serial_text
from mynapoint.providers.models import Provider
from mynapoint.rules.kana import kana_key
from mynapoint.rules.model import (
    JST,
    MEASURES,
    MODES,
    Apply,
    Person,
    Refund,
    RegisterHealthInsurance,
    RegisterPublicFundAccount,
    RenewCertificate,
    ReplaceAccount,
    Transaction,
)
from mynapoint.rules.parameters import load_parameters
from mynapoint.scenarios.loader import Scenario, load_file
from mynapoint.scenarios.runner import run_scenario

pytestmark = pytest.mark.django_db

# Cases the scenario files do not have, for platform paths the engine has no trouble with: each is a valid
# scenario (its `expect` is the engine's answer, checked below), and could move to tests/scenarios/own.
PROBES = """\
- name: 別の方に紐づいた口座へのカード再発行は断られ、紐づけは元の口座に残る
  source: "decision P12 (a replacement onto an account already linked to another person is refused)"
  as_of: 2023-05-31
  people:
    taro: {born: 1985-07-01, kana: タナカ タロウ, card_applied: 2022-02-01, card_issued: 2022-03-01}
    jiro: {born: 2010-07-01, kana: タナカ ジロウ, card_applied: 2022-02-01, card_issued: 2022-03-01,
           legal_representative: taro}
  accounts:
    wallet/taro-1: {holder: taro, mode: charge}
    wallet/taro-2: {holder: taro, mode: charge}
  events:
    - {at: 2022-03-05, person: taro, do: apply, measure: premium, account: wallet/taro-1}
    - {at: 2022-03-05, person: jiro, by: taro, present: [taro], do: apply, measure: premium, account: wallet/taro-2}
    - {at: 2022-03-06, person: taro, do: replace_account, from: wallet/taro-1, to: wallet/taro-2}
    - {at: 2022-03-07, do: charge, account: wallet/taro-2, amount: 4000, id: c1}
    - {at: 2022-03-08, do: charge, account: wallet/taro-1, amount: 8000, id: c2}
  expect:
    applications: [accepted, accepted]
    earned:
      taro: {premium: 2000}
      jiro: {premium: 1000}
- name: 紐づけのない口座のカード再発行は何も移さない
  source: "decision P12 (replace_account moves the links of the person on from)"
  as_of: 2023-05-31
  people:
    taro: {born: 1985-07-01, kana: タナカ タロウ, card_applied: 2022-02-01, card_issued: 2022-03-01}
  accounts:
    wallet/taro-1: {holder: taro, mode: charge}
    wallet/taro-2: {holder: taro, mode: charge}
    wallet/taro-3: {holder: taro, mode: charge}
  events:
    - {at: 2022-03-04, do: charge, account: wallet/taro-3, amount: 4000, id: c0}
    - {at: 2022-03-05, person: taro, do: apply, measure: premium, account: wallet/taro-1}
    - {at: 2022-03-06, person: taro, do: replace_account, from: wallet/taro-3, to: wallet/taro-2}
    - {at: 2022-03-07, do: charge, account: wallet/taro-2, amount: 4000, id: c1}
    - {at: 2022-03-08, do: charge, account: wallet/taro-1, amount: 8000, id: c2}
  expect:
    applications: [accepted]
    earned:
      taro: {premium: 2000}
- name: 名義違いで断られた後の正しい登録で施策3が確定する
  source: "decision P9 (the first accepted registration is the one that earns)"
  as_of: 2022-12-10
  people:
    taro: {born: 1985-07-01, kana: タナカ タロウ, card_applied: 2022-02-01, card_issued: 2022-03-01}
  accounts:
    wallet/taro-1: {holder: taro, mode: charge}
  events:
    - {at: 2022-07-01, person: taro, do: register_public_fund_account, holder_kana: ﾔﾏﾀﾞ ﾀﾛｳ}
    - {at: 2022-07-02, person: taro, do: register_public_fund_account, holder_kana: ﾀﾅｶ ﾀﾛｳ}
    - {at: 2022-07-05, person: taro, do: apply, measure: public_fund, account: wallet/taro-1}
  expect:
    applications: [accepted]
    public_fund_accounts: [{rejected: holder_name_mismatch}, accepted]
    earned:
      taro: {public_fund: 7500}
"""


def _load_probes() -> Path:
    path = Path(tempfile.mkdtemp(prefix="parity-")) / "probes.yaml"
    path.write_text(PROBES, encoding="utf-8")
    return path


HERE = Path(__file__).parent.parent / "scenarios"
FILES = sorted(HERE.rglob("*.yaml"))
LOADED = {f: load_file(f) for f in [*FILES, _load_probes()]}
CASES = [(f, s.name) for f, scenarios in LOADED.items() for s in scenarios]


def case_id(file: Path, name: str) -> str:
    return f"{file.parent.name if file.parent.parent == HERE else 'probes'}/{file.stem}:{name}"


IDS = [case_id(f, name) for f, name in CASES]

RESIDENT = Actor(actor="scenario", channel="self")
FEED = Actor(actor="feed:scenario", channel="feed")
PROVIDER = Actor(actor="provider:scenario", channel="system")
SECURITY_CODES = ["1"]
BANK = BankAccount("0001", "001", "1", "1234567")  # みずほ銀行 東京営業部: a real zengin code
UNKNOWN_HOLDER = "ﾒｲｷﾞﾆﾝ ﾌﾒｲ"  # a bank always has a holder name; the person's own is not known
ISSUER = "CN=Scenario CA,O=JPKI test,C=JP"

# Scenarios whose engine outcome changes when the facts the platform needs are filled in. Each is checked to
# differ (so the list cannot go stale) and compared with the engine on the platform's facts.
FACT_GAPS: dict[str, str] = {
    "own/rejections:本人のカナが不明なら名義は照合せず登録を受け付ける": (
        "goro has no kana but applies: the platform requires a declared kana before an application "
        "(profile_missing), so 'applied with no kana' cannot happen there, and the holder name of his "
        "registration is checked against the kana he declared (a made-up one here), where the engine, knowing "
        "no kana, accepts it unchecked (P9)."
    ),
}


# Where the platform and the engine disagree on the same facts, and the platform was not changed here: the
# exact differences, so that the test fails when either side moves. (None at present.)
KNOWN_DIFFERENCES: dict[str, tuple[str, list[str]]] = {}


# ------------------------------------------------------------------------------------------- facts filled in


def made_up_kana(index: int) -> str:
    """A kana name nobody in a scenario has: シケン + two syllables by index."""
    syllables = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワ"
    return f"シケン {syllables[index // len(syllables) % len(syllables)]}{syllables[index % len(syllables)]}"


def mykey_id(index: int) -> str:
    return "".join(MYKEY_ALPHABET[(index // 32**k) % 32] for k in range(8))


def needs_kana(scenario: Scenario) -> set[str]:
    """People the platform must know a kana for: applicants, and the representatives of applicants (whose
    accounts a minor may use: matched on the representative's kana and birth date)."""
    applicants = {ev.person for ev in scenario.events if isinstance(ev, Apply)}
    representatives = {scenario.people[p].legal_representative for p in applicants}
    return applicants | {r for r in representatives if r is not None}


def declared_kana(scenario: Scenario) -> dict[str, str]:
    """The kana each person has on the platform: her own, or a made-up one when the platform needs one."""
    taken = {kana_key(p.kana) for p in scenario.people.values() if p.kana}
    needed = needs_kana(scenario)
    kana: dict[str, str] = {}
    index = 0
    for key, person in scenario.people.items():
        if person.kana:
            kana[key] = person.kana
        elif key in needed:
            while kana_key(made_up_kana(index)) in taken:
                index += 1
            kana[key] = made_up_kana(index)
            index += 1
    return kana


def on_platform_facts(scenario: Scenario, kana: dict[str, str]) -> Scenario:
    """The scenario with the facts the platform was given (the made-up kana), for the engine."""
    people: dict[str, Person] = {
        key: dataclasses.replace(person, kana=kana.get(key)) for key, person in scenario.people.items()
    }
    return dataclasses.replace(scenario, people=people)


def instants(scenario: Scenario) -> list[dt.datetime]:
    """An aware datetime per event, in file order: a date-only event is at the start of its JST day, or just
    after the event before it on that day."""
    out: list[dt.datetime] = []
    last: dt.datetime | None = None
    for i, ev in enumerate(scenario.events):
        if isinstance(ev.at, dt.datetime):
            moment = ev.at
        else:
            start = dt.datetime.combine(ev.at, dt.time(0), tzinfo=JST)
            moment = start if last is None or last < start else last + dt.timedelta(microseconds=1)
            assert moment.astimezone(JST).date() == ev.at, f"events[{i}]: no room left on {ev.at}"
        assert last is None or moment >= last, f"events[{i}]: cannot keep the file order at {moment}"
        out.append(moment)
        last = moment
    return out


def parameter_overrides(scenario: Scenario, edition: str | None) -> dict[str, object]:
    """The values in which the scenario's parameters (edition, as_decided_on, overrides) differ from the
    platform's edition: given to the platform as MYNAPOINT_PARAMETER_OVERRIDES."""
    default = load_parameters(edition=edition)
    return {
        name: value.value
        for name, value in scenario.params.values.items()
        if default.values[name].value != value.value
    }


# ------------------------------------------------------------------------------------------- the world


def build_world(
    scenario: Scenario, kana: dict[str, str], registry: FileRegistryAdapter
) -> dict[str, Resident]:
    created = dt.datetime(2020, 1, 1, tzinfo=JST)
    provider_keys = set(scenario.providers) | {a.provider for a in scenario.accounts.values()}
    for key in sorted(provider_keys):
        spec = scenario.providers.get(key)
        Provider.objects.create(
            key=key,
            name_ja=key,
            kind="qr",
            modes=sorted(spec.modes) if spec else list(MODES),
            measures=list(MEASURES),
            charge_deadline=spec.charge_deadline if spec else None,
            application_deadline=spec.application_deadline if spec else None,
            security_code_count=len(SECURITY_CODES),
        )
    residents: dict[str, Resident] = {}
    for index, (key, person) in enumerate(scenario.people.items()):
        phase1 = person.phase1
        residents[key] = Resident.objects.create(
            mykey_id=mykey_id(index + 1),
            created_at=created,
            born=person.born,
            kana=kana.get(key, ""),
            card_applied=person.card_applied,
            card_applied_online=person.card_applied_online,
            card_issued=person.card_issued,
            died=person.died,
            phase1_applied=phase1.applied if phase1 else None,
            phase1_account=phase1.account if phase1 else "",
            phase1_points=phase1.points if phase1 else None,
            phase1_mode=scenario.accounts[phase1.account].mode if phase1 else "",
        )
        Certificate.objects.create(
            resident=residents[key],
            issuer=ISSUER,
            serial=serial_text(0x10000 * (index + 1)),
            not_before=created,
            not_after=created + dt.timedelta(days=5 * 365),
            first_seen_at=created,
        )
    for key, person in scenario.people.items():
        if person.legal_representative:
            resident = residents[key]
            resident.legal_representative = residents[person.legal_representative]
            resident.save(update_fields=["legal_representative"])
        if person.phase1:  # the phase-1 records: every phase-1 account stays linked to its person (P6)
            provider_key, service_id = person.phase1.account.split("/")
            PaymentAccount.objects.create(
                provider=Provider.objects.get(key=provider_key),
                service_id=service_id,
                linked_resident=residents[key],
                linked_at=dt.datetime.combine(person.phase1.applied, dt.time(0), tzinfo=JST),
            )
    for key, account in scenario.accounts.items():
        holder = scenario.people[account.holder]
        entry: dict[str, object] = {"security_codes": SECURITY_CODES, "holder_born": holder.born.isoformat()}
        if account.holder in kana:
            entry["holder_kana"] = kana[account.holder]
        registry.add(provider=account.provider, service_id=key.split("/")[1], entry=entry)
    return residents


def replay(scenario: Scenario, kana: dict[str, str], residents: dict[str, Resident]) -> dict[str, Any]:
    """Every event through the platform's services; the outcome in the shape of ``expect``."""
    applications: list[Any] = []
    registrations: list[Any] = []
    serials = {key: 0x10000 * (i + 1) for i, key in enumerate(scenario.people)}
    tx_provider: dict[str, str] = {}
    for ev, at in zip(scenario.events, instants(scenario), strict=True):
        if isinstance(ev, Apply):
            provider_key, service_id = ev.account.split("/")
            try:
                result = apply_for_measure(
                    resident=residents[ev.person],
                    measure=ev.measure,
                    provider_key=provider_key,
                    service_id=service_id,
                    security_codes=SECURITY_CODES,
                    mode=scenario.accounts[ev.account].mode,
                    operated_by=residents[ev.by],
                    present=[residents[p] for p in ev.present],
                    now=at,
                    who=RESIDENT,
                )
            except ApplicationError as error:  # refused before the rules were asked: nothing recorded
                applications.append({"error": error.code})
            else:
                applications.append("accepted" if result.accepted else {"rejected": result.code})
        elif isinstance(ev, Transaction):
            provider_key, service_id = ev.account.split("/")
            tx_provider[ev.txid] = provider_key
            record_transaction(
                provider_key=provider_key,
                txid=ev.txid,
                service_id=service_id,
                kind=ev.kind,
                amount=ev.amount,
                at=at,
                now=at,
                who=PROVIDER,
            )
        elif isinstance(ev, Refund):
            record_refund(
                provider_key=tx_provider[ev.of],
                refund_id=f"refund-{ev.seq}",
                txid=ev.of,
                amount=ev.amount,
                at=at,
                now=at,
                who=PROVIDER,
            )
        elif isinstance(ev, RegisterHealthInsurance):
            record_health_insurance_registration(
                mykey_id=residents[ev.person].mykey_id,
                registered_at=at,
                external_id=f"health-{ev.seq}",
                source="scenario",
                now=at,
                who=FEED,
            )
        elif isinstance(ev, RegisterPublicFundAccount):
            registration, _ = record_public_fund_registration(
                mykey_id=residents[ev.person].mykey_id,
                registered_at=at,
                external_id=f"fund-{ev.seq}",
                source="scenario",
                bank=BANK,
                holder_kana=ev.holder_kana or kana.get(ev.person) or UNKNOWN_HOLDER,
                now=at,
                who=FEED,
            )
            registrations.append(
                "accepted"
                if registration.status == ApplicationStatus.ACCEPTED
                else {"rejected": registration.rejection_code}
            )
        elif isinstance(ev, RenewCertificate):
            old = serials[ev.person]
            serials[ev.person] = old + 1
            apply_certificate_renewal(
                old_issuer=ISSUER,
                old_serial=serial_text(old),
                new_issuer=ISSUER,
                new_serial=serial_text(old + 1),
                now=at,
                who=FEED,
            )
        elif isinstance(ev, ReplaceAccount):
            provider_key, from_id = ev.from_account.split("/")
            to_provider, to_id = ev.to_account.split("/")
            assert to_provider == provider_key, "a replacement is within one provider"
            replace_lost_account(
                resident=residents[ev.person],
                provider_key=provider_key,
                from_service_id=from_id,
                to_service_id=to_id,
                at=at,
                who=PROVIDER,
            )
        else:  # pragma: no cover - the loader knows no other event
            raise AssertionError(f"event not replayed: {ev!r}")
    earned: dict[str, dict[str, int]] = {}
    statuses: dict[str, dict[str, str]] = {}
    for key, resident in residents.items():
        status = resident_status(resident, as_of=scenario.as_of)
        earned[key] = status.earned
        statuses[key] = dict(zip(MEASURES, status.statuses, strict=True))
    return {
        "applications": applications,
        "public_fund_accounts": registrations,
        "earned": earned,
        "statuses": statuses,
    }


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    found = []
    for key in ("applications", "public_fund_accounts"):
        exp, act = expected[key], actual[key]
        for i in range(max(len(exp), len(act))):
            e = exp[i] if i < len(exp) else None
            a = act[i] if i < len(act) else None
            if e != a:
                found.append(f"{key}[{i}]: engine {e}, platform {a}")
    for key in ("earned", "statuses"):
        for person, measures in expected[key].items():
            for measure, value in measures.items():
                if actual[key][person][measure] != value:
                    found.append(
                        f"{key}.{person}.{measure}: engine {value}, platform {actual[key][person][measure]}"
                    )
    return found


# ------------------------------------------------------------------------------------------- the test


@pytest.mark.parametrize(("file", "name"), CASES, ids=IDS)
def test_the_platform_gives_the_engines_outcome(
    file: Path, name: str, settings: Settings, registry: FileRegistryAdapter
) -> None:
    scenario = next(s for s in LOADED[file] if s.name == name)
    case = case_id(file, name)
    settings.MYNAPOINT_PARAMETER_OVERRIDES = parameter_overrides(
        scenario, settings.MYNAPOINT_PARAMETER_EDITION
    )
    kana = declared_kana(scenario)

    engine = run_scenario(on_platform_facts(scenario, kana)).outcome
    original_result = run_scenario(scenario)
    assert original_result.passed, "the engine does not give the scenario's own expectation"
    original = original_result.outcome
    if case in FACT_GAPS:
        assert differences(original, engine), f"{case} is listed as a fact gap but the facts change nothing"
    else:
        assert differences(original, engine) == [], "filling in the platform's facts changed the outcome"

    residents = build_world(scenario, kana, registry)
    platform = replay(scenario, kana, residents)
    known = KNOWN_DIFFERENCES.get(case)
    assert differences(engine, platform) == (known[1] if known else [])
