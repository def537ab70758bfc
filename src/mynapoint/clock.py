"""The one module that reads the wall clock. Everything else takes ``now`` / ``as_of`` as an argument.

The reference programme ran in 2022–2023. A demo or a rehearsal runs on the programme's calendar with
``MYNAPOINT_CLOCK_START=2023-03-15T10:00:00+09:00`` (or :func:`start_at`): the clock then starts at that
moment and runs on at real speed. Production leaves it unset.
"""

from __future__ import annotations

import datetime as dt
import os

from mynapoint.rules.model import JST

__all__ = ["DEMO_START", "JST", "now", "start_at", "today_jst"]

DEMO_START = dt.datetime(2023, 3, 15, 10, 0, tzinfo=JST)  # the demo runs on the programme's calendar

_offset: dt.timedelta | None = None


def start_at(moment: dt.datetime | None) -> None:
    """Run the clock from ``moment`` on (``None``: back to real time)."""
    global _offset
    if moment is None:
        _offset = None
        return
    if moment.tzinfo is None:
        raise ValueError("the clock start needs a UTC offset, e.g. 2023-03-15T10:00:00+09:00")
    _offset = moment - dt.datetime.now(tz=JST)


def now() -> dt.datetime:
    """The current time, aware, in JST."""
    real = dt.datetime.now(tz=JST)
    return (real + _offset).astimezone(JST) if _offset is not None else real


def today_jst() -> dt.date:
    return now().date()


if os.environ.get("MYNAPOINT_CLOCK_START"):
    start_at(dt.datetime.fromisoformat(os.environ["MYNAPOINT_CLOCK_START"]))
