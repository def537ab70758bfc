"""Deterministic races for the concurrency tests.

``apply_for_measure`` calls ``settings.MYNAPOINT_APPLICATION_AFTER_READ_HOOK`` after it has read the facts and
before it writes the decision. Pointed at :data:`AFTER_READ`, every thread waits there on a
:class:`threading.Barrier` for the others, so that all of them have read before any of them writes: the
interleaving that loses an update when nothing serialises the writers.

With the row locks on, the second thread never reaches the barrier: it waits on PostgreSQL's row lock (or, on
SQLite, for the database's write lock at ``BEGIN IMMEDIATE``) until the first commits. The first must then go
on alone: on PostgreSQL :func:`race` sees the second thread's backend waiting on a lock held by the first and
breaks the barrier at once (and records that wait as the evidence that the lock did the serialising); on
SQLite, where the wait is inside the driver and cannot be observed, the barrier's timeout lets the first
thread go on.

Each thread has its own database connection and closes it when it ends.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from django.db import connection

__all__ = [
    "AFTER_READ",
    "LockWait",
    "RaceOutcome",
    "after_read",
    "backend_pid",
    "blocked_by",
    "flushable_database",
    "race",
]

AFTER_READ = "concurrency_hooks.after_read"  # the dotted path for MYNAPOINT_APPLICATION_AFTER_READ_HOOK

T = TypeVar("T")


@dataclass
class _Rendezvous:
    barrier: threading.Barrier
    timeout: float
    met: list[str] = field(default_factory=list)  # threads that passed the barrier together
    alone: list[str] = field(default_factory=list)  # threads that found it broken or timed out
    settled: threading.Event = field(default_factory=threading.Event)
    guard: threading.Lock = field(default_factory=threading.Lock)


_current: _Rendezvous | None = None


def after_read() -> None:
    """The hook: wait for the other threads after reading; go on alone if the barrier breaks or times out."""
    rendezvous = _current
    if rendezvous is None:  # armed only inside race()
        return
    name = threading.current_thread().name
    try:
        rendezvous.barrier.wait(rendezvous.timeout)
    except threading.BrokenBarrierError:
        with rendezvous.guard:
            rendezvous.alone.append(name)
    else:
        with rendezvous.guard:
            rendezvous.met.append(name)
    rendezvous.settled.set()


@contextmanager
def _armed(parties: int, timeout: float) -> Iterator[_Rendezvous]:
    global _current
    rendezvous = _Rendezvous(threading.Barrier(parties), timeout)
    _current = rendezvous
    try:
        yield rendezvous
    finally:
        _current = None
        rendezvous.barrier.abort()  # nobody may be left waiting on it


@dataclass(frozen=True)
class LockWait:
    waiter: str
    holder: str


@dataclass(frozen=True)
class RaceOutcome(Generic[T]):
    results: dict[str, T]  # what each thread's call returned ...
    errors: dict[str, BaseException]  # ... or raised
    met: tuple[str, ...]  # threads that passed the barrier together: all had read before any wrote
    alone: tuple[str, ...]  # threads that went on without the others
    lock_waits: tuple[LockWait, ...]  # PostgreSQL: a thread seen waiting on a lock another thread held


def backend_pid() -> int:
    """This thread's PostgreSQL backend."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def blocked_by(waiter: int, holder: int) -> bool:
    """Whether backend ``waiter`` is waiting now on a lock that backend ``holder`` holds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock' "
            "AND %s = ANY(pg_blocking_pids(pid))",
            [waiter, holder],
        )
        return cursor.fetchone() is not None


def _lock_waits(pids: Mapping[int, str]) -> list[LockWait]:
    """Which of our threads wait, right now, on a lock that another of our threads holds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity "
            "WHERE pid = ANY(%s) AND wait_event_type = 'Lock'",
            [list(pids)],
        )
        rows = cursor.fetchall()
    return [
        LockWait(pids[pid], pids[holder]) for pid, holders in rows for holder in holders if holder in pids
    ]


def race(
    calls: Mapping[str, Callable[[], T]], *, barrier_timeout: float, deadline: float = 60.0
) -> RaceOutcome[T]:
    """Run each call in its own thread (named by its key), all starting together, with the after-read barrier
    armed; return what each returned or raised and how the threads met."""
    postgres = connection.vendor == "postgresql"
    results: dict[str, T] = {}
    errors: dict[str, BaseException] = {}
    pids: dict[int, str] = {}
    start = threading.Barrier(len(calls) + 1)
    waits: list[LockWait] = []

    def work(name: str, call: Callable[[], T]) -> None:
        try:
            if postgres:
                pids[backend_pid()] = name
            start.wait(deadline)
            results[name] = call()
        except BaseException as error:  # reported to the test, which asserts on it
            errors[name] = error
            start.abort()  # if it failed before the start, nobody waits for it
        finally:
            connection.close()

    with _armed(len(calls), barrier_timeout) as rendezvous:
        threads = [threading.Thread(target=work, args=item, name=item[0]) for item in calls.items()]
        for thread in threads:
            thread.start()
        # a thread that fails before the start breaks this barrier; its error is in the outcome
        with suppress(threading.BrokenBarrierError):
            start.wait(deadline)
        give_up = time.monotonic() + deadline
        while postgres and not rendezvous.settled.is_set() and time.monotonic() < give_up:
            if found := _lock_waits(pids):
                waits.extend(found)
                rendezvous.barrier.abort()  # the waiting thread cannot come: let the first go on
                break
            time.sleep(0.005)
        for thread in threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive()]
        if stuck:
            raise AssertionError(f"threads still running after {deadline}s: {stuck}")
    return RaceOutcome(
        results, errors, tuple(sorted(rendezvous.met)), tuple(sorted(rendezvous.alone)), tuple(waits)
    )


@contextmanager
def flushable_database() -> Iterator[None]:
    """Let the test database be flushed while inside. A transactional test (``django_db(transaction=True)``)
    ends by emptying every table, which the append-only tables' triggers refuse (PostgreSQL: TRUNCATE; SQLite:
    DELETE). Only the triggers the flush trips are lifted, and put back on the way out: updates stay refused.

    Found in the catalogue, so that every append-only table (the audit log, the ledger, ...) is covered."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(  # tgtype bit 5: a TRUNCATE trigger
                "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
                "WHERE NOT tgisinternal AND tgenabled <> 'D' AND tgtype & 32 <> 0"
            )
            truncate_triggers: list[tuple[str, str]] = cursor.fetchall()
            for table, trigger in truncate_triggers:
                cursor.execute(f'ALTER TABLE {table} DISABLE TRIGGER "{trigger}"')
            put_back = [
                f'ALTER TABLE {table} ENABLE TRIGGER "{trigger}"' for table, trigger in truncate_triggers
            ]
        elif connection.vendor == "sqlite":
            cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
            delete_triggers = [
                (name, sql) for name, sql in cursor.fetchall() if re.search(r"\bDELETE\s+ON\b", sql, re.I)
            ]
            for name, _ in delete_triggers:
                cursor.execute(f'DROP TRIGGER "{name}"')
            put_back = [sql for _, sql in delete_triggers]
        else:  # pragma: no cover - the project runs on these two
            put_back = []
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for sql in put_back:
                cursor.execute(sql)
