"""The mynapoint command, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCENARIOS = Path(__file__).parents[1] / "scenarios"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "mynapoint.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_scenarios_run_json_has_the_documented_shape() -> None:
    done = run("scenarios", "run", "--json", str(SCENARIOS / "shared"))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc) == {"passed", "failed", "scenarios"}
    assert doc["failed"] == 0
    assert doc["passed"] == len(doc["scenarios"]) == 21
    first = doc["scenarios"][0]
    assert set(first) == {"file", "name", "passed", "differences", "outcome"}
    assert {"applications", "public_fund_accounts", "earned"} <= set(first["outcome"])
    premium = next(s for s in doc["scenarios"] if s["name"] == "新規取得者が2万円チャージして5,000ポイント")
    assert premium["outcome"]["earned"]["taro"] == {"premium": 5000, "health_insurance": 0, "public_fund": 0}
    assert premium["outcome"]["applications"] == ["accepted"]


def test_a_failing_scenario_exits_1_and_shows_the_difference(tmp_path: Path) -> None:
    text = (SCENARIOS / "shared" / "premium.yaml").read_text(encoding="utf-8")
    (tmp_path / "p.yaml").write_text(
        text.replace("taro: {premium: 751}", "taro: {premium: 750}"), encoding="utf-8"
    )
    done = run("scenarios", "run", "--json", str(tmp_path))
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert doc["failed"] == 1
    [bad] = [s for s in doc["scenarios"] if not s["passed"]]
    assert bad["differences"] == [{"path": "earned.taro.premium", "expected": 750, "actual": 751}]


def test_a_malformed_file_exits_2_and_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("name: x\nas_of: 2023-13-01\nexpect: {earned: {}}\n", encoding="utf-8")
    done = run("scenarios", "run", str(tmp_path / "m.yaml"))
    assert done.returncode == 2
    assert "m.yaml: scenario 'x': as_of" in done.stderr


def test_parameters_show_prints_values_with_sources() -> None:
    done = run("parameters", "show", "--json", "--as-decided-on", "2023-03-31")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    deadline = doc["parameters"]["point_application_deadline"]
    assert deadline["value"] == "2023-09-30"
    assert deadline["decided"] == "2023-03-31"
    assert "nikkei" in deadline["source"]
    table = run("parameters", "show")
    assert "ポイント申込期限" in table.stdout
    assert "2023-05-31" in table.stdout


def test_parameters_show_refuses_an_unknown_edition() -> None:
    done = run("parameters", "show", "--edition", "nope")
    assert done.returncode == 2
    assert "unknown edition 'nope'" in done.stderr


def test_explain_prints_reasons_in_japanese() -> None:
    done = run("scenarios", "run", "--explain", str(SCENARIOS / "shared" / "premium.yaml"))
    assert done.returncode == 0
    assert "対象額の累計" in done.stdout
    assert "根拠となった記録" in done.stdout
