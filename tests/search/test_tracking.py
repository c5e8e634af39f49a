"""MLflow tracking against a real local store: runs, nesting, states, the champion."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from tests.helpers import assert_runs_ended, regsearch

STUDY = "track"


# A deterministic 4-trial grid: the two lr=1e-5 trials cannot reach 0.5 validation accuracy by
# epoch 2 and are pruned by the threshold pruner; the two lr=1e-2 trials complete.
RUN_ARGS = (
    "--study",
    STUDY,
    "--quiet",
    "--set",
    "train.epochs=4",
    "--set",
    "search.sampler=grid",
    "--set",
    "search.pruner={name: threshold, lower: 0.5, n_warmup_steps: 2}",
    "--set",
    "space={lr: {type: categorical, choices: [0.00001, 0.01]}, "
    "dropout: {type: categorical, choices: [0.0, 0.2]}, aug_strength: 0.1, mixup_alpha: 0.0, "
    "label_smoothing: 0.0, weight_decay: 0.0005}",
)


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracked")
    proc = regsearch("run", *RUN_ARGS, "--n-trials", "4", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    return MlflowClient(uri, registry_uri=uri)


def _study(root: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{root}/studies/regsearch.db")


def _runs(root: Path) -> list:
    client = _client(root)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None, "experiment = study name"
    return client.search_runs([experiment.experiment_id], max_results=100)


def test_one_parent_run_and_one_nested_run_per_trial(tracked: Path) -> None:
    runs = _runs(tracked)
    study = _study(tracked)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert [p.info.run_id for p in parents] == [parent_id]
    assert len(children) == len(study.trials) == 4
    assert not [r for r in runs if r.info.status == "RUNNING"], "no run left RUNNING"
    for trial in study.trials:
        run = next(r for r in children if r.info.run_id == trial.user_attrs["mlflow_run_id"])
        # The MLflow UI ticks FINISHED runs green: a pruned trial's run is not one of them.
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial.state.name]
        assert (run.info.status, run.data.tags["state"]) == (status, trial.state.name)
        assert run.data.tags["study"] == STUDY
        assert run.data.tags["trial"] == str(trial.number)
        assert run.data.tags["state"] == trial.state.name
        assert run.data.tags["stop_reason"] == trial.user_attrs["stop_reason"]
        # Params: the sampled values and the fixed ones, under the contract names.
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert float(run.data.params["dropout"]) == pytest.approx(trial.params["dropout"])
        assert run.data.params["weight_decay"] == "0.0005"
        for fixed in ("aug_strength", "mixup_alpha", "label_smoothing"):
            assert fixed in run.data.params
        for fixed in ("cutmix_alpha", "cutout", "drop_path"):
            assert run.data.params[fixed] == "0.0"


def test_the_mlflow_ui_opens_the_experiment_on_its_training_runs(tracked: Path) -> None:
    """MLflow 3 opens an experiment without a kind in its GenAI view (traces, "Detect
    issues"); the kind tag makes it open on the runs table."""
    experiment = _client(tracked).get_experiment_by_name(STUDY)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_per_epoch_curves_match_the_optuna_reports(tracked: Path) -> None:
    client = _client(tracked)
    for trial in _study(tracked).trials:
        run_id = trial.user_attrs["mlflow_run_id"]
        history = client.get_metric_history(run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)
        for metric in ("train_loss", "train_accuracy", "val_loss", "lr", "epoch_seconds"):
            assert len(client.get_metric_history(run_id, metric)) == len(history)


def test_pruned_trials_finish_with_state_tag(tracked: Path) -> None:
    study = _study(tracked)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == 2, "the two lr=1e-5 trials"
    client = _client(tracked)
    for trial in pruned:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED", "not a FINISHED tick in the MLflow UI"
        assert run.data.tags["state"] == "PRUNED"


def test_champion_is_registered_with_test_accuracy(tracked: Path) -> None:
    client = _client(tracked)
    study = _study(tracked)
    from search.study.studies import best_trial

    version = client.get_model_version_by_alias(STUDY, "champion")
    best = best_trial(study)
    assert best is not None
    assert version.tags["trial"] == str(best.number), "@champion and `best` agree"
    assert float(version.tags["value"]) == pytest.approx(study.best_value)
    assert float(version.tags["val_loss"]) == pytest.approx(best.user_attrs["val_loss"])
    assert json.loads(version.tags["classes"]) == [str(i) for i in range(10)]
    test_accuracy = float(version.tags["test_accuracy"])
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["test_accuracy"] == pytest.approx(test_accuracy)
    assert parent.data.tags["champion_uri"] == f"models:/{STUDY}@champion"
    # The safetensors checkpoint + config rebuild the same network for fine-tuning.
    from search.config.schema import DatasetConfig
    from search.data.dataset import load_dataset
    from search.tracking.registry import load_checkpoint
    from search.training.evaluation import evaluate

    model = load_checkpoint(client, version.run_id)
    data = load_dataset(DatasetConfig())
    _, accuracy = evaluate(model, data.test, max_value=data.max_value)
    assert accuracy == pytest.approx(test_accuracy, abs=1e-9), "the champion's own weights"


def test_champion_loads_in_plain_mlflow_without_regsearch(tracked: Path) -> None:
    """`mlflow.pytorch.load_model("models:/<study>@champion")` in a process that never imports
    `search` or `models`, and its test accuracy matches the recorded figure."""
    from search.config.schema import DatasetConfig
    from search.data.dataset import load_dataset

    test = load_dataset(DatasetConfig()).test
    np.save(tracked / "x.npy", (test.x.numpy() / 16.0).astype(np.float32))  # pixel / 16
    np.save(tracked / "y.npy", test.y.numpy())
    script = textwrap.dedent(
        f"""
        import json, sys
        import mlflow, mlflow.pytorch, numpy as np, torch
        mlflow.set_tracking_uri("sqlite:///{tracked}/mlruns/mlflow.db")
        model = mlflow.pytorch.load_model("models:/{STUDY}@champion")
        x = torch.from_numpy(np.load("{tracked}/x.npy"))
        y = np.load("{tracked}/y.npy")
        with torch.no_grad():
            accuracy = float((model(x).argmax(1).numpy() == y).mean())
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("search", "models"))
        print(json.dumps({{"accuracy": accuracy, "leaked": leaked}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd="/", capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["leaked"] == []
    version = _client(tracked).get_model_version_by_alias(STUDY, "champion")
    assert out["accuracy"] == pytest.approx(float(version.tags["test_accuracy"]), abs=1e-9)


def test_resume_reattaches_to_the_parent_run(tracked: Path) -> None:
    parent_before = _study(tracked).user_attrs["mlflow_parent_run_id"]
    proc = regsearch("run", *RUN_ARGS, "--n-trials", "5", cwd=tracked)
    assert proc.returncode == 0, proc.stderr
    study = _study(tracked)
    assert study.user_attrs["mlflow_parent_run_id"] == parent_before
    runs = _runs(tracked)
    assert len(runs) == 1 + 5
    assert_runs_ended(runs)


def test_the_alias_moves_to_an_equal_value_only_at_a_lower_validation_loss(
    tmp_path: Path,
) -> None:
    from search.study.storage import open_storage
    from search.study.studies import create_or_resume
    from search.study.studyfile import load_config
    from search.tracking.runs import Tracker

    config = load_config(overrides=["study=ties"])
    study, _ = create_or_resume(config, open_storage(f"sqlite:///{tmp_path}/o.db"))
    tracker = Tracker.for_study(
        study, config, tracking_uri=f"sqlite:///{tmp_path}/m.db", prewarm=False
    )
    client = tracker.client
    client.create_registered_model("ties")

    def version(value: float, loss: float) -> str:
        tags = {"value": repr(value), "val_loss": repr(loss)}
        return str(client.create_model_version("ties", source=str(tmp_path), tags=tags).version)

    def champion() -> str:
        return str(client.get_model_version_by_alias("ties", "champion").version)

    first = version(1.0, 0.25)
    tracker.registry.move_alias(first, 1.0, 0.25)
    tracker.registry.move_alias(version(1.0, 0.30), 1.0, 0.30)
    assert champion() == first, "same accuracy, higher loss: stays"
    lower = version(1.0, 0.20)
    tracker.registry.move_alias(lower, 1.0, 0.20)
    assert champion() == lower, "same accuracy, lower loss: moves"
    tracker.registry.move_alias(version(0.99, 0.01), 0.99, 0.01)
    assert champion() == lower, "a lower accuracy never wins on loss"


def test_simultaneous_launches_share_one_parent_run(tmp_path: Path) -> None:
    """Launches of a new study that set up tracking at the same moment find-or-create its
    parent run one at a time: one parent run, every trial run nested under it."""
    import threading

    from search.study.storage import open_storage
    from search.study.studies import create_or_resume
    from search.study.studyfile import load_config
    from search.tracking.mlflow_store import create_store
    from search.tracking.runs import Tracker

    config = load_config(overrides=["study=race"])
    study, _ = create_or_resume(config, open_storage(f"sqlite:///{tmp_path}/o.db"))
    create_store(tmp_path / "m.db")  # the store exists; the parent run does not yet
    uri = f"sqlite:///{tmp_path}/m.db"
    launches = 4
    barrier = threading.Barrier(launches)
    trial_runs: list[str] = []
    errors: list[BaseException] = []

    def launch(number: int) -> None:
        try:
            barrier.wait()
            own = optuna.load_study(study_name="race", storage=study._storage)
            tracker = Tracker.for_study(own, config, tracking_uri=uri, prewarm=False)
            trial_runs.append(tracker.start_trial(number, {"lr": 0.01}))
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=launch, args=(n,)) for n in range(launches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("race")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    assert len(parents) == 1, [p.info.run_id for p in parents]
    (parent,) = parents
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    children = [r for r in runs if r.info.run_id in trial_runs]
    assert len(children) == launches
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}


def test_a_launch_killed_before_recording_its_parent_run_leaves_no_orphan(tmp_path: Path) -> None:
    """The parent run and the study live in two stores. A launch that dies after MLflow made
    the parent run and before the study recorded its id must not leave that run RUNNING for
    ever beside a second parent: the relaunch finds it (by the token the study holds first)
    and adopts it, params and all."""
    from search.study.studyfile import load_config
    from search.tracking.runs import PARENT_ATTR, _find_or_create_parent

    config = load_config(overrides=["study=orphan"])
    study = optuna.create_study(
        study_name="orphan", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize"
    )
    client = _client(tmp_path)
    experiment_id = client.create_experiment("orphan")

    class Killed(Exception):
        pass

    real = study.set_user_attr

    def dies_on_the_run_id(key: str, value: object) -> None:
        if key == PARENT_ATTR:
            raise Killed  # SIGKILL here: the run exists, the study does not know its id
        real(key, value)

    study.set_user_attr = dies_on_the_run_id  # type: ignore[method-assign]
    with pytest.raises(Killed):
        _find_or_create_parent(client, study, config, experiment_id)
    study.set_user_attr = real  # type: ignore[method-assign]
    (orphan,) = client.search_runs([experiment_id])
    assert orphan.info.status == "RUNNING" and PARENT_ATTR not in study.user_attrs

    relaunch = config.model_copy(
        update={"search": config.search.model_copy(update={"n_trials": 30})}
    )
    run_id = _find_or_create_parent(client, study, relaunch, experiment_id)
    (parent,) = client.search_runs([experiment_id])
    assert run_id == parent.info.run_id == orphan.info.run_id
    assert study.user_attrs[PARENT_ATTR] == run_id
    assert parent.data.params["search.n_trials"] == "24"  # logged once: MLflow never rewrites


def test_workers_that_end_together_finish_the_parent_run_once(tmp_path: Path) -> None:
    """Two workers of one launch both see no trial running at their end: the one that ends
    second finds the parent run FINISHED by the other and leaves it (and its verdict
    metrics) as they are, instead of logging the verdict a second time."""
    from search.run.runner import close_tracking
    from search.study.evidence import study_config
    from search.tracking.runs import Tracker

    tiny = ("--study", "two", "--quiet", "--set", "train.epochs=2", "--set", "search.confirm=none")
    assert regsearch("run", *tiny, "--n-trials", "1", cwd=tmp_path).returncode == 0
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    study = optuna.load_study(study_name="two", storage=storage)
    config = study_config(study)
    assert config is not None
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    # The second worker attaches while the study still has a trial to run …
    second = Tracker.for_study(study, config, tracking_uri=uri, prewarm=False)
    client = second.client
    assert client.get_run(second.parent_run_id).info.status == "RUNNING"
    # … the first runs it and finishes the study's parent run with the verdict …
    proc = regsearch("run", *tiny, "--n-trials", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parent = client.get_run(second.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert len(client.get_metric_history(parent.info.run_id, "best_value")) == 2  # two launches
    # … then the second ends.
    close_tracking(second, study, finished=True)
    after = client.get_run(second.parent_run_id)
    assert after.info.status == "FINISHED" and after.info.end_time == parent.info.end_time
    assert len(client.get_metric_history(parent.info.run_id, "best_value")) == 2


def test_a_grid_study_has_no_confirm_phase_to_run_and_its_report_says_so(tracked: Path) -> None:
    proc = regsearch("confirm", STUDY, cwd=tracked)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"regsearch: error: study {STUDY!r} is a grid study (search.sampler: grid): it runs "
        "its grid only, with no baseline recipe, so it has no confirm phase"
    ]
    out = tracked / "grid-report"
    assert regsearch("report", STUDY, "--out", str(out), cwd=tracked).returncode == 0
    page = (out / "index.html").read_text()
    assert "A grid study runs its grid only" in page and "regsearch confirm STUDY" not in page


TINY = (
    "--set", "search.n_trials=1", "--set", "train.epochs=1",
    "--set", "search.confirm=none", "--set", "dataset.train_fraction=0.3",
)  # fmt: skip


def test_a_same_named_study_in_another_storage_never_retags_the_first_study_s_model(
    tmp_path: Path,
) -> None:
    """One MLflow store, two Optuna storages, one study name (or `studies/` deleted and the
    study run again): the registered model is named after the study, so both register into
    it. The second study's champion takes the alias (the first's version is no rival of its
    own), and the first's version keeps its own test accuracy."""
    first = regsearch("run", "--storage", "sqlite:///studies/a.db", *TINY, "--set",
                      "train.epochs=6", cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    client = _client(tmp_path)
    v1 = client.get_model_version_by_alias("digits", "champion")
    tagged = v1.tags["test_accuracy"]
    second = regsearch("run", "--storage", "sqlite:///studies/b.db", *TINY,
                       "--set", "baseline=none", "--set", "train.lr=0.00001",
                       cwd=tmp_path)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    b = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/studies/b.db")
    held = client.get_model_version_by_alias("digits", "champion")
    assert held.run_id == b.best_trial.user_attrs["mlflow_run_id"], "the second study's model"
    assert float(held.tags["test_accuracy"]) == b.user_attrs["test_accuracy"]
    assert client.get_model_version("digits", v1.version).tags["test_accuracy"] == tagged


def test_without_registration_the_verdict_still_has_its_test_evaluation(tmp_path: Path) -> None:
    proc = regsearch("run", *TINY, "--set", "tracking.register_model=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = json.loads(regsearch("best", "digits", "--json", cwd=tmp_path).stdout)
    assert best["test_accuracy"] == best["test"]["champion"]["accuracy"] is not None
    assert best["model_uri"] is None
    assert not _client(tmp_path).search_registered_models(), "no model registered"
    study = optuna.load_study(
        study_name="digits", storage=f"sqlite:///{tmp_path}/studies/regsearch.db"
    )
    assert study.user_attrs["test_accuracy"] == best["test_accuracy"], "the dashboard note's"


def test_status_json_names_the_champion_model_and_a_resume_s_budget_is_a_parent_tag(
    tmp_path: Path,
) -> None:
    assert regsearch("run", *TINY, cwd=tmp_path).returncode == 0
    proc = regsearch("run", *TINY, "--n-trials", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(regsearch("status", "digits", "--json", cwd=tmp_path).stdout)
    best = json.loads(regsearch("best", "digits", "--json", cwd=tmp_path).stdout)
    (model,) = [r for r in rows if r["champion_model"]]
    assert model["number"] == best["trial"] and model["model_uri"] == best["model_uri"]
    assert model["model_uri"] is not None
    study = optuna.load_study(
        study_name="digits", storage=f"sqlite:///{tmp_path}/studies/regsearch.db"
    )
    parent = _client(tmp_path).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.params["search.n_trials"] == "1", "MLflow never rewrites a param"
    assert parent.data.tags["current.search.n_trials"] == "2"
