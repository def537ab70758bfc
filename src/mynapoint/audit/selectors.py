"""Reading and checking the audit log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mynapoint.audit.models import AuditEvent, AuditHead
from mynapoint.audit.services import GENESIS, _hashed_fields, event_hash

__all__ = ["ChainReport", "verify_chain"]


@dataclass(frozen=True, slots=True)
class ChainReport:
    checked: int
    ok: bool
    problem: str = ""


def verify_chain(*, progress: Callable[[int], None] | None = None, batch: int = 5000) -> ChainReport:
    """Recompute every hash in order; the first broken link is reported with its id."""
    prev = GENESIS
    checked = 0
    last_id = 0
    while True:
        rows = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id")[:batch])
        if not rows:
            break
        for event in rows:
            if event.prev_hash != prev:
                return ChainReport(
                    checked, False, f"event #{event.pk}: prev_hash does not match event before it"
                )
            expected = event_hash(prev_hash=prev, fields=_hashed_fields(event))
            if event.hash != expected:
                return ChainReport(checked, False, f"event #{event.pk}: contents changed (hash mismatch)")
            prev = event.hash
            checked += 1
            last_id = event.pk
        if progress:
            progress(checked)
    head = AuditHead.objects.filter(pk=1).first()
    if head is not None and (head.last_hash != prev or head.last_id != last_id):
        return ChainReport(
            checked, False, f"chain ends at #{last_id} but the head says #{head.last_id}: rows removed"
        )
    return ChainReport(checked, True)
