"""The grant engine over a whole population at once (the rules' batch path, Polars).

``run_grants`` asks the rules resident by resident, which is what a single resident's request needs; a
national run over tens of millions of residents uses this module instead. It loads the decided facts as
columns, computes every entitlement with :func:`mynapoint.rules.batch.compute_entitlements` (kept equal to the
per-resident path by the rules' parity test), and posts the differences in chunks. Each chunk is one durable
transaction; ``(resident, measure, ordinal)`` and the ledger's idempotency keys are unique, so a run killed at
any point is simply run again, and two runs never post a point twice. ``tests/integration/test_grants_batch.py``
checks that both engines instruct the same grants.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Sum

from mynapoint.applications.models import (
    AccountReplacement,
    ApplicationStatus,
    HealthInsuranceRegistration,
    PaymentAccount,
    PointApplication,
    PublicFundRegistration,
)
from mynapoint.applications.selectors import parameters
from mynapoint.audit.services import Actor, record
from mynapoint.grants.models import Grant, OutboxMessage
from mynapoint.grants.services import GrantRunReport, due_cutoff
from mynapoint.identity.models import Resident
from mynapoint.ledger.models import Entry, LedgerAccount, Posting
from mynapoint.ledger.services import BUDGET, payable
from mynapoint.providers.models import GrantDelivery, Provider, ProviderRefund, ProviderTransaction
from mynapoint.rules.batch import (
    DAY_MAX,
    MEASURE_CODE,
    MODE_CODE,
    SEQ_MAX,
    BatchFrames,
    compute_entitlements,
    counted_transactions,
)
from mynapoint.rules.model import JST
from mynapoint.rules.parameters import Parameters

__all__ = ["load_frames", "run_grants_batch"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _day(at: dt.datetime) -> int:
    return at.astimezone(JST).date().toordinal()


def _micros(at: dt.datetime) -> int:
    return (at - _EPOCH) // dt.timedelta(microseconds=1)


@dataclass
class _World:
    frames: BatchFrames
    resident_ids: list[int]  # pid -> Resident.pk
    mykey: dict[int, str]
    # (resident pk, measure) -> (provider pk, account pk): where a measure's points go
    targets: dict[tuple[int, str], tuple[int, int]]
    pid_of: dict[int, int]  # Resident.pk -> pid
    tx_keys: dict[
        int, str
    ]  # ProviderTransaction.pk -> "<provider id>:<txid>" as the per-resident path names it


def load_frames(params: Parameters) -> _World:
    """The decided facts of every resident with a link, as the rules' batch columns."""
    providers = {p.pk: p for p in Provider.objects.all()}
    apps = list(
        PointApplication.objects.filter(status=ApplicationStatus.ACCEPTED).values_list(
            "pk", "resident_id", "measure", "account_id", "mode", "applied_at", "account__provider_id"
        )
    )
    residents = {
        r["pk"]: r
        for r in Resident.objects.filter(merged_into__isnull=True).values(
            "pk", "mykey_id", "died", "phase1_applied", "phase1_account", "phase1_points", "phase1_mode"
        )
    }
    accounts_by_key: dict[str, tuple[int, int]] = {}
    provider_of_account: dict[int, int] = {}
    for pk, key, service_id, provider_pk in PaymentAccount.objects.values_list(
        "pk", "provider__key", "service_id", "provider_id"
    ):
        accounts_by_key[f"{key}/{service_id}"] = (pk, provider_pk)
        provider_of_account[pk] = provider_pk
    linked = sorted({a[1] for a in apps} | {pk for pk, r in residents.items() if r["phase1_account"]})
    linked = [pk for pk in linked if pk in residents]
    pid_of = {pk: i for i, pk in enumerate(linked)}
    cap = params.premium_cap
    targets: dict[tuple[int, str], tuple[int, int]] = {}

    # ordering key for links, replacements and transactions: (time, kind, id) as the per-resident path
    ordered: list[tuple[int, int, int, str]] = []
    for app in apps:
        ordered.append((_micros(app[5]), 0, app[0], "a"))
    replacements = list(
        AccountReplacement.objects.filter(accepted=True).values_list(
            "pk", "resident_id", "from_account_id", "to_account_id", "at"
        )
    )
    for rep in replacements:
        ordered.append((_micros(rep[4]), 1, rep[0], "r"))
    involved = {a[3] for a in apps} | {r[3] for r in replacements}
    phase1_links: dict[int, tuple[int, str]] = {}
    res_rows = []
    for pk in linked:
        r = residents[pk]
        applied: dt.date | None = r["phase1_applied"]
        carried = applied is not None and bool(r["phase1_account"])
        remaining = max(0, cap - (r["phase1_points"] or 0)) if carried else cap
        res_rows.append((pid_of[pk], remaining, r["died"].toordinal() if r["died"] else None))
        if (
            carried
            and remaining > 0
            and applied is not None
            and applied.toordinal() <= params.phase1_application_cutoff_day
            and r["phase1_account"] in accounts_by_key
        ):
            account_pk, provider_pk = accounts_by_key[r["phase1_account"]]
            phase1_links[pk] = (
                account_pk,
                r["phase1_mode"] or sorted(providers[provider_pk].modes or ["charge"])[0],
            )
            involved.add(account_pk)
            targets[(pk, "premium")] = (provider_pk, account_pk)
    # the whole table, filtered here: an IN list of every linked account costs more than it saves
    txs = [
        tx
        for tx in ProviderTransaction.objects.values_list(
            "pk", "account_id", "kind", "amount", "at", "provider_id", "txid"
        )
        if tx[1] in involved
    ]
    for tx in txs:
        ordered.append((_micros(tx[4]), 3, tx[0], "t"))
    ordered.sort()
    seq = {(kind, pk): i for i, (_, _, pk, kind) in enumerate(ordered)}

    link_rows, account_rows = [], []
    by_resident_reps: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for rep in replacements:
        by_resident_reps[rep[1]].append((seq[("r", rep[0])], rep[2], rep[3], rep[0]))
    for pk, (account_pk, mode) in phase1_links.items():
        link_rows.append((pid_of[pk], MEASURE_CODE["premium"], params.phase2_start_day, -1, MODE_CODE[mode],
                          params.phase2_start_day, _deadline(providers[targets[(pk, "premium")][0]], params)))  # fmt: skip
        account_rows.extend(_accounts(pid_of[pk], account_pk, -1, by_resident_reps.get(pk, [])))
    for app in apps:
        pk, measure = app[1], app[2]
        if pk not in pid_of:
            continue
        link_seq, day = seq[("a", app[0])], _day(app[5])
        provider = providers[app[6]]
        premium = measure == "premium"
        link_rows.append((pid_of[pk], MEASURE_CODE[measure], day, link_seq, MODE_CODE[app[4]], day,
                          _deadline(provider, params) if premium else DAY_MAX))  # fmt: skip
        current = app[3]
        for rep_seq, source, target, _ in sorted(by_resident_reps.get(pk, [])):
            if rep_seq > link_seq and source == current:
                current = target
        targets[(pk, measure)] = (provider_of_account[current], current)
        if premium:
            account_rows.extend(_accounts(pid_of[pk], app[3], link_seq, by_resident_reps.get(pk, [])))
    tx_rows = [(tx[0], tx[1], seq[("t", tx[0])], _day(tx[4]), MODE_CODE[tx[2]], tx[3]) for tx in txs]
    tx_ids = {t[0] for t in txs}
    refund_rows = [
        (of, _day(at), amount)
        for of, amount, at in ProviderRefund.objects.values_list("transaction_id", "amount", "at")
        if of in tx_ids
    ]
    reg_rows = [
        (pid_of[pk], MEASURE_CODE["health_insurance"], _day(at))
        for pk, at in HealthInsuranceRegistration.objects.values_list("resident_id", "registered_at")
        if pk in pid_of
    ] + [
        (pid_of[pk], MEASURE_CODE["public_fund"], _day(at))
        for pk, at in PublicFundRegistration.objects.filter(status=ApplicationStatus.ACCEPTED).values_list(
            "resident_id", "registered_at"
        )
        if pk in pid_of
    ]

    def frame(name: str, rows: list[tuple[int | None, ...]]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema=BatchFrames.schema(name), orient="row")

    frames = BatchFrames(
        residents=frame("residents", res_rows),  # type: ignore[arg-type]
        links=frame("links", link_rows),  # type: ignore[arg-type]
        link_accounts=frame("link_accounts", account_rows),  # type: ignore[arg-type]
        transactions=frame("transactions", tx_rows),  # type: ignore[arg-type]
        refunds=frame("refunds", refund_rows),  # type: ignore[arg-type]
        registrations=frame("registrations", reg_rows),  # type: ignore[arg-type]
    )
    mykey = {pk: residents[pk]["mykey_id"] for pk in linked}
    return _World(frames, linked, mykey, targets, pid_of, {tx[0]: f"{tx[5]}:{tx[6]}" for tx in txs})


