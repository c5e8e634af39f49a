"""A pruned trial keeps its best epoch's value (not the last epoch's, which is what Optuna
stores as its value) in `regsearch status`, in MLflow and in optuna-dashboard.

The study is real (the objective, the configured median pruner, MLflow, the artifact store);
only the training is scripted, so that the pruned trial's curve peaks and then falls, as a
real one does when it overfits, at known epochs."""

from __future__ import annotations

import json
import re
import wsgiref.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from search.config.schema import TrialConfig
from search.core.records import BEST_VALUE_ATTR
from search.data.dataset import Dataset, load_dataset
from search.report.summary import trial_row, trials_table
from search.run.objective import Objective
from search.study.storage import open_storage
from search.study.studies import create_or_resume
from search.study.studyfile import load_config
from search.tracking.runs import Tracker
from search.training.train import MAX_EPOCHS, EpochCallback, EpochStats, TrainResult, run_epochs
from tests.helpers import regsearch

# Validation accuracy per epoch of each trial, in the order they run. Trial 0 trains to the
# end; trial 1 leads it for two epochs, peaks at epoch 2 and falls below trial 0's median at
# epoch 3, where the median pruner (one startup trial, no warm-up) stops it.
CURVES = ([0.50, 0.80, 0.90, 0.95], [0.60, 0.85, 0.70, 0.65])
PEAK, PEAK_EPOCH, LAST = 0.85, 2, 0.70
STUDY = "pruned-best"


