from __future__ import annotations

import datetime as dt

import pytest

from mynapoint.rules.parameters import ParameterError, available_editions, load_parameters, parameter_names


def test_the_seed_edition_is_the_default() -> None:
    params = load_parameters()
    assert params.edition == "seed"
    assert params.point_application_deadline == dt.date(2023, 5, 31)
    assert params.card_application_deadline == dt.date(2023, 2, 28)
    assert params.card_application_online_grace_day is None
    assert params.premium_rate_percent == 25
    assert params.premium_cap == 5000
    assert params.registration_points == 7500


def test_every_value_has_a_source_and_a_decision_date() -> None:
    params = load_parameters()
    assert set(params.values) == set(parameter_names())
    for value in params.values.values():
        assert value.source.strip()
        assert value.decided <= params.as_decided_on
        assert value.label_ja
        assert value.label_en


@pytest.mark.parametrize(
    ("decided", "deadline", "grace"),
    [
        (dt.date(2023, 2, 24), dt.date(2023, 5, 31), None),
        (dt.date(2023, 2, 28), dt.date(2023, 5, 31), dt.date(2023, 3, 1)),
        (dt.date(2023, 3, 30), dt.date(2023, 5, 31), dt.date(2023, 3, 1)),
        (dt.date(2023, 3, 31), dt.date(2023, 9, 30), dt.date(2023, 3, 1)),
        (dt.date(2026, 11, 26), dt.date(2023, 9, 30), dt.date(2023, 3, 1)),
    ],
)
def test_as_decided_on_takes_the_newest_value_decided_by_then(
    decided: dt.date, deadline: dt.date, grace: dt.date | None
) -> None:
    params = load_parameters(as_decided_on=decided)
    assert params.point_application_deadline == deadline
    assert params.card_application_online_grace_day == grace


def test_editions_by_name() -> None:
    names = [e.name for e in available_editions()]
    assert names == ["seed", "card-grace-2023-02-28", "extension-2023-03-31"]
    assert load_parameters(edition="extension-2023-03-31").point_application_deadline == dt.date(2023, 9, 30)


def test_before_the_first_known_decision_is_an_error_not_a_guess() -> None:
    with pytest.raises(ParameterError, match="no value decided on or before 2022-06-01"):
        load_parameters(as_decided_on=dt.date(2022, 6, 1))


def test_unknown_edition_lists_the_known_ones() -> None:
    with pytest.raises(ParameterError, match=r"unknown edition 'final'.*seed"):
        load_parameters(edition="final")


def test_overrides_are_what_ifs_with_their_own_source() -> None:
    params = load_parameters(overrides={"point_application_deadline": "2023-12-31", "premium_cap": 6000})
    assert params.point_application_deadline == dt.date(2023, 12, 31)
    assert params.point_application_deadline_day == dt.date(2023, 12, 31).toordinal()
    assert params.value("premium_cap").overridden
    assert params.value("premium_cap").source == "what-if override"
    assert load_parameters().premium_cap == 5000  # the edition itself is untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"premium_capp": 1}, "unknown parameter 'premium_capp'"),
        ({"premium_cap": -1}, "cannot be negative"),
        ({"premium_cap": "many"}, "whole number"),
        ({"point_application_deadline": "2023-02-30"}, "expects a date"),
        ({"point_application_deadline": None}, "cannot be empty"),
    ],
)
def test_bad_overrides_say_what_is_wrong(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        load_parameters(overrides=overrides)
