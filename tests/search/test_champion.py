"""`@champion` moves only for COMPLETE trials, under a lock, and is repaired on the next launch
when a kill came between a trial's outcome and the alias."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from rich.console import Console

from search.run.options import RunOptions
from search.run.runner import run_study
from search.study.storage import open_storage, study_lock
from search.study.studies import best_trial
from search.study.studyfile import load_config
from tests.helpers import TEST_BUDGET

ARGS = [
    "train.epochs=2",
    "search.pruner=none",
    "early_stopping.patience=null",
    "search.confirm=none",
    TEST_BUDGET,
]


def _run(tmp_path: Path, n_trials: int) -> optuna.Study:
    config = load_config(overrides=[*ARGS, f"search.n_trials={n_trials}"])
    options = RunOptions(
        f"sqlite:///{tmp_path}/o.db", f"sqlite:///{tmp_path}/mlruns/m.db", quiet=True
    )
    return run_study(config, options, console=Console(quiet=True))


def _alias_trial(tmp_path: Path) -> int:
    client = MlflowClient(*[f"sqlite:///{tmp_path}/mlruns/m.db"] * 2)
    return int(client.get_model_version_by_alias("digits", "champion").tags["trial"])


def _versions(tmp_path: Path) -> list[int]:
    client = MlflowClient(*[f"sqlite:///{tmp_path}/mlruns/m.db"] * 2)
    found = client.search_model_versions("name='digits'")
    return [int(v.tags["trial"]) for v in sorted(found, key=lambda v: int(v.version))]


def test_only_new_study_bests_register_and_the_alias_is_the_best_trial(tmp_path: Path) -> None:
    study = _run(tmp_path, 4)
    best = best_trial(study)
    assert best is not None and _alias_trial(tmp_path) == best.number
    registered = _versions(tmp_path)
    values = {t.number: (t.value, -t.user_attrs["val_loss"]) for t in study.trials}
    assert registered == sorted(registered)
    for earlier, later in itertools.pairwise(registered):
        assert values[later] > values[earlier], "a version that was no new best"
    assert study.user_attrs["champion"] == {
        "trial": best.number,
        "uri": f"models:/digits/{len(registered)}",
    }


def test_a_failed_registration_after_the_outcome_is_repaired_when_the_study_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if the worker died right after Optuna recorded its best trial COMPLETE: the alias is
    never moved for it during the run, and the launch's end registers it from its checkpoint."""
    import search.run.objective

    def dies(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("killed before the alias moved")

    monkeypatch.setattr(search.run.objective, "promote", dies)  # the objective's promotion
    study = _run(tmp_path, 3)
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    best = best_trial(study)
    assert best is not None
    assert _alias_trial(tmp_path) == best.number, "repaired at the end of the launch"
    assert "champion_error" in study.user_attrs


def test_an_alias_left_on_another_trial_is_moved_by_the_next_launch(tmp_path: Path) -> None:
    study = _run(tmp_path, 3)
    best = best_trial(study)
    assert best is not None
    client = MlflowClient(*[f"sqlite:///{tmp_path}/mlruns/m.db"] * 2)
    # What an older version could leave: the alias on a model of a trial that ended FAIL.
    stray = client.create_model_version(
        "digits", source=str(tmp_path), tags={"trial": "99", "value": "1.0"}
    )
    client.set_registered_model_alias("digits", "champion", stray.version)
    versions = client.search_model_versions("name='digits'")
    (own,) = [v.version for v in versions if v.tags.get("trial") == str(best.number)]
    _run(tmp_path, 3)  # nothing left to run: the launch only repairs
    assert _alias_trial(tmp_path) == best.number
    # Back on the version it had (its test tags with it), not a second copy of the trial.
    assert len(client.search_model_versions("name='digits'")) == len(versions)
    assert client.get_model_version_by_alias("digits", "champion").version == own
    assert best_trial(optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/o.db"))


def test_a_champion_record_that_lags_the_alias_is_put_right_by_the_next_launch(
    tmp_path: Path,
) -> None:
    """What a study extended past its confirm phase could leave: the study's champion record
    on a search trial that registered a version while the alias stayed on the refit. `best`
    and the report read the record: the next launch makes it name the alias's version."""
    study = _run(tmp_path, 3)
    right = dict(study.user_attrs["champion"])
    other = next(t.number for t in study.trials if t.number != right["trial"])
    study.set_user_attr("champion", {"trial": other, "uri": "models:/digits/99"})
    resumed = _run(tmp_path, 3)  # nothing left to run: the launch only repairs
    assert resumed.user_attrs["champion"] == right
    assert _alias_trial(tmp_path) == right["trial"]


def test_study_lock_excludes_other_holders(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/l.db"
    study = optuna.create_study(storage=open_storage(url), study_name="locked")
    order: list[str] = []

    def second() -> None:
        other = optuna.load_study(study_name="locked", storage=open_storage(url))
        with study_lock(other, "champion"):
            order.append("second")

    with study_lock(study, "champion"):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
