"""`mynapoint grants run` killed at random points, 20 times: after every restart the ledger verifies, and
in the end every resident has exactly what is due — no double grant, no missing one."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MYNAPOINT = [sys.executable, "-m", "mynapoint.cli"]
AS_OF = "2022-09-15"
KILLS = 20


def _grants(data: Path) -> int:
    """Grants committed so far, read beside the run (SQLite in WAL mode: a reader never waits for it)."""
    with contextlib.closing(sqlite3.connect(f"file:{data / 'mynapoint.sqlite3'}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM grants_grant").fetchone()[0])


@pytest.mark.slow
def test_killing_grants_run_never_doubles_or_loses_a_grant(tmp_path: Path) -> None:
    env = {**os.environ, "MYNAPOINT_DATA_DIR": str(tmp_path)}
    for key in ("DJANGO_SETTINGS_MODULE", "MYNAPOINT_DATABASE_URL"):
        env.pop(key, None)

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603

    built = run(sys.executable, str(HERE / "crash_world.py"), "build", "150")
    assert built.returncode == 0, built.stderr
    rng = random.Random(20230930)
    killed_mid_run = 0
    for _ in range(KILLS):
        before = _grants(tmp_path)
        process = subprocess.Popen(  # noqa: S603
            [*MYNAPOINT, "grants", "run", "--as-of", AS_OF],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # a random point of the run. Mostly once it has committed 1 to 3 more grant rows, plus a random
        # fraction of the next resident's transaction (a fixed time would be outlived by a faster run, and the
        # world would run out before the 20th kill); one kill in five at a random time from the start instead,
        # which can land while it starts up or in its first transaction
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.2, 1.2))
        else:
            goal = before + rng.randint(1, 3)
            deadline = time.monotonic() + 120
            while process.poll() is None and _grants(tmp_path) < goal and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.01))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        process.wait(timeout=60)
        verified = run(*MYNAPOINT, "ledger", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert killed_mid_run == KILLS, f"only {killed_mid_run} of {KILLS} kills landed during a run"
    final = run(*MYNAPOINT, "grants", "run", "--as-of", AS_OF)
    assert final.returncode == 0, final.stderr
    check = json.loads(run(sys.executable, str(HERE / "crash_world.py"), "check", AS_OF).stdout)
    assert check["wrong"] == []
    assert int(check["grants"][0]) > 150
    assert run(*MYNAPOINT, "ledger", "verify").returncode == 0
    assert run(*MYNAPOINT, "audit", "verify").returncode == 0
