"""A pre-imported parent that forks one child per `regsearch` command of a test.

A `regsearch run` subprocess spends about 7 s of its start on imports (torch, torchvision,
scikit-learn, MLflow, Optuna) before its first epoch, and the suite starts well over a hundred
of them. This process imports them once, then, for each request on its stdin, forks a child
that changes into the test's folder and environment, points its stdin/stdout/stderr at the
files the test named and runs the real entry point (`python -m search`); the child's exit
status goes back on stdout. Each child is a separate process of its own, started from the same
clean state, so nothing a command does can leak into the next; what it skips is only the import
work. A test may signal or kill it as it would any process (`tests.helpers.start_regsearch`).

Protocol, one JSON object per line: request `{"argv", "cwd", "env", "stdout", "stderr"}`
(`argv`: what follows `python -m search`), plus `"status": PATH` for a command in the
background. Replies: `{"pid": N}` (the command's) right after the fork; then, in the foreground,
`{"status": S}` (`os.waitpid`'s) when it ends. A background command is the child of a small
monitor process, forked for it, which waits for it and writes S to PATH (whole, by a rename),
so the zygote takes the next request at once.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# What `regsearch run`, `best` and `report` import (the rest they import themselves); none of
# it starts a thread that a fork would lose.
PRELOAD = (
    "numpy",
    "torch",
    "torch.export",  # the champion's pt2 export (sympy, networkx)
    "torchvision",
    "sklearn.datasets",
    "sklearn.model_selection",
    "sqlalchemy.dialects.sqlite",
    "optuna",
    "optuna.importance",
    "optuna.visualization",
    "optuna_dashboard",
    "plotly.graph_objs",
    "mlflow",
    "mlflow.pytorch",
    "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "search.cli",
    "search.run.runner",
    "search.tracking.runs",
    "search.tracking.champion",
    "search.report.dashboard",
    "search.report.summary",
    "search.report.page",
)


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _serve() -> dict[str, Any]:
    """Fork a child per request; the child returns from here with its request."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    _reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        if "status" in request:
            if _background(request):
                return dict(request)
            continue
        pid = os.fork()
        if pid == 0:
            return dict(request)
        _reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _reply({"status": status})
    sys.exit(0)


def _background(request: dict[str, Any]) -> bool:
    """Start the command under a monitor and reply with its pid; True in the command itself."""
    while True:  # monitors of commands that ended: reap them
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the monitor
        os.close(read_end)
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            return True
        os.write(write_end, f"{pid}\n".encode())
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        path = request["status"]
        with open(f"{path}.part", "w") as f:
            f.write(str(status))
        os.rename(f"{path}.part", path)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        _reply({"pid": int(pipe.readline())})
    return False


def _become(request: dict[str, Any]) -> None:
    """In the child: the test's folder, environment, standard streams and argv."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, mode in (
        (0, os.devnull, os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(path, mode, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [sys.executable, *request["argv"]]  # runpy makes [0] search/__main__.py


def _run_and_exit() -> None:
    """`python -m search` in this child, then its exit as the interpreter would make it
    (non-daemon threads joined, `atexit` handlers run, streams flushed) without tearing down
    every module one by one, which takes seconds with torch and MLflow loaded."""
    import atexit
    import runpy
    import threading
    import traceback

    code: int = 0
    try:
        runpy.run_module("search", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _become(_serve())
    _run_and_exit()
