"""CSV feeds: health-insurance use registrations, public-fund account registrations, certificate renewals.

Each feed calls the same service as a single call would (:func:`record_health_insurance_registration`,
:func:`record_public_fund_registration`, :func:`apply_certificate_renewal`), one row at a time: every row is its own
transaction, so a bad row loses nothing accepted before it, and a file can be imported again (rows already
recorded come back as *unchanged*). The report lists what was created, what was unchanged and every error with
its line, column and message.

The file
  * UTF-8 (with or without a byte-order mark) or CP932 (Shift_JIS as Windows writes it), detected.
  * A header row naming the columns, in any order; every required column must be there, and no other.
  * One row per record; blank lines are skipped; values are trimmed.
  * Times are ISO 8601 with a UTC offset: ``2022-07-01T10:00:00+09:00`` (a time without an offset is an error).
  * A value that looks like a My Number (個人番号: 12 digits with a valid check digit) refuses its row; the
    number is never repeated in the report.

Columns
  health insurance (健康保険証利用登録, from the online qualification system)
      ``mykey_id, registered_at, external_id, source``
  public-fund account (公金受取口座登録)
      ``mykey_id, registered_at, external_id, source, bank_code, branch_code, account_type, account_number,
      holder_kana`` -- bank 4 digits and branch 3 digits (leading zeros kept), checked against zengin-code;
      account type 1 普通, 2 当座, 4 貯蓄; account number 7 digits; the holder's kana as the bank has it, compared
      with the resident's kana on the key of program.md §5 (a mismatch is recorded as rejected
      ``holder_name_mismatch``, and listed as created with that outcome).
  certificate renewals (J-LIS: old certificate → new certificate)
      ``old_issuer, old_serial, new_issuer, new_serial`` -- serials as colon-separated hex (``0a:1b:…``).
  card facts (J-LIS: マイナンバーカードの申請日・交付日)
      ``mykey_id, card_applied, card_applied_online, card_issued`` -- days as ``YYYY-MM-DD`` (JST);
      ``card_applied_online`` 1 (online application) or 0; ``card_issued`` empty while the card is not issued.
      The key is the MyKey ID: the same facts again are unchanged, other facts replace them (decision Q22).

``external_id`` is the feed's own id of the registration: the key of idempotency. The same id with other facts is
an error (``conflict``) on its row.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from django.db import IntegrityError

from mynapoint.applications.services import (
    ApplicationError,
    BankAccount,
    CardFacts,
    apply_certificate_renewal,
    record_card_facts,
    record_health_insurance_registration,
    record_public_fund_registration,
)
from mynapoint.audit.services import Actor
from mynapoint.identity.mynumber import MyNumberRefused, contains_my_number

__all__ = [
    "CARD_FACTS_COLUMNS",
    "HEALTH_INSURANCE_COLUMNS",
    "PUBLIC_FUND_COLUMNS",
    "RENEWAL_COLUMNS",
    "ImportReport",
    "RowError",
    "RowOutcome",
    "import_card_facts_csv",
    "import_health_insurance_csv",
    "import_public_fund_csv",
    "import_renewals_csv",
]

HEALTH_INSURANCE_COLUMNS: Final = ("mykey_id", "registered_at", "external_id", "source")
PUBLIC_FUND_COLUMNS: Final = (
    *HEALTH_INSURANCE_COLUMNS,
    "bank_code",
    "branch_code",
    "account_type",
    "account_number",
    "holder_kana",
)
RENEWAL_COLUMNS: Final = ("old_issuer", "old_serial", "new_issuer", "new_serial")
CARD_FACTS_COLUMNS: Final = ("mykey_id", "card_applied", "card_applied_online", "card_issued")

Progress = Callable[[int, int], None]  # (rows done, rows in the file)

_SERIAL = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2})*$")
_LIMITS: Final = {"external_id": 100, "source": 60, "holder_kana": 100, "old_issuer": 400, "new_issuer": 400}


# ------------------------------------------------------------------------------------------------ the report


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """A row recorded (or found already recorded): its line, its key, and what the service answered."""

    line: int
    key: str
    outcome: str = ""


@dataclass(frozen=True, slots=True)
class RowError:
    """A row (or, at line 1, the header) that was not recorded: where, and why in Japanese and English."""

    line: int
    column: str
    message_ja: str
    message_en: str

    @property
    def message(self) -> str:
        return f"{self.message_ja} / {self.message_en}"


@dataclass(slots=True)
class ImportReport:
    feed: str
    path: str
    encoding: str = ""
    rows: int = 0
    created: list[RowOutcome] = field(default_factory=list)
    unchanged: list[RowOutcome] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "path": self.path,
            "encoding": self.encoding,
            "rows": self.rows,
            "created": [{"line": r.line, "key": r.key, "outcome": r.outcome} for r in self.created],
            "unchanged": [{"line": r.line, "key": r.key, "outcome": r.outcome} for r in self.unchanged],
            "errors": [
                {"line": e.line, "column": e.column, "message": e.message_ja, "message_en": e.message_en}
                for e in self.errors
            ],
        }


class _RowRefused(Exception):  # noqa: N818 - internal signal, never leaves this module
    def __init__(self, column: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.column, self.ja, self.en = column, ja, en


# ------------------------------------------------------------------------------------------------ reading


def _decode(raw: bytes) -> tuple[str, str]:
    """The text and the encoding it was in: UTF-8 (a BOM is dropped) or else CP932."""
    try:
        return raw.decode("utf-8-sig"), "utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8"
    except UnicodeDecodeError:
        pass
    return raw.decode("cp932"), "cp932"  # raises UnicodeDecodeError: the caller reports it


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, its fields); blank lines skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    for fields in reader:
        line, start = start, reader.line_num + 1
        if not fields or all(not f.strip() for f in fields):
            continue
        yield line, fields


def _read(
    path: Path, feed: str, columns: Sequence[str], report: ImportReport
) -> list[tuple[int, dict[str, str] | RowError]] | None:
    """The rows as {column: value} (or the error of a malformed row), or None when the file cannot be read at
    all (the error is in the report)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        report.errors.append(
            RowError(0, "", "ファイルを読めません", f"cannot read {path.name}: {exc.strerror or exc}")
        )
        return None
    try:
        text, report.encoding = _decode(raw)
    except UnicodeDecodeError as exc:
        report.errors.append(
            RowError(
                0,
                "",
                "文字コードが UTF-8 でも CP932（シフトJIS）でもありません",
                f"the file is neither UTF-8 nor CP932 (byte {exc.start})",
            )
        )
        return None
    records = _records(text)
    first = next(records, None)
    if first is None:
        report.errors.append(
            RowError(1, "", "見出し行がありません（空のファイル）", "no header row: the file is empty")
        )
        return None
    header_line, header = first
    names = [h.strip() for h in header]
    expected = ", ".join(columns)
    for name in names:
        if contains_my_number(name):
            report.errors.append(RowError(header_line, "", *_my_number_messages("header")))
            return None
    unknown = [n for n in names if n not in columns]
    missing = [c for c in columns if c not in names]
    doubled = sorted({n for n in names if names.count(n) > 1})
    for name in unknown:
        report.errors.append(
            RowError(
                header_line,
                name,
                f"不明な列です（{feed} の列: {expected}）",
                f"unknown column {name!r} (the {feed} columns are: {expected})",
            )
        )
    for name in missing:
        report.errors.append(
            RowError(header_line, name, "必須の列がありません", f"required column {name!r} is missing")
        )
    for name in doubled:
        report.errors.append(
            RowError(header_line, name, "列が重複しています", f"column {name!r} appears twice")
        )
    if unknown or missing or doubled:
        return None
    rows: list[tuple[int, dict[str, str] | RowError]] = []
    for line, fields in records:
        if len(fields) != len(names):
            rows.append(
                (
                    line,
                    RowError(
                        line,
                        "",
                        f"列の数が見出しと違います（{len(names)}列のところ{len(fields)}列）",
                        f"{len(fields)} fields where the header has {len(names)}",
                    ),
                )
            )
        else:
            rows.append((line, {name: value.strip() for name, value in zip(names, fields, strict=True)}))
    return rows


