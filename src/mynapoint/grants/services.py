"""The grant engine: what each provider must give each resident, from the rules engine only.

For every measure a resident has linked, the engine asks the rules what she has earned as of the day her
provider's schedule makes due (immediately, on day N of the next month, or N days after the transaction),
compares it with what has already been instructed, and instructs the difference: a grant, or a claw-back
after refunds. Each resident is one durable transaction (grant rows, ledger entry, outbox message, audit),
and ``(resident, measure, ordinal)`` is unique, so a run killed at any point and restarted, or two runs at
once, never post a point twice or lose one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from mynapoint.applications.models import ApplicationStatus, PaymentAccount, PointApplication
from mynapoint.applications.selectors import parameters, resident_history
from mynapoint.audit.services import Actor, record
from mynapoint.dbutil import IN_LIST_MAX
from mynapoint.grants.models import Grant, GrantSequence, GrantStatus, OutboxMessage
from mynapoint.identity.models import Resident
from mynapoint.ledger.services import BUDGET, NewEntry, payable, post_entries, post_entry, resident_account
from mynapoint.providers.models import GrantDelivery, GrantSchedule, Provider
from mynapoint.rules.engine import ResidentEvaluator, evaluator_for
from mynapoint.rules.model import MEASURES
from mynapoint.rules.parameters import Parameters

__all__ = [
    "AckResult",
    "GrantRunReport",
    "NotYourGrant",
    "UnknownGrant",
    "acknowledge_grant",
    "acknowledge_grants",
    "due_cutoff",
    "grant_due_points",
    "residents_to_grant",
    "run_grants",
    "take_positions",
]


def due_cutoff(provider: Provider, today: dt.date) -> dt.date:
    """The last JST day whose earnings are due today under the provider's grant schedule."""
    if provider.grant_schedule == GrantSchedule.MONTHLY:
        day = max(1, min(28, provider.grant_schedule_days or 1))
        first_of_month = today.replace(day=1)
        end_of_previous = first_of_month - dt.timedelta(days=1)
        if today.day >= day:
            return end_of_previous
        return end_of_previous.replace(day=1) - dt.timedelta(days=1)
    if provider.grant_schedule == GrantSchedule.DAYS_AFTER:
        return today - dt.timedelta(days=provider.grant_schedule_days)
    return today


def _sources(evaluator: ResidentEvaluator, measure: str) -> list[str]:
    """The facts behind an entitlement, for the ledger entry (traceability)."""
    link = evaluator.links.get(measure)
    facts = [f"application:{measure}:{link.day}:{link.account}"] if link else []
    if measure == "premium":
        facts += [f"transaction:{tx.txid}" for tx in evaluator.counted]
        facts += [f"refund:{r.of}:{r.seq}" for r in evaluator.refunds]
    elif measure == "health_insurance" and evaluator.health_registration is not None:
        facts.append(f"registration:health_insurance:{evaluator.health_registration.at}")
    elif measure == "public_fund" and evaluator.public_fund_registration is not None:
        facts.append(f"registration:public_fund:{evaluator.public_fund_registration.at}")
    return facts


def _parameters_used(params: Parameters, measure: str) -> dict[str, object]:
    names = (
        ("premium_rate_percent", "premium_cap", "point_application_deadline")
        if measure == "premium"
        else ("registration_points", "point_application_deadline", f"{measure}_confirmation_lag_days")
    )
    return {n: str(params.value(n).value) for n in names}


def _lock_resident(resident: Resident) -> Resident:
    queryset = Resident.objects.filter(pk=resident.pk)
    if connection.vendor == "postgresql":
        queryset = queryset.select_for_update(of=("self",))
    return queryset.get()


def take_positions(providers: Sequence[int], ids: Sequence[int]) -> list[int]:
    """The cursor positions of grants just written in this transaction (``providers[i]``, ``ids[i]``: the
    provider and id of grant i), in the same order. Each provider's :class:`GrantSequence` row is locked, in
    provider order (no deadlock between two instructing transactions), and stays locked until the transaction
    ends: the provider's positions commit in the order they are given. Within a provider, grants take
    positions in id order, each the larger of its id and the previous position + 1.

    Called after the transaction's ledger entries (whose unique keys are where two runs meet) and before its
    audit events (the audit head is locked to commit as well): one lock order for every instructing use case.
    """
    by_provider: dict[int, list[int]] = {}
    for index, provider in enumerate(providers):
        by_provider.setdefault(provider, []).append(index)
    positions = [0] * len(ids)
    for provider, indexes in sorted(by_provider.items()):
        # a provider's first grant makes its row; a row made at the same moment by another transaction is
        # waited for, as its lock would be
        GrantSequence.objects.bulk_create([GrantSequence(provider_id=provider)], ignore_conflicts=True)
        row = GrantSequence.objects.filter(provider_id=provider)
        if connection.vendor == "postgresql":
            row = row.select_for_update()
        last = int(row.values_list("last", flat=True).get())
        for index in sorted(indexes, key=ids.__getitem__):
            last = positions[index] = max(last + 1, ids[index])
        row.update(last=last)
    return positions


