"""Reading a resident's history from the database, in the shape the rules engine takes; and the link notices
a provider pulls (:func:`link_notices`).

The platform never decides a rule itself: it gathers the facts (the resident, recorded decisions,
registrations, transactions, refunds, replacements), hands them to :mod:`mynapoint.rules`, and stores what
the rules answer. Past decisions are passed as *recorded* so a later parameter edition cannot rewrite them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from mynapoint.applications.models import (
    AccountReplacement,
    ApplicationStatus,
    HealthInsuranceRegistration,
    HolderRole,
    LinkEvent,
    PaymentAccount,
    PointApplication,
    PublicFundRegistration,
)
from mynapoint.identity.models import Resident
from mynapoint.providers.models import Provider, ProviderRefund, ProviderTransaction
from mynapoint.providers.selectors import link_ref
from mynapoint.rules.engine import ResidentHistory, ResidentResult, evaluate_resident
from mynapoint.rules.model import (
    Account,
    Apply,
    Event,
    Person,
    Phase1,
    Refund,
    RegisterHealthInsurance,
    RegisterPublicFundAccount,
    ReplaceAccount,
    Transaction,
    jst_day,
)
from mynapoint.rules.model import Provider as RulesProvider
from mynapoint.rules.parameters import Parameters, load_parameters

__all__ = [
    "UNKNOWN_BIRTH",
    "LinkNotice",
    "LinkNoticePage",
    "account_key",
    "link_notices",
    "parameters",
    "person_of",
    "resident_history",
    "resident_status",
]

UNKNOWN_BIRTH = dt.date(1900, 1, 1)  # only used to replay histories of residents who never declared one


def parameters() -> Parameters:
    """The parameter edition the platform decides with (MYNAPOINT_PARAMETER_EDITION; default: seed), with the
    values of MYNAPOINT_PARAMETER_OVERRIDES in place of the edition's (none in a deployment)."""
    overrides = dict(settings.MYNAPOINT_PARAMETER_OVERRIDES)
    return load_parameters(edition=settings.MYNAPOINT_PARAMETER_EDITION, overrides=overrides)


def account_key(account: PaymentAccount) -> str:
    return f"{account.provider.key}/{account.service_id}"


def rules_provider(provider: Provider) -> RulesProvider:
    return RulesProvider(
        key=provider.key,
        modes=frozenset(provider.modes or ["charge", "purchase"]),
        charge_deadline=provider.charge_deadline,
        application_deadline=provider.application_deadline,
    )


def person_of(resident: Resident) -> Person:
    phase1 = None
    if resident.phase1_applied is not None and resident.phase1_account:
        phase1 = Phase1(
            applied=resident.phase1_applied,
            account=resident.phase1_account,
            points=resident.phase1_points or 0,
        )
    representative = resident.legal_representative.mykey_id if resident.legal_representative else None
    return Person(
        key=resident.mykey_id,
        born=resident.born or UNKNOWN_BIRTH,
        card_applied=resident.card_applied,
        card_issued=resident.card_issued,
        kana=resident.kana or None,
        phase1=phase1,
        legal_representative=representative,
        died=resident.died,
        card_applied_online=resident.card_applied_online,
    )


def holder_key(resident: Resident, role: str, key: str) -> str:
    if role == HolderRole.SELF:
        return resident.mykey_id
    if role == HolderRole.REPRESENTATIVE and resident.legal_representative is not None:
        return resident.legal_representative.mykey_id
    return f"other:{key}"


@dataclass
class _Row:
    at: dt.datetime
    rank: int
    pk: int
    build: Any  # (seq, day, at) -> Event


