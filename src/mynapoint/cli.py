"""The ``mynapoint`` command."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
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


def _count_option(flag: str, default: int, text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A whole number of at least 1."""
    return click.option(flag, default=default, show_default=True, type=click.IntRange(min=1), help=text)


@bench.command("provider")
@click.option(
    "--admin-url",
    default="postgres://postgres@127.0.0.1:5432/postgres",
    show_default=True,
    help="A PostgreSQL URL allowed to create the benchmark database.",
)
@click.option(
    "--database-name",
    default="mynapoint_bench",
    show_default=True,
    help="The benchmark database (dropped and made again): a name of your own lets two runs share a server.",
)
@click.option("--residents", default=20_000, show_default=True)
@click.option("--transactions", default=100_000, show_default=True)
@click.option("--batch-size", default=10_000, show_default=True)
@_count_option("--workers", 2, "gunicorn sync workers.")
@_count_option("--clients", 2, "Client threads posting the batches at once.")
@_count_option(
    "--repeat",
    1,
    "Runs, each on a fresh database; the figures are the median run's, with every run's throughput.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON at the end.")
def bench_provider(
    admin_url: str,
    database_name: str,
    residents: int,
    transactions: int,
    batch_size: int,
    workers: int,
    clients: int,
    repeat: int,
    as_json: bool,
) -> None:
    """Transactions per second from the provider batch API, over HTTP (gunicorn), to ledger postings, against
    COPY of the same rows (PostgreSQL)."""
    import os

    from django.db import connections

    from mynapoint.bench.provider import prepare_database, run_provider_benchmark, summarise

    runs = []
    for run in range(1, repeat + 1):
        if repeat > 1:
            click.echo(f"— run {run} of {repeat} —")
        if run > 1:
            connections.close_all()  # the database is made again: connect to the new one
        url = prepare_database(admin_url, database_name)
        os.environ["MYNAPOINT_DATABASE_URL"] = url
        _django()
        runs.append(
            run_provider_benchmark(
                residents=residents,
                transactions=transactions,
                batch_size=batch_size,
                workers=workers,
                clients=clients,
                database_url=url,
                echo=click.echo,
            )
        )
    figures = summarise(runs)
    if repeat > 1:
        each = ", ".join(f"{rate:,}" for rate in figures["end_to_end_tx_per_s_each"])
        click.echo(
            f"median of {repeat} runs: {figures['end_to_end_tx_per_s']:,} tx/s end to end ({each}); "
            f"{figures['ratio_to_copy']:.1%} of plain COPY, {figures['ratio_to_shaped_copy']:.1%} of COPY into "
            "the transactions table's shape"
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


@main.command("serve")
@click.option(
    "--bind", default="127.0.0.1:8000", show_default=True, help="HOST:PORT (or unix:PATH) to listen on."
)
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Sync worker processes."
)
@click.option(
    "--timeout", default=120, show_default=True, type=click.IntRange(min=1), help="Seconds before a silent "
    "worker is restarted (a provider batch of 10,000 takes seconds)."
)  # fmt: skip
@click.option(
    "--grant-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, max=86_400),
    help="Seconds between the grant engine's cycles inside the server (instruct what is due, push webhooks), "
    "run by one worker of all the servers on the database at a time. 0: none (run `mynapoint grants run` on a "
    "schedule instead). gunicorn reads its settings from mynapoint.config.gunicorn, not ./gunicorn.conf.py; "
    "GUNICORN_CMD_ARGS still adds to them.",
)
def serve(bind: str, workers: int, timeout: int, grant_interval: float) -> None:
    """Serve the platform with gunicorn (mynapoint.config.wsgi:application), configured by the MYNAPOINT_*
    variables, with the grant engine running in it; `make demo` uses Django's development server instead."""
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mynapoint.config.settings")
    os.environ["MYNAPOINT_GRANT_INTERVAL"] = repr(grant_interval)
    argv = [
        sys.executable, "-m", "gunicorn", "mynapoint.config.wsgi:application", "--bind", bind,
        "--workers", str(workers), "--worker-class", "sync", "--timeout", str(timeout),
        "--config", "python:mynapoint.config.gunicorn",
    ]  # fmt: skip
    os.execv(sys.executable, argv)  # noqa: S606 - gunicorn takes over this process (signals, exit status)


