"""The batch grant engine's own reading and writing: PostgreSQL's COPY reads the same facts as the ORM, what it
writes (CSV and JSON) keeps any text a provider sends as a transaction id, and a key another run took first is
retried, not posted twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from support import FEED, NOW, SELF

from mynapoint.applications.models import PaymentAccount
from mynapoint.applications.services import apply_for_measure, record_death
from mynapoint.grants import batch
from mynapoint.grants.batch import run_grants_batch
from mynapoint.grants.models import Grant
from mynapoint.grants.selectors import verify_programme_ledger
from mynapoint.grants.services import grant_due_points
from mynapoint.identity.models import Resident
from mynapoint.ledger.models import Entry
from mynapoint.providers.models import Provider, ProviderTransaction

pytestmark = pytest.mark.django_db

ODD_TXIDS = ['a,"q"\\b', "tab\there", "new\nline\r", "\\N", "ポイント😀", "{}[]'"]


def _linked(make_resident: Callable[..., Resident], n: int) -> tuple[Resident, PaymentAccount]:
    resident = make_resident(kana=f"テスト ジン{n}", accounts={f"wallet/F{n}": ["1"]})
    apply_for_measure(resident=resident, measure="premium", provider_key="wallet", service_id=f"F{n}",
                      security_codes=["1"], mode="charge", operated_by=None, present=[], now=NOW, who=SELF)  # fmt: skip
    return resident, PaymentAccount.objects.get(service_id=f"F{n}")


def _charge(account: PaymentAccount, txid: str, at: dt.datetime, amount: int = 1000) -> None:
    ProviderTransaction.objects.create(provider=account.provider, txid=txid, account=account, kind="charge",
                                       amount=amount, at=at, recorded_at=at)  # fmt: skip


def test_an_entry_names_its_transactions_in_time_order_with_their_ids_as_sent(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    resident, account = _linked(make_resident, 1)
    late = NOW + dt.timedelta(days=20)
    _charge(account, "late", late)  # the lowest id, the latest time
    for day, txid in enumerate(ODD_TXIDS, start=1):
        _charge(account, txid, NOW + dt.timedelta(days=day, microseconds=day))
    report = run_grants_batch(today=dt.date(2022, 8, 31), now=NOW + dt.timedelta(days=60), who=FEED)
    assert (report.grants, report.points) == (1, (len(ODD_TXIDS) + 1) * 1000 * 25 // 100)
    entry = Entry.objects.get(idempotency_key=f"grant:{resident.mykey_id}:premium:1")
    wallet = providers["wallet"].pk
    assert entry.sources == [
        f"application:premium:{resident.mykey_id}",
        *(f"transaction:{wallet}:{txid}" for txid in [*ODD_TXIDS, "late"]),
    ]
    assert Grant.objects.get().account_id == account.pk
    assert verify_programme_ledger().ok, verify_programme_ledger().problems


@pytest.mark.postgres("the COPY path is PostgreSQL's; elsewhere the ORM path is the only one")
def test_copy_reads_the_same_facts_as_the_orm(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> None:
    resident, account = _linked(make_resident, 2)
    record_death(resident=resident, died=dt.date(2022, 9, 3), now=NOW, who=FEED)
    make_resident(kana="テスト フェーズ", phase1_applied=dt.date(2021, 5, 1), phase1_account="wallet/F2",
                  phase1_points=3000, phase1_mode="charge")  # fmt: skip
    for n, txid in enumerate(ODD_TXIDS):  # times on both sides of a JST midnight, to the microsecond
        _charge(
            account,
            txid,
            dt.datetime(2022, 7, 1, 14, 59, 59, 999_999 - n, tzinfo=dt.UTC) + dt.timedelta(days=n % 2),
        )
    run_grants_batch(today=dt.date(2022, 8, 31), now=NOW, who=FEED)  # grants already instructed are read too
    assert Grant.objects.exists()
    read = batch._read(list(batch._COLUMNS))
    queries = batch._queries()
    for name, schema in batch._COLUMNS.items():
        rows = [tuple(batch._plain(v) for v in row) for row in queries[name]]
        expected = pl.DataFrame(rows, schema=schema, orient="row").sort(pl.all())
        assert read[name].sort(pl.all()).equals(expected), name


def test_a_grant_posted_by_another_run_meanwhile_is_not_posted_twice(
    providers: dict[str, Provider], make_resident: Callable[..., Resident], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, account = _linked(make_resident, 3)
    second, other = _linked(make_resident, 4)
    _charge(account, "x1", NOW + dt.timedelta(days=1))
    _charge(other, "x2", NOW + dt.timedelta(days=1))
    today, dues = dt.date(2022, 8, 31), batch._dues

    def computed_then_overtaken(*args: Any, **kwargs: Any) -> pl.DataFrame:
        found = dues(*args, **kwargs)
        grant_due_points(resident=first, today=today, now=NOW, who=FEED)  # the other run posts first
        return found

    monkeypatch.setattr(batch, "_dues", computed_then_overtaken)
    report = run_grants_batch(today=today, now=NOW, who=FEED)
    assert report.retried >= 1
    assert not report.errors
    assert sorted(Grant.objects.values_list("resident__mykey_id", "ordinal", "amount")) == sorted(
        [(first.mykey_id, 1, 250), (second.mykey_id, 1, 250)]
    )
    assert verify_programme_ledger().ok, verify_programme_ledger().problems