def resident_history(resident: Resident, *, until: dt.datetime | None = None) -> ResidentHistory:
    """Everything the rules need about one resident, from the database, in time order."""
    accounts: dict[str, Account] = {}
    providers = {p.key: rules_provider(p) for p in Provider.objects.all()}
    rows: list[_Row] = []
    me = resident.mykey_id
    involved: set[int] = set()

    if resident.phase1_account:
        provider_key = resident.phase1_account.split("/", 1)[0]
        mode = resident.phase1_mode or sorted(providers.get(provider_key, RulesProvider(key="x")).modes)[0]
        accounts[resident.phase1_account] = Account(resident.phase1_account, provider_key, me, mode)
        found = PaymentAccount.objects.filter(
            provider__key=provider_key, service_id=resident.phase1_account.split("/", 1)[1]
        ).first()
        if found is not None:
            involved.add(found.pk)

    applications = (
        PointApplication.objects.select_related("account__provider", "operated_by")
        .filter(resident=resident)
        .exclude(status=ApplicationStatus.VOIDED)
    )
    for app in applications:
        key = account_key(app.account)
        accounts[key] = Account(
            key, app.account.provider.key, holder_key(resident, app.holder_role, key), app.mode
        )
        if app.status != ApplicationStatus.ACCEPTED:
            continue  # a rejection changes no state
        involved.add(app.account_id)
        rows.append(
            _Row(
                app.applied_at,
                0,
                app.pk,
                lambda seq, day, at, app=app, key=key: Apply(
                    seq, day, at, me, app.measure, key, app.operated_by.mykey_id, tuple(app.present),
                    recorded=True, recorded_code=None,
                ),
            )
        )  # fmt: skip
    # a refused replacement (onto an account linked to another person, P12) moved nothing: it is not history
    for rep in AccountReplacement.objects.select_related(
        "from_account__provider", "to_account__provider"
    ).filter(resident=resident, accepted=True):
        source, target = account_key(rep.from_account), account_key(rep.to_account)
        if target not in accounts and source in accounts:
            old = accounts[source]
            accounts[target] = Account(target, rep.to_account.provider.key, old.holder, old.mode)
        involved.add(rep.to_account_id)
        rows.append(
            _Row(
                rep.at,
                1,
                rep.pk,
                lambda seq, day, at, s=source, t=target: ReplaceAccount(seq, day, at, me, s, t),
            )
        )
    for reg in HealthInsuranceRegistration.objects.filter(resident=resident):
        rows.append(
            _Row(reg.registered_at, 2, reg.pk, lambda seq, day, at: RegisterHealthInsurance(seq, day, at, me))
        )
    for fund in PublicFundRegistration.objects.filter(resident=resident):
        code = None if fund.status == ApplicationStatus.ACCEPTED else fund.rejection_code
        rows.append(
            _Row(
                fund.registered_at,
                2,
                fund.pk,
                lambda seq, day, at, f=fund, c=code: RegisterPublicFundAccount(
                    seq, day, at, me, f.holder_kana, recorded=True, recorded_code=c
                ),
            )
        )
    transactions = ProviderTransaction.objects.select_related("account__provider").filter(
        account_id__in=involved
    )
    tx_keys: dict[int, str] = {}
    for tx in transactions:
        tx_keys[tx.pk] = f"{tx.provider_id}:{tx.txid}"
        key = account_key(tx.account)
        rows.append(
            _Row(
                tx.at,
                3,
                tx.pk,
                lambda seq, day, at, tx=tx, key=key: Transaction(
                    seq, day, at, key, tx.kind, tx.amount, f"{tx.provider_id}:{tx.txid}"
                ),
            )
        )
    for refund in ProviderRefund.objects.filter(transaction_id__in=tx_keys):
        of = tx_keys[refund.transaction_id]
        rows.append(
            _Row(
                refund.at,
                4,
                refund.pk,
                lambda seq, day, at, r=refund, of=of: Refund(seq, day, at, of, r.amount),
            )
        )
    if until is not None:
        rows = [r for r in rows if r.at <= until]
    rows.sort(key=lambda r: (r.at, r.rank, r.pk))
    events: list[Event] = [row.build(seq, jst_day(row.at), row.at) for seq, row in enumerate(rows)]
    return ResidentHistory(person=person_of(resident), accounts=accounts, providers=providers, events=events)


def resident_status(
    resident: Resident, *, as_of: dt.date, params: Parameters | None = None
) -> ResidentResult:
    """Points earned and the status of each measure at the end of ``as_of`` (JST)."""
    return evaluate_resident(resident_history(resident), params or parameters(), as_of_day=as_of.toordinal())


def statuses_for(residents: Iterable[Resident], *, as_of: dt.date) -> dict[str, ResidentResult]:
    params = parameters()
    return {r.mykey_id: resident_status(r, as_of=as_of, params=params) for r in residents}


# ------------------------------------------------------------------------------------------ link notices


@dataclass(frozen=True, slots=True)
class LinkNotice:
    """One link event as its provider sees it (``GET /links``): never the resident's identity, only her
    per-provider pseudonym ``link_ref``. ``link_id`` names the link across its events."""

    cursor: int
    link_id: int
    event: str
    link_ref: str
    measure: str
    mode: str
    service_id: str
    previous_service_id: str | None
    linked_at: dt.datetime
    changed_at: dt.datetime
    status: str


@dataclass(frozen=True, slots=True)
class LinkNoticePage:
    next_cursor: int
    items: list[LinkNotice]


def link_notices(*, provider: Provider, after: int, limit: int) -> LinkNoticePage:
    """The provider's link events after position ``after``, in order, at most ``limit``. ``next_cursor`` is the
    last one's position, or ``after`` when there is none. The same cursor gives the same page again."""
    events = list(
        LinkEvent.objects.select_related("application", "account", "previous_account")
        .filter(provider=provider, position__gt=after)
        .order_by("position")[:limit]
    )
    items = [
        LinkNotice(
            cursor=event.position,
            link_id=event.application_id,
            event=event.kind,
            link_ref=link_ref(provider_key=provider.key, resident_id=event.resident_id),
            measure=event.application.measure,
            mode=event.application.mode,
            service_id=event.account.service_id,
            previous_service_id=event.previous_account.service_id if event.previous_account else None,
            linked_at=event.application.applied_at,
            changed_at=event.at,
            status=event.status,
        )
        for event in events
    ]
    return LinkNoticePage(next_cursor=items[-1].cursor if items else after, items=items)
