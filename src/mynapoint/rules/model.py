"""The facts the rules decide on: people, payment accounts, providers and dated events.

Days are JST calendar days held as proleptic ordinals (``date.toordinal()``); ``seq`` is the position of an
event in time order. Both are plain ints so the engine can run over millions of residents. The original
``at`` (a date or an aware datetime) is kept for explanations.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "CHARGE_MODE",
    "JST",
    "MEASURES",
    "MODES",
    "PURCHASE_MODE",
    "Account",
    "Apply",
    "Event",
    "Measure",
    "Mode",
    "Person",
    "Phase1",
    "Provider",
    "Refund",
    "RegisterHealthInsurance",
    "RegisterPublicFundAccount",
    "RenewCertificate",
    "ReplaceAccount",
    "Transaction",
    "jst_day",
]

JST: Final = dt.timezone(dt.timedelta(hours=9), "JST")

Measure = Literal["premium", "health_insurance", "public_fund"]
MEASURES: Final[tuple[Measure, ...]] = ("premium", "health_insurance", "public_fund")
Mode = Literal["charge", "purchase"]
CHARGE_MODE: Final = "charge"
PURCHASE_MODE: Final = "purchase"
MODES: Final[tuple[Mode, ...]] = (CHARGE_MODE, PURCHASE_MODE)


def jst_day(at: dt.date | dt.datetime) -> int:
    """The JST calendar day of a date or an aware datetime, as an ordinal (program.md D1)."""
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            raise ValueError(f"{at.isoformat()} has no UTC offset; programme times must be aware (JST)")
        return at.astimezone(JST).date().toordinal()
    return at.toordinal()


@dataclass(frozen=True, slots=True)
class Phase1:
    """A phase-1 (マイナポイント第1弾) history: when the person applied, on which account, points received."""

    applied: dt.date
    account: str
    points: int


@dataclass(frozen=True, slots=True)
class Person:
    key: str
    born: dt.date
    card_applied: dt.date | None = None
    card_issued: dt.date | None = None
    kana: str | None = None
    phase1: Phase1 | None = None
    legal_representative: str | None = None
    died: dt.date | None = None
    card_applied_online: bool = False
    # ordinals, derived
    card_applied_day: int | None = field(init=False, repr=False, compare=False)
    card_issued_day: int | None = field(init=False, repr=False, compare=False)
    died_day: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "card_applied_day", self.card_applied.toordinal() if self.card_applied else None
        )
        object.__setattr__(
            self, "card_issued_day", self.card_issued.toordinal() if self.card_issued else None
        )
        object.__setattr__(self, "died_day", self.died.toordinal() if self.died else None)

    def age_on(self, day: int) -> int:
        """Age in whole years on a JST day. A 29 February birthday falls on 1 March in common years."""
        on = dt.date.fromordinal(day)
        born = self.born
        age = on.year - born.year
        if (on.month, on.day) < (born.month, born.day):
            age -= 1
        return age


@dataclass(frozen=True, slots=True)
class Provider:
    key: str
    modes: frozenset[str] = frozenset(MODES)
    charge_deadline: dt.date | None = None
    application_deadline: dt.date | None = None
    charge_deadline_day: int | None = field(init=False, repr=False, compare=False)
    application_deadline_day: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cd, ad = self.charge_deadline, self.application_deadline
        object.__setattr__(self, "charge_deadline_day", cd.toordinal() if cd else None)
        object.__setattr__(self, "application_deadline_day", ad.toordinal() if ad else None)


@dataclass(frozen=True, slots=True)
class Account:
    """A payment-service account, ``provider/account-id``, with its holder and the mode that earns 施策1."""

    key: str
    provider: str
    holder: str
    mode: str


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    day: int
    at: dt.date | dt.datetime


@dataclass(frozen=True, slots=True)
class Apply(Event):
    person: str
    measure: str
    account: str
    by: str
    present: tuple[str, ...]
    # A decision already taken and recorded (the platform replaying a resident's history): honoured as it
    # stands, never re-decided, so that a later parameter edition cannot rewrite an earlier decision.
    recorded: bool = False
    recorded_code: str | None = None


@dataclass(frozen=True, slots=True)
class Transaction(Event):
    account: str
    kind: str  # charge | purchase
    amount: int
    txid: str


@dataclass(frozen=True, slots=True)
class Refund(Event):
    of: str
    amount: int


@dataclass(frozen=True, slots=True)
class RegisterHealthInsurance(Event):
    person: str


@dataclass(frozen=True, slots=True)
class RegisterPublicFundAccount(Event):
    person: str
    holder_kana: str | None = None
    recorded: bool = False  # a decision already taken and recorded (see Apply.recorded)
    recorded_code: str | None = None


@dataclass(frozen=True, slots=True)
class RenewCertificate(Event):
    person: str


@dataclass(frozen=True, slots=True)
class ReplaceAccount(Event):
    person: str
    from_account: str
    to_account: str
