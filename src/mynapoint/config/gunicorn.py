"""gunicorn's settings for ``mynapoint serve`` (``--config python:mynapoint.config.gunicorn``).

Each worker process runs the grant engine's thread (:class:`~mynapoint.grants.worker.GrantWorker`) when
``MYNAPOINT_GRANT_INTERVAL`` is more than 0 seconds; the one holding the engine's lease
(:class:`~mynapoint.grants.worker.EngineLease`) runs the cycles, and another takes over when it stops."""

from __future__ import annotations

import os
from typing import Any


def grant_interval() -> float:
    """Seconds between grant engine cycles (``MYNAPOINT_GRANT_INTERVAL``; 0 or unset: no engine in the server)."""
    text = os.environ.get("MYNAPOINT_GRANT_INTERVAL", "").strip() or "0"
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"MYNAPOINT_GRANT_INTERVAL is not a number of seconds: {text!r}") from None
    if seconds < 0 or seconds != seconds:  # negative or NaN
        raise ValueError(f"MYNAPOINT_GRANT_INTERVAL must be 0 or more seconds: {text!r}")
    return seconds


def post_worker_init(worker: Any) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """gunicorn calls this in each worker once the application (and so Django) is loaded."""
    seconds = grant_interval()
    if seconds > 0:
        from mynapoint.grants.worker import GrantWorker

        GrantWorker(interval=seconds).start()
