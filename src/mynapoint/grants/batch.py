"""The grant engine over a whole population at once (the rules' batch path, Polars).

``run_grants`` asks the rules resident by resident, which is what a single resident's request needs; a
national run over tens of millions of residents uses this module instead. It loads the decided facts as
columns, computes every entitlement with :func:`mynapoint.rules.batch.compute_entitlements` (kept equal to the
per-resident path by the rules' parity test), and posts the differences in chunks. Each chunk is one durable
transaction; ``(resident, measure, ordinal)`` and the ledger's idempotency keys are unique, so a run killed at
any point is simply run again, and two runs never post a point twice. ``tests/integration/test_grants_batch.py``
checks that both engines instruct the same grants.

Between reading and writing everything is column work in Polars. On PostgreSQL the facts are read with
``COPY (SELECT …) TO STDOUT`` as CSV straight into Polars, and a chunk is written with one ``COPY … FROM
STDIN`` per table, of CSV that Polars writes; elsewhere (SQLite) the same queries run through the ORM and the
rows are inserted one by one. A ledger entry names the transactions behind a grant in time order.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import polars as pl
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, DateField, DateTimeField, QuerySet, Sum, Value
from django.db.models.functions import Concat

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
from mynapoint.grants.services import GrantRunReport, due_cutoff, take_positions
from mynapoint.identity.models import Resident
from mynapoint.ledger.models import Entry, Posting
from mynapoint.ledger.services import BUDGET, account_ids, payable
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

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DAY: Final = _EPOCH.date().toordinal()
_US_PER_DAY: Final = 86_400_000_000
_JST_US: Final = int(JST.utcoffset(None).total_seconds()) * 1_000_000  # a fixed offset: no summer time
_I64, _I32, _STR = pl.Int64(), pl.Int32(), pl.String()

# The facts read (see _queries), as columns: times in µs since the epoch, dates as proleptic ordinals.
_COLUMNS: Final[dict[str, dict[str, pl.DataType]]] = {
    "residents": {
        "pk": _I64,
        "mykey": _STR,
        "died": _I32,
        "phase1_applied": _I32,
        "phase1_account": _STR,
        "phase1_points": _I64,
        "phase1_mode": _STR,
    },
    "applications": {
        "pk": _I64,
        "resident": _I64,
        "measure": _STR,
        "account": _I64,
        "mode": _STR,
        "at": _I64,
    },
    "accounts": {"pk": _I64, "provider": _I64, "key": _STR},
    "replacements": {"pk": _I64, "resident": _I64, "source": _I64, "target": _I64, "at": _I64},
    "transactions": {
        "pk": _I64,
        "account": _I64,
        "kind": _STR,
        "amount": _I64,
        "at": _I64,
        "provider": _I64,
        "txid": _STR,
    },
    "refunds": {"tx": _I64, "amount": _I64, "at": _I64},
    "health": {"resident": _I64, "at": _I64},
    "fund": {"resident": _I64, "at": _I64},
    "instructed": {"resident": _I64, "measure": _STR, "total": _I64, "n": _I64},
}


def _queries() -> dict[str, QuerySet[Any, tuple[Any, ...]]]:
    """The query behind each table of :data:`_COLUMNS`, its columns in the same order (annotations last)."""
    accepted = ApplicationStatus.ACCEPTED
    queries: dict[str, QuerySet[Any, tuple[Any, ...]]] = {
        "residents": Resident.objects.filter(merged_into__isnull=True).values_list(
            "pk", "mykey_id", "died", "phase1_applied", "phase1_account", "phase1_points", "phase1_mode"
        ),
        "applications": PointApplication.objects.filter(status=accepted).values_list(
            "pk", "resident_id", "measure", "account_id", "mode", "applied_at"
        ),
        "accounts": PaymentAccount.objects.annotate(
            joined=Concat("provider__key", Value("/"), "service_id")  # as a phase-1 account is named
        ).values_list("pk", "provider_id", "joined"),
        "replacements": AccountReplacement.objects.filter(accepted=True).values_list(
            "pk", "resident_id", "from_account_id", "to_account_id", "at"
        ),
        "transactions": ProviderTransaction.objects.values_list(
            "pk", "account_id", "kind", "amount", "at", "provider_id", "txid"
        ),
        "refunds": ProviderRefund.objects.values_list("transaction_id", "amount", "at"),
        "health": HealthInsuranceRegistration.objects.values_list("resident_id", "registered_at"),
        "fund": PublicFundRegistration.objects.filter(status=accepted).values_list(
            "resident_id", "registered_at"
        ),
        "instructed": Grant.objects.values("resident_id", "measure")
        .annotate(total=Sum("amount"), n=Count("id"))
        .values_list("resident_id", "measure", "total", "n"),
    }
    return {name: query.order_by() for name, query in queries.items()}  # in no order: sorted in Polars


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return (value - _EPOCH) // dt.timedelta(microseconds=1)
    if isinstance(value, dt.date):
        return value.toordinal()
    return value


def _copy_out(query: QuerySet[Any, tuple[Any, ...]]) -> bytes:
    """The rows of a query as CSV, times and dates converted by PostgreSQL as :func:`_plain` converts them."""
    compiler = query.query.get_compiler(connection=connection)
    sql, params = compiler.as_sql()
    columns = []
    for i, (expression, _, _) in enumerate(compiler.select):
        field = expression.output_field
        if isinstance(field, DateTimeField):
            columns.append(f"(EXTRACT(EPOCH FROM c{i}) * 1000000)::bigint")
        elif isinstance(field, DateField):
            columns.append(f"c{i} - DATE '0001-01-01' + 1")
        else:
            columns.append(f"c{i}")
    names = ", ".join(f"c{i}" for i in range(len(columns)))
    compose: Callable[[str, Any], str] = connection.ops.compose_sql  # type: ignore[attr-defined]  # PostgreSQL's
    select = f"SELECT {', '.join(columns)} FROM ({compose(sql, params)}) AS q ({names})"  # noqa: S608 - the ORM's SQL
    data = bytearray()
    with (
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.cursor.copy(f"COPY ({select}) TO STDOUT (FORMAT csv)") as copy,
    ):
        for block in copy:
            data += block
    return bytes(data)


def _read(names: list[str]) -> dict[str, pl.DataFrame]:
    """Tables of :data:`_COLUMNS`: on PostgreSQL by COPY to CSV read by Polars, elsewhere through the ORM."""
    queries = _queries()
    frames = {}
    for name in names:
        schema = _COLUMNS[name]
        if connection.vendor != "postgresql":
            rows = [tuple(_plain(v) for v in row) for row in queries[name]]
            frames[name] = pl.DataFrame(rows, schema=schema, orient="row")
        elif data := _copy_out(queries[name]):
            frames[name] = pl.read_csv(io.BytesIO(data), has_header=False, schema=schema)
        else:
            frames[name] = pl.DataFrame(schema=schema)
    return frames


def _day(column: str) -> pl.Expr:
    """The JST day (proleptic ordinal) of a time in µs since the epoch."""
    return ((pl.col(column) + _JST_US) // _US_PER_DAY + _EPOCH_DAY).cast(pl.Int32)


@dataclass
class _World:
    frames: BatchFrames
    residents: pl.DataFrame  # pid (= row number), resident (Resident.pk), mykey: every resident with a link
    targets: pl.DataFrame  # resident, measure, provider, account, pid, mykey: where a measure's points go
    # tx (ProviderTransaction.pk), seq, source: "transaction:<provider id>:<txid>" as the per-resident path
    transactions: pl.DataFrame


def load_frames(params: Parameters) -> _World:
    """The decided facts of every resident with a link, as the rules' batch columns."""
    providers = {p.pk: p for p in Provider.objects.all()}
    t = _read(
        ["residents", "applications", "accounts", "replacements", "transactions", "refunds", "health", "fund"]
    )
    accounts, reps = t["accounts"], t["replacements"]
    apps = (  # accepted applications in the order they were made, with their account's provider
        t["applications"]
        .sort("at", "pk")
        .join(
            accounts.select(account="pk", provider="provider"),
            on="account",
            how="left",
            maintain_order="left",
        )
    )
    cap = params.premium_cap
    residents = (
        t["residents"]
        .with_columns(pl.col("phase1_account", "phase1_mode").fill_null(""))
        .filter(pl.col("pk").is_in(apps["resident"].implode()) | (pl.col("phase1_account") != ""))
        .sort("pk")
        .with_row_index("pid")
        .with_columns(
            pl.col("pid").cast(pl.Int64),
            carried=pl.col("phase1_applied").is_not_null() & (pl.col("phase1_account") != ""),
        )
        .with_columns(
            remaining=pl.when("carried")
            .then(pl.max_horizontal(pl.lit(0), cap - pl.col("phase1_points").fill_null(0)))
            .otherwise(cap)
        )
    )
    pid = residents.select("pk", "pid")
    default_mode = {pk: sorted(p.modes or ["charge"])[0] for pk, p in providers.items()}
    phase1 = (  # a phase-1 link carried into phase 2 (program.md D2): earns from the start of phase 2
        residents.filter(
            pl.col("carried")
            & (pl.col("remaining") > 0)
            & (pl.col("phase1_applied") <= params.phase1_application_cutoff_day)
        )
        .join(accounts.rename({"pk": "account"}), left_on="phase1_account", right_on="key", how="inner")
        .sort("pid")
        .select(
            "pid",
            resident="pk",
            measure=pl.lit("premium"),
            account="account",
            provider="provider",
            mode=pl.when(pl.col("phase1_mode") != "")
            .then("phase1_mode")
            .otherwise(pl.col("provider").replace_strict(default_mode, return_dtype=pl.String)),
            seq=pl.lit(-1, pl.Int64),
            day=pl.lit(params.phase2_start_day, pl.Int32),
        )
    )
    involved = pl.concat([apps["account"], reps["target"], phase1["account"]])
    txs = t["transactions"].filter(pl.col("account").is_in(involved.implode()))

    # ordering key for links, replacements and transactions: (time, kind, id) as the per-resident path
    order = (
        pl.concat(
            [f.select("at", "pk", kind=pl.lit(k, pl.Int8)) for f, k in ((apps, 0), (reps, 1), (txs, 3))]
        )
        .sort("at", "kind", "pk")
        .with_row_index("seq")
        .select("kind", "pk", pl.col("seq").cast(pl.Int64))
    )

    def sequenced(frame: pl.DataFrame, kind: int) -> pl.DataFrame:
        seqs = order.filter(pl.col("kind") == kind).drop("kind")
        return frame.join(seqs, on="pk", how="left", maintain_order="left")

    apps, reps, txs = sequenced(apps, 0), sequenced(reps, 1), sequenced(txs, 3)
    links = pl.concat(  # phase-1 links first, then the applications in the order they were made
        [
            phase1,
            apps.join(pid, left_on="resident", right_on="pk", how="inner", maintain_order="left").select(
                "pid", "resident", "measure", "account", "provider", "mode", "seq", day=_day("at")
            ),
        ]
    ).with_row_index("link")
    premium = pl.col("measure") == "premium"

    # a lost card's replacement carries a link over (§4); few residents have one, so their links are
    # followed in Python: the accounts a premium link earns on, and the account a link's points go to now
    by_resident: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for row in reps.sort("seq").iter_rows(named=True):
        by_resident[row["resident"]].append((row["seq"], row["source"], row["target"]))
    replaced = links.filter(pl.col("resident").is_in(pl.Series(list(by_resident), dtype=pl.Int64).implode()))
    chained: list[tuple[int, int, int, int, int]] = []
    current: list[tuple[int, int]] = []
    for link, link_pid, resident, measure, account, since in replaced.select(
        "link", "pid", "resident", "measure", "account", "seq"
    ).iter_rows():
        chain = _accounts(link_pid, account, since, by_resident[resident])
        current.append((link, chain[-1][1]))
        if measure == "premium":
            chained.extend((link, *row) for row in chain)
    link_accounts = pl.concat(
        [
            links.filter(premium & ~pl.col("link").is_in(replaced["link"].implode())).select(
                "link", "pid", "account", from_seq="seq", to_seq=pl.lit(SEQ_MAX, pl.Int64)
            ),
            pl.DataFrame(chained, schema={"link": pl.UInt32, **_schema("link_accounts")}, orient="row"),
        ]
    ).sort("link", maintain_order=True)

    # where the points go: an application's current account (a phase-1 link keeps its own), the latest link
    # of a resident and measure winning
    is_app = pl.col("seq") >= 0
    targets = (
        links.join(
            pl.DataFrame(current, schema={"link": pl.UInt32, "current": pl.Int64}, orient="row"),
            on="link",
            how="left",
            maintain_order="left",
        )
        .with_columns(pl.col("current").fill_null(pl.col("account")))
        .join(
            accounts.select(current="pk", current_provider="provider"),
            on="current",
            how="left",
            maintain_order="left",
        )
        .select(
            "resident",
            "measure",
            provider=pl.when(is_app).then("current_provider").otherwise("provider"),
            account=pl.when(is_app).then("current").otherwise("account"),
            pid="pid",
        )
        .unique(["resident", "measure"], keep="last", maintain_order=True)
        .join(
            residents.select(resident="pk", mykey="mykey"), on="resident", how="left", maintain_order="left"
        )
    )

    deadline = {pk: _deadline(p, params) for pk, p in providers.items()}
    frames = {
        "residents": residents.select("pid", cap_remaining="remaining", died_day="died"),
        "links": links.select(
            "pid",
            pl.col("measure").replace_strict(MEASURE_CODE, return_dtype=pl.Int8),
            "day",
            "seq",
            pl.col("mode").replace_strict(MODE_CODE, return_dtype=pl.Int8),
            start_day="day",
            charge_deadline_day=pl.when(premium)
            .then(pl.col("provider").replace_strict(deadline, return_dtype=pl.Int32))
            .otherwise(pl.lit(DAY_MAX, pl.Int32)),
        ),
        "link_accounts": link_accounts.drop("link"),
        "transactions": txs.select(
            txid="pk",
            account="account",
            seq="seq",
            day=_day("at"),
            kind=pl.col("kind").replace_strict(MODE_CODE, return_dtype=pl.Int8),
            amount="amount",
        ),
        "refunds": t["refunds"]
        .filter(pl.col("tx").is_in(txs["pk"].implode()))
        .select(txid="tx", day=_day("at"), amount="amount"),
        "registrations": pl.concat(
            [
                t[name]
                .join(pid, left_on="resident", right_on="pk", how="inner", maintain_order="left")
                .select("pid", measure=pl.lit(MEASURE_CODE[measure], pl.Int8), day=_day("at"))
                for name, measure in (("health", "health_insurance"), ("fund", "public_fund"))
            ]
        ),
    }
    return _World(
        BatchFrames(**{name: frame.cast(_schema(name)) for name, frame in frames.items()}),
        residents.select("pid", resident="pk", mykey="mykey"),
        targets,
        txs.select(tx="pk", seq="seq", source=pl.format("transaction:{}:{}", "provider", "txid")),
    )


