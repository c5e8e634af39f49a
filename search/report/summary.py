"""Trial rows for `status`, `best` and the end-of-run summary: as JSON-safe dicts and as rich
tables, sorted best first."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config.trial import CORE_REGULARIZERS
from search.core.records import (
    ABLATE_ATTR,
    BEST_EPOCH_ATTR,
    CHAMPION_URI_ATTR,
    EPOCHS_TRAINED_ATTR,
    OBJECTIVE_METRIC_ATTR,
    OVERRIDES_ATTR,
    PHASE_ATTR,
    REFIT,
    RUN_ID_ATTR,
    SEARCH,
    SOURCE_ATTR,
    STOP_REASON_ATTR,
    TRAIN_ACCURACY_ATTR,
    TRAIN_IMAGES_ATTR,
    VAL_ACCURACY_ATTR,
    best_value_of,
)

if TYPE_CHECKING:
    from search.config.schema import StudyConfig

__all__ = [
    "best_summary",
    "champion_name",
    "champion_of",
    "champion_source",
    "format_value",
    "ranked_trials",
    "refit_trained_on",
    "shown_value",
    "study_rows",
    "trained_params",
    "trial_row",
    "trials_table",
    "verdict",
    "verdict_metrics",
]


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def trained_params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's params as it trained: a retrain's seed and an ablation's regularizer off (its
    `overrides`) over the params of the configuration it retrains."""
    overrides = trial.user_attrs.get(OVERRIDES_ATTR) or {}
    # The ablated regularizer too where its off value lies outside the searched range (0 of a
    # log range): it is then no param of the trial (`SearchSpace.sample`).
    shown = ("seed", trial.user_attrs.get(ABLATE_ATTR))
    trained = {k: v for k, v in overrides.items() if k in trial.params or k in shown}
    return {**trial.params, **trained}


REFIT_VALUE = "its configuration's confirm mean"  # what a refit's value is, in its tables