@main.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--serve/--no-serve", default=True, help="Start the server after loading the demo data.")
@click.option(
    "--clock-start",
    default=None,
    help="Run the programme clock from this moment (ISO with offset). Default: 2023-03-15T10:00:00+09:00.",
)
@click.option(
    "--grant-interval",
    default=2.0,
    show_default=True,
    type=float,
    help="Seconds between grant engine cycles.",
)
def demo(host: str, port: int, serve: bool, clock_start: str | None, grant_interval: float) -> None:
    """Migrate the embedded database, load the demo data, set up the sandbox provider デモ決済, and start the
    server with the grant engine running in it."""
    import os

    if clock_start is None and not os.environ.get("MYNAPOINT_CLOCK_START"):
        from mynapoint.clock import DEMO_START

        clock_start = DEMO_START.isoformat()
    if clock_start:
        os.environ["MYNAPOINT_CLOCK_START"] = clock_start
    # the demo's accounts are the ones the providers declare through the provider API (PUT /accounts)
    os.environ["MYNAPOINT_PROVIDER_ADAPTER"] = "mynapoint.applications.adapters.ProviderApiAdapter"
    _django()
    from django.conf import settings
    from django.core.management import call_command

    from mynapoint import clock
    from mynapoint.demo import DEMO_RESIDENTS, bootstrap_sandbox, load_demo, local_url, start_background

    if clock_start:
        clock.start_at(dt.datetime.fromisoformat(clock_start))
    console = _console()
    console.print(f"データベース / database: {settings.DATABASES['default']['NAME']}")
    call_command("migrate", verbosity=0, interactive=False)
    folder = Path(settings.DATA_DIR) / "demo"
    url = local_url(host, port)
    residents = load_demo(folder=folder, now=clock.now(), server_url=url, echo=console.print)
    bootstrap_sandbox(now=clock.now(), echo=console.print)
    console.print(f"プログラムの時計 / programme clock: {clock.now():%Y-%m-%d %H:%M} JST")
    table = Table(title="デモの住民 / demo residents (software cards; the PIN stays on the card)")
    for col in ("name", "MyKey ID", "card", "PIN", "accounts (service ID: security code)"):
        table.add_column(col)
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
    card = folder / "cards" / "hanako.json"
    data = f"MYNAPOINT_DATA_DIR={settings.DATA_DIR}"
    console.print(
        "\nひと回りのデモ / the whole loop, as 山田花子 (Hanako) and her デモ決済 wallet 4000-0001:\n"
        "1. 申し込む / apply for the premium measure (charge mode):\n"
        f"  MYNAPOINT_PIN=4071 mynapoint resident apply --server {url} --card {card} "
        "--measure premium --provider demo --service-id 4000-0001 --code 1234 --mode charge\n"
        "2. 2万円チャージする / charge 20,000 yen (デモ決済 reports it with POST /transactions):\n"
        f"  mynapoint sandbox charge --server {url} --service-id 4000-0001 --amount 20000\n"
        "3. 数秒で5,000ポイントが届く / within seconds 5,000 points arrive (grant engine → signed webhook → "
        "POST /grants/ack):\n"
        f"  mynapoint sandbox wallet --server {url} --service-id 4000-0001\n"
        "4. お店でポイントを使う / spend them at a shop (shops: "
        f"mynapoint sandbox shops --server {url}):\n"
        f"  mynapoint sandbox pay --server {url} --service-id 4000-0001 --shop konbini --amount 5000 "
        "--use-points 5000\n"
        "5. 元帳を確かめる / check the ledger (the grant acknowledged: 5,000 on Hanako's resident account):\n"
        f"  {data} mynapoint ledger verify\n"
        f"  {data} mynapoint ledger balance 'resident:*'\n"
        "ほかの施策も / the other measures: --measure health_insurance, --measure public_fund; "
        f"`mynapoint resident status --server {url} --card {card}` shows the status.\n"
        "田中太郎さん（カード申請が2023年3月）と佐藤三郎さん（第1弾で5,000ポイント受取済み）は断られます / "
        "Taro and Saburo are refused, with the reason."
    )
    if serve:
        start_background(host=host, port=port, interval=grant_interval)
        console.print(
            f"\nサーバーを起動します / serving on {url}, the grant engine every {grant_interval:g} s (Ctrl-C to stop)"
        )
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


# ------------------------------------------------------------------------------------------- sandbox


@main.group()
def sandbox() -> None:
    """デモ決済: the sandbox provider's wallets, over HTTP on a running demo server (`mynapoint demo`)."""


def _sandbox_call(server: str, call: Any) -> dict[str, Any]:
    from mynapoint.sandbox.client import SandboxApiError, SandboxClient

    try:
        result: dict[str, Any] = call(SandboxClient(server))
    except SandboxApiError as exc:
        raise click.ClickException(str(exc)) from None
    return result


