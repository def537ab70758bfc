"""The engine's own interface: explanations, the per-resident path, and agreement with the world runner."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from mynapoint.bench.population import resident_histories
from mynapoint.rules.engine import ResidentHistory, evaluate_resident, evaluate_world
from mynapoint.rules.parameters import load_parameters
from mynapoint.scenarios.loader import load_file

SHARED = Path(__file__).parents[1] / "scenarios" / "shared"


def _scenario(file: str, name: str):  # type: ignore[no-untyped-def]
    return next(s for s in load_file(SHARED / file) if s.name == name)


def _world(scenario):  # type: ignore[no-untyped-def]
    return evaluate_world(
        people=scenario.people.values(),
        accounts=scenario.accounts,
        providers=scenario.providers,
        events=scenario.events,
        params=scenario.params,
        as_of=scenario.as_of,
    )


def test_a_premium_result_explains_itself_in_japanese_with_parameters_and_transactions() -> None:
    scenario = _scenario("premium.yaml", "返金されたチャージは差し引く")
    premium = _world(scenario).residents["taro"].outcomes()[0]
    assert premium.earned == 3000
    text = premium.explanation.text_ja()
    assert "施策1" in text
    assert "3,000ポイント" in text
    assert "12,000円 × 25%" in text  # 20,000 charged, 8,000 refunded
    assert "c1" in text
    assert "返金 c1" in text
    assert "付与率" in text
    assert "seed: 付与率25%" in text
    assert "premium: 3000 points" in premium.explanation.text_en()


def test_a_rejection_explains_which_deadline_and_its_source() -> None:
    scenario = _scenario("eligibility.yaml", "申込期限（令和5年5月末）を過ぎた申込は受け付けない")
    rejected = _world(scenario).applications[1]
    assert rejected.code == "application_period_ended"
    text = rejected.explanation.text_ja()
    assert "ポイント申込期限を過ぎています" in text
    assert "2023-05-31" in text
    assert "seed: 申込期限 令和5年5月末まで" in text


def test_registration_statuses_and_explanations() -> None:
    scenario = _scenario("registrations.yaml", "登録済みでも申込がなければポイントはない")
    result = _world(scenario).residents["hanako"]
    assert result.statuses == ("申込済", "未申込", "未申込")
    health = result.outcomes()[1]
    assert "登録済みでも申込が必要です" in health.explanation.text_ja()


def test_per_resident_path_agrees_with_the_world_runner() -> None:
    params = load_parameters()
    as_of = dt.date(2023, 10, 31)
    for history in resident_histories(300, seed=11):
        alone = evaluate_resident(history, params, as_of_day=as_of.toordinal())
        world = evaluate_world(
            people=[history.person],
            accounts=history.accounts,
            providers=history.providers,
            events=history.events,
            params=params,
            as_of=as_of,
        ).residents[history.person.key]
        assert (alone.earned, alone.statuses) == (world.earned, world.statuses)


def test_an_account_linked_elsewhere_is_refused_on_the_per_resident_path() -> None:
    scenario = _scenario("eligibility.yaml", "他人名義の決済アカウントでは申し込めない")
    hanako = scenario.people["hanako"]
    # hanako's own account, already linked to taro at event 0: the one cross-resident fact the path needs
    history = ResidentHistory(
        person=hanako,
        accounts={
            "wallet/taro-1": scenario.accounts["wallet/taro-1"].__class__(
                "wallet/taro-1", "wallet", "hanako", "charge"
            )
        },
        providers={},
        events=[scenario.events[1]],
        linked_elsewhere={"wallet/taro-1": (0, "taro")},
    )
    result = evaluate_resident(history, scenario.params, as_of_day=scenario.as_of.toordinal())
    assert [d.code for d in result.evaluator.applications] == ["account_linked_to_another_person"]
