"""Transactions and refunds that providers report on their payment accounts.

The two use cases the provider API is built on. Each is one durable transaction with its audit event, and each is
idempotent by the provider's own id: the same report again returns the row already recorded (``created`` is
``False``); the same id with a different body is a :class:`TransactionConflict` (a 409 at the API).

They live in ``applications`` and not in ``providers`` because a transaction is recorded on a
:class:`~mynapoint.applications.models.PaymentAccount`, and ``providers`` may not import ``applications`` (the
layers contract in pyproject.toml). A provider reports transactions on any of its accounts, linked or not: an
account not seen before is created here. Whether a transaction earns points is for the rules to say, later,
from the resident's history (:mod:`mynapoint.applications.selectors`); nothing is decided here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

import polars as pl
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Field, Model, Q
from django.db.models.expressions import RawSQL
from django.utils.module_loading import import_string

from mynapoint.applications.models import PaymentAccount
from mynapoint.audit.services import Actor, record
from mynapoint.dbutil import copy_rows
from mynapoint.identity.mynumber import refuse_my_number
from mynapoint.providers.models import Provider, ProviderRefund, ProviderTransaction, TransactionKind

__all__ = [
    "CHARGE_SCHEMA",
    "MAX_AMOUNT",
    "MAX_BATCH",
    "BatchRefused",
    "BatchResult",
    "BatchTooLarge",
    "ReportedRefund",
    "ReportedTransaction",
    "TransactionConflict",
    "TransactionError",
    "charge_items",
    "record_batch",
    "record_charges",
    "record_refund",
    "record_transaction",
]

MAX_BATCH: Final = 10_000  # items in one batch report (docs/provider-api.md)
MAX_AMOUNT: Final = 2_147_483_647  # the largest amount the database column holds (PositiveIntegerField)
FUTURE_TOLERANCE: Final = dt.timedelta(minutes=5)  # clock skew allowed between a provider and us
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_REPORT_ID = re.compile(r"[0-9A-Za-z._:\-]{1,100}")  # whole value (fullmatch: no trailing newline either)
_SERVICE_ID = re.compile(r"[0-9A-Za-z\-]{1,64}")  # as apply_for_measure accepts it
T = TypeVar("T")


class TransactionError(ValueError):
    """A report that cannot be recorded: says which field was wrong, in Japanese and English. ``status`` is the
    HTTP status for the provider API (422: a field that cannot be recorded; 409: a conflict)."""

    status = 422

    def __init__(self, code: str, ja: str, en: str, *, field: str) -> None:
        self.code, self.ja, self.en, self.field = code, ja, en, field
        super().__init__(f"{code}: {en} ({field})")


class TransactionConflict(TransactionError):  # noqa: N818 - named for what it is, like a 409 Conflict
    """The provider's id is already recorded with a different body."""

    status = 409


def _after_read_hook() -> None:
    """The concurrency tests' seam (settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK), as in apply_for_measure:
    called after the existing row was looked for and before anything is written."""
    hook = getattr(settings, "MYNAPOINT_APPLICATION_AFTER_READ_HOOK", None)
    if hook:
        import_string(hook)()


# ------------------------------------------------------------------------------------------------ validation


def _provider(provider_key: str) -> Provider:
    provider = Provider.objects.filter(key=provider_key).first()
    if provider is None:
        raise TransactionError(
            "unknown_provider",
            f"決済サービス {provider_key!r} は登録されていません",
            f"unknown payment service {provider_key!r}",
            field="provider",
        )
    return provider


def _report_id(value: str, *, field: str) -> str:
    if not isinstance(value, str) or not _REPORT_ID.fullmatch(value):
        raise TransactionError(
            f"bad_{field}",
            f"{field} は英数字と . _ : - で1〜100文字です",
            f"{field} must be 1 to 100 characters of letters, digits and . _ : -",
            field=field,
        )
    return value


def _service_id(value: str) -> str:
    if isinstance(value, str):
        refuse_my_number(value, where="service_id")
    if not isinstance(value, str) or not _SERVICE_ID.fullmatch(value):
        raise TransactionError(
            "unknown_account",
            "決済サービスIDの形式が正しくありません（英数字とハイフンで1〜64文字）",
            "not a payment account: the service ID must be 1 to 64 letters, digits or hyphens",
            field="service_id",
        )
    return value


def _kind(value: str) -> str:
    if value not in TransactionKind.values:
        raise TransactionError(
            "bad_kind",
            "取引の種類は charge（チャージ）または purchase（お買い物）です",
            f"kind must be charge or purchase, not {value!r}",
            field="kind",
        )
    return value