def grant_due_points(*, resident: Resident, today: dt.date, now: dt.datetime, who: Actor) -> list[Grant]:
    """Instruct what is due to one resident today. Idempotent: running it again posts nothing new."""
    params = parameters()
    with transaction.atomic(durable=True):
        me = _lock_resident(resident)
        targets = {
            app.measure: app.account
            for app in PointApplication.objects.select_related("account__provider").filter(
                resident=me, status=ApplicationStatus.ACCEPTED
            )
        }
        carried = _phase1_account(me, params)
        if "premium" not in targets and carried is not None:
            targets["premium"] = carried  # a phase-1 link carried into phase 2 (program.md D2)
        if not targets:
            return []
        history = resident_history(me)
        evaluators: dict[dt.date, ResidentEvaluator] = {}
        made: list[Grant] = []
        # (action, before, after): recorded once the positions are taken (the lock order of take_positions)
        audits: list[tuple[str, dict[str, object], dict[str, object]]] = []
        for measure in MEASURES:
            linked = targets.get(measure)
            if linked is None:
                continue
            account = _current_account(me, linked)
            provider = account.provider
            cutoff = due_cutoff(provider, today)
            evaluator = evaluators.get(cutoff)
            if evaluator is None:
                evaluator = evaluators[cutoff] = evaluator_for(history, params, as_of_day=cutoff.toordinal())
            earned = evaluator.result().earned[measure]
            done = Grant.objects.filter(resident=me, measure=measure)
            instructed = int(done.aggregate(total=Sum("amount"))["total"] or 0)
            delta = earned - instructed
            if delta == 0:
                continue
            ordinal = done.count() + 1
            key = f"grant:{me.mykey_id}:{measure}:{ordinal}"
            legs = [(BUDGET, -delta), (payable(provider.key), delta)]
            entry, _ = post_entry(
                kind="grant_instructed" if delta > 0 else "clawback_instructed",
                at=now,
                effective_date=cutoff,
                key=key,
                legs=legs,
                rule_edition=params.edition,
                parameters=_parameters_used(params, measure),
                sources=_sources(evaluator, measure),
                memo=f"{measure}: earned {earned} as of {cutoff}, instructed before {instructed}",
            )
            grant = Grant.objects.create(
                resident=me,
                measure=measure,
                provider=provider,
                account=account,
                ordinal=ordinal,
                amount=delta,
                cumulative_after=earned,
                due_as_of=cutoff,
                instructed_at=now,
                instruction_entry=entry,
            )
            if provider.grant_delivery == GrantDelivery.PUSH:
                OutboxMessage.objects.create(
                    provider=provider,
                    topic="grant",
                    payload={"grant_id": grant.pk},
                    created_at=now,
                    next_attempt_at=now,
                )
            audits.append(
                (
                    "grant_instructed" if delta > 0 else "clawback_instructed",
                    {"measure": measure, "instructed": instructed},
                    {"measure": measure, "instructed": earned, "grant": grant.pk, "provider": provider.key},
                )
            )
            made.append(grant)
        positions = take_positions([g.provider_id for g in made], [g.pk for g in made])
        for grant, position in zip(made, positions, strict=True):
            Grant.objects.filter(pk=grant.pk).update(position=position)
            grant.position = position
        for action, before, after in audits:
            record(
                who=who, action=action, subject_type="resident", subject_id=me.mykey_id,
                before=before, after=after, at=now,
            )  # fmt: skip
        return made


def _phase1_account(resident: Resident, params: Parameters) -> PaymentAccount | None:
    """The phase-1 account a resident keeps earning on, if her phase-1 link carries over (program.md §3)."""
    if resident.phase1_applied is None or not resident.phase1_account or "/" not in resident.phase1_account:
        return None
    if resident.phase1_applied.toordinal() > params.phase1_application_cutoff_day:
        return None
    if (resident.phase1_points or 0) >= params.premium_cap:
        return None
    provider_key, service_id = resident.phase1_account.split("/", 1)
    return (
        PaymentAccount.objects.select_related("provider")
        .filter(provider__key=provider_key, service_id=service_id)
        .first()
    )


