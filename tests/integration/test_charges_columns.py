"""The columnar path for batches of charges (record_charges, and the API's _charges_frame that feeds it) answers
exactly as the item path (record_batch): the same statuses, rows, errors and audit digest. On PostgreSQL it
records with set-based statements; on SQLite it hands the items to record_batch."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from concurrency_hooks import AFTER_READ, race
from django.db import connection
from pytest_django import Settings
from support import NOW

from mynapoint.api.provider import _charges_frame
from mynapoint.applications import transactions
from mynapoint.applications.transactions import (
    CHARGE_SCHEMA,
    BatchRefused,
    BatchResult,
    charge_items,
    record_batch,
    record_charges,
)
from mynapoint.audit.models import AuditEvent
from mynapoint.audit.services import Actor
from mynapoint.identity.mynumber import MyNumberRefused
from mynapoint.providers.models import Provider, ProviderTransaction

pytestmark = pytest.mark.django_db

WHO = Actor(actor="provider:test", channel="system", terminal="")
JST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture
def twins(db: Any) -> tuple[str, str]:
    """Two providers alike: one takes the columnar path, the other the item path."""
    for key in ("cols", "items"):
        Provider.objects.create(
            key=key, name_ja=key, kind="qr", modes=["charge", "purchase"], measures=["premium"]
        )
    return "cols", "items"


def _charges(n: int, *, seed: int, prefix: str = "T") -> pl.DataFrame:
    rng = random.Random(seed)
    rows = [
        {
            "txid": f"{prefix}{i}",
            "service_id": f"S-{rng.randrange(max(2, n // 3))}",
            "kind": rng.choice(["charge", "purchase"]),
            "amount": rng.choice([1, 500, 2_147_483_647]),
            "at": NOW - dt.timedelta(seconds=rng.randrange(86_400), microseconds=rng.randrange(1_000_000)),
        }
        for i in range(n)
    ]
    return pl.DataFrame(rows, schema=CHARGE_SCHEMA)


def _both(twins: tuple[str, str], charges: pl.DataFrame) -> tuple[BatchResult | str, BatchResult | str]:
    """Each path's answer, or its refusal's message (code and text)."""
    answers: list[BatchResult | str] = []
    for key, columnar in zip(twins, (True, False), strict=True):
        try:
            if columnar:
                answers.append(record_charges(provider_key=key, charges=charges, now=NOW, who=WHO))
            else:
                answers.append(record_batch(provider_key=key, items=charge_items(charges), now=NOW, who=WHO))
        except BatchRefused as exc:
            answers.append(f"{exc.code}|{exc.field}|{exc.en}|{exc.conflict}")
    return answers[0], answers[1]


def _stored(key: str) -> list[tuple[Any, ...]]:
    return sorted(
        ProviderTransaction.objects.filter(provider__key=key).values_list(
            "txid", "account__service_id", "kind", "amount", "at", "recorded_at"
        )
    )


def _digests(key: str) -> list[tuple[Any, ...]]:
    return [
        (e.after["items"], e.after["created"], e.after["accounts"], e.after["digest"])
        for e in AuditEvent.objects.filter(action="transaction_batch_recorded", subject_id=key).order_by("id")
    ]


@pytest.fixture
def columnar_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL, a batch that passes every check never falls back to the item path."""
    if connection.vendor != "postgresql":
        return

    def refuse(**kwargs: Any) -> BatchResult:
        raise AssertionError("record_charges fell back to record_batch")

    monkeypatch.setattr(transactions, "record_batch", refuse)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.usefixtures("columnar_only")
def test_new_repeated_and_overlapping_batches_answer_alike(twins: tuple[str, str], seed: int) -> None:
    first = _charges(400, seed=seed)
    assert _both(twins, first) == (BatchResult(400, 0, ["created"] * 400),) * 2
    again = _both(twins, first)  # the same batch again: all unchanged, nothing recorded
    assert again[0] == again[1] == BatchResult(0, 400, ["unchanged"] * 400)
    overlap = pl.concat([first.sample(150, seed=seed), _charges(250, seed=seed + 10, prefix="U")]).sample(
        fraction=1.0, shuffle=True, seed=seed
    )
    answers = _both(twins, overlap)
    assert answers[0] == answers[1]
    assert isinstance(answers[0], BatchResult)
    assert answers[0].created == 250
    assert _stored("cols") == _stored("items")
    assert len(_stored("cols")) == 650
    assert _digests("cols") == _digests("items")
    assert len(_digests("cols")) == 2


