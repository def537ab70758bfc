"""The batch path: entitlements for a whole population at once, over columnar data (Polars).

Applications and registrations are decided one at a time when they arrive (the per-resident path,
:class:`~mynapoint.rules.engine.ResidentEvaluator`); what a national batch recomputes every night is what each
resident has earned. This module computes exactly that from the decided facts, as columns:

``residents``    pid, cap_remaining, died_day (null: alive)
``links``        pid, measure (0 premium, 1 health_insurance, 2 public_fund), day, seq, mode (premium: 0 charge,
                 1 purchase), start_day (premium: first day that earns), charge_deadline_day (premium)
``link_accounts`` pid, account, from_seq, to_seq: the accounts a premium link earns on, between two events
``transactions`` txid, account, seq, day, kind (0 charge, 1 purchase), amount
``refunds``      txid, day, amount
``registrations`` pid, measure (1 or 2), day: accepted registrations

The same rules as the engine (program.md D2–D4, docs/decisions/0001), over the same :class:`Parameters`;
``tests/rules/test_batch_parity.py`` checks on random populations that both give the same answers.
:func:`frames_from_evaluators` turns per-resident decisions into these columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import polars as pl

from mynapoint.rules.codes import Status
from mynapoint.rules.engine import ResidentEvaluator
from mynapoint.rules.model import MEASURES, MODES
from mynapoint.rules.parameters import Parameters

__all__ = [
    "BatchFrames",
    "compute_entitlements",
    "counted_transactions",
    "frames_from_evaluators",
    "plain_group_by_baseline",
]

SEQ_MAX: Final = (1 << 62) - 1
DAY_MAX: Final = (1 << 31) - 1
MEASURE_CODE: Final[dict[str, int]] = {m: i for i, m in enumerate(MEASURES)}
MODE_CODE: Final[dict[str, int]] = {m: i for i, m in enumerate(MODES)}

_SCHEMAS: Final[dict[str, dict[str, pl.DataType]]] = {
    "residents": {"pid": pl.Int64(), "cap_remaining": pl.Int64(), "died_day": pl.Int32()},
    "links": {
        "pid": pl.Int64(),
        "measure": pl.Int8(),
        "day": pl.Int32(),
        "seq": pl.Int64(),
        "mode": pl.Int8(),
        "start_day": pl.Int32(),
        "charge_deadline_day": pl.Int32(),
    },
    "link_accounts": {"pid": pl.Int64(), "account": pl.Int64(), "from_seq": pl.Int64(), "to_seq": pl.Int64()},
    "transactions": {
        "txid": pl.Int64(),
        "account": pl.Int64(),
        "seq": pl.Int64(),
        "day": pl.Int32(),
        "kind": pl.Int8(),
        "amount": pl.Int64(),
    },
    "refunds": {"txid": pl.Int64(), "day": pl.Int32(), "amount": pl.Int64()},
    "registrations": {"pid": pl.Int64(), "measure": pl.Int8(), "day": pl.Int32()},
}


@dataclass(frozen=True, slots=True)
class BatchFrames:
    residents: pl.DataFrame
    links: pl.DataFrame
    link_accounts: pl.DataFrame
    transactions: pl.DataFrame
    refunds: pl.DataFrame
    registrations: pl.DataFrame

    @staticmethod
    def schema(name: str) -> dict[str, pl.DataType]:
        return _SCHEMAS[name]


_STATUS_ORDER: Final = [
    Status.NOT_APPLIED,
    Status.APPLIED,
    Status.PENDING,
    Status.CONFIRMED,
    Status.CAP_REACHED,
    Status.STOPPED,
]


def _by_pid(n: int, pids: pl.Series, values: pl.Series, dtype: pl.DataType) -> pl.Series:
    """A column with one row per resident (pid is the row number), null where a resident has no value."""
    column = pl.Series(values.name, [], dtype=dtype).extend_constant(None, n)
    return column.scatter(pids, values) if len(pids) else column


def _counted(frames: BatchFrames, *, as_of_day: int) -> pl.LazyFrame:
    """施策1: the transactions that count (txid, pid, amount): on an account of the resident's premium link
    while it is in force, of the link's mode, within the charge deadline, before death (D2, D3)."""
    residents = frames.residents
    n = residents.height
    if n and not residents["pid"].equals(pl.Series("pid", range(n), dtype=pl.Int64)):
        raise ValueError("batch residents must be numbered 0..n-1 in order (pid = row number)")
    died = residents["died_day"].fill_null(DAY_MAX)
    links = frames.links.filter(pl.col("day") <= as_of_day)
    premium_links = links.filter(pl.col("measure") == MEASURE_CODE["premium"])
    premium_pids = premium_links["pid"]
    per_link = {
        name: _by_pid(n, premium_pids, premium_links[name], premium_links.schema[name])
        for name in ("mode", "start_day", "charge_deadline_day")
    }
    account_pids = frames.link_accounts["pid"]
    link_accounts = frames.link_accounts.with_columns(
        *(column.gather(account_pids) for column in per_link.values()), died_day=died.gather(account_pids)
    ).drop_nulls("mode")  # accounts of links made after as_of
    return (
        frames.transactions.lazy()
        .filter(pl.col("day") <= as_of_day)
        .join(link_accounts.lazy(), on="account", how="inner")
        .filter(
            (pl.col("seq") > pl.col("from_seq"))
            & (pl.col("seq") < pl.col("to_seq"))
            & (pl.col("kind") == pl.col("mode"))
            & (pl.col("day") <= pl.col("charge_deadline_day"))
            & (pl.col("day") >= pl.col("start_day"))
            & (pl.col("day") < pl.col("died_day"))
        )
        .select("txid", "pid", "amount")
    )