def _print_wallet(wallet: dict[str, Any]) -> None:
    click.echo(
        f"ウォレット / wallet {wallet['service_id']} ({wallet['holder_kana']}): "
        f"残高 / balance {wallet['yen_balance']:,} 円 / yen, ポイント / points {wallet['points_balance']:,}"
    )


def _print_money(result: dict[str, Any], what: str) -> None:
    tx = result["transaction"] or {}
    reported = "報告済 / reported to the platform" if tx.get("reported") else "未報告 / not reported"
    if tx.get("kind") == "purchase" and tx.get("yen", 0) == tx.get("points_used", 0):
        reported = "ポイントのみ / points only, nothing to report"
    click.echo(f"{what}: {tx.get('txid', '?')} ({reported})")
    for error in result.get("errors", []):
        click.echo(f"platform: {error}", err=True)
    _print_wallet(result["wallet"])


@sandbox.command("wallet")
@_server
@click.option("--service-id", required=True)
@click.option("--json", "as_json", is_flag=True, help="The wallet as JSON (balances, transactions, grants).")
def sandbox_wallet(server: str, service_id: str, as_json: bool) -> None:
    """Show a wallet: its yen and points balances, recent transactions and the grants received."""
    wallet = _sandbox_call(server, lambda c: c.wallet(service_id))
    if as_json:
        click.echo(json.dumps(wallet, ensure_ascii=False, indent=2))
        return
    _print_wallet(wallet)
    for grant in wallet["grants"]:
        ack = "付与完了通知済 / acknowledged" if grant["acknowledged"] else "未通知 / not acknowledged yet"
        click.echo(
            f"  付与 / grant {grant['grant_id']} {grant['measure']}: {grant['amount']:+,} points ({ack})"
        )
    for tx in wallet["transactions"]:
        shop = f" at {tx['shop']}" if tx["shop"] else ""
        points = f", {tx['points_used']:,} points" if tx["points_used"] else ""
        click.echo(f"  {tx['kind']}{shop}: {tx['yen']:,} yen{points} ({tx['txid']})")


@sandbox.command("charge")
@_server
@click.option("--service-id", required=True)
@click.option("--amount", required=True, type=click.IntRange(min=1), help="yen")
def sandbox_charge(server: str, service_id: str, amount: int) -> None:
    """Charge yen into a wallet (reported to the platform as a charge)."""
    _print_money(
        _sandbox_call(server, lambda c: c.charge(service_id, amount=amount)),
        f"チャージ / charged {amount:,} yen",
    )


@sandbox.command("pay")
@_server
@click.option("--service-id", required=True)
@click.option("--shop", required=True, help="a shop code (`mynapoint sandbox shops`)")
@click.option("--amount", required=True, type=click.IntRange(min=1), help="the price in yen")
@click.option(
    "--use-points", default=0, show_default=True, type=click.IntRange(min=0), help="points to pay with"
)
def sandbox_pay(server: str, service_id: str, shop: str, amount: int, use_points: int) -> None:
    """Pay at a shop, part or all of it with points (the yen part is reported to the platform as a purchase)."""
    result = _sandbox_call(
        server, lambda c: c.pay(service_id, shop=shop, amount=amount, use_points=use_points)
    )
    _print_money(result, f"お支払い / paid {amount:,} yen at {shop} ({use_points:,} points)")


@sandbox.command("shops")
@_server
def sandbox_shops(server: str) -> None:
    """The demo shops."""
    for shop in _sandbox_call(server, lambda c: c.shops())["shops"]:
        click.echo(f"{shop['code']}\t{shop['name_ja']}\t{shop['name_en']}")


@sandbox.command("sync")
@_server
def sandbox_sync(server: str) -> None:
    """Catch up with the platform: declare wallets, report transactions, pull the grants no webhook brought
    (GET /grants from the sandbox's cursor, each credited once) and acknowledge them."""
    result = _sandbox_call(server, lambda c: c.sync())
    click.echo(
        f"同期 / synced: 付与を取得 / grants pulled {result['pulled']}, "
        f"付与完了通知 / acknowledged {result['acknowledged']}, 口座の登録 / wallets declared {result['declared']}"
    )
    for error in result["errors"]:
        click.echo(f"platform: {error}", err=True)
    if result["errors"]:
        raise SystemExit(1)


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


# ------------------------------------------------------------------------------------------- feeds


@main.group()
def feeds() -> None:
    """連携データの取込 (CSV feeds: card facts, registrations and certificate renewals)."""