def _my_number_messages(column: str) -> tuple[str, str]:
    """The refusal of a value that looks like a My Number (the value itself is never repeated)."""
    return (
        "マイナンバー（個人番号）と思われる12桁の番号が含まれているため、この行は取り込みません",
        f"{column} holds a 12-digit number that looks like a My Number: the row is refused",
    )


# ------------------------------------------------------------------------------------------------ values


def _required(row: dict[str, str], column: str) -> str:
    value = row[column]
    if not value:
        raise _RowRefused(column, "値がありません", f"{column} is required")
    limit = _LIMITS.get(column)
    if limit is not None and len(value) > limit:
        raise _RowRefused(column, f"{limit}文字以内で入力してください", f"{column} is longer than {limit}")
    return value


def _aware(row: dict[str, str], column: str) -> dt.datetime:
    value = _required(row, column)
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _RowRefused(
            column,
            "日時の形式が正しくありません（例: 2022-07-01T10:00:00+09:00）",
            f"{column}: not an ISO datetime (e.g. 2022-07-01T10:00:00+09:00)",
        ) from None
    if moment.tzinfo is None:
        raise _RowRefused(
            column,
            "日時にタイムゾーンがありません（例: +09:00）",
            f"{column}: the time needs a UTC offset (e.g. +09:00)",
        )
    return moment


