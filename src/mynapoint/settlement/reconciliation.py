"""Reconciling a provider's own list of what it granted against the ledger and the grant rows.

The provider sends ``(grant_id, reference, amount)`` rows (its acknowledgements: the grant id we instructed,
its own reference, the points it gave, negative for a claw-back), as a list or as CSV. Every difference is
listed, each with a message:

* ``not_in_ledger`` — the provider says it granted; our ledger has no acknowledgement of that grant;
* ``unknown_grant`` — no such grant was instructed to this provider;
* ``missing_from_provider`` — our ledger has an acknowledgement the provider does not list;
* ``amount_differs`` — both have it, with other points;
* ``acknowledged_twice`` — the provider lists one grant more than once;
* ``reference_differs`` — the provider's reference is not the one it acknowledged with;
* ``reference_reused`` — one provider reference for several grants;
* ``other_period`` — (a month given) acknowledged in the ledger, but in another month;
* ``ledger_inconsistent`` — on our side, a grant row and its ledger entry disagree, or an acknowledgement
  entry on the provider's payable has no grant row;
* ``unreadable_row`` — a CSV row that could not be read.

This only reads; it writes nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db.models import Sum

from mynapoint.dbutil import IN_LIST_MAX
from mynapoint.grants.models import Grant, GrantStatus
from mynapoint.ledger.models import Posting
from mynapoint.providers.models import Provider
from mynapoint.settlement.selectors import acknowledged_postings, month_end, month_start

__all__ = [
    "Discrepancy",
    "DiscrepancyKind",
    "ProviderAcknowledgement",
    "ReconciliationReport",
    "read_acknowledgements_csv",
    "reconcile",
    "reconcile_csv",
    "reconciliation_csv",
]


class DiscrepancyKind(enum.StrEnum):
    NOT_IN_LEDGER = "not_in_ledger"
    UNKNOWN_GRANT = "unknown_grant"
    MISSING_FROM_PROVIDER = "missing_from_provider"
    AMOUNT_DIFFERS = "amount_differs"
    ACKNOWLEDGED_TWICE = "acknowledged_twice"
    REFERENCE_DIFFERS = "reference_differs"
    REFERENCE_REUSED = "reference_reused"
    OTHER_PERIOD = "other_period"
    LEDGER_INCONSISTENT = "ledger_inconsistent"
    UNREADABLE_ROW = "unreadable_row"

    @property
    def label(self) -> str:
        return _KIND_LABELS[self]


_KIND_LABELS = {
    DiscrepancyKind.NOT_IN_LEDGER: "元帳に付与完了なし",
    DiscrepancyKind.UNKNOWN_GRANT: "付与指示なし",
    DiscrepancyKind.MISSING_FROM_PROVIDER: "事業者の一覧になし",
    DiscrepancyKind.AMOUNT_DIFFERS: "ポイント相違",
    DiscrepancyKind.ACKNOWLEDGED_TWICE: "重複報告",
    DiscrepancyKind.REFERENCE_DIFFERS: "参照番号相違",
    DiscrepancyKind.REFERENCE_REUSED: "参照番号の重複",
    DiscrepancyKind.OTHER_PERIOD: "対象期間外",
    DiscrepancyKind.LEDGER_INCONSISTENT: "元帳の不整合",
    DiscrepancyKind.UNREADABLE_ROW: "読取不能",
}


@dataclass(frozen=True, slots=True)
class ProviderAcknowledgement:
    """One row of the provider's list. ``line``: where it came from in a CSV file, if it did."""

    grant_id: int
    reference: str
    amount: int
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Discrepancy:
    kind: DiscrepancyKind
    message: str
    grant_id: int | None = None
    ours: int | None = None  # points in our ledger
    theirs: int | None = None  # points in the provider's list
    lines: tuple[int, ...] = ()  # CSV lines of the provider's list


@dataclass
class ReconciliationReport:
    provider_key: str
    period: dt.date | None
    ledger_count: int = 0  # acknowledged grants in our ledger (in the period)
    ledger_points: int = 0
    provider_count: int = 0  # rows in the provider's list
    provider_points: int = 0
    matched: int = 0  # grants on which both agree in every respect
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def counts(self) -> dict[DiscrepancyKind, int]:
        counted: dict[DiscrepancyKind, int] = defaultdict(int)
        for discrepancy in self.discrepancies:
            counted[discrepancy.kind] += 1
        return dict(counted)


