"""The README's first command, end to end: the demo server on a real port, a resident with a software card
logging in and applying over HTTP through the `mynapoint resident` client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MYNAPOINT = [sys.executable, "-m", "mynapoint.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, str]]]:
    data = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "MYNAPOINT_DATA_DIR": str(data)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("MYNAPOINT_DATABASE_URL", None)
    port = _free_port()
    log = (data / "server.log").open("w")
    server = subprocess.Popen(  # noqa: S603 - our own command
        [*MYNAPOINT, "demo", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if server.poll() is not None:
                    raise AssertionError((data / "server.log").read_text()) from None
                time.sleep(0.2)
        else:
            raise AssertionError("the demo server did not start: " + (data / "server.log").read_text())
        yield f"http://127.0.0.1:{port}", data / "demo" / "cards", env
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


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
