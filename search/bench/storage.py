"""`regsearch bench --only storage_ms_per_trial`: the service's own Optuna work per trial with
no training, on SQLite and on PostgreSQL, and what the ecosystem offers in front of PostgreSQL.

The PostgreSQL contenders, each in its own scratch database:
- `rdb`: what the service opens (`search.study.storage.open_storage`: Optuna's `RDBStorage`, with
  SQLAlchemy's `pool_pre_ping`, and heartbeats in `regsearch run`);
- `rdb_no_pre_ping`: the same without the liveness ping SQLAlchemy sends each time a
  connection leaves the pool (Optuna opens a session per storage call);
- `grpc_proxy`: Optuna's `GrpcStorageProxy`, the workers' client, talking to one
  `run_grpc_proxy_server` process in front of the database (one proxy per machine, many workers
  behind it). The proxy has no heartbeats, so trials of a killed worker stay RUNNING.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from search.config.space import SearchSpace, space_of
from search.study.studyfile import load_config

__all__ = ["PG_ADMIN_ENV", "storage_ms_per_trial"]

PG_ADMIN_ENV = "REGSEARCH_BENCH_PG"  # e.g. postgresql://postgres@127.0.0.1:5432/postgres


def _measured_trial(study: Any, space: SearchSpace, number: int, epochs: int) -> float:
    """Seconds of one trial's Optuna work with no training: ask, sample the contract space,
    report (+ prune check) every epoch, tell, as the objective does them."""
    import optuna

    from search.run.objective import report_epoch

    start = time.perf_counter()
    trial = study.ask()
    cfg = space.sample(trial)
    value = 0.5 + 0.4 * cfg.regularization.dropout  # any deterministic curve will do
    state = optuna.trial.TrialState.COMPLETE
    for epoch in range(1, epochs + 1):
        curve = value * epoch / epochs + 0.001 * (number % 7)
        if report_epoch(trial, curve, epoch, can_prune=True):
            state = optuna.trial.TrialState.PRUNED
            break
    study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return time.perf_counter() - start


def _fill(study: Any, until: int) -> None:
    """Add whole trials (copies of the study's own: params, curves, pruner rungs, values)
    until it holds `until`: what a long study's storage holds, without paying each one's
    round trips (one `add_trial` each)."""
    import optuna

    own = study.get_trials(deepcopy=False)
    copies = [
        optuna.trial.create_trial(
            state=t.state,
            value=t.value,
            params=t.params,
            distributions=t.distributions,
            intermediate_values=t.intermediate_values,
            user_attrs=t.user_attrs,
            system_attrs=t.system_attrs,
        )
        for t in (own[i % len(own)] for i in range(len(own), until))
    ]
    study.add_trials(copies)


def _storage_loop(storage: Any, *, trials: int, epochs: int, measured: int = 15) -> list[float]:
    """Seconds per trial of the service's own Optuna work (`_measured_trial`) with the default
    study's sampler and pruner: the first `measured` trials, then the study filled with whole
    trials (`_fill`) to `trials - measured`, then the last `measured` trials up to `trials`,
    measured again. The list has one entry per trial; the filled ones are NaN."""
    import optuna

    from search.study.studies import make_pruner, make_sampler

    config = load_config()
    space = space_of(config)
    study = optuna.create_study(
        storage=storage,  # ask/tell has no heartbeat thread: measure without one
        sampler=make_sampler(config),
        pruner=make_pruner(config),
        direction=config.objective.direction,
        study_name="bench-storage",
    )
    seconds = [_measured_trial(study, space, n, epochs) for n in range(min(measured, trials))]
    tail = max(measured, trials - measured)
    if tail > measured:
        _fill(study, tail)
        seconds += [math.nan] * (tail - measured)
    seconds += [_measured_trial(study, space, n, epochs) for n in range(len(seconds), trials)]
    return seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _grpc_proxy(url: str) -> Iterator[Any]:
    """A `GrpcStorageProxy` client of a proxy server process in front of `url`."""
    import warnings

    import optuna
    from optuna.storages import GrpcStorageProxy

    port = _free_port()
    code = (
        "import sys; from search.study.storage import open_storage;"
        "from optuna.storages import run_grpc_proxy_server;"
        "run_grpc_proxy_server(open_storage(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]))"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code, url, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with warnings.catch_warnings():  # "experimental" since Optuna 4.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            client = GrpcStorageProxy(host="127.0.0.1", port=port)
        client.wait_server_ready(timeout=60)
        yield client
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def _scratch_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database (its SQLAlchemy URL), dropped afterwards."""
    import psycopg

    name = f"regsearch_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_contenders() -> dict[str, Callable[[str], contextlib.AbstractContextManager[Any]]]:
    import optuna

    from search.study.storage import open_storage

    @contextlib.contextmanager
    def rdb(url: str) -> Iterator[Any]:
        yield open_storage(url)

    @contextlib.contextmanager
    def no_pre_ping(url: str) -> Iterator[Any]:
        yield optuna.storages.RDBStorage(url)

    return {"rdb": rdb, "rdb_no_pre_ping": no_pre_ping, "grpc_proxy": _grpc_proxy}


def storage_ms_per_trial(*, trials: int = 1000, epochs: int = 10) -> dict[str, Any]:
    """Milliseconds of storage + sampler + pruner work per trial near trial 10 and near trial
    `trials`, on SQLite and (when `$REGSEARCH_BENCH_PG` names an admin URL, or a server answers
    on 127.0.0.1:5432) on PostgreSQL, one scratch database per contender. The PostgreSQL
    figure is the service's own storage (`rdb`). Between the two ends the study is filled with
    whole trials (`_storage_loop`), so every contender is measured at `trials`."""
    import optuna

    from search.study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, Any] = {"trials": trials, "epochs_per_trial": epochs}

    def at(seconds: list[float], n: int) -> float:
        """Median milliseconds of the ten trials up to trial `n`."""
        return round(1000 * statistics.median(seconds[max(0, n - 10) : n]), 2)

    def summarise(seconds: list[float]) -> dict[str, float]:
        return {"ms_at_10": at(seconds, 15), f"ms_at_{trials}": at(seconds, trials)}

    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/bench.db")
        out["sqlite"] = summarise(_storage_loop(storage, trials=trials, epochs=epochs))
    admin_url = os.environ.get(PG_ADMIN_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import psycopg

        psycopg.connect(admin_url, connect_timeout=3).close()
    except Exception as exc:  # no driver or no server: report why, measure the rest
        out["postgresql"] = f"skipped: {type(exc).__name__}: {str(exc).strip()[:80]}"
        return out
    table = {}
    for name, contender in _pg_contenders().items():
        with _scratch_database(admin_url) as url, contender(url) as storage:
            table[name] = summarise(_storage_loop(storage, trials=trials, epochs=epochs))
    out["postgresql"] = table["rdb"]
    out["postgresql_contenders"] = table
    return out
