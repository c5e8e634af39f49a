"""The objective in process: how bad trials end in Optuna and in MLflow."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import search.run.objective
from search.data.dataset import load_dataset
from search.run.objective import Objective
from search.study.storage import open_storage
from search.study.studies import create_or_resume
from search.study.studyfile import load_config
from search.tracking.runs import Tracker
from tests.helpers import TEST_BUDGET

SYNTHETIC = "dataset={name: synthetic, num_samples: 300, image_size: 8, num_classes: 3}"


def _setup(tmp_path: Path, *overrides: str) -> tuple[optuna.Study, Objective, MlflowClient]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config(
        overrides=[
            SYNTHETIC,
            "train.epochs=2",
            "baseline=none",
            "search.pruner=none",
            "tracking.register_model=false",
            TEST_BUDGET,
            *overrides,
        ]
    )
    storage = open_storage(f"sqlite:///{tmp_path}/o.db", config.search)
    study, _ = create_or_resume(config, storage)
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker.for_study(study, config, tracking_uri=uri)
    data = load_dataset(config.dataset)
    objective = Objective(config, data, device=torch.device("cpu"), tracker=tracker)
    return study, objective, MlflowClient(uri)


def test_an_exception_fails_the_trial_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, objective, client = _setup(tmp_path)
    real_train = search.run.objective.train
    calls = iter([RuntimeError("boom: the GPU caught fire")])

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        error = next(calls, None)
        if error is not None:
            raise error
        return real_train(*args, **kwargs)

    monkeypatch.setattr(search.run.objective, "train", flaky)
    study.optimize(objective, n_trials=2, catch=(Exception,))
    failed, ok = study.trials
    assert failed.state == optuna.trial.TrialState.FAIL
    assert failed.user_attrs["stop_reason"] == "error: RuntimeError: boom: the GPU caught fire"
    run = client.get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["state"] == "FAIL"
    assert ok.state == optuna.trial.TrialState.COMPLETE


def test_out_of_memory_fails_the_trial_with_the_reason_and_the_next_trial_runs(
    tmp_path: Path,
) -> None:
    # A sampled width of 10^10 channels asks the allocator for 360 GB at once: a real allocation
    # failure, raised by torch when the model is built.
    study, objective, client = _setup(
        tmp_path, "space.width={type: categorical, choices: [10000000000, 8]}"
    )
    study.enqueue_trial({"width": 10000000000})
    study.enqueue_trial({"width": 8})
    study.optimize(objective, n_trials=2, catch=(Exception,))
    oom, ok = study.trials
    assert oom.state == optuna.trial.TrialState.FAIL
    assert oom.user_attrs["stop_reason"].startswith("out_of_memory: ")
    assert "can't allocate memory" in oom.user_attrs["stop_reason"]
    assert client.get_run(oom.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert ok.state == optuna.trial.TrialState.COMPLETE


def test_ctrl_c_fails_the_trial_and_kills_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, objective, client = _setup(tmp_path)

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(search.run.objective, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    trial, retry = study.trials
    assert trial.state == optuna.trial.TrialState.FAIL, "never left RUNNING"
    assert trial.user_attrs["stop_reason"] == "interrupted"
    # The next launch reruns it: the same params and phase, without this attempt's outcome.
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == trial.params
    assert retry.user_attrs["phase"] == trial.user_attrs["phase"]
    assert "stop_reason" not in retry.user_attrs
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"


def test_ctrl_c_after_training_still_retries_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal may come while the trained trial writes its outcome (its learning curve,
    its checkpoint): the trial is retried all the same, not left FAIL without a reason."""
    study, objective, client = _setup(tmp_path)

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(objective, "_upload_curve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    trial, retry = study.trials
    assert trial.user_attrs["stop_reason"] == "interrupted"
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == trial.params
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
def test_a_second_ctrl_c_does_not_cut_off_the_first_one_s_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal's Ctrl+C reaches every worker, and `run --workers` passes it on as well:
    the second arrives while the first is being recorded, and the retry must still be
    enqueued and the MLflow run closed."""
    study, objective, client = _setup(tmp_path)
    real_retry = search.run.objective.enqueue_retry

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    def second_signal_then_retry(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)
        real_retry(*args, **kwargs)

    monkeypatch.setattr(search.run.objective, "train", interrupted)
    monkeypatch.setattr(search.run.objective, "enqueue_retry", second_signal_then_retry)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    trial, retry = study.trials
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == trial.params
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"


def test_a_diverging_trial_is_pruned_as_nonfinite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loss that turns NaN (injected: `train.lr` is capped at 10, which BatchNorm nets
    survive) ends the trial PRUNED with stop_reason nonfinite."""
    import torch

    study, objective, client = _setup(tmp_path)

    def nan_loss(*_args: object, **_kwargs: object) -> torch.Tensor:
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_loss)
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["stop_reason"] == "nonfinite"
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["state"] == "PRUNED"


def test_a_tracking_outage_after_training_keeps_the_trial_and_its_run_is_closed_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, objective, client = _setup(tmp_path)
    assert objective.tracker is not None
    tracker_client = objective.tracker.client  # type: ignore[attr-defined]

    def unreachable(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise MlflowException("API request to http://mlflow:5000 failed: connection refused")

    real_train = search.run.objective.train

    def train_during_an_outage(*args, **kwargs):  # type: ignore[no-untyped-def]
        # The server goes away once the run has started: epoch logging and closing fail.
        outage.setattr(tracker_client, "log_batch", unreachable)
        outage.setattr(tracker_client, "set_terminated", unreachable)
        return real_train(*args, **kwargs)

    with monkeypatch.context() as outage:
        outage.setattr(search.run.objective, "train", train_during_an_outage)
        study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None
    assert "connection refused" in trial.user_attrs["tracking_error"]
    run_id = trial.user_attrs["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"

    # Back online: the end of the launch closes the orphaned run with the trial's outcome.
    objective.tracker.close(study, finished=False)  # type: ignore[attr-defined]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
    assert run.data.metrics["best_value"] == pytest.approx(trial.value)


def test_a_retry_does_not_inherit_the_lost_attempt_s_learning_curve(tmp_path: Path) -> None:
    """optuna-dashboard lists a trial's figures from its `artifacts:` system attrs: the retry
    of a lost trial must not show the lost attempt's curve as its own."""
    from search.study.storage import enqueue_retry

    study, _objective, _client = _setup(tmp_path)
    lost = study.ask()
    study._storage.set_trial_system_attr(lost._trial_id, "artifacts:abc", {"filename": "x.png"})
    enqueue_retry(study, lost._trial_id)
    retry = study.trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING
    assert not any(key.startswith("artifacts:") for key in retry.system_attrs)
