"""Trial rows for `status`, `best` and the end-of-run summary: as JSON-safe dicts and as rich
tables, sorted best first."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "CONTRACT_PARAMS",
    "best_summary",
    "format_value",
    "study_rows",
    "trial_row",
    "trials_table",
]

CONTRACT_PARAMS = ("weight_decay", "dropout", "aug_strength", "mixup_alpha", "label_smoothing")


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": _json_number(trial.value) if trial.state != TrialState.FAIL else None,
        "params": dict(trial.params),
        "epochs": attrs.get("epochs_trained", len(trial.intermediate_values) or None),
        "best_epoch": attrs.get("best_epoch"),
        "stop_reason": attrs.get("stop_reason"),
        "train_accuracy": attrs.get("train_accuracy"),
        "val_accuracy": attrs.get("val_accuracy"),
        "mlflow_run_id": attrs.get("mlflow_run_id"),
        "model_uri": attrs.get("model_uri"),
    }


def sorted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed first, then pruned, each best first by `search.study.ranking` (equal values
    by validation loss, as `best_trial`), then the rest by number."""
    from search.study import ranking

    order = ranking(study.direction)
    rank = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}

    def key(t: FrozenTrial) -> tuple[int, float, float, int]:
        value, tiebreak, number = order(t)
        return rank.get(t.state, 2), value if t.state in rank else 0.0, tiebreak, number

    return sorted(study.get_trials(deepcopy=False), key=key)


def best_summary(study: optuna.Study) -> dict[str, Any] | None:
    """`{study, trial, value, params, model_uri, champion_uri, test_accuracy, baseline, gain}`
    of the best completed trial, or None. `baseline` is the study's baseline-recipe trial
    (`{trial, value, params}`) and `gain` how much better the best value is than its value
    (positive = better, also for a minimised metric; None without a baseline)."""
    from search.study import PHASE_ATTR, baseline_trial, best_trial

    best = best_trial(study)
    if best is None:
        return None
    from search.champion import model_uri_of

    # The best trial's own registered version; the alias URI only as a fallback.
    champion_uri = study.user_attrs.get("champion_uri")
    model_uri = model_uri_of(study, best) or champion_uri
    base = baseline_trial(study)
    gain = None
    if base is not None and base.value is not None and best.value is not None:
        # Positive when the best trial is better: a minimised metric (val_loss) counts down.
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        gain = _json_number(sign * (best.value - base.value))
    return {
        "study": study.study_name,
        "trial": best.number,
        "phase": best.user_attrs.get(PHASE_ATTR),
        "value": _json_number(best.value),
        "params": dict(best.params),
        "model_uri": model_uri,
        "champion_uri": champion_uri,
        "test_accuracy": _json_number(study.user_attrs.get("test_accuracy")),
        "baseline": None
        if base is None
        else {"trial": base.number, "value": _json_number(base.value), "params": dict(base.params)},
        "gain": gain,
    }


def verdict(best: dict[str, Any], metric: str) -> str:
    """One line: the best trial against the baseline recipe (an accuracy's gain in points)."""
    line = f"best: trial {best['trial']} {metric}={best['value']:.4f}"
    if best.get("test_accuracy") is not None:
        line += f", test_accuracy={best['test_accuracy']:.4f}"
    base = best.get("baseline")
    if base is not None and best.get("gain") is not None:
        gain = best["gain"]
        shown = f"{100 * gain:+.1f} pt" if metric.endswith("accuracy") else f"{gain:+.4g}"
        line += f" — baseline recipe (trial {base['trial']}) {base['value']:.4f}, gain {shown}"
    return line


def study_rows(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        best = s.best_trial
        rows.append(
            {
                "study": s.study_name,
                "direction": s.direction.name.lower() if s.direction else None,
                "trials": s.n_trials,
                "best_value": _json_number(best.value) if best else None,
                "best_trial": best.number if best else None,
                "started": s.datetime_start.isoformat() if s.datetime_start else None,
            }
        )
    return rows


def format_value(value: Any) -> str:
    """A table cell: – for missing, 4 significant figures for small floats."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return (
            f"{value:.4g}"
            if abs(value) < 1e-2 and value != 0
            else f"{value:.4f}".rstrip("0").rstrip(".")
        )
    return str(value)


def table_params(study: optuna.Study) -> tuple[dict[str, Any], list[str]]:
    """(fixed values, column names) of a study's table: the five contract regularizers (a
    fixed one shows its value), then every other searched parameter, in space order."""
    from search.study import CONFIG_ATTR

    space = (study.user_attrs.get(CONFIG_ATTR) or {}).get("space") or {}
    fixed = {str(k).rpartition(".")[2]: v for k, v in space.items() if not isinstance(v, dict)}
    searched = [str(k).rpartition(".")[2] for k, v in space.items() if isinstance(v, dict)]
    seen = {name for t in study.get_trials(deepcopy=False) for name in t.params}
    extra = [n for n in searched if n not in CONTRACT_PARAMS]
    extra += sorted(seen - set(CONTRACT_PARAMS) - set(extra))
    return fixed, [*CONTRACT_PARAMS, *extra]


def trials_table(study: optuna.Study, *, limit: int | None = None, title: str | None = None) -> Any:
    from rich.table import Table

    metric = study.user_attrs.get("objective_metric", "value")
    table = Table(title=title, header_style="bold")
    fixed, names = table_params(study)
    for column in ("#", "state", metric, *names, "epochs", "stop reason"):
        table.add_column(
            column, justify="right" if column not in ("state", "stop reason") else "left"
        )
    trials = sorted_trials(study)
    for trial in trials[:limit] if limit else trials:
        row = trial_row(trial)
        style = {"COMPLETE": None, "PRUNED": "dim", "FAIL": "red", "RUNNING": "cyan"}.get(
            row["state"]
        )
        table.add_row(
            str(row["number"]),
            row["state"],
            format_value(row["value"]),
            *(format_value(row["params"].get(p, fixed.get(p))) for p in names),
            format_value(row["epochs"]),
            format_value(row["stop_reason"]),
            style=style,
        )
    return table