def _schema(name: str) -> pl.Schema:
    return pl.Schema(BatchFrames.schema(name))


def _deadline(provider: Provider, params: Parameters) -> int:
    return (
        provider.charge_deadline.toordinal()
        if provider.charge_deadline
        else params.point_application_deadline_day
    )


def _accounts(
    pid: int, account: int, since: int, replacements: list[tuple[int, int, int]]
) -> list[tuple[int, int, int, int]]:
    """(pid, account, from_seq, to_seq) for a link and the replacements (seq, from, to) after it, in order."""
    rows = []
    current, start = account, since
    for rep_seq, source, target in replacements:
        if rep_seq > since and source == current:
            rows.append((pid, current, start, rep_seq))
            current, start = target, rep_seq
    rows.append((pid, current, start, SEQ_MAX))
    return rows


def _json(text: pl.Expr) -> pl.Expr:
    """Each text as a JSON string, escaped as ``json.dumps(text, ensure_ascii=False)`` escapes it."""
    return pl.struct(text.alias("s")).struct.json_encode().str.slice(len('{"s":')).str.strip_suffix("}")


_DUES: Final = pl.Schema(
    {
        "resident": _I64,
        "measure": _STR,
        "provider": _I64,
        "account": _I64,
        "amount": _I64,
        "cumulative": _I64,
        "ordinal": _I64,
        "cutoff": pl.Date(),
        "mykey": _STR,
        "sources": _STR,  # the ledger entry's sources, a JSON list as json.dumps writes it
    }
)


