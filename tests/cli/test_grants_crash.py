"""`mynapoint grants run` killed at random points, 20 times: after every restart the ledger verifies, and
in the end every resident has exactly what is due — no double grant, no missing one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MYNAPOINT = [sys.executable, "-m", "mynapoint.cli"]
AS_OF = "2022-09-15"
KILLS = 20


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
        process = subprocess.Popen(  # noqa: S603
            [*MYNAPOINT, "grants", "run", "--as-of", AS_OF],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.8, 3.2))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        process.wait(timeout=60)
        verified = run(*MYNAPOINT, "ledger", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert killed_mid_run >= 15, f"only {killed_mid_run} of {KILLS} kills landed during a run"
    final = run(*MYNAPOINT, "grants", "run", "--as-of", AS_OF)
    assert final.returncode == 0, final.stderr
    check = json.loads(run(sys.executable, str(HERE / "crash_world.py"), "check", AS_OF).stdout)
    assert check["wrong"] == []
    assert int(check["grants"][0]) > 150
    assert run(*MYNAPOINT, "ledger", "verify").returncode == 0
    assert run(*MYNAPOINT, "audit", "verify").returncode == 0
