"""Reading scenario files (../shared/docs/scenarios.md) into facts for the rules engine.

Every problem is a :class:`ScenarioError` naming the file, the scenario and the key; nothing malformed passes
silently. Dates are parsed here, not by YAML, so that a bad date is reported where it stands.

Extensions of the shared format (docs/scenarios.md of this project):
``edition`` / ``as_decided_on`` at the top of a scenario choose the parameter edition;
``card_applied_online`` on a person marks an online card application (the 2023-03-01 grace day);
``expect.statuses`` checks the status of a measure (未申込, 申込済, 権利未確定, 権利確定, 上限到達, 停止).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mynapoint.rules.codes import APPLICATION_REJECTIONS, REGISTRATION_REJECTIONS, STATUS_LABELS
from mynapoint.rules.model import (
    JST,
    MEASURES,
    MODES,
    Account,
    Apply,
    Event,
    Person,
    Phase1,
    Provider,
    Refund,
    RegisterHealthInsurance,
    RegisterPublicFundAccount,
    RenewCertificate,
    ReplaceAccount,
    Transaction,
    jst_day,
)
from mynapoint.rules.parameters import ParameterError, Parameters, load_parameters, parameter_names

__all__ = ["Scenario", "ScenarioError", "iter_scenario_files", "load_file"]


class ScenarioError(ValueError):
    """A malformed scenario: says which file, which scenario and which key."""

    def __init__(self, file: str, scenario: str | None, key: str, message: str) -> None:
        self.file, self.scenario, self.key, self.message = file, scenario, key, message
        where = f"{file}: scenario {scenario!r}" if scenario else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass
class Scenario:
    file: str
    name: str
    source: str
    as_of: dt.date
    params: Parameters
    people: dict[str, Person]
    accounts: dict[str, Account]
    providers: dict[str, Provider]
    events: list[Event]
    expect: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- YAML without surprises


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that keeps dates as text (we parse them) and refuses duplicate keys."""


_StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (each key may appear once)", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# --------------------------------------------------------------------------------------- field parsing


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class _Ctx:
    """Where we are: file and scenario, for error messages."""

    def __init__(self, file: str, scenario: str | None) -> None:
        self.file, self.scenario = file, scenario

    def error(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.file, self.scenario, key, message)

    def mapping(
        self, raw: Any, key: str, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
    ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(key, f"expected a mapping, got {type(raw).__name__}")
        for k in raw:
            if k not in allowed:
                raise self.error(
                    f"{key}.{k}" if key else str(k), f"unknown key; allowed: {', '.join(sorted(allowed))}"
                )
        for k in sorted(required):
            if k not in raw:
                raise self.error(f"{key}.{k}" if key else k, "required key is missing")
        return raw

    def date(self, raw: Any, key: str, *, nullable: bool = False) -> dt.date | None:
        if raw is None:
            if nullable:
                return None
            raise self.error(key, "a date is required here")
        if not isinstance(raw, str) or not _DATE.match(raw):
            raise self.error(key, f"expected a date YYYY-MM-DD, got {raw!r}")
        try:
            return dt.date.fromisoformat(raw)
        except ValueError as exc:
            raise self.error(key, f"not a real date {raw!r} ({exc})") from None

    def required_date(self, raw: Any, key: str) -> dt.date:
        value = self.date(raw, key)
        assert value is not None  # noqa: S101 - date() raises when not nullable
        return value

    def at(self, raw: Any, key: str) -> dt.date | dt.datetime:
        if isinstance(raw, str) and _DATE.match(raw):
            return self.required_date(raw, key)
        if not isinstance(raw, str):
            raise self.error(key, f"expected a date or an ISO datetime with offset, got {raw!r}")
        try:
            value = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise self.error(key, f"expected a date or an ISO datetime with offset, got {raw!r}") from None
        if value.tzinfo is None:
            raise self.error(key, f"{raw!r} has no UTC offset; write e.g. {raw}+09:00 (JST)")
        return value

    def text(self, raw: Any, key: str) -> str:
        if raw is None or isinstance(raw, bool | dict | list):
            raise self.error(key, f"expected text, got {raw!r}")
        return str(raw)

    def amount(self, raw: Any, key: str) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
            raise self.error(key, f"expected a positive whole number of yen, got {raw!r}")
        return int(raw)

    def points(self, raw: Any, key: str) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise self.error(key, f"expected a whole number of points (0 or more), got {raw!r}")
        return int(raw)


# --------------------------------------------------------------------------------------- the format

_SCENARIO_KEYS = {
    "name", "source", "as_of", "parameters", "providers", "people", "accounts", "events", "expect",
    "edition", "as_decided_on",
}  # fmt: skip
_PERSON_KEYS = {
    "born", "kana", "card_applied", "card_issued", "phase1", "legal_representative", "died", "card_applied_online",
}  # fmt: skip
_EVENT_KEYS = {
    "apply": (
        {"at", "do", "person", "measure", "account", "by", "present"},
        {"person", "measure", "account"},
    ),
    "charge": ({"at", "do", "account", "amount", "id"}, {"account", "amount", "id"}),
    "purchase": ({"at", "do", "account", "amount", "id"}, {"account", "amount", "id"}),
    "refund": ({"at", "do", "of", "amount"}, {"of", "amount"}),
    "register_health_insurance": ({"at", "do", "person"}, {"person"}),
    "register_public_fund_account": ({"at", "do", "person", "holder_kana"}, {"person"}),
    "renew_certificate": ({"at", "do", "person"}, {"person"}),
    "replace_account": ({"at", "do", "person", "from", "to"}, {"person", "from", "to"}),
}
_EXPECT_KEYS = {"applications", "earned", "public_fund_accounts", "statuses"}


def _parse_scenario(raw: Any, file: str, index: int) -> Scenario:
    name = raw.get("name") if isinstance(raw, dict) else None
    ctx = _Ctx(file, str(name) if name is not None else f"#{index + 1}")
    raw = ctx.mapping(raw, "", _SCENARIO_KEYS, {"name", "as_of", "expect"})
    as_of = ctx.required_date(raw["as_of"], "as_of")
    params = _parse_parameters(ctx, raw)

    providers: dict[str, Provider] = {}
    for key, spec in (raw.get("providers") or {}).items():
        where = f"providers.{key}"
        spec = ctx.mapping(spec or {}, where, {"modes", "charge_deadline", "application_deadline"})
        modes = spec.get("modes", list(MODES))
        if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
            raise ctx.error(f"{where}.modes", f"expected a list of {', '.join(MODES)}, got {modes!r}")
        providers[str(key)] = Provider(
            key=str(key),
            modes=frozenset(modes),
            charge_deadline=ctx.date(spec.get("charge_deadline"), f"{where}.charge_deadline", nullable=True),
            application_deadline=ctx.date(
                spec.get("application_deadline"), f"{where}.application_deadline", nullable=True
            ),
        )

    people_raw = raw.get("people") or {}
    if not isinstance(people_raw, dict):
        raise ctx.error("people", "expected a mapping of person names")
    accounts_raw = raw.get("accounts") or {}
    if not isinstance(accounts_raw, dict):
        raise ctx.error("accounts", "expected a mapping of provider/account-id")

    accounts: dict[str, Account] = {}
    for key, spec in accounts_raw.items():
        where = f"accounts.{key}"
        key = str(key)
        if key.count("/") != 1 or not all(key.split("/")):
            raise ctx.error(where, "an account is written provider/account-id")
        spec = ctx.mapping(spec, where, {"holder", "mode"}, {"holder", "mode"})
        holder = ctx.text(spec["holder"], f"{where}.holder")
        if holder not in people_raw:
            raise ctx.error(f"{where}.holder", f"unknown person {holder!r}")
        provider_key = key.split("/")[0]
        mode = spec["mode"]
        allowed_modes = providers[provider_key].modes if provider_key in providers else frozenset(MODES)
        if mode not in allowed_modes:
            raise ctx.error(
                f"{where}.mode",
                f"{mode!r} is not a mode of provider {provider_key!r} ({', '.join(sorted(allowed_modes))})",
            )
        accounts[key] = Account(key=key, provider=provider_key, holder=holder, mode=mode)

    people: dict[str, Person] = {}
    for key, spec in people_raw.items():
        where = f"people.{key}"
        spec = ctx.mapping(spec, where, _PERSON_KEYS, {"born"})
        phase1 = None
        if spec.get("phase1") is not None:
            p1 = ctx.mapping(
                spec["phase1"],
                f"{where}.phase1",
                {"applied", "account", "points"},
                {"applied", "account", "points"},
            )
            account = ctx.text(p1["account"], f"{where}.phase1.account")
            if account not in accounts:
                raise ctx.error(f"{where}.phase1.account", f"unknown account {account!r}")
            if accounts[account].holder != key:
                raise ctx.error(
                    f"{where}.phase1.account", f"{account!r} is held by {accounts[account].holder!r}"
                )
            phase1 = Phase1(
                applied=ctx.required_date(p1["applied"], f"{where}.phase1.applied"),
                account=account,
                points=ctx.points(p1["points"], f"{where}.phase1.points"),
            )
        representative = spec.get("legal_representative")
        if representative is not None and representative not in people_raw:
            raise ctx.error(f"{where}.legal_representative", f"unknown person {representative!r}")
        online = spec.get("card_applied_online", False)
        if not isinstance(online, bool):
            raise ctx.error(f"{where}.card_applied_online", f"expected true or false, got {online!r}")
        kana = spec.get("kana")
        people[str(key)] = Person(
            key=str(key),
            born=ctx.required_date(spec["born"], f"{where}.born"),
            card_applied=ctx.date(spec.get("card_applied"), f"{where}.card_applied", nullable=True),
            card_issued=ctx.date(spec.get("card_issued"), f"{where}.card_issued", nullable=True),
            kana=ctx.text(kana, f"{where}.kana") if kana is not None else None,
            phase1=phase1,
            legal_representative=representative,
            died=ctx.date(spec.get("died"), f"{where}.died", nullable=True),
            card_applied_online=online,
        )
    phase1_accounts: dict[str, str] = {}
    for person in people.values():
        if person.phase1:
            other = phase1_accounts.setdefault(person.phase1.account, person.key)
            if other != person.key:
                raise ctx.error(
                    f"people.{person.key}.phase1.account", f"also the phase-1 account of {other!r}"
                )

    events = _parse_events(ctx, raw.get("events") or [], people, accounts)
    expect = _parse_expect(ctx, raw["expect"], people)
    for key, kind, label in (
        ("applications", Apply, "apply"),
        ("public_fund_accounts", RegisterPublicFundAccount, "register_public_fund_account"),
    ):
        if key in expect:
            count = sum(isinstance(ev, kind) for ev in events)
            if len(expect[key]) != count:
                raise ctx.error(
                    f"expect.{key}",
                    f"{len(expect[key])} expected outcome(s) for {count} {label} event(s): give one per event, in order",
                )
    return Scenario(
        file=file,
        name=str(raw["name"]),
        source=str(raw.get("source", "")),
        as_of=as_of,
        params=params,
        people=people,
        accounts=accounts,
        providers=providers,
        events=events,
        expect=expect,
    )


def _parse_parameters(ctx: _Ctx, raw: dict[str, Any]) -> Parameters:
    edition = raw.get("edition")
    decided = ctx.date(raw.get("as_decided_on"), "as_decided_on", nullable=True)
    if edition is not None and decided is not None:
        raise ctx.error("edition", "give an edition or as_decided_on, not both")
    overrides = raw.get("parameters") or {}
    if not isinstance(overrides, dict):
        raise ctx.error("parameters", "expected a mapping of parameter names to values")
    known = parameter_names()
    for name in overrides:
        if name not in known:
            raise ctx.error(f"parameters.{name}", f"unknown parameter; known: {', '.join(known)}")
    try:
        base = load_parameters(edition=str(edition) if edition is not None else None, as_decided_on=decided)
    except ParameterError as exc:
        raise ctx.error("edition" if edition is not None else "as_decided_on", str(exc)) from None
    for name, value in overrides.items():
        try:
            base.with_overrides({name: value})
        except ParameterError as exc:
            raise ctx.error(f"parameters.{name}", str(exc).split(": ", 1)[-1]) from None
    return base.with_overrides(overrides, source=f"scenario override ({ctx.file})") if overrides else base


def _parse_events(
    ctx: _Ctx, raw_events: Any, people: dict[str, Person], accounts: dict[str, Account]
) -> list[Event]:
    if not isinstance(raw_events, list):
        raise ctx.error("events", "expected a list of events")
    events: list[Event] = []
    seen_tx: set[str] = set()
    latest_day = -1
    latest_instant: dt.datetime | None = None
    for seq, raw in enumerate(raw_events):
        where = f"events[{seq}]"
        if not isinstance(raw, dict):
            raise ctx.error(where, "expected a mapping")
        do = raw.get("do")
        if do not in _EVENT_KEYS:
            raise ctx.error(f"{where}.do", f"unknown action {do!r}; known: {', '.join(_EVENT_KEYS)}")
        allowed, required = _EVENT_KEYS[do]
        ctx.mapping(raw, where, allowed, required | {"at"})
        at = ctx.at(raw["at"], f"{where}.at")
        day = jst_day(at)
        if day < latest_day or (
            isinstance(at, dt.datetime) and latest_instant is not None and at < latest_instant
        ):
            raise ctx.error(f"{where}.at", f"{raw['at']} goes back in time (events must be in time order)")
        latest_day = day
        if isinstance(at, dt.datetime):
            latest_instant = at.astimezone(JST)

        def person_ref(key: str, *, _raw: dict[str, Any] = raw, _where: str = where) -> str:
            value = _raw.get(key)
            if value not in people:
                raise ctx.error(f"{_where}.{key}", f"unknown person {value!r}")
            return str(value)

        def account_ref(key: str, *, _raw: dict[str, Any] = raw, _where: str = where) -> str:
            value = _raw.get(key)
            if value not in accounts:
                raise ctx.error(f"{_where}.{key}", f"unknown account {value!r}")
            return str(value)

        if do == "apply":
            person = person_ref("person")
            measure = raw["measure"]
            if measure not in MEASURES:
                raise ctx.error(
                    f"{where}.measure", f"unknown measure {measure!r}; known: {', '.join(MEASURES)}"
                )
            by = person_ref("by") if "by" in raw else person
            present = raw.get("present", [by])
            if not isinstance(present, list):
                raise ctx.error(f"{where}.present", f"expected a list of people, got {present!r}")
            for i, who in enumerate(present):
                if who not in people:
                    raise ctx.error(f"{where}.present[{i}]", f"unknown person {who!r}")
            events.append(Apply(seq, day, at, person, measure, account_ref("account"), by, tuple(present)))
        elif do in ("charge", "purchase"):
            txid = ctx.text(raw["id"], f"{where}.id")
            if txid in seen_tx:
                raise ctx.error(f"{where}.id", f"transaction id {txid!r} is used twice")
            seen_tx.add(txid)
            amount = ctx.amount(raw["amount"], f"{where}.amount")
            events.append(Transaction(seq, day, at, account_ref("account"), do, amount, txid))
        elif do == "refund":
            of = ctx.text(raw["of"], f"{where}.of")
            if of not in seen_tx:
                raise ctx.error(f"{where}.of", f"refund of unknown transaction {of!r} (it must come earlier)")
            events.append(Refund(seq, day, at, of, ctx.amount(raw["amount"], f"{where}.amount")))
        elif do == "register_health_insurance":
            events.append(RegisterHealthInsurance(seq, day, at, person_ref("person")))
        elif do == "register_public_fund_account":
            kana = raw.get("holder_kana")
            holder_kana = ctx.text(kana, f"{where}.holder_kana") if kana is not None else None
            events.append(RegisterPublicFundAccount(seq, day, at, person_ref("person"), holder_kana))
        elif do == "renew_certificate":
            events.append(RenewCertificate(seq, day, at, person_ref("person")))
        elif do == "replace_account":
            person = person_ref("person")
            source, target = account_ref("from"), account_ref("to")
            if accounts[target].holder != accounts[source].holder:
                raise ctx.error(
                    f"{where}.to", f"a replacement keeps the holder: {source} and {target} differ"
                )
            events.append(ReplaceAccount(seq, day, at, person, source, target))
    return events


def _outcome_form(raw: Any, ctx: _Ctx, key: str, codes: dict[str, Any]) -> str | dict[str, str]:
    if raw == "accepted":
        return "accepted"
    if isinstance(raw, dict) and set(raw) == {"rejected"} and raw["rejected"] in codes:
        return {"rejected": str(raw["rejected"])}
    raise ctx.error(
        key, f"expected 'accepted' or {{rejected: CODE}} with CODE one of {', '.join(codes)}; got {raw!r}"
    )


def _parse_expect(ctx: _Ctx, raw: Any, people: dict[str, Person]) -> dict[str, Any]:
    raw = ctx.mapping(raw, "expect", _EXPECT_KEYS)
    if not raw:
        raise ctx.error("expect", "a scenario must expect something (applications, earned, ...)")
    expect: dict[str, Any] = {}
    for key, codes in (
        ("applications", APPLICATION_REJECTIONS),
        ("public_fund_accounts", REGISTRATION_REJECTIONS),
    ):
        if key in raw:
            if not isinstance(raw[key], list):
                raise ctx.error(f"expect.{key}", "expected a list, one entry per event in order")
            expect[key] = [_outcome_form(v, ctx, f"expect.{key}[{i}]", codes) for i, v in enumerate(raw[key])]
    for key in ("earned", "statuses"):
        if key not in raw:
            continue
        table = raw[key]
        if not isinstance(table, dict):
            raise ctx.error(f"expect.{key}", "expected a mapping of people to measures")
        expect[key] = {}
        for person, measures in table.items():
            if person not in people:
                raise ctx.error(
                    f"expect.{key}.{person}", f"unknown person {person!r}; people: {', '.join(people)}"
                )
            measures = ctx.mapping(measures, f"expect.{key}.{person}", set(MEASURES))
            for measure, value in measures.items():
                where = f"expect.{key}.{person}.{measure}"
                if key == "earned":
                    ctx.points(value, where)
                elif value not in STATUS_LABELS:
                    raise ctx.error(where, f"unknown status {value!r}; known: {', '.join(STATUS_LABELS)}")
            expect[key][str(person)] = dict(measures)
    return expect


def _scenario_at(text: str, line: int) -> str | None:
    """The name of the scenario a line belongs to (the nearest ``name:`` above it), for error messages."""
    for candidate in reversed(text.splitlines()[:line]):
        found = re.match(r"^\s*-?\s*name:\s*(.+?)\s*$", candidate)
        if found:
            return found.group(1).strip("'\"")
    return None


def load_file(path: Path) -> list[Scenario]:
    """Read one scenario file (one scenario or a list of them)."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(file, None, "", f"cannot read: {exc}") from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or str(exc)
        raise ScenarioError(file, _scenario_at(text, line), f"line {line}", problem) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(file, None, "", f"not valid YAML: {exc}") from None
    if doc is None:
        raise ScenarioError(file, None, "", "the file holds no scenario")
    items = doc if isinstance(doc, list) else [doc]
    scenarios = [_parse_scenario(item, file, i) for i, item in enumerate(items)]
    names: set[str] = set()
    for s in scenarios:
        if s.name in names:
            raise ScenarioError(file, s.name, "name", "a scenario name must be unique within the file")
        names.add(s.name)
    return scenarios


def iter_scenario_files(paths: list[Path]) -> Iterator[Path]:
    """The scenario files named, with directories searched for *.yaml and *.yml, in name order."""
    for path in paths:
        if path.is_dir():
            found = sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")])
            if not found:
                raise ScenarioError(str(path), None, "", "no scenario files (*.yaml) in this folder")
            yield from found
        elif path.exists():
            yield path
        else:
            raise ScenarioError(str(path), None, "", "no such file or folder")