def refit_trained_on(trial: FrozenTrial) -> str | None:
    """What a refit trained on ("training + validation, 1,437 images"), for the champion's
    tables of the report and the dashboard: it has no validation score and no best epoch of
    its own. None for any other trial."""
    if trial.user_attrs.get(PHASE_ATTR) != REFIT:
        return None
    images = trial.user_attrs.get(TRAIN_IMAGES_ATTR)
    return "training + validation" + (f", {images:,} images" if isinstance(images, int) else "")


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as JSON; `params` are what it trained with (an ablation's regularizer off, a
    retrain's seed), `phase` is search, baseline, confirm or ablation. `value` is Optuna's
    (of a pruned trial: the epoch it was pruned at); `best_value` the value at `best_epoch`
    (`best_value_of`: a complete trial's value, a pruned trial's best before it was stopped)."""
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "phase": attrs.get(PHASE_ATTR, SEARCH),
        "ablate": attrs.get(ABLATE_ATTR),
        "source": attrs.get(SOURCE_ATTR),
        "value": _json_number(trial.value) if trial.state != TrialState.FAIL else None,
        "best_value": _json_number(best_value_of(trial)),
        "params": trained_params(trial),
        "epochs": attrs.get(EPOCHS_TRAINED_ATTR, len(trial.intermediate_values) or None),
        "best_epoch": attrs.get(BEST_EPOCH_ATTR),
        "stop_reason": attrs.get(STOP_REASON_ATTR),
        "train_accuracy": attrs.get(TRAIN_ACCURACY_ATTR),
        "val_accuracy": attrs.get(VAL_ACCURACY_ATTR),
        "mlflow_run_id": attrs.get(RUN_ID_ATTR),
    }


def sorted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed first, then pruned, each best first by `search.study.studies.ranking` (equal values
    by validation loss, as `best_trial`), then the rest by number. Pruned trials rank among
    themselves by their best epoch's value (`best_value_of`, the value `status` shows), never
    above a completed trial; one without a finite epoch comes last of them."""
    from search.core.records import ranking

    order = ranking(study.direction)
    rank = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def key(t: FrozenTrial) -> tuple[int, float, float, int]:
        value, tiebreak, number = order(t)
        if t.state == TrialState.PRUNED:
            best = best_value_of(t)
            value = math.inf if best is None else sign * best
        return rank.get(t.state, 2), value if t.state in rank else 0.0, tiebreak, number

    return sorted(study.get_trials(deepcopy=False), key=key)


def _interval(iv: Any) -> dict[str, Any] | None:
    if iv is None:
        return None
    return {k: _json_number(v) if isinstance(v, float) else v for k, v in iv.as_dict().items()}


def _search_spent(study: optuna.Study, config: StudyConfig | None) -> bool:
    """Whether the study's finished search trials have reached its budget."""
    from search.core.records import FINISHED
    from search.study.studies import count_trials

    return config is None or count_trials(study, FINISHED) >= config.search.n_trials


def best_summary(study: optuna.Study) -> dict[str, Any] | None:
    """The study's answer, or None before any trial completed. Keys: `study`, `trial` (the
    champion's trial: the best-seed retrain once confirmed), `phase`, `value`, `params`,
    `model_uri`, `champion_uri`, `test_accuracy`; `baseline` (`{trial, value, params}`: the
    recipe's search trial, and `val`, its mean over seeds, once confirmed); `gain` (champion −
    baseline on validation, positive = better also for a minimised metric) and `gain_interval`;
    `champion` (the confirmed configuration: `{source, val: {mean, low, high, n}, seeds}`, None
    before); `contributions` (`{regularizer: {mean, low, high, n}}` from the ablation); `test`
    (the held-out evaluation: accuracy, ECE and NLL of both models, the gain with its
    interval); `confirm` (`pending` retrains, `complete`); `epochs_saved` by pruning and early
    stopping; `hint`: a line on the training budget (`budget_hint`), or None."""
    from search.core.records import INPUT_ATTR, baseline_trial
    from search.study.evidence import TEST_ATTR, epochs_saved, study_config, study_evidence
    from search.study.studies import best_trial

    best = best_trial(study)
    if best is None:
        return None
    from search.tracking.champion import model_uri_of

    # The best trial's own registered version; the alias URI only as a fallback.
    champion_uri = study.user_attrs.get(CHAMPION_URI_ATTR)
    model_uri = model_uri_of(study, best) or champion_uri
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    base = baseline_trial(study)
    ev = study_evidence(study)
    config = study_config(study)
    baseline = None
    if base is not None:
        baseline = {
            "trial": base.number,
            "value": _json_number(base.value),
            "params": dict(base.params),
        }
    gain: float | None = None
    gain_interval = None
    champion = None
    contributions: dict[str, Any] = {}
    if ev is not None and ev.champion is not None and ev.champion.interval is not None:
        from search.study.evidence import SEED_ATTR

        ablated_off = {ev.champion.ablate: 0.0} if ev.champion.ablate else {}
        champion = {
            "source": ev.champion.source,
            "params": {**ev.champion.params, **ablated_off},  # the configuration it names
            "val": _interval(ev.champion.interval),
            "seeds": ev.seeds,
            "is_baseline": ev.champion.baseline,
            "model_trial": best.number,  # the retrain whose weights are registered
            "model_refit": best.user_attrs.get(PHASE_ATTR) == REFIT,  # on train + val
            "model_seed": best.user_attrs.get(SEED_ATTR),
            # The regularizer switched off: the champion is an ablated configuration that
            # beat the one the confirm phase chose (`replaced`) beyond its interval.
            "ablated": ev.champion.ablate,
            "replaced": None
            if ev.replaced is None or ev.replaced.interval is None
            else {"source": ev.replaced.source, "val": _interval(ev.replaced.interval)},
            "resplit": ev.resplit,
            "retrains": ev.retrains,
            "retrains_without_racing": ev.full_retrains,
            "dropped": {str(a.source): a.dropped_after for a in ev.arms if a.dropped_after},
        }
        if baseline is not None and ev.baseline is not None and ev.baseline.interval:
            baseline["val"] = _interval(ev.baseline.interval)
        if ev.gain is not None:
            gain = _json_number(ev.gain.mean)
            gain_interval = _interval(ev.gain)
        contributions = {k: _interval(v) for k, v in ev.contributions.items()}
    elif base is not None and base.value is not None and best.value is not None:
        gain = _json_number(sign * (best.value - base.value))
    test = study.user_attrs.get(TEST_ATTR)
    if isinstance(test, dict) and test.get("champion_trial") != best.number:
        test = None  # of an earlier champion: the study was extended since
    return {
        "study": study.study_name,
        "trial": best.number,
        "phase": best.user_attrs.get(PHASE_ATTR),
        "value": _json_number(best.value),
        "params": trained_params(best),
        "model_uri": model_uri,
        "champion_uri": champion_uri,
        "test_accuracy": _json_number(test["champion"]["accuracy"]) if test else None,
        "baseline": baseline,
        "gain": gain,
        "gain_interval": gain_interval,
        "champion": champion,
        "contributions": contributions,
        "test": test,
        "confirm": None
        if ev is None
        else {
            "complete": ev.confirm_complete and ev.pending == 0,
            "pending": ev.pending,
            # Before the search budget is spent, `pending` is the plan for today's top k.
            "started": _search_spent(study, config),
        },
        "epochs_saved": epochs_saved(study, config),
        "input": study.user_attrs.get(INPUT_ATTR),
        "champion_name": champion_name(best.number, champion),
        "refit": _refit_summary(best, test),
        "hint": budget_hint(contributions, config, study.user_attrs.get(TRAIN_IMAGES_ATTR)),
    }


SMALL_DATA = 5_000  # training images: where docs/benchmarks.md measured the budget's effect
HINT_PASSES = 5  # passes an epoch the hint suggests (measured: digits, Fashion-MNIST 1,000)


def budget_hint(
    contributions: dict[str, Any], config: StudyConfig | None, train_images: Any
) -> str | None:
    """A line for a small training split on which no regularizer paid beyond the noise and one
    looked harmful, trained one pass an epoch: on such sets the regularizers pay with more
    passes (docs/benchmarks.md, Fashion-MNIST: the ablation turns positive at five). None
    otherwise, and when the space searches the budget itself."""
    from search.config.space import space_of
    from search.training.train import batches_of

    if not contributions or config is None or not isinstance(train_images, int):
        return None
    if train_images > SMALL_DATA or any(
        e.name in ("batch_size", "min_steps_per_epoch", "epochs") for e in space_of(config).searched
    ):
        return None
    means = [c["mean"] for c in contributions.values() if c.get("mean") is not None]
    if any(c.get("low") is not None and c["low"] > 0 for c in contributions.values()):
        return None  # one clearly pays
    if not any(m < 0 for m in means):
        return None
    _, passes, per_epoch = batches_of(config.train, train_images)
    if passes > 1:
        return None
    return (
        f"hint: no regularizer paid beyond the noise, trained one pass over {train_images:,} "
        "images an epoch; on small data sets they pay with more passes: "
        f"--set train.min_steps_per_epoch={HINT_PASSES * per_epoch} gives {HINT_PASSES} passes "
        "an epoch (about 3 to 4.5 times the study's time; docs/benchmarks.md, Fashion-MNIST)"
    )


def champion_name(trial: int, champion: dict[str, Any] | None) -> str:
    """The champion named one way everywhere (`run`, `status`, `best`, the report, the
    dashboard, MLflow): its configuration, then the trial whose model is registered."""
    if champion is None:
        return f"trial {trial}"
    what = (
        f"the baseline recipe (trial {champion['source']})"
        if champion.get("is_baseline")
        else f"configuration of trial {champion['source']}"
    )
    if champion.get("ablated"):
        what += f" with {champion['ablated']} off"
    seed = champion.get("model_seed")
    model = f"model from trial {champion.get('model_trial', trial)}"
    refit = ", refit on train + validation" if champion.get("model_refit") else ""
    return f"{what}, {model}" + (f", seed {seed}" if seed is not None else "") + refit


def _refit_summary(best: FrozenTrial, test: dict[str, Any] | None) -> dict[str, Any] | None:
    """The refit champion (`search.study.refit`): what it trained on, and what the test split says
    of it and of its configuration trained on the training split alone (`before`, the
    best-seed retrain `of`) with the refit's `gain`; None when the champion is no refit."""
    from search.core.records import REFIT, TRAIN_IMAGES_ATTR
    from search.study.refit import REFIT_EPOCHS_ATTR, REFIT_OF_ATTR

    attrs = best.user_attrs
    if attrs.get(PHASE_ATTR) != REFIT:
        return None
    test = test or {}
    return {
        "trial": best.number,
        "of": attrs.get(REFIT_OF_ATTR),
        "epochs": attrs.get(REFIT_EPOCHS_ATTR),
        "train_images": attrs.get(TRAIN_IMAGES_ATTR),
        "test_accuracy": (test.get("champion") or {}).get("accuracy"),
        "before": test.get("before_refit"),
        "gain": test.get("refit_gain"),
    }


def _points(value: float, metric: str) -> str:
    return f"{100 * value:+.1f} pt" if metric.endswith("accuracy") else f"{value:+.4g}"


def verdict(best: dict[str, Any], metric: str) -> str:
    """The study's answer in one line, the same in `run`, `best`, the report, the dashboard
    note and the MLflow parent run (an accuracy's differences in points)."""
    champion, base, test = best.get("champion"), best.get("baseline"), best.get("test")
    if champion is not None:
        val = champion["val"]
        spread = "" if val["low"] is None else f" ± {(val['high'] - val['low']) / 2:.3f}"
        seeds = f"{val['n']} seed{'s' if val['n'] != 1 else ''}"
        what = best.get("champion_name") or champion_name(best["trial"], champion)
        line = f"champion: {what}; {metric} {val['mean']:.3f}{spread} ({seeds})"
        if champion.get("is_baseline"):
            base = None  # nothing searched beat it on the mean over seeds: no gain to state
    else:
        line = f"best: trial {best['trial']} {metric} {best['value']:.4f}"
    if test is not None:
        line += f", test {test['champion']['accuracy']:.3f}"
    if champion is not None and champion.get("is_baseline"):
        line += " — the baseline recipe itself: no searched configuration beat it on the mean"
    if base is not None:
        shown = base.get("val", {}).get("mean", base["value"]) if champion else base["value"]
        if shown is not None:
            line += f" — baseline recipe {shown:.3f}"
        if test is not None and test.get("baseline") is not None:
            line += f" (test {test['baseline']['accuracy']:.3f})"
        gains = []
        if best.get("gain") is not None:
            iv = best.get("gain_interval") or {}
            where = "val " if test is not None else ""
            shown_gain = f"{where}{_points(best['gain'], metric)}"
            if iv.get("low") is not None:
                shown_gain += f" [{_points(iv['low'], metric)}, {_points(iv['high'], metric)}]"
            gains.append(shown_gain)
        if test is not None and test.get("gain") is not None:
            g = test["gain"]
            low, high = _points(g["low"], "accuracy"), _points(g["high"], "accuracy")
            gains.append(f"test {_points(g['mean'], 'accuracy')} [{low}, {high}]")
        if gains:
            line += f", gain {', '.join(gains)}"
    contributions = best.get("contributions") or {}
    ablated = champion.get("ablated") if champion is not None else None
    if champion is not None and ablated and ablated in contributions:
        c = contributions[ablated]
        iv = "" if c["low"] is None else f" [{_points(-c['high'], metric)}, "
        iv += "" if c["low"] is None else f"{_points(-c['low'], metric)}]"
        line += (
            f"; {ablated} hurt: switching it off gained {_points(-c['mean'], metric)}{iv} "
            f"over the configuration of trial {champion['source']}"
        )
    if contributions:
        ranked = sorted(contributions.items(), key=lambda kv: -(kv[1]["mean"] or 0.0))
        parts = [f"{name} {_points(c['mean'], metric)}" for name, c in ranked]
        line += f"; contributions: {', '.join(parts)}"
    if champion is not None and champion.get("retrains_without_racing"):
        done, full = champion["retrains"], champion["retrains_without_racing"]
        if done < full:
            line += f"; racing ran {done} of {full} retrains"
    refit = best.get("refit")
    if refit is not None:
        images = refit.get("train_images")
        shown = f"{images:,} images, " if images is not None else ""
        line += f"; refit on train + validation ({shown}{refit['epochs']} epochs)"
        if refit.get("test_accuracy") is not None:
            line += f": test {refit['test_accuracy']:.3f}"
        if refit.get("gain") is not None:
            g = refit["gain"]
            low, high = _points(g["low"], "accuracy"), _points(g["high"], "accuracy")
            line += (
                f", {_points(g['mean'], 'accuracy')} [{low}, {high}] over the same "
                "configuration trained on the training split alone"
            )
    confirm = best.get("confirm")
    if confirm is not None and confirm.get("pending"):
        if confirm.get("started", True):
            n = confirm["pending"]
            line += f"; confirm phase: {n} retrain{'s' if n != 1 else ''} to go"
        else:
            line += "; confirm phase: after the search"
    if best.get("epochs_saved") is not None:
        line += f"; pruning and early stopping saved {100 * best['epochs_saved']:.0f}% of epochs"
    return line


def verdict_metrics(best: dict[str, Any]) -> dict[str, float]:
    """The verdict's numbers as MLflow metrics of the parent run."""
    out: dict[str, Any] = {"best_value": best.get("value"), "best_trial": best.get("trial")}
    base = best.get("baseline") or {}
    out["baseline_value"] = (base.get("val") or {}).get("mean", base.get("value"))
    out["gain"] = best.get("gain")
    iv = best.get("gain_interval") or {}
    out["gain_low"], out["gain_high"] = iv.get("low"), iv.get("high")
    champion = best.get("champion")
    if champion is not None:
        out["champion_val_mean"] = champion["val"]["mean"]
        out["champion_seeds"] = champion["val"]["n"]
    test = best.get("test")
    if test is not None:
        for who, prefix in (("champion", "test_"), ("baseline", "baseline_test_")):
            for key, value in (test.get(who) or {}).items():
                out[f"{prefix}{key}"] = value
        g = test.get("gain") or {}
        out["test_gain"], out["test_gain_low"], out["test_gain_high"] = (
            g.get("mean"),
            g.get("low"),
            g.get("high"),
        )
    for name, c in (best.get("contributions") or {}).items():
        out[f"contribution_{name}"] = c["mean"]
        out[f"contribution_{name}_low"], out[f"contribution_{name}_high"] = c["low"], c["high"]
    refit = best.get("refit") or {}
    out["refit_epochs"] = refit.get("epochs")
    out["before_refit_test_accuracy"] = (refit.get("before") or {}).get("accuracy")
    g = refit.get("gain") or {}
    out["refit_gain"], out["refit_gain_low"], out["refit_gain_high"] = (
        g.get("mean"),
        g.get("low"),
        g.get("high"),
    )
    out["epochs_saved"] = best.get("epochs_saved")
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float) and math.isfinite(v)}


