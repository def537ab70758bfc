"""Simultaneous point applications: the row locks of ``apply_for_measure`` keep the programme's invariants,
and a control test per lock shows the race it prevents.

1. One payment account serves one person: a parent and the 16-year-old child they represent apply at once with
   the parent's account (the child with the parent present). The account row is the lock.
2. One application per measure per person: one resident applies twice at once (a double submit, with the same
   account or with two). The resident row is the lock.

The interleaving is made deterministic by the after-read seam (``concurrency_hooks``): each thread, with its
own database connection, waits after reading the facts until the other has read too. Without the locks both
pass the rule checks on the same facts; with them the second thread waits on the first's row lock, and
PostgreSQL shows it waiting. Every test runs the race ``ROUNDS`` times, in one test with new residents and
accounts each round (the flush that ends a transactional test costs more than a round).

The payment account exists before the race, as it does after any earlier application with it: creating it in
the race would make the second thread wait on the unique index of ``account_once`` before it reads, which
serialises the two on its own and hides the race.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from concurrency_hooks import AFTER_READ, LockWait, RaceOutcome, race
from django.db import IntegrityError, connection
from pytest_django import Settings
from support import NOW, SELF

from mynapoint.applications.models import ApplicationStatus, PaymentAccount, PointApplication
from mynapoint.applications.services import ApplicationResult, apply_for_measure
from mynapoint.audit.selectors import verify_chain
from mynapoint.identity.models import Resident
from mynapoint.providers.models import Provider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("flushable")]

ROUNDS = 5
# How long the first thread waits at the barrier for the second. With the locks on, PostgreSQL breaks the
# barrier as soon as the second thread is seen waiting on the first's lock; SQLite gives no such sign, so
# there the first thread waits this long for a second one held at BEGIN IMMEDIATE. Without the locks both
# threads come at once.
SQLITE_WAIT = 1.0
POSTGRES_WAIT = 30.0
SQLITE_SERIALISES = (
    "SQLite serialises all writers: BEGIN IMMEDIATE takes the database's write lock before anything is read, "
    "so without the row locks there is still no race to show"
)


@pytest.fixture
def racing(settings: Settings) -> None:
    settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK = AFTER_READ


@pytest.fixture
def without_locks(settings: Settings) -> None:
    settings.MYNAPOINT_APPLICATION_LOCKS = False


def run_rounds(one_round: Callable[[int], None]) -> None:
    for number in range(1, ROUNDS + 1):
        try:
            one_round(number)
        except AssertionError as failure:
            failure.add_note(f"(in round {number} of {ROUNDS})")
            raise


def barrier_timeout() -> float:
    return POSTGRES_WAIT if connection.vendor == "postgresql" else SQLITE_WAIT


def applying(
    resident: Resident,
    account: PaymentAccount,
    codes: list[str],
    *,
    mode: str,
    present: list[Resident] | None = None,
    measure: str = "premium",
) -> Callable[[], ApplicationResult]:
    def call() -> ApplicationResult:
        return apply_for_measure(
            resident=resident,
            measure=measure,
            provider_key=account.provider.key,
            service_id=account.service_id,
            security_codes=codes,
            mode=mode,
            operated_by=None,
            present=present or [],
            now=NOW,
            who=SELF,
        )

    return call


def decided(outcome: RaceOutcome[ApplicationResult]) -> tuple[str, str]:
    """(winner, loser) of a race both of whose calls returned a decision, exactly one accepted."""
    assert outcome.errors == {}, outcome.errors
    accepted = sorted(name for name, result in outcome.results.items() if result.accepted)
    assert len(accepted) == 1, (
        {name: (r.accepted, r.code) for name, r in outcome.results.items()},
        outcome.lock_waits,  # a wait here and two acceptances: the waiter decided on what it read before
    )
    (loser,) = set(outcome.results) - set(accepted)
    return accepted[0], loser


def assert_serialised_by_the_lock(outcome: RaceOutcome[ApplicationResult], winner: str, loser: str) -> None:
    assert outcome.met == (), "with the locks on, no thread may read before the other has committed"
    assert sorted(outcome.alone) == sorted([winner, loser])
    if connection.vendor == "postgresql":
        assert outcome.lock_waits == (LockWait(waiter=loser, holder=winner),)


# ------------------------------------------------------------------------ one account serves one person


Family = tuple[Resident, Resident, PaymentAccount, dict[str, Callable[[], ApplicationResult]]]


@pytest.fixture
def parent_and_child(
    providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> Callable[[int], Family]:
    """A parent and their 16-year-old child, both applying for the premium measure with the parent's account
    (the child with the parent present): the rules accept either alone."""

    def make(number: int) -> Family:
        service_id = f"700{number}"
        parent = make_resident(
            kana="ヤマダ タロウ", born=dt.date(1980, 1, 1), accounts={f"wallet/{service_id}": ["9"]}
        )
        child = make_resident(kana="ヤマダ ジロウ", born=dt.date(2006, 3, 1), legal_representative=parent)
        account = PaymentAccount.objects.create(provider=providers["wallet"], service_id=service_id)
        calls = {
            "parent": applying(parent, account, ["9"], mode="charge"),
            "child": applying(child, account, ["9"], mode="charge", present=[child, parent]),
        }
        return parent, child, account, calls

    return make


def test_parent_and_child_applying_at_once_with_one_account_link_it_to_one_of_them(
    racing: None, parent_and_child: Callable[[int], Family]
) -> None:
    def one_round(number: int) -> None:
        parent, child, account, calls = parent_and_child(number)
        outcome = race(calls, barrier_timeout=barrier_timeout())
        winner, loser = decided(outcome)
        assert outcome.results[loser].code == "account_linked_to_another_person"
        assert_serialised_by_the_lock(outcome, winner, loser)
        account.refresh_from_db()
        assert account.linked_resident == {"parent": parent, "child": child}[winner]
        accepted = PointApplication.objects.filter(account=account, status=ApplicationStatus.ACCEPTED)
        assert accepted.count() == 1

    run_rounds(one_round)
    assert verify_chain().ok


@pytest.mark.postgres(SQLITE_SERIALISES)
def test_control_without_the_account_lock_parent_and_child_both_get_the_account(
    without_locks: None, racing: None, parent_and_child: Callable[[int], Family]
) -> None:
    def one_round(number: int) -> None:
        parent, child, account, calls = parent_and_child(number)
        outcome = race(calls, barrier_timeout=barrier_timeout())
        assert outcome.met == ("child", "parent"), "both read the unlinked account before either wrote"
        assert outcome.errors == {}
        assert {name: (r.accepted, r.code) for name, r in outcome.results.items()} == {
            "parent": (True, None),
            "child": (True, None),
        }
        holders = PointApplication.objects.filter(
            account=account, status=ApplicationStatus.ACCEPTED
        ).values_list("resident", flat=True)
        assert sorted(holders) == sorted([parent.pk, child.pk]), "one account now serves two people"
        account.refresh_from_db()
        assert account.linked_resident in (parent, child)  # whoever committed last overwrote the link

    run_rounds(one_round)


# ------------------------------------------------------------------------ one application per measure


DoubleSubmit = tuple[Resident, dict[str, Callable[[], ApplicationResult]]]


@pytest.fixture(params=["same account", "two accounts"])
def double_submit(
    request: pytest.FixtureRequest, providers: dict[str, Provider], make_resident: Callable[..., Resident]
) -> Callable[[int], DoubleSubmit]:
    """One resident's two simultaneous applications for the premium measure: a double submit with one account,
    or two tabs with two accounts (then only the resident row serialises them)."""

    def make(number: int) -> DoubleSubmit:
        wallet_id, card_id = f"810{number}", f"820{number}"
        taro = make_resident(
            kana="タナカ タロウ", accounts={f"wallet/{wallet_id}": ["1111"], f"card/{card_id}": ["22", "33"]}
        )
        wallet = PaymentAccount.objects.create(provider=providers["wallet"], service_id=wallet_id)
        card = PaymentAccount.objects.create(provider=providers["card"], service_id=card_id)
        second = (
            applying(taro, wallet, ["1111"], mode="charge")
            if request.param == "same account"
            else applying(taro, card, ["22", "33"], mode="purchase")
        )
        return taro, {"first": applying(taro, wallet, ["1111"], mode="charge"), "second": second}

    return make


def test_one_resident_applying_twice_at_once_is_accepted_once(
    racing: None, double_submit: Callable[[int], DoubleSubmit]
) -> None:
    def one_round(number: int) -> None:
        taro, calls = double_submit(number)
        outcome = race(calls, barrier_timeout=barrier_timeout())
        winner, loser = decided(outcome)
        assert outcome.results[loser].code == "already_applied"
        assert_serialised_by_the_lock(outcome, winner, loser)
        statuses = sorted(PointApplication.objects.filter(resident=taro).values_list("status", flat=True))
        assert statuses == [ApplicationStatus.ACCEPTED, ApplicationStatus.REJECTED]

    run_rounds(one_round)
    assert verify_chain().ok


@pytest.mark.postgres(SQLITE_SERIALISES)
def test_control_without_the_resident_lock_both_pass_the_rules_and_the_database_refuses_one(
    without_locks: None, racing: None, double_submit: Callable[[int], DoubleSubmit]
) -> None:
    def one_round(number: int) -> None:
        taro, calls = double_submit(number)
        outcome = race(calls, barrier_timeout=barrier_timeout())
        assert outcome.met == ("first", "second"), "both read 'not yet applied' before either wrote"
        # Both were accepted by the rules; the partial unique index stops the second insert, so the applicant
        # gets a database error (a 500) instead of the clean rejection already_applied.
        (winner,) = outcome.results
        assert outcome.results[winner].accepted
        (loser,) = outcome.errors
        error = outcome.errors[loser]
        assert isinstance(error, IntegrityError), repr(error)
        assert "one_accepted_application_per_measure" in str(error)
        statuses = list(PointApplication.objects.filter(resident=taro).values_list("status", flat=True))
        assert statuses == [ApplicationStatus.ACCEPTED]  # the loser's transaction left nothing behind

    run_rounds(one_round)
    assert verify_chain().ok