def _deadline(provider: Provider, params: Parameters) -> int:
    return (
        provider.charge_deadline.toordinal()
        if provider.charge_deadline
        else params.point_application_deadline_day
    )


def _accounts(
    pid: int, account: int, since: int, replacements: Iterable[tuple[int, int, int, int]]
) -> list[tuple[int, int, int, int]]:
    """(pid, account, from_seq, to_seq) for a premium link and the replacements after it (§4)."""
    rows = []
    current, start = account, since
    for rep_seq, source, target, _ in sorted(replacements):
        if rep_seq > since and source == current:
            rows.append((pid, current, start, rep_seq))
            current, start = target, rep_seq
    rows.append((pid, current, start, SEQ_MAX))
    return rows


@dataclass(frozen=True)
class _Due:
    resident: int
    measure: str
    provider: int
    account: int
    amount: int
    cumulative: int
    ordinal: int
    cutoff: dt.date
    sources: list[str]


def _dues(world: _World, params: Parameters, today: dt.date) -> list[_Due]:
    providers = {p.pk: p for p in Provider.objects.all()}
    cutoffs = {pk: due_cutoff(p, today) for pk, p in providers.items()}
    instructed = {
        (row["resident_id"], row["measure"]): (int(row["total"]), int(row["n"]))
        for row in Grant.objects.values("resident_id", "measure").annotate(total=Sum("amount"), n=Count("id"))
    }
    earned: dict[dt.date, pl.DataFrame] = {}
    counted: dict[dt.date, dict[int, list[int]]] = {}
    for cutoff in sorted(set(cutoffs.values())):
        earned[cutoff] = compute_entitlements(world.frames, params, as_of_day=cutoff.toordinal())
        by_pid: dict[int, list[int]] = defaultdict(list)
        for pid, txid in counted_transactions(world.frames, as_of_day=cutoff.toordinal()).iter_rows():
            by_pid[pid].append(txid)
        counted[cutoff] = by_pid
    dues = []
    for (resident, measure), (provider, account) in sorted(world.targets.items()):
        cutoff = cutoffs[provider]
        pid = world.pid_of[resident]
        value = int(earned[cutoff][measure][pid])
        before, count = instructed.get((resident, measure), (0, 0))
        if value == before:
            continue
        sources = [f"application:{measure}:{world.mykey[resident]}"]
        if measure == "premium":
            sources += [f"transaction:{world.tx_keys[txid]}" for txid in counted[cutoff].get(pid, [])]
        else:
            sources.append(f"registration:{measure}:{world.mykey[resident]}")
        dues.append(
            _Due(resident, measure, provider, account, value - before, value, count + 1, cutoff, sources)
        )
    return dues