def _amount(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_AMOUNT:
        raise TransactionError(
            "bad_amount",
            f"金額は1円以上{MAX_AMOUNT:,}円以下の整数です",
            f"amount must be a whole number of yen from 1 to {MAX_AMOUNT}, not {value!r}",
            field="amount",
        )
    return value


def _times(at: dt.datetime, now: dt.datetime) -> None:
    for value, name in ((at, "at"), (now, "now")):
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise TransactionError(
                f"bad_{name}",
                "日時にはタイムゾーン（例: +09:00）が必要です",
                f"{name} must be a datetime with a UTC offset (e.g. +09:00)",
                field=name,
            )
    if at > now + FUTURE_TOLERANCE:
        raise TransactionError(
            "at_in_future",
            "取引日時が未来になっています",
            f"at {at.isoformat()} is in the future (now {now.isoformat()})",
            field="at",
        )


def _differences(existing: dict[str, Any], given: dict[str, Any]) -> list[str]:
    return [name for name in given if existing[name] != given[name]]


def _conflict(
    what_ja: str, what_en: str, ident: str, fields: list[str], *, field: str
) -> TransactionConflict:
    return TransactionConflict(
        "conflict",
        f"{what_ja} {ident} はすでに異なる内容で記録されています（異なる項目: {', '.join(fields)}）",
        f"{what_en} {ident!r} is already recorded with a different body (differs in: {', '.join(fields)})",
        field=field,
    )


def _once(attempt: Callable[[bool], T]) -> T:
    """Run a use case; if a simultaneous report of the same id won the race to the unique index, run it again
    (it then finds the row the other committed and answers as for a repeated report). ``attempt`` is told
    whether it is the first try."""
    try:
        return attempt(True)
    except IntegrityError:
        return attempt(False)


# ------------------------------------------------------------------------------------------------ use cases


def record_transaction(
    *,
    provider_key: str,
    txid: str,
    service_id: str,
    kind: str,
    amount: int,
    at: dt.datetime,
    now: dt.datetime,
    who: Actor,
) -> tuple[ProviderTransaction, bool]:
    """Record a charge or purchase a provider reports on one of its accounts (idempotent by ``txid``).

    Returns the transaction and whether it was new. Raises :class:`TransactionError` naming the field for a
    report that cannot be recorded, and :class:`TransactionConflict` when ``txid`` is already recorded with
    another account, kind, amount or time.
    """
    provider = _provider(provider_key)
    _report_id(txid, field="txid")
    _service_id(service_id)
    _kind(kind)
    _amount(amount)
    _times(at, now)
    given = {"service_id": service_id, "kind": kind, "amount": amount, "at": at}

    def attempt(first: bool) -> tuple[ProviderTransaction, bool]:
        with transaction.atomic(durable=True):
            existing = (
                ProviderTransaction.objects.select_related("account")
                .filter(provider=provider, txid=txid)
                .first()
            )
            if first:
                _after_read_hook()
            if existing is not None:
                stored = {
                    "service_id": existing.account.service_id,
                    "kind": existing.kind,
                    "amount": existing.amount,
                    "at": existing.at,
                }
                if differs := _differences(stored, given):
                    raise _conflict("取引ID", "transaction", txid, differs, field="txid")
                return existing, False
            account, account_created = PaymentAccount.objects.get_or_create(
                provider=provider, service_id=service_id
            )
            created = ProviderTransaction.objects.create(
                provider=provider,
                txid=txid,
                account=account,
                kind=kind,
                amount=amount,
                at=at,
                recorded_at=now,
            )
            record(
                who=who,
                action="transaction_recorded",
                subject_type="payment_account",
                subject_id=f"{provider.key}/{service_id}",
                before=None,
                after={
                    "txid": txid,
                    "kind": kind,
                    "amount": amount,
                    "at": at,
                    "new_account": account_created,
                },
                at=now,
            )
            return created, True

    return _once(attempt)


def record_refund(
    *,
    provider_key: str,
    refund_id: str,
    txid: str,
    amount: int,
    at: dt.datetime,
    now: dt.datetime,
    who: Actor,
) -> tuple[ProviderRefund, bool]:
    """Record a refund of a reported transaction (idempotent by ``refund_id``).

    A refund may exceed what is left of its transaction: the rules clamp it (decision P8), so it is recorded as
    reported. Raises :class:`TransactionError` naming the field (an unknown ``txid``, a refund dated before its
    transaction) and :class:`TransactionConflict` when ``refund_id`` is recorded with another body.
    """
    provider = _provider(provider_key)
    _report_id(refund_id, field="refund_id")
    _report_id(txid, field="txid")
    _amount(amount)
    _times(at, now)
    given = {"txid": txid, "amount": amount, "at": at}

    def attempt(first: bool) -> tuple[ProviderRefund, bool]:
        with transaction.atomic(durable=True):
            existing = (
                ProviderRefund.objects.select_related("transaction")
                .filter(provider=provider, refund_id=refund_id)
                .first()
            )
            if first:
                _after_read_hook()
            if existing is not None:
                stored = {"txid": existing.transaction.txid, "amount": existing.amount, "at": existing.at}
                if differs := _differences(stored, given):
                    raise _conflict("返金ID", "refund", refund_id, differs, field="refund_id")
                return existing, False
            refunded = (
                ProviderTransaction.objects.select_related("account")
                .filter(provider=provider, txid=txid)
                .first()
            )
            if refunded is None:
                raise TransactionError(
                    "unknown_transaction",
                    f"返金の対象の取引 {txid} が見つかりません（取引を先に報告してください）",
                    f"refund of unknown transaction {txid!r} (report the transaction first)",
                    field="txid",
                )
            if at < refunded.at:
                raise TransactionError(
                    "refund_before_transaction",
                    f"返金日時が取引 {txid} の日時より前です",
                    f"the refund at {at.isoformat()} is before its transaction {txid!r} "
                    f"({refunded.at.isoformat()})",
                    field="at",
                )
            created = ProviderRefund.objects.create(
                provider=provider,
                refund_id=refund_id,
                transaction=refunded,
                amount=amount,
                at=at,
                recorded_at=now,
            )
            record(
                who=who,
                action="refund_recorded",
                subject_type="payment_account",
                subject_id=f"{provider.key}/{refunded.account.service_id}",
                before=None,
                after={"refund_id": refund_id, "txid": txid, "amount": amount, "at": at},
                at=now,
            )
            return created, True

    return _once(attempt)


# ------------------------------------------------------------------------------------------------ batches


class ReportedTransaction(
    NamedTuple
):  # a named tuple: made 10,000 at a time, five times cheaper than a dataclass
    """One charge or purchase in a batch report."""

    txid: str
    service_id: str
    kind: str
    amount: int
    at: dt.datetime


class ReportedRefund(NamedTuple):
    """One refund in a batch report, of a transaction reported before or in the same batch."""

    refund_id: str
    of_txid: str
    amount: int
    at: dt.datetime


BatchItem = ReportedTransaction | ReportedRefund
_KINDS: Final = frozenset(TransactionKind.values)


@dataclass(frozen=True, slots=True)
class BatchResult:
    created: int
    unchanged: int
    statuses: list[str]  # per item, in order: "created" or "unchanged"


class BatchTooLarge(TransactionError):  # noqa: N818 - a 413 at the API
    """More than :data:`MAX_BATCH` items."""


class BatchRefused(TransactionError):  # noqa: N818 - the whole batch is refused, nothing is kept
    """Items that cannot be recorded, each named by its index. ``conflict`` is true when every problem is a
    conflict with what is already recorded (a 409 at the API); otherwise it is invalid input (a 422)."""

    def __init__(self, problems: list[tuple[int, TransactionError]]) -> None:
        self.problems = problems
        self.conflict = all(isinstance(exc, TransactionConflict) for _, exc in problems)
        shown = problems[:20]
        more = len(problems) - len(shown)
        ja = "; ".join(f"items[{i}]: {exc.ja}" for i, exc in shown) + (f"; ほか{more}件" if more else "")
        en = "; ".join(f"items[{i}]: {exc.en}" for i, exc in shown) + (f"; and {more} more" if more else "")
        first_index, first = problems[0]
        super().__init__(
            "conflict" if self.conflict else first.code,
            f"バッチ全体を受け付けませんでした（{len(problems)}件の誤り）: {ja}",
            f"the batch was refused as a whole ({len(problems)} problem(s)): {en}",
            field=f"items[{first_index}].{first.field}",
        )


def _check_item(item: BatchItem, now: dt.datetime, service_ids_seen: set[str]) -> None:
    if isinstance(item, ReportedTransaction):
        _report_id(item.txid, field="txid")
        if item.service_id not in service_ids_seen:  # the My Number check once per account, not per row
            _service_id(item.service_id)
            service_ids_seen.add(item.service_id)
        if item.kind not in _KINDS:
            _kind(item.kind)
    elif isinstance(item, ReportedRefund):
        _report_id(item.refund_id, field="refund_id")
        _report_id(item.of_txid, field="of_txid")
    else:
        raise TransactionError(
            "bad_kind", "取引の種類が正しくありません", "not a transaction or refund", field="kind"
        )
    _amount(item.amount)
    _times(item.at, now)


_REPORT_IDS = re.compile(r"(?:[0-9A-Za-z._:\-]{1,100}\n)*")
_SERVICE_IDS = re.compile(r"(?:[0-9A-Za-z\-]{1,64}\n)*")


def _all_valid(items: Sequence[BatchItem], now: dt.datetime) -> bool:
    """Whether every item passes :func:`_check_item`, checked column by column (a regular expression over
    all ids at once, set operations, one pass per column): about ten times faster for 10,000 items. ``False``
    means some item fails (or is of an unexpected type), and the item-by-item check names it."""
    transactions = [item for item in items if type(item) is ReportedTransaction]
    refunds = [item for item in items if type(item) is ReportedRefund]
    if len(transactions) + len(refunds) != len(items):
        return False
    try:
        ids = "".join(
            [f"{t.txid}\n" for t in transactions] + [f"{r.refund_id}\n{r.of_txid}\n" for r in refunds]
        )
        services = {t.service_id for t in transactions}
        accounts = "".join(f"{s}\n" for s in services)
    except TypeError:
        return False
    if not (_REPORT_IDS.fullmatch(ids) and _SERVICE_IDS.fullmatch(accounts)):
        return False
    if not all(type(s) is str for s in services) or not {t.kind for t in transactions} <= _KINDS:
        return False
    for service_id in services:
        refuse_my_number(service_id, where="service_id")
    amounts = [item.amount for item in items]
    if not all(type(a) is int and 0 < a <= MAX_AMOUNT for a in amounts):
        return False
    times = [item.at for item in items]
    if not all(type(t) is dt.datetime and t.tzinfo is not None for t in times):
        return False
    if not isinstance(now, dt.datetime) or now.tzinfo is None:
        return False
    return not times or max(times) <= now + FUTURE_TOLERANCE


def _micros(at: dt.datetime) -> int:
    return (at - _EPOCH) // dt.timedelta(microseconds=1)


def _batch_digest(items: Sequence[BatchItem]) -> str:
    """A digest of the batch as recorded, for the audit event: one line per item, times as microseconds since
    the epoch (the instant, whatever offset the provider wrote it with)."""
    lines = "".join(
        f"T|{item.txid}|{item.service_id}|{item.kind}|{item.amount}|{_micros(item.at)}\n"
        if isinstance(item, ReportedTransaction)
        else f"R|{item.refund_id}|{item.of_txid}|{item.amount}|{_micros(item.at)}\n"
        for item in items
    )
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def record_batch(
    *, provider_key: str, items: Sequence[BatchItem], now: dt.datetime, who: Actor
) -> BatchResult:
    """Record a batch of transactions and refunds, all or nothing, idempotent item by item.

    Every item is checked first; a batch with any problem is refused as a whole (:class:`BatchRefused`,
    naming each item by its index) and nothing of it is kept. An id already recorded with the same body is
    ``unchanged``; with another body it is a conflict. A refund may refer to a transaction earlier or later
    in the same batch. The known ids are read in one query per kind and the new rows inserted with one
    statement per table (:func:`_insert_rows`) in one durable transaction, with one audit event for the batch
    (counts and a digest of the items), not one per row; a batch that creates nothing writes nothing.
    Raises :class:`BatchTooLarge` above :data:`MAX_BATCH` items.
    """
    provider = _provider(provider_key)
    if len(items) > MAX_BATCH:
        raise BatchTooLarge(
            "too_many",
            f"一度に報告できるのは{MAX_BATCH:,}件までです（{len(items):,}件）",
            f"at most {MAX_BATCH} items in one batch (got {len(items)})",
            field="items",
        )
    problems: list[tuple[int, TransactionError]] = []
    if not _all_valid(items, now):  # only then item by item, to name every problem
        seen_services: set[str] = set()
        for index, item in enumerate(items):
            try:
                _check_item(item, now, seen_services)
            except TransactionError as exc:
                problems.append((index, exc))
        if problems:
            raise BatchRefused(problems)

    # the same id twice in one batch: the first is recorded, a repeat with the same body is unchanged
    statuses = ["created"] * len(items)
    transactions: dict[str, ReportedTransaction] = {}
    refunds: dict[str, ReportedRefund] = {}
    first_index: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        if isinstance(item, ReportedTransaction):
            ident, field, what = ("T", item.txid), "txid", ("取引ID", "transaction")
            earlier_item: BatchItem | None = transactions.setdefault(item.txid, item)
        else:
            ident, field, what = ("R", item.refund_id), "refund_id", ("返金ID", "refund")
            earlier_item = refunds.setdefault(item.refund_id, item)
        earlier = first_index.setdefault(ident, index)
        if earlier != index:
            statuses[index] = "unchanged"
            if earlier_item != item:
                problems.append((index, _conflict(*what, ident[1], [f"items[{earlier}]"], field=field)))
    if problems:
        raise BatchRefused(problems)

    def attempt(first: bool) -> BatchResult:
        result_statuses = list(statuses)
        with transaction.atomic(durable=True):
            referred = set(transactions) | {r.of_txid for r in refunds.values()}
            known_tx = {
                row[0]: row[1:]
                for row in ProviderTransaction.objects.filter(
                    _among(ProviderTransaction, "txid", list(referred)), provider=provider
                ).values_list("txid", "id", "account__service_id", "kind", "amount", "at")
            }
            known_refunds = {
                row[0]: row[1:]
                for row in ProviderRefund.objects.filter(
                    _among(ProviderRefund, "refund_id", list(refunds)), provider=provider
                ).values_list("refund_id", "transaction__txid", "amount", "at")
            }
            if first:
                _after_read_hook()
            found: list[tuple[int, TransactionError]] = []
            new_tx: list[ReportedTransaction] = []
            for txid, item in transactions.items():
                stored = known_tx.get(txid)
                if stored is None:
                    new_tx.append(item)
                    continue
                _, service_id, kind, amount, at = stored
                given = {
                    "service_id": item.service_id,
                    "kind": item.kind,
                    "amount": item.amount,
                    "at": item.at,
                }
                old = {"service_id": service_id, "kind": kind, "amount": amount, "at": at}
                if differs := _differences(old, given):
                    found.append(
                        (
                            first_index["T", txid],
                            _conflict("取引ID", "transaction", txid, differs, field="txid"),
                        )
                    )
                result_statuses[first_index["T", txid]] = "unchanged"
            tx_at = {txid: row[4] for txid, row in known_tx.items()}
            tx_at.update({item.txid: item.at for item in new_tx})
            new_refunds: list[ReportedRefund] = []
            for refund_id, refund in refunds.items():
                index = first_index["R", refund_id]
                stored_refund = known_refunds.get(refund_id)
                if stored_refund is not None:
                    old = dict(zip(("of_txid", "amount", "at"), stored_refund, strict=True))
                    given = {"of_txid": refund.of_txid, "amount": refund.amount, "at": refund.at}
                    if differs := _differences(old, given):
                        found.append(
                            (index, _conflict("返金ID", "refund", refund_id, differs, field="refund_id"))
                        )
                    result_statuses[index] = "unchanged"
                    continue
                refunded_at = tx_at.get(refund.of_txid)
                if refunded_at is None:
                    found.append(
                        (
                            index,
                            TransactionError(
                                "unknown_transaction",
                                f"返金の対象の取引 {refund.of_txid} が見つかりません",
                                f"refund of unknown transaction {refund.of_txid!r}",
                                field="of_txid",
                            ),
                        )
                    )
                elif refund.at < refunded_at:
                    found.append(
                        (
                            index,
                            TransactionError(
                                "refund_before_transaction",
                                f"返金日時が取引 {refund.of_txid} の日時より前です",
                                f"the refund at {refund.at.isoformat()} is before its transaction {refund.of_txid!r}",
                                field="at",
                            ),
                        )
                    )
                else:
                    new_refunds.append(refund)
            if found:
                found.sort(key=lambda problem: problem[0])
                raise BatchRefused(found)

            account_ids = _account_ids(provider, {item.service_id for item in new_tx})
            _insert_rows(
                ProviderTransaction,
                ("provider", "txid", "account", "kind", "amount", "at", "recorded_at"),
                [
                    (
                        provider.pk,
                        item.txid,
                        account_ids[item.service_id],
                        item.kind,
                        item.amount,
                        item.at,
                        now,
                    )
                    for item in new_tx
                ],
            )
            tx_ids = {txid: row[0] for txid, row in known_tx.items()}
            if new_refunds:
                fresh = {r.of_txid for r in new_refunds} - tx_ids.keys()
                tx_ids.update(
                    ProviderTransaction.objects.filter(
                        _among(ProviderTransaction, "txid", list(fresh)), provider=provider
                    ).values_list("txid", "id")
                )
            _insert_rows(
                ProviderRefund,
                ("provider", "refund_id", "transaction", "amount", "at", "recorded_at"),
                [(provider.pk, r.refund_id, tx_ids[r.of_txid], r.amount, r.at, now) for r in new_refunds],
            )
            created = result_statuses.count("created")
            result = BatchResult(created=created, unchanged=len(items) - created, statuses=result_statuses)
            if (
                not created
            ):  # a repeated batch changed nothing: nothing to audit (as a repeated single report)
                return result
            _audit_batch(
                who, provider, result, transactions=len(new_tx), refunds=len(new_refunds),
                accounts=len(account_ids), digest=_batch_digest(items), now=now,
            )  # fmt: skip
            return result

    return _once(attempt)


def _audit_batch(
    who: Actor,
    provider: Provider,
    result: BatchResult,
    *,
    transactions: int,
    refunds: int,
    accounts: int,
    digest: str,
    now: dt.datetime,
) -> None:
    """One audit event for a recorded batch (counts and a digest of the items), not one per row."""
    record(
        who=who,
        action="transaction_batch_recorded",
        subject_type="provider",
        subject_id=provider.key,
        before=None,
        after={
            "items": result.created + result.unchanged,
            "created": result.created,
            "unchanged": result.unchanged,
            "transactions_created": transactions,
            "refunds_created": refunds,
            "accounts": accounts,
            "digest": digest,
        },
        at=now,
    )


def _insert_rows(model: type[Model], fields: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """Insert rows of plain values without making a model instance per row (the batch's hot path).

    PostgreSQL: ``COPY … FROM STDIN`` inside the use case's transaction; SQLite: ``executemany``, datetimes
    adapted as the ORM adapts them. A unique index met (a simultaneous report) raises Django's
    ``IntegrityError`` as the ORM would."""
    if not rows:
        return
    meta = model._meta
    columns: list[Field[Any, Any]] = []
    for name in fields:
        field = meta.get_field(name)
        assert isinstance(field, Field)  # noqa: S101 - concrete columns of our own models
        columns.append(field)
    quote = connection.ops.quote_name
    names = ", ".join(quote(f.column) for f in columns)
    table = quote(meta.db_table)
    datetimes = [i for i, f in enumerate(columns) if f.get_internal_type() == "DateTimeField"]
    if datetimes and connection.vendor != "postgresql":
        convert = (
            _sqlite_datetime if connection.timezone == dt.UTC else connection.ops.adapt_datetimefield_value
        )
        adapted: dict[dt.datetime, str] = {}  # the recording time is the same on every row: adapt it once

        def adapt(value: dt.datetime) -> str:
            text = adapted.get(value)
            if text is None:
                text = adapted[value] = str(convert(value))
            return text

        rows = [
            tuple(adapt(value) if i in datetimes else value for i, value in enumerate(row)) for row in rows
        ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # COPY: the rows stream to the server in binary, with no SQL text to build or parse
            typed = [(quote(f.column), str(f.db_type(connection))) for f in columns]
            with connection.wrap_database_errors:
                copy_rows(cursor.cursor, table, typed, rows)
        else:
            placeholders = ", ".join(["%s"] * len(columns))
            sql = f"INSERT INTO {table} ({names}) VALUES ({placeholders})"  # noqa: S608 - model metadata
            cursor.executemany(sql, rows)


def _among(model: type[Model], field: str, values: list[str]) -> Q | RawSQL:
    """``field IN values`` for a filter: on PostgreSQL as one array parameter, since 10,000 placeholders cost
    more to build and parse than the query takes to run. The array is unnested in a subquery: with
    ``= ANY(array)`` the planner estimates the selectivity of every element (about 80 ms for 10,000)."""
    if connection.vendor != "postgresql":
        return Q(**{f"{field}__in": values})
    quote = connection.ops.quote_name
    target = model._meta.get_field(field)
    assert isinstance(target, Field)  # noqa: S101 - a concrete column of our own models
    column = f"{quote(model._meta.db_table)}.{quote(target.column)}"
    sql = f"{column} IN (SELECT unnest(%s::text[]))"
    return RawSQL(sql, (values,), output_field=BooleanField())  # noqa: S611 - names from metadata


def _sqlite_datetime(value: dt.datetime) -> str:
    """What the ORM stores in SQLite for an aware datetime (USE_TZ, database in UTC), without its checks."""
    return value.astimezone(dt.UTC).isoformat(" ")[:-6]  # "YYYY-MM-DD HH:MM:SS[.ffffff]", "+00:00" cut


def _account_ids(provider: Provider, service_ids: set[str]) -> dict[str, int]:
    """The ids of the provider's accounts with these service IDs, creating the ones not seen before."""
    if not service_ids:
        return {}
    ids = dict(
        PaymentAccount.objects.filter(
            _among(PaymentAccount, "service_id", list(service_ids)), provider=provider
        ).values_list("service_id", "id")
    )
    missing = service_ids - ids.keys()
    if missing:
        PaymentAccount.objects.bulk_create(
            [PaymentAccount(provider=provider, service_id=s) for s in sorted(missing)],
            batch_size=2000,
            ignore_conflicts=True,  # a simultaneous report may have made one: it is the same account
        )
        ids.update(
            PaymentAccount.objects.filter(
                _among(PaymentAccount, "service_id", list(missing)), provider=provider
            ).values_list("service_id", "id")
        )
    return ids


# ------------------------------------------------------------------------------------- charges as columns

CHARGE_SCHEMA: Final = {
    "txid": pl.String,
    "service_id": pl.String,
    "kind": pl.String,
    "amount": pl.Int64,
    "at": pl.Datetime("us", "UTC"),
}
_STAGE: Final = "mynapoint_batch_charges"  # a temporary table of the session, emptied at every commit


def charge_items(charges: pl.DataFrame) -> list[ReportedTransaction]:
    """The rows of a charges frame as batch items (times as aware datetimes in UTC)."""
    frame = charges.select(list(CHARGE_SCHEMA))
    return [ReportedTransaction(*row) for row in frame.iter_rows()]


def _charges_valid(charges: pl.DataFrame, now: dt.datetime) -> bool:
    """Whether every row passes the checks :func:`record_batch` makes (:func:`_check_item`), column by column,
    and no txid repeats. My Number check: on the service IDs with twelve digits or more, in Python."""
    if dict(charges.schema) != CHARGE_SCHEMA or charges.null_count().sum_horizontal().item() != 0:
        return False
    if not isinstance(now, dt.datetime) or now.tzinfo is None:
        return False
    report_id = _REPORT_ID.pattern
    service_id = _SERVICE_ID.pattern
    checks = charges.select(
        pl.col("txid").str.contains(f"^(?:{report_id})$").all().alias("txid"),
        pl.col("service_id").str.contains(f"^(?:{service_id})$").all().alias("service_id"),
        pl.col("kind").is_in(sorted(_KINDS)).all().alias("kind"),
        pl.col("amount").is_between(1, MAX_AMOUNT).all().alias("amount"),
        (pl.col("at") <= now + FUTURE_TOLERANCE).all().alias("at"),
        pl.col("txid").is_unique().all().alias("once"),
        pl.col("at").dt.year().is_between(1, 9999).all().alias("year"),
    ).row(0)
    if not all(checks):
        return False
    suspicious = charges.filter(pl.col("service_id").str.count_matches(r"\d") >= 12)["service_id"].unique()
    for value in suspicious:
        refuse_my_number(value, where="service_id")
    return True


def _charges_digest(charges: pl.DataFrame) -> str:
    """:func:`_batch_digest` of the same rows, computed on the columns."""
    lines = charges.select(
        pl.format(
            "T|{}|{}|{}|{}|{}\n",
            "txid",
            "service_id",
            "kind",
            "amount",
            pl.col("at").dt.epoch("us"),
        )
    ).to_series()
    return hashlib.sha256(lines.str.join("").item().encode("utf-8")).hexdigest()


def record_charges(*, provider_key: str, charges: pl.DataFrame, now: dt.datetime, who: Actor) -> BatchResult:
    """:func:`record_batch` for a batch of charges and purchases only, given as columns (:data:`CHARGE_SCHEMA`):
    the same checks, answers, errors and audit event, without a Python object per item.

    On PostgreSQL a batch that passes every check column by column is staged with ``COPY`` into a temporary
    table and recorded with set-based statements (known ids compared, missing accounts created, new rows
    inserted) in one durable transaction. Anything else — a problem to name item by item, a repeated txid,
    SQLite — goes through :func:`record_batch`, which names each problem.
    """
    if len(charges) > MAX_BATCH or connection.vendor != "postgresql" or not _charges_valid(charges, now):
        return record_batch(provider_key=provider_key, items=charge_items(charges), now=now, who=who)
    provider = _provider(provider_key)
    return _once(lambda first: _store_charges(provider, charges, now, who, first=first))


def _store_charges(
    provider: Provider, charges: pl.DataFrame, now: dt.datetime, who: Actor, *, first: bool
) -> BatchResult:
    count = len(charges)
    staged = io.BytesIO()
    charges.with_row_index("idx").select("idx", *CHARGE_SCHEMA).write_csv(
        staged, include_header=False, datetime_format="%Y-%m-%dT%H:%M:%S%.6f+00:00"
    )
    tx, account = ProviderTransaction._meta.db_table, PaymentAccount._meta.db_table
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (idx integer, txid text, service_id text, kind text,"
            " amount integer, at timestamptz) ON COMMIT DELETE ROWS"
        )
        cursor.execute(f"DELETE FROM {_STAGE}")  # noqa: S608 - empty after a commit; not inside a test's transaction
        with (
            connection.wrap_database_errors,
            cursor.cursor.copy(f"COPY {_STAGE} FROM STDIN (FORMAT CSV)") as copy,
        ):
            copy.write(staged.getvalue())
        if first:
            _after_read_hook()
        cursor.execute(
            f"INSERT INTO {account} (provider_id, service_id) SELECT DISTINCT %s::bigint, s.service_id FROM {_STAGE} s "  # noqa: S608
            f"WHERE NOT EXISTS (SELECT 1 FROM {account} a WHERE a.provider_id = %s AND a.service_id = s.service_id) "
            "ORDER BY s.service_id ON CONFLICT DO NOTHING",  # in one order, as _account_ids: no wait in a cycle
            [provider.pk, provider.pk],
        )
        # the unique index is the lookup: a txid already recorded (or committed meanwhile by a simultaneous report,
        # which this statement waits for) is skipped, and compared below; rows go in txid order, so that two
        # simultaneous batches sharing ids wait for each other in one order and never deadlock
        cursor.execute(
            f"INSERT INTO {tx} (provider_id, txid, account_id, kind, amount, at, recorded_at) "  # noqa: S608
            f"SELECT %s, s.txid, a.id, s.kind, s.amount, s.at, %s FROM {_STAGE} s "
            f"JOIN {account} a ON a.provider_id = %s AND a.service_id = s.service_id "
            "ORDER BY s.txid ON CONFLICT (provider_id, txid) DO NOTHING RETURNING txid",
            [provider.pk, now, provider.pk],
        )
        inserted = {row[0] for row in cursor.fetchall()}
        skipped = [i for i, txid in enumerate(charges["txid"].to_list()) if txid not in inserted]
        known: list[tuple[Any, ...]] = []
        if skipped:
            cursor.execute(
                f"SELECT s.idx, s.txid, a.service_id = s.service_id, t.kind = s.kind, t.amount = s.amount, t.at = s.at "  # noqa: S608 - table names from models
                f"FROM {_STAGE} s JOIN {tx} t ON t.provider_id = %s AND t.txid = s.txid JOIN {account} a ON a.id = t.account_id "
                "WHERE s.idx = ANY(%s) ORDER BY s.idx",
                [provider.pk, skipped],
            )
            known = cursor.fetchall()
        if len(known) != len(skipped):  # cannot happen: a skipped row met a recorded one
            raise IntegrityError("transaction_once: a skipped transaction was not found")
        fields = ("service_id", "kind", "amount", "at")
        found: list[tuple[int, TransactionError]] = [
            (
                idx,
                _conflict(
                    "取引ID",
                    "transaction",
                    txid,
                    [f for f, same in zip(fields, sames, strict=True) if not same],
                    field="txid",
                ),
            )
            for idx, txid, *sames in known
            if not all(sames)
        ]
        if found:
            raise BatchRefused(found)  # nothing of the batch is kept: the transaction rolls back
        statuses = ["created"] * count
        for idx in skipped:
            statuses[idx] = "unchanged"
        created = count - len(skipped)
        result = BatchResult(created=created, unchanged=len(skipped), statuses=statuses)
        if not created:
            return result
        accounts = charges.filter(pl.Series(statuses) == "created")["service_id"].n_unique()
        _audit_batch(
            who, provider, result, transactions=created, refunds=0, accounts=accounts,
            digest=_charges_digest(charges), now=now,
        )  # fmt: skip
        return result
