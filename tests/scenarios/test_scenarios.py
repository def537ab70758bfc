"""Every scenario file in tests/scenarios passes, and malformed files are errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from mynapoint.scenarios.loader import ScenarioError, load_file
from mynapoint.scenarios.runner import run_paths, run_scenario

HERE = Path(__file__).parent
FILES = sorted(HERE.rglob("*.yaml"))
LOADED = {f: load_file(f) for f in FILES}
CASES = [(f, s.name) for f, scenarios in LOADED.items() for s in scenarios]


def test_the_shared_and_own_scenarios_are_all_here() -> None:
    assert {f.name for f in (HERE / "shared").glob("*.yaml")} >= {
        "eligibility.yaml",
        "premium.yaml",
        "registrations.yaml",
    }
    assert len(list((HERE / "own").glob("*.yaml"))) >= 5


@pytest.mark.parametrize(("file", "name"), CASES, ids=[f"{f.parent.name}/{f.stem}:{n}" for f, n in CASES])
def test_scenario(file: Path, name: str) -> None:
    scenario = next(s for s in LOADED[file] if s.name == name)
    result = run_scenario(scenario)
    assert result.passed, "\n".join(
        f"{d.path}: expected {d.expected}, got {d.actual}" for d in result.differences
    )


def test_a_wrong_expectation_fails_with_its_difference(tmp_path: Path) -> None:
    text = (HERE / "shared" / "premium.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("taro: {premium: 2500}", "taro: {premium: 2400}"), encoding="utf-8")
    report = run_paths([broken])
    assert report.failed == 1
    [failed] = [r for r in report.results if not r.passed]
    assert [d.as_dict() for d in failed.differences] == [
        {"path": "earned.taro.premium", "expected": 2400, "actual": 2500}
    ]


BASE = """\
- name: 例
  as_of: 2023-06-30
  people:
    taro: {born: 1985-07-01, card_applied: 2022-02-01, card_issued: 2022-03-01}
  accounts:
    wallet/taro-1: {holder: taro, mode: charge}
  events:
    - {at: 2022-03-05, person: taro, do: apply, measure: premium, account: wallet/taro-1}
    - {at: 2022-03-06, do: charge, account: wallet/taro-1, amount: 20000, id: c1}
  expect:
    applications: [accepted]
    earned:
      taro: {premium: 5000}
"""


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("as_of: 2023-06-30", "as_of: 2023-02-30", "as_of", "not a real date"),
        ("born: 1985-07-01", "born: 1985/07/01", "people.taro.born", "YYYY-MM-DD"),
        (
            "card_issued: 2022-03-01}",
            "card_issued: 2022-03-01, shoe_size: 27}",
            "people.taro.shoe_size",
            "unknown key",
        ),
        ("person: taro, do: apply", "person: jiro, do: apply", "events[0].person", "unknown person 'jiro'"),
        (
            "account: wallet/taro-1, amount",
            "account: wallet/nobody, amount",
            "events[1].account",
            "unknown account",
        ),
        ("measure: premium", "measure: points", "events[0].measure", "unknown measure 'points'"),
        ("at: 2022-03-06", "at: 2022-03-01", "events[1].at", "goes back in time"),
        ("at: 2022-03-06", "at: 2022-03-06T10:00:00", "events[1].at", "no UTC offset"),
        ("amount: 20000", "amount: -5", "events[1].amount", "positive whole number"),
        ("do: charge", "do: steal", "events[1].do", "unknown action 'steal'"),
        ("taro: {premium: 5000}", "taro: {bonus: 5000}", "expect.earned.taro.bonus", "unknown key"),
        ("taro: {premium: 5000}", "jiro: {premium: 5000}", "expect.earned.jiro", "unknown person"),
        (
            "applications: [accepted]",
            "applications: [accepted, accepted]",
            "expect.applications",
            "2 expected",
        ),
        (
            "applications: [accepted]",
            "applications: [{rejected: too_rich}]",
            "expect.applications[0]",
            "too_rich",
        ),
        (
            "as_of: 2023-06-30",
            "as_of: 2023-06-30\n  parameters: {premium_cap: lots}",
            "parameters.premium_cap",
            "whole",
        ),
        (
            "as_of: 2023-06-30",
            "as_of: 2023-06-30\n  parameters: {bonus: 1}",
            "parameters.bonus",
            "unknown parameter",
        ),
        ("as_of: 2023-06-30", "as_of: 2023-06-30\n  edition: nope", "edition", "unknown edition 'nope'"),
        (
            "as_of: 2023-06-30",
            "as_of: 2023-06-30\n  as_decided_on: 2022-01-01",
            "as_decided_on",
            "no value decided",
        ),
        ("mode: charge}", "mode: charge, holder: taro}", "line 6", "duplicate key 'holder'"),
    ],
)
def test_malformed_files_name_the_file_the_scenario_and_the_key(
    tmp_path: Path, old: str, new: str, key: str, words: str
) -> None:
    assert old in BASE
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_file(path)
    err = caught.value
    assert err.file == str(path)
    assert err.scenario == "例"
    assert err.key == key
    assert words in err.message
    assert str(path) in str(err)
    assert "例" in str(err)
    assert key in str(err)


def test_a_malformed_file_among_good_ones_is_reported_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(BASE, encoding="utf-8")
    (tmp_path / "bad.yaml").write_text(BASE.replace("born: 1985-07-01", "born: yesterday"), encoding="utf-8")
    report = run_paths([tmp_path])
    assert report.passed == 1
    assert [e.key for e in report.errors] == ["people.taro.born"]
    assert not report.ok


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    report = run_paths([tmp_path])
    assert report.errors
    assert "no scenario files" in report.errors[0].message
