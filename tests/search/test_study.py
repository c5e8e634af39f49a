"""Samplers and pruners built from the config: the snapshot wrapper around every pruner makes
the same decisions as the bare pruner, and sees trials finished elsewhere within its age."""

from __future__ import annotations

import time

import optuna
import pytest

from search.study.studies import SnapshotPruner, make_pruner
from search.study.studyfile import load_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

PRUNERS = {
    "median": "{name: median, n_startup_trials: 2, n_warmup_steps: 1}",
    "percentile": "{name: percentile, percentile: 40.0, n_startup_trials: 2}",
    "successive-halving": "{name: successive-halving, min_resource: 1}",
    "hyperband": "{name: hyperband, min_resource: 1, max_resource: 8}",
    "patient": "{name: patient, patience: 1, n_startup_trials: 2}",
    "threshold": "{name: threshold, lower: 0.3}",
    "wilcoxon": "{name: wilcoxon}",
}


def _decisions(pruner: optuna.pruners.BasePruner, trials: int = 16) -> list[tuple[int, int]]:
    """(trial, step) of every prune in a deterministic study: each trial's curve rises for
    four steps, then falls (overfitting), with a slope that varies from trial to trial, so some
    trials trail the others. The name is fixed: Hyperband picks brackets from it."""
    study = optuna.create_study(study_name="s", direction="maximize", pruner=pruner)
    pruned = []
    for number in range(trials):
        trial = study.ask()
        slope = ((number * 7) % 11) / 11
        for step in range(8):
            trial.report(slope * (4 - abs(step - 3)) / 8, step)
            if trial.should_prune():
                pruned.append((number, step))
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, slope)
    return pruned


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_wrapped_pruner_decides_like_the_bare_one(name: str) -> None:
    config = load_config(overrides=[f"search.pruner={PRUNERS[name]}"])
    wrapped, fresh = make_pruner(config), make_pruner(config)
    assert isinstance(wrapped, SnapshotPruner) and isinstance(fresh, SnapshotPruner)
    with_snapshot, without = _decisions(wrapped), _decisions(fresh.pruner)
    assert with_snapshot == without
    if name != "wilcoxon":  # 8 steps are too few for its signed-rank test
        assert with_snapshot, f"{name}: the sequence should prune something"


def test_no_pruner_is_not_wrapped() -> None:
    pruner = make_pruner(load_config(overrides=["search.pruner=none"]))
    assert isinstance(pruner, optuna.pruners.NopPruner)


@pytest.mark.parametrize(("max_age", "counted"), [(60.0, False), (0.0, True)])
def test_a_trial_finished_elsewhere_counts_once_the_snapshot_is_older_than_max_age(
    tmp_path: object, max_age: float, counted: bool
) -> None:
    # Two "workers" on one storage. Worker A's trial has a poor curve; there is no completed
    # trial when it first asks (nothing to compare with: no prune). Worker B then completes a
    # good trial. A asks again: it prunes only if its snapshot may be refreshed.
    storage = optuna.storages.InMemoryStorage()
    pruner = SnapshotPruner(optuna.pruners.MedianPruner(n_startup_trials=1), max_age=max_age)
    worker_a = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    worker_a.pruner = pruner
    worker_b = optuna.load_study(study_name="s", storage=storage)

    trial = worker_a.ask()
    trial.report(0.1, 0)
    assert not trial.should_prune()

    good = worker_b.ask()
    good.report(0.9, 0)
    good.report(0.9, 1)
    worker_b.tell(good, 0.9)

    time.sleep(0.01)
    trial.report(0.1, 1)
    assert bool(trial.should_prune()) is counted


def test_max_age_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_age=-1"):
        SnapshotPruner(optuna.pruners.NopPruner(), max_age=-1)


def _study_with(values_and_losses: list[tuple[float, float | None]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for value, loss in values_and_losses:
        attrs = {} if loss is None else {"val_loss": loss}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    return study


def test_best_trial_breaks_ties_by_validation_loss() -> None:
    """Five trials reach 1.0 on a 60-image validation split: Optuna's best_trial is the first
    of them; ours is the one that fits the validation images best."""
    from search.study.studies import beats_best, best_trial

    study = _study_with([(0.98, 0.20), (1.0, 0.25), (1.0, 0.21), (1.0, 0.30), (0.99, 0.01)])
    assert study.best_trial.number == 1
    best = best_trial(study)
    assert best is not None and best.number == 2
    assert beats_best(study, 1.0, 0.19) and not beats_best(study, 1.0, 0.22)
    assert not beats_best(study, 0.99, 0.0), "a lower value never wins on loss"
    assert not beats_best(study, 1.0, None)
    assert beats_best(optuna.create_study(direction="maximize"), 0.1, None)
    assert best_trial(_study_with([(0.5, None), (0.5, None)])).number == 0  # type: ignore[union-attr]


def test_status_best_and_tables_agree_on_the_tie_break() -> None:
    from search.report.summary import best_summary, sorted_trials

    study = _study_with([(1.0, 0.25), (1.0, 0.21)])
    assert best_summary(study)["trial"] == 1  # type: ignore[index]
    assert [t.number for t in sorted_trials(study)] == [1, 0]