def _import(kind: str, path: Path, as_json: bool) -> None:
    _django()
    from rich.progress import Progress

    from mynapoint import clock
    from mynapoint.applications import imports
    from mynapoint.audit.services import Actor

    function = {
        "card-facts": imports.import_card_facts_csv,
        "health-insurance": imports.import_health_insurance_csv,
        "public-fund": imports.import_public_fund_csv,
        "renewals": imports.import_renewals_csv,
    }[kind]
    with Progress(console=_console(), transient=True) as bar:
        task = bar.add_task(f"{path.name} を取込中 / importing", total=None)
        report = function(
            path,
            now=clock.now(),
            who=Actor(actor=f"feed:{path.name}", channel="feed", terminal="cli"),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        click.echo(
            f"{path}: {report.rows:,} rows ({report.encoding}): {len(report.created):,} new, "
            f"{len(report.unchanged):,} unchanged, {len(report.errors):,} errors"
        )
        for error in report.errors:
            click.echo(
                f"  line {error.line}, {error.column}: {error.message_ja} / {error.message_en}", err=True
            )
    sys.exit(0 if report.ok else 1)


@feeds.command("card-facts")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def feeds_card_facts(path: Path, as_json: bool) -> None:
    """J-LIS のカード情報 CSV (mykey_id, card_applied, card_applied_online 1/0, card_issued or empty)."""
    _import("card-facts", path, as_json)


@feeds.command("health-insurance")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def feeds_health(path: Path, as_json: bool) -> None:
    """健康保険証利用登録 CSV (mykey_id, registered_at, external_id, source). Re-running it is safe."""
    _import("health-insurance", path, as_json)


@feeds.command("public-fund")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def feeds_public_fund(path: Path, as_json: bool) -> None:
    """公金受取口座登録 CSV (bank and branch checked with zengin-code, holder kana with §5)."""
    _import("public-fund", path, as_json)


@feeds.command("renewals")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def feeds_renewals(path: Path, as_json: bool) -> None:
    """電子証明書の更新 CSV (old issuer/serial → new): both keep the same MyKey ID."""
    _import("renewals", path, as_json)


# ------------------------------------------------------------------------------------------- settlement


@main.group()
def settlement() -> None:
    """精算 (monthly claims, final settlement, statements, reconciliation)."""


_MONTH = click.DateTime(formats=["%Y-%m"])


def _office(who: str) -> Any:
    from mynapoint.audit.services import Actor

    return Actor(actor=who, channel="office", terminal="cli")


def _settlement_provider(key: str) -> Any:
    from mynapoint.settlement.selectors import provider_by_key

    provider = provider_by_key(key=key)
    if provider is None:
        raise click.ClickException(f"no provider {key!r}")
    return provider


def _claim_line(claim: Any) -> str:
    return (
        f"claim #{claim.pk} {claim.provider.key} {claim.kind} {claim.period:%Y-%m} (through {claim.through}) "
        f"{claim.status}: {claim.grant_count:,} grants {claim.granted_points:,} pt, {claim.clawback_count:,} "
        f"claw-backs {claim.clawback_points:,} pt, amount {claim.amount:+,} pt\ndigest {claim.digest}"
    )


@settlement.command("claim")
@click.argument("provider_key")
@click.option("--month", required=True, type=_MONTH, help="The month claimed, YYYY-MM (must be over).")
@click.option("--by", "who", default="office", show_default=True, help="Who computes it (audit log).")
def settlement_claim(provider_key: str, month: dt.datetime, who: str) -> None:
    """Compute (or recompute) the draft monthly claim (概算払) of a provider from the ledger."""
    _django()
    from mynapoint.settlement.services import SettlementError, compute_monthly_claim

    try:
        claim = compute_monthly_claim(
            provider=_settlement_provider(provider_key), month=month.date(), now=_now(), who=_office(who)
        )
    except SettlementError as error:
        raise click.ClickException(f"{error.code}: {error.message}") from error
    click.echo(_claim_line(claim))


@settlement.command("final")
@click.argument("provider_key")
@click.option("--by", "who", default="office", show_default=True)
def settlement_final(provider_key: str, who: str) -> None:
    """Compute (or recompute) the draft final settlement (精算): all acknowledged less all fixed claims."""
    _django()
    from mynapoint.settlement.services import SettlementError, compute_final_settlement

    try:
        claim = compute_final_settlement(
            provider=_settlement_provider(provider_key), now=_now(), who=_office(who)
        )
    except SettlementError as error:
        raise click.ClickException(f"{error.code}: {error.message}") from error
    click.echo(_claim_line(claim))


@settlement.command("fix")
@click.argument("claim_id", type=int)
@click.option("--digest", default=None, help="The digest on the approved statement (refused if it differs).")
@click.option("--by", "who", default="office", show_default=True)
def settlement_fix(claim_id: int, digest: str | None, who: str) -> None:
    """Fix a draft claim: it can no longer change; what it settles is written down."""
    _django()
    from mynapoint.settlement.selectors import find_claim
    from mynapoint.settlement.services import SettlementError, fix_claim

    claim = find_claim(claim_id=claim_id)
    if claim is None:
        raise click.ClickException(f"no claim #{claim_id}")
    try:
        claim = fix_claim(claim=claim, now=_now(), who=_office(who), digest=digest)
    except SettlementError as error:
        raise click.ClickException(f"{error.code}: {error.message}") from error
    click.echo(_claim_line(claim))


@settlement.command("list")
@click.option("--provider", "provider_key", default=None)
def settlement_list(provider_key: str | None) -> None:
    """The claims, by provider and period."""
    _django()
    from mynapoint.settlement.selectors import claims_of

    provider = _settlement_provider(provider_key) if provider_key else None
    table = Table("#", "provider", "kind", "period", "through", "status", "amount", "digest")
    for claim in claims_of(provider=provider):
        table.add_row(
            str(claim.pk), claim.provider.key, claim.kind, f"{claim.period:%Y-%m}", str(claim.through),
            claim.status, f"{claim.amount:+,}", claim.digest[:16],
        )  # fmt: skip
    _console().print(table)


@settlement.command("statement")
@click.argument("claim_id", type=int)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="FILE.csv or FILE.pdf")
@click.option("--items", is_flag=True, help="CSV of every settled grant instead (fixed claims).")
def settlement_statement(claim_id: int, out: Path, items: bool) -> None:
    """Write a claim's statement as CSV (Excel: UTF-8 with BOM) or PDF, or its items as CSV."""
    _django()
    from mynapoint.settlement.selectors import claim_statement, find_claim
    from mynapoint.settlement.statements import claim_items_csv, statement_csv, statement_pdf

    claim = find_claim(claim_id=claim_id)
    if claim is None:
        raise click.ClickException(f"no claim #{claim_id}")
    if items:
        data = claim_items_csv(claim)
    elif out.suffix.lower() == ".pdf":
        data = statement_pdf(claim_statement(claim=claim))
    else:
        data = statement_csv(claim_statement(claim=claim))
    out.write_bytes(data)
    click.echo(f"wrote {out} ({len(data):,} bytes)")


