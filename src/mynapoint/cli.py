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


def _django() -> None:
    """Set Django up for the commands that use the database."""
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mynapoint.config.settings")
    import django

    django.setup()


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


@bench.command("logins")
@click.option("--n", "count", default=2000, show_default=True, help="Logins to verify.")
@click.option("--crl-entries", default=1000, show_default=True)
def bench_logins_command(count: int, crl_entries: int) -> None:
    """JPKI login verifications per second (nonce, validity, chain, signature and CRL together, one core)."""
    from mynapoint.identity.jpki.bench import bench_logins

    figures = bench_logins(count, crl_entries=crl_entries)
    click.echo(
        f"JPKI login verification: {figures['verifications_per_second']:,.0f} logins/s "
        f"(mean {figures['mean_ms']} ms, p99 {figures['p99_ms']} ms; {figures['checks']}; "
        f"CRL of {figures['crl_entries']:,} entries; {count:,} logins)"
    )


# ------------------------------------------------------------------------------------------- Django


@main.command(
    "manage",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def manage(args: tuple[str, ...]) -> None:
    """Django's manage.py (migrate, createsuperuser, ...): `mynapoint manage migrate`."""
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mynapoint.config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["mynapoint manage", *args])


@main.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--serve/--no-serve", default=True, help="Start the server after loading the demo data.")
@click.option(
    "--clock-start",
    default=None,
    help="Run the programme clock from this moment (ISO with offset). Default: 2023-03-15T10:00:00+09:00.",
)
def demo(host: str, port: int, serve: bool, clock_start: str | None) -> None:
    """Migrate the embedded database, load the demo data, and start the server."""
    import os

    if clock_start is None and not os.environ.get("MYNAPOINT_CLOCK_START"):
        from mynapoint.clock import DEMO_START

        clock_start = DEMO_START.isoformat()
    if clock_start:
        os.environ["MYNAPOINT_CLOCK_START"] = clock_start
    _django()
    from django.conf import settings
    from django.core.management import call_command

    from mynapoint import clock
    from mynapoint.demo import load_demo

    if clock_start:
        clock.start_at(dt.datetime.fromisoformat(clock_start))
    console = _console()
    console.print(f"データベース / database: {settings.DATABASES['default']['NAME']}")
    call_command("migrate", verbosity=0, interactive=False)
    folder = Path(settings.DATA_DIR) / "demo"
    residents = load_demo(folder=folder, now=clock.now(), echo=console.print)
    console.print(f"プログラムの時計 / programme clock: {clock.now():%Y-%m-%d %H:%M} JST")
    table = Table(title="デモの住民 / demo residents (software cards; the PIN stays on the card)")
    for col in ("name", "MyKey ID", "card", "PIN", "accounts (service ID: security code)"):
        table.add_column(col)
    from mynapoint.demo import DEMO_RESIDENTS

    for person in DEMO_RESIDENTS:
        accounts = ", ".join(f"{a}: {' '.join(c)}" for a, c in person.accounts.items()) or "—"
        table.add_row(
            person.name,
            residents[person.key].mykey_id,
            str(folder / "cards" / f"{person.key}.json"),
            person.pin,
            accounts,
        )
    console.print(table)
    url = f"http://{host}:{port}"
    card = folder / "cards" / "hanako.json"
    console.print(
        "\n山田花子さんとしてログインし、3つの施策に申し込む / log in as Hanako and apply for all three measures:\n"
        f"  MYNAPOINT_PIN=4071 mynapoint resident apply --server {url} --card {card} "
        "--measure premium --provider demo --service-id 4000-0001 --code 1234 --mode charge\n"
        f"  (then --measure health_insurance, --measure public_fund; `mynapoint resident status --server {url} "
        f"--card {card}` shows the status)\n"
        "田中太郎さん（カード申請が2023年3月）と佐藤三郎さん（第1弾で5,000ポイント受取済み）は断られます / "
        "Taro and Saburo are refused, with the reason."
    )
    if serve:
        console.print(f"\nサーバーを起動します / serving on {url} (Ctrl-C to stop)")
        call_command("runserver", f"{host}:{port}", use_reloader=False, use_threading=True)


# ------------------------------------------------------------------------------------------- JPKI


@main.group()
def jpki() -> None:
    """テスト用の認証局とカード (test CA, software cards, CRLs)."""


def _now() -> dt.datetime:
    from mynapoint import clock

    return clock.now()