def study_rows(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row a study: its champion (`best_summary`: the confirmed configuration's model once
    the confirm phase has chosen), never a retrain that merely scored higher."""
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        summary = best_summary(optuna.load_study(study_name=s.study_name, storage=storage))
        rows.append(
            {
                "study": s.study_name,
                "direction": s.direction.name.lower() if s.direction else None,
                "trials": s.n_trials,
                "best_value": summary["value"] if summary else None,
                "best_trial": summary["trial"] if summary else None,
                "champion": summary["champion_name"] if summary else None,
                "started": s.datetime_start.isoformat() if s.datetime_start else None,
            }
        )
    return rows


def format_value(value: Any, *, digits: int = 4) -> str:
    """A table cell or a number in a sentence: – for missing; floats to `digits` decimals
    without trailing zeros (`digits` significant figures below 0.01); integers with thousands
    separators."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1e-2 and value != 0
            else f"{value:.{digits}f}".rstrip("0").rstrip(".")
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def shown_value(row: dict[str, Any]) -> str:
    """A `trial_row`'s value cell: a pruned trial's best epoch's value, marked as such
    (`0.912 @ep4 (pruned)`: comparable with the completed trials' values, which are their best
    epoch's too, where Optuna's value of a pruned trial is the epoch it was pruned at)."""
    if row["state"] != "PRUNED":
        return format_value(row["value"])
    if row["best_value"] is None:
        return "– (pruned)"
    at = "" if row["best_epoch"] is None else f" @ep{row['best_epoch']}"
    return f"{format_value(row['best_value'])}{at} (pruned)"


def table_params(study: optuna.Study) -> tuple[dict[str, Any], list[str]]:
    """(fixed values, column names) of a study's table: the core regularizers (a fixed one
    shows its value), then every other searched parameter, in space order."""
    from search.config.space import space_of
    from search.study.evidence import study_config

    config = study_config(study)
    space = None if config is None else space_of(config)
    fixed: dict[str, Any] = {} if space is None else space.fixed_values()
    searched = [] if space is None else [e.name for e in space.searched]
    seen = {name for t in study.get_trials(deepcopy=False) for name in t.params}
    extra = [n for n in searched if n not in CORE_REGULARIZERS]
    extra += sorted(seen - set(CORE_REGULARIZERS) - set(extra))
    return fixed, [*CORE_REGULARIZERS, *extra]


def champion_source(study: optuna.Study) -> int | None:
    """The search (or baseline) trial whose configuration is the champion's: the confirmed
    one once the confirm phase has chosen, else the best trial."""
    return champion_of(study)[0]


def champion_of(study: optuna.Study) -> tuple[int | None, str | None]:
    """`champion_source`, and the regularizer the champion switches off where it is an
    ablated configuration (None otherwise)."""
    from search.study.evidence import study_evidence
    from search.study.studies import best_trial

    ev = study_evidence(study)
    if ev is not None and ev.champion is not None and ev.champion.interval is not None:
        return int(ev.champion.source), ev.champion.ablate
    best = best_trial(study)
    return (None if best is None else best.number), None


def ranked_trials(study: optuna.Study, *, everything: bool = False) -> list[FrozenTrial]:
    """The search and baseline trials, best first (`sorted_trials`); with `everything`, the
    confirm and ablation retrains after them (never ranked among the search's trials)."""
    from search.core.records import is_budget_trial

    trials = sorted_trials(study)
    budget = [t for t in trials if is_budget_trial(t)]
    return budget + [t for t in trials if not is_budget_trial(t)] if everything else budget


def trials_table(
    study: optuna.Study,
    *,
    limit: int | None = None,
    title: str | None = None,
    everything: bool = False,
) -> Any:
    """The study's trials as a rich table: the search and baseline trials ranked, the
    champion's configuration marked ★; the retrains of the confirm phase only with
    `everything`, after them, as `retrain #N` / `#N −regularizer`."""
    from rich.table import Table

    metric = study.user_attrs.get(OBJECTIVE_METRIC_ATTR, "value")
    table = Table(title=title, header_style="bold")
    fixed, names = table_params(study)
    trained = "epochs trained" if "epochs" in names else "epochs"  # beside a searched `epochs`
    for column in ("#", "state", "phase", metric, *names, trained, "stop reason"):
        table.add_column(
            column, justify="left" if column in ("state", "phase", "stop reason") else "right"
        )
    trials = ranked_trials(study, everything=everything)
    hidden = len(study.get_trials(deepcopy=False)) - len(trials)
    source, ablated = champion_of(study)
    for trial in trials[:limit] if limit else trials:
        row = trial_row(trial)
        style = {"COMPLETE": None, "PRUNED": "dim", "FAIL": "red", "RUNNING": "cyan"}.get(
            row["state"]
        )
        phase = {"search": "", "confirm": f"retrain #{row['source']}"}.get(
            row["phase"], row["phase"]
        )
        if row["phase"] == "ablation":
            phase = f"#{row['source']} −{row['ablate']}"
        if trial.number == source:  # "★ champion −dropout": this configuration, dropout off
            off = f" −{ablated}" if ablated else ""
            phase = f"★ champion{off} {phase}".rstrip()
        # Beyond its params, what it trained with: the recipe's value of a searched key its
        # distribution does not hold, and of a regularizer the space fixes otherwise.
        overrides = trial.user_attrs.get(OVERRIDES_ATTR) or {}
        table.add_row(
            str(row["number"]),
            row["state"],
            phase,
            shown_value(row),
            *(format_value(row["params"].get(p, overrides.get(p, fixed.get(p)))) for p in names),
            format_value(row["epochs"]),
            format_value(row["stop_reason"]),
            style=style,
        )
    if hidden:
        table.caption = (
            f"★ = the champion's configuration; {hidden} retrains of the confirm phase not "
            "listed (`regsearch status STUDY --all`)"
        )
    return table
