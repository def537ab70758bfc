"""The grant engine running continuously inside the server: a daemon thread that, every interval, instructs
what is due and pushes the outbox. Each step is its own durable transaction, so stopping the server at any
moment is safe (the same guarantees as `mynapoint grants run`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import close_old_connections

from mynapoint import clock
from mynapoint.audit.services import Actor
from mynapoint.grants.models import Grant
from mynapoint.grants.outbox import deliver_due
from mynapoint.grants.services import run_grants

__all__ = ["GrantWorker"]

log = logging.getLogger(__name__)


class GrantWorker(threading.Thread):
    def __init__(self, *, interval: float, link_ref: Callable[[Grant], str]) -> None:
        super().__init__(name="grant-worker", daemon=True)
        self.interval = interval
        self.link_ref = link_ref
        self.stopped = threading.Event()
        self.cycles = 0

    def run_once(self) -> None:
        now = clock.now()
        run_grants(
            today=now.date(), now=now, who=Actor(actor="grant-engine", channel="system", terminal="server")
        )
        deliver_due(now=now, link_ref=self.link_ref)
        self.cycles += 1

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
