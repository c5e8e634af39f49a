"""`regsearch bench`: performance figures as ratios measured side by side in one process.

Each figure runs its contenders alternately (A B A B …) on the same machine and reports the
median of the per-pair ratios, so drift in machine load hits both sides alike.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from search.bench_throughput import airbench_trial, augment_speedup, train_images_per_second
from search.data import Dataset, load_dataset
from search.space import SearchSpace
from search.studyfile import load_config
from search.train import train

__all__ = ["BENCHMARKS", "machine", "run_benchmarks"]

# A middle-of-the-road trial of the default study: every regularizer on, no early stop, so the
# service run and the bare run train exactly the same epochs.
_TRIAL_OVERRIDES = [
    "space.weight_decay=0.005",
    "space.dropout=0.2",
    "space.aug_strength=0.3",
    "space.mixup_alpha=0.4",
    "space.label_smoothing=0.1",
    "early_stopping.patience=null",
    "search.pruner=none",
    "search.confirm=none",  # the figures are of search trials
]


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def trial_overhead(*, repeats: int = 5, epochs: int = 20) -> dict[str, Any]:
    """Wall time of one digits trial run through the service (Optuna report/prune, MLflow
    params/metrics/run lifecycle, champion bookkeeping) ÷ the same `train()` call alone.

    The first service trial of the study becomes the champion (model logged and registered);
    later ones have the same value, so they are not registered. Both ratios are reported.
    """
    import optuna

    from search.objective import Objective
    from search.storage import open_storage
    from search.study import create_or_resume
    from search.tracking import Tracker

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config(overrides=[*_TRIAL_OVERRIDES, f"train.epochs={epochs}"])
    data = load_dataset(config.dataset)
    space = SearchSpace.from_config(config)
    trial_cfg = space.resolve(space.fixed_values())
    with tempfile.TemporaryDirectory() as tmp:
        config = config.model_copy(update={"study": "bench-overhead"})
        storage = open_storage(f"sqlite:///{tmp}/optuna.db", config.search)
        study, _ = create_or_resume(config, storage)
        tracker = Tracker.for_study(study, config, tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        tracker.registry.ready()  # one-time imports: paid once per worker, not per trial
        objective = Objective(config, data, device=torch.device("cpu"), tracker=tracker)
        bare_data = data.to("cpu")
        train(replace(trial_cfg, train=trial_cfg.train.model_copy(update={"epochs": 2})), bare_data)

        bare, service = [], []
        for _ in range(repeats):
            bare.append(_timed(lambda: train(trial_cfg, bare_data)))
            service.append(
                _timed(
                    lambda: study.optimize(objective, n_trials=1, callbacks=[objective.after_tell])
                )
            )
        champion_seconds = _champion_seconds(tracker, study, config, trial_cfg, data)
        tracker.close(study, finished=True, data=data)
    ratios = [s / b for s, b in zip(service, bare, strict=True)]
    return {
        "trial_overhead": round(statistics.median(ratios[1:] or ratios), 3),
        "trial_overhead_with_champion": round(ratios[0], 3),
        "champion_register_seconds": round(champion_seconds, 3),
        "bare_trial_seconds": round(statistics.median(bare), 3),
        "service_trial_seconds": round(statistics.median(service[1:] or service), 3),
        "epochs": epochs,
        "repeats": repeats,
    }


def _champion_seconds(
    tracker: Any, study: Any, config: Any, trial_cfg: Any, data: Dataset
) -> float:
    """Seconds to log + register + alias the digits model once more (warm process)."""
    result = train(replace(trial_cfg, train=trial_cfg.train.model_copy(update={"epochs": 1})), data)
    run_id = tracker.start_trial(999, {})
    seconds = _timed(
        lambda: tracker.register_champion(run_id, number=999, value=-1.0, result=result, data=data)
    )
    tracker.end_trial(run_id, state="COMPLETE", summary={})
    return seconds


PG_ADMIN_ENV = "REGSEARCH_BENCH_PG"  # e.g. postgresql://postgres@127.0.0.1:5432/postgres


def _storage_loop(url: str, *, trials: int, epochs: int) -> list[float]:
    """Seconds per trial of the service's own Optuna work with no training: ask, sample the
    contract space, report (+ prune check) every epoch, tell, with the default study's sampler
    and pruner, as the objective does them. How it grows with the study."""
    import optuna

    from search.objective import report_epoch
    from search.storage import open_storage
    from search.study import make_pruner, make_sampler

    config = load_config()
    space = SearchSpace.from_config(config)
    study = optuna.create_study(
        storage=open_storage(url),  # ask/tell has no heartbeat thread: measure without one
        sampler=make_sampler(config),
        pruner=make_pruner(config),
        direction=config.objective.direction,
        study_name="bench-storage",
    )
    seconds = []
    for number in range(trials):
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
        seconds.append(time.perf_counter() - start)
    return seconds


def storage_ms_per_trial(*, trials: int = 1000, epochs: int = 10) -> dict[str, Any]:
    """Milliseconds of storage + sampler + pruner work per trial near trial 10 and near the
    last trial, on SQLite and (when `$REGSEARCH_BENCH_PG` names an admin URL, or a server
    answers on 127.0.0.1:5432) on PostgreSQL in a scratch database."""
    import os
    import uuid

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, Any] = {"trials": trials, "epochs_per_trial": epochs}

    def summarise(seconds: list[float]) -> dict[str, float]:
        return {
            "ms_at_10": round(1000 * statistics.median(seconds[5:15]), 2),
            f"ms_at_{trials}": round(1000 * statistics.median(seconds[-10:]), 2),
        }

    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = summarise(
            _storage_loop(f"sqlite:///{tmp}/bench.db", trials=trials, epochs=epochs)
        )
    admin_url = os.environ.get(PG_ADMIN_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import psycopg

        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except Exception as exc:  # no driver or no server: report why, measure the rest
        out["postgresql"] = f"skipped: {type(exc).__name__}"
        return out
    name = f"regsearch_bench_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            out["postgresql"] = summarise(
                _storage_loop(f"{base}/{name}", trials=trials, epochs=epochs)
            )
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return out


def worker_scaling(*, trials: int = 8, epochs: int = 3) -> dict[str, Any]:
    """Finished trials per minute of a digits study with 2 workers ÷ with 1, one CPU thread
    per worker (the same CPU budget per trial), timed from the first trial's start to the
    last trial's end so process start-up is not counted."""
    import subprocess
    import sys

    import optuna

    rates = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "search", "run", "--study", "scaling", "--quiet"]
            cmd += ["--workers", str(workers), "--threads", "1", "--n-trials", str(trials)]
            cmd += ["--set", f"train.epochs={epochs}", "--set", "search.pruner=none"]
            cmd += ["--set", "tracking.enabled=false", "--set", "early_stopping.patience=null"]
            cmd += ["--set", "search.confirm=none"]  # search throughput, not the retrains
            subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
            study = optuna.load_study(
                study_name="scaling", storage=f"sqlite:///{tmp}/studies/regsearch.db"
            )
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            start = min(t.datetime_start for t in done if t.datetime_start)
            end = max(t.datetime_complete for t in done if t.datetime_complete)
            rates[workers] = len(done) / ((end - start).total_seconds() / 60)
    return {
        "worker_scaling": round(rates[2] / rates[1], 3),
        "trials_per_minute_1_worker": round(rates[1], 1),
        "trials_per_minute_2_workers": round(rates[2], 1),
        "trials": trials,
        "epochs": epochs,
    }