@jpki.command("make-test-ca")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing CA in the folder.")
def jpki_make_test_ca(folder: Path, force: bool) -> None:
    """Make a test JPKI user-authentication CA (ca.pem, ca-key.pem) and an empty CRL in FOLDER."""
    from mynapoint.identity.jpki.ca import make_test_ca, publish_crl, save_ca

    if (folder / "ca.pem").exists() and not force:
        raise click.UsageError(f"{folder}/ca.pem exists; use --force to replace it")
    now = _now()
    ca = make_test_ca(now=now - dt.timedelta(days=1))
    save_ca(ca, folder)
    publish_crl(ca=ca, directory=folder, now=now)
    click.echo(f"test CA written to {folder} (ca.pem, ca-key.pem, crl.pem)")


@jpki.command("issue-card")
@click.option("--ca", "ca_folder", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option(
    "--pin", prompt="PIN (4 digits)", hide_input=True, confirmation_prompt=True, envvar="MYNAPOINT_PIN"
)
def jpki_issue_card(ca_folder: Path, out: Path, pin: str) -> None:
    """Issue a software card with a user-authentication certificate from the test CA."""
    from mynapoint.identity.jpki.ca import load_ca
    from mynapoint.identity.jpki.card import SoftwareCard

    card = SoftwareCard.issue(ca=load_ca(ca_folder), pin=pin, now=_now())
    card.save(out)
    click.echo(f"software card written to {out}")


@jpki.command("publish-crl")
@click.option("--ca", "ca_folder", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--revoke", "revoke_cards", multiple=True, type=click.Path(path_type=Path, exists=True))
@click.option("--number", default=None, type=int, help="CRL number (default: one more than the last).")
def jpki_publish_crl(ca_folder: Path, revoke_cards: tuple[Path, ...], number: int | None) -> None:
    """Publish a CRL that revokes the given cards' certificates (and keeps earlier revocations)."""
    from cryptography import x509

    from mynapoint.identity.jpki.ca import load_ca, load_crl, publish_crl
    from mynapoint.identity.jpki.card import SoftwareCard

    previous = load_crl(ca_folder)
    revoked = {entry.serial_number for entry in previous} if previous is not None else set()
    for path in revoke_cards:
        revoked.add(x509.load_der_x509_certificate(SoftwareCard.load(path).certificate_der).serial_number)
    last = 0
    if previous is not None:
        try:
            last = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            last = 0
    publish_crl(
        ca=load_ca(ca_folder),
        directory=ca_folder,
        now=_now(),
        revoked=sorted(revoked),
        crl_number=number or last + 1,
    )
    click.echo(f"CRL published in {ca_folder}/crl.pem with {len(revoked)} revoked certificate(s)")


# ------------------------------------------------------------------------------------------- residents


@main.group()
def resident() -> None:
    """利用者としての操作 (a resident, over the HTTP API, with a card)."""


def _card(card_file: Path | None, reader: str | None) -> Any:
    if reader is not None:
        from mynapoint.identity.jpki.pcsc import PcscTransport

        return PcscTransport(reader or None)
    if card_file is None:
        raise click.UsageError("give --card FILE (a software card) or --reader NAME (a PC/SC reader)")
    from mynapoint.identity.jpki.card import SoftwareCard

    return SoftwareCard.load(card_file)


def _login(server: str, card_file: Path | None, reader: str | None, pin: str) -> Any:
    from mynapoint.identity.jpki.client import JpkiClientError
    from mynapoint.resident_client import ApiError, ResidentClient

    client = ResidentClient(server)
    card = _card(card_file, reader)
    try:
        who = client.login(card, pin)
    except JpkiClientError as exc:
        raise click.ClickException(f"{exc.message_ja} / {exc}") from None
    except ApiError as exc:
        raise click.ClickException(f"ログインできません / login refused: {exc}") from None
    finally:
        if card_file is not None and hasattr(card, "save"):
            card.save(card_file)  # a software card remembers its tries left
    click.echo(f"{who['message']}: マイキーID {who['mykey_id']}")
    return client


_server = click.option("--server", default="http://127.0.0.1:8000", show_default=True)
_card_opt = click.option(
    "--card", "card_file", type=click.Path(path_type=Path, exists=True), help="software card file"
)
_reader = click.option("--reader", default=None, help="PC/SC reader name ('' for the first)")
_pin = click.option("--pin", prompt="暗証番号 / PIN", hide_input=True, envvar="MYNAPOINT_PIN")


@resident.command("apply")
@_server
@_card_opt
@_reader
@_pin
@click.option("--measure", required=True, type=click.Choice(["premium", "health_insurance", "public_fund"]))
@click.option("--provider", required=True)
@click.option("--service-id", required=True)
@click.option("--code", "codes", multiple=True, required=True, help="security code (repeat for 2 or 3)")
@click.option("--mode", type=click.Choice(["charge", "purchase"]), default=None)
def resident_apply(
    server: str,
    card_file: Path | None,
    reader: str | None,
    pin: str,
    measure: str,
    provider: str,
    service_id: str,
    codes: tuple[str, ...],
    mode: str | None,
) -> None:
    """Log in with the card and apply for a measure with a payment account."""
    from mynapoint.resident_client import ApiError

    client = _login(server, card_file, reader, pin)
    try:
        result = client.apply(
            measure=measure, provider=provider, service_id=service_id, security_codes=list(codes), mode=mode
        )
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.logout()
    click.echo(result["message"])
    click.echo(result["message_en"])
    if not result["accepted"]:
        click.echo(result["explanation"])
        sys.exit(3)


@resident.command("status")
@_server
@_card_opt
@_reader
@_pin
def resident_status_command(server: str, card_file: Path | None, reader: str | None, pin: str) -> None:
    """Log in with the card and show the points and the status of each measure."""
    client = _login(server, card_file, reader, pin)
    try:
        me = client.me()
    finally:
        client.logout()
    table = Table(title=f"マイキーID {me['mykey_id']}（{me['as_of']} 時点）")
    for col in ("施策", "ポイント", "状況", "説明"):
        table.add_column(col, overflow="fold")
    for m in me["measures"]:
        table.add_row(m["measure"], f"{m['earned']:,}", m["status"], m["explanation"])
    _console().print(table)
    click.echo(f"合計 / total: {me['total']:,}")


# ------------------------------------------------------------------------------------------- grants, ledger


@main.group()
def grants() -> None:
    """ポイント付与 (grants to providers)."""


@grants.command("run")
@click.option("--as-of", "as_of", type=_DATE, default=None, help="Run as on this JST day (default: today).")
@click.option(
    "--batch/--per-resident",
    default=False,
    help="Compute the whole population at once in columns (national runs) instead of resident by resident.",
)
def grants_run(as_of: dt.datetime | None, batch: bool) -> None:
    """Instruct every grant and claw-back that is due, resident by resident (safe to kill and rerun)."""
    _django()
    from rich.progress import Progress

    from mynapoint import clock
    from mynapoint.audit.services import Actor
    from mynapoint.grants.batch import run_grants_batch
    from mynapoint.grants.services import run_grants

    engine = run_grants_batch if batch else run_grants
    now = clock.now()
    today = as_of.date() if as_of else now.date()
    with Progress(console=_console(), transient=True) as bar:
        task = bar.add_task("付与を計算中 / computing grants", total=None)
        report = engine(
            today=today,
            now=now,
            who=Actor(actor="grant-engine", channel="system", terminal="cli"),
            progress=lambda n, total: bar.update(task, completed=n, total=total),
        )
    click.echo(
        f"grants run as of {today}: {report.residents:,} residents, {report.grants:,} grants, "
        f"{report.clawbacks:,} claw-backs, {report.points:+,} points"
    )
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    sys.exit(1 if report.errors else 0)


@main.group()
def ledger() -> None:
    """ポイント元帳 (the ledger)."""


@ledger.command("verify")
def ledger_verify() -> None:
    """Prove the ledger: sums balance, nobody above a cap, every grant traces to its facts."""
    _django()
    from mynapoint.grants.selectors import verify_programme_ledger

    report = verify_programme_ledger()
    if report.ok:
        click.echo(
            f"ledger OK: {report.entries:,} entries balance, no resident above a cap, every grant traced"
        )
        return
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    sys.exit(1)


@ledger.command("balance")
@click.argument("code")
@click.option("--as-of", "as_of", type=_DATE, default=None)
def ledger_balance(code: str, as_of: dt.datetime | None) -> None:
    """The balance of a ledger account (budget, payable:PROVIDER, resident:MYKEY:MEASURE) at a JST day."""
    _django()
    from mynapoint.ledger.selectors import balance, balances

    if code.endswith("*"):
        for account, amount in balances(prefix=code[:-1], as_of=as_of.date() if as_of else None).items():
            click.echo(f"{account}\t{amount:,}")
        return
    click.echo(f"{code}\t{balance(code, as_of=as_of.date() if as_of else None):,}")


# ------------------------------------------------------------------------------------------- audit


@main.group()
def audit() -> None:
    """監査ログ (the audit log)."""


@audit.command("verify")
def audit_verify() -> None:
    """Check the hash chain of the audit log from the first event to the last."""
    _django()
    from mynapoint.audit.selectors import verify_chain

    with _console().status("監査ログを検証中 / verifying the audit log ...") as status:
        report = verify_chain(progress=lambda n: status.update(f"{n:,} events checked"))
    if report.ok:
        click.echo(f"audit log OK: {report.checked:,} events, chain intact")
        return
    click.echo(f"audit log BROKEN after {report.checked:,} good events: {report.problem}", err=True)
    sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
