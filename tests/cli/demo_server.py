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

MYNAPOINT = [sys.executable, "-m", "mynapoint.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_demo(data: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The demo server's URL and the environment that points the CLI at its data folder."""
    env = {**os.environ, "MYNAPOINT_DATA_DIR": str(data)}
    for name in ("DJANGO_SETTINGS_MODULE", "MYNAPOINT_DATABASE_URL", "MYNAPOINT_PROVIDER_ADAPTER"):
        env.pop(name, None)
    port = _free_port()
    log_path = data / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(  # noqa: S603 - our own command
            [*MYNAPOINT, "demo", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            "the demo server did not start: " + log_path.read_text()
                        ) from None
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}", env
        finally:
            server.terminate()
            server.wait(timeout=10)
