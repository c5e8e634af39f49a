"""What the report reads from a study: a snapshot of its finished trials, the searched
regularizers, the grid levels, and the epochs trained against the epochs a full run would take."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from search.config.space import REGULARIZERS
from search.core.records import EPOCHS_TRAINED_ATTR, FINISHED, STOP_REASON_ATTR, is_budget_trial

if TYPE_CHECKING:
    pass

__all__ = [
    "MAX_LEVELS",
    "MAX_PRUNED_CURVES",
    "MAX_SETTINGS",
    "EpochTotals",
    "Skip",
    "discrete",
    "epoch_totals",
    "epochs_trained",
    "finite_number",
    "searched_regularizers",
    "snapshot",
    "spread",
]


def snapshot(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the study's finished search trials: RUNNING (and FAIL) trials and
    the confirm phase's retrains are left out (the verdict section shows those), and the
    figures all see the same trials even while workers keep adding more."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory"
    try:
        copy = optuna.create_study(direction=study.direction, study_name=study.study_name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(
        [t for t in study.get_trials(deepcopy=False, states=FINISHED) if is_budget_trial(t)]
    )
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    return copy


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def searched_regularizers(trials: Sequence[FrozenTrial]) -> list[str]:
    """The regularizers sampled as Optuna params (fixed ones are not params), in contract order."""
    names = {name for t in trials for name in t.params}
    return [name for name in REGULARIZERS if name in names]


def discrete(trials: Sequence[FrozenTrial], names: Sequence[str]) -> bool:
    """Whether the parameters take a few chosen values (categorical or stepped), as in a grid."""
    from optuna.distributions import FloatDistribution

    # Categorical and int distributions are discrete; floats only with a step.
    for t in trials:
        for name in names:
            dist = t.distributions.get(name)
            if isinstance(dist, FloatDistribution) and dist.step is None:
                return False
    return True


def spread(items: Sequence[FrozenTrial], k: int) -> list[FrozenTrial]:
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


@dataclass(frozen=True)
class EpochTotals:
    trained: int
    budget: int
    saved_by: dict[str, int]  # stop reason → epochs not trained


def epochs_trained(t: FrozenTrial) -> int:
    value = t.user_attrs.get(EPOCHS_TRAINED_ATTR)
    return int(value) if isinstance(value, int) else len(t.intermediate_values)


def epoch_totals(
    trials: Sequence[FrozenTrial], budget_of: Callable[[FrozenTrial], int]
) -> EpochTotals:
    saved: dict[str, int] = {}
    trained = budget = 0
    for t in trials:
        n, b = epochs_trained(t), budget_of(t)
        trained, budget = trained + n, budget + b
        if b > n:
            reason = str(
                t.user_attrs.get(STOP_REASON_ATTR, "pruned" if t.state.name == "PRUNED" else "?")
            )
            saved[reason] = saved.get(reason, 0) + b - n
    return EpochTotals(trained, budget, saved)


# Few enough distinct values (a grid) to draw the mean per value as a line.
MAX_LEVELS = 10


MAX_PRUNED_CURVES = 5


MAX_SETTINGS = 8


class Skip(Exception):
    """A section that cannot be drawn for this study; the message becomes a note in the page."""
