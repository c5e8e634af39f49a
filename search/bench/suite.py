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

from search.bench.throughput import airbench_trial, augment_speedup, train_images_per_second
from search.config.space import space_of
from search.data.dataset import Dataset, load_dataset
from search.study.studyfile import load_config
from search.training.train import train

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

    from search.run.objective import Objective
    from search.run.runner import close_tracking
    from search.study.storage import open_storage
    from search.study.studies import create_or_resume
    from search.tracking.runs import Tracker

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config(overrides=[*_TRIAL_OVERRIDES, f"train.epochs={epochs}"])
    data = load_dataset(config.dataset)
    space = space_of(config)
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
        close_tracking(tracker, study, finished=True, data=data)
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

    def register() -> None:
        tracker.flush(run_id)
        tracker.registry.register(run_id, number=999, value=-1.0, result=result, data=data)

    seconds = _timed(register)
    tracker.end_trial(run_id, state="COMPLETE", summary={})
    return seconds


def _sweep_warm_start() -> dict[str, Any]:
    from search.bench.sweep import sweep_warm_start

    return sweep_warm_start()


def _pruning() -> dict[str, Any]:
    from search.bench.efficiency import pruning

    return pruning()


def _samplers() -> dict[str, Any]:
    from search.bench.efficiency import samplers

    return samplers()


def _regret() -> dict[str, Any]:
    from search.bench.regret import pruning_regret

    return pruning_regret()


def _fashion() -> dict[str, Any]:
    from search.bench.fashion import fashion

    return fashion()


def _selection() -> dict[str, Any]:
    from search.bench.fashion import selection

    return selection()


def _racing() -> dict[str, Any]:
    from search.bench.racing import racing

    return racing()


def _storage_ms_per_trial() -> dict[str, Any]:
    from search.bench.storage import storage_ms_per_trial

    return storage_ms_per_trial()


def _worker_scaling() -> dict[str, Any]:
    from search.bench.runs import worker_scaling

    return worker_scaling()


def _time_to_target() -> dict[str, Any]:
    from search.bench.runs import time_to_target

    return time_to_target()


def _real_data() -> dict[str, Any]:
    from search.bench.real import real_data

    return real_data()


Benchmark = Callable[[torch.device], dict[str, Any]]
BENCHMARKS: dict[str, Benchmark] = {
    "trial_overhead": lambda _: trial_overhead(),
    "train_images_per_second": lambda device: train_images_per_second(device=device),
    "augment_speedup": lambda device: augment_speedup(device=device),
    "pruning": lambda _: _pruning(),
    "samplers": lambda _: _samplers(),
    "regret": lambda _: _regret(),
    "time_to_target": lambda _: _time_to_target(),
    "storage_ms_per_trial": lambda _: _storage_ms_per_trial(),
    "worker_scaling": lambda _: _worker_scaling(),
    "airbench_trial": lambda device: airbench_trial(device=device),
    "real_data": lambda _: _real_data(),
    "fashion": lambda _: _fashion(),
    "selection": lambda _: _selection(),
    "racing": lambda _: _racing(),
    "sweep_warm_start": lambda _: _sweep_warm_start(),
}
# Figures that take many minutes on the CPU: run only when named with --only.
OPT_IN = (
    "real_data",
    "airbench_trial",
    "sweep_warm_start",
    "regret",
    "fashion",
    "selection",
    "racing",
)
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
    from search.core.memory import retain_freed_memory
    from search.training.train import resolve_device

    where = resolve_device(device)
    # As in `regsearch run`; DataLoader workers of the reference pipelines inherit it.
    out: dict[str, Any] = {"machine": {**machine(), "retain_freed_memory": retain_freed_memory()}}
    out["machine"]["device"] = str(where)
    default = DEVICE_FIGURES if where.type == "cuda" and device != "auto" else None
    todo = list(names or default or [n for n in BENCHMARKS if n not in OPT_IN])
    replayed = tuple(n for n in ("pruning", "samplers") if n in todo)
    if len(replayed) > 1:  # one pool for both: its jobs balance over the cores
        from search.bench.efficiency import prefetch

        if echo:
            echo(f"bench: {' and '.join(replayed)}: replaying their studies …")
        prefetch(replayed)
    for name in todo:
        if echo:
            echo(f"bench: {name} …")
        out[name] = BENCHMARKS[name](where)
    return out