def _ledger_accounts(codes: set[str]) -> dict[str, int]:
    known = dict(LedgerAccount.objects.filter(code__in=codes).values_list("code", "pk"))
    missing = codes - known.keys()
    if missing:
        fresh = []
        for code in sorted(missing):
            kind, _, rest = code.partition(":")
            fields = {"kind": kind}
            if kind == "payable":
                fields["provider_key"] = rest
            fresh.append(LedgerAccount(code=code, **fields))
        LedgerAccount.objects.bulk_create(fresh, ignore_conflicts=True)
        known = dict(LedgerAccount.objects.filter(code__in=codes).values_list("code", "pk"))
    return known


def _insert(model: type[Any], columns: list[str], rows: list[tuple[Any, ...]]) -> list[int]:
    """Insert rows and return their ids, in order. PostgreSQL: ids drawn from the table's sequence and the rows
    sent with COPY (an order of magnitude faster than INSERT for a national run); elsewhere executemany."""
    if not rows:
        return []
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                [table, len(rows)],
            )
            ids = [row[0] for row in cursor.fetchall()]
            raw = cursor.cursor  # the psycopg cursor under Django's wrapper
            statement = f"COPY {table} (id, {', '.join(columns)}) FROM STDIN"
            with raw.copy(statement) as copy:
                for pk, row in zip(ids, rows, strict=True):
                    copy.write_row((pk, *row))
            return ids
        ids = []
        placeholders = ", ".join(["%s"] * len(columns))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) RETURNING id"  # noqa: S608
        for row in rows:
            cursor.execute(sql, list(row))
            ids.append(cursor.fetchone()[0])
        return ids


