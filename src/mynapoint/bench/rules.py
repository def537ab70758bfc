"""``mynapoint bench rules``: residents evaluated per second, per-resident and batch, against a baseline.

Figures are throughputs measured in this run; the batch path is also reported as a ratio to a plain
``GROUP BY`` sum over the same transactions in the same run, which holds on a noisy machine.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import platform
import time
from collections.abc import Callable
from typing import Any

from mynapoint.bench.population import columnar_population, resident_histories
from mynapoint.rules.batch import compute_entitlements, plain_group_by_baseline
from mynapoint.rules.engine import evaluate_resident
from mynapoint.rules.parameters import load_parameters

__all__ = ["run_rules_benchmark"]

AS_OF = dt.date(2023, 10, 31)


def _best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_rules_benchmark(
    *, residents: int, batch_residents: int, seed: int, echo: Callable[[str], object] = print
) -> dict[str, Any]:
    params = load_parameters()
    as_of_day = AS_OF.toordinal()
    echo(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    echo(f"generating {residents:,} resident histories ...")
    histories = list(resident_histories(residents, seed=seed))
    events = sum(len(h.events) for h in histories)

    def per_resident() -> None:
        for h in histories:
            evaluate_resident(h, params, as_of_day=as_of_day)

    per_resident_s = _best_of(3, per_resident)
    per_resident_rate = residents / per_resident_s
    echo(
        f"per-resident path (one core): {per_resident_rate:,.0f} residents/s "
        f"({events / residents:.1f} events per resident, best of 3 over {residents:,})"
    )
    histories.clear()  # free the memory before the batch population is built
    echo(f"generating {batch_residents:,} residents as columns ...")
    frames = columnar_population(batch_residents, seed=seed, params=params)
    rows = frames.transactions.height
    compute_entitlements(frames, params, as_of_day=as_of_day)  # warm-up
    batch_s = _best_of(3, lambda: compute_entitlements(frames, params, as_of_day=as_of_day))
    baseline_s = _best_of(3, lambda: plain_group_by_baseline(frames))
    batch_rate = batch_residents / batch_s
    echo(
        f"batch path (Polars, {os.cpu_count()} cores): {batch_rate:,.0f} residents/s "
        f"({rows:,} transactions, {batch_s * 1000:.0f} ms)"
    )
    echo(
        f"plain GROUP BY sum of the same transactions: {baseline_s * 1000:.0f} ms; "
        f"batch takes {batch_s / baseline_s:.1f}x the GROUP BY time"
    )
    return {
        "per_resident_residents_per_s": round(per_resident_rate),
        "per_resident_events_per_resident": round(events / residents, 2),
        "batch_residents_per_s": round(batch_rate),
        "batch_transactions": rows,
        "batch_seconds": round(batch_s, 4),
        "group_by_seconds": round(baseline_s, 4),
        "batch_over_group_by_time_ratio": round(batch_s / baseline_s, 2),
    }
