"""Settlement: monthly claims and the final settlement from the ledger, statements, reconciliation."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import shutil
import subprocess
import threading
from collections.abc import Callable

import pytest
from django.db import DatabaseError, connection, transaction
from support import FEED, NOW, SELF

from mynapoint.applications.services import apply_for_measure
from mynapoint.applications.transactions import record_refund, record_transaction
from mynapoint.audit.models import AuditEvent
from mynapoint.grants.models import Grant
from mynapoint.grants.services import acknowledge_grant, grant_due_points
from mynapoint.identity.models import Resident
from mynapoint.ledger.services import payable, post_entry, resident_account
from mynapoint.providers.models import Provider
from mynapoint.rules.model import JST
from mynapoint.settlement.models import Claim, ClaimItem, ClaimLine
from mynapoint.settlement.reconciliation import (
    DiscrepancyKind,
    ProviderAcknowledgement,
    reconcile,
    reconcile_csv,
    reconciliation_csv,
)
from mynapoint.settlement.selectors import claim_statement, verify_claim
from mynapoint.settlement.services import (
    SettlementError,
    compute_final_settlement,
    compute_monthly_claim,
    fix_claim,
)
from mynapoint.settlement.statements import claim_items_csv, statement_csv, statement_pdf

pytestmark = pytest.mark.django_db
OFFICE = FEED
JULY = dt.date(2022, 7, 1)
AUGUST = dt.date(2022, 8, 1)


def at(month: int, day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(2022, month, day, hour, tzinfo=JST)


def _linked(make_resident: Callable[..., Resident], service_id: str) -> Resident:
    resident = make_resident(accounts={f"wallet/{service_id}": ["1"]})
    assert apply_for_measure(
        resident=resident, measure="premium", provider_key="wallet", service_id=service_id,
        security_codes=["1"], mode="charge", operated_by=None, present=[], now=NOW, who=SELF,
    ).accepted  # fmt: skip
    return resident


def _charge(service_id: str, txid: str, amount: int, when: dt.datetime) -> None:
    record_transaction(
        provider_key="wallet", txid=txid, service_id=service_id, kind="charge", amount=amount, at=when,
        now=when, who=FEED,
    )  # fmt: skip


def _grant(resident: Resident, when: dt.datetime) -> Grant:
    [grant] = grant_due_points(resident=resident, today=when.date(), now=when, who=OFFICE)
    return grant


def _ack(grant: Grant, provider: Provider, when: dt.datetime, reference: str | None = None) -> Grant:
    return acknowledge_grant(
        grant=grant, provider=provider, reference=reference or f"W-{grant.pk}", now=when, who=FEED
    )


def _granted(make_resident: Callable[..., Resident], amounts: list[int]) -> list[tuple[Resident, Grant]]:
    """Residents linked at the wallet, each charged on 2 July and instructed a grant of a quarter of it."""
    made = []
    for n, amount in enumerate(amounts, start=1):
        resident = _linked(make_resident, f"G-{n}")
        _charge(f"G-{n}", f"c{n}", amount, at(7, 2))
        made.append((resident, _grant(resident, at(7, 2, 11))))
    return made


def test_monthly_claims_are_fixed_and_a_late_clawback_is_deducted_in_the_final_settlement(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    wallet = providers["wallet"]
    (hanako, g1), (_, g2), (_, g3) = _granted(make_resident, [20000, 8000, 4000])
    assert [g.amount for g in (g1, g2, g3)] == [5000, 2000, 1000]
    _ack(g1, wallet, at(7, 3))
    _ack(g2, wallet, at(7, 20))  # g3 stays unacknowledged for now: not claimable

    with pytest.raises(SettlementError) as open_month:
        compute_monthly_claim(provider=wallet, month=JULY, now=at(7, 31, 23), who=OFFICE)
    assert open_month.value.code == "period_open"

    draft = compute_monthly_claim(provider=wallet, month=dt.date(2022, 7, 15), now=at(8, 1), who=OFFICE)
    again = compute_monthly_claim(provider=wallet, month=JULY, now=at(8, 2), who=OFFICE)  # replaces the draft
    assert again.pk == draft.pk
    assert (again.period, again.through, again.status) == (JULY, dt.date(2022, 7, 31), "draft")
    assert (again.grant_count, again.granted_points, again.clawback_points, again.amount) == (
        2,
        7000,
        0,
        7000,
    )
    assert [(line.measure, line.grant_count, line.amount) for line in again.lines.all()] == [
        ("premium", 2, 7000)
    ]
    assert not ClaimItem.objects.exists()  # items are written when a claim is fixed

    with pytest.raises(SettlementError) as wrong_digest:
        fix_claim(claim=again, now=at(8, 3), who=OFFICE, digest="0" * 64)
    assert wrong_digest.value.code == "digest_differs"
    july = fix_claim(claim=again, now=at(8, 3), who=OFFICE, digest=again.digest)
    assert (july.status, july.fixed_at, july.amount) == ("fixed", at(8, 3), 7000)
    assert sorted(ClaimItem.objects.filter(claim=july).values_list("grant_id", flat=True)) == [g1.pk, g2.pk]
    assert verify_claim(claim=july) == []
    with pytest.raises(SettlementError) as fixed:
        compute_monthly_claim(provider=wallet, month=JULY, now=at(8, 4), who=OFFICE)
    assert fixed.value.code == "already_fixed"
    with pytest.raises(SettlementError):
        fix_claim(claim=july, now=at(8, 4), who=OFFICE)

    # after the month was fixed: g3's acknowledgement arrives dated into July, and hanako's charge is
    # partly refunded, which claws back 2,000 points, acknowledged in August
    final_draft = compute_final_settlement(provider=wallet, now=at(8, 4), who=OFFICE)
    assert final_draft.amount == 0
    _ack(g3, wallet, at(7, 31, 18))
    record_refund(
        provider_key="wallet", refund_id="r1", txid="c1", amount=8000, at=at(8, 5), now=at(8, 5), who=FEED
    )
    clawback = _grant(hanako, at(8, 5, 11))
    assert clawback.amount == -2000
    _ack(clawback, wallet, at(8, 6))

    with pytest.raises(SettlementError) as moved:  # the draft no longer says what the ledger says
        fix_claim(claim=final_draft, now=at(8, 10), who=OFFICE)
    assert moved.value.code == "out_of_date"
    assert not ClaimItem.objects.filter(claim=final_draft).exists()

    final = compute_final_settlement(provider=wallet, now=at(8, 10), who=OFFICE)
    assert final.pk == final_draft.pk
    assert (final.acknowledged_total, final.claimed_before) == (6000, 7000)
    assert (final.granted_points, final.clawback_points, final.amount) == (1000, 2000, -1000)  # paid back
    lines = [
        (
            line.period,
            line.grant_count,
            line.granted_points,
            line.clawback_count,
            line.clawback_points,
            line.late,
        )
        for line in ClaimLine.objects.filter(claim=final)
    ]
    assert lines == [(JULY, 1, 1000, 0, 0, True), (AUGUST, 0, 0, 1, 2000, False)]
    final = fix_claim(claim=final, now=at(8, 11), who=OFFICE)
    assert verify_claim(claim=final) == []
    assert ClaimItem.objects.count() == 4  # every acknowledgement settled once
    assert july.amount + final.amount == 6000

    with pytest.raises(SettlementError) as settled:
        compute_monthly_claim(provider=wallet, month=AUGUST, now=at(9, 1), who=OFFICE)
    assert settled.value.code == "settled"
    supplementary = compute_final_settlement(provider=wallet, now=at(9, 1), who=OFFICE)
    assert (supplementary.amount, supplementary.acknowledged_total, supplementary.claimed_before) == (
        0,
        6000,
        6000,
    )

    actions = list(
        AuditEvent.objects.filter(subject_type="claim").values_list("action", "subject_id").order_by("id")
    )
    assert actions.count(("claim_fixed", str(july.pk))) == 1
    assert ("claim_fixed", str(final.pk)) in actions
    assert ("claim_computed", str(supplementary.pk)) in actions


def test_a_fixed_claim_is_never_changed(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    wallet = providers["wallet"]
    [(_, grant)] = _granted(make_resident, [4000])
    _ack(grant, wallet, at(7, 3))
    claim = compute_monthly_claim(provider=wallet, month=JULY, now=at(8, 1), who=OFFICE)
    claim = fix_claim(claim=claim, now=at(8, 1), who=OFFICE)
    attempts: list[Callable[[], object]] = [
        lambda: Claim.objects.filter(pk=claim.pk).update(amount=1, granted_points=1),
        lambda: Claim.objects.filter(pk=claim.pk).delete(),
        lambda: ClaimLine.objects.filter(claim=claim).update(granted_points=0, amount=0),
        lambda: ClaimLine.objects.create(claim=claim, period=JULY, measure="public_fund"),
        lambda: ClaimItem.objects.filter(claim=claim).update(amount=0),
    ]
    for attempt in attempts:
        with pytest.raises(DatabaseError), transaction.atomic():
            attempt()
    claim.refresh_from_db()
    assert (claim.amount, claim.status) == (1000, "fixed")
    assert verify_claim(claim=claim) == []


def test_a_posting_is_settled_by_one_claim_only(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    wallet = providers["wallet"]
    [(_, grant)] = _granted(make_resident, [4000])
    _ack(grant, wallet, at(7, 3))
    monthly = compute_monthly_claim(provider=wallet, month=JULY, now=at(8, 1), who=OFFICE)
    final = compute_final_settlement(provider=wallet, now=at(8, 1), who=OFFICE)
    assert monthly.amount == final.amount == 1000
    fix_claim(claim=monthly, now=at(8, 1), who=OFFICE)
    with pytest.raises(SettlementError) as moved:
        fix_claim(claim=final, now=at(8, 1), who=OFFICE)
    assert moved.value.code == "out_of_date"
    assert compute_final_settlement(provider=wallet, now=at(8, 1), who=OFFICE).amount == 0


def _pdf_info(pdf: bytes, key: str) -> str:
    """A text string of the PDF's document information (reportlab writes UTF-16 with octal escapes)."""
    found = re.search(rb"/" + key.encode() + rb" \((.*?)(?<!\\)\)", pdf, re.S)
    assert found, key
    raw = re.sub(
        rb"\\([0-7]{1,3}|.)",
        lambda m: bytes([int(m[1], 8)]) if m[1][:1] in b"01234567" else _ESCAPES.get(m[1], m[1]),
        found[1],
    )
    return raw[2:].decode("utf-16-be") if raw.startswith(b"\xfe\xff") else raw.decode("latin-1")


