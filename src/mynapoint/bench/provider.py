"""``mynapoint bench provider``: transactions per second from the provider batch API, over HTTP, to durable
ledger postings on PostgreSQL, against two ``COPY`` baselines of the same rows in the same run.

The run uses its own database (``mynapoint_bench`` unless named, dropped and made again). Residents, accounts
and accepted premium applications are seeded directly. Then the platform is served by gunicorn (a subprocess
on a free local port, ``--workers`` sync workers, on the programme's calendar through
``MYNAPOINT_CLOCK_START``) and ``--clients`` client threads post the batches to the real batch operation of
the provider API (HTTP, authentication, validation, idempotency, durable insert); every body is encoded
before the clock starts. Ingest is timed from the first request to the last answer. The grant engine's batch
path then posts the resulting grants to the ledger (in this process, timed on its own); end to end is the
sum of the two.

Baselines, same rows, same database, same run:

- ``COPY`` into a plain table without an index (the floor of getting the rows into PostgreSQL);
- ``COPY`` into a table made ``LIKE`` the transactions table ``INCLUDING ALL`` (its columns, defaults,
  primary key, unique constraint and indexes; no foreign keys), with the account ids already resolved: the
  cost of merely storing the rows durably in their real shape.

The ratios are end-to-end throughput over each baseline's. After the run the rows are counted (every
transaction posted is stored once, the ledger has postings) and the ledger is verified; the verification is
timed and reported apart from the throughput.

Where ``/proc`` exists (Linux), each phase also says how busy the machine's cores were and how the busy time
divides between the Python processes (the clients and gunicorn's workers; the grant engine) and the rest
(PostgreSQL's backends, and anything else running): on a machine whose cores are all busy, throughput grows
only with less work per transaction or more cores. A machine shared with other work gives runs that differ by
a sixth or more: ``--repeat`` runs the whole benchmark again on a fresh database and reports the median run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

__all__ = ["BENCH_DB", "drop_database", "prepare_database", "run_provider_benchmark", "summarise"]

BENCH_DB = "mynapoint_bench"
WSGI_APP = "mynapoint.config.wsgi:application"
BATCH_PATH = "/api/provider/v1/transactions/batch"
GRANTS_PATH = "/api/provider/v1/grants"
ACK_PATH = "/api/provider/v1/grants/ack"
PROBE_PATH = "/api/provider/v1/grants?limit=1"  # authenticated, reads the database, answers an empty page
SERVER_START_SECONDS = 60.0
SERVER_STOP_SECONDS = 30.0
REQUEST_TIMEOUT = (10.0, 900.0)  # connect, read: a batch of 10,000 on a busy machine takes seconds
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _database_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain PostgreSQL database name (a-z, 0-9, _): {name!r}")
    return name


def _url_for(admin_url: str, name: str) -> str:
    return urlsplit(admin_url)._replace(path=f"/{name}").geturl()


def prepare_database(admin_url: str, name: str = BENCH_DB) -> str:
    """Drop and create the benchmark database ``name``; return its URL."""
    import psycopg
    from psycopg import sql

    ident = sql.Identifier(_database_name(name))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    return _url_for(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a benchmark database (closing its connections)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(_database_name(name)))
        )


# ------------------------------------------------------------------------------------------------ server


@dataclass
class _Server:
    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    version: str

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        self.log.seek(0)
        return "\n".join(self.log.read().decode("utf-8", "replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gunicorn_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gunicorn")
    except PackageNotFoundError:
        raise RuntimeError(
            "gunicorn is not installed: the provider benchmark serves the platform with it (pip install -e .)"
        ) from None


def _wait_until_ready(server: _Server, key: str) -> None:
    import requests

    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited with {server.process.returncode} before answering:\n{server.log_tail()}"
            )
        try:
            answer = requests.get(server.url + PROBE_PATH, headers={"X-API-Key": key}, timeout=5)
        except requests.ConnectionError:
            answer = None
        if answer is not None:
            if answer.status_code != 200:
                raise RuntimeError(
                    f"the server answers {answer.status_code} to {PROBE_PATH}: {answer.text[:300]}\n"
                    f"{server.log_tail()}"
                )
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"gunicorn did not answer within {SERVER_START_SECONDS:.0f} s:\n{server.log_tail()}"
            )
        time.sleep(0.1)


def _warm_up(server: _Server, key: str, connections: int) -> None:
    """A few authenticated requests at once, so that every worker has loaded its URLs and opened its database
    connection before the clock starts (a server in service is warm)."""
    import requests

    failures: list[BaseException] = []

    def probe() -> None:
        try:
            requests.get(server.url + PROBE_PATH, headers={"X-API-Key": key}, timeout=30).raise_for_status()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=probe) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"the warm-up failed: {failures[0]!r}\n{server.log_tail()}")


@contextmanager
def _gunicorn(
    *, database_url: str, clock_start: dt.datetime, workers: int, echo: Callable[[str], object]
) -> Iterator[_Server]:
    """gunicorn serving the platform on a free local port; stopped (SIGTERM, then SIGKILL) however the block
    ends."""
    from django.conf import settings

    version = _gunicorn_version()
    port = _free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mynapoint.config.settings",
        "MYNAPOINT_DATA_DIR": str(settings.DATA_DIR),  # the same data folder from another working folder
        "MYNAPOINT_DATABASE_URL": database_url,
        "MYNAPOINT_CLOCK_START": clock_start.isoformat(),
        "MYNAPOINT_DEBUG": "0",
    }
    env.pop("GUNICORN_CMD_ARGS", None)  # only the options below
    argv = [
        sys.executable, "-m", "gunicorn", WSGI_APP,
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        "--worker-class", "sync",
        "--timeout", "600",  # a sync worker silent this long is killed: a big batch on a busy machine is not
        "--graceful-timeout", str(int(SERVER_STOP_SECONDS)),
        "--no-control-socket",  # its default is one path per user: two runs at once would share it
        "--log-level", "warning",
    ]  # fmt: skip
    # started in an empty folder, so that no gunicorn.conf.py of the working folder changes what is measured
    with (
        tempfile.TemporaryFile(prefix="mynapoint-bench-gunicorn-") as log,
        tempfile.TemporaryDirectory(prefix="mynapoint-bench-") as folder,
    ):
        process = subprocess.Popen(argv, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        server = _Server(url=f"http://127.0.0.1:{port}", process=process, log=log, version=version)
        echo(f"gunicorn {version}: {workers} sync workers on {server.url} (pid {process.pid})")
        try:
            yield server
        finally:
            if process.poll() is None:
                process.terminate()  # gunicorn's graceful stop
                try:
                    process.wait(timeout=SERVER_STOP_SECONDS + 5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.returncode not in (0, -15):
                echo(f"gunicorn ended with {process.returncode}; its log:\n{server.log_tail()}")


# ------------------------------------------------------------------------------------------------ clients


@dataclass
class _Posted:
    seconds: float = 0.0
    answers: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(int(answer[name]) for answer in self.answers)


def _post_all(url: str, key: str, path: str, bodies: list[bytes], clients: int) -> _Posted:
    """POST every body to ``path`` with ``clients`` threads, each taking the next body as its answer arrives;
    timed from the first request to the last answer. Any answer but a 200 stops the run.

    Each thread has its own ``requests`` session, which keeps its connection alive where the server does.
    gunicorn's sync workers answer ``Connection: close``, so each batch opens a loopback connection (a fraction
    of a millisecond next to a batch's second); they are the worker class for a CPU-bound application, and
    one request per accept spreads the batches evenly over the workers.
    """
    import requests

    lock = threading.Lock()
    pending = list(reversed(bodies))
    starts: list[float] = []
    ends: list[float] = []
    result = _Posted()
    failures: list[BaseException] = []
    go = threading.Barrier(clients)

    def client() -> None:
        with requests.Session() as session:
            session.headers.update({"X-API-Key": key, "Content-Type": "application/json"})
            try:
                go.wait()
                while True:
                    with lock:
                        if not pending or failures:
                            return
                        body = pending.pop()
                    start = time.perf_counter()
                    answer = session.post(url + path, data=body, timeout=REQUEST_TIMEOUT)
                    end = time.perf_counter()
                    if answer.status_code != 200:
                        raise RuntimeError(f"{path} refused: {answer.status_code} {answer.text[:300]!r}")
                    counts = answer.json()
                    with lock:
                        starts.append(start)
                        ends.append(end)
                        result.latencies.append(end - start)
                        result.answers.append(counts)
            except BaseException as exc:
                with lock:
                    failures.append(exc)
                go.abort()

    threads = [threading.Thread(target=client, name=f"bench-client-{n}") for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [f for f in failures if not isinstance(f, threading.BrokenBarrierError)]
    if real:
        raise real[0]
    if failures:
        raise failures[0]
    result.seconds = max(ends) - min(starts)
    return result


def _ack_body(grant_ids: list[int]) -> bytes:
    return json.dumps({"items": [{"grant_id": pk, "reference": f"bench-{pk}"} for pk in grant_ids]}).encode()


def _pull(url: str, key: str) -> tuple[list[tuple[int, int]], int, float]:
    """Every grant instruction, pulled as a provider pulls them (``GET /grants``, pages of 1,000 from the
    cursor): ``(grant id, points)`` of each, the pages read, the seconds taken."""
    import requests

    ids: list[tuple[int, int]] = []
    pages, cursor = 0, 0
    start = time.perf_counter()
    with requests.Session() as session:
        session.headers["X-API-Key"] = key
        while True:
            answer = session.get(
                url + GRANTS_PATH, params={"after": cursor, "limit": 1000}, timeout=REQUEST_TIMEOUT
            )
            if answer.status_code != 200:
                raise RuntimeError(f"{GRANTS_PATH} refused: {answer.status_code} {answer.text[:300]!r}")
            page = answer.json()
            pages += 1
            if not page["items"]:
                return ids, pages, time.perf_counter() - start
            ids.extend((int(item["grant_id"]), int(item["amount"])) for item in page["items"])
            cursor = page["next_cursor"]


# ------------------------------------------------------------------------------------------------ CPU


@dataclass(frozen=True)
class _Cpu:
    """CPU seconds read off Linux's /proc: the whole machine's busy and total time (every core), and the time
    of the processes named (this one with its threads, gunicorn's workers)."""

    busy: float
    total: float
    processes: float


def _ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def _process_seconds(pid: int) -> float:
    """User and system CPU seconds of a live process (all its threads); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _ticks()  # utime, stime (fields 14 and 15 of stat(5))


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    if int(stat.read().rpartition(")")[2].split()[1]) == parent:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _cpu(pids: list[int]) -> _Cpu | None:
    """A reading of the machine's CPU time (None where there is no /proc/stat). Busy is user, nice, system,
    irq and softirq time (guest time is inside user and nice already); time the hypervisor gave to other
    machines (steal) is neither busy nor idle here: it is left out of both."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            jiffies = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    jiffies += [0] * (8 - len(jiffies))
    user, nice, system, idle, iowait, irq, softirq = jiffies[:7]
    busy = user + nice + system + irq + softirq
    return _Cpu(
        busy=busy / _ticks(),
        total=(busy + idle + iowait) / _ticks(),
        processes=sum(_process_seconds(pid) for pid in pids),
    )


def _cpu_split(before: _Cpu | None, after: _Cpu | None) -> dict[str, float] | None:
    """Core-seconds the machine was busy between two readings, the share of all cores, and how much of it the
    processes named took (the rest is PostgreSQL's backends and whatever else runs on the machine)."""
    if before is None or after is None or after.total <= before.total:
        return None
    busy = after.busy - before.busy
    mine = max(after.processes - before.processes, 0.0)  # a worker restarted in between takes its time along
    return {
        "busy_core_seconds": round(busy, 2),
        "busy_share": round(busy / (after.total - before.total), 3),
        "python_core_seconds": round(mine, 2),
        "rest_core_seconds": round(max(busy - mine, 0.0), 2),
    }


# ------------------------------------------------------------------------------------------------ the run


def run_provider_benchmark(
    *,
    residents: int,
    transactions: int,
    batch_size: int,
    workers: int = 2,
    clients: int = 2,
    database_url: str | None = None,
    echo: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Django must be set up on the benchmark database (see the CLI command), whose URL is ``database_url``
    (default: ``MYNAPOINT_DATABASE_URL``); the server is started on it."""
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Max

    from mynapoint.applications.models import PaymentAccount, PointApplication
    from mynapoint.audit.services import Actor
    from mynapoint.grants.batch import run_grants_batch
    from mynapoint.grants.selectors import verify_programme_ledger
    from mynapoint.identity.models import Resident
    from mynapoint.ledger.models import Entry, Posting
    from mynapoint.providers.models import Provider, ProviderTransaction
    from mynapoint.providers.services import issue_api_key
    from mynapoint.rules.model import JST
    from mynapoint.settlement.reconciliation import reconcile
    from mynapoint.settlement.services import compute_monthly_claim

    if connection.vendor != "postgresql":
        raise RuntimeError("the provider benchmark runs on PostgreSQL (set --admin-url)")
    if min(residents, transactions, batch_size, workers, clients) < 1:
        raise ValueError("residents, transactions, batch size, workers and clients must be at least 1")
    database_url = database_url or os.environ["MYNAPOINT_DATABASE_URL"]
    call_command("migrate", verbosity=0)
    now = dt.datetime(2022, 7, 1, 9, 0, tzinfo=JST)
    office = Actor(actor="bench", channel="office", terminal="bench")
    provider = Provider.objects.create(
        key="bench", name_ja="ベンチ決済", kind="qr", modes=["charge"], grant_schedule="immediate",
        measures=["premium"],
    )  # fmt: skip
    key, _ = issue_api_key(provider=provider, label="bench", now=now, who=office)
    echo(f"seeding {residents:,} residents with linked accounts ...")
    Resident.objects.bulk_create(
        [
            Resident(
                mykey_id=f"B{i:07d}",
                created_at=now,
                born=dt.date(1980, 1, 1),
                kana="ベンチ",
                card_applied=dt.date(2021, 1, 1),
                card_issued=dt.date(2021, 2, 1),
            )
            for i in range(residents)
        ],
        batch_size=5000,
    )
    people = list(Resident.objects.order_by("pk").values_list("pk", flat=True))
    PaymentAccount.objects.bulk_create(
        [
            PaymentAccount(provider=provider, service_id=f"S{i}", linked_resident_id=pk, linked_at=now)
            for i, pk in enumerate(people)
        ],
        batch_size=5000,
    )
    accounts = dict(PaymentAccount.objects.filter(provider=provider).values_list("linked_resident_id", "pk"))
    PointApplication.objects.bulk_create(
        [
            PointApplication(
                resident_id=pk,
                measure="premium",
                account_id=accounts[pk],
                mode="charge",
                holder_role="self",
                operated_by_id=pk,
                present=[],
                channel="self",
                actor="bench",
                applied_at=now,
                status="accepted",
                explanation_ja="受付",
                explanation_en="accepted",
                parameter_edition="seed",
            )
            for pk in people
        ],
        batch_size=5000,
    )
    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    for n in range(transactions):
        at = now + dt.timedelta(minutes=10 + n // 100)
        rows.append(
            {
                "kind": "charge",
                "txid": f"T{n}",
                "service_id": f"S{rng.randrange(residents)}",
                "amount": rng.choice([500, 1000, 3000, 5000, 10000]),
                "at": at.isoformat(),
            }
        )
    last_at = now + dt.timedelta(minutes=10 + (transactions - 1) // 100)
    # the server's programme clock: an hour after the last transaction, so that none is in the future
    clock_start = last_at + dt.timedelta(hours=1)
    bodies = [
        json.dumps({"items": rows[i : i + batch_size]}).encode("utf-8")
        for i in range(0, len(rows), batch_size)
    ]

    with _gunicorn(database_url=database_url, clock_start=clock_start, workers=workers, echo=echo) as server:
        _wait_until_ready(server, key)
        _warm_up(server, key, connections=2 * workers)
        echo(
            f"posting {transactions:,} transactions in {len(bodies)} batches of {batch_size:,} "
            f"({sum(map(len, bodies)) / 1e6:.1f} MB of JSON) with {clients} clients over HTTP ..."
        )
        python = [os.getpid(), *_children(server.process.pid)]  # this process (the clients), the workers
        cpu_before = _cpu(python)
        ingest = _post_all(server.url, key, BATCH_PATH, bodies, clients)
        ingest_cpu = _cpu_split(cpu_before, _cpu(python))
        server_version = server.version
        # the grant engine, in this process (the server waits idle)
        cpu_before = _cpu([os.getpid()])
        t1 = time.perf_counter()
        report = run_grants_batch(today=dt.date(2022, 12, 31), now=now + dt.timedelta(days=200), who=office)
        grants = time.perf_counter() - t1
        grants_cpu = _cpu_split(cpu_before, _cpu([os.getpid()]))
        postings = Posting.objects.count()  # what the grant engine posted (acknowledgements come next)
        # then the provider's side of it, not in the end-to-end figure: pull every grant, acknowledge them
        echo("pulling the grants and acknowledging them over HTTP ...")
        pulled, pages, pull_s = _pull(server.url, key)
        acks = _post_all(
            server.url,
            key,
            ACK_PATH,
            [
                _ack_body([pk for pk, _ in pulled[i : i + batch_size]])
                for i in range(0, len(pulled), batch_size)
            ],
            clients,
        )
    total = ingest.seconds + grants

    # correct before fast: every transaction stored once, grants posted to the ledger
    stored = ProviderTransaction.objects.filter(provider=provider).count()
    created = ingest.total("created")
    if created != transactions or stored != transactions:
        raise RuntimeError(
            f"{transactions:,} transactions posted, the API created {created:,} "
            f"({ingest.total('unchanged'):,} unchanged) and {stored:,} are stored"
        )
    if report.grants < 1 or postings < 1:
        raise RuntimeError(f"the grant engine posted nothing: {report.grants} grants, {postings} postings")
    if len(pulled) != report.grants or acks.total("acknowledged") != report.grants:
        raise RuntimeError(
            f"{report.grants:,} grants instructed, {len(pulled):,} pulled, "
            f"{acks.total('acknowledged'):,} acknowledged"
        )

    # the programme office's side, also apart: the month's claim from the ledger, and the provider's list of
    # what it granted reconciled against the ledger
    acked_on = Entry.objects.filter(kind="grant_acknowledged").aggregate(day=Max("effective_date"))["day"]
    t4 = time.perf_counter()
    claim = compute_monthly_claim(
        provider=provider, month=acked_on.replace(day=1), now=now + dt.timedelta(days=400), who=office
    )
    claim_s = time.perf_counter() - t4
    t5 = time.perf_counter()
    reconciled = reconcile(
        provider=provider,
        acknowledgements=[(pk, f"bench-{pk}", points) for pk, points in pulled],
        period=acked_on,
    )
    reconcile_s = time.perf_counter() - t5
    granted = sum(points for _, points in pulled)
    if claim.amount != granted or not reconciled.ok or reconciled.matched != len(pulled):
        raise RuntimeError(
            f"the office's side does not agree: {granted:,} points acknowledged, claim {claim.amount:,}, "
            f"reconciliation {reconciled.matched:,} matched, {len(reconciled.discrepancies):,} discrepancies"
        )

    # baselines: COPY of the same rows, in the same database, in the same run
    table = connection.ops.quote_name(ProviderTransaction._meta.db_table)
    column = {f.name: f.column for f in ProviderTransaction._meta.concrete_fields}
    columns = ", ".join(
        column[name] for name in ("provider", "txid", "account", "kind", "amount", "at", "recorded_at")
    )
    by_service = dict(PaymentAccount.objects.filter(provider=provider).values_list("service_id", "pk"))
    recorded_at = clock_start.isoformat()
    plain_rows = [(r["txid"], r["service_id"], r["kind"], r["amount"], r["at"]) for r in rows]
    shaped_rows = [
        (provider.pk, r["txid"], by_service[r["service_id"]], r["kind"], r["amount"], r["at"], recorded_at)
        for r in rows
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_copy (txid text, service_id text, kind text, amount integer, at timestamptz)"
        )
        cursor.execute(f"CREATE TABLE bench_copy_shaped (LIKE {table} INCLUDING ALL)")
    raw = connection.connection  # psycopg connection
    copy_s = _copy(raw, "COPY bench_copy (txid, service_id, kind, amount, at) FROM STDIN", plain_rows)
    shaped_s = _copy(raw, f"COPY bench_copy_shaped ({columns}) FROM STDIN", shaped_rows)

    echo("verifying the ledger ...")
    t3 = time.perf_counter()
    verified = verify_programme_ledger()
    verify_s = time.perf_counter() - t3
    if not verified.ok:
        raise RuntimeError(f"the ledger does not verify: {'; '.join(verified.problems[:5])}")

    end_to_end = transactions / total
    copy_rate = transactions / copy_s
    shaped_rate = transactions / shaped_s
    figures = {
        "transactions": transactions,
        "residents": residents,
        "batch_size": batch_size,
        "api_ingest_seconds": round(ingest.seconds, 3),
        "grant_engine_seconds": round(grants, 3),
        "end_to_end_tx_per_s": round(end_to_end),
        "api_ingest_tx_per_s": round(transactions / ingest.seconds),
        "copy_seconds": round(copy_s, 3),
        "copy_rows_per_s": round(copy_rate),
        "ratio_to_copy": round(end_to_end / copy_rate, 4),
        "grants": report.grants,
        "ledger_postings": postings,
        "pid": os.getpid(),
        "server": f"gunicorn {server_version} (sync workers)",
        "workers": workers,
        "clients": clients,
        "batches": len(bodies),
        "end_to_end_seconds": round(total, 3),
        "batch_seconds_mean": round(sum(ingest.latencies) / len(ingest.latencies), 3),
        "batch_seconds_max": round(max(ingest.latencies), 3),
        "provider_transactions": stored,
        "shaped_copy_seconds": round(shaped_s, 3),
        "shaped_copy_rows_per_s": round(shaped_rate),
        "ratio_to_shaped_copy": round(end_to_end / shaped_rate, 4),
        "ledger_entries": verified.entries,
        "ledger_verify_seconds": round(verify_s, 3),
        "database": connection.settings_dict["NAME"],
        "grants_pulled": len(pulled),
        "grant_pages": pages,
        "pull_seconds": round(pull_s, 3),
        "acknowledged": acks.total("acknowledged"),
        "ack_seconds": round(acks.seconds, 3),
        "acks_per_s": round(acks.total("acknowledged") / acks.seconds),
        "claim_seconds": round(claim_s, 3),
        "claim_points": claim.amount,
        "reconcile_seconds": round(reconcile_s, 3),
        "reconciled": reconciled.matched,
        "cores": os.cpu_count(),
        "ingest_cpu": ingest_cpu,
        "grant_engine_cpu": grants_cpu,
    }
    echo(
        f"batch API over HTTP → durable ledger postings: {figures['end_to_end_tx_per_s']:,} tx/s end to end "
        f"({transactions:,} in {total:.2f} s; {workers} gunicorn workers, {clients} clients)"
    )
    echo(
        f"  ingest {figures['api_ingest_tx_per_s']:,} tx/s ({ingest.seconds:.2f} s, "
        f"{stored:,} stored; a batch of {batch_size:,} took {figures['batch_seconds_mean']:.2f} s on average, "
        f"{figures['batch_seconds_max']:.2f} s at most); grant engine {grants:.2f} s "
        f"({report.grants:,} grants, {postings:,} postings)"
    )
    echo(
        f"raw COPY of the same rows into a plain table: {figures['copy_rows_per_s']:,} rows/s "
        f"({copy_s:.2f} s); end to end is {end_to_end / copy_rate:.1%} of it"
    )
    echo(
        f"COPY into the transactions table's shape (indexes, no foreign keys): "
        f"{figures['shaped_copy_rows_per_s']:,} rows/s ({shaped_s:.2f} s); end to end is "
        f"{end_to_end / shaped_rate:.1%} of it"
    )
    echo(
        f"the provider's side (not in the figures above): {len(pulled):,} grants pulled in {pages} pages "
        f"({pull_s:.2f} s) and acknowledged in batches of {batch_size:,}, {figures['acks_per_s']:,} a second "
        f"({acks.seconds:.2f} s; each acknowledgement a ledger entry payable → resident)"
    )
    echo(
        f"the office's side (not in the figures above): the month's claim ({claim.amount:,} points) computed in "
        f"{claim_s:.2f} s; the provider's list of {len(pulled):,} grants reconciled in {reconcile_s:.2f} s "
        f"({reconciled.matched:,} agree)"
    )
    for phase, split in (("ingest", ingest_cpu), ("grant engine", grants_cpu)):
        if split:
            echo(
                f"CPU during the {phase}: {split['busy_share']:.0%} of {os.cpu_count()} cores busy "
                f"({split['busy_core_seconds']:.2f} core-s: Python {split['python_core_seconds']:.2f}, "
                f"PostgreSQL and the rest {split['rest_core_seconds']:.2f})"
            )
    echo(f"ledger verified in {verify_s:.2f} s ({verified.entries:,} entries; not in the figures above)")
    return figures


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several runs: those of the median run (by end-to-end throughput; the lower middle of an
    even count), with every run's throughput and ratios beside them."""
    ordered = sorted(runs, key=lambda figures: figures["end_to_end_tx_per_s"])
    median = ordered[(len(ordered) - 1) // 2]
    return {
        **median,
        "runs": len(runs),
        "end_to_end_tx_per_s_each": [figures["end_to_end_tx_per_s"] for figures in runs],
        "ratio_to_copy_each": [figures["ratio_to_copy"] for figures in runs],
        "ratio_to_shaped_copy_each": [figures["ratio_to_shaped_copy"] for figures in runs],
    }


def _copy(raw: Any, statement: str, rows: list[tuple[Any, ...]]) -> float:
    """Seconds to COPY ``rows`` and commit them."""
    t0 = time.perf_counter()
    with raw.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
    raw.commit()
    return time.perf_counter() - t0