class ScriptedTrainer:
    """A `Trainer` that replays `CURVES` through the real epoch loop (`run_epochs`: best epoch,
    early stopping, the objective's per-epoch report and pruning)."""

    def __init__(self) -> None:
        self.curves: Iterator[list[float]] = iter(CURVES)

    def __call__(
        self,
        cfg: TrialConfig,
        data: Dataset,
        *,
        device: torch.device | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrainResult:
        curve = next(self.curves)
        epochs = (
            EpochStats(
                epoch=epoch,
                train_loss=1.0 - acc,
                train_accuracy=acc,
                val_loss=1.0 - acc,
                val_accuracy=acc,
                fit_loss=1.0 - acc,
                lr=0.01,
                epoch_seconds=0.01,
            )
            for epoch, acc in enumerate(curve, start=1)
        )
        result = TrainResult(stop_reason=MAX_EPOCHS, epochs_trained=0)
        result = run_epochs(cfg, epochs, result=result, on_epoch=on_epoch)
        result.state_dict = {"weight": torch.zeros(1)}  # the champion's checkpoint
        return result


def _study(tmp_path: Path) -> tuple[optuna.Study, Objective, MlflowClient, str]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config(
        overrides=[
            f"study={STUDY}",
            "dataset={name: synthetic, num_samples: 60, image_size: 8, num_classes: 3}",
            f"train.epochs={len(CURVES[0])}",
            "baseline=none",
            "search.n_trials=2",
            "search.confirm=none",
            "search.pruner={name: median, n_startup_trials: 1, n_warmup_steps: 0}",
            "tracking.register_model=false",
        ]
    )
    storage_url = f"sqlite:///{tmp_path}/o.db"
    study, _ = create_or_resume(config, open_storage(storage_url, config.search))
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker.for_study(study, config, tracking_uri=uri, prewarm=False)
    (tmp_path / "artifacts").mkdir()
    objective = Objective(
        config,
        load_dataset(config.dataset),
        device=torch.device("cpu"),
        tracker=tracker,
        artifact_store=FileSystemArtifactStore(str(tmp_path / "artifacts")),
        trainer=ScriptedTrainer(),
    )
    return study, objective, MlflowClient(uri), storage_url


def _wsgi_get(app: Any, path: str) -> tuple[int, bytes]:
    """GET `path` from a WSGI app in process: (status code, body)."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    wsgiref.util.setup_testing_defaults(environ)
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(line)
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return int(status[0].split()[0]), body


@pytest.fixture
def pruned(tmp_path: Path) -> tuple[optuna.Study, MlflowClient, str]:
    study, objective, client, storage_url = _study(tmp_path)
    study.optimize(objective, n_trials=2)
    complete, pruned = study.trials
    assert complete.state == TrialState.COMPLETE and pruned.state == TrialState.PRUNED
    return study, client, storage_url


def test_a_pruned_trial_keeps_its_best_epoch_value_not_its_last(
    pruned: tuple[optuna.Study, MlflowClient, str],
) -> None:
    study, _, _ = pruned
    complete, trial = study.trials
    assert trial.intermediate_values == {1: 0.60, 2: PEAK, 3: LAST}, "pruned at epoch 3"
    # What Optuna keeps: the last reported epoch; what regsearch keeps beside it: the best.
    assert trial.value == pytest.approx(LAST)
    assert trial.user_attrs[BEST_VALUE_ATTR] == pytest.approx(
        max(trial.intermediate_values.values())
    )
    assert trial.user_attrs[BEST_VALUE_ATTR] == pytest.approx(PEAK)
    assert trial.user_attrs["best_epoch"] == PEAK_EPOCH
    assert trial.user_attrs["stop_reason"] == "pruned"
    # A complete trial has it too (its value): one column compares them in the dashboard.
    assert complete.user_attrs[BEST_VALUE_ATTR] == pytest.approx(complete.value) == 0.95


def test_status_shows_the_pruned_trials_best_value_and_epoch(
    pruned: tuple[optuna.Study, MlflowClient, str], tmp_path: Path
) -> None:
    _, _, storage_url = pruned
    proc = regsearch("status", STUDY, "--storage", storage_url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = [row for row in proc.stdout.splitlines() if "PRUNED" in row]
    cells = [cell.strip() for cell in re.split(r"[│|]", line)]
    assert f"0.85 @ep{PEAK_EPOCH} (pruned)" in cells, line
    assert "0.7" not in cells, "not the epoch it was pruned at"
    proc = regsearch("status", STUDY, "--storage", storage_url, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    complete, trial = json.loads(proc.stdout)  # completed trials rank first, as before
    assert complete["state"] == "COMPLETE" and complete["champion"] is True
    assert complete["best_value"] == complete["value"] == 0.95
    assert trial["state"] == "PRUNED" and trial["champion"] is False
    assert trial["best_value"] == pytest.approx(PEAK) and trial["best_epoch"] == PEAK_EPOCH
    assert trial["value"] == pytest.approx(LAST), "Optuna's value, the epoch it was pruned at"


def test_the_pruned_trials_mlflow_run_has_its_best_value(
    pruned: tuple[optuna.Study, MlflowClient, str],
) -> None:
    study, client, _ = pruned
    complete, trial = study.trials
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["state"] == "PRUNED"
    assert run.data.metrics["best_value"] == pytest.approx(PEAK)
    assert run.data.metrics["best_epoch"] == PEAK_EPOCH
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.60, PEAK, LAST]
    done = client.get_run(complete.user_attrs["mlflow_run_id"])
    assert done.data.metrics["best_value"] == pytest.approx(0.95)


def test_the_dashboard_lists_the_best_value_of_every_trial(
    pruned: tuple[optuna.Study, MlflowClient, str], tmp_path: Path
) -> None:
    """optuna-dashboard's API gives its trial table a sortable "UserAttribute best_value"
    column; the pruned trial's page has its learning curve (its best epoch marked) and the
    study note says what the Value column of a pruned trial is."""
    from optuna_dashboard import wsgi

    from search.report.dashboard import study_note_markdown

    study, _, _ = pruned
    complete, trial = study.trials
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    app = wsgi(study._storage, artifact_store=store)
    status, body = _wsgi_get(app, f"/api/studies/{study._study_id}")
    assert status == 200
    detail: dict[str, Any] = json.loads(body)
    assert {"key": BEST_VALUE_ATTR, "sortable": True} in detail["union_user_attrs"]
    rows = {t["number"]: t for t in detail["trials"]}
    shown = {a["key"]: a["value"] for a in rows[trial.number]["user_attrs"]}
    assert float(shown[BEST_VALUE_ATTR]) == pytest.approx(PEAK)
    assert rows[trial.number]["values"] == [pytest.approx(LAST)]
    (curve,) = rows[trial.number]["artifacts"]
    path = f"/artifacts/{study._study_id}/{trial._trial_id}/{curve['artifact_id']}"
    status, body = _wsgi_get(app, path)
    assert status == 200 and body.startswith(b"\x89PNG\r\n\x1a\n")
    assert "UserAttribute best_value" in study_note_markdown(study, complete)


def test_a_pruned_trials_run_closed_after_an_outage_gets_its_best_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, objective, client, _ = _study(tmp_path)
    tracker = objective.tracker
    assert isinstance(tracker, Tracker)
    study.optimize(objective, n_trials=1)  # the complete trial, tracked

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise MlflowException("API request to http://mlflow:5000 failed: connection refused")

    scripted = objective.trainer
    assert scripted is not None

    def train_during_an_outage(*args: Any, **kwargs: Any) -> TrainResult:
        # The server goes away once the run has started: epoch logging and closing fail.
        outage.setattr(tracker.client, "log_batch", unreachable)
        outage.setattr(tracker.client, "set_terminated", unreachable)
        return scripted(*args, **kwargs)

    with monkeypatch.context() as outage:
        objective.trainer = train_during_an_outage
        study.optimize(objective, n_trials=1)
    trial = study.trials[1]
    assert trial.state == TrialState.PRUNED and "tracking_error" in trial.user_attrs
    run_id = trial.user_attrs["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"

    tracker.close(study, finished=False)  # back online: the orphaned run is closed
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["state"] == "PRUNED"
    assert run.data.metrics["best_value"] == pytest.approx(PEAK)
    assert run.data.metrics["best_epoch"] == PEAK_EPOCH


def test_trials_pruned_before_the_attr_show_their_best_epoch_too() -> None:
    """A study from an earlier regsearch: the pruned trial has `best_epoch` but no best-value
    attr; its value at that epoch is in its reported values."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            value=0.9, intermediate_values={1: 0.8, 2: 0.9}, user_attrs={"best_epoch": 2}
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.PRUNED,
            value=0.5,
            intermediate_values={1: 0.7, 2: 0.5},
            user_attrs={"best_epoch": 1},
        )
    )
    study.add_trial(  # diverged at its first epoch: nothing to show
        optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"best_epoch": None})
    )
    row = trial_row(study.trials[1])
    assert row["best_value"] == 0.7 and row["value"] == 0.5
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(trials_table(study))
    lines = [line for line in console.export_text().splitlines() if "PRUNED" in line]
    assert "0.7 @ep1 (pruned)" in lines[0], "the best pruned trial first"
    assert "– (pruned)" in lines[1]