def _current_account(resident: Resident, account: PaymentAccount) -> PaymentAccount:
    """The account a link earns on now: a lost card's replacement carries the link over."""
    from mynapoint.applications.models import AccountReplacement

    current = account
    for replacement in (
        AccountReplacement.objects.select_related("to_account__provider")
        .filter(resident=resident, accepted=True)
        .order_by("at", "id")
    ):
        if replacement.from_account_id == current.pk:
            current = replacement.to_account
    return current


class UnknownGrant(LookupError):  # noqa: N818 - a 404-style refusal
    """An acknowledgement names a grant that does not exist."""

    def __init__(self, index: int, grant_id: int) -> None:
        super().__init__(f"items[{index}]: unknown grant {grant_id}")
        self.index, self.grant_id = index, grant_id


class NotYourGrant(PermissionError):  # noqa: N818 - a 403-style refusal
    """An acknowledgement names another provider's grant."""

    def __init__(self, index: int, grant_id: int) -> None:
        super().__init__(f"items[{index}]: grant {grant_id} belongs to another provider")
        self.index, self.grant_id = index, grant_id


@dataclass(frozen=True)
class AckResult:
    acknowledged: int  # grants acknowledged by this call
    already: int  # items naming a grant acknowledged before (or earlier in the same call)


LOCK_CHUNK = IN_LIST_MAX  # grants locked by one statement
UPDATE_CHUNK = 300  # grants marked acknowledged by one statement (three parameters each)
# what an acknowledgement reads of a grant (not the instruction's sources: a long list for a premium grant)
_ACK_FIELDS: Final = (
    "pk",
    "provider_id",
    "status",
    "amount",
    "measure",
    "resident__mykey_id",
    "instruction_entry__rule_edition",
    "instruction_entry__parameters",
)


def acknowledge_grant(
    *, grant: Grant, provider: Provider, reference: str, now: dt.datetime, who: Actor
) -> Grant:
    """The provider confirms it has granted (or clawed back) the points: payable → resident. Idempotent."""
    acknowledge_grants(provider=provider, acks=[(grant.pk, reference)], now=now, who=who)
    return Grant.objects.get(pk=grant.pk)


def acknowledge_grants(
    *, provider: Provider, acks: Sequence[tuple[int, str]], now: dt.datetime, who: Actor
) -> AckResult:
    """The provider confirms it has granted (or clawed back) the points of the grants ``acks`` names, as
    ``(grant id, the provider's reference)``: for each grant not acknowledged before, one ledger entry
    (payable → resident; its key ``ack:<grant id>``) and the grant marked acknowledged with the reference.

    One durable transaction for all, with one audit event (counts and a digest of the items). Every item is
    checked first: an unknown grant (:class:`UnknownGrant`) or another provider's (:class:`NotYourGrant`)
    refuses the whole call. A grant named again — acknowledged before, or earlier in the same call — counts as
    ``already`` and keeps its first reference. On PostgreSQL the grants are locked in id order, so two calls
    naming the same grants wait for each other and the second sees them acknowledged."""
    with transaction.atomic(durable=True):
        ids = sorted({grant_id for grant_id, _ in acks})
        grants: dict[int, Grant] = {}  # the provider's own grants only: another's are never locked
        for start in range(0, len(ids), LOCK_CHUNK):
            query = (
                Grant.objects.select_related("resident", "instruction_entry")
                .only(*_ACK_FIELDS)
                .filter(provider=provider, pk__in=ids[start : start + LOCK_CHUNK])
                .order_by("pk")
            )
            if connection.vendor == "postgresql":
                query = query.select_for_update(of=("self",))
            grants.update((grant.pk, grant) for grant in query)
        if len(grants) < len(ids):  # some are unknown or another provider's: which, without locking them
            missing = [pk for pk in ids if pk not in grants]
            others: set[int] = set()
            for start in range(0, len(missing), LOCK_CHUNK):
                others.update(
                    Grant.objects.filter(pk__in=missing[start : start + LOCK_CHUNK]).values_list(
                        "pk", flat=True
                    )
                )
            for index, (grant_id, _) in enumerate(acks):
                if grant_id in others:
                    raise NotYourGrant(index, grant_id)
                if grant_id not in grants:
                    raise UnknownGrant(index, grant_id)
        fresh: dict[int, str] = {}
        for grant_id, reference in acks:
            if grants[grant_id].status == GrantStatus.INSTRUCTED and grant_id not in fresh:
                fresh[grant_id] = reference
        result = AckResult(acknowledged=len(fresh), already=len(acks) - len(fresh))
        if not fresh:
            return result
        owed = payable(provider.key)
        posted = post_entries(
            [
                NewEntry(
                    kind="grant_acknowledged" if grant.amount > 0 else "clawback_acknowledged",
                    at=now,
                    effective_date=now.date(),
                    key=f"ack:{grant.pk}",
                    legs=[
                        (owed, -grant.amount),
                        (resident_account(grant.resident.mykey_id, grant.measure), grant.amount),
                    ],
                    rule_edition=grant.instruction_entry.rule_edition,
                    parameters=grant.instruction_entry.parameters,
                    sources=[f"grant:{grant.pk}", f"provider_reference:{reference}"],
                )
                for grant, reference in (
                    (grants[grant_id], reference) for grant_id, reference in fresh.items()
                )
            ]
        )
        _mark_acknowledged(
            [
                (grant_id, entry.pk, reference)
                for (grant_id, reference), (entry, _) in zip(fresh.items(), posted, strict=True)
            ],
            now,
        )
        digest = hashlib.sha256(
            "".join(f"{grant_id}|{reference}\n" for grant_id, reference in acks).encode("utf-8")
        ).hexdigest()
        record(
            who=who,
            action="grants_acknowledged",
            subject_type="provider",
            subject_id=provider.key,
            before=None,
            after={
                "items": len(acks),
                "acknowledged": result.acknowledged,
                "already": result.already,
                "first": min(fresh),
                "last": max(fresh),
                "points": sum(grants[grant_id].amount for grant_id in fresh),
                "digest": digest,
            },
            at=now,
        )
        return result


