"""The grant engine running continuously inside the server: a daemon thread that, every interval, instructs
what is due and pushes the outbox. Each step is its own durable transaction, so stopping the server at any
moment is safe (the same guarantees as `mynapoint grants run`).

A server may run several processes (gunicorn's workers, each with a worker thread; or several machines on one
PostgreSQL database). One of their threads at a time holds the engine's lease (:class:`EngineLease`) and runs
the cycles, every ``interval`` seconds; the others try to take the lease at the same pace and take over when
its holder stops (its process ends, or its connection to PostgreSQL breaks). Two engines at once would still
post every point once (the grant engine is exactly-once however it is run) but would do the work twice; a
`mynapoint grants run` started by a scheduler does not take the lease."""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from django.conf import settings
from django.db import close_old_connections, connection

from mynapoint import clock
from mynapoint.audit.services import Actor
from mynapoint.grants.batch import run_grants_batch
from mynapoint.grants.models import Grant
from mynapoint.grants.outbox import deliver_due
from mynapoint.grants.selectors import grant_link_ref
from mynapoint.grants.services import run_grants

__all__ = ["ENGINE_LOCK", "EngineLease", "GrantWorker"]

log = logging.getLogger(__name__)

ENGINE_LOCK: Final = 0x4752_4E54  # PostgreSQL's advisory lock of the grant engine ("GRNT")
LOCK_FILE: Final = "grant-engine.lock"  # elsewhere (SQLite, one machine): a file lock in the data folder


class EngineLease:
    """The right to run the grant engine's cycles, held by one thread of all the servers' processes at a time.

    On PostgreSQL a session advisory lock on a connection of its own (not Django's, which a request cycle may
    close), so every process and machine on the database takes part; elsewhere an exclusive lock on
    ``MYNAPOINT_DATA_DIR/grant-engine.lock``, for the processes on this machine that share its SQLite file.
    Either is let go when its holder's process ends."""

    def __init__(self, holder: Any, *, postgres: bool) -> None:
        self._holder = holder  # a psycopg connection, or the locked file
        self._postgres = postgres

    @classmethod
    def take(cls) -> EngineLease | None:
        """The lease, if no one else holds it; never waits."""
        if connection.vendor == "postgresql":
            raw = connection.get_new_connection(connection.get_connection_params())
            try:
                raw.autocommit = True
                mine = bool(raw.execute("SELECT pg_try_advisory_lock(%s)", [ENGINE_LOCK]).fetchone()[0])
            except BaseException:
                raw.close()
                raise
            if not mine:
                raw.close()
                return None
            return cls(raw, postgres=True)
        folder = Path(settings.DATA_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        handle: IO[str] = (folder / LOCK_FILE).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return cls(handle, postgres=False)

    def held(self) -> bool:
        """Whether it is still this holder's: on PostgreSQL, whether the lock's session is alive."""
        if not self._postgres:
            return not self._holder.closed
        try:
            self._holder.execute("SELECT 1")
        except Exception:  # the session is gone, and the lock with it
            return False
        return True

    def release(self) -> None:
        """Let go (closing the lock's connection or file lets go of the lock). Never raises."""
        try:
            self._holder.close()
        except Exception:
            log.exception("closing the grant engine's lease")


class GrantWorker(threading.Thread):
    def __init__(self, *, interval: float, link_ref: Callable[[Grant], str] = grant_link_ref) -> None:
        super().__init__(name="grant-worker", daemon=True)
        self.interval = interval
        self.link_ref = link_ref
        self.stopped = threading.Event()
        self.lease: EngineLease | None = None
        self.cycles = 0  # cycles run by this worker
        self.skipped = 0  # cycles left to the holder of the lease

    def run_once(self) -> bool:
        """One cycle if this worker holds the engine's lease (taking it if no one does): instruct what is due
        (on PostgreSQL with the batch engine, elsewhere resident by resident), push the outbox. Whether it
        ran."""
        if self.lease is not None and not self.lease.held():
            self.release()
        if self.lease is None:
            self.lease = EngineLease.take()
        if self.lease is None:
            self.skipped += 1
            return False
        now = clock.now()
        engine = run_grants_batch if connection.vendor == "postgresql" else run_grants
        engine(
            today=now.date(), now=now, who=Actor(actor="grant-engine", channel="system", terminal="server")
        )
        deliver_due(now=now, link_ref=self.link_ref)
        self.cycles += 1
        return True

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                try:
                    close_old_connections()
                    self.run_once()
                except Exception:  # the worker must survive a bad cycle; the next one retries
                    log.exception("grant worker cycle failed")
                finally:
                    close_old_connections()
                self.stopped.wait(self.interval)
        finally:
            self.release()

    def stop(self) -> None:
        self.stopped.set()
