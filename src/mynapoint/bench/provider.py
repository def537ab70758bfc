"""``mynapoint bench provider``: transactions per second from the provider batch API to durable ledger
postings on PostgreSQL, against a raw ``COPY`` of the same rows in the same run.

The run uses its own database (``mynapoint_bench``, dropped and made again). Residents, accounts and accepted
premium applications are seeded directly; then the transactions go through the real batch operation of the
provider API (authentication, validation, idempotency, durable insert) and the grant engine's batch path
posts the resulting grants to the ledger. The baseline copies the same rows into a plain table with COPY.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

__all__ = ["prepare_database", "run_provider_benchmark"]

BENCH_DB = "mynapoint_bench"


def prepare_database(admin_url: str) -> str:
    """Drop and create the benchmark database; return its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{BENCH_DB}"


def run_provider_benchmark(
    *, residents: int, transactions: int, batch_size: int, echo: Callable[[str], object] = print
) -> dict[str, Any]:
    """Django must be set up on the benchmark database (see the CLI command)."""
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from mynapoint.applications.models import PaymentAccount, PointApplication
    from mynapoint.audit.services import Actor
    from mynapoint.grants.batch import run_grants_batch
    from mynapoint.identity.models import Resident
    from mynapoint.ledger.models import Posting
    from mynapoint.providers.models import Provider
    from mynapoint.providers.services import issue_api_key
    from mynapoint.rules.model import JST

    if connection.vendor != "postgresql":
        raise RuntimeError("the provider benchmark runs on PostgreSQL (set --database-url)")
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
    rows = []
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
    bodies = [json.dumps({"items": rows[i : i + batch_size]}) for i in range(0, len(rows), batch_size)]
    client = Client()
    headers = {"X-API-Key": key}
    echo(f"posting {transactions:,} transactions in {len(bodies)} batches of {batch_size:,} ...")
    t0 = time.perf_counter()
    for body in bodies:
        answer = client.post(
            "/api/provider/v1/transactions/batch", body, content_type="application/json", headers=headers
        )
        if answer.status_code != 200:
            raise RuntimeError(f"batch refused: {answer.status_code} {answer.content[:300]!r}")
    ingest = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = run_grants_batch(today=dt.date(2022, 12, 31), now=now + dt.timedelta(days=200), who=office)
    grants = time.perf_counter() - t1
    postings = Posting.objects.count()
    total = ingest + grants

    # baseline: COPY of the same rows into a plain table, in the same database, in the same run
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_copy (txid text, service_id text, kind text, amount integer, at timestamptz)"
        )
    raw = connection.connection  # psycopg connection
    t2 = time.perf_counter()
    with (
        raw.cursor() as cur,
        cur.copy("COPY bench_copy (txid, service_id, kind, amount, at) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row((row["txid"], row["service_id"], row["kind"], row["amount"], row["at"]))
    raw.commit()
    copy_s = time.perf_counter() - t2
    figures = {
        "transactions": transactions,
        "residents": residents,
        "batch_size": batch_size,
        "api_ingest_seconds": round(ingest, 3),
        "grant_engine_seconds": round(grants, 3),
        "end_to_end_tx_per_s": round(transactions / total),
        "api_ingest_tx_per_s": round(transactions / ingest),
        "copy_seconds": round(copy_s, 3),
        "copy_rows_per_s": round(transactions / copy_s),
        "ratio_to_copy": round(copy_s / total, 3),
        "grants": report.grants,
        "ledger_postings": postings,
        "pid": os.getpid(),
    }
    echo(
        f"batch API → durable ledger postings: {figures['end_to_end_tx_per_s']:,} tx/s "
        f"(ingest {figures['api_ingest_tx_per_s']:,} tx/s in {ingest:.2f} s, grant engine {grants:.2f} s, "
        f"{report.grants:,} grants, {postings:,} postings)"
    )
    echo(
        f"raw COPY of the same rows: {figures['copy_rows_per_s']:,} rows/s ({copy_s:.2f} s); "
        f"ratio {figures['ratio_to_copy']:.1%} of COPY"
    )
    return figures
