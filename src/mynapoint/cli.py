"""The ``mynapoint`` command."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mynapoint.rules.parameters import ParameterError, available_editions, load_parameters

_DATE = click.DateTime(formats=["%Y-%m-%d"])


def _console() -> Console:
    # a pipe or a CI log gets a wide table instead of rich's 80-column default
    return Console(highlight=False, width=None if sys.stdout.isatty() else 180)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """mynapoint: マイナポイント第2弾を運営するプラットフォーム (runs the Mynapoint Phase 2 programme)."""


# ------------------------------------------------------------------------------------------- parameters


@main.group()
def parameters() -> None:
    """プログラムのパラメータ (programme parameters)."""


@parameters.command("show")
@click.option(
    "--as-decided-on", "decided", type=_DATE, help="Values as decided on this JST day (YYYY-MM-DD)."
)
@click.option("--edition", help="A named edition (default: seed). See --list-editions.")
@click.option("--list-editions", is_flag=True, help="List the editions and their decision dates.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def parameters_show(
    decided: dt.datetime | None, edition: str | None, list_editions: bool, as_json: bool
) -> None:
    """Print the programme parameters with their sources."""
    console = _console()
    if list_editions:
        for e in available_editions():
            console.print(f"{e.name}\t{e.decided.isoformat()}\t{e.title}\t({e.source})")
        return
    try:
        params = load_parameters(edition=edition, as_decided_on=decided.date() if decided else None)
    except ParameterError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        doc = {
            "edition": params.edition,
            "as_decided_on": params.as_decided_on.isoformat(),
            "parameters": {
                name: {
                    "value": v.value.isoformat() if isinstance(v.value, dt.date) else v.value,
                    "decided": v.decided.isoformat(),
                    "source": v.source,
                    "label_ja": v.label_ja,
                    "label_en": v.label_en,
                }
                for name, v in params.values.items()
            },
        }
        click.echo(json.dumps(doc, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"プログラムのパラメータ: {params.edition}（{params.as_decided_on} 時点の決定）")
    for col in ("name", "項目", "value", "decided", "source"):
        table.add_column(col)
    for name, v in params.values.items():
        value = (
            v.value.isoformat()
            if isinstance(v.value, dt.date)
            else ("—" if v.value is None else str(v.value))
        )
        table.add_row(name, v.label_ja, value, v.decided.isoformat(), v.source)
    console.print(table)


# ------------------------------------------------------------------------------------------- scenarios


@main.group()
def scenarios() -> None:
    """プログラムのシナリオ (programme scenarios)."""


@scenarios.command("run")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print the machine-readable outcome (docs/scenarios.md)."
)
@click.option("--explain", is_flag=True, help="Explain every decision and result in Japanese.")
def scenarios_run(paths: tuple[Path, ...], as_json: bool, explain: bool) -> None:
    """Run scenario files or folders; exit 0 only if every scenario passes."""
    from mynapoint.scenarios.runner import run_paths

    report = run_paths(list(paths))
    for err in report.errors:
        click.echo(f"error: {err}", err=True)
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        _print_report(report, explain=explain)
    if report.errors:
        sys.exit(2)
    if not report.results:
        click.echo("error: no scenarios were found", err=True)
        sys.exit(2)
    sys.exit(0 if report.failed == 0 else 1)


def _print_report(report: Any, *, explain: bool) -> None:
    console = _console()
    if not report.results:
        return
    table = Table(title="シナリオの結果 (scenario outcomes)")
    for col in ("file", "scenario", "result", "申込 applications", "付与 earned", "differences"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        apps = ", ".join("OK" if a == "accepted" else a["rejected"] for a in r.outcome["applications"]) or "—"
        earned = "; ".join(
            f"{p}: {e['premium']}/{e['health_insurance']}/{e['public_fund']}"
            for p, e in r.outcome["earned"].items()
        )
        diffs = "; ".join(f"{d.path}: expected {d.expected}, got {d.actual}" for d in r.differences)
        result = "[green]passed[/]" if r.passed else "[red]FAILED[/]"
        table.add_row(Path(r.scenario.file).name, r.scenario.name, result, apps, earned, diffs)
    console.print(table)
    if explain:
        for r in report.results:
            console.rule(r.scenario.name)
            for d in r.world.applications:
                console.print(d.explanation.text_ja())
            for reg in r.world.registrations:
                console.print(reg.explanation.text_ja())
            for person, result in r.world.residents.items():
                console.print(f"[bold]{person}[/]")
                for outcome in result.outcomes():
                    console.print(outcome.explanation.text_ja())
    console.print(f"passed: {report.passed}, failed: {report.failed}, errors: {len(report.errors)}")


# ------------------------------------------------------------------------------------------- bench


@main.group()
def bench() -> None:
    """ベンチマーク (benchmarks that print figures)."""


@bench.command("rules")
@click.option("--residents", default=200_000, show_default=True, help="Synthetic population size.")
@click.option(
    "--batch-residents", default=2_000_000, show_default=True, help="Population for the batch path."
)
@click.option("--seed", default=20230930, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_rules(residents: int, batch_residents: int, seed: int, as_json: bool) -> None:
    """Residents evaluated per second: per-resident path, batch path, and a plain GROUP BY baseline."""
    from mynapoint.bench.rules import run_rules_benchmark

    figures = run_rules_benchmark(
        residents=residents, batch_residents=batch_residents, seed=seed, echo=click.echo
    )
    if as_json:
        click.echo(json.dumps(figures, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