def _mark_acknowledged(done: list[tuple[int, int, str]], now: dt.datetime) -> None:
    """Mark grants acknowledged: ``(grant id, acknowledgement entry id, reference)``. One UPDATE joined to a list
    of values per :data:`UPDATE_CHUNK` grants (an ORM ``bulk_update`` compares every row with every value, and 10,000 take
    seconds); the same statement on both databases, its time adapted as the ORM adapts it."""
    table = connection.ops.quote_name(Grant._meta.db_table)
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        for start in range(0, len(done), UPDATE_CHUNK):
            part = done[start : start + UPDATE_CHUNK]
            values = ", ".join(["(%s, %s, %s)"] * len(part))
            cursor.execute(
                f"UPDATE {table} SET status = %s, acknowledged_at = %s, acknowledgement_entry_id = v.column2, "  # noqa: S608 - the table's name
                f"provider_reference = v.column3 FROM (VALUES {values}) AS v WHERE {table}.id = v.column1",
                [GrantStatus.ACKNOWLEDGED.value, at, *(value for row in part for value in row)],
            )


def residents_to_grant() -> Iterable[Resident]:
    """Residents with at least one accepted application, in a stable order."""
    ids = sorted(
        set(
            PointApplication.objects.filter(status=ApplicationStatus.ACCEPTED).values_list(
                "resident_id", flat=True
            )
        )
    )
    for start in range(0, len(ids), 500):
        yield from Resident.objects.filter(pk__in=ids[start : start + 500]).order_by("pk")


@dataclass
class GrantRunReport:
    residents: int = 0
    grants: int = 0
    clawbacks: int = 0
    points: int = 0
    retried: int = 0
    errors: list[str] = field(default_factory=list)


def run_grants(
    *, today: dt.date, now: dt.datetime, who: Actor, progress: Callable[[int, int], None] | None = None
) -> GrantRunReport:
    """Instruct everything due today, resident by resident (``mynapoint grants run``)."""
    report = GrantRunReport()
    residents = list(residents_to_grant())
    for n, resident in enumerate(residents, start=1):
        for attempt in range(3):
            try:
                made = grant_due_points(resident=resident, today=today, now=now, who=who)
                break
            except IntegrityError:  # another run posted the same ordinal first: recompute
                report.retried += 1
                if attempt == 2:
                    report.errors.append(f"{resident.mykey_id}: could not post after 3 tries")
                    made = []
        report.residents += 1
        for grant in made:
            if grant.amount > 0:
                report.grants += 1
            else:
                report.clawbacks += 1
            report.points += grant.amount
        if progress:
            progress(n, len(residents))
    return report