def _at(row: ProviderAcknowledgement) -> str:
    return f"（{row.line}行目）" if row.line is not None else ""


def _lines(rows: Iterable[ProviderAcknowledgement]) -> tuple[int, ...]:
    return tuple(row.line for row in rows if row.line is not None)


_CHUNK = 1000


def _with_resident_totals(
    rows: Iterable[tuple[int, int, str, dt.date, int | None]],
) -> Iterable[tuple[int, int, str, dt.date, int | None]]:
    """Each grant row ``(…, acknowledgement entry id)`` with the entry id replaced by what that entry posted to
    residents (None: nothing). Looked up for a chunk of entries at a time from the postings' entry index, not
    by a subquery per grant, which stale statistics after a bulk load let the planner run as a scan of every
    resident account per grant (over 5 minutes for 20,000 grants)."""
    chunk: list[tuple[int, int, str, dt.date, int | None]] = []

    def flush() -> Iterable[tuple[int, int, str, dt.date, int | None]]:
        entries = [row[4] for row in chunk if row[4] is not None]
        totals = (
            dict(
                Posting.objects.filter(entry_id__in=entries, account__kind="resident")
                .values("entry_id")
                .annotate(total=Sum("amount"))
                .values_list("entry_id", "total")
            )
            if entries
            else {}
        )
        for grant_id, amount, reference, on, entry_id in chunk:
            yield grant_id, amount, reference, on, totals.get(entry_id) if entry_id is not None else None

    for row in rows:
        chunk.append(row)
        if len(chunk) == IN_LIST_MAX:  # entry ids in one IN (…)
            yield from flush()
            chunk.clear()
    yield from flush()