def _post_chunk(dues: list[_Due], world: _World, params: Parameters, now: dt.datetime, who: Actor) -> None:
    providers = {p.pk: p for p in Provider.objects.filter(pk__in={d.provider for d in dues})}
    codes = {BUDGET} | {payable(providers[d.provider].key) for d in dues}
    account_ids = _ledger_accounts(codes)
    used = {m: json.dumps(_parameters_used(params, m), ensure_ascii=False) for m in {d.measure for d in dues}}
    entry_ids = _insert(
        Entry,
        ["kind", "at", "effective_date", "idempotency_key", "rule_edition", "parameters", "sources", "memo"],
        [
            (
                "grant_instructed" if d.amount > 0 else "clawback_instructed",
                now,
                d.cutoff,
                f"grant:{world.mykey[d.resident]}:{d.measure}:{d.ordinal}",
                params.edition,
                used[d.measure],
                json.dumps(d.sources, ensure_ascii=False),
                f"{d.measure}: earned {d.cumulative} as of {d.cutoff} (batch)",
            )
            for d in dues
        ],
    )
    postings: list[tuple[Any, ...]] = []
    for d, entry_id in zip(dues, entry_ids, strict=True):
        postings.append((entry_id, account_ids[BUDGET], -d.amount, d.cutoff))
        postings.append((entry_id, account_ids[payable(providers[d.provider].key)], d.amount, d.cutoff))
    _insert(Posting, ["entry_id", "account_id", "amount", "effective_date"], postings)
    grant_ids = _insert(
        Grant,
        ["resident_id", "measure", "provider_id", "account_id", "ordinal", "amount", "cumulative_after", "due_as_of",
         "instructed_at", "instruction_entry_id", "status", "provider_reference"],
        [
            (d.resident, d.measure, d.provider, d.account, d.ordinal, d.amount, d.cumulative, d.cutoff, now, entry_id,
             "instructed", "")
            for d, entry_id in zip(dues, entry_ids, strict=True)
        ],
    )  # fmt: skip
    OutboxMessage.objects.bulk_create(
        [
            OutboxMessage(
                provider_id=d.provider,
                topic="grant",
                payload={"grant_id": grant_id},
                created_at=now,
                next_attempt_at=now,
            )
            for d, grant_id in zip(dues, grant_ids, strict=True)
            if providers[d.provider].grant_delivery == GrantDelivery.PUSH
        ]
    )
    record(
        who=who,
        action="grants_instructed_batch",
        subject_type="grant_run",
        subject_id=f"{now.isoformat()}:{grant_ids[0]}-{grant_ids[-1]}",
        before=None,
        after={
            "grants": len(grant_ids),
            "points": sum(d.amount for d in dues),
            "first": grant_ids[0],
            "last": grant_ids[-1],
        },
        at=now,
    )


def _parameters_used(params: Parameters, measure: str) -> dict[str, object]:
    from mynapoint.grants.services import _parameters_used as used

    return used(params, measure)


def run_grants_batch(
    *,
    today: dt.date,
    now: dt.datetime,
    who: Actor,
    chunk: int = 2000,
    progress: Callable[[int, int], None] | None = None,
) -> GrantRunReport:
    """Instruct everything due today for the whole population, in chunks of durable transactions."""
    params = parameters()
    report = GrantRunReport()
    for _attempt in range(3):
        world = load_frames(params)
        dues = _dues(world, params, today)
        report.residents = len(world.resident_ids)
        try:
            for start in range(0, len(dues), chunk):
                part = dues[start : start + chunk]
                with transaction.atomic(durable=True):
                    _post_chunk(part, world, params, now, who)
                for d in part:
                    report.grants += d.amount > 0
                    report.clawbacks += d.amount < 0
                    report.points += d.amount
                if progress:
                    progress(min(start + chunk, len(dues)), len(dues))
            return report
        except IntegrityError:  # another run posted some of these first: recompute what is left
            report.retried += 1
    report.errors.append("could not post after 3 attempts (another run kept posting the same grants)")
    return report
