"""The grant engine running continuously inside the server: a daemon thread that, every interval, instructs
what is due and pushes the outbox. Each step is its own durable transaction, so stopping the server at any
moment is safe (the same guarantees as `mynapoint grants run`).

A server may run several processes (gunicorn's workers, each with a worker thread; or several machines on one
PostgreSQL database): one cycle runs at a time among them (:func:`engine_turn`), and a process whose turn it
is not skips the cycle. Two cycles at once would still post every point once (the grant engine is exactly-once
however it is run), but would do the same work twice and wait on each other's rows."""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from django.conf import settings
from django.db import close_old_connections, connection

from mynapoint import clock
from mynapoint.audit.services import Actor
from mynapoint.grants.batch import run_grants_batch
from mynapoint.grants.models import Grant
from mynapoint.grants.outbox import deliver_due
from mynapoint.grants.selectors import grant_link_ref
from mynapoint.grants.services import run_grants

__all__ = ["ENGINE_LOCK", "GrantWorker", "engine_turn"]

log = logging.getLogger(__name__)

ENGINE_LOCK: Final = 0x4752_4E54  # PostgreSQL's advisory lock of the grant engine's cycles ("GRNT")
LOCK_FILE: Final = "grant-engine.lock"  # elsewhere (SQLite, one machine): a file lock in the data folder


@contextmanager
def engine_turn() -> Iterator[bool]:
    """Whether this process may run a grant engine cycle now; held until the block ends. Never waits: on
    PostgreSQL a session advisory lock (every process and machine on the database), else an exclusive lock on
    ``MYNAPOINT_DATA_DIR/grant-engine.lock`` (the processes on this machine, which share its SQLite file)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [ENGINE_LOCK])
            mine = bool(cursor.fetchone()[0])
        try:
            yield mine
        finally:
            if mine:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [ENGINE_LOCK])
        return
    folder = Path(settings.DATA_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class GrantWorker(threading.Thread):
    def __init__(self, *, interval: float, link_ref: Callable[[Grant], str] = grant_link_ref) -> None:
        super().__init__(name="grant-worker", daemon=True)
        self.interval = interval
        self.link_ref = link_ref
        self.stopped = threading.Event()
        self.cycles = 0  # cycles run by this worker
        self.skipped = 0  # cycles left to another process, whose turn it was

    def run_once(self) -> bool:
        """One cycle, if it is this process's turn: instruct what is due (on PostgreSQL with the batch engine,
        elsewhere resident by resident), push the outbox. Whether it ran."""
        with engine_turn() as mine:
            if not mine:
                self.skipped += 1
                return False
            now = clock.now()
            # PostgreSQL (production, a national population): the batch engine, tested to instruct the same grants
            engine = run_grants_batch if connection.vendor == "postgresql" else run_grants
            engine(
                today=now.date(),
                now=now,
                who=Actor(actor="grant-engine", channel="system", terminal="server"),
            )
            deliver_due(now=now, link_ref=self.link_ref)
            self.cycles += 1
            return True

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                close_old_connections()
                self.run_once()
            except Exception:  # the worker must survive a bad cycle; the next one retries
                log.exception("grant worker cycle failed")
            finally:
                close_old_connections()
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