def counted_transactions(frames: BatchFrames, *, as_of_day: int) -> pl.DataFrame:
    """The transactions that count for 施策1 at the end of ``as_of_day``: pid, txid (for traceability)."""
    return _counted(frames, as_of_day=as_of_day).select("pid", "txid").collect()


def compute_entitlements(frames: BatchFrames, params: Parameters, *, as_of_day: int) -> pl.DataFrame:
    """Points earned at the end of ``as_of_day`` per resident: pid, premium, health_insurance, public_fund,
    and a status per measure (the same words as the engine).

    Residents are numbered densely (``pid`` = row number): per-resident values are scattered into columns
    by pid instead of joined, which keeps the batch within a small multiple of a plain GROUP BY.
    """
    residents = frames.residents
    n = residents.height
    died = residents["died_day"].fill_null(DAY_MAX)
    links = frames.links.filter(pl.col("day") <= as_of_day)
    # 施策1: the transactions that count (D2, D3)
    counted = _counted(frames, as_of_day=as_of_day).collect().lazy()
    refunded = (
        frames.refunds.lazy().filter(pl.col("day") <= as_of_day).group_by("txid").agg(pl.col("amount").sum())
    )
    cuts = counted.join(refunded, on="txid", how="inner", suffix="_refunded").select(
        "pid", value=-pl.min_horizontal("amount", "amount_refunded")
    )
    net = (
        pl.concat([counted.select("pid", value="amount"), cuts])
        .group_by("pid")
        .agg(pl.col("value").sum())
        .collect()
    )

    def link_day(measure: str) -> pl.Series:
        chosen = links.filter(pl.col("measure") == MEASURE_CODE[measure])
        return _by_pid(n, chosen["pid"], chosen["day"].alias(f"{measure}_link"), pl.Int32())

    def registration_day(measure: str) -> pl.Series:
        chosen = (
            frames.registrations.lazy()
            .filter((pl.col("measure") == MEASURE_CODE[measure]) & (pl.col("day") <= as_of_day))
            .group_by("pid")
            .agg(pl.col("day").min())
            .collect()
        )
        return _by_pid(n, chosen["pid"], chosen["day"].alias(f"{measure}_registered"), pl.Int32())

    wide = pl.DataFrame(
        [
            residents["pid"],
            residents["cap_remaining"],
            died,
            _by_pid(n, net["pid"], net["value"].alias("net"), pl.Int64()),
            link_day("premium"),
            link_day("health_insurance"),
            registration_day("health_insurance"),
            link_day("public_fund"),
            registration_day("public_fund"),
        ]
    )
    deadline, points = params.point_application_deadline_day, params.registration_points
    died_col = pl.col("died_day")

    def registration(measure: str, lag: int) -> list[pl.Expr]:
        linked = pl.col(f"{measure}_link").is_not_null()
        registered = pl.col(f"{measure}_registered")
        in_time = registered.is_not_null() & (registered <= deadline)
        confirm = pl.max_horizontal(registered, f"{measure}_link") + lag
        stopped_or = died_col <= as_of_day
        status = (
            pl.when(~linked)
            .then(pl.lit(Status.NOT_APPLIED))
            .when(~in_time)
            .then(pl.when(stopped_or).then(pl.lit(Status.STOPPED)).otherwise(pl.lit(Status.APPLIED)))
            .when(confirm >= died_col)
            .then(pl.when(stopped_or).then(pl.lit(Status.STOPPED)).otherwise(pl.lit(Status.PENDING)))
            .when(confirm > as_of_day)
            .then(pl.lit(Status.PENDING))
            .otherwise(pl.lit(Status.CONFIRMED))
        )
        earned = linked & in_time & (confirm <= as_of_day) & (confirm < died_col)
        return [
            pl.when(earned).then(pl.lit(points, pl.Int64)).otherwise(pl.lit(0, pl.Int64)).alias(measure),
            status.alias(f"{measure}_status"),
        ]

    cap = pl.col("cap_remaining")
    linked = pl.col("premium_link").is_not_null()
    raw = pl.col("net").fill_null(0) * params.premium_rate_percent // 100
    premium_status = (
        pl.when(cap == 0)
        .then(pl.lit(Status.CAP_REACHED))
        .when(~linked)
        .then(pl.lit(Status.NOT_APPLIED))
        .when(raw >= cap)
        .then(pl.lit(Status.CAP_REACHED))
        .when(died_col <= as_of_day)
        .then(pl.lit(Status.STOPPED))
        .otherwise(pl.lit(Status.APPLIED))
    )
    health = registration("health_insurance", params.health_insurance_confirmation_lag_days)
    fund = registration("public_fund", params.public_fund_confirmation_lag_days)
    return wide.select(
        "pid",
        pl.when(linked & (cap > 0)).then(pl.min_horizontal(raw, cap)).otherwise(0).alias("premium"),
        health[0],
        fund[0],
        premium_status.alias("premium_status"),
        health[1],
        fund[1],
    )


