"""Writing to the audit log. Call :func:`record` inside the use case's own transaction."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction

from mynapoint.audit.models import AuditEvent, AuditHead

__all__ = ["GENESIS", "Actor", "event_hash", "record"]

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it, through which channel, at which terminal."""

    actor: str
    channel: str
    terminal: str = ""


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def event_hash(*, prev_hash: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + _canonical(fields)).encode("utf-8")).hexdigest()


def _hashed_fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at.astimezone(dt.UTC).isoformat(),
        "actor": event.actor,
        "channel": event.channel,
        "terminal": event.terminal,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "before": event.before,
        "after": event.after,
    }


def record(
    *,
    who: Actor,
    action: str,
    subject_type: str,
    subject_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    at: dt.datetime,
) -> AuditEvent:
    """Append one event to the chain. Must run inside the caller's transaction (same commit or none)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit.record must be called inside the use case's transaction")
    head = _locked_head()
    event = AuditEvent(
        at=at,
        actor=who.actor,
        channel=who.channel,
        terminal=who.terminal,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        before=json.loads(_canonical(before)) if before is not None else None,
        after=json.loads(_canonical(after)) if after is not None else None,
        prev_hash=head.last_hash,
    )
    event.hash = event_hash(prev_hash=head.last_hash, fields=_hashed_fields(event))
    event.save(force_insert=True)
    AuditHead.objects.filter(pk=head.pk).update(last_id=event.pk, last_hash=event.hash)
    return event


def _locked_head() -> AuditHead:
    queryset = AuditHead.objects.all()
    if connection.vendor == "postgresql":
        queryset = queryset.select_for_update()
    head = queryset.filter(pk=1).first()
    if head is None:
        AuditHead.objects.get_or_create(pk=1, defaults={"last_id": 0, "last_hash": GENESIS})
        head = queryset.get(pk=1)
    return head