@settlement.command("verify")
@click.argument("claim_id", type=int)
def settlement_verify(claim_id: int) -> None:
    """Recompute a fixed claim's digest, lines and totals from what it settled."""
    _django()
    from mynapoint.settlement.selectors import find_claim, verify_claim

    claim = find_claim(claim_id=claim_id)
    if claim is None:
        raise click.ClickException(f"no claim #{claim_id}")
    problems = verify_claim(claim=claim)
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"claim #{claim.pk} OK: digest {claim.digest}")


@settlement.command("reconcile")
@click.argument("provider_key")
@click.argument("csv_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--month", type=_MONTH, default=None, help="Only acknowledgements of this month, YYYY-MM.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the discrepancies as CSV.")
def settlement_reconcile(
    provider_key: str, csv_file: Path, month: dt.datetime | None, out: Path | None
) -> None:
    """Reconcile a provider's list of grants (CSV: 付与ID,参照番号,ポイント) with the ledger; exit 1 on any
    discrepancy."""
    _django()
    from mynapoint.settlement.reconciliation import reconcile_csv, reconciliation_csv

    report = reconcile_csv(
        provider=_settlement_provider(provider_key),
        data=csv_file.read_bytes(),
        period=month.date() if month else None,
    )
    click.echo(
        f"{provider_key}: ledger {report.ledger_count:,} grants {report.ledger_points:+,} pt; provider "
        f"{report.provider_count:,} rows {report.provider_points:+,} pt; {report.matched:,} agree; "
        f"{len(report.discrepancies):,} discrepancies"
    )
    for item in report.discrepancies:
        click.echo(f"{item.kind.value}\t{item.message}")
    if out is not None:
        out.write_bytes(reconciliation_csv(report))
    sys.exit(1 if report.discrepancies else 0)


# ------------------------------------------------------------------------------------------- providers


@main.group()
def providers() -> None:
    """決済事業者の登録と管理 (the programme office: payment-service providers and their API keys)."""


