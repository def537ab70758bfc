"""Starting `mynapoint demo` on a free port in a data folder of its own (for the end-to-end tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mynapoint.clock import DEMO_START

MYNAPOINT = [sys.executable, "-m", "mynapoint.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(data: Path) -> dict[str, str]:
    env = {**os.environ, "MYNAPOINT_DATA_DIR": str(data)}
    for name in (
        "DJANGO_SETTINGS_MODULE",
        "MYNAPOINT_DATABASE_URL",
        "MYNAPOINT_PROVIDER_ADAPTER",
        "GUNICORN_CMD_ARGS",
    ):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def _listening(argv: list[str], env: dict[str, str], port: int, log_path: Path) -> Iterator[None]:
    with log_path.open("a") as log:
        server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - our own command
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError("the server did not start: " + log_path.read_text()) from None
                    time.sleep(0.2)
            yield
        finally:
            server.terminate()
            server.wait(timeout=30)


@contextlib.contextmanager
def running_demo(data: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The demo server's URL and the environment that points the CLI at its data folder."""
    env = _clean_env(data)
    port = _free_port()
    with _listening([*MYNAPOINT, "demo", "--port", str(port)], env, port, data / "server.log"):
        yield f"http://127.0.0.1:{port}", env


@contextlib.contextmanager
def running_served(
    data: Path, *, workers: int = 2, grant_interval: float = 0.5
) -> Iterator[tuple[str, dict[str, str]]]:
    """The demo's data loaded (``mynapoint demo --no-serve``), then served as in production by
    ``mynapoint serve`` (gunicorn, ``workers`` processes, the grant engine in the server every
    ``grant_interval`` seconds) on the demo's calendar; ``server.log`` has what loading printed, then
    gunicorn's log and access log."""
    env = _clean_env(data)
    port = _free_port()
    loaded = subprocess.run(  # noqa: S603 - our own command
        [*MYNAPOINT, "demo", "--no-serve", "--port", str(port)], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    (data / "server.log").write_text(loaded.stdout + loaded.stderr)  # the server's log follows
    served = {
        **env,
        "MYNAPOINT_CLOCK_START": DEMO_START.isoformat(),
        # the demo's accounts are the ones its providers declare through the provider API (as `demo` sets it)
        "MYNAPOINT_PROVIDER_ADAPTER": "mynapoint.applications.adapters.ProviderApiAdapter",
        "GUNICORN_CMD_ARGS": "--access-logfile -",
    }
    argv = [*MYNAPOINT, "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--grant-interval", str(grant_interval)]  # fmt: skip
    with _listening(argv, served, port, data / "server.log"):
        yield f"http://127.0.0.1:{port}", env
