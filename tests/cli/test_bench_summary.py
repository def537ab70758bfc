"""The provider benchmark's summary of several runs and its CPU readings (no database needed)."""

from __future__ import annotations

import os
from typing import Any

from mynapoint.bench.provider import _cpu, _cpu_split, _process_seconds, summarise


def _run(rate: int, ratio: float, shaped: float) -> dict[str, Any]:
    return {"end_to_end_tx_per_s": rate, "ratio_to_copy": ratio, "ratio_to_shaped_copy": shaped, "pid": rate}


def test_the_figures_are_the_median_runs_with_every_run_beside_them() -> None:
    runs = [_run(30_000, 0.05, 0.30), _run(36_000, 0.06, 0.33), _run(28_000, 0.04, 0.25)]
    figures = summarise(runs)
    assert figures["end_to_end_tx_per_s"] == 30_000
    assert figures["pid"] == 30_000  # every figure of that run, not a mix of runs
    assert figures["runs"] == 3
    assert figures["end_to_end_tx_per_s_each"] == [30_000, 36_000, 28_000]  # in the order they ran
    assert figures["ratio_to_copy_each"] == [0.05, 0.06, 0.04]
    assert figures["ratio_to_shaped_copy_each"] == [0.30, 0.33, 0.25]


def test_an_even_count_of_runs_reports_the_lower_middle_and_one_run_itself() -> None:
    assert summarise([_run(40_000, 0.1, 0.3), _run(20_000, 0.1, 0.3)])["end_to_end_tx_per_s"] == 20_000
    only = summarise([_run(25_000, 0.1, 0.3)])
    assert (only["end_to_end_tx_per_s"], only["runs"]) == (25_000, 1)


def test_cpu_readings_count_this_process_and_the_machine() -> None:
    before = _cpu([os.getpid()])
    if not os.path.exists("/proc/stat"):  # not Linux: no reading, and no split, rather than a wrong one
        assert before is None
        assert _cpu_split(before, before) is None
        return
    total = 0
    for n in range(3_000_000):  # about a quarter of a second of one core
        total += n % 7
    after = _cpu([os.getpid()])
    split = _cpu_split(before, after)
    assert split is not None
    assert total > 0
    assert split["python_core_seconds"] > 0.05
    assert split["busy_core_seconds"] >= split["python_core_seconds"] - 0.02  # ticks, sampled apart
    assert 0 < split["busy_share"] <= 1
    assert _process_seconds(2**22 + 7) == 0.0  # no such process: nothing, not an error
    assert _cpu_split(None, after) is None
