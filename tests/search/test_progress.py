"""The live progress display: an ETA for the study, and no stale epoch row between trials."""

from __future__ import annotations

import optuna
from rich.console import Console

from search.run.progress import RunProgress
from search.training.train import EpochStats


def _shown(progress: RunProgress, console: Console) -> str:
    with console.capture() as captured:
        console.print(progress._progress.get_renderable())
    return captured.get()


def test_progress_shows_an_eta_and_no_stale_epoch_row_between_trials() -> None:
    console = Console(width=160, force_terminal=True, color_system=None)
    progress = RunProgress(n_trials=4, metric="val_accuracy", console=console, quiet=True)
    study = optuna.create_study(direction="maximize")
    progress.start(study)
    progress.trial_started(0, 10)
    stats = EpochStats(3, 0.5, 0.8, 0.6, 0.75, 0.7, 1e-3, 0.1)
    progress.epoch_done(0, stats)
    during = _shown(progress, console)
    assert "trial 0" in during and "val_accuracy 0.7500" in during and "eta" in during
    trial = study.ask()
    study.tell(trial, 0.75)
    progress(study, study.trials[0])
    after = _shown(progress, console)
    assert "trial 0" not in after, "the finished trial's epoch row is gone"
    assert "1/4" in after and "best val_accuracy 0.7500" in after


def test_a_retrain_says_what_it_retrains_and_a_pruned_trial_its_best_epoch() -> None:
    """The retrain's "[confirm: retrain of #0, seed 1000]" was read as a rich tag and vanished;
    a pruned trial showed its last epoch's value, not the best one status and MLflow show."""
    from optuna.trial import TrialState, create_trial

    console = Console(width=200, force_terminal=True, color_system=None)
    progress = RunProgress(n_trials=4, metric="val_accuracy", console=console, quiet=False)
    study = optuna.create_study(direction="maximize")
    progress.start(study)
    retrain = {"phase": "confirm", "source": 0, "seed": 1000, "epochs_trained": 2}
    study.add_trial(create_trial(value=0.6, user_attrs=retrain))
    # A refit of an ablated champion trained with dropout 0, not its params' 0.317.
    refit = {"phase": "refit", "source": 0, "seed": 1000, "ablate": "dropout"}
    dropout = {"dropout": optuna.distributions.FloatDistribution(0.0, 0.6)}
    study.add_trial(
        create_trial(value=0.6, params={"dropout": 0.317}, distributions=dropout, user_attrs=refit)
    )
    pruned = {"best_value": 0.33, "best_epoch": 1, "epochs_trained": 4, "stop_reason": "pruned"}
    study.add_trial(
        create_trial(state=TrialState.PRUNED, value=0.21, intermediate_values={1: 0.33, 4: 0.21},
                     user_attrs=pruned)
    )  # fmt: skip
    with console.capture() as captured:
        for trial in study.trials:
            progress(study, trial)
    out = captured.get()
    assert "[confirm: retrain of #0, seed 1000]" in out
    assert "epochs=None" not in out, "the refit above recorded no epochs"
    assert "[refit of #0 with dropout off on train + validation, seed 1000]" in out
    assert "0.317" not in out
    assert "trial   2 PRUNED   val_accuracy=0.3300 (best, epoch 1)" in out
