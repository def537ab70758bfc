"""An application racing an edit of its provider (decision Q14). ``update_provider`` refuses to take a mode or a
measure from the residents who applied with it, checking the accepted applications under the provider row's
lock (PostgreSQL ``FOR NO KEY UPDATE``). ``apply_for_measure`` reads the provider's settings inside its
transaction under ``FOR SHARE`` on that row, before it decides: the lock an edit conflicts with and other
applications do not (``FOR KEY SHARE`` would not stop the edit). Whichever comes first, the other waits for
its commit and then sees it:

1. an edit in progress: the application waits, then is decided on the edited settings (a removed mode or
   measure is refused; a deadline moved earlier closes applications, the rules' reason recorded);
2. an application in progress: the edit waits, then counts it and is refused.

Control tests turn the application's locks off (``MYNAPOINT_APPLICATION_LOCKS``, as the other concurrency
tests do): then neither waits, both commit, and an accepted application keeps a mode its provider no longer
offers. A last test shows the lock adds no contention: two applications on one provider both hold it while
each waits, at the after-read seam, for the other to have read.

The edit in progress is the real ``update_provider``, held just before its audit event (its check done, the new
settings written, not committed); the application in progress is held at the after-read seam
(``MYNAPOINT_APPLICATION_AFTER_READ_HOOK``). Waits are seen in ``pg_stat_activity``. SQLite has no row locks:
its IMMEDIATE transactions take the database's write lock at BEGIN, before the settings are read, so each of
these transactions runs alone and there is no interleaving to show there. What SQLite needs, that the settings
the decision uses are read inside the transaction and not before it, is the last test, run on both.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from concurrency_hooks import AFTER_READ, backend_pid, blocked_by, race
from django.db import connection
from pytest_django import Settings
from support import NOW, SELF

import mynapoint.applications.services as application_services
import mynapoint.providers.services as provider_services
from mynapoint.applications.models import ApplicationStatus, PaymentAccount, PointApplication
from mynapoint.applications.services import ApplicationError, ApplicationResult, apply_for_measure
from mynapoint.audit.selectors import verify_chain
from mynapoint.identity.models import Resident
from mynapoint.providers.models import Provider
from mynapoint.providers.services import ProviderError, ProviderUpdate, update_provider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("flushable")]

WAIT = 30.0
NO_ROW_LOCKS = (
    "SQLite has no row locks to race: BEGIN IMMEDIATE takes the database's write lock before the provider's "
    "settings are read, so an edit and an application never interleave"
)
HOLD_APPLICATION = f"{__name__}.hold_application"  # the after-read seam, pointed at this module


_runs: list[_Run] = []


@pytest.fixture(autouse=True)
def _joined() -> Iterator[None]:
    """Every thread a test started has ended before its database is flushed (set up before the holds, so torn
    down after they let their threads go on)."""
    _runs.clear()
    yield
    for run in _runs:
        run.thread.join(WAIT)
    _runs.clear()


# ------------------------------------------------------------------------------------------ holding threads


class _Hold:
    """Where a thread named ``name`` stops (``reached``) until the test lets it go on (``release``)."""

    def __init__(self) -> None:
        self.name = ""
        self.reached, self.release = threading.Event(), threading.Event()

    def __call__(self) -> None:
        if threading.current_thread().name == self.name:
            self.reached.set()
            assert self.release.wait(WAIT), "the test never let the held thread go on"


_application_hold = _Hold()  # holds nobody until armed


def hold_application() -> None:
    """MYNAPOINT_APPLICATION_AFTER_READ_HOOK: the application has read (under its locks) and not yet decided."""
    _application_hold()


@pytest.fixture
def held_application(settings: Settings) -> Iterator[_Hold]:
    """Hold the thread named ``application`` at the after-read seam; let it go on the way out, whatever
    happened."""
    global _application_hold
    _application_hold = hold = _Hold()
    hold.name = "application"
    settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK = HOLD_APPLICATION
    try:
        yield hold
    finally:
        hold.release.set()


@pytest.fixture
def held_edit(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Hold]:
    """Hold the thread named ``edit`` just before ``update_provider`` records its audit event: checked, written,
    the row still locked, not committed. Let it go on the way out, whatever happened."""
    hold = _Hold()
    hold.name = "edit"
    real_record = provider_services.record

    def record(*args: Any, **kwargs: Any) -> Any:
        hold()
        return real_record(*args, **kwargs)

    monkeypatch.setattr(provider_services, "record", record)
    try:
        yield hold
    finally:
        hold.release.set()


@pytest.fixture
def without_locks(settings: Settings) -> None:
    settings.MYNAPOINT_APPLICATION_LOCKS = False


@dataclass
class _Run:
    """A call in a thread of its own, with its own database connection (closed when it ends)."""

    name: str
    call: Callable[[], Any]
    pid: int = 0
    result: Any = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=self.name)
        _runs.append(self)
        self.thread.start()
        assert self._started.wait(WAIT), f"{self.name} did not start"

    def _run(self) -> None:
        try:
            self.pid = backend_pid()
            self._started.set()
            self.result = self.call()
        except BaseException as error:  # reported to the test, which asserts on it
            self.error = error
        finally:
            connection.close()

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"{self.name} still running after {WAIT}s"


def _waits_for(waiter: _Run, holder: _Run) -> bool:
    """Whether ``waiter`` is seen, within WAIT seconds, waiting on a lock that ``holder`` holds."""
    give_up = time.monotonic() + WAIT
    while time.monotonic() < give_up and waiter.thread.is_alive():
        if blocked_by(waiter.pid, holder.pid):
            return True
        time.sleep(0.01)
    return False


# ------------------------------------------------------------------------------------------ the parties


@pytest.fixture
def applicant(providers: dict[str, Provider], make_resident: Callable[..., Resident]) -> Resident:
    """A resident with an account at the wallet (which offers both modes and every measure). The account row
    exists, as after any earlier application with it, so that creating it does not order the race."""
    resident = make_resident(kana="サトウ ハナコ", accounts={"wallet/7301": ["5"]})
    PaymentAccount.objects.create(provider=providers["wallet"], service_id="7301")
    return resident


def applying(
    resident: Resident,
    *,
    measure: str = "premium",
    mode: str = "charge",
    now: dt.datetime = NOW,
    service_id: str = "7301",
) -> Callable[[], ApplicationResult]:
    return lambda: apply_for_measure(
        resident=resident,
        measure=measure,
        provider_key="wallet",
        service_id=service_id,
        security_codes=["5"],
        mode=mode,
        operated_by=None,
        present=[],
        now=now,
        who=SELF,
    )


def editing(**changes: Any) -> Callable[[], ProviderUpdate]:
    return lambda: update_provider(provider_key="wallet", now=NOW, **changes)


def accepted(resident: Resident) -> list[tuple[str, str]]:
    return list(
        PointApplication.objects.filter(resident=resident, status=ApplicationStatus.ACCEPTED).values_list(
            "measure", "mode"
        )
    )


def wallet() -> Provider:
    return Provider.objects.get(key="wallet")


# -------------------------------------------------------------------- 1. an edit in progress, an application


@pytest.mark.postgres(NO_ROW_LOCKS)
def test_an_application_waits_for_an_edit_removing_its_mode_and_is_refused(
    held_edit: _Hold, applicant: Resident
) -> None:
    edit_hold = held_edit
    edit = _Run("edit", editing(modes=["purchase"]))
    assert edit_hold.reached.wait(WAIT), edit.error  # checked (nobody applied with charge) and written
    application = _Run("application", applying(applicant, mode="charge"))
    assert _waits_for(application, edit), "the application read the provider without waiting for the edit"
    edit_hold.release.set()
    edit.join()
    application.join()
    assert isinstance(edit.result, ProviderUpdate), edit.error
    assert edit.result.changed == ("modes",)
    error = application.error
    assert isinstance(error, ApplicationError), (application.result, error)
    assert (error.code, error.field) == ("choose_mode", "mode")
    assert "one of purchase" in error.en
    assert wallet().modes == ["purchase"]
    assert accepted(applicant) == []
    assert not PointApplication.objects.filter(resident=applicant).exists()
    assert verify_chain().ok


@pytest.mark.postgres(NO_ROW_LOCKS)
def test_an_application_waits_for_an_edit_removing_its_measure_and_is_refused(
    held_edit: _Hold, applicant: Resident
) -> None:
    edit_hold = held_edit
    edit = _Run("edit", editing(measures=["premium", "public_fund"]))
    assert edit_hold.reached.wait(WAIT), edit.error
    application = _Run("application", applying(applicant, measure="health_insurance"))
    assert _waits_for(application, edit)
    edit_hold.release.set()
    edit.join()
    application.join()
    assert isinstance(edit.result, ProviderUpdate), edit.error
    assert edit.result.changed == ("measures",)
    error = application.error
    assert isinstance(error, ApplicationError), (application.result, error)
    assert (error.code, error.field) == ("measure_not_offered", "measure")
    assert wallet().measures == ["premium", "public_fund"]
    assert accepted(applicant) == []


@pytest.mark.postgres(NO_ROW_LOCKS)
def test_an_application_waits_for_an_edit_closing_applications_and_the_rules_refuse_it(
    held_edit: _Hold, applicant: Resident
) -> None:
    """The edit, on 1 July, ends the wallet's applications that day; the application comes just after
    midnight: it waits, reads the new deadline, and the rules record their reason."""
    edit_hold = held_edit
    today = NOW.date()
    edit = _Run("edit", editing(application_deadline=today))
    assert edit_hold.reached.wait(WAIT), edit.error
    application = _Run("application", applying(applicant, now=NOW + dt.timedelta(hours=14, minutes=1)))
    assert _waits_for(application, edit)
    edit_hold.release.set()
    edit.join()
    application.join()
    assert application.error is None, application.error
    result = application.result
    assert isinstance(result, ApplicationResult)
    assert (result.accepted, result.code) == (False, "provider_application_closed")
    assert f"closed applications after {today}" in result.application.explanation_en
    assert result.application.status == ApplicationStatus.REJECTED
    assert wallet().application_deadline == today


# -------------------------------------------------------------------- 2. an application in progress, an edit


@pytest.mark.parametrize(
    ("change", "measure", "refusal"),
    [
        ({"modes": ["purchase"]}, "premium", ("mode_in_use", "modes")),
        ({"measures": ["premium", "public_fund"]}, "health_insurance", ("measure_in_use", "measures")),
    ],
    ids=["mode", "measure"],
)
@pytest.mark.postgres(NO_ROW_LOCKS)
def test_an_edit_waits_for_an_application_in_progress_and_is_refused(
    held_application: _Hold,
    applicant: Resident,
    change: dict[str, Any],
    measure: str,
    refusal: tuple[str, str],
) -> None:
    application_hold = held_application
    before = wallet()
    application = _Run("application", applying(applicant, measure=measure, mode="charge"))
    assert application_hold.reached.wait(WAIT), application.error  # read under its locks, not yet decided
    edit = _Run("edit", editing(**change))
    assert _waits_for(edit, application), "the edit checked the applications without waiting for this one"
    application_hold.release.set()
    application.join()
    edit.join()
    assert isinstance(application.result, ApplicationResult), application.error
    assert application.result.accepted, application.result.code
    error = edit.error
    assert isinstance(error, ProviderError), (edit.result, error)
    assert (error.code, error.field) == refusal
    after = wallet()
    assert (after.modes, after.measures) == (before.modes, before.measures)
    assert accepted(applicant) == [(measure, "charge")]
    assert verify_chain().ok


# -------------------------------------------------------------------- controls: the application's locks off


@pytest.mark.postgres(NO_ROW_LOCKS)
def test_control_without_the_lock_an_application_commits_a_mode_an_edit_in_progress_removes(
    without_locks: None, held_edit: _Hold, applicant: Resident
) -> None:
    edit_hold = held_edit
    edit = _Run("edit", editing(modes=["purchase"]))
    assert edit_hold.reached.wait(WAIT), edit.error
    application = _Run("application", applying(applicant, mode="charge"))
    application.join()  # done while the edit is still in progress: it waited for nothing
    edit_hold.release.set()
    edit.join()
    assert isinstance(application.result, ApplicationResult), application.error

    assert application.result.accepted, application.error
    assert isinstance(edit.result, ProviderUpdate), edit.error
    assert edit.result.changed == ("modes",)
    assert wallet().modes == ["purchase"]
    assert accepted(applicant) == [("premium", "charge")], "an accepted application with a mode not offered"


@pytest.mark.postgres(NO_ROW_LOCKS)
def test_control_without_the_lock_an_edit_removes_the_mode_of_an_application_in_progress(
    without_locks: None, held_application: _Hold, applicant: Resident
) -> None:
    application_hold = held_application
    application = _Run("application", applying(applicant, mode="charge"))
    assert application_hold.reached.wait(WAIT), application.error
    edit = _Run("edit", editing(modes=["purchase"]))
    edit.join()  # done while the application is still in progress: it counted none and waited for nothing
    application_hold.release.set()
    application.join()
    assert isinstance(edit.result, ProviderUpdate), edit.error
    assert edit.result.changed == ("modes",)
    assert isinstance(application.result, ApplicationResult), application.error

    assert application.result.accepted, application.error
    assert wallet().modes == ["purchase"]
    assert accepted(applicant) == [("premium", "charge")], "an accepted application with a mode not offered"


# -------------------------------------------------------------------- no contention between applications


@pytest.mark.postgres(NO_ROW_LOCKS)
def test_two_applications_on_one_provider_hold_its_lock_together(
    settings: Settings,
    providers: dict[str, Provider],
    make_resident: Callable[..., Resident],
) -> None:
    """Both read the provider under FOR SHARE and both reach the after-read barrier before either writes: the
    provider's lock does not serialise applications (a FOR NO KEY UPDATE there would)."""
    settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK = AFTER_READ
    calls = {}
    for name, kana, service_id in (("first", "スズキ タロウ", "7401"), ("second", "スズキ ジロウ", "7402")):
        resident = make_resident(kana=kana, accounts={f"wallet/{service_id}": ["5"]})
        PaymentAccount.objects.create(provider=providers["wallet"], service_id=service_id)
        calls[name] = applying(resident, mode="purchase", service_id=service_id)
    outcome = race(calls, barrier_timeout=WAIT)
    assert outcome.errors == {}, outcome.errors
    assert outcome.met == ("first", "second"), "one application waited for the other before reading"
    assert outcome.lock_waits == ()
    assert all(result.accepted for result in outcome.results.values()), outcome.results


# -------------------------------------------------------------------- both databases: read inside the transaction


def test_the_decision_uses_the_settings_read_inside_the_transaction(
    monkeypatch: pytest.MonkeyPatch, applicant: Resident
) -> None:
    """An edit that commits after the application's first look at the provider (here: while the account is
    being verified, before the transaction) is what the application is decided on. On SQLite this is the
    whole guarantee: the settings are read inside the IMMEDIATE transaction, which no edit can interleave."""
    real_adapter = application_services.provider_adapter

    class EditedWhileVerifying:
        def verify(self, **kwargs: Any) -> Any:
            update_provider(provider_key="wallet", modes=["purchase"], now=NOW)
            return real_adapter().verify(**kwargs)

    monkeypatch.setattr(application_services, "provider_adapter", EditedWhileVerifying)
    with pytest.raises(ApplicationError) as refused:
        applying(applicant, mode="charge")()
    assert (refused.value.code, refused.value.field) == ("choose_mode", "mode")
    assert wallet().modes == ["purchase"]
    assert not PointApplication.objects.filter(resident=applicant).exists()