_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def test_statements_as_csv_and_pdf(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    wallet = providers["wallet"]
    [(_, g1), (_, g2)] = _granted(make_resident, [20000, 8000])
    _ack(g1, wallet, at(7, 3))
    _ack(g2, wallet, at(7, 4))
    claim = fix_claim(
        claim=compute_monthly_claim(provider=wallet, month=JULY, now=at(8, 1), who=OFFICE),
        now=at(8, 1),
        who=OFFICE,
    )
    statement = claim_statement(claim=claim)

    data = statement_csv(statement)
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0] == ["帳票", "概算払請求明細書"]
    heading = dict(row for row in rows if len(row) == 2)
    assert heading["事業者名"] == "デモウォレット"
    assert heading["対象期間"] == "2022年7月分"
    assert heading["ダイジェスト（SHA-256）"] == claim.digest
    assert heading["今回請求額"] == "7000"
    table = rows[rows.index(["対象月", "施策コード", "施策", "付与件数", "付与ポイント", "取消件数", "取消ポイント",
                             "差引ポイント", "備考"]) + 1 :]  # fmt: skip
    assert table[0][:8] == [
        "2022-07",
        "premium",
        "施策1（カード取得・25%還元）",
        "2",
        "7000",
        "0",
        "0",
        "7000",
    ]
    assert table[1][0] == "合計"
    assert b"\r\n" in data

    items = list(csv.reader(io.StringIO(claim_items_csv(claim).decode("utf-8-sig"))))
    assert [row[0] for row in items[1:]] == [str(g1.pk), str(g2.pk)]

    pdf = statement_pdf(statement)
    assert pdf.startswith(b"%PDF")
    assert statement_pdf(statement) == pdf  # deterministic
    assert "デモウォレット" in _pdf_info(pdf, "Title")  # the document's own metadata
    assert _pdf_info(pdf, "Subject") == "デモウォレット（wallet）概算払（月次）"
    pdftotext = shutil.which("pdftotext")  # poppler-utils: the text layer as a reader extracts it
    if pdftotext:
        text = subprocess.run(  # noqa: S603 - a local tool on our own bytes
            [pdftotext, "-enc", "UTF-8", "-", "-"], input=pdf, capture_output=True, check=True
        ).stdout.decode("utf-8")
        assert "デモウォレット" in text
        assert "概算払請求明細書" in text
        assert claim.digest in text.replace("\n", "")


