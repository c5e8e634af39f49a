"""`search.pruner: wilcoxon` decides as Optuna's `WilcoxonPruner` does, without the second a step
that scipy's permutation test costs on tied validation accuracies (what it saves is a benchmark
figure: the wilcoxon row's `optuna_seconds` in `regsearch bench --only pruning`)."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
import scipy.stats as ss

from search.study.studies import SnapshotPruner, make_pruner
from search.study.studyfile import load_config
from search.study.wilcoxon import WilcoxonPruner, signed_rank_pvalue


def _accuracy_differences(rng: np.random.Generator, n: int) -> np.ndarray:
    """Differences of two validation accuracies on 360 images: many ties, many zeros."""
    return rng.integers(-4, 5, size=n) / 360


def test_the_p_value_is_scipy_s_for_tied_small_and_large_samples() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 8, 10, 14, 30, 60):
        for _ in range(4):
            d = _accuracy_differences(rng, n)
            for alternative in ("less", "greater"):
                expected = ss.wilcoxon(d, alternative=alternative, zero_method="zsplit").pvalue
                assert signed_rank_pvalue(d, alternative) == expected, (d, alternative)
    untied = rng.normal(size=9)
    assert signed_rank_pvalue(untied, "less") == ss.wilcoxon(untied, alternative="less").pvalue


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_every_decision_is_optuna_s(direction: str) -> None:
    """Trials of noisy, tied curves against a best trial: each step's verdict is the same."""
    rng = np.random.default_rng(2)
    study = optuna.create_study(direction=direction)
    sign = 1 if direction == "maximize" else -1
    base = np.round(np.linspace(0.6, 0.95, 10) * 360) / 360
    for k in range(3):
        curve = base + sign * rng.integers(-3, 2, size=10) / 360
        study.add_trial(
            optuna.trial.create_trial(
                value=float(curve[-1]),
                intermediate_values=dict(enumerate(curve.tolist(), 1)),
                params={"k": float(k)},
                distributions={"k": optuna.distributions.FloatDistribution(0, 10)},
            )
        )
    ours, theirs = WilcoxonPruner(p_threshold=0.1, n_startup_steps=3), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        theirs = optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=3)
    verdicts = []
    for shift in range(-6, 4):
        curve = base + sign * (shift + rng.integers(-2, 3, size=10)) / 360
        for steps in range(1, 11):
            trial = optuna.trial.create_trial(
                state=optuna.trial.TrialState.RUNNING,
                intermediate_values=dict(enumerate(curve[:steps].tolist(), 1)),
            )
            verdict = ours.prune(study, trial)
            assert verdict == theirs.prune(study, trial), (shift, steps)
            verdicts.append(verdict)
    assert True in verdicts and False in verdicts  # both answers were exercised


def test_the_study_s_wilcoxon_pruner_is_the_fast_one() -> None:
    config = load_config(overrides=["search.pruner={name: wilcoxon, p_threshold: 0.2}"])
    pruner = make_pruner(config)
    assert isinstance(pruner, SnapshotPruner) and isinstance(pruner.pruner, WilcoxonPruner)
    assert pruner.pruner._p_threshold == 0.2
