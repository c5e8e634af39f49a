"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from optuna.distributions import FloatDistribution


def _user_env(env: dict[str, str] | None) -> dict[str, str]:
    """This environment without the store URLs of the test process (unless `env` sets them)."""
    full_env = {**os.environ, **(env or {})}
    for var in ("REGSEARCH_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        if env is None or var not in env:
            full_env.pop(var, None)
    return full_env


# The training budget of a test's tiny study: the default's 45 optimizer steps an epoch would
# repeat a few dozen images' passes until each epoch trains 45 steps, several times the work of
# the same test at this budget; what the default budget does is tested where a test asks for it.
TEST_BUDGET = "train.min_steps_per_epoch=8"


def _test_argv(args: tuple[str, ...], confirm: bool, budget: bool) -> list[str]:
    """`regsearch run` without the confirm phase (top configurations retrained with fresh
    seeds, then the champion's ablation) unless a test asks for it: it multiplies a tiny
    study's trials, and tests/search/test_evidence.py and test_confirm.py cover it. A `run`
    trains at `TEST_BUDGET` unless `budget` (the default's) or the test sets its own."""
    if not args or args[0] != "run":
        return list(args)
    argv = list(args)
    if not budget and not any("min_steps_per_epoch" in a for a in args):
        argv[1:1] = ["--set", TEST_BUDGET]
    if not confirm and not any("search.confirm" in a for a in args):
        argv[1:1] = ["--set", "search.confirm=none"]
    return argv


class _Zygote:
    """The client of one `tests/zygote.py` process (started on first use, one per pytest
    process): each command runs in a fresh child forked from it, without the imports."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""  # read from its stdout, not yet a whole line

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            code = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(Path(__file__).with_name("zygote.py"))],
                cwd=tempfile.gettempdir(),
                env=_user_env(None),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            self._buffer = b""
            if self._read(300).get("ready") is not True:
                raise RuntimeError("tests/zygote.py did not start")
        return self._proc

    def _read(self, timeout: float) -> dict[str, Any]:
        """The next reply, within `timeout` seconds (unbuffered reads, so that a reply that
        came with the one before is not left waiting in a buffer `select` cannot see)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise subprocess.TimeoutExpired("zygote", timeout)
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("tests/zygote.py ended")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))

    def run(
        self, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        proc = self._start()
        assert proc.stdin is not None
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": argv, "cwd": str(Path(cwd).resolve()), "env": env}
            message = json.dumps({**request, "stdout": str(out), "stderr": str(err)})
            proc.stdin.write(message.encode() + b"\n")
            proc.stdin.flush()
            deadline = time.monotonic() + timeout
            pid = int(self._read(30)["pid"])
            try:
                status = int(self._read(deadline - time.monotonic())["status"])
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self._read(30)
                raise subprocess.TimeoutExpired(argv, timeout) from None
            return subprocess.CompletedProcess(
                argv, os.waitstatus_to_exitcode(status), out.read_text(), err.read_text()
            )

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> _Background:
        """`argv` in the background: the zygote replies with its pid at once."""
        proc = self._start()
        assert proc.stdin is not None
        files = Path(tempfile.mkdtemp(prefix="regsearch-bg-"))
        request = {"argv": argv, "cwd": str(Path(cwd).resolve()), "env": env}
        names = {k: str(files / k) for k in ("stdout", "stderr", "status")}
        proc.stdin.write(json.dumps({**request, **names}).encode() + b"\n")
        proc.stdin.flush()
        return _Background(argv, int(self._read(30)["pid"]), files)


class _Background:
    """What a test does with a `subprocess.Popen` of `regsearch` (poll, wait, signal, kill,
    communicate) for a command forked by the zygote: its exit status arrives as a file."""

    def __init__(self, args: list[str], pid: int, files: Path) -> None:
        self.args, self.pid, self._files = args, pid, files
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(FileNotFoundError):
                status = int((self._files / "status").read_text())
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        out, err = ((self._files / name).read_text() for name in ("stdout", "stderr"))
        shutil.rmtree(self._files, ignore_errors=True)
        return out, err


_ZYGOTE = _Zygote()
Launch = subprocess.Popen[str] | _Background  # what `start_regsearch` returns


def forked(real: bool = False) -> bool:
    """Whether a test's `regsearch` commands are forked from the zygote (see `regsearch`)."""
    return not real and os.environ.get("REGSEARCH_TEST_FORK", "1") != "0"


def regsearch(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    confirm: bool = False,
    real: bool = False,
    budget: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the console entry point (`python -m search`) in a process of its own, as a user
    would; a `run` has no confirm phase unless `confirm`, and trains at `TEST_BUDGET` unless
    `budget` (see `_test_argv`). The process
    is forked from the pre-imported `tests/zygote.py` unless `real` (or
    `REGSEARCH_TEST_FORK=0`): a new interpreter then pays the imports."""
    argv = _test_argv(args, confirm, budget)
    if forked(real):
        return _ZYGOTE.run(argv, cwd=cwd, env=_user_env(env), timeout=timeout)
    return subprocess.run(
        [sys.executable, "-m", "search", *argv],
        cwd=cwd,
        env=_user_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_regsearch(
    *args: str, cwd: Path, confirm: bool = False, real: bool = False, budget: bool = False
) -> Launch:
    """`regsearch` started in the background (to be signalled or killed by the test), forked
    from the zygote as `regsearch(...)` is unless `real`."""
    argv = _test_argv(args, confirm, budget)
    if forked(real):
        return _ZYGOTE.start(argv, cwd=cwd, env=_user_env(None))
    return subprocess.Popen(
        [sys.executable, "-m", "search", *argv],
        cwd=cwd,
        env=_user_env(None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_url(url: str, server: subprocess.Popen[bytes], *, timeout: float, what: str) -> bytes:
    """The body of the first successful GET of `url`, polling while `server` starts up."""
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


@contextlib.contextmanager
def serving(
    command: Callable[[int], list[str]],
    *,
    cwd: Path,
    ready: str,
    what: str,
    timeout: float,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """Start `command(port)` on a free loopback port in a process group of its own, wait
    until GET `ready` (a path) answers, and yield (base URL, that answer's body). The whole
    group is stopped afterwards: servers such as `mlflow server` start children."""
    port = free_port()
    server = subprocess.Popen(
        command(port),
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, wait_for_url(f"{base}{ready}", server, timeout=timeout, what=what)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def assert_runs_ended(runs: list[Any]) -> None:
    """Every MLflow run of a finished study ended: FINISHED, or KILLED for a pruned trial's
    run (MLflow has no "pruned"; its `state` tag says PRUNED)."""
    for run in runs:
        expected = "KILLED" if run.data.tags.get("state") == "PRUNED" else "FINISHED"
        assert run.info.status == expected, (run.info.run_id, run.data.tags.get("state"))


# The default space's five regularizers as Optuna distributions: for trials made with
# `optuna.trial.create_trial` in tests of the confirm phase's arithmetic.
SPACE_DISTRIBUTIONS = {
    "weight_decay": FloatDistribution(1e-5, 0.1, log=True),
    "dropout": FloatDistribution(0.0, 0.6),
    "aug_strength": FloatDistribution(0.0, 1.0),
    "mixup_alpha": FloatDistribution(0.0, 1.0),
    "label_smoothing": FloatDistribution(0.0, 0.3),
}
