"""Optuna's Wilcoxon pruner with its signed-rank test at numpy speed.

`optuna.pruners.WilcoxonPruner` asks `scipy.stats.wilcoxon` for a p-value at every step a trial
reports. Validation accuracies tie often (a few hundred images give few distinct values), and
for up to 13 paired steps with ties or zeros scipy then runs an exact permutation test over all
2**n sign flips, calling its statistic once per flip from Python: about 1 s a step on a CPU
core, about 75 s of Optuna time per 24-trial digits study (`regsearch bench --only pruning`).

`WilcoxonPruner` here decides as Optuna's does (same steps compared, same safety rule, same
p-values); the one difference is that the permutation test evaluates the statistic for every
flip in one vectorised call. Every other case (no ties, or more than 13 steps) is scipy's own
call, which is fast already.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import optuna
from optuna.study import StudyDirection

__all__ = ["WilcoxonPruner", "signed_rank_pvalue"]

# scipy's `method="auto"`: up to this many pairs with ties or zeros, an exact permutation test.
_PERMUTATION_MAX_N = 13


def _zsplit_rank_sum(d: np.ndarray, axis: int = -1) -> np.ndarray:
    """The signed-rank statistic R+ with zeros split half and half ("zsplit"), along `axis`."""
    from scipy.stats import rankdata

    d = np.moveaxis(np.asarray(d, dtype=float), axis, -1)
    ranks = rankdata(np.abs(d), method="average", axis=-1)
    return np.sum(ranks * (d > 0), axis=-1) + np.sum(ranks * (d == 0), axis=-1) / 2


def signed_rank_pvalue(d: np.ndarray, alternative: Literal["less", "greater"]) -> float:
    """`scipy.stats.wilcoxon(d, alternative=alternative, zero_method="zsplit").pvalue`."""
    import scipy.stats as ss

    d = np.asarray(d, dtype=float)
    magnitudes = np.abs(d)
    ties_or_zeros = len(np.unique(magnitudes)) < len(d) or bool(np.any(d == 0))
    if not ties_or_zeros or len(d) > _PERMUTATION_MAX_N:
        return float(ss.wilcoxon(d, alternative=alternative, zero_method="zsplit").pvalue)
    result = ss.permutation_test(
        (d,),
        _zsplit_rank_sum,
        permutation_type="samples",
        n_resamples=9999,  # scipy's default; 2**13 flips or fewer: all of them, exactly
        alternative=alternative,
        vectorized=True,
        axis=-1,
    )
    return float(result.pvalue)


class WilcoxonPruner(optuna.pruners.WilcoxonPruner):
    """`optuna.pruners.WilcoxonPruner` (same arguments, same decisions), with the p-value of
    `signed_rank_pvalue`."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        values = _curve(trial)
        if values is None:
            return False
        try:
            best_trial = study.best_trial
        except ValueError:  # nothing complete yet
            return False
        best = _curve(best_trial)
        if best is None:
            return False
        _, mine, theirs = np.intersect1d(values[0], best[0], return_indices=True)
        diff = values[1][mine] - best[1][theirs]
        if len(diff) < max(2, self._n_startup_steps):
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        mean, best_mean = (sum(v[1]) / len(v[1]) for v in (values, best))  # as Optuna sums
        p = signed_rank_pvalue(diff, "less" if maximize else "greater")
        # Optuna's safety rule: a trial whose mean is as good as the best trial's is kept, even
        # when the test says it is worse step by step.
        average_is_best = best_mean <= mean if maximize else best_mean >= mean
        return p < self._p_threshold and not average_is_best


def _curve(trial: optuna.trial.FrozenTrial) -> Any:
    """(steps, values) of `trial`'s reports, or None if it has none or any is not finite
    (where Optuna's pruner declines to judge)."""
    if not trial.intermediate_values:
        return None
    steps, values = np.array(list(trial.intermediate_values.items()), dtype=float).T
    return None if not np.all(np.isfinite(values)) else (steps, values)