def plain_group_by_baseline(frames: BatchFrames) -> pl.DataFrame:
    """The yardstick for the benchmark: a plain GROUP BY sum of the same transactions, per account."""
    return frames.transactions.lazy().group_by("account").agg(pl.col("amount").sum()).collect()


def frames_from_evaluators(
    evaluators: Iterable[ResidentEvaluator],
    *,
    transactions: Iterable[tuple[int, str, int, str, str, int]],
    refunds: Iterable[tuple[str, int, int]],
) -> tuple[BatchFrames, dict[str, int]]:
    """Columns from residents whose applications and registrations were decided by the engine.

    ``transactions`` are (seq, txid, day, account, kind, amount) and ``refunds`` (of_txid, day, amount).
    Returns the frames and the mapping person key → pid.
    """
    account_ids: dict[str, int] = {}
    res_rows: list[tuple[int, int, int | None]] = []
    link_rows: list[tuple[int, int, int, int, int, int, int]] = []
    acc_rows: list[tuple[int, int, int, int]] = []
    reg_rows: list[tuple[int, int, int]] = []
    pids: dict[str, int] = {}
    for pid, ev in enumerate(evaluators):
        pids[ev.person.key] = pid
        res_rows.append((pid, ev.cap_remaining, ev.person.died_day))
        for measure, link in ev.links.items():
            premium = measure == "premium"
            link_rows.append(
                (
                    pid,
                    MEASURE_CODE[measure],
                    link.day,
                    link.seq,
                    MODE_CODE[link.mode],
                    ev.premium_start_day if premium else link.day,
                    ev.charge_deadline_day if premium else DAY_MAX,
                )
            )
            if premium:
                # each account earns from the event it joined the link until the next replacement
                for i, (account, since) in enumerate(link.accounts):
                    until = link.accounts[i + 1][1] if i + 1 < len(link.accounts) else SEQ_MAX
                    acc_rows.append((pid, account_ids.setdefault(account, len(account_ids)), since, until))
        if ev.health_registration is not None:
            reg_rows.append((pid, MEASURE_CODE["health_insurance"], ev.health_registration.day))
        if ev.public_fund_registration is not None:
            reg_rows.append((pid, MEASURE_CODE["public_fund"], ev.public_fund_registration.day))
    tx_ids: dict[str, int] = {}
    tx_rows = [
        (tx_ids.setdefault(txid, len(tx_ids)), account_ids.setdefault(account, len(account_ids)), seq, day,
         MODE_CODE[kind], amount)
        for seq, txid, day, account, kind, amount in transactions
    ]  # fmt: skip
    refund_rows = [(tx_ids[of], day, amount) for of, day, amount in refunds if of in tx_ids]

    def frame(name: str, rows: list[tuple[int | None, ...]]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema=_SCHEMAS[name], orient="row")

    frames = BatchFrames(
        residents=frame("residents", res_rows),  # type: ignore[arg-type]
        links=frame("links", link_rows),  # type: ignore[arg-type]
        link_accounts=frame("link_accounts", acc_rows),  # type: ignore[arg-type]
        transactions=frame("transactions", tx_rows),  # type: ignore[arg-type]
        refunds=frame("refunds", refund_rows),  # type: ignore[arg-type]
        registrations=frame("registrations", reg_rows),  # type: ignore[arg-type]
    )
    return frames, pids