class _ProviderRefused(click.ClickException):
    """Bad input for a provider command: the message names the field, in Japanese and English; exit 2."""

    exit_code = 2

    @classmethod
    def of(cls, error: Any) -> _ProviderRefused:  # a ProviderError (imported once Django is set up)
        where = f" ({error.field})" if error.field else ""
        return cls(f"{error.code}{where}: {error.ja} / {error.en}")


_NO_DEADLINE = "none"


class _DayOrNone(click.ParamType[dt.date | str]):
    """A JST day, YYYY-MM-DD, or ``none`` to clear it."""

    name = "YYYY-MM-DD|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.date | str:
        if isinstance(value, dt.date):
            return value
        if value == _NO_DEADLINE:
            return _NO_DEADLINE
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not a day (YYYY-MM-DD) or 'none'", param, ctx)


_provider_by = click.option(
    "--by", "who", default="office", show_default=True, help="Who does it (the audit log)."
)
_provider_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_provider_secret = click.option(
    "--webhook-secret",
    default=None,
    help="署名の鍵 (16+ characters, agreed with the provider). Without it one is generated and shown once.",
)


def _provider_settings_options(command: Any) -> Any:
    """The settings `providers add` and `providers update` share (update: only those given change)."""
    options = [
        click.option("--name-ja", default=None, help="事業者名 (Japanese name)."),
        click.option("--name-en", default=None, help="English name."),
        click.option("--kind", default=None, help="決済の種類: qr, emoney, credit, debit or prepaid."),
        click.option(
            "--mode", "modes", multiple=True, help="方式: charge and/or purchase (repeat; replaces the list)."
        ),
        click.option(
            "--measure",
            "measures",
            multiple=True,
            help="施策: premium, health_insurance, public_fund (repeat; replaces the list; add: all).",
        ),
        click.option(
            "--grant-schedule",
            default=None,
            help="付与時期: immediate, monthly or days_after (add: immediate).",
        ),
        click.option(
            "--grant-schedule-days",
            default=None,
            type=int,
            help="monthly: day of the next month (1–28); days_after: N days after the transaction (1–365).",
        ),
        click.option(
            "--charge-deadline",
            type=_DayOrNone(),
            default=None,
            help="対象取引の期限 (none: the programme's).",
        ),
        click.option(
            "--application-deadline",
            type=_DayOrNone(),
            default=None,
            help="申込受付の期限 (none: the programme's).",
        ),
        click.option(
            "--pre-registration/--no-pre-registration",
            "pre_registration_required",
            default=None,
            help="事前登録が必要か (whether residents register with the provider first).",
        ),
        click.option("--security-code-count", default=None, type=int, help="セキュリティコードの数 (1–3)."),
        click.option("--verification", default=None, help="口座確認: registry or callback (add: registry)."),
        click.option("--verify-url", default=None, help="照会APIのURL (verification = callback)."),
        click.option("--grant-delivery", default=None, help="付与指示: pull or push (add: pull)."),
        click.option("--webhook-url", default=None, help="WebhookのURL (grant delivery = push)."),
        _provider_secret,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _provider_changes(options: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line, as the services take them."""
    given = {name: value for name, value in options.items() if value is not None and value != ()}
    for name in ("charge_deadline", "application_deadline"):
        if given.get(name) == _NO_DEADLINE:
            given[name] = None
    return given


def _jst(moment: dt.datetime | None) -> str | None:
    from mynapoint.clock import JST

    return moment.astimezone(JST).isoformat(timespec="seconds") if moment else None


def _provider_doc(provider: Any) -> dict[str, Any]:
    from mynapoint.providers.selectors import api_keys_of
    from mynapoint.providers.services import SETTINGS

    doc: dict[str, Any] = {"key": provider.key}
    for name in SETTINGS:
        if name == "webhook_secret":
            doc["webhook_secret_set"] = bool(provider.webhook_secret)  # never the secret itself
        else:
            value = getattr(provider, name)
            doc[name] = value.isoformat() if isinstance(value, dt.date) else value
    doc["api_keys"] = [
        {
            "prefix": row.prefix,
            "label": row.label,
            "created_at": _jst(row.created_at),
            "revoked_at": _jst(row.revoked_at),
            "last_used_at": _jst(row.last_used_at),
        }
        for row in api_keys_of(provider=provider)
    ]
    return doc


def _provider_known(key: str) -> Any:
    from mynapoint.providers.selectors import provider_by_key

    provider = provider_by_key(key=key)
    if provider is None:
        raise _ProviderRefused(
            f"unknown_provider (provider_key): 事業者 {key} は登録されていません / no provider {key!r}"
        )
    return provider


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, indent=2, default=str))


def _print_secret_once(secret: str) -> None:
    click.echo(f"Webhook署名の鍵（一度だけ表示）/ webhook signing secret (shown once): {secret}")


@providers.command("add")
@click.argument("key")
@_provider_settings_options
@_provider_by
@_provider_json
def providers_add(key: str, who: str, as_json: bool, **options: Any) -> None:
    """決済事業者を登録する (onboard a provider). KEY: its slug, which never changes.

    Example: mynapoint providers add paypay --name-ja ペイペイ --kind qr --mode charge --mode purchase"""
    _django()
    from mynapoint.providers.services import ProviderError, onboard_provider

    given = _provider_changes(options)
    for name, option in (("name_ja", "--name-ja"), ("kind", "--kind"), ("modes", "--mode")):
        if name not in given:
            raise click.UsageError(f"{option} is required to onboard a provider")
    try:
        provider = onboard_provider(key=key, now=_now(), who=_office(who), **given)
    except ProviderError as error:
        raise _ProviderRefused.of(error) from None
    generated = provider.webhook_secret if provider.webhook_secret and not given.get("webhook_secret") else ""
    if as_json:
        _print_json({**_provider_doc(provider), **({"webhook_secret": generated} if generated else {})})
        return
    click.echo(f"事業者を登録しました / provider onboarded: {provider.key} ({provider.name_ja})")
    if generated:
        _print_secret_once(generated)
    click.echo(f"APIキー / an API key: mynapoint providers keys issue {provider.key} --label LABEL")


@providers.command("update")
@click.argument("key")
@_provider_settings_options
@click.option(
    "--active/--inactive",
    default=None,
    help="停止中の事業者のAPIキーは拒否されます (inactive: keys refused).",
)
@click.option("--new-webhook-secret", is_flag=True, help="Generate a new signing secret (shown once).")
@_provider_by
@_provider_json
def providers_update(key: str, new_webhook_secret: bool, who: str, as_json: bool, **options: Any) -> None:
    """決済事業者の設定を変更する (edit a provider: only the settings given change; the key never does).

    Refused: removing a mode or measure residents applied with, changing the number of security codes while
    declared accounts keep the old one, moving a deadline earlier to a day already past (decision Q14)."""
    _django()
    from mynapoint.providers.services import ProviderError, update_provider

    changes = _provider_changes(options)
    if new_webhook_secret:
        if "webhook_secret" in changes:
            raise click.UsageError("give --webhook-secret or --new-webhook-secret, not both")
        changes["webhook_secret"] = ""  # as at onboarding: generated when the provider is signed for
    if not changes:
        raise click.UsageError("nothing to change: give at least one setting (see --help)")
    try:
        result = update_provider(provider_key=key, now=_now(), who=_office(who), **changes)
    except ProviderError as error:
        raise _ProviderRefused.of(error) from None
    provider = result.provider
    generated = (
        provider.webhook_secret
        if "webhook_secret" in result.changed
        and provider.webhook_secret
        and not changes.get("webhook_secret")
        else ""
    )
    if as_json:
        doc = {"changed": list(result.changed), "provider": _provider_doc(provider)}
        _print_json({**doc, **({"webhook_secret": generated} if generated else {})})
        return
    if not result.changed:
        click.echo(f"{provider.key}: 変更なし / nothing changed")
        return
    click.echo(f"{provider.key}: 変更しました / changed {', '.join(result.changed)} (監査ログ / audit log)")
    if generated:
        _print_secret_once(generated)


@providers.command("list")
@_provider_json
def providers_list(as_json: bool) -> None:
    """決済事業者の一覧 (every provider, active or not)."""
    _django()
    from mynapoint.providers.selectors import all_providers

    docs = [_provider_doc(provider) for provider in all_providers()]
    if as_json:
        _print_json(docs)
        return
    table = Table("key", "事業者名", "kind", "modes", "measures", "付与 grants", "口座確認", "期限 deadlines",
                  "active", "keys")  # fmt: skip
    for doc in docs:
        days = f" {doc['grant_schedule_days']}" if doc["grant_schedule_days"] else ""
        table.add_row(
            doc["key"], doc["name_ja"], doc["kind"], ",".join(doc["modes"]), ",".join(doc["measures"]),
            f"{doc['grant_schedule']}{days} / {doc['grant_delivery']}", doc["verification"],
            f"{doc['charge_deadline'] or '—'} / {doc['application_deadline'] or '—'}",
            "yes" if doc["active"] else "no", str(sum(1 for k in doc["api_keys"] if not k["revoked_at"])),
        )  # fmt: skip
    _console().print(table)


@providers.command("show")
@click.argument("key")
@_provider_json
def providers_show(key: str, as_json: bool) -> None:
    """決済事業者の設定とAPIキー (a provider's settings and API keys; never a key or the signing secret)."""
    _django()
    doc = _provider_doc(_provider_known(key))
    if as_json:
        _print_json(doc)
        return
    table = Table("設定 setting", "value", title=f"{doc['key']}: {doc['name_ja']}")
    for name, value in doc.items():
        if name != "api_keys":
            shown = (
                ", ".join(value) if isinstance(value, list) else "—" if value in (None, "") else str(value)
            )
            table.add_row(name, shown)
    keys = Table("prefix", "label", "created", "revoked", "last used", title="APIキー / API keys")
    for row in doc["api_keys"]:
        keys.add_row(row["prefix"], row["label"], row["created_at"], row["revoked_at"] or "—",
                     row["last_used_at"] or "—")  # fmt: skip
    console = _console()
    console.print(table)
    console.print(keys)


@providers.group("keys")
def providers_keys() -> None:
    """APIキーの発行・切替・失効 (API keys: issue, rotate, revoke)."""


def _print_new_key(provider: Any, plaintext: str, row: Any, as_json: bool) -> None:
    if as_json:
        _print_json({"provider": provider.key, "api_key": plaintext, "prefix": row.prefix, "label": row.label,
                     "created_at": _jst(row.created_at)})  # fmt: skip
        return
    click.echo(
        "APIキー（一度だけ表示します。安全に事業者へ渡してください）/ "
        "API key (shown once: hand it to the provider securely):",
        err=True,
    )
    click.echo(plaintext)
    click.echo(f"prefix {row.prefix} ({provider.key}, {row.label or 'no label'})", err=True)


@providers_keys.command("issue")
@click.argument("key")
@click.option("--label", default="", help="What the key is for (e.g. production, staging).")
@_provider_by
@_provider_json
def providers_keys_issue(key: str, label: str, who: str, as_json: bool) -> None:
    """APIキーを発行する (issue an API key; printed once, only its hash is kept)."""
    _django()
    from mynapoint.providers.services import ProviderError, issue_api_key

    provider = _provider_known(key)
    try:
        plaintext, row = issue_api_key(provider=provider, label=label, now=_now(), who=_office(who))
    except ProviderError as error:
        raise _ProviderRefused.of(error) from None
    _print_new_key(provider, plaintext, row, as_json)


@providers_keys.command("rotate")
@click.argument("key")
@click.option("--label", default="", help="What the new key is for.")
@_provider_by
@_provider_json
def providers_keys_rotate(key: str, label: str, who: str, as_json: bool) -> None:
    """APIキーを切り替える (a new key; the old ones keep working until `keys revoke`, so there is no gap)."""
    _django()
    from mynapoint.providers.selectors import api_keys_of
    from mynapoint.providers.services import ProviderError, rotate_api_key

    provider = _provider_known(key)
    try:
        plaintext, row = rotate_api_key(provider=provider, label=label, now=_now(), who=_office(who))
    except ProviderError as error:
        raise _ProviderRefused.of(error) from None
    _print_new_key(provider, plaintext, row, as_json)
    if not as_json:
        old = [k.prefix for k in api_keys_of(provider=provider) if k.revoked_at is None and k.pk != row.pk]
        if old:
            click.echo(
                f"旧キーは失効させるまで有効です / still valid until revoked: {', '.join(old)} "
                f"(mynapoint providers keys revoke {provider.key} PREFIX)",
                err=True,
            )


@providers_keys.command("revoke")
@click.argument("key")
@click.argument("prefix")
@_provider_by
def providers_keys_revoke(key: str, prefix: str, who: str) -> None:
    """APIキーを失効させる (revoke the key of PREFIX, as `providers show` lists it; refused with 401 from then)."""
    _django()
    from mynapoint.providers.selectors import api_key_by_prefix
    from mynapoint.providers.services import revoke_api_key

    provider = _provider_known(key)
    row = api_key_by_prefix(provider=provider, prefix=prefix)
    if row is None:
        raise _ProviderRefused(
            f"unknown_api_key (prefix): {provider.key} にプレフィックス {prefix} のAPIキーはありません / "
            f"{provider.key} has no API key {prefix!r}"
        )
    before = row.revoked_at
    row = revoke_api_key(key=row, now=_now(), who=_office(who))
    if before is not None:
        click.echo(f"{row.prefix}: 失効済み / already revoked at {_jst(row.revoked_at)}")
        return
    click.echo(f"{row.prefix}: 失効しました / revoked ({provider.key}, {row.label or 'no label'})")


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
