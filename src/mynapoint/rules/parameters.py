"""Programme parameters: dated values, each with its source.

The values live in ``data/parameters.yaml``. A :class:`Parameters` object is one consistent set of values,
chosen by edition name, by "as decided on DATE", and optionally changed by what-if overrides. Rules read
every date, rate and cap from it; none is written in code.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

__all__ = [
    "Edition",
    "ParameterError",
    "ParameterValue",
    "Parameters",
    "available_editions",
    "load_parameters",
    "parameter_names",
]


class ParameterError(ValueError):
    """A parameter name, edition, date or override value that cannot be used."""


@dataclass(frozen=True, slots=True)
class ParameterValue:
    name: str
    value: Any
    decided: dt.date
    source: str
    label_ja: str
    label_en: str
    overridden: bool = False


@dataclass(frozen=True, slots=True)
class Edition:
    name: str
    decided: dt.date
    title: str
    source: str


@dataclass(frozen=True, slots=True)
class _Catalogue:
    editions: dict[str, Edition]
    default_edition: str
    kinds: dict[str, str]
    nullable: dict[str, bool]
    labels: dict[str, tuple[str, str]]
    values: dict[str, list[ParameterValue]]


def _as_date(raw: Any, where: str) -> dt.date:
    if isinstance(raw, dt.datetime) or not isinstance(raw, dt.date):
        raise ParameterError(f"{where}: expected a date (YYYY-MM-DD), got {raw!r}")
    return dt.date(raw.year, raw.month, raw.day)


@cache
def _catalogue() -> _Catalogue:
    text = resources.files("mynapoint.rules").joinpath("data/parameters.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    editions = {
        name: Edition(
            name=name,
            decided=_as_date(e["decided"], f"editions.{name}.decided"),
            title=str(e["title"]),
            source=str(e["source"]),
        )
        for name, e in doc["editions"].items()
    }
    kinds: dict[str, str] = {}
    nullable: dict[str, bool] = {}
    labels: dict[str, tuple[str, str]] = {}
    values: dict[str, list[ParameterValue]] = {}
    for name, spec in doc["parameters"].items():
        kinds[name] = spec["kind"]
        nullable[name] = bool(spec.get("nullable", False))
        labels[name] = (spec["label_ja"], spec["label_en"])
        vals = [
            ParameterValue(
                name=name,
                value=_coerce(name, spec["kind"], nullable[name], v["value"], "parameters.yaml"),
                decided=_as_date(v["decided"], f"parameters.{name}.decided"),
                source=str(v["source"]),
                label_ja=spec["label_ja"],
                label_en=spec["label_en"],
            )
            for v in spec["values"]
        ]
        vals.sort(key=lambda v: v.decided)
        values[name] = vals
    return _Catalogue(editions, doc["default_edition"], kinds, nullable, labels, values)


def _coerce(name: str, kind: str, nullable: bool, raw: Any, where: str) -> Any:
    if raw is None:
        if nullable:
            return None
        raise ParameterError(f"{where}: parameter {name!r} cannot be empty")
    if kind == "date":
        if isinstance(raw, str):
            try:
                return dt.date.fromisoformat(raw)
            except ValueError:
                raise ParameterError(
                    f"{where}: parameter {name!r} expects a date YYYY-MM-DD, got {raw!r}"
                ) from None
        return _as_date(raw, f"{where}: parameter {name!r}")
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ParameterError(f"{where}: parameter {name!r} expects a whole number, got {raw!r}")
        try:
            number = int(raw)
        except ValueError:
            raise ParameterError(f"{where}: parameter {name!r} expects a whole number, got {raw!r}") from None
        if number < 0:
            raise ParameterError(f"{where}: parameter {name!r} cannot be negative, got {number}")
        return number
    raise ParameterError(f"parameters.yaml: unknown kind {kind!r} for {name!r}")  # pragma: no cover


def parameter_names() -> list[str]:
    return list(_catalogue().kinds)


def available_editions() -> list[Edition]:
    return sorted(_catalogue().editions.values(), key=lambda e: e.decided)


@dataclass(frozen=True, slots=True)
class Parameters:
    """One consistent set of programme parameter values.

    Dates are JST calendar days, inclusive. ``*_day`` attributes hold the same dates as proleptic ordinals,
    which is what the engine compares on its hot path.
    """

    edition: str
    as_decided_on: dt.date
    values: dict[str, ParameterValue] = field(repr=False)

    # typed accessors, filled in __post_init__
    phase2_start: dt.date = field(init=False)
    registration_measures_start: dt.date = field(init=False)
    card_application_deadline: dt.date = field(init=False)
    card_application_online_grace_day: dt.date | None = field(init=False)
    point_application_deadline: dt.date = field(init=False)
    phase1_application_cutoff: dt.date = field(init=False)
    premium_rate_percent: int = field(init=False)
    premium_cap: int = field(init=False)
    registration_points: int = field(init=False)
    health_insurance_confirmation_lag_days: int = field(init=False)
    public_fund_confirmation_lag_days: int = field(init=False)
    minor_age: int = field(init=False)
    representative_only_age: int = field(init=False)

    phase2_start_day: int = field(init=False)
    registration_measures_start_day: int = field(init=False)
    card_application_deadline_day: int = field(init=False)
    card_application_online_deadline_day: int = field(init=False)
    point_application_deadline_day: int = field(init=False)
    phase1_application_cutoff_day: int = field(init=False)

    def __post_init__(self) -> None:
        for name, pv in self.values.items():
            object.__setattr__(self, name, pv.value)
        for name in (
            "phase2_start",
            "registration_measures_start",
            "card_application_deadline",
            "point_application_deadline",
            "phase1_application_cutoff",
        ):
            object.__setattr__(self, f"{name}_day", getattr(self, name).toordinal())
        grace = self.card_application_online_grace_day
        online = max(self.card_application_deadline, grace) if grace else self.card_application_deadline
        object.__setattr__(self, "card_application_online_deadline_day", online.toordinal())

    def value(self, name: str) -> ParameterValue:
        try:
            return self.values[name]
        except KeyError:
            raise ParameterError(f"unknown parameter {name!r}; known: {', '.join(self.values)}") from None

    def with_overrides(self, overrides: dict[str, Any], *, source: str = "what-if override") -> Parameters:
        """A copy with some values replaced (a what-if). Unknown names and bad values are errors."""
        if not overrides:
            return self
        cat = _catalogue()
        values = dict(self.values)
        for name, raw in overrides.items():
            if name not in cat.kinds:
                raise ParameterError(f"unknown parameter {name!r}; known: {', '.join(cat.kinds)}")
            label_ja, label_en = cat.labels[name]
            values[name] = ParameterValue(
                name=name,
                value=_coerce(name, cat.kinds[name], cat.nullable[name], raw, source),
                decided=self.as_decided_on,
                source=source,
                label_ja=label_ja,
                label_en=label_en,
                overridden=True,
            )
        return Parameters(edition=f"{self.edition}+what-if", as_decided_on=self.as_decided_on, values=values)


@cache
def _load_cached(edition: str | None, as_decided_on: dt.date | None) -> Parameters:
    cat = _catalogue()
    if edition is not None and as_decided_on is not None:
        raise ParameterError("choose an edition or an as-decided-on date, not both")
    if as_decided_on is None:
        name = edition or cat.default_edition
        if name not in cat.editions:
            known = ", ".join(e.name for e in available_editions())
            raise ParameterError(f"unknown edition {name!r}; known editions: {known}")
        as_decided_on = cat.editions[name].decided
        label = name
    else:
        label = f"as decided on {as_decided_on.isoformat()}"
    chosen: dict[str, ParameterValue] = {}
    for pname, vals in cat.values.items():
        known_then = [v for v in vals if v.decided <= as_decided_on]
        if not known_then:
            first = vals[0].decided.isoformat()
            raise ParameterError(
                f"parameter {pname!r} has no value decided on or before {as_decided_on.isoformat()} "
                f"(the earliest recorded decision is {first})"
            )
        chosen[pname] = known_then[-1]
    return Parameters(edition=label, as_decided_on=as_decided_on, values=chosen)


def load_parameters(
    *,
    edition: str | None = None,
    as_decided_on: dt.date | None = None,
    overrides: dict[str, Any] | None = None,
) -> Parameters:
    """The parameters of an edition (default: the seed edition) or as decided on a date, plus overrides."""
    params = _load_cached(edition, as_decided_on)
    return params.with_overrides(overrides) if overrides else params
