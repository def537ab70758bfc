"""`mynapoint bench provider` end to end at a tiny size, on PostgreSQL: gunicorn serves the platform, the
client threads post the batches over HTTP, the grant engine posts to the ledger, both COPY baselines run, and
the figures come back with every transaction stored once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from mynapoint.bench.provider import drop_database

NEEDS_POSTGRES = (
    "the provider benchmark needs PostgreSQL (CREATE DATABASE, COPY): this pass runs on SQLite; set "
    "MYNAPOINT_DATABASE_URL to a postgres:// URL (make test-postgres does)"
)
RESIDENTS, TRANSACTIONS, BATCH = 200, 2_000, 500
POSITIVE = (
    "api_ingest_seconds", "grant_engine_seconds", "end_to_end_seconds", "end_to_end_tx_per_s",
    "api_ingest_tx_per_s", "copy_seconds", "copy_rows_per_s", "ratio_to_copy", "shaped_copy_seconds",
    "shaped_copy_rows_per_s", "ratio_to_shaped_copy", "ledger_verify_seconds", "batch_seconds_mean",
    "batch_seconds_max", "grants", "ledger_postings", "ledger_entries", "pull_seconds", "ack_seconds",
    "acks_per_s", "claim_seconds", "claim_points", "reconcile_seconds",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.postgres(NEEDS_POSTGRES)
def test_provider_benchmark_runs_over_http_and_stores_every_transaction(tmp_path: Path) -> None:
    admin_url = urlsplit(os.environ["MYNAPOINT_DATABASE_URL"])._replace(path="/postgres").geturl()
    name = f"mynapoint_bench_smoke_{os.getpid()}"
    env = {**os.environ, "MYNAPOINT_DATA_DIR": str(tmp_path)}
    for key in ("DJANGO_SETTINGS_MODULE", "MYNAPOINT_DATABASE_URL", "MYNAPOINT_CLOCK_START"):
        env.pop(key, None)
    command = [
        sys.executable, "-m", "mynapoint.cli", "bench", "provider", "--admin-url", admin_url,
        "--database-name", name, "--residents", str(RESIDENTS), "--transactions", str(TRANSACTIONS),
        "--batch-size", str(BATCH), "--workers", "2", "--clients", "2", "--repeat", "2", "--json",
    ]  # fmt: skip
    try:
        run = subprocess.run(  # noqa: S603
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
        assert "gunicorn" in run.stdout
        figures = json.loads(run.stdout[run.stdout.rindex("\n{\n") :])
        assert figures["database"] == name
        assert figures["transactions"] == figures["provider_transactions"] == TRANSACTIONS
        assert figures["batches"] == TRANSACTIONS // BATCH
        assert (figures["workers"], figures["clients"]) == (2, 2)
        # two runs, each on a fresh database; the figures are the slower one's (the lower middle of two)
        assert figures["runs"] == 2
        assert run.stdout.count("— run ") == 2
        assert figures["end_to_end_tx_per_s"] == min(figures["end_to_end_tx_per_s_each"])
        assert len(figures["ratio_to_copy_each"]) == len(figures["ratio_to_shaped_copy_each"]) == 2
        # where the CPU went (Linux): the machine was busy, and Python took part of it
        for phase in ("ingest_cpu", "grant_engine_cpu"):
            split = figures[phase]
            assert 0 < split["busy_share"] <= 1, (phase, split)
            assert split["python_core_seconds"] >= 0, (phase, split)
            assert split["busy_core_seconds"] >= split["rest_core_seconds"] >= 0, (phase, split)
        assert figures["ingest_cpu"]["python_core_seconds"] > 0  # four batches over HTTP, parsed and answered
        assert "CPU during the ingest" in run.stdout
        for key in POSITIVE:
            assert figures[key] > 0, (key, figures)
        assert figures["ledger_postings"] >= 2 * figures["grants"]  # double entry: a debit and a credit
        # the provider's side: every grant pulled, page by page, and acknowledged
        assert figures["grants_pulled"] == figures["acknowledged"] == figures["grants"]
        pages = -(-figures["grants"] // 1000) + 1  # pages of 1,000, then an empty one
        assert figures["grant_pages"] == pages
        # an instruction and an acknowledgement each
        assert figures["ledger_entries"] == 2 * figures["grants"]
        # the office's side: the month's claim and the provider's list reconciled, every grant agreeing
        assert figures["reconciled"] == figures["grants"]
        assert "the office's side" in run.stdout
        # the database says the same as the figures
        with psycopg.connect(urlsplit(admin_url)._replace(path=f"/{name}").geturl()) as conn:
            stored = conn.execute("SELECT count(*) FROM providers_providertransaction").fetchone()
            postings = conn.execute(
                "SELECT count(*) FROM ledger_posting p JOIN ledger_entry e ON e.id = p.entry_id "
                "WHERE e.kind = 'grant_instructed'"
            ).fetchone()
            acknowledged = conn.execute(
                "SELECT count(*), sum(amount) FROM grants_grant "
                "WHERE status = 'acknowledged' AND provider_reference LIKE 'bench-%'"
            ).fetchone()
            copied = conn.execute(
                "SELECT (SELECT count(*) FROM bench_copy), (SELECT count(*) FROM bench_copy_shaped)"
            ).fetchone()
        assert stored == (TRANSACTIONS,)
        assert postings == (figures["ledger_postings"],)  # what the grant engine posted
        assert acknowledged == (figures["grants"], figures["claim_points"])
        assert copied == (TRANSACTIONS, TRANSACTIONS)
    finally:
        drop_database(admin_url, name)
