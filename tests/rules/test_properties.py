"""Property-based tests of the rules engine on random histories (hypothesis)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mynapoint.rules.engine import WorldOutcome, evaluate_world
from mynapoint.rules.model import (
    Account,
    Apply,
    Event,
    Person,
    Phase1,
    Provider,
    Refund,
    RegisterHealthInsurance,
    RegisterPublicFundAccount,
    ReplaceAccount,
    Transaction,
)
from mynapoint.rules.parameters import load_parameters

PARAMS = load_parameters()
AS_OF = dt.date(2023, 10, 31)
START = dt.date(2021, 12, 1).toordinal()
END = dt.date(2023, 10, 31).toordinal()
MEASURES = ["premium", "health_insurance", "public_fund"]
PROVIDERS = {
    "qr": Provider(key="qr"),
    "card": Provider(key="card", modes=frozenset({"purchase"}), charge_deadline=dt.date(2023, 3, 31)),
    "edy": Provider(key="edy", modes=frozenset({"charge"}), application_deadline=dt.date(2023, 1, 31)),
}
settings.register_profile("mynapoint", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mynapoint")


@dataclasses.dataclass
class World:
    people: list[Person]
    accounts: dict[str, Account]
    events: list[Event]

    def run(self) -> WorldOutcome:
        return evaluate_world(
            people=self.people,
            accounts=self.accounts,
            providers=PROVIDERS,
            events=self.events,
            params=PARAMS,
            as_of=AS_OF,
        )


def _date(day: int) -> dt.date:
    return dt.date.fromordinal(day)


@st.composite
def resident(draw: Any, key: str) -> tuple[Person, dict[str, Account], list[tuple[int, Any]]]:
    """One resident with own accounts and a dated list of (day, event builder args)."""
    born = _date(draw(st.integers(dt.date(1940, 1, 1).toordinal(), dt.date(2004, 1, 1).toordinal())))
    applied = draw(
        st.one_of(st.none(), st.integers(dt.date(2019, 1, 1).toordinal(), dt.date(2023, 3, 5).toordinal()))
    )
    issued = None if applied is None else draw(st.one_of(st.none(), st.integers(applied, applied + 90)))
    accounts: dict[str, Account] = {}
    for i in range(draw(st.integers(1, 3))):
        provider = draw(st.sampled_from(sorted(PROVIDERS)))
        mode = draw(st.sampled_from(sorted(PROVIDERS[provider].modes)))
        accounts[f"{provider}/{key}-{i}"] = Account(f"{provider}/{key}-{i}", provider, key, mode)
    keys = sorted(accounts)
    phase1 = None
    if draw(st.booleans()):
        phase1 = Phase1(
            applied=_date(
                draw(st.integers(dt.date(2020, 9, 1).toordinal(), dt.date(2022, 1, 5).toordinal()))
            ),
            account=keys[0],
            points=draw(st.integers(0, 5000)),
        )
    kana = draw(st.sampled_from(["ヤマダ ハナコ", "タナカ タロウ"]))
    person = Person(
        key=key,
        born=born,
        card_applied=_date(applied) if applied else None,
        card_issued=_date(issued) if issued else None,
        kana=kana,
        phase1=phase1,
        died=_date(draw(st.integers(START, END))) if draw(st.integers(0, 9)) == 0 else None,
    )
    day = st.integers(START, END)
    raw: list[tuple[int, Any]] = []
    for _ in range(draw(st.integers(0, 4))):
        raw.append((draw(day), ("apply", draw(st.sampled_from(MEASURES)), draw(st.sampled_from(keys)))))
    txids = []
    for n in range(draw(st.integers(0, 8))):
        txid = f"{key}-t{n}"
        txids.append(txid)
        kind = draw(st.sampled_from(["charge", "purchase"]))
        raw.append((draw(day), ("tx", draw(st.sampled_from(keys)), kind, draw(st.integers(1, 30000)), txid)))
    if draw(st.booleans()):
        raw.append((draw(day), ("health",)))
    if draw(st.booleans()):
        raw.append(
            (draw(day), ("fund", draw(st.sampled_from(["ヤマダ ハナコ", "タナカ タロウ", "ﾔﾏﾀﾞ ﾊﾅｺ"]))))
        )
    if len(keys) > 1 and draw(st.booleans()):
        raw.append((draw(day), ("replace", keys[0], keys[1])))
    return person, accounts, raw


def _events(
    raw: list[tuple[int, Any]], people_keys: list[str], refunds: list[tuple[int, str, int]]
) -> list[Event]:
    items: list[tuple[int, int, Any]] = [(d, 0, spec) for d, spec in raw]
    items += [(d, 1, ("refund", of, amount)) for d, of, amount in refunds]
    items.sort(key=lambda x: (x[0], x[1]))
    events: list[Event] = []
    tx_days: dict[str, int] = {}
    for seq, (d, _, spec) in enumerate(items):
        at = _date(d)
        kind = spec[0]
        if kind == "apply":
            owner = spec[2].split("/")[1].rsplit("-", 1)[0]
            events.append(Apply(seq, d, at, owner, spec[1], spec[2], owner, (owner,)))
        elif kind == "tx":
            tx_days[spec[4]] = d
            events.append(Transaction(seq, d, at, spec[1], spec[2], spec[3], spec[4]))
        elif kind == "refund":
            if spec[1] in tx_days and tx_days[spec[1]] <= d:
                events.append(Refund(seq, d, at, spec[1], spec[2]))
        elif kind == "health":
            events.append(RegisterHealthInsurance(seq, d, at, spec[1] if len(spec) > 1 else people_keys[0]))
        elif kind == "fund":
            events.append(RegisterPublicFundAccount(seq, d, at, spec[2], spec[1]))
        elif kind == "replace":
            owner = spec[1].split("/")[1].rsplit("-", 1)[0]
            events.append(ReplaceAccount(seq, d, at, owner, spec[1], spec[2]))
    return events


def _tag(raw: list[tuple[int, Any]], key: str) -> list[tuple[int, Any]]:
    """Registrations carry their person."""
    out = []
    for d, spec in raw:
        if spec[0] == "health":
            out.append((d, ("health", key)))
        elif spec[0] == "fund":
            out.append((d, ("fund", spec[1], key)))
        else:
            out.append((d, spec))
    return out


@st.composite
def worlds(draw: Any, people: int = 1) -> tuple[World, list[tuple[int, Any]]]:
    persons, accounts, raw = [], {}, []
    for i in range(people):
        person, acc, r = draw(resident(f"p{i}"))
        persons.append(person)
        accounts.update(acc)
        raw += _tag(r, person.key)
    txids = [spec[4] for _, spec in raw if spec[0] == "tx"]
    refunds = []
    if txids:
        for _ in range(draw(st.integers(0, 3))):
            refunds.append(
                (draw(st.integers(START, END)), draw(st.sampled_from(txids)), draw(st.integers(1, 30000)))
            )
    return World(persons, accounts, _events(raw, [p.key for p in persons], refunds)), raw


@given(worlds(people=2))
def test_premium_never_exceeds_cap_nor_phase1_remainder(data: tuple[World, Any]) -> None:
    world, _ = data
    outcome = world.run()
    for person in world.people:
        result = outcome.residents[person.key]
        remainder = PARAMS.premium_cap - (person.phase1.points if person.phase1 else 0)
        assert 0 <= result.premium <= PARAMS.premium_cap
        assert result.premium <= max(0, remainder)


@given(worlds(people=2))
def test_total_never_exceeds_twenty_thousand(data: tuple[World, Any]) -> None:
    world, _ = data
    cap_total = PARAMS.premium_cap + 2 * PARAMS.registration_points
    assert cap_total == 20000
    for result in world.run().residents.values():
        assert result.total <= cap_total


@given(worlds(people=1), st.data())
def test_a_refund_never_raises_points(data: tuple[World, Any], extra: st.DataObject) -> None:
    world, _ = data
    txs = [ev for ev in world.events if isinstance(ev, Transaction)]
    if not txs:
        return
    tx = extra.draw(st.sampled_from(txs))
    position = extra.draw(st.integers(world.events.index(tx) + 1, len(world.events)))
    later_day = world.events[position - 1].day if position > 0 else tx.day
    refund = Refund(0, later_day, dt.date.fromordinal(later_day), tx.txid, extra.draw(st.integers(1, 40000)))
    events = [*world.events[:position], refund, *world.events[position:]]
    events = [dataclasses.replace(ev, seq=i) for i, ev in enumerate(events)]
    before = world.run().residents
    after = World(world.people, world.accounts, events).run().residents
    for key, result in before.items():
        assert after[key].premium <= result.premium
        assert after[key].total <= result.total


@given(worlds(people=2))
def test_outcome_does_not_depend_on_another_residents_unrelated_events(data: tuple[World, Any]) -> None:
    world, _ = data
    alone = World(
        [world.people[0]],
        {k: a for k, a in world.accounts.items() if a.holder == "p0"},
        [ev for ev in world.events if _owner(ev, world) == "p0"],
    )
    together = world.run()
    by_itself = alone.run()
    a, b = together.residents["p0"], by_itself.residents["p0"]
    assert (a.earned, a.statuses) == (b.earned, b.statuses)
    assert [d.code for d in together.applications if d.event.person == "p0"] == [
        d.code for d in by_itself.applications
    ]


def _owner(ev: Event, world: World) -> str:
    if isinstance(ev, Transaction):
        return world.accounts[ev.account].holder
    if isinstance(ev, Refund):
        return ev.of.split("-")[0]
    return ev.person  # type: ignore[attr-defined,no-any-return]


@given(worlds(people=2))
def test_evaluating_twice_gives_the_same_answer(data: tuple[World, Any]) -> None:
    world, _ = data
    first, second = world.run(), world.run()
    assert [d.code for d in first.applications] == [d.code for d in second.applications]
    for key in first.residents:
        assert first.residents[key].earned == second.residents[key].earned
        assert first.residents[key].statuses == second.residents[key].statuses


@given(worlds(people=1), st.data())
def test_splitting_a_charge_never_loses_a_point(data: tuple[World, Any], extra: st.DataObject) -> None:
    world, _ = data
    txs = [ev for ev in world.events if isinstance(ev, Transaction) and ev.amount >= 2]
    if not txs:
        return
    tx = extra.draw(st.sampled_from(txs))
    parts = extra.draw(st.integers(2, min(7, tx.amount)))
    cuts = sorted(
        extra.draw(
            st.lists(st.integers(1, tx.amount - 1), min_size=parts - 1, max_size=parts - 1, unique=True)
        )
    )
    amounts = [b - a for a, b in zip([0, *cuts], [*cuts, tx.amount], strict=True)]
    pieces = [
        dataclasses.replace(tx, amount=amount, txid=f"{tx.txid}.{i}") for i, amount in enumerate(amounts)
    ]
    at = world.events.index(tx)
    events = [*world.events[:at], *pieces, *world.events[at + 1 :]]
    # refunds of the whole charge now name its first piece and cannot refund more than that piece
    events = [
        dataclasses.replace(ev, of=f"{tx.txid}.0") if isinstance(ev, Refund) and ev.of == tx.txid else ev
        for ev in events
    ]
    events = [dataclasses.replace(ev, seq=i) for i, ev in enumerate(events)]
    whole = world.run().residents
    split = World(world.people, world.accounts, events).run().residents
    refunded = any(isinstance(ev, Refund) and ev.of == tx.txid for ev in world.events)
    for key, result in whole.items():
        if refunded:
            assert split[key].premium >= result.premium
        else:
            assert split[key].premium == result.premium
