"""`regsearch bench --only sweep_warm_start`: what warm-starting a size sweep saves.

Two sweeps of the default digits study over the same fractions, in one bench run on the same
machine: warm-started (each study seeded with the previous fraction's best configurations,
the default) and cold (`sweep.warm_start: false`: independent studies). Both skip the
confirm phase, so the figures are of the search alone. Per fraction: search trials, and
seconds from the first trial's start, until the best validation value first reaches the
target, which is the cold study's final best minus `tolerance`; the saving is cold ÷ warm.
The smallest fraction is a control: both of its studies start cold, so their trials match.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from search.bench.runs import run_cli
from search.core.records import ranking

__all__ = ["sweep_warm_start", "to_target"]

_SWEEP = "bench"


def to_target(trials: Sequence[optuna.trial.FrozenTrial], target: float) -> tuple[int, float]:
    """(finished search trials, seconds from the first trial's start) until the best value
    first reaches `target` (maximised); (-1, -1.0) if it never does."""
    done = sorted(
        (t for t in trials if t.value is not None and t.datetime_complete is not None),
        key=lambda t: t.number,
    )
    if not done:
        return -1, -1.0
    start = min(t.datetime_start for t in done if t.datetime_start is not None)
    best = -float("inf")
    for count, t in enumerate(done, 1):
        best = max(best, float(t.value))  # type: ignore[arg-type]
        if best >= target:
            assert t.datetime_complete is not None
            return count, round((t.datetime_complete - start).total_seconds(), 1)
    return -1, -1.0


def _search_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    from search.core.records import is_budget_trial

    study = optuna.load_study(study_name=name, storage=storage)
    return [t for t in study.get_trials(deepcopy=False) if is_budget_trial(t)]


def _sweep(cwd: Path, fractions: Sequence[float], n_trials: int, warm: bool) -> float:
    listed = ", ".join(f"{f:g}" for f in fractions)
    sweep = f"sweep={{fractions: [{listed}], warm_start: {str(warm).lower()}}}"
    args = ["--study", _SWEEP, "--n-trials", str(n_trials), "--set", sweep]
    return run_cli(cwd, [*args, "--set", "search.confirm=none"])


def sweep_warm_start(
    *,
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    n_trials: int = 24,
    tolerance: float = 0.005,
) -> dict[str, Any]:
    from search.study.sweep import fraction_study

    out: dict[str, Any] = {"fractions": list(fractions), "n_trials": n_trials}
    with tempfile.TemporaryDirectory(prefix="regsearch-sweep-") as tmp:
        dirs = {"cold": Path(tmp) / "cold", "warm": Path(tmp) / "warm"}
        for kind, cwd in dirs.items():
            cwd.mkdir()
            out[f"{kind}_sweep_seconds"] = round(
                _sweep(cwd, fractions, n_trials, kind == "warm"), 1
            )
        rows = []
        for fraction in fractions:
            name = fraction_study(_SWEEP, fraction)
            trials = {
                kind: _search_trials(f"sqlite:///{cwd}/studies/regsearch.db", name)
                for kind, cwd in dirs.items()
            }
            best = {
                kind: max((float(t.value) for t in ts if t.value is not None), default=None)
                for kind, ts in trials.items()
            }
            if best["cold"] is None:
                continue
            target = best["cold"] - tolerance
            row: dict[str, Any] = {"fraction": fraction, "target": round(target, 4)}
            for kind, ts in trials.items():
                count, seconds = to_target(ts, target)
                row[f"{kind}_trials_to_target"] = count
                row[f"{kind}_seconds_to_target"] = seconds
                row[f"{kind}_best"] = best[kind]
                ordered = sorted(ts, key=ranking(optuna.study.StudyDirection.MAXIMIZE))
                row[f"{kind}_best_trial"] = ordered[0].number if ordered else None
            rows.append(row)
        out["per_fraction"] = rows
    reached = [r for r in rows[1:] if r["warm_trials_to_target"] > 0]
    if reached:
        cold = sum(max(r["cold_trials_to_target"], 1) for r in reached)
        warm = sum(r["warm_trials_to_target"] for r in reached)
        out["trials_to_target_saving"] = round(cold / warm, 2)  # cold ÷ warm, after the first
    out["wall_time_ratio"] = round(out["cold_sweep_seconds"] / out["warm_sweep_seconds"], 2)
    out["note"] = (
        "target: the cold study's best − tolerance; trials count search + baseline trials "
        "in the order they were numbered; the first fraction is a control (both cold)"
    )
    return out
