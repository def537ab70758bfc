"""The grant engine inside the server: one cycle at a time among the server's processes (a PostgreSQL advisory
lock, or a file lock beside the SQLite database), and gunicorn's hook that starts it in each worker."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection
from pytest_django import Settings

from mynapoint.config import gunicorn
from mynapoint.grants import worker
from mynapoint.grants.worker import GrantWorker, engine_turn

pytestmark = pytest.mark.django_db


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
