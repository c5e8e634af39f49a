"""One launch of a study's trials on this machine: in this process (`run_in_process`) or in
worker processes (`run_workers`), then the summary. Used by `regsearch run`, `worker`,
`confirm` and the Python API (`search.api`), so every way in runs the same code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from search.core.errors import UserError, WorkersFailed
from search.core.signals import Terminated, on_sigterm
from search.core.urls import redact_url
from search.run.options import RunOptions
from search.study.storage import make_artifact_dir

__all__ = [
    "check_reachable",
    "check_tracking",
    "make_console",
    "run_in_process",
    "run_workers",
]


def make_console(*, stderr: bool = False) -> Any:
    """A rich console; off a terminal (CI logs, pipes) 200 columns rather than rich's 80."""
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200)


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when an http(s) tracking server does not answer, or a
    database store cannot be used (a file that is no SQLite database, an in-memory one, a
    PostgreSQL or MySQL server that refuses the connection).

    MLflow's client retries a refused connection for minutes (7 retries with back-off) before
    it says anything; one GET of the server's `/health` within `timeout` seconds answers the
    same question before any study, run or folder exists. Any HTTP answer (even 401 or 404
    from a proxy) counts as reachable; then a 404 for MLflow's own API (`_PROBE`) means the
    address is some other web server.
    """
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0].lower()
    if scheme == "sqlite":
        _check_sqlite_store(uri)
        return
    if scheme in ("postgresql", "mysql"):
        _check_database_store(uri, timeout)
        return
    if parts.scheme not in ("http", "https"):
        return
    netloc = parts.netloc.rpartition("@")[2]  # urllib takes no credentials in the URL
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    api = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + _PROBE, "max_results=1", ""))
    for url in (health, api):
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                pass
        except urllib.error.HTTPError as exc:
            # It answered: an auth error (401/403, the client may hold credentials urllib has
            # not) or a refusal passes; a 404 for MLflow's own API is no MLflow server.
            if url == api and exc.code == 404:
                raise UserError(
                    f"{redact_url(uri)} is no MLflow tracking server ({_PROBE} answers 404); "
                    "fix --tracking-uri / $MLFLOW_TRACKING_URI, or set tracking.enabled: false"
                ) from None
        except (TimeoutError, urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"cannot reach tracking server {redact_url(uri)} ({reason}); start it, fix "
                "--tracking-uri / $MLFLOW_TRACKING_URI, or set tracking.enabled: false"
            ) from None


_PROBE = "/api/2.0/mlflow/experiments/search"  # what every MLflow tracking server answers


def _store_error(uri: str, reason: object) -> UserError:
    return UserError(
        f"cannot use tracking URI {redact_url(uri)} ({reason}); fix --tracking-uri / "
        "$MLFLOW_TRACKING_URI, or set tracking.enabled: false"
    )


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_store(uri: str) -> None:
    """A `sqlite:///` store must be a database file (or one that can be created): in memory,
    it would vanish with the process and take the runs and the registered model along."""
    from search.core.urls import sqlite_path

    path = sqlite_path(uri)
    if path is None:
        raise _store_error(uri, "an in-memory database keeps nothing after this process")
    if path.exists():
        if not path.is_file():
            raise _store_error(uri, f"{path} is not a file")
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
        if head and head != _SQLITE_HEADER:
            raise _store_error(uri, f"{path} is not an SQLite database")
        return
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise _store_error(uri, f"{folder} is not a folder")


def _check_database_store(uri: str, timeout: float) -> None:
    """One connection to a PostgreSQL or MySQL store, within `timeout` seconds."""
    import sqlalchemy

    from search.core.errors import first_line

    try:
        args = {"connect_timeout": max(1, int(timeout))}
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.NullPool)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # a missing driver, a refused connection, bad credentials
        raise _store_error(uri, first_line(getattr(exc, "orig", None) or exc, limit=200)) from None


def _console() -> Any:
    return make_console(stderr=True)


def elapsed(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _finish(study: Any, config: Any, console: Any, options: RunOptions) -> None:
    from search.report.summary import best_summary, trials_table, verdict

    console.print(trials_table(study, limit=10, title=f"study {study.study_name} — top 10"))
    best = best_summary(study)
    if best is None:
        console.print("no trial completed yet")
    else:
        # One line however narrow the terminal: scripts and tests look for it whole.
        console.print(verdict(best, config.objective.metric), soft_wrap=True)
        if best.get("hint"):
            console.print(best["hint"], soft_wrap=True)
        if best["model_uri"]:
            console.print(f"model: {best['model_uri']}")
        if best["champion_uri"]:  # what `mlflow.pyfunc.load_model` takes
            console.print(f"champion: {best['champion_uri']}")
        if best.get("input"):
            from search.training.network import describe_input

            console.print(describe_input(best["input"]), soft_wrap=True)
    took = elapsed(time.monotonic() - options.started)
    console.print(f"{config.study}: this launch took {took}")


def check_tracking(config: Any, flag: str | None) -> None:
    """An unreachable tracking server stops the launch here, before anything is created."""
    if config.tracking.enabled:
        from search.core.urls import resolve_tracking_uri

        uri = resolve_tracking_uri(flag, config.tracking.uri)
        check_scheme(uri)
        check_reachable(uri)


# What MLflow 3 tracks and registers models in (its file store is in maintenance mode).
_TRACKING_SCHEMES = {
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "http",
    "https",
    "databricks",
    "databricks-uc",
    "uc",
}


def check_scheme(uri: str) -> None:
    """A tracking URI MLflow cannot keep runs and models in stops the launch before the study
    exists (otherwise the study is created, then the tracker refuses the URI)."""
    from urllib.parse import urlsplit

    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    if uri == "databricks" or uri.startswith("databricks://"):
        return  # MLflow's own spelling: `databricks`, or a profile `databricks://NAME`
    if scheme in ("", "file"):
        raise UserError(
            f"tracking URI {redact_url(uri)}: MLflow 3 keeps no runs or models in a file store; "
            "use sqlite:///PATH/mlflow.db (the default is sqlite:///mlruns/mlflow.db) or a server"
        )
    if scheme not in _TRACKING_SCHEMES:
        raise UserError(
            f"tracking URI {redact_url(uri)}: unsupported scheme {scheme!r} (use sqlite:///…, "
            "postgresql://…, mysql://…, http(s)://… or databricks)"
        )


def run_in_process(config: Any, options: RunOptions, *, summary: bool = True) -> None:
    """Run trials in this process, on the storage `options` opens once for it;
    `options.title` prefixes its process title (`ps`, `top`)."""
    from search.core.memory import retain_freed_memory
    from search.run.runner import run_study

    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    retain_freed_memory()
    console = _console()
    study = run_study(config, options, console=console)
    if summary:
        _finish(study, config, console, options)


def run_workers(
    config: Any, options: RunOptions, pinned: list[str | None], *, summary: bool = True
) -> None:
    """Create the study here, then start one `regsearch worker` process per entry of `pinned`
    (its `CUDA_VISIBLE_DEVICES`, or None), each with its share of the CPU threads; Ctrl+C /
    SIGTERM is passed on to them. This process opens the storage once, each worker once."""
    import optuna

    from search.run.runner import prepare, record_choice, user_device
    from search.study.studies import create_or_resume, load_existing

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    user_device(options.device or config.train.device)  # before anything is created
    choice = prepare(config)[0]  # the workers read the choice from the study (data freed)
    config = choice.config
    make_artifact_dir(options.storage_url, options.artifacts)
    console = _console()
    if not options.quiet:
        for note in choice.notes:
            console.print(f"{config.study}: {note}")
    study, _ = create_or_resume(config, options.storage(config.search))
    if options.sweep is not None:
        from search.study.sweep import warm_start

        warm_start(study, options.sweep)
    if config.tracking.enabled:
        # Create the MLflow store, experiment and parent run once, here: N workers racing
        # to run the store's schema migrations on a fresh SQLite file would break it.
        from search.tracking.runs import Tracker

        tracker = Tracker.for_study(study, config, tracking_uri=options.tracking_uri, prewarm=False)
        record_choice(study, tracker, choice)
    else:
        record_choice(study, None, choice)
    per_worker = options.threads or max(1, (os.cpu_count() or 1) // len(pinned))
    # Through the environment, not argv: URLs may carry passwords, and `ps` shows argv.
    env = {**os.environ, "REGSEARCH_STORAGE": options.storage_url}
    if options.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = options.tracking_uri
    if options.artifacts:
        env["REGSEARCH_ARTIFACTS"] = options.artifacts
    procs = []
    for index, gpu in enumerate(pinned):
        cmd = [sys.executable, "-m", "search", "worker", config.study, "--threads", str(per_worker)]
        cmd += ["--worker-index", str(index)]
        if gpu is not None:
            cmd += ["--device", "cuda"]  # the one GPU this worker sees
        elif options.device:
            cmd += ["--device", options.device]
        if options.quiet:
            cmd.append("--quiet")
        worker_env = env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": gpu}
        procs.append(subprocess.Popen(cmd, env=worker_env))

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    with on_sigterm(forward):
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            forward(signal.SIGINT, None)
            codes = [p.wait() for p in procs]
            raise
    study, _ = load_existing(config.study, options.storage())
    if summary:
        _finish(study, config, console, options)
    # A worker killed by a signal it did not handle has -N: the shell's 128 + N.
    bad = [c if c > 0 else 128 - c for c in codes if c != 0]
    if bad and all(c in (130, Terminated.exit_code) for c in bad):
        if Terminated.exit_code in bad:  # not failed: stopped, and the study resumes
            raise Terminated(f"{len(bad)} of {len(codes)} workers were terminated")
        raise KeyboardInterrupt
    if bad:
        raise WorkersFailed(bad[0], len(bad), len(codes))