def reconcile(
    *,
    provider: Provider,
    acknowledgements: Iterable[ProviderAcknowledgement | tuple[int, str, int]],
    period: dt.date | None = None,
) -> ReconciliationReport:
    """Compare the provider's list with our acknowledged grants (all, or those acknowledged in the month of
    ``period``) and list every discrepancy."""
    start = month_start(period) if period is not None else None
    through = month_end(period) if period is not None else dt.date.max
    report = ReconciliationReport(provider_key=provider.key, period=start)

    theirs: dict[int, list[ProviderAcknowledgement]] = defaultdict(list)
    for item in acknowledgements:
        row = item if isinstance(item, ProviderAcknowledgement) else ProviderAcknowledgement(*item)
        theirs[row.grant_id].append(row)
        report.provider_count += 1
        report.provider_points += row.amount
    found = report.discrepancies
    for grant_id, rows in sorted(theirs.items()):
        if len(rows) > 1:
            found.append(
                Discrepancy(
                    DiscrepancyKind.ACKNOWLEDGED_TWICE,
                    f"付与ID {grant_id}: 事業者の一覧に{len(rows)}回あります"
                    + (f"（{'、'.join(map(str, _lines(rows)))}行目）" if _lines(rows) else ""),
                    grant_id=grant_id,
                    theirs=sum(row.amount for row in rows),
                    lines=_lines(rows),
                )
            )
    by_reference: dict[str, set[int]] = defaultdict(set)
    for grant_id, rows in theirs.items():
        for row in rows:
            if row.reference:
                by_reference[row.reference].add(grant_id)
    for reference, grant_ids in sorted(by_reference.items()):
        if len(grant_ids) > 1:
            found.append(
                Discrepancy(
                    DiscrepancyKind.REFERENCE_REUSED,
                    f"参照番号 {reference}: 複数の付与（付与ID {'、'.join(map(str, sorted(grant_ids)))}）に使われています",
                )
            )

    # our side: the provider's acknowledged grants, with what their acknowledgement entry posted to residents
    ours = Grant.objects.filter(provider=provider, status=GrantStatus.ACKNOWLEDGED)
    if start is not None:
        ours = ours.filter(
            acknowledgement_entry__effective_date__gte=start,
            acknowledgement_entry__effective_date__lte=through,
        )
    rows_ours = (
        ours.order_by("pk")
        .values_list(
            "pk",
            "amount",
            "provider_reference",
            "acknowledgement_entry__effective_date",
            "acknowledgement_entry_id",
        )
        .iterator(chunk_size=5000)
    )
    for grant_id, amount, reference, acknowledged_on, ledger in _with_resident_totals(rows_ours):
        ledger_points = int(ledger) if ledger is not None else None
        report.ledger_count += 1
        report.ledger_points += ledger_points or 0
        agreed = True
        if ledger_points != amount:
            agreed = False
            found.append(
                Discrepancy(
                    DiscrepancyKind.LEDGER_INCONSISTENT,
                    f"付与ID {grant_id}: 付与の記録（{amount}ポイント）と元帳の承認仕訳"
                    f"（{'なし' if ledger_points is None else f'{ledger_points}ポイント'}）が一致しません",
                    grant_id=grant_id,
                    ours=ledger_points,
                )
            )
        points = ledger_points if ledger_points is not None else amount
        listed = theirs.pop(grant_id, None)
        if not listed:
            found.append(
                Discrepancy(
                    DiscrepancyKind.MISSING_FROM_PROVIDER,
                    f"付与ID {grant_id}: 元帳では{acknowledged_on}に付与完了（{points}ポイント、参照番号 {reference or 'なし'}）"
                    "ですが、事業者の一覧にありません",
                    grant_id=grant_id,
                    ours=points,
                )
            )
            continue
        if len(listed) > 1:
            agreed = False
        first = listed[0]
        if first.amount != points:
            agreed = False
            found.append(
                Discrepancy(
                    DiscrepancyKind.AMOUNT_DIFFERS,
                    f"付与ID {grant_id}: ポイントが異なります（元帳 {points}、事業者 {first.amount}）{_at(first)}",
                    grant_id=grant_id,
                    ours=points,
                    theirs=first.amount,
                    lines=_lines([first]),
                )
            )
        if first.reference and reference and first.reference != reference:
            agreed = False
            found.append(
                Discrepancy(
                    DiscrepancyKind.REFERENCE_DIFFERS,
                    f"付与ID {grant_id}: 参照番号が異なります（元帳 {reference}、事業者 {first.reference}）{_at(first)}",
                    grant_id=grant_id,
                    lines=_lines([first]),
                )
            )
        if agreed:
            report.matched += 1

    # acknowledgements on the provider's payable that no grant row owns
    for posting in acknowledged_postings(provider=provider, start=start, through=through, unclaimed=False):
        if posting.grant_id is None:
            found.append(
                Discrepancy(
                    DiscrepancyKind.LEDGER_INCONSISTENT,
                    f"元帳の仕訳 #{posting.entry_id}: {posting.effective_date}に{posting.amount}ポイントを"
                    "付与完了として記帳していますが、対応する付与がありません",
                    ours=posting.amount,
                )
            )

    # the provider's rows we did not match: never instructed to it, not acknowledged, or another month
    rest = sorted(theirs)
    for begin in range(0, len(rest), _CHUNK):
        chunk = rest[begin : begin + _CHUNK]
        known = {
            pk: (provider_id, status, on)
            for pk, provider_id, status, on in Grant.objects.filter(pk__in=chunk).values_list(
                "pk", "provider_id", "status", "acknowledgement_entry__effective_date"
            )
        }
        for grant_id in chunk:
            first = theirs[grant_id][0]
            lines = _lines(theirs[grant_id])
            said = f"（{first.reference or '参照番号なし'}、{first.amount}ポイント）{_at(first)}"
            match known.get(grant_id):
                case None:
                    kind, message = DiscrepancyKind.UNKNOWN_GRANT, "この付与IDの付与指示はありません"
                case (owner, _, _) if owner != provider.pk:
                    kind, message = DiscrepancyKind.UNKNOWN_GRANT, "他の事業者への付与指示です"
                case (_, status, _) if status != GrantStatus.ACKNOWLEDGED:
                    kind = DiscrepancyKind.NOT_IN_LEDGER
                    message = (
                        "事業者は付与済みとしていますが、元帳に付与完了の記帳がありません（付与指示済のまま）"
                    )
                case (_, _, on):
                    kind = DiscrepancyKind.OTHER_PERIOD
                    month = f"{start:%Y年%m月}" if start is not None else "全期間"
                    message = f"元帳では{on}の付与完了で、対象期間（{month}）の外です"
            found.append(
                Discrepancy(
                    kind,
                    f"付与ID {grant_id}: {message}{said}",
                    grant_id=grant_id,
                    theirs=first.amount,
                    lines=lines,
                )
            )
    return report


