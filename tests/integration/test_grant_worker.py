"""The grant engine inside the server: one cycle at a time among the server's processes (a PostgreSQL advisory
lock, or a file lock beside the SQLite database), and gunicorn's hook that starts it in each worker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import test_grant_positions
from django.db import connection
from pytest_django import Settings
from support import NOW
from test_grant_positions import charged
from test_provider_api import ProviderClient

from mynapoint import clock
from mynapoint.config import gunicorn
from mynapoint.grants import worker
from mynapoint.grants.models import Grant
from mynapoint.grants.worker import EngineLease, GrantWorker
from mynapoint.identity.models import Resident

pytestmark = pytest.mark.django_db

api = test_grant_positions.api  # the wallet, its accounts declared through the provider API


def _elsewhere(job: Any) -> Any:
    """``job()`` on another thread, with its own database connection (another session, as another process)."""
    answer: dict[str, Any] = {}

    def run() -> None:
        try:
            answer["value"] = job()
        except BaseException as error:  # reported below
            answer["error"] = error
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert "error" not in answer, answer
    return answer["value"]


def _take() -> bool:
    lease = EngineLease.take()
    if lease is None:
        return False
    lease.release()
    return True


@pytest.fixture(autouse=True)
def _data_dir(settings: Settings, tmp_path: Any) -> None:
    settings.DATA_DIR = tmp_path  # the lock file's folder on SQLite


def test_one_holder_of_the_lease_at_a_time_and_it_passes_on_when_let_go() -> None:
    lease = EngineLease.take()
    assert lease is not None
    assert lease.held()
    try:
        assert _elsewhere(_take) is False  # another process's attempt is refused at once, not awaited
    finally:
        lease.release()
    assert _elsewhere(_take) is True  # let go
    lease.release()  # again: nothing happens, nothing is raised


def _engines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    monkeypatch.setattr(worker, "run_grants", lambda **kwargs: ran.append("per resident"))
    monkeypatch.setattr(worker, "run_grants_batch", lambda **kwargs: ran.append("batch"))
    monkeypatch.setattr(worker, "deliver_due", lambda **kwargs: ran.append("push"))
    return ran


def test_only_the_holder_runs_cycles_and_another_worker_takes_over_when_it_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran = _engines(monkeypatch)
    holder, other = GrantWorker(interval=60), GrantWorker(interval=60)
    assert holder.run_once() is True
    assert holder.run_once() is True  # it keeps the lease from cycle to cycle
    assert _elsewhere(other.run_once) is False
    assert (holder.cycles, other.cycles, other.skipped) == (2, 0, 1)
    holder.release()  # its process stops
    assert _elsewhere(other.run_once) is True
    other.release()
    # the batch engine on PostgreSQL (a national population), resident by resident elsewhere; then the push
    engine = "batch" if connection.vendor == "postgresql" else "per resident"
    assert ran == [engine, "push"] * 3


def test_a_failing_cycle_keeps_the_thread_going_and_a_stopped_thread_lets_go_of_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cycles = threading.Semaphore(0)

    def failing(**kwargs: object) -> None:
        cycles.release()
        raise RuntimeError("a bad cycle")

    monkeypatch.setattr(worker, "run_grants", failing)
    monkeypatch.setattr(worker, "run_grants_batch", failing)
    thread = GrantWorker(interval=0.01)
    thread.start()
    try:
        assert cycles.acquire(timeout=30)
        assert cycles.acquire(timeout=30)  # it went on after the first cycle failed
        assert _elsewhere(_take) is False  # and still holds the lease
    finally:
        thread.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert thread.lease is None
    assert _elsewhere(_take) is True


def test_gunicorns_hook_starts_the_engine_only_when_an_interval_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[float] = []
    monkeypatch.setattr(GrantWorker, "start", lambda self: started.append(self.interval))
    monkeypatch.delenv("MYNAPOINT_GRANT_INTERVAL", raising=False)
    gunicorn.post_worker_init(object())
    monkeypatch.setenv("MYNAPOINT_GRANT_INTERVAL", "0")
    gunicorn.post_worker_init(object())
    assert started == []
    monkeypatch.setenv("MYNAPOINT_GRANT_INTERVAL", "2.5")
    gunicorn.post_worker_init(object())
    assert started == [2.5]
    for wrong in ("soon", "-1", "nan"):
        monkeypatch.setenv("MYNAPOINT_GRANT_INTERVAL", wrong)
        with pytest.raises(ValueError, match="MYNAPOINT_GRANT_INTERVAL"):
            gunicorn.post_worker_init(object())


def test_a_cycle_instructs_what_is_due_and_pushes_it(
    api: ProviderClient, make_resident: Callable[..., Resident], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's own cycle on this database (the batch engine on PostgreSQL, resident by resident
    elsewhere): Hanako's 20,000 yen charge becomes a 5,000-point grant, and the outbox is pushed."""
    monkeypatch.setattr(clock, "now", lambda: NOW)
    pushed: list[dict[str, object]] = []
    monkeypatch.setattr(worker, "deliver_due", lambda **kwargs: pushed.append(kwargs))
    hanako = charged(api, make_resident, 1)
    engine = GrantWorker(interval=60)
    try:
        assert engine.run_once() is True
        [grant] = Grant.objects.filter(resident=hanako)
        assert (grant.measure, grant.amount, grant.status) == ("premium", 5000, "instructed")
        assert [call["now"] for call in pushed] == [NOW]
        assert engine.run_once() is True  # nothing more is due: nothing more is instructed
        assert Grant.objects.filter(resident=hanako).count() == 1
    finally:
        engine.release()
