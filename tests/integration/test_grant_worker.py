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
from mynapoint.grants.worker import GrantWorker, engine_turn
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


def _try_turn() -> bool:
    with engine_turn() as mine:
        return mine


@pytest.fixture(autouse=True)
def _data_dir(settings: Settings, tmp_path: Any) -> None:
    settings.DATA_DIR = tmp_path  # the lock file's folder on SQLite


def test_one_cycle_at_a_time_and_the_turn_passes_on_when_it_ends() -> None:
    with engine_turn() as mine:
        assert mine
        assert _elsewhere(_try_turn) is False  # another process's turn is refused at once, not awaited
    assert _elsewhere(_try_turn) is True  # released


def test_a_worker_whose_turn_it_is_not_skips_the_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[object] = []
    monkeypatch.setattr(worker, "run_grants", lambda **kwargs: ran.append(kwargs))
    monkeypatch.setattr(worker, "run_grants_batch", lambda **kwargs: ran.append(kwargs))
    monkeypatch.setattr(worker, "deliver_due", lambda **kwargs: ran.append(kwargs))
    other = GrantWorker(interval=60)
    with engine_turn() as mine:
        assert mine
        assert _elsewhere(other.run_once) is False
    assert (other.cycles, other.skipped, ran) == (0, 1, [])
    assert _elsewhere(other.run_once) is True
    assert (other.cycles, other.skipped, len(ran)) == (1, 1, 2)


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
    assert GrantWorker(interval=60).run_once() is True
    [grant] = Grant.objects.filter(resident=hanako)
    assert (grant.measure, grant.amount, grant.status) == ("premium", 5000, "instructed")
    assert [call["now"] for call in pushed] == [NOW]
    assert GrantWorker(interval=60).run_once() is True  # nothing more is due: nothing more is instructed
    assert Grant.objects.filter(resident=hanako).count() == 1