def _digits(row: dict[str, str], column: str, width: int, ja_name: str) -> str:
    value = _required(row, column)
    if not re.fullmatch(rf"\d{{{width}}}", value):
        raise _RowRefused(
            column,
            f"{ja_name}は{width}桁の数字です（先頭の0も含めて）",
            f"{column} must be {width} digits, leading zeros included",
        )
    return value


def _day(value: str, column: str) -> dt.date:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _RowRefused(
            column, "日付の形式が正しくありません（例: 2022-09-30）", f"{column}: not a date YYYY-MM-DD"
        ) from None


def _flag(row: dict[str, str], column: str) -> bool:
    value = _required(row, column)
    if value not in ("0", "1"):
        raise _RowRefused(column, "1（はい）か0（いいえ）で入力してください", f"{column} must be 1 or 0")
    return value == "1"


def _serial(row: dict[str, str], column: str) -> str:
    value = _required(row, column)
    if not _SERIAL.match(value):
        raise _RowRefused(
            column,
            "シリアル番号は2桁ずつコロンで区切った16進数です（例: 0a:1b:2c）",
            f"{column} must be colon-separated hex (e.g. 0a:1b:2c)",
        )
    return value.lower()


# ------------------------------------------------------------------------------------------------ running


def _run(
    path: Path,
    *,
    feed: str,
    columns: Sequence[str],
    record_row: Callable[[dict[str, str]], tuple[str, bool, str]],
    progress: Progress | None,
) -> ImportReport:
    """Read the file and record each row on its own; ``record_row`` returns (key, created, outcome)."""
    report = ImportReport(feed=feed, path=str(path))
    rows = _read(Path(path), feed, columns, report)
    if rows is None:
        return report
    report.rows = len(rows)
    for done, (line, row) in enumerate(rows, start=1):
        try:
            if isinstance(row, RowError):
                report.errors.append(row)
                continue
            for column, value in row.items():
                if contains_my_number(value):
                    raise _RowRefused(column, *_my_number_messages(column))
            key, created, outcome = record_row(row)
        except _RowRefused as refused:
            report.errors.append(RowError(line, refused.column, refused.ja, refused.en))
        except MyNumberRefused as refused:  # the services check too
            report.errors.append(RowError(line, refused.where, *_my_number_messages(refused.where)))
        except ApplicationError as error:
            report.errors.append(RowError(line, error.field, error.ja, error.en))
        else:
            (report.created if created else report.unchanged).append(RowOutcome(line, key, outcome))
        finally:
            if progress is not None:
                progress(done, report.rows)
    return report


def import_health_insurance_csv(
    path: Path, *, now: dt.datetime, who: Actor, progress: Progress | None = None
) -> ImportReport:
    """健康保険証利用登録 from a CSV file (columns ``HEALTH_INSURANCE_COLUMNS``); idempotent by external_id."""

    def record_row(row: dict[str, str]) -> tuple[str, bool, str]:
        external_id = _required(row, "external_id")
        _, created = record_health_insurance_registration(
            mykey_id=_required(row, "mykey_id"),
            registered_at=_aware(row, "registered_at"),
            external_id=external_id,
            source=_required(row, "source"),
            now=now,
            who=who,
        )
        return external_id, created, "accepted"

    return _run(
        path,
        feed="health_insurance",
        columns=HEALTH_INSURANCE_COLUMNS,
        record_row=record_row,
        progress=progress,
    )


