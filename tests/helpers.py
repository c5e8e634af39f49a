"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def regsearch(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    for var in ("REGSEARCH_STORAGE", "MLFLOW_TRACKING_URI"):
        if env is None or var not in env:
            full_env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "search", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_url(url: str, server: subprocess.Popen[bytes], *, timeout: float, what: str) -> bytes:
    """The body of the first successful GET of `url`, polling while `server` starts up."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise AssertionError(f"{what} did not answer at {url}") from None
            time.sleep(0.5)
