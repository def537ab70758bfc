"""Statements of a claim: CSV for Excel (UTF-8 with a BOM, CRLF, Japanese headers) and PDF.

The PDF uses reportlab's built-in Japanese CID font HeiseiKakuGo-W5 (平成角ゴシック): nothing is embedded, the
reader supplies a Japanese gothic font, and the text stays searchable. Both show the provider, the period, the
lines per month and measure (counts and points of grants and of claw-backs), the totals, the ledger figures
behind them and the claim's digest. Rendering is deterministic (same claim, same bytes).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from mynapoint.rules.model import JST
from mynapoint.settlement.models import Claim, ClaimKind, ClaimStatus
from mynapoint.settlement.selectors import Statement, claim_items, claim_statement, measure_label

__all__ = [
    "FONT",
    "claim_items_csv",
    "claim_statement_csv",
    "claim_statement_pdf",
    "statement_csv",
    "statement_pdf",
    "statement_title",
]

FONT = "HeiseiKakuGo-W5"
ISSUER = "マイナポイント事務局"
LINE_HEADERS = (
    "対象月",
    "施策コード",
    "施策",
    "付与件数",
    "付与ポイント",
    "取消件数",
    "取消ポイント",
    "差引ポイント",
    "備考",
)
LATE_NOTE = "確定後の訂正"


def _font() -> str:
    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(FONT))
    return FONT


def statement_title(statement: Statement) -> str:
    title = "概算払請求明細書" if statement.kind == ClaimKind.MONTHLY else "精算明細書"
    return title if statement.status == ClaimStatus.FIXED else f"{title}（下書き・未確定）"


def _when(moment: dt.datetime | None) -> str:
    return "" if moment is None else moment.astimezone(JST).strftime("%Y-%m-%d %H:%M")


def _bottom_line(statement: Statement) -> tuple[str, int]:
    if statement.amount >= 0:
        return ("今回請求額" if statement.kind == ClaimKind.MONTHLY else "精算額（請求）"), statement.amount
    return ("今回返還額" if statement.kind == ClaimKind.MONTHLY else "精算額（返還）"), -statement.amount


def _header_rows(statement: Statement) -> list[tuple[str, str]]:
    return [
        ("事業者コード", statement.provider_key),
        ("事業者名", statement.provider_name),
        ("区分", statement.kind_label),
        ("対象期間", statement.period_label),
        (
            "承認日の範囲",
            f"{statement.period.isoformat()}〜{statement.through.isoformat()}"
            if statement.kind == ClaimKind.MONTHLY
            else f"〜{statement.through.isoformat()}",
        ),
        ("請求番号", str(statement.claim_id)),
        ("状態", statement.status_label),
        ("算定日時", _when(statement.computed_at)),
        ("確定日時", _when(statement.fixed_at)),
    ]


def _ledger_rows(statement: Statement) -> list[tuple[str, str]]:
    label, amount = _bottom_line(statement)
    return [
        ("承認済ポイント累計（元帳）", f"{statement.acknowledged_total}"),
        ("確定済請求の累計", f"{statement.claimed_before}"),
        (label, f"{amount}"),
        ("ダイジェスト（SHA-256）", statement.digest),
    ]


def statement_csv(statement: Statement) -> bytes:
    """The statement as CSV: a heading block, the lines with a total, the ledger figures and the digest."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["帳票", statement_title(statement)])
    writer.writerows(_header_rows(statement))
    writer.writerow([])
    writer.writerow(LINE_HEADERS)
    for line in statement.lines:
        writer.writerow(
            [
                f"{line.period:%Y-%m}",
                line.measure,
                line.measure_label,
                line.grant_count,
                line.granted_points,
                line.clawback_count,
                -line.clawback_points,
                line.amount,
                LATE_NOTE if line.late else "",
            ]
        )
    writer.writerow(
        [
            "合計",
            "",
            "",
            statement.grant_count,
            statement.granted_points,
            statement.clawback_count,
            -statement.clawback_points,
            statement.amount,
            "",
        ]
    )
    writer.writerow([])
    writer.writerows(_ledger_rows(statement))
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def claim_items_csv(claim: Claim) -> bytes:
    """What a fixed claim settled, one row per grant (付与ID as the provider knows it), for checking by the
    provider and for recomputing the digest."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["付与ID", "施策コード", "施策", "ポイント", "承認日", "元帳仕訳ID", "元帳明細ID"])
    for item in claim_items(claim=claim):
        writer.writerow(
            [
                "" if item.grant_id is None else item.grant_id,
                item.measure,
                measure_label(item.measure),
                item.amount,
                item.effective_date.isoformat(),
                item.entry_id,
                item.posting_id,
            ]
        )
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def _table(rows: Iterable[Iterable[object]], *, widths: list[float], style: list[Any]) -> Table:
    table = Table([list(row) for row in rows], colWidths=widths, hAlign="LEFT")
    table.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), FONT, 9), *style]))
    return table


def statement_pdf(statement: Statement) -> bytes:
    """The statement as an A4 PDF."""
    _font()
    buffer = io.BytesIO()
    title = statement_title(statement)
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=18 * mm,
        bottomMargin=18 * mm,
        title=f"{title} {statement.provider_name} {statement.period_label}",
        author=ISSUER,
        subject=f"{statement.provider_name}（{statement.provider_key}）{statement.kind_label}",
        creator="mynapoint",
        invariant=1,
    )
    heading = ParagraphStyle("heading", fontName=FONT, fontSize=16, leading=22, spaceAfter=4 * mm)
    small = ParagraphStyle(
        "small", fontName=FONT, fontSize=8, leading=11, textColor=colors.HexColor("#4d4d4d")
    )
    key_blue = colors.HexColor("#0017c1")
    grid = colors.HexColor("#767676")

    story: list[Flowable] = [Paragraph(title, heading)]
    story.append(
        _table(
            _header_rows(statement),
            widths=[38 * mm, 136 * mm],
            style=[
                ("GRID", (0, 0), (-1, -1), 0.4, grid),
                ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#e8f1fe")),
            ],
        )
    )
    story.append(Spacer(1, 6 * mm))
    rows: list[list[object]] = [
        ["対象月", "施策", "付与件数", "付与ポイント", "取消件数", "取消ポイント", "差引ポイント"]
    ]
    for line in statement.lines:
        label = f"{line.measure_label}（{LATE_NOTE}）" if line.late else line.measure_label
        rows.append(
            [
                f"{line.period:%Y-%m}",
                Paragraph(label, ParagraphStyle("cell", fontName=FONT, fontSize=8, leading=10)),
                f"{line.grant_count:,}",
                f"{line.granted_points:,}",
                f"{line.clawback_count:,}",
                f"{-line.clawback_points:,}",
                f"{line.amount:,}",
            ]
        )
    if not statement.lines:
        rows.append(["", "（該当なし）", "0", "0", "0", "0", "0"])
    rows.append(
        [
            "合計",
            "",
            f"{statement.grant_count:,}",
            f"{statement.granted_points:,}",
            f"{statement.clawback_count:,}",
            f"{-statement.clawback_points:,}",
            f"{statement.amount:,}",
        ]
    )
    story.append(
        _table(
            rows,
            widths=[17 * mm, 55 * mm, 17 * mm, 23 * mm, 17 * mm, 22 * mm, 23 * mm],
            style=[
                ("GRID", (0, 0), (-1, -1), 0.4, grid),
                ("BACKGROUND", (0, 0), (-1, 0), key_blue),
                ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
                ("ALIGN", (2, 1), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("BACKGROUND", (0, -1), (-1, -1), colors.HexColor("#f2f2f2")),
            ],
        )
    )
    story.append(Spacer(1, 6 * mm))
    ledger = _ledger_rows(statement)
    figures = [(label, f"{int(value):,} ポイント（円）") for label, value in ledger[:3]]
    story.append(
        _table(
            figures,
            widths=[60 * mm, 60 * mm],
            style=[
                ("GRID", (0, 0), (-1, -1), 0.4, grid),
                ("ALIGN", (1, 0), (1, -1), "RIGHT"),
                ("FONT", (0, -1), (-1, -1), FONT, 11),
                ("BACKGROUND", (0, -1), (-1, -1), colors.HexColor("#e8f1fe")),
            ],
        )
    )
    story.append(Spacer(1, 4 * mm))
    story.append(Paragraph(f"ダイジェスト（SHA-256）: {statement.digest}", small))
    story.append(
        Paragraph(
            "ポイントは1ポイント＝1円。取消ポイントは確定後の返金等による付与取消で、差引ポイントから控除しています。"
            "ダイジェストは本書が精算する元帳明細の一覧から計算され、明細CSVから再計算できます。",
            small,
        )
    )

    def footer(canvas: Canvas, document: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont(FONT, 8)
        canvas.drawString(18 * mm, 10 * mm, f"{ISSUER}　請求番号 {statement.claim_id}")
        canvas.drawRightString(A4[0] - 18 * mm, 10 * mm, f"{document.page} ページ")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def claim_statement_csv(claim: Claim) -> bytes:
    return statement_csv(claim_statement(claim=claim))


def claim_statement_pdf(claim: Claim) -> bytes:
    return statement_pdf(claim_statement(claim=claim))