def test_a_changed_body_is_a_conflict_named_alike_and_nothing_is_kept(twins: tuple[str, str]) -> None:
    first = _charges(50, seed=4)
    _both(twins, first)
    changed = first.with_columns(
        pl.when(pl.col("txid").is_in(["T7", "T30"]))
        .then(pl.col("amount") + 1)
        .otherwise(pl.col("amount"))
        .clip(upper_bound=2_147_483_647)
        .alias("amount"),
        pl.when(pl.col("txid") == "T30")
        .then(pl.lit("S-0"))
        .otherwise(pl.col("service_id"))
        .alias("service_id"),
    )
    changed = pl.concat([changed, _charges(5, seed=5, prefix="N")])
    cols, items = _both(twins, changed)
    assert cols == items
    assert isinstance(cols, str)
    assert cols.startswith("conflict|items[")
    assert "T30" in cols
    assert ProviderTransaction.objects.filter(txid__startswith="N").count() == 0


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (pl.col("at").dt.offset_by("1d"), "at_in_future"),
        (pl.col("amount") * 0, "bad_amount"),
        (pl.col("txid").str.replace(r"^T1$", "bad id"), "bad_txid"),
        (pl.col("service_id").str.replace(r"^S-1$", "S 1"), "unknown_account"),
        (pl.col("kind").str.replace("purchase", "refund"), "bad_kind"),
    ],
)
def test_a_bad_value_is_refused_with_the_item_paths_message(
    twins: tuple[str, str], change: pl.Expr, code: str
) -> None:
    charges = _charges(30, seed=6)
    name = next(n for n in CHARGE_SCHEMA if n in str(change))
    cols, items = _both(twins, charges.with_columns(change.alias(name)))
    assert cols == items
    assert isinstance(cols, str)
    assert cols.startswith(f"{code}|")
    assert not ProviderTransaction.objects.exists()


def test_a_repeated_txid_in_one_batch_answers_as_the_item_path(twins: tuple[str, str]) -> None:
    charges = _charges(20, seed=7)
    cols, items = _both(twins, pl.concat([charges, charges.head(3)]))
    assert cols == items
    assert isinstance(cols, BatchResult)
    assert cols.unchanged == 3


def test_a_my_number_as_service_id_is_refused(twins: tuple[str, str]) -> None:
    charges = _charges(10, seed=8).with_columns(pl.lit("123456789018").alias("service_id"))
    for key in twins:
        with pytest.raises(MyNumberRefused):
            record_charges(provider_key=key, charges=charges, now=NOW, who=WHO)


def test_the_api_takes_the_columnar_path_only_for_plain_charges() -> None:
    def item(**changes: Any) -> dict[str, Any]:
        base = {
            "kind": "charge",
            "txid": "T1",
            "service_id": "S-1",
            "amount": 100,
            "at": "2022-07-01T09:00:00+09:00",
        }
        return {k: v for k, v in {**base, **changes}.items() if v is not None}

    frame = _charges_frame([item(), item(txid="T2", at="2022-07-01T09:00:00.250+09:00", kind="purchase")])
    assert frame is not None
    assert dict(frame.schema) == CHARGE_SCHEMA
    assert frame["at"].to_list() == [
        dt.datetime(2022, 7, 1, 0, 0, tzinfo=dt.UTC),
        dt.datetime(2022, 7, 1, 0, 0, 0, 250_000, tzinfo=dt.UTC),
    ]
    for odd in (
        item(extra="x"),
        item(service_id=None),
        item(amount=True),
        item(amount=100.0),
        item(amount=0),
        item(amount="100"),
        item(at="2022-07-01T00:00:00Z"),
        item(at="2022-07-01T09:00:00"),
        item(at="2022-07-01 09:00:00+09:00"),
        item(at="2022-02-30T09:00:00+09:00"),
        item(at="2022-06-30T23:59:60+09:00"),  # a leap second: datetime has none
        item(at="0000-01-01T00:00:00+00:00"),
        item(at="0001-01-01T00:00:00+09:00"),  # year 0 in UTC
        item(at="9999-12-31T23:59:59-09:00"),  # year 10000 in UTC
        item(kind="refund"),
        "not an object",
    ):
        assert _charges_frame([item(), odd]) is None, odd
    assert _charges_frame([]) is None
    assert _charges_frame({"kind": "charge"}) is None


# ------------------------------------------------------------------------ simultaneous batches sharing ids


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_two_batches_sharing_ids_at_once_record_each_id_once(settings: Settings) -> None:
    """Both batches stage their rows before either inserts (the after-read barrier), in opposite orders. On
    PostgreSQL the second insert waits on the first's unique-index entries (rows go in txid order, so neither
    waits for the other in a cycle) and then skips them: they come back unchanged, compared with what was
    committed. SQLite serialises the two; there the second finds the first's rows."""
    Provider.objects.create(
        key="cols", name_ja="cols", kind="qr", modes=["charge", "purchase"], measures=["premium"]
    )
    settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK = AFTER_READ
    shared = _charges(300, seed=9)
    one = pl.concat([shared, _charges(100, seed=10, prefix="A")])
    other = pl.concat([_charges(100, seed=11, prefix="B"), shared.reverse()])

    def post(charges: pl.DataFrame) -> Callable[[], BatchResult]:
        return lambda: record_charges(provider_key="cols", charges=charges, now=NOW, who=WHO)

    postgres = connection.vendor == "postgresql"
    outcome = race({"one": post(one), "other": post(other)}, barrier_timeout=30.0 if postgres else 1.0)
    assert outcome.errors == {}
    results = outcome.results
    assert sorted(r.created for r in results.values()) == [100, 400]
    assert sorted(r.unchanged for r in results.values()) == [0, 300]
    if postgres:
        assert outcome.met == ("one", "other"), "both staged before either inserted"
    assert ProviderTransaction.objects.filter(provider__key="cols").count() == 500
