"""Stop notices from providers (``POST /stops``): 紐づけ停止 on a death, a lost card replaced, 不当な取引.

- ``death``: the account holder died on ``occurred_on``; the death date is recorded on the resident the
  account is linked to (:func:`~mynapoint.applications.services.record_death`), so from that day no more
  points are earned (rules P7). The same date again is ``unchanged``; another date is a conflict.
- ``card_replaced``: a lost card replaced by ``new_service_id``; the link and the cap carry over
  (:func:`~mynapoint.applications.services.replace_lost_account`, rules P12). The same replacement again is
  ``unchanged``; onto an account linked to another person it is ``refused`` (the link stays).
- ``improper``: the provider reports 不当な取引 on the account. Only recorded (an audit event with the note)
  for the programme office to follow up; nothing is decided automatically.

A death and an accepted replacement are announced to the provider as link events (``GET /links``: ``stopped``,
``moved``), appended by the services they call.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from django.db import transaction
from django.db.models import Max

from mynapoint.applications.models import (
    AccountReplacement,
    ApplicationStatus,
    PaymentAccount,
    PointApplication,
)
from mynapoint.applications.services import record_death, replace_lost_account
from mynapoint.audit.services import Actor, record
from mynapoint.identity.models import Resident
from mynapoint.identity.mynumber import refuse_my_number
from mynapoint.providers.models import Provider
from mynapoint.rules.model import JST

__all__ = ["STOP_KINDS", "StopError", "StopResult", "record_stop"]

STOP_KINDS: Final = ("death", "card_replaced", "improper")
MAX_NOTE: Final = 1000


class StopError(ValueError):
    """A stop notice that cannot be recorded. ``status`` is the provider API's answer (422, 404 or 409)."""

    def __init__(self, code: str, ja: str, en: str, *, field: str, status: int = 422) -> None:
        self.code, self.ja, self.en, self.field, self.status = code, ja, en, field, status
        super().__init__(f"{code}: {en} ({field})")


@dataclass(frozen=True, slots=True)
class StopResult:
    status: str  # recorded | unchanged | refused


def record_stop(
    *,
    provider: Provider,
    kind: str,
    service_id: str,
    new_service_id: str | None,
    occurred_on: dt.date,
    note: str | None,
    now: dt.datetime,
    who: Actor,
) -> StopResult:
    """Record a provider's stop notice on one of its accounts (see the module docstring)."""
    if kind not in STOP_KINDS:
        raise StopError(
            "bad_kind",
            "種類は death, card_replaced, improper のいずれかです",
            f"unknown kind {kind!r}",
            field="kind",
        )
    if occurred_on > now.astimezone(JST).date():
        raise StopError(
            "in_future", "発生日が未来になっています", "occurred_on is in the future", field="occurred_on"
        )
    if note is not None:
        refuse_my_number(note, where="note")
        if len(note) > MAX_NOTE:
            raise StopError(
                "bad_note",
                f"備考は{MAX_NOTE}文字以内です",
                f"note: at most {MAX_NOTE} characters",
                field="note",
            )
    refuse_my_number(service_id, where="service_id")
    account = (
        PaymentAccount.objects.select_related("linked_resident")
        .filter(provider=provider, service_id=service_id)
        .first()
    )
    if account is None:
        raise StopError(
            "unknown_account",
            f"決済サービスID {service_id} は登録されていません",
            f"unknown service ID {service_id!r}",
            field="service_id",
            status=404,
        )
    if kind == "improper":
        return _improper(provider, account, occurred_on, note or "", now, who)
    resident = account.linked_resident
    if resident is None:
        raise StopError(
            "not_linked",
            f"決済サービスID {service_id} はマイナポイントに紐づいていません",
            f"service ID {service_id!r} is not linked to anyone",
            field="service_id",
        )
    if kind == "death":
        return _death(resident, occurred_on, now, who)
    return _replaced(provider, resident, account, new_service_id, occurred_on, now, who)


def _death(resident: Resident, died: dt.date, now: dt.datetime, who: Actor) -> StopResult:
    if resident.died == died:
        return StopResult("unchanged")
    if resident.died is not None:
        raise StopError(
            "conflict",
            "死亡日はすでに別の日付で記録されています",
            "a different date of death is already recorded",
            field="occurred_on",
            status=409,
        )
    record_death(resident=resident, died=died, now=now, who=who)
    return StopResult("recorded")


def _replaced(
    provider: Provider,
    resident: Resident,
    account: PaymentAccount,
    new_service_id: str | None,
    occurred_on: dt.date,
    now: dt.datetime,
    who: Actor,
) -> StopResult:
    if not new_service_id:
        raise StopError(
            "new_service_id_missing",
            "再発行後の決済サービスID（new_service_id）が必要です",
            "card_replaced needs new_service_id",
            field="new_service_id",
        )
    refuse_my_number(new_service_id, where="new_service_id")
    if new_service_id == account.service_id:
        raise StopError(
            "same_account",
            "再発行後の決済サービスIDが元と同じです",
            "new_service_id is the same as service_id",
            field="new_service_id",
        )
    earlier = (
        AccountReplacement.objects.filter(
            resident=resident, from_account=account, to_account__service_id=new_service_id
        )
        .order_by("-id")
        .first()
    )
    if earlier is not None:
        return StopResult("unchanged" if earlier.accepted else "refused")
    # it takes effect from the start of the (JST) day the card was replaced, but never before the links it
    # carries over were made on this account (a card replaced on the day it was linked, or on the day it
    # replaced another), nor after the notice
    made = [
        PointApplication.objects.filter(
            account=account, resident=resident, status=ApplicationStatus.ACCEPTED
        ).aggregate(last=Max("applied_at"))["last"],
        AccountReplacement.objects.filter(resident=resident, to_account=account, accepted=True).aggregate(
            last=Max("at")
        )["last"],
    ]
    linked_until = max((when for when in made if when is not None), default=None)
    at = dt.datetime.combine(occurred_on, dt.time(0), tzinfo=JST)
    if linked_until is not None and linked_until > at:
        at = min(linked_until, now)
    replacement = replace_lost_account(
        resident=resident,
        provider_key=provider.key,
        from_service_id=account.service_id,
        to_service_id=new_service_id,
        at=at,
        who=who,
        now=now,
    )
    return StopResult("recorded" if replacement.accepted else "refused")


def _improper(
    provider: Provider, account: PaymentAccount, occurred_on: dt.date, note: str, now: dt.datetime, who: Actor
) -> StopResult:
    with transaction.atomic(durable=True):
        record(
            who=who,
            action="improper_transaction_reported",
            subject_type="payment_account",
            subject_id=f"{provider.key}/{account.service_id}",
            before=None,
            after={
                "occurred_on": occurred_on,
                "note": note,
                "linked": account.linked_resident_id is not None,
            },
            at=now,
        )
    return StopResult("recorded")
