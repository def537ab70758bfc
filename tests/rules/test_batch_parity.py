"""The batch path (Polars) gives the same answers as the per-resident path on random populations."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from mynapoint.bench.population import resident_histories
from mynapoint.rules.batch import compute_entitlements, frames_from_evaluators
from mynapoint.rules.engine import evaluate_resident
from mynapoint.rules.model import Refund, Transaction
from mynapoint.rules.parameters import load_parameters


@pytest.mark.parametrize(
    ("seed", "as_of", "edition"),
    [
        (1, dt.date(2023, 10, 31), None),
        (2, dt.date(2022, 9, 30), None),
        (3, dt.date(2023, 6, 1), "extension-2023-03-31"),
        (4, dt.date(2022, 8, 15), None),
        (5, dt.date(2024, 3, 31), "extension-2023-03-31"),
    ],
)
def test_batch_matches_per_resident_path(seed: int, as_of: dt.date, edition: str | None) -> None:
    params = load_parameters(edition=edition)
    day = as_of.toordinal()
    histories = list(resident_histories(3000, seed=seed))
    results = [evaluate_resident(h, params, as_of_day=day) for h in histories]
    transactions = [
        (ev.seq, ev.txid, ev.day, ev.account, ev.kind, ev.amount)
        for h in histories
        for ev in h.events
        if isinstance(ev, Transaction)
    ]
    refunds = [(ev.of, ev.day, ev.amount) for h in histories for ev in h.events if isinstance(ev, Refund)]
    frames, pids = frames_from_evaluators(
        (r.evaluator for r in results), transactions=transactions, refunds=refunds
    )
    batch = compute_entitlements(frames, params, as_of_day=day)
    expected = pl.DataFrame(
        {
            "pid": [pids[r.person] for r in results],
            "premium": [r.premium for r in results],
            "health_insurance": [r.health_insurance for r in results],
            "public_fund": [r.public_fund for r in results],
            "premium_status": [r.statuses[0] for r in results],
            "health_insurance_status": [r.statuses[1] for r in results],
            "public_fund_status": [r.statuses[2] for r in results],
        }
    )
    got = batch.select(expected.columns).cast(expected.schema)  # type: ignore[arg-type]
    mismatched = got.join(expected, on="pid", suffix="_engine").filter(
        pl.any_horizontal(pl.col(c) != pl.col(f"{c}_engine") for c in expected.columns if c != "pid")
    )
    assert mismatched.height == 0, (
        f"batch differs from the engine for {mismatched.height} residents:\n{mismatched}"
    )
    # the population is not trivial: every measure pays someone, and some residents earn partial premiums
    assert got["premium"].sum() > 0
    assert got["health_insurance"].sum() > 0
    assert got["public_fund"].sum() > 0
    assert ((got["premium"] > 0) & (got["premium"] < params.premium_cap)).any()


def test_batch_refuses_sparse_resident_numbers() -> None:
    params = load_parameters()
    histories = list(resident_histories(3, seed=9))
    results = [evaluate_resident(h, params, as_of_day=738000) for h in histories]
    frames, _ = frames_from_evaluators((r.evaluator for r in results), transactions=[], refunds=[])
    bad = type(frames)(
        residents=frames.residents.with_columns(pl.col("pid") + 10),
        links=frames.links,
        link_accounts=frames.link_accounts,
        transactions=frames.transactions,
        refunds=frames.refunds,
        registrations=frames.registrations,
    )
    with pytest.raises(ValueError, match=r"numbered 0\.\.n-1"):
        compute_entitlements(bad, params, as_of_day=738000)
