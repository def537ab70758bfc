"""Synthetic populations with realistic histories, for benchmarks and the batch parity test.

Shapes follow program.md §8: most card holders apply for 施策2 and 施策3, most for 施策1; a few have a phase-1
history, a few die, a few refund, a few register an account in a family member's name. Nothing here is a
real person; keys are generated.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from mynapoint.rules.batch import DAY_MAX, SEQ_MAX, BatchFrames
from mynapoint.rules.engine import ResidentHistory
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
from mynapoint.rules.parameters import Parameters

__all__ = ["PROVIDERS", "columnar_population", "resident_histories"]

_D = dt.date.toordinal
PROVIDERS: dict[str, Provider] = {
    "qr": Provider(key="qr"),
    "emoney": Provider(key="emoney", modes=frozenset({"charge"}), application_deadline=dt.date(2023, 9, 29)),
    "credit": Provider(key="credit", modes=frozenset({"purchase"}), charge_deadline=dt.date(2023, 9, 20)),
    "debit": Provider(key="debit", modes=frozenset({"purchase"})),
}
_PROVIDER_KEYS = list(PROVIDERS)
_KANA = [
    "ヤマダ ハナコ",
    "タナカ タロウ",
    "サトウ キョウコ",
    "スズキ コウジ",
    "ワタナベ ユウ",
    "イトウ ショウ",
]


@dataclass(frozen=True, slots=True)
class _Window:
    start: int
    end: int


def _day(rng: random.Random, window: _Window) -> int:
    return rng.randint(window.start, window.end)


def _history(rng: random.Random, index: int) -> ResidentHistory:
    key = f"r{index}"
    born = dt.date.fromordinal(rng.randint(_D(dt.date(1935, 1, 1)), _D(dt.date(2016, 12, 31))))
    card_applied = (
        dt.date.fromordinal(rng.randint(_D(dt.date(2016, 1, 1)), _D(dt.date(2023, 3, 20))))
        if rng.random() < 0.93
        else None
    )
    card_issued = None
    if card_applied is not None and rng.random() < 0.97:
        card_issued = card_applied + dt.timedelta(days=rng.randint(14, 60))
    accounts: dict[str, Account] = {}

    def new_account(holder: str) -> Account:
        provider = rng.choice(_PROVIDER_KEYS)
        mode = rng.choice(sorted(PROVIDERS[provider].modes))
        account = Account(
            key=f"{provider}/{key}-{len(accounts)}", provider=provider, holder=holder, mode=mode
        )
        accounts[account.key] = account
        return account

    main = new_account(key)
    phase1 = None
    if rng.random() < 0.12:
        applied = dt.date.fromordinal(rng.randint(_D(dt.date(2020, 7, 1)), _D(dt.date(2022, 1, 10))))
        phase1 = Phase1(
            applied=applied, account=main.key, points=rng.choice([0, 1000, 2500, 4999, 5000, 5000])
        )
    age = (dt.date(2022, 6, 1) - born).days // 365
    representative = f"{key}-parent" if age < 18 else None
    account_for_apply = main
    if representative is not None and rng.random() < 0.5:
        account_for_apply = new_account(representative)
    died = None
    if rng.random() < 0.01:
        died = dt.date.fromordinal(rng.randint(_D(dt.date(2022, 1, 1)), _D(dt.date(2023, 9, 30))))
    person = Person(
        key=key,
        born=born,
        card_applied=card_applied,
        card_issued=card_issued,
        kana=rng.choice(_KANA),
        phase1=phase1,
        legal_representative=representative,
        died=died,
    )
    # (day, order within day, builder) so that events sort into time order
    pending: list[tuple[int, int, tuple[Any, ...]]] = []
    period = _Window(_D(dt.date(2021, 12, 1)), _D(dt.date(2023, 10, 15)))
    by = representative if representative is not None and age < 15 else key
    present = tuple(p for p in (key, representative) if p is not None)
    for measure, share in (("premium", 0.8), ("health_insurance", 0.72), ("public_fund", 0.68)):
        if rng.random() < share:
            pending.append((_day(rng, period), 0, ("apply", measure, account_for_apply.key, by, present)))
            if rng.random() < 0.04:
                pending.append((_day(rng, period), 0, ("apply", measure, account_for_apply.key, by, present)))
    if rng.random() < 0.75:
        pending.append((_day(rng, period), 1, ("health",)))
    if rng.random() < 0.7:
        kana = person.kana if rng.random() > 0.03 else rng.choice(_KANA)
        pending.append((_day(rng, period), 1, ("fund", kana)))
    tx_window = _Window(_D(dt.date(2022, 1, 1)), _D(dt.date(2023, 10, 31)))
    for n in range(rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 12])):
        kind = account_for_apply.mode if rng.random() < 0.85 else rng.choice(["charge", "purchase"])
        amount = rng.choice([500, 1000, 1002, 3000, 5000, 7777, 10000, 20000])
        txid = f"{key}-t{n}"
        day = _day(rng, tx_window)
        pending.append((day, 2, ("tx", account_for_apply.key, kind, amount, txid)))
        if rng.random() < 0.08:
            pending.append(
                (day + rng.randint(0, 60), 3, ("refund", txid, rng.choice([500, 1000, amount, 99999])))
            )
    if rng.random() < 0.01:
        spare = new_account(account_for_apply.holder)
        pending.append((_day(rng, tx_window), 1, ("replace", account_for_apply.key, spare.key)))
    pending.sort(key=lambda item: (item[0], item[1]))
    events: list[Event] = []
    for seq, (day, _, spec) in enumerate(pending):
        at = dt.date.fromordinal(day)
        match spec:
            case ("apply", measure, account, applicant, present_people):
                events.append(Apply(seq, day, at, key, measure, account, applicant, present_people))
            case ("health",):
                events.append(RegisterHealthInsurance(seq, day, at, key))
            case ("fund", kana):
                events.append(RegisterPublicFundAccount(seq, day, at, key, kana))
            case ("tx", account, kind, amount, txid):
                events.append(Transaction(seq, day, at, account, kind, amount, txid))
            case ("refund", txid, amount):
                events.append(Refund(seq, day, at, txid, amount))
            case ("replace", source, target):
                events.append(ReplaceAccount(seq, day, at, key, source, target))
    return ResidentHistory(person=person, accounts=accounts, providers=PROVIDERS, events=events)


def resident_histories(n: int, *, seed: int) -> Iterator[ResidentHistory]:
    """``n`` residents with independent histories (each resident's own accounts: no cross-links)."""
    rng = random.Random(seed)
    for i in range(n):
        yield _history(rng, i)


def columnar_population(n: int, *, seed: int, params: Parameters) -> BatchFrames:
    """A population of ``n`` decided residents, generated straight into columns (for the batch benchmark)."""
    rng = np.random.default_rng(seed)
    start, deadline = params.phase2_start_day, params.point_application_deadline_day
    pid = np.arange(n, dtype=np.int64)
    phase1_points = np.where(rng.random(n) < 0.12, rng.choice([0, 1000, 2500, 4999, 5000], n), 0)
    cap = np.maximum(0, params.premium_cap - phase1_points).astype(np.int64)
    died = np.where(rng.random(n) < 0.01, rng.integers(start, deadline, n), -1).astype(np.int32)
    residents = pl.DataFrame({"pid": pid, "cap_remaining": cap, "died_day": died}).with_columns(
        pl.when(pl.col("died_day") < 0).then(None).otherwise(pl.col("died_day")).alias("died_day")
    )
    link_frames = []
    reg_frames = []
    for code, share, reg_share in ((0, 0.8, 0.0), (1, 0.72, 0.75), (2, 0.68, 0.7)):
        has = rng.random(n) < share
        ids = pid[has]
        day = rng.integers(start, deadline + 1, ids.size).astype(np.int32)
        link_frames.append(
            pl.DataFrame(
                {
                    "pid": ids,
                    "measure": np.full(ids.size, code, np.int8),
                    "day": day,
                    "seq": day.astype(np.int64) * 1000,
                    "mode": rng.integers(0, 2, ids.size).astype(np.int8),
                    "start_day": day,
                    "charge_deadline_day": np.full(ids.size, deadline if code == 0 else DAY_MAX, np.int32),
                }
            )
        )
        if reg_share:
            regs = pid[rng.random(n) < reg_share]
            reg_day = rng.integers(start, deadline + 30, regs.size).astype(np.int32)
            reg_frames.append(
                pl.DataFrame({"pid": regs, "measure": np.full(regs.size, code, np.int8), "day": reg_day})
            )
    links = pl.concat(link_frames)
    premium = link_frames[0]
    link_accounts = premium.select(
        "pid", account=pl.col("pid"), from_seq=pl.col("seq"), to_seq=pl.lit(SEQ_MAX, pl.Int64)
    )
    # transactions: on average ~4.5 per resident, on the resident's own account (account id = pid)
    counts = rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 12], n)
    tx_pid = np.repeat(pid, counts)
    m = tx_pid.size
    tx_day = rng.integers(start, deadline + 45, m).astype(np.int32)
    mode_of = np.zeros(n, np.int8)
    mode_of[premium["pid"].to_numpy()] = premium["mode"].to_numpy()
    kind = np.where(rng.random(m) < 0.85, mode_of[tx_pid], rng.integers(0, 2, m)).astype(np.int8)
    transactions = pl.DataFrame(
        {
            "txid": np.arange(m, dtype=np.int64),
            "account": tx_pid,
            "seq": tx_day.astype(np.int64) * 1000 + 1,
            "day": tx_day,
            "kind": kind,
            "amount": rng.choice([500, 1000, 1002, 3000, 5000, 7777, 10000, 20000], m).astype(np.int64),
        }
    )
    refunded = rng.random(m) < 0.08
    refunds = pl.DataFrame(
        {
            "txid": np.arange(m, dtype=np.int64)[refunded],
            "day": (tx_day[refunded] + rng.integers(0, 60, int(refunded.sum()))).astype(np.int32),
            "amount": rng.choice([500, 1000, 99999], int(refunded.sum())).astype(np.int64),
        }
    )
    return BatchFrames(
        residents=residents.cast(BatchFrames.schema("residents")),  # type: ignore[arg-type]
        links=links.cast(BatchFrames.schema("links")),  # type: ignore[arg-type]
        link_accounts=link_accounts.cast(BatchFrames.schema("link_accounts")),  # type: ignore[arg-type]
        transactions=transactions.cast(BatchFrames.schema("transactions")),  # type: ignore[arg-type]
        refunds=refunds.cast(BatchFrames.schema("refunds")),  # type: ignore[arg-type]
        registrations=pl.concat(reg_frames).cast(BatchFrames.schema("registrations")),  # type: ignore[arg-type]
    )