def _sweep_warm_start() -> dict[str, Any]:
    from search.bench_sweep import sweep_warm_start

    return sweep_warm_start()


def _real_data() -> dict[str, Any]:
    from search.bench_real import real_data

    return real_data()


Benchmark = Callable[[torch.device], dict[str, Any]]
BENCHMARKS: dict[str, Benchmark] = {
    "trial_overhead": lambda _: trial_overhead(),
    "train_images_per_second": lambda device: train_images_per_second(device=device),
    "augment_speedup": lambda device: augment_speedup(device=device),
    "storage_ms_per_trial": lambda _: storage_ms_per_trial(),
    "worker_scaling": lambda _: worker_scaling(),
    "airbench_trial": lambda device: airbench_trial(device=device),
    "real_data": lambda _: _real_data(),
    "sweep_warm_start": lambda _: _sweep_warm_start(),
}
# Figures that take many minutes on the CPU: run only when named with --only.
OPT_IN = ("real_data", "airbench_trial", "sweep_warm_start")
# What `bench --device cuda` runs: the figures of the GPU path (the rest are of the CPU, the
# storage and the processes, whatever device trains).
DEVICE_FIGURES = ("train_images_per_second", "augment_speedup", "airbench_trial")


def run_benchmarks(
    names: list[str] | None = None,
    *,
    device: str = "auto",
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The named figures (default: all but the opt-in ones; with `device="cuda"`, the GPU
    path's) as one dict, with the machine they ran on."""
    from search.memory import retain_freed_memory
    from search.train import resolve_device

    where = resolve_device(device)
    # As in `regsearch run`; DataLoader workers of the reference pipelines inherit it.
    out: dict[str, Any] = {"machine": {**machine(), "retain_freed_memory": retain_freed_memory()}}
    out["machine"]["device"] = str(where)
    default = DEVICE_FIGURES if where.type == "cuda" and device != "auto" else None
    for name in names or default or [n for n in BENCHMARKS if n not in OPT_IN]:
        if echo:
            echo(f"bench: {name} …")
        out[name] = BENCHMARKS[name](where)
    return out