def import_public_fund_csv(
    path: Path, *, now: dt.datetime, who: Actor, progress: Progress | None = None
) -> ImportReport:
    """公金受取口座登録 from a CSV file (columns ``PUBLIC_FUND_COLUMNS``); idempotent by external_id. A holder name
    that does not match the resident's kana is recorded as rejected (holder_name_mismatch), as a call would."""

    def record_row(row: dict[str, str]) -> tuple[str, bool, str]:
        external_id = _required(row, "external_id")
        bank = BankAccount(
            bank_code=_digits(row, "bank_code", 4, "金融機関コード"),
            branch_code=_digits(row, "branch_code", 3, "支店コード"),
            account_type=_required(row, "account_type"),
            account_number=_digits(row, "account_number", 7, "口座番号"),
        )
        registration, created = record_public_fund_registration(
            mykey_id=_required(row, "mykey_id"),
            registered_at=_aware(row, "registered_at"),
            external_id=external_id,
            source=_required(row, "source"),
            bank=bank,
            holder_kana=_required(row, "holder_kana"),
            now=now,
            who=who,
        )
        if registration.rejection_code:
            outcome = f"rejected: {registration.rejection_code}"
        else:
            outcome = "accepted" if registration.holder_checked else "accepted (holder not checked)"
        return external_id, created, outcome

    return _run(
        path, feed="public_fund", columns=PUBLIC_FUND_COLUMNS, record_row=record_row, progress=progress
    )


def import_renewals_csv(
    path: Path, *, now: dt.datetime, who: Actor, progress: Progress | None = None
) -> ImportReport:
    """Certificate renewal notices (old → new) from a CSV file (columns ``RENEWAL_COLUMNS``). A renewal already
    known is unchanged; the outcome of a new one is recorded, waiting_for_first_login or merged (a duplicate
    resident made by an early login of the new certificate is merged into the original)."""

    def record_row(row: dict[str, str]) -> tuple[str, bool, str]:
        old_issuer, old_serial = _required(row, "old_issuer"), _serial(row, "old_serial")
        new_issuer, new_serial = _required(row, "new_issuer"), _serial(row, "new_serial")
        try:
            outcome = apply_certificate_renewal(
                old_issuer=old_issuer,
                old_serial=old_serial,
                new_issuer=new_issuer,
                new_serial=new_serial,
                now=now,
                who=who,
            )
        except IntegrityError:
            raise _RowRefused(
                "new_serial",
                "この新しい証明書は別の証明書の更新としてすでに登録されています",
                "this new certificate is already recorded as the renewal of another certificate",
            ) from None
        return f"{old_serial} → {new_serial}", outcome != "already_known", outcome

    return _run(path, feed="renewals", columns=RENEWAL_COLUMNS, record_row=record_row, progress=progress)


def import_card_facts_csv(
    path: Path, *, now: dt.datetime, who: Actor, progress: Progress | None = None
) -> ImportReport:
    """Card facts from J-LIS (columns ``CARD_FACTS_COLUMNS``): the day each resident's card was applied for,
    whether online, and the day it was issued. Keyed by MyKey ID; re-running a file is safe."""

    def record_row(row: dict[str, str]) -> tuple[str, bool, str]:
        mykey_id = _required(row, "mykey_id")
        issued = row["card_issued"]
        facts = CardFacts(
            applied=_day(_required(row, "card_applied"), "card_applied"),
            applied_online=_flag(row, "card_applied_online"),
            issued=_day(issued, "card_issued") if issued else None,
        )
        resident, changed = record_card_facts(mykey_id=mykey_id, facts=facts, now=now, who=who)
        outcome = "issued" if resident.card_issued else "applied"
        if resident.mykey_id != mykey_id:
            outcome += f" (merged into {resident.mykey_id})"
        return mykey_id, changed, outcome

    return _run(path, feed="card_facts", columns=CARD_FACTS_COLUMNS, record_row=record_row, progress=progress)