def _dues(world: _World, params: Parameters, today: dt.date) -> pl.DataFrame:
    """What to instruct (:data:`_DUES`), one row per resident and measure, in (resident, measure) order."""
    cutoffs = {p.pk: due_cutoff(p, today).toordinal() for p in Provider.objects.all()}
    targets = world.targets.with_columns(
        cutoff=pl.col("provider").replace_strict(cutoffs, return_dtype=pl.Int32)
    )
    earned, counted = [], []
    for cutoff in sorted(set(targets["cutoff"])):
        earned.append(
            compute_entitlements(world.frames, params, as_of_day=cutoff)
            .select("pid", *MEASURE_CODE)
            .unpivot(index="pid", variable_name="measure", value_name="cumulative")
            .with_columns(pl.col("cumulative").cast(pl.Int64), cutoff=pl.lit(cutoff, pl.Int32))
        )
        counted.append(
            counted_transactions(world.frames, as_of_day=cutoff).with_columns(cutoff=pl.lit(cutoff, pl.Int32))
        )
    if not earned:
        return pl.DataFrame(schema=_DUES)
    dues = (
        targets.join(pl.concat(earned), on=["pid", "measure", "cutoff"], how="inner")
        .join(_read(["instructed"])["instructed"], on=["resident", "measure"], how="left")
        .with_columns(pl.col("total", "n").fill_null(0))
        .filter(pl.col("cumulative") != pl.col("total"))
        # a resident's measures in the order the per-resident engine posts them (MEASURES): the two take a
        # resident's entry keys in one order and never wait for each other in a cycle
        .sort(pl.col("resident"), pl.col("measure").replace_strict(MEASURE_CODE, return_dtype=pl.Int8))
        .with_columns(amount=pl.col("cumulative") - pl.col("total"), ordinal=pl.col("n") + 1)
    )
    # the facts behind each due: the application, and the transactions that count (in time order) or the
    # registration
    transactions = (
        dues.filter(pl.col("measure") == "premium")
        .select("pid", "cutoff")
        .join(pl.concat(counted), on=["pid", "cutoff"], how="inner")
        .join(world.transactions, left_on="txid", right_on="tx", how="inner")
        .sort("pid", "seq")
        .group_by("pid", maintain_order=True)
        .agg(transactions=", " + _json(pl.col("source")).str.join(", "))
    )
    registration = ", " + _json(pl.format("registration:{}:{}", "measure", "mykey"))
    return (
        dues.join(transactions, on="pid", how="left", maintain_order="left")
        .with_columns(
            sources=pl.concat_str(
                pl.lit("["),
                _json(pl.format("application:{}:{}", "measure", "mykey")),
                pl.when(pl.col("measure") == "premium")
                .then(pl.col("transactions").fill_null(""))
                .otherwise(registration),
                pl.lit("]"),
            ),
            cutoff=pl.from_epoch(pl.col("cutoff") - _EPOCH_DAY, time_unit="d"),
        )
        .select(_DUES.names())
        .cast(_DUES)
    )


