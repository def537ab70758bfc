"""The README's first command, end to end: the demo server on a real port, a resident with a software card
logging in and applying over HTTP through the `mynapoint resident` client."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_server import MYNAPOINT, running_demo


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, str]]]:
    data = tmp_path_factory.mktemp("demo")
    with running_demo(data) as (url, env):
        yield url, data / "demo" / "cards", env


def resident(env: dict[str, str], pin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [*MYNAPOINT, "resident", *args], env={**env, "MYNAPOINT_PIN": pin}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def test_hanako_applies_for_all_three_measures_and_others_are_refused_with_reasons(
    demo_server: tuple[str, Path, dict[str, str]],
) -> None:
    url, cards, env = demo_server
    account = ["--provider", "demo", "--service-id", "4000-0001", "--code", "1234", "--mode", "charge"]
    for measure in ("premium", "health_insurance", "public_fund"):
        done = resident(
            env,
            "4071",
            "apply",
            "--server",
            url,
            "--card",
            str(cards / "hanako.json"),
            "--measure",
            measure,
            *account,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "を受け付けました" in done.stdout
    again = resident(
        env,
        "4071",
        "apply",
        "--server",
        url,
        "--card",
        str(cards / "hanako.json"),
        "--measure",
        "premium",
        *account,
    )
    assert again.returncode == 3
    assert "already_applied" in again.stdout

    taro = resident(env, "5082", "apply", "--server", url, "--card", str(cards / "taro.json"), "--measure", "premium",
                    "--provider", "demo", "--service-id", "4000-0002", "--code", "2345", "--mode", "charge")  # fmt: skip
    assert taro.returncode == 3
    assert "card_applied_after_deadline" in taro.stdout
    assert "2023-02-28" in taro.stdout

    status = resident(env, "4071", "status", "--server", url, "--card", str(cards / "hanako.json"))
    assert status.returncode == 0, status.stderr
    status_cells = [line for line in status.stdout.splitlines() if "│ 申込済 " in line]
    assert len(status_cells) == 3  # one row per measure, each 申込済 (no spending or registration yet)
    assert "合計 / total: 0" in status.stdout


def test_a_wrong_pin_is_counted_on_the_card_and_never_retried(
    demo_server: tuple[str, Path, dict[str, str]],
) -> None:
    url, cards, env = demo_server
    done = resident(env, "0000", "status", "--server", url, "--card", str(cards / "jiro.json"))
    assert done.returncode == 1
    assert "あと2回" in done.stderr
    right = resident(env, "7104", "status", "--server", url, "--card", str(cards / "jiro.json"))
    assert right.returncode == 0, right.stderr
