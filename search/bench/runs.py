"""`regsearch bench` figures of whole `regsearch run` processes, as a user starts them:
`time_to_target` (how soon the default study has a good model) and `worker_scaling` (what a
second worker adds). Each runs in a scratch folder with the user's storage variables unset.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = [
    "SETTINGS_VAR",
    "run_cli",
    "study_settings",
    "time_to_target",
    "worker_rate",
    "worker_scaling",
]

# `regsearch bench --set` items, passed in the environment so that the `regsearch run`
# processes and the replay pools a benchmark starts apply them as the bench process does.
SETTINGS_VAR = "REGSEARCH_BENCH_SET"


def study_settings() -> list[str]:
    """The `regsearch bench --set KEY=VALUE` items: applied last to every study a benchmark
    runs (e.g. `train.min_steps_per_epoch=8`, the former budget, for a before/after)."""
    raw = os.environ.get(SETTINGS_VAR)
    return list(json.loads(raw)) if raw else []


def run_cli(cwd: str | Path, args: list[str]) -> float:
    """`regsearch run ARGS` (then the `bench --set` items) in `cwd`; its wall seconds. A
    failure raises with its last line."""
    for item in study_settings():
        args = [*args, "--set", item]
    env = {
        k: v for k, v in os.environ.items() if k not in ("REGSEARCH_STORAGE", "MLFLOW_TRACKING_URI")
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "search", "run", "--quiet", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise RuntimeError(
            f"regsearch run {' '.join(args)}: {tail[0] if tail else done.returncode}"
        )
    return time.perf_counter() - started


def _trials(cwd: str, study: str) -> list[Any]:
    import optuna

    storage = f"sqlite:///{Path(cwd) / 'studies' / 'regsearch.db'}"
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def time_to_target(*, target: float = 0.98, args: tuple[str, ...] = ()) -> dict[str, Any]:
    """The default study (or `regsearch run ARGS`), every default on (MLflow, the confirm
    phase): seconds from its first trial's start until the best validation value so far first
    reached `target`, beside the seconds from that start to its last trial's end and the whole
    command's wall time."""
    import optuna

    from search.core.records import is_budget_trial

    with tempfile.TemporaryDirectory() as tmp:
        wall = run_cli(tmp, list(args))
        trials = _trials(tmp, "digits")
    start = min(t.datetime_start for t in trials if t.datetime_start)
    done = sorted(
        (t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: t.datetime_complete,
    )
    reached = next(  # a search (or baseline) trial: the confirm phase comes after the search
        (t for t in done if is_budget_trial(t) and t.value is not None and t.value >= target),
        None,
    )
    study_seconds = (done[-1].datetime_complete - start).total_seconds()
    seconds = (reached.datetime_complete - start).total_seconds() if reached else None
    return {
        "time_to_target_seconds": round(seconds, 1) if seconds is not None else None,
        "target": target,
        "trial": reached.number if reached else None,
        "study_seconds": round(study_seconds, 1),
        "share_of_study": round(seconds / study_seconds, 3) if seconds is not None else None,
        "run_seconds": round(wall, 1),
        "trials": len(trials),
        "best_search_value": max(
            (t.value for t in done if is_budget_trial(t) and t.value is not None), default=None
        ),
    }


def worker_rate(trials: list[Any]) -> float:
    """Finished trials per minute, summed over workers, each worker timed from its first
    trial's start to its last trial's end: neither a worker's start-up nor the tail where
    one worker waits for the other counts."""
    import optuna

    from search.core.records import WORKER_ATTR

    spans: dict[str, list[Any]] = defaultdict(list)
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            spans[t.user_attrs.get(WORKER_ATTR, "?")].append(t)
    rate = 0.0
    for own in spans.values():
        start = min(t.datetime_start for t in own)
        end = max(t.datetime_complete for t in own)
        rate += len(own) / max((end - start).total_seconds() / 60, 1e-9)
    return rate


def worker_scaling(*, trials: int = 12, epochs: int = 6, repeats: int = 3) -> dict[str, Any]:
    """Trials per minute of a digits study with 2 workers ÷ with 1, one CPU thread per worker
    (the same CPU per trial), no pruning or early stopping (every trial the same work),
    `repeats` times alternating; the median ratio and its spread."""
    common = ["--threads", "1", "--n-trials", str(trials), "--set", f"train.epochs={epochs}"]
    for item in (
        "search.pruner=none",
        "early_stopping.patience=null",
        "tracking.enabled=false",
        "search.confirm=none",  # search throughput, not the retrains
    ):
        common += ["--set", item]
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                run_cli(tmp, ["--study", "scaling", "--workers", str(workers), *common])
                rates[workers].append(worker_rate(_trials(tmp, "scaling")))
    ratios = [two / one for one, two in zip(rates[1], rates[2], strict=True)]
    return {
        "worker_scaling": round(statistics.median(ratios), 3),
        "spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "ratios": [round(r, 3) for r in ratios],
        "trials_per_minute_1_worker": round(statistics.median(rates[1]), 1),
        "trials_per_minute_2_workers": round(statistics.median(rates[2]), 1),
        "trials": trials,
        "epochs": epochs,
        "repeats": repeats,
    }
