from __future__ import annotations

from mynapoint.identity.jpki.bench import bench_logins


def test_bench_logins_reports_its_figures() -> None:
    result = bench_logins(5, users=2, crl_entries=10)
    for key in (
        "n",
        "seconds",
        "verifications_per_second",
        "mean_ms",
        "p50_ms",
        "p99_ms",
        "crl_entries",
        "checks",
    ):
        assert key in result
    assert result["n"] == 5
    assert result["verifications_per_second"] > 0  # a figure, not a timing assertion
