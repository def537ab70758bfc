"""CSV feeds: registrations and renewals from files, row by row, idempotent, with a report that says where."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support import FEED, NOW, SELF, card_login

from mynapoint.applications.imports import (
    ImportReport,
    import_card_facts_csv,
    import_health_insurance_csv,
    import_public_fund_csv,
    import_renewals_csv,
)
from mynapoint.applications.models import HealthInsuranceRegistration, PublicFundRegistration
from mynapoint.applications.selectors import resident_status
from mynapoint.applications.services import apply_for_measure
from mynapoint.audit.selectors import verify_chain
from mynapoint.identity.jpki.card import SoftwareCard
from mynapoint.identity.models import Certificate, CertificateRenewal, Resident
from mynapoint.providers.models import Provider

pytestmark = pytest.mark.django_db

MY_NUMBER = "123456789018"  # a valid check digit: what a My Number looks like
HEALTH_HEADER = "mykey_id,registered_at,external_id,source"
FUND_HEADER = (
    "mykey_id,registered_at,external_id,source,bank_code,branch_code,account_type,account_number,holder_kana"
)


def write(tmp_path: Path, lines: list[str], *, encoding: str = "utf-8", name: str = "feed.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    return path


def summary(report: ImportReport) -> tuple[list[int], list[int], list[tuple[int, str]]]:
    return (
        [r.line for r in report.created],
        [r.line for r in report.unchanged],
        [(e.line, e.column) for e in report.errors],
    )


@pytest.fixture
def hanako(make_resident: Callable[..., Resident]) -> Resident:
    return make_resident(kana="ヤマダ ハナコ")


# ------------------------------------------------------------------------------------------- health insurance


def test_health_insurance_rows_are_recorded_once_and_a_rerun_changes_nothing(
    tmp_path: Path, hanako: Resident, make_resident: Callable[..., Resident]
) -> None:
    taro = make_resident(kana="タナカ タロウ")
    path = write(
        tmp_path,
        [
            HEALTH_HEADER,
            f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,oqs-1,oqs",
            "",  # blank lines are skipped
            f"{taro.mykey_id},2022-07-02T01:00:00Z,oqs-2,oqs",
        ],
    )
    report = import_health_insurance_csv(path, now=NOW, who=FEED)
    assert report.ok, report.errors
    assert (report.encoding, report.rows) == ("utf-8", 2)
    assert summary(report) == ([2, 4], [], [])
    assert [r.key for r in report.created] == ["oqs-1", "oqs-2"]
    stored = HealthInsuranceRegistration.objects.get(external_id="oqs-2")
    assert (stored.resident, stored.registered_at) == (taro, dt.datetime(2022, 7, 2, 1, 0, tzinfo=dt.UTC))

    again = import_health_insurance_csv(path, now=NOW + dt.timedelta(days=1), who=FEED)
    assert summary(again) == ([], [2, 4], [])
    assert HealthInsuranceRegistration.objects.count() == 2
    assert verify_chain().ok


def test_a_bad_row_loses_nothing_before_or_after_it_and_says_where(tmp_path: Path, hanako: Resident) -> None:
    path = write(
        tmp_path,
        [
            HEALTH_HEADER,
            f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,oqs-1,oqs",
            "NOBODY99,2022-07-01T10:00:00+09:00,oqs-2,oqs",
            f"{hanako.mykey_id},2022-07-01 10:00:00,oqs-3,oqs",
            f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,oqs-4",
            f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,,oqs",
            f"{hanako.mykey_id},yesterday,oqs-6,oqs",
            f"{hanako.mykey_id},2022-07-03T10:00:00+09:00,oqs-1,oqs",  # oqs-1 again, another time
            f"{hanako.mykey_id},2022-07-02T10:00:00+09:00,oqs-8,oqs",
        ],
    )
    report = import_health_insurance_csv(path, now=NOW, who=FEED)
    assert summary(report) == (
        [2, 9],
        [],
        [
            (3, "mykey_id"),
            (4, "registered_at"),
            (5, ""),
            (6, "external_id"),
            (7, "registered_at"),
            (8, "external_id"),
        ],
    )
    errors = {e.line: e for e in report.errors}
    assert "NOBODY99" in errors[3].message_en
    assert "タイムゾーン" in errors[4].message_ja
    assert "+09:00" in errors[4].message_en
    assert "3 fields where the header has 4" in errors[5].message_en
    assert "already exists with other facts" in errors[8].message_en
    assert errors[8].message == f"{errors[8].message_ja} / {errors[8].message_en}"
    assert set(HealthInsuranceRegistration.objects.values_list("external_id", flat=True)) == {
        "oqs-1",
        "oqs-8",
    }


def test_a_my_number_anywhere_refuses_its_row_and_is_never_repeated(tmp_path: Path, hanako: Resident) -> None:
    path = write(
        tmp_path,
        [
            HEALTH_HEADER,
            f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,oqs-1,{MY_NUMBER}",
            f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,{MY_NUMBER[:4]}-{MY_NUMBER[4:8]}-{MY_NUMBER[8:]},oqs",
            f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,oqs-3,oqs",
        ],
    )
    report = import_health_insurance_csv(path, now=NOW, who=FEED)
    assert summary(report) == ([4], [], [(2, "source"), (3, "external_id")])
    assert "マイナンバー" in report.errors[0].message_ja
    dumped = json.dumps(report.as_dict(), ensure_ascii=False)
    assert MY_NUMBER not in dumped
    assert MY_NUMBER[4:8] not in dumped
    assert HealthInsuranceRegistration.objects.count() == 1


@pytest.mark.parametrize(
    ("header", "columns"),
    [
        ("mykey_id,registered_at,external_id", ["source"]),
        ("mykey_id,registered_at,external_id,source,memo", ["memo"]),
        ("mykey_id,registered_at,external_id,source,source", ["source"]),
        ("mykey_id,registered_at,external_id,sauce", ["sauce", "source"]),
    ],
)
def test_a_wrong_header_is_an_error_naming_the_column_and_nothing_is_recorded(
    tmp_path: Path, hanako: Resident, header: str, columns: list[str]
) -> None:
    path = write(tmp_path, [header, f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,oqs-1,oqs"])
    report = import_health_insurance_csv(path, now=NOW, who=FEED)
    assert sorted(e.column for e in report.errors) == columns
    assert all(e.line == 1 for e in report.errors)
    assert report.created == []
    assert HealthInsuranceRegistration.objects.count() == 0


def test_files_that_cannot_be_read_are_one_error(tmp_path: Path, db: None) -> None:
    empty = write(tmp_path, [], name="empty.csv")
    assert [e.line for e in import_health_insurance_csv(empty, now=NOW, who=FEED).errors] == [1]
    garbled = tmp_path / "garbled.csv"
    garbled.write_bytes(HEALTH_HEADER.encode() + b"\r\n\x81\x39,x,y,z\r\n")
    report = import_health_insurance_csv(garbled, now=NOW, who=FEED)
    assert [e.message_en for e in report.errors] == ["the file is neither UTF-8 nor CP932 (byte 43)"]
    missing = import_health_insurance_csv(tmp_path / "nowhere.csv", now=NOW, who=FEED)
    assert missing.errors[0].message_ja == "ファイルを読めません"


def test_progress_is_reported_row_by_row(tmp_path: Path, hanako: Resident) -> None:
    path = write(
        tmp_path,
        [HEALTH_HEADER, *(f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,oqs-{i},oqs" for i in range(3)), "x"],
    )
    seen: list[tuple[int, int]] = []
    report = import_health_insurance_csv(path, now=NOW, who=FEED, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert summary(report) == ([2, 3, 4], [], [(5, "")])


# ------------------------------------------------------------------------------------------- public fund


def test_public_fund_rows_are_checked_and_recorded_in_utf8_with_bom_or_cp932(
    tmp_path: Path, providers: dict[str, Provider], hanako: Resident
) -> None:
    rows = [
        FUND_HEADER,
        f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,mp-1,マイナポータル,0001,001,1,1234567,ﾔﾏﾀﾞ ﾊﾅｺ",
        f"{hanako.mykey_id},2022-07-01T11:00:00+09:00,mp-2,マイナポータル,0001,001,1,7654321,ﾔﾏﾀﾞ ﾀﾛｳ",
    ]
    for encoding, name in (("utf-8-sig", "bom.csv"), ("cp932", "sjis.csv")):
        report = import_public_fund_csv(
            write(tmp_path, rows, encoding=encoding, name=name), now=NOW, who=FEED
        )
        assert report.encoding == encoding
        if encoding == "utf-8-sig":
            assert summary(report) == ([2, 3], [], [])
            assert [r.outcome for r in report.created] == ["accepted", "rejected: holder_name_mismatch"]
        else:  # the same rows again, in the other encoding: already recorded
            assert summary(report) == ([], [2, 3], [])
    stored = PublicFundRegistration.objects.get(external_id="mp-1")
    assert (stored.source, stored.holder_kana, stored.holder_checked) == ("マイナポータル", "ﾔﾏﾀﾞ ﾊﾅｺ", True)
    assert PublicFundRegistration.objects.get(external_id="mp-2").rejection_code == "holder_name_mismatch"


def test_a_public_fund_registration_from_the_feed_earns_once_applied(
    tmp_path: Path, providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    taro = make_resident(kana="タナカ タロウ", accounts={"wallet/6001": ["1"]})
    result = apply_for_measure(
        resident=taro, measure="public_fund", provider_key="wallet", service_id="6001", security_codes=["1"],
        mode="charge", operated_by=None, present=[], now=NOW, who=SELF,
    )  # fmt: skip
    assert result.accepted
    path = write(
        tmp_path,
        [FUND_HEADER, f"{taro.mykey_id},2022-07-01T12:00:00+09:00,mp-9,e-Tax,0005,001,1,0000001,ﾀﾅｶ ﾀﾛｳ"],
    )
    assert import_public_fund_csv(path, now=NOW, who=FEED).ok
    assert resident_status(taro, as_of=dt.date(2022, 7, 2)).public_fund == 7500


@pytest.mark.parametrize(
    ("cells", "column", "hint"),
    [
        ("1,001,1,1234567,ﾔﾏﾀﾞ ﾊﾅｺ", "bank_code", "leading zeros"),
        ("0002,001,1,1234567,ﾔﾏﾀﾞ ﾊﾅｺ", "bank_code", "unknown bank code"),
        ("0001,999,1,1234567,ﾔﾏﾀﾞ ﾊﾅｺ", "branch_code", "has no branch"),
        ("0001,01,1,1234567,ﾔﾏﾀﾞ ﾊﾅｺ", "branch_code", "3 digits"),
        ("0001,001,3,1234567,ﾔﾏﾀﾞ ﾊﾅｺ", "account_type", "1, 2 or 4"),
        ("0001,001,1,123456,ﾔﾏﾀﾞ ﾊﾅｺ", "account_number", "7 digits"),
        ("0001,001,1,1234567,", "holder_kana", "required"),
        (f"0001,001,1,1234567,ﾔﾏﾀﾞ {MY_NUMBER}", "holder_kana", "My Number"),
    ],
)
def test_a_bad_bank_account_is_an_error_on_its_column(
    tmp_path: Path, providers: dict[str, Provider], hanako: Resident, cells: str, column: str, hint: str
) -> None:
    path = write(tmp_path, [FUND_HEADER, f"{hanako.mykey_id},2022-07-01T10:00:00+09:00,mp-1,mp,{cells}"])
    report = import_public_fund_csv(path, now=NOW, who=FEED)
    assert summary(report) == ([], [], [(2, column)])
    assert hint in report.errors[0].message_en
    assert MY_NUMBER not in json.dumps(report.as_dict(), ensure_ascii=False)
    assert PublicFundRegistration.objects.count() == 0


# ------------------------------------------------------------------------------------------- renewals


def test_renewal_notices_keep_the_mykey_id_and_merge_a_duplicate(
    tmp_path: Path,
    make_card: Callable[..., SoftwareCard],
    make_resident: Callable[..., Resident],
) -> None:
    hanako = make_resident()
    taro = make_resident(kana="タナカ タロウ")
    early, _ = card_login(make_card())  # a renewed card that logged in before its notice: a duplicate
    old_h, old_t = Certificate.objects.get(resident=hanako), Certificate.objects.get(resident=taro)
    new_t = Certificate.objects.get(resident=early)
    new_h_serial = "7f:00:00:01"
    path = write(
        tmp_path,
        [
            "old_issuer,old_serial,new_issuer,new_serial",
            f'"{old_h.issuer}",{old_h.serial.upper()},"{old_h.issuer}",{new_h_serial}',
            f'"{old_t.issuer}",{old_t.serial},"{new_t.issuer}",{new_t.serial}',
            f'"{old_t.issuer}",{old_t.serial},"{old_t.issuer}",7F00000',
        ],
    )
    report = import_renewals_csv(path, now=NOW, who=FEED)
    assert summary(report) == ([2, 3], [], [(4, "new_serial")])
    assert [r.outcome for r in report.created] == ["waiting_for_first_login", "merged"]
    assert report.created[0].key == f"{old_h.serial} → {new_h_serial}"
    early.refresh_from_db()
    assert early.merged_into == taro
    assert CertificateRenewal.objects.filter(new_serial=new_h_serial).exists()

    again = import_renewals_csv(path, now=NOW, who=FEED)
    assert summary(again) == ([], [2, 3], [(4, "new_serial")])
    assert [r.outcome for r in again.unchanged] == ["already_known", "already_known"]
    assert verify_chain().ok


def test_a_new_certificate_renewed_from_two_old_ones_is_refused_on_its_row(
    tmp_path: Path, make_resident: Callable[..., Resident]
) -> None:
    hanako = make_resident()
    old = Certificate.objects.get(resident=hanako)
    path = write(
        tmp_path,
        [
            "old_issuer,old_serial,new_issuer,new_serial",
            f'"{old.issuer}",{old.serial},"{old.issuer}",7f:01',
            f'"{old.issuer}",7e:01,"{old.issuer}",7f:01',
        ],
    )
    report = import_renewals_csv(path, now=NOW, who=FEED)
    assert summary(report) == ([2], [], [(3, "new_serial")])
    assert "already recorded as the renewal of another" in report.errors[0].message_en


# ------------------------------------------------------------------------------------------- card facts (J-LIS)

CARD_HEADER = "mykey_id,card_applied,card_applied_online,card_issued"


def test_card_facts_from_jlis_let_a_resident_apply_and_a_rerun_changes_nothing(
    tmp_path: Path, providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    """Without J-LIS's card facts a resident counts as never having applied for her card; once the feed has
    them she can apply. The same file again changes nothing."""
    taro = make_resident(kana="タナカ タロウ", card_applied=None, accounts={"wallet/7001": ["1"]})

    def apply() -> str | None:
        return apply_for_measure(
            resident=taro, measure="premium", provider_key="wallet", service_id="7001", security_codes=["1"],
            mode="charge", operated_by=None, present=[], now=NOW, who=SELF,
        ).code  # fmt: skip

    assert apply() == "card_applied_after_deadline"
    path = write(tmp_path, [CARD_HEADER, f"{taro.mykey_id},2022-06-01,1,2022-06-20"])
    report = import_card_facts_csv(path, now=NOW, who=FEED)
    assert summary(report) == ([2], [], [])
    assert report.created[0].outcome == "issued"
    taro.refresh_from_db()
    assert (taro.card_applied, taro.card_applied_online, taro.card_issued) == (
        dt.date(2022, 6, 1), True, dt.date(2022, 6, 20),
    )  # fmt: skip
    assert summary(import_card_facts_csv(path, now=NOW, who=FEED)) == ([], [2], [])
    assert apply() is None  # accepted
    assert verify_chain().ok


def test_card_facts_are_replaced_by_newer_ones_and_an_unknown_issue_day_keeps_the_recorded_one(
    tmp_path: Path, hanako: Resident, make_resident: Callable[..., Resident]
) -> None:
    login_issued = hanako.card_issued  # the first login recorded it from the certificate
    assert login_issued is not None
    path = write(tmp_path, [CARD_HEADER, f"{hanako.mykey_id},2021-10-15,0,"], name="applied.csv")
    assert summary(import_card_facts_csv(path, now=NOW, who=FEED)) == ([2], [], [])
    hanako.refresh_from_db()
    assert (hanako.card_applied, hanako.card_issued) == (dt.date(2021, 10, 15), login_issued)
    # the merged duplicate's MyKey ID gives its facts to the resident it was merged into
    duplicate = make_resident(kana="ヤマダ ハナコ")
    Resident.objects.filter(pk=duplicate.pk).update(merged_into=hanako)
    path = write(tmp_path, [CARD_HEADER, f"{duplicate.mykey_id},2021-10-15,0,2021-11-30"], name="issued.csv")
    report = import_card_facts_csv(path, now=NOW, who=FEED)
    assert summary(report) == ([2], [], [])
    assert report.created[0].outcome == f"issued (merged into {hanako.mykey_id})"
    hanako.refresh_from_db()
    assert hanako.card_issued == dt.date(2021, 11, 30)


@pytest.mark.parametrize(
    ("cells", "column", "hint"),
    [
        ("2022-13-01,0,", "card_applied", "YYYY-MM-DD"),
        ("2022/06/01,0,", "card_applied", "YYYY-MM-DD"),
        (",0,", "card_applied", "required"),
        ("2022-06-01,yes,", "card_applied_online", "1 or 0"),
        ("2022-06-01,0,2022-05-31", "card_issued", "before card_applied"),
        ("2022-06-01,0,2022-07-02", "card_issued", "after today"),
        ("2022-07-02,0,", "card_applied", "after today"),
        ("2022-07-01,0,", "card_applied", "recorded"),  # after the issue day recorded before
    ],
)
def test_bad_card_facts_are_an_error_on_their_column_and_keep_what_was_recorded(
    tmp_path: Path, hanako: Resident, cells: str, column: str, hint: str
) -> None:
    Resident.objects.filter(pk=hanako.pk).update(card_issued=dt.date(2022, 1, 10))
    path = write(tmp_path, [CARD_HEADER, f"{hanako.mykey_id},{cells}", f"{hanako.mykey_id},2021-11-01,0,"])
    report = import_card_facts_csv(path, now=NOW, who=FEED)
    assert summary(report)[2] == [(2, column)]
    assert hint in report.errors[0].message_en
    assert summary(report)[:2] == ([], [3])  # the good row after it: the facts already recorded
    hanako.refresh_from_db()
    assert (hanako.card_applied, hanako.card_issued) == (dt.date(2021, 11, 1), dt.date(2022, 1, 10))


def test_card_facts_refuse_an_unknown_mykey_id_and_a_my_number(tmp_path: Path, hanako: Resident) -> None:
    path = write(
        tmp_path,
        [
            CARD_HEADER,
            "ZZZZZZZZ,2021-11-01,0,",
            f"{MY_NUMBER},2021-11-01,0,",
            f"{hanako.mykey_id},2021-11-01,0,",
        ],
        encoding="cp932",
    )
    report = import_card_facts_csv(path, now=NOW, who=FEED)
    assert summary(report) == ([], [4], [(2, "mykey_id"), (3, "mykey_id")])
    assert MY_NUMBER not in json.dumps(report.as_dict(), ensure_ascii=False)
    assert report.encoding == "utf-8"  # ASCII only: read as UTF-8
