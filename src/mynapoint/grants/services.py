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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from mynapoint.applications.models import ApplicationStatus, PaymentAccount, PointApplication
from mynapoint.applications.selectors import parameters, resident_history
from mynapoint.audit.services import Actor, record
from mynapoint.grants.models import Grant, GrantSequence, GrantStatus, OutboxMessage
from mynapoint.identity.models import Resident
from mynapoint.ledger.services import BUDGET, payable, post_entry, resident_account
from mynapoint.providers.models import GrantDelivery, GrantSchedule, Provider
from mynapoint.rules.engine import ResidentEvaluator, evaluator_for
from mynapoint.rules.model import MEASURES
from mynapoint.rules.parameters import Parameters

__all__ = [
    "GrantRunReport",
    "acknowledge_grant",
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


def acknowledge_grant(
    *, grant: Grant, provider: Provider, reference: str, now: dt.datetime, who: Actor
) -> Grant:
    """The provider confirms it has granted (or clawed back) the points: payable → resident. Idempotent."""
    if grant.provider_id != provider.pk:
        raise PermissionError("this grant belongs to another provider")
    with transaction.atomic(durable=True):
        queryset = Grant.objects.select_related("resident")
        if (
            connection.vendor == "postgresql"
        ):  # two acknowledgements of one grant: the second waits, then sees it
            queryset = queryset.select_for_update(of=("self",))
        locked = queryset.get(pk=grant.pk)
        if locked.status == GrantStatus.ACKNOWLEDGED:
            return locked
        legs = [
            (payable(provider.key), -locked.amount),
            (resident_account(locked.resident.mykey_id, locked.measure), locked.amount),
        ]
        entry, _ = post_entry(
            kind="grant_acknowledged" if locked.amount > 0 else "clawback_acknowledged",
            at=now,
            effective_date=now.date(),
            key=f"ack:{locked.pk}",
            legs=legs,
            rule_edition=locked.instruction_entry.rule_edition,
            parameters=locked.instruction_entry.parameters,
            sources=[f"grant:{locked.pk}", f"provider_reference:{reference}"],
        )
        Grant.objects.filter(pk=locked.pk).update(
            status=GrantStatus.ACKNOWLEDGED,
            acknowledged_at=now,
            acknowledgement_entry=entry,
            provider_reference=reference,
        )
        record(
            who=who,
            action="grant_acknowledged",
            subject_type="grant",
            subject_id=str(locked.pk),
            before={"status": GrantStatus.INSTRUCTED},
            after={"status": GrantStatus.ACKNOWLEDGED, "reference": reference},
            at=now,
        )
        locked.refresh_from_db()
        return locked


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
