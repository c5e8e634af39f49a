"""What regsearch keeps in Optuna, by name: the study and trial user-attribute keys, the
phases a trial can belong to, and the order of trials (best first). Below every module that
reads or writes studies, so they all use one name for each thing."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = [
    "ABLATE_ATTR",
    "BASELINE",
    "BEST_EPOCH_ATTR",
    "BEST_VALUE_ATTR",
    "CHAMPION_ATTR",
    "CHAMPION_ERROR_ATTR",
    "CHAMPION_URI_ATTR",
    "CONFIG_ATTR",
    "EPOCHS_TRAINED_ATTR",
    "FINISHED",
    "INPUT_ATTR",
    "MODEL_URI_ATTR",
    "OBJECTIVE_METRIC_ATTR",
    "OVERRIDES_ATTR",
    "PHASE_ATTR",
    "REFIT",
    "RUN_ID_ATTR",
    "SEARCH",
    "SEED_ATTR",
    "SOURCE_ATTR",
    "STOP_REASON_ATTR",
    "SURPLUS",
    "TEST_ACCURACY_ATTR",
    "TIEBREAK_ATTR",
    "TRACKING_ERROR",
    "TRAIN_ACCURACY_ATTR",
    "TRAIN_IMAGES_ATTR",
    "VAL_ACCURACY_ATTR",
    "VAL_IMAGES_ATTR",
    "WORKER_ATTR",
    "Planned",
    "baseline_trial",
    "best_value_of",
    "is_budget_trial",
    "outranks",
    "ranking",
]

CONFIG_ATTR = "regsearch_config"
TRAIN_IMAGES_ATTR = "train_images"  # study user attr: the size of the training split it trains on
VAL_IMAGES_ATTR = "val_images"  # study user attr: the validation split's size
# Study user attr: what the champion takes, {"shape": [C, H, W], "dtype", "range", "classes"}.
INPUT_ATTR = "input"
OBJECTIVE_METRIC_ATTR = "objective_metric"  # study user attr: the metric its values are
# Study user attrs of the registered champion: its `models:/` URI and test-split accuracy.
CHAMPION_URI_ATTR = "champion_uri"
# Study user attribute: {"trial": number, "uri": "models:/<study>/<version>"} of the version
# `@champion` points at (`search.tracking.champion`).
CHAMPION_ATTR = "champion"
TEST_ACCURACY_ATTR = "test_accuracy"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Trial user attrs of every trial's outcome.
STOP_REASON_ATTR = "stop_reason"  # why it ended: max_epochs, early_stopping, pruned, surplus, …
EPOCHS_TRAINED_ATTR = "epochs_trained"
BEST_EPOCH_ATTR = "best_epoch"  # the epoch whose weights and value it kept
TRAIN_ACCURACY_ATTR = "train_accuracy"  # at the best epoch
VAL_ACCURACY_ATTR = "val_accuracy"  # at the best epoch
RUN_ID_ATTR = "mlflow_run_id"  # its MLflow run
MODEL_URI_ATTR = "model_uri"  # the registered model version, when it became the champion
WORKER_ATTR = "worker"  # host:pid of the worker process that ran it
SURPLUS = "surplus"  # the stop reason of a trial started after the budget was reached
# A trial whose MLflow run could not be closed (a tracking outage); `Tracker.close` closes it.
TRACKING_ERROR = "tracking_error"
# Why a trial's weights could not be kept (trial attr) or its model registered (study attr).
CHAMPION_ERROR_ATTR = "champion_error"
PHASE_ATTR = "phase"
SEARCH, BASELINE = "search", "baseline"
# User attr: what a trial trains with beyond its params (the recipe, a retrain's seed, an
# ablated regularizer's "off").
OVERRIDES_ATTR = "overrides"
# User attrs of the retrains after the search (`search.study.evidence`, `search.study.refit`).
SOURCE_ATTR = "source"  # the trial whose configuration a retrain trains again
SEED_ATTR = "seed"  # its training seed
ABLATE_ATTR = "ablate"  # the regularizer an ablation trial switches off
# The phase of the champion's (and the recipe's) refit on training + validation images.
REFIT = "refit"


@dataclass(frozen=True)
class Planned:
    """A trial to enqueue: its params and user attrs (`search.study.evidence.plan`)."""

    params: dict[str, Any]
    user_attrs: dict[str, Any]


# User attribute with the validation loss at a trial's best epoch: the tie-break.
TIEBREAK_ATTR = "val_loss"
# User attribute with the objective metric at a trial's best epoch, on COMPLETE and PRUNED
# trials. A COMPLETE trial's value is that already; a PRUNED trial's value, as Optuna stores it,
# is the last epoch's (the step it was pruned at), so this is what compares it with the others.
BEST_VALUE_ATTR = "best_value"


def ranking(
    direction: optuna.study.StudyDirection,
) -> Callable[[optuna.trial.FrozenTrial], tuple[float, float, int]]:
    """Sort key of trials, best first: the value (a missing or non-finite one last), equal
    values by the lower validation loss at the best epoch, then the earlier trial."""
    sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def key(t: optuna.trial.FrozenTrial) -> tuple[float, float, int]:
        finite = t.value is not None and math.isfinite(t.value)
        primary = sign * float(t.value) if finite else math.inf  # type: ignore[arg-type]
        tiebreak = t.user_attrs.get(TIEBREAK_ATTR)
        return primary, math.inf if tiebreak is None else float(tiebreak), t.number

    return key


def outranks(
    value: float,
    tiebreak: float | None,
    than_value: float,
    than_tiebreak: float | None,
    *,
    maximize: bool,
) -> bool:
    """Whether (value, tiebreak) comes strictly before (than_value, than_tiebreak) in
    `ranking`: a better value, or the same value at a lower validation loss."""
    if value != than_value:
        return value > than_value if maximize else value < than_value
    mine = math.inf if tiebreak is None else tiebreak
    theirs = math.inf if than_tiebreak is None else than_tiebreak
    return mine < theirs


def is_budget_trial(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts against `search.n_trials`: search and baseline trials do, the
    confirm phase's retrains (`search.study.evidence`) do not."""
    return trial.user_attrs.get(PHASE_ATTR, SEARCH) in (SEARCH, BASELINE)


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's COMPLETE baseline trial (the first, should a retry repeat it)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(PHASE_ATTR) == BASELINE:
            return t
    return None


def best_value_of(trial: optuna.trial.FrozenTrial) -> float | None:
    """The objective metric at a finished trial's best epoch (`best_epoch`): a COMPLETE
    trial's value; a PRUNED trial's `BEST_VALUE_ATTR` (Optuna's value of a pruned trial is the
    last epoch it reported), or, pruned before regsearch recorded that attr, the value it
    reported at its best epoch. None for other trials and a pruned trial without a finite
    epoch."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.state != TrialState.PRUNED:
        return None
    best = trial.user_attrs.get(BEST_VALUE_ATTR)
    if best is None:
        epoch = trial.user_attrs.get(BEST_EPOCH_ATTR)
        best = None if epoch is None else trial.intermediate_values.get(int(epoch))
    return None if best is None or not math.isfinite(best) else float(best)