_HEADERS = {
    "grant_id": {"付与id", "付与番号", "grant_id", "grantid", "grant"},
    "reference": {"参照番号", "事業者参照番号", "reference", "provider_reference", "ref"},
    "amount": {"ポイント", "付与ポイント", "ポイント数", "amount", "points"},
}


def _key(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().lower().replace(" ", "")


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp932")  # Excel's "CSV" on a Japanese Windows is Shift_JIS


def _points(text: str) -> int:
    value = unicodedata.normalize("NFKC", text).strip().replace(",", "").replace(" ", "")
    if value[:1] in ("△", "▲"):  # the accounting way of writing a negative number
        value = "-" + value[1:]
    return int(value)


def _row_problem(cells: list[str], columns: dict[str, int]) -> tuple[str, int, int]:
    """Why a row cannot be read ("" if it can), with its grant id and points."""
    if len(cells) <= max(columns.values()):
        return "列が足りません", 0, 0
    grant_text = unicodedata.normalize("NFKC", cells[columns["grant_id"]]).strip()
    if not grant_text.isdigit() or int(grant_text) <= 0:
        return f"付与IDが正の整数ではありません: {grant_text!r}", 0, 0
    try:
        amount = _points(cells[columns["amount"]])
    except ValueError:
        return f"ポイントが整数ではありません: {cells[columns['amount']]!r}", 0, 0
    return "", int(grant_text), amount


def read_acknowledgements_csv(data: bytes | str) -> tuple[list[ProviderAcknowledgement], list[Discrepancy]]:
    """Read a provider's list: a header row naming 付与ID / 参照番号 / ポイント (or grant_id / reference /
    amount), then one row per grant. UTF-8 (with or without a BOM) or Shift_JIS. Rows that cannot be read
    come back as ``unreadable_row`` discrepancies."""
    rows: list[ProviderAcknowledgement] = []
    problems: list[Discrepancy] = []
    reader = csv.reader(io.StringIO(_decode(data)))
    header = next(reader, None)
    columns: dict[str, int] = {}
    for index, name in enumerate(header or []):
        for field_name, aliases in _HEADERS.items():
            if _key(name) in aliases and field_name not in columns:
                columns[field_name] = index
    missing = [name for name in ("grant_id", "amount") if name not in columns]
    if missing:
        problems.append(
            Discrepancy(
                DiscrepancyKind.UNREADABLE_ROW,
                "1行目: 見出しに付与ID（grant_id）とポイント（amount）の列が必要です",
                lines=(1,),
            )
        )
        return rows, problems
    for number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        problem, grant_id, amount = _row_problem(cells, columns)
        if problem:
            problems.append(
                Discrepancy(
                    DiscrepancyKind.UNREADABLE_ROW,
                    f"{number}行目: 読み取れません（{problem}）: {','.join(cells)[:100]}",
                    lines=(number,),
                )
            )
            continue
        reference = cells[columns["reference"]].strip() if "reference" in columns else ""
        rows.append(ProviderAcknowledgement(grant_id, reference, amount, number))
    return rows, problems


def reconcile_csv(
    *, provider: Provider, data: bytes | str, period: dt.date | None = None
) -> ReconciliationReport:
    """Read the provider's CSV and reconcile it; unreadable rows are listed first."""
    rows, problems = read_acknowledgements_csv(data)
    report = reconcile(provider=provider, acknowledgements=rows, period=period)
    report.discrepancies[:0] = problems
    return report


def reconciliation_csv(report: ReconciliationReport) -> bytes:
    """The discrepancies as CSV for Excel (UTF-8 with a BOM)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["事業者コード", report.provider_key])
    writer.writerow(["対象期間", f"{report.period:%Y-%m}" if report.period else "全期間"])
    writer.writerow(["元帳の付与完了", report.ledger_count, report.ledger_points])
    writer.writerow(["事業者の一覧", report.provider_count, report.provider_points])
    writer.writerow(["一致", report.matched])
    writer.writerow([])
    writer.writerow(["種別コード", "種別", "付与ID", "元帳ポイント", "事業者ポイント", "行", "内容"])
    for item in report.discrepancies:
        writer.writerow(
            [
                item.kind.value,
                item.kind.label,
                "" if item.grant_id is None else item.grant_id,
                "" if item.ours is None else item.ours,
                "" if item.theirs is None else item.theirs,
                " ".join(map(str, item.lines)),
                item.message,
            ]
        )
    return ("\ufeff" + out.getvalue()).encode("utf-8")
