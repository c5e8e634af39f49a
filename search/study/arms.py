"""The confirm phase's state, as `search.study.evidence` computes it from the trials and
`search.study.refit` reads it: an `Arm` per configuration raced, and the `Evidence` that holds
them and the answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.core.records import ranking
from search.core.stats import Interval

__all__ = ["Arm", "Evidence"]


@dataclass
class Arm:
    """One configuration of the confirm phase and its retrains, by seed. An arm with `ablate`
    set is the champion's configuration with that regularizer off: its values are the
    ablation's retrains, and it is a candidate once it beats the champion (feedback)."""

    source: int  # the search (or baseline) trial it came from
    params: dict[str, Any]
    baseline: bool
    values: dict[int, float] = field(default_factory=dict)  # seed → value (COMPLETE)
    trials: dict[int, FrozenTrial] = field(default_factory=dict)  # seed → COMPLETE trial
    search_value: float | None = None
    interval: Interval | None = None
    ablate: str | None = None
    dropped_after: int | None = None  # racing: the round (seeds run) after which it stopped

    def best_trial(self, direction: optuna.study.StudyDirection) -> FrozenTrial | None:
        done = list(self.trials.values())
        return min(done, key=ranking(direction)) if done else None


@dataclass
class Evidence:
    """The confirm phase's state and answer. `complete`: every planned retrain has ended."""

    arms: list[Arm]
    seeds: list[int]
    champion: Arm | None = None
    baseline: Arm | None = None
    gain: Interval | None = None  # champion − baseline over seeds (positive: better)
    contributions: dict[str, Interval] = field(default_factory=dict)
    confirm_complete: bool = False
    ablation_complete: bool = False
    pending: int = 0  # planned retrains not yet ended
    # Racing: the standard deviation of a paired difference between two configurations on
    # one seed, pooled over the confirm phase's configurations, and its degrees of freedom.
    noise: float | None = None
    noise_df: int = 0
    resplit: bool = False  # each seed retrains on its own train/validation split
    # The regularizer whose ablation beat the champion beyond its interval: the champion is
    # then the ablated configuration (`champion.ablate`), and this is the one it replaced.
    replaced: Arm | None = None
    retrains: int = 0  # confirm and ablation retrains ended
    full_retrains: int = 0  # what the phase would run without racing, for the same champion
    todo: set[tuple[Any, ...]] = field(default_factory=set)  # planned keys not yet ended
    alive: list[Arm] = field(default_factory=list)  # the configurations still in the race
