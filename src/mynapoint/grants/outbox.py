"""Pushing grant instructions to providers: a transactional outbox delivered as signed webhooks.

A message is written in the same transaction as the grant it announces, so a crash can never lose one or
announce a grant that was rolled back. Delivery is at-least-once: a message is marked delivered only after
the provider answered 2xx; a failure is retried with exponential backoff (1, 2, 4 … minutes, at most 6 h).
Providers deduplicate by ``grant_id``. The signature is ``t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<body>")>``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from django.db import connection, transaction

from mynapoint.grants.models import Grant, OutboxMessage
from mynapoint.providers.selectors import sign  # one signing scheme for webhooks and verify callbacks

__all__ = ["DeliveryReport", "backoff", "deliver_due", "grant_item", "sign", "verify_signature"]

MAX_BACKOFF = dt.timedelta(hours=6)


def backoff(attempts: int) -> dt.timedelta:
    return min(MAX_BACKOFF, dt.timedelta(minutes=2 ** max(0, attempts - 1)))


def verify_signature(
    secret: str, body: bytes, header: str, *, now: dt.datetime, tolerance_s: int = 300
) -> bool:
    """For providers (and the sandbox): check a webhook's signature and freshness."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now.timestamp() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp=timestamp)
    return hmac.compare_digest(expected, header)


def grant_item(grant: Grant, link_ref: Callable[[Grant], str]) -> dict[str, Any]:
    """A grant as providers see it (pull and push alike): no resident identity, a pseudonymous link ref."""
    return {
        "cursor": grant.position,
        "grant_id": grant.pk,
        "link_ref": link_ref(grant),
        "service_id": grant.account.service_id,
        "measure": grant.measure,
        "amount": grant.amount,
        "cumulative_after": grant.cumulative_after,
        "due_as_of": grant.due_as_of.isoformat(),
        "instructed_at": grant.instructed_at.isoformat(),
        "status": grant.status,
    }


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0


def _post(url: str, body: bytes, signature: str, timeout: float) -> tuple[bool, str]:
    try:
        response = requests.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", "X-Mynapoint-Signature": signature},
            timeout=timeout,
        )
    except requests.RequestException as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300]
    if 200 <= response.status_code < 300:
        return True, ""
    return False, f"HTTP {response.status_code}: {response.text[:200]}"


def deliver_due(
    *, now: dt.datetime, link_ref: Callable[[Grant], str], limit: int = 200, timeout: float = 10.0
) -> DeliveryReport:
    """Send the messages that are due.

    A message is claimed in one short transaction (its next attempt moved past the request's timeout, a
    lease), sent outside any transaction (so no database lock is held while a provider answers), and settled
    in another. A crash between sending and settling sends it again after the lease: at-least-once."""
    report = DeliveryReport()
    lease = dt.timedelta(seconds=timeout * 3)
    for _ in range(limit):
        with transaction.atomic(durable=True):
            queryset = OutboxMessage.objects.select_related("provider").filter(
                delivered_at__isnull=True, next_attempt_at__lte=now
            )
            if connection.vendor == "postgresql":
                queryset = queryset.select_for_update(skip_locked=True, of=("self",))
            message = queryset.order_by("next_attempt_at", "id").first()
            if message is None:
                break
            OutboxMessage.objects.filter(pk=message.pk).update(next_attempt_at=now + lease)
            data: dict[str, Any] = dict(message.payload)
            if message.topic == "grant":
                grant = Grant.objects.select_related("account", "resident").get(
                    pk=message.payload["grant_id"]
                )
                data = grant_item(grant, link_ref)
        provider = message.provider
        body = json.dumps({"topic": message.topic, "data": data}, ensure_ascii=False, sort_keys=True).encode()
        if not provider.webhook_url:
            ok, error = False, "the provider has no webhook_url"
        else:
            signature = sign(provider.webhook_secret, body, timestamp=int(now.timestamp()))
            ok, error = _post(provider.webhook_url, body, signature, timeout)
        attempts = message.attempts + 1
        with transaction.atomic(durable=True):
            if ok:
                OutboxMessage.objects.filter(pk=message.pk).update(
                    attempts=attempts, delivered_at=now, last_error=""
                )
                report.delivered += 1
            else:
                OutboxMessage.objects.filter(pk=message.pk).update(
                    attempts=attempts, next_attempt_at=now + backoff(attempts), last_error=error
                )
                report.failed += 1
    return report