def _draw_ids(model: type[Any], count: int) -> pl.Series:
    """PostgreSQL: ``count`` ids drawn from the table's sequence, in order."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [model._meta.db_table])
        sequence = cursor.fetchone()[0]  # named once: inside the query below it is looked up every row
        cursor.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", [sequence, count])
        return pl.Series("id", [row[0] for row in cursor.fetchall()], dtype=pl.Int64)


def _insert(
    model: type[Any],
    rows: pl.DataFrame,
    same: dict[str, Any],
    *,
    ids: pl.Series | None = None,
    need_ids: bool = True,
) -> pl.Series:
    """Insert rows (the frame's columns, then ``same``: one value for every row) and return their ids, in
    order. PostgreSQL: ids drawn from the table's sequence (or ``ids``, drawn already; or, when the caller does
    not ``need_ids``, left to the table's default and not returned) and the rows sent with one COPY of CSV
    written by Polars (an order of magnitude faster than INSERT for a national run); elsewhere INSERT row by
    row."""
    if rows.is_empty():
        return pl.Series("id", [], dtype=pl.Int64)
    table = model._meta.db_table
    columns = ", ".join([*rows.columns, *same])
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            if ids is None and need_ids:
                ids = _draw_ids(model, rows.height)
            data = io.BytesIO()
            constants = {
                k: pl.lit(v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in same.items()
            }
            drawn = [] if ids is None else [ids]
            rows.select(*drawn, pl.all(), **constants).write_csv(data, include_header=False)
            statement = f"COPY {table} ({'id, ' if drawn else ''}{columns}) FROM STDIN (FORMAT csv)"
            # a unique key another run took first: Django's IntegrityError, which run_grants_batch retries
            with connection.wrap_database_errors, cursor.cursor.copy(statement) as copy:
                copy.write(data.getbuffer())
            return pl.Series("id", [], dtype=pl.Int64) if ids is None else ids
        values = list(same.values())
        placeholders = ", ".join(["%s"] * (rows.width + len(values)))
        sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) RETURNING id"  # noqa: S608
        inserted = []
        for row in rows.iter_rows():
            cursor.execute(sql, [*row, *values])
            inserted.append(cursor.fetchone()[0])
        return pl.Series("id", inserted, dtype=pl.Int64)


def _post_chunk(dues: pl.DataFrame, params: Parameters, now: dt.datetime, who: Actor) -> None:
    providers = _providers_of(dues)
    payables = {pk: payable(p.key) for pk, p in providers.items()}
    ledger = account_ids({BUDGET, *payables.values()})
    measure, amount = pl.col("measure"), pl.col("amount")
    used = {m: json.dumps(_parameters_used(params, m), ensure_ascii=False) for m in dues["measure"].unique()}
    entry_ids = _insert(
        Entry,
        dues.select(
            kind=pl.when(amount > 0)
            .then(pl.lit("grant_instructed"))
            .otherwise(pl.lit("clawback_instructed")),
            effective_date="cutoff",
            idempotency_key=pl.format("grant:{}:{}:{}", "mykey", measure, "ordinal"),
            rule_edition=pl.lit(params.edition),
            parameters=measure.replace_strict(used, return_dtype=pl.String),
            sources="sources",
            memo=pl.format("{}: earned {} as of {} (batch)", measure, "cumulative", "cutoff"),
        ),
        {"at": now},
    )
    dues = dues.with_columns(entry=entry_ids).with_row_index("i")
    payable_ids = {pk: ledger[code] for pk, code in payables.items()}
    budget = pl.lit(ledger[BUDGET], pl.Int64)
    legs = [  # budget → payable, entry by entry
        dues.select("i", "entry", leg=pl.lit(0), account=budget, amount=-amount, cutoff="cutoff"),
        dues.select("i", "entry", leg=pl.lit(1), account=pl.col("provider").replace_strict(payable_ids),
                    amount=amount, cutoff="cutoff"),
    ]  # fmt: skip
    _insert(
        Posting,
        pl.concat(legs)
        .sort("i", "leg")
        .select(entry_id="entry", account_id="account", amount="amount", effective_date="cutoff"),
        {},
        need_ids=False,  # nothing refers to a posting here: its id is the table's default
    )
    grants = dues.select(
        resident_id="resident",
        measure=measure,
        provider_id="provider",
        account_id="account",
        ordinal="ordinal",
        amount=amount,
        cumulative_after="cumulative",
        due_as_of="cutoff",
        instruction_entry_id="entry",
    )
    same = {"instructed_at": now, "status": "instructed", "provider_reference": ""}
    # the cursor positions: each provider's GrantSequence locked once for the chunk (take_positions), after the
    # entries and before the audit event; PostgreSQL draws the ids first and copies the positions with the rows
    if connection.vendor == "postgresql":
        grant_ids = _draw_ids(Grant, dues.height)
        positions = take_positions(dues["provider"].to_list(), grant_ids.to_list())
        _insert(
            Grant, grants.with_columns(position=pl.Series(positions, dtype=pl.Int64)), same, ids=grant_ids
        )
    else:
        grant_ids = _insert(Grant, grants, same)
        positions = take_positions(dues["provider"].to_list(), grant_ids.to_list())
        for pk, position in zip(grant_ids.to_list(), positions, strict=True):
            Grant.objects.filter(pk=pk).update(position=position)
    push = pl.Series(
        [pk for pk, p in providers.items() if p.grant_delivery == GrantDelivery.PUSH], dtype=pl.Int64
    )
    pushed = dues.with_columns(grant=grant_ids).filter(pl.col("provider").is_in(push.implode()))
    if connection.vendor == "postgresql":
        _insert(
            OutboxMessage,
            pushed.select(
                provider_id="provider", payload=pl.concat_str(pl.lit('{"grant_id": '), "grant", pl.lit("}"))
            ),
            {"topic": "grant", "created_at": now, "next_attempt_at": now, "attempts": 0, "last_error": ""},
        )
    else:  # the outbox worker compares these times in SQL: stored by the ORM, as the ORM compares them
        OutboxMessage.objects.bulk_create(
            OutboxMessage(provider_id=provider, topic="grant", payload={"grant_id": grant},
                          created_at=now, next_attempt_at=now)
            for provider, grant in pushed.select("provider", "grant").iter_rows()
        )  # fmt: skip
    record(
        who=who,
        action="grants_instructed_batch",
        subject_type="grant_run",
        subject_id=f"{now.isoformat()}:{grant_ids[0]}-{grant_ids[-1]}",
        before=None,
        after={
            "grants": len(grant_ids),
            "points": int(dues["amount"].sum()),
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
    chunk: int = 5_000,
    writers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> GrantRunReport:
    """Instruct everything due today for the whole population, in chunks of durable transactions of
    ``chunk`` grants each (each commit costs a WAL flush and an audit event; a killed run loses one chunk).

    On PostgreSQL, outside a transaction of the caller, ``writers`` connections post the chunks side by side
    (PostgreSQL writes one chunk while the next is prepared and written on the other core): each chunk is still
    one transaction, a provider's cursor positions still commit in order (its GrantSequence row is locked from
    its grants to the commit), and the ledger accounts are made
    first, so the chunks share no other row than those and the audit head, taken in one order."""
    params = parameters()
    report = GrantRunReport()
    for _attempt in range(3):
        world = load_frames(params)
        dues = _dues(world, params, today)
        report.residents = world.residents.height
        parts = [dues.slice(start, chunk) for start in range(0, dues.height, chunk)]
        done = _Tally(report, dues.height, progress)
        try:
            # other connections see only what is committed: side by side only outside the caller's transaction
            side_by_side = not connection.in_atomic_block and connection.vendor == "postgresql"
            if writers > 1 and len(parts) > 1 and side_by_side:
                with transaction.atomic(durable=True):
                    account_ids({BUDGET, *(payable(p.key) for p in _providers_of(dues).values())})
                _post_side_by_side(parts, writers, params, now, who, done)
            else:
                for part in parts:
                    with transaction.atomic(durable=True):
                        _post_chunk(part, params, now, who)
                    done.add(part)
            return report
        except IntegrityError:  # another run posted some of these first: recompute what is left
            report.retried += 1
    report.errors.append("could not post after 3 attempts (another run kept posting the same grants)")
    return report


def _providers_of(dues: pl.DataFrame) -> dict[int, Provider]:
    return {p.pk: p for p in Provider.objects.filter(pk__in=dues["provider"].unique().to_list())}


@dataclass
class _Tally:
    """What the committed chunks instructed, for the report and the progress callback (thread-safe)."""

    report: GrantRunReport
    total: int
    progress: Callable[[int, int], None] | None
    posted: int = 0
    guard: threading.Lock = field(default_factory=threading.Lock)

    def add(self, part: pl.DataFrame) -> None:
        amounts = part["amount"]
        with self.guard:
            self.report.grants += int((amounts > 0).sum())
            self.report.clawbacks += int((amounts < 0).sum())
            self.report.points += int(amounts.sum())
            self.posted += part.height
            if self.progress:
                self.progress(self.posted, self.total)


def _post_side_by_side(
    parts: list[pl.DataFrame], writers: int, params: Parameters, now: dt.datetime, who: Actor, done: _Tally
) -> None:
    """Post the chunks on ``writers`` threads, each with its own connection (chunks i, i + writers, ...). An
    IntegrityError in any (another run posted first) is raised here once all have stopped."""
    failures: list[BaseException] = []

    def write(mine: list[pl.DataFrame]) -> None:
        try:
            for part in mine:
                if failures:
                    return
                with transaction.atomic(durable=True):
                    _post_chunk(part, params, now, who)
                done.add(part)
        except BaseException as exc:  # handed to the caller below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(parts[i::writers],)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise next((f for f in failures if isinstance(f, IntegrityError)), failures[0])