def test_reconciliation_lists_every_discrepancy(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    wallet = providers["wallet"]
    made = _granted(make_resident, [20000, 8000, 4000, 4000, 400])
    (_, g1), (_, g2), (_, g3), (_, g4), (_, g5) = made
    for grant in (g1, g2, g3):
        _ack(grant, wallet, at(7, 3))
    _ack(g5, wallet, at(8, 2))  # g4 is only instructed
    with transaction.atomic():  # an acknowledgement booked with no grant behind it (a bug on our side)
        post_entry(
            kind="grant_acknowledged", at=at(7, 5), effective_date=dt.date(2022, 7, 5), key="stray",
            legs=[(payable("wallet"), -300), (resident_account("ZZZZZZZZ", "premium"), 300)],
            rule_edition="seed", parameters={}, sources=[],
        )  # fmt: skip

    report = reconcile(
        provider=wallet,
        acknowledgements=[
            (g1.pk, f"W-{g1.pk}", 5000),  # agrees
            (g2.pk, f"W-{g2.pk}", 2500),  # the ledger says 2,000
            (g4.pk, f"W-{g4.pk}", 1000),  # never acknowledged
            (999_999, "W-X", 100),  # never instructed
            (g1.pk, f"W-{g1.pk}", 5000),  # twice
            (g5.pk, "OTHER", 100),  # another reference, and the ledger says 100
        ],  # g3 is missing from the provider's list
    )
    kinds = report.counts()
    assert kinds == {
        DiscrepancyKind.ACKNOWLEDGED_TWICE: 1,
        DiscrepancyKind.AMOUNT_DIFFERS: 1,
        DiscrepancyKind.MISSING_FROM_PROVIDER: 1,
        DiscrepancyKind.NOT_IN_LEDGER: 1,
        DiscrepancyKind.UNKNOWN_GRANT: 1,
        DiscrepancyKind.REFERENCE_DIFFERS: 1,
        DiscrepancyKind.LEDGER_INCONSISTENT: 1,
    }, [d.message for d in report.discrepancies]
    by_kind = {d.kind: d for d in report.discrepancies}
    assert by_kind[DiscrepancyKind.AMOUNT_DIFFERS].grant_id == g2.pk
    assert (by_kind[DiscrepancyKind.AMOUNT_DIFFERS].ours, by_kind[DiscrepancyKind.AMOUNT_DIFFERS].theirs) == (
        2000,
        2500,
    )
    assert "元帳 2000、事業者 2500" in by_kind[DiscrepancyKind.AMOUNT_DIFFERS].message
    assert by_kind[DiscrepancyKind.MISSING_FROM_PROVIDER].grant_id == g3.pk
    assert "事業者の一覧にありません" in by_kind[DiscrepancyKind.MISSING_FROM_PROVIDER].message
    assert by_kind[DiscrepancyKind.NOT_IN_LEDGER].grant_id == g4.pk
    assert by_kind[DiscrepancyKind.UNKNOWN_GRANT].grant_id == 999_999
    assert by_kind[DiscrepancyKind.ACKNOWLEDGED_TWICE].grant_id == g1.pk
    assert by_kind[DiscrepancyKind.REFERENCE_DIFFERS].grant_id == g5.pk
    assert "対応する付与がありません" in by_kind[DiscrepancyKind.LEDGER_INCONSISTENT].message
    assert (report.ledger_count, report.provider_count, report.matched) == (4, 6, 0)

    # the same as the provider's CSV (Shift_JIS, as Excel saves it), for July only, with a row it cannot read
    sheet = (
        "付与ID,参照番号,ポイント\r\n"
        f'{g1.pk},W-{g1.pk},"5,000"\r\n'
        f"{g2.pk},W-{g2.pk},2000\r\n"
        f"{g5.pk},W-{g5.pk},100\r\n"
        "abc,W-?,1\r\n"
        f"{g3.pk},W-{g3.pk},△1000\r\n"
    ).encode("cp932")
    july = reconcile_csv(provider=wallet, data=sheet, period=JULY)
    assert july.counts() == {
        DiscrepancyKind.UNREADABLE_ROW: 1,
        DiscrepancyKind.AMOUNT_DIFFERS: 1,
        DiscrepancyKind.OTHER_PERIOD: 1,
        DiscrepancyKind.LEDGER_INCONSISTENT: 1,
    }, [d.message for d in july.discrepancies]
    unreadable, *_ = july.discrepancies
    assert (unreadable.kind, unreadable.lines) == (DiscrepancyKind.UNREADABLE_ROW, (5,))
    differs = next(d for d in july.discrepancies if d.kind == DiscrepancyKind.AMOUNT_DIFFERS)
    assert (differs.grant_id, differs.theirs, differs.lines) == (g3.pk, -1000, (6,))
    assert next(d for d in july.discrepancies if d.kind == DiscrepancyKind.OTHER_PERIOD).grant_id == g5.pk
    assert july.matched == 2

    exported = reconciliation_csv(july).decode("utf-8-sig")
    assert "読取不能" in exported
    assert "ポイント相違" in exported

    clean = reconcile(
        provider=wallet,
        acknowledgements=[ProviderAcknowledgement(g.pk, f"W-{g.pk}", g.amount) for g in (g1, g2, g3)],
        period=JULY,
    )
    assert [d.kind for d in clean.discrepancies] == [DiscrepancyKind.LEDGER_INCONSISTENT]
    reused = reconcile(provider=wallet, acknowledgements=[(g1.pk, "SAME", 5000), (g2.pk, "SAME", 2000)])
    assert reused.counts()[DiscrepancyKind.REFERENCE_REUSED] == 1
    assert f"付与ID {g1.pk}、{g2.pk}" in reused.discrepancies[0].message


# ------------------------------------------------------------------------------ two fixes of one claim at once


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_two_fixes_of_one_claim_at_once_fix_it_once(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    """Both threads start together; the provider's settlement lock (SQLite: BEGIN IMMEDIATE) makes the second
    wait for the first to commit, and then find the claim fixed. Its postings are settled once."""
    wallet = providers["wallet"]
    for _, grant in _granted(make_resident, [20000, 8000]):
        _ack(grant, wallet, at(7, 3))
    draft = compute_monthly_claim(provider=wallet, month=JULY, now=at(8, 1), who=OFFICE)
    start = threading.Barrier(2)
    results: dict[str, Claim | BaseException] = {}

    def fixing(name: str) -> None:
        try:
            start.wait(10)
            results[name] = fix_claim(claim=draft, now=at(8, 2), who=OFFICE)
        except BaseException as error:  # reported below
            results[name] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=fixing, args=(name,), name=name) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    fixed = [r for r in results.values() if isinstance(r, Claim)]
    refused = [r for r in results.values() if isinstance(r, SettlementError)]
    assert (len(fixed), len(refused)) == (1, 1), results
    assert refused[0].code == "already_fixed"
    assert ClaimItem.objects.count() == 2
    assert AuditEvent.objects.filter(action="claim_fixed").count() == 1
    assert verify_claim(claim=fixed[0]) == []


@pytest.mark.postgres("SQLite has no row or advisory locks (IMMEDIATE serialises the writers)")
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("flushable")
def test_a_settlement_in_progress_holds_up_other_settlements_of_the_provider_not_its_applications(
    providers: dict[str, Provider],
) -> None:
    """While one transaction settles a provider, another connection can read the provider's row under FOR
    SHARE at once (what an application does, Q14) but cannot take the provider's settlement lock."""
    import psycopg

    from mynapoint.settlement.services import SETTLEMENT_LOCKS, _lock_provider

    wallet = providers["wallet"]
    params = connection.get_connection_params()
    other = psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}, autocommit=True)
    try:
        with transaction.atomic():
            _lock_provider(wallet)
            table = Provider._meta.db_table
            row = other.execute(f"SELECT id FROM {table} WHERE id = %s FOR SHARE NOWAIT", [wallet.pk])  # noqa: S608
            assert row.fetchall() == [(wallet.pk,)]  # an application does not wait
            taken = other.execute("SELECT pg_try_advisory_lock(%s, %s)", [SETTLEMENT_LOCKS, wallet.pk])
            assert taken.fetchone() == (False,)  # another settlement of this provider does
        taken = other.execute("SELECT pg_try_advisory_lock(%s, %s)", [SETTLEMENT_LOCKS, wallet.pk])
        assert taken.fetchone() == (True,)  # released with the transaction
    finally:
        other.close()
