"""Running scenarios through the rules engine and comparing with what they expect."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mynapoint.rules.engine import WorldOutcome, evaluate_world
from mynapoint.rules.model import MEASURES
from mynapoint.scenarios.loader import Scenario, ScenarioError, iter_scenario_files, load_file

__all__ = ["Difference", "RunReport", "ScenarioResult", "outcome_of", "run_paths", "run_scenario"]


@dataclass(frozen=True, slots=True)
class Difference:
    path: str
    expected: Any
    actual: Any

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "expected": self.expected, "actual": self.actual}


@dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    outcome: dict[str, Any]
    differences: list[Difference]
    world: WorldOutcome

    @property
    def passed(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.scenario.file,
            "name": self.scenario.name,
            "passed": self.passed,
            "differences": [d.as_dict() for d in self.differences],
            "outcome": self.outcome,
        }


@dataclass(slots=True)
class RunReport:
    results: list[ScenarioResult] = field(default_factory=list)
    errors: list[ScenarioError] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        return not self.errors and self.failed == 0 and bool(self.results)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "passed": self.passed,
            "failed": self.failed,
            "scenarios": [r.as_dict() for r in self.results],
        }
        if self.errors:
            doc["errors"] = [
                {"file": e.file, "scenario": e.scenario, "key": e.key, "message": e.message}
                for e in self.errors
            ]
        return doc


def outcome_of(world: WorldOutcome, scenario: Scenario) -> dict[str, Any]:
    """The computed outcome in the same shape as ``expect``."""
    return {
        "applications": [d.as_expected_form() for d in world.applications],
        "public_fund_accounts": [d.as_expected_form() for d in world.registrations],
        "earned": {key: world.residents[key].earned for key in scenario.people},
        "statuses": {
            key: dict(zip(MEASURES, world.residents[key].statuses, strict=True)) for key in scenario.people
        },
    }


def _compare_list(name: str, expected: list[Any], actual: list[Any]) -> list[Difference]:
    diffs = []
    for i in range(max(len(expected), len(actual))):
        exp = expected[i] if i < len(expected) else None
        act = actual[i] if i < len(actual) else None
        if exp != act:
            diffs.append(Difference(f"{name}[{i}]", exp, act))
    return diffs


def run_scenario(scenario: Scenario) -> ScenarioResult:
    world = evaluate_world(
        people=scenario.people.values(),
        accounts=scenario.accounts,
        providers=scenario.providers,
        events=scenario.events,
        params=scenario.params,
        as_of=scenario.as_of,
    )
    outcome = outcome_of(world, scenario)
    expect = scenario.expect
    diffs: list[Difference] = []
    for key in ("applications", "public_fund_accounts"):
        if key in expect:
            diffs += _compare_list(key, expect[key], outcome[key])
    for key in ("earned", "statuses"):
        for person, measures in expect.get(key, {}).items():
            for measure, value in measures.items():
                actual = outcome[key][person][measure]
                if actual != value:
                    diffs.append(Difference(f"{key}.{person}.{measure}", value, actual))
    return ScenarioResult(scenario, outcome, diffs, world)


def run_paths(paths: list[Path]) -> RunReport:
    """Run every scenario in the files and folders given. Malformed files are reported, never skipped quietly."""
    report = RunReport()
    try:
        files = list(iter_scenario_files(paths))
    except ScenarioError as exc:
        report.errors.append(exc)
        return report
    for file in files:
        try:
            scenarios = load_file(file)
        except ScenarioError as exc:
            report.errors.append(exc)
            continue
        report.results.extend(run_scenario(s) for s in scenarios)
    return report
