"""Learning-curve artifacts and best-trial notes, read back through Optuna, optuna-dashboard's
note API and the dashboard's own HTTP API (its WSGI app, called in process)."""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.error
import urllib.request
import wsgiref.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore

from search.report.dashboard import upload_learning_curve, write_best_note
from search.study.storage import open_storage
from search.training.train import EpochStats
from tests.helpers import serving

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(epochs: int = 20) -> list[EpochStats]:
    return [
        EpochStats(
            epoch=e,
            train_loss=1.0 / e,
            train_accuracy=1.0 - 0.5 / e,
            val_loss=1.2 / e,
            val_accuracy=0.95 - 0.5 / e,
            fit_loss=1.5 / e,
            lr=1e-3,
            epoch_seconds=0.2,
        )
        for e in range(1, epochs + 1)
    ]


def _sample(trial: optuna.Trial) -> None:
    trial.suggest_float("dropout", 0.0, 0.6)
    trial.suggest_float("weight_decay", 1e-5, 0.1, log=True)


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path}/studies/regsearch.db")
    return optuna.create_study(study_name="dash", storage=storage, direction="maximize")


@pytest.fixture
def artifacts(tmp_path: Path) -> FileSystemArtifactStore:
    (tmp_path / "artifacts").mkdir()
    return FileSystemArtifactStore(str(tmp_path / "artifacts"))


def _wsgi_get(app: Any, path: str) -> tuple[int, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    wsgiref.util.setup_testing_defaults(environ)
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(line)
        return lambda data: None

    result: Iterable[bytes] = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(status[0].split()[0]), body


def test_learning_curve_is_a_png_artifact_of_the_trial(
    study: optuna.Study, artifacts: FileSystemArtifactStore
) -> None:
    trial = study.ask()
    _sample(trial)
    artifact_id = upload_learning_curve(study, trial, _history(), artifact_store=artifacts)
    study.tell(trial, 0.9)
    (meta,) = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    assert meta.artifact_id == artifact_id
    assert meta.filename == "learning-curve-trial-0.png"
    assert meta.mimetype == "image/png"
    with artifacts.open_reader(artifact_id) as reader:
        assert reader.read().startswith(PNG_MAGIC)


def test_the_learning_curve_is_legible_and_marks_the_best_epoch() -> None:
    import io

    from PIL import Image

    from search.report.dashboard import learning_curve_png

    plain = learning_curve_png(_history(6))
    marked = learning_curve_png(_history(6), best_epoch=4)
    assert Image.open(io.BytesIO(marked)).size == (704, 275)
    assert plain != marked, "the best epoch is drawn"


def test_the_curve_goes_on_a_running_trial(
    study: optuna.Study, artifacts: FileSystemArtifactStore, tmp_path: Path
) -> None:
    running = study.ask()
    frozen = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))[0]
    assert upload_learning_curve(study, frozen, _history(3), artifact_store=artifacts)
    assert len(optuna.artifacts.get_all_artifact_meta(frozen, storage=study._storage)) == 1
    study.tell(running, 0.5)
    finished = study.trials[0]
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        upload_learning_curve(study, finished, _history(3), artifact_store=artifacts)
    assert len(list((tmp_path / "artifacts").iterdir())) == 1, "nothing orphaned"


def test_an_empty_history_uploads_nothing(
    study: optuna.Study, artifacts: FileSystemArtifactStore
) -> None:
    trial = study.ask()
    assert upload_learning_curve(study, trial, [], artifact_store=artifacts) is None
    assert optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage) == []


def test_the_curve_upload_is_cheap(study: optuna.Study, artifacts: FileSystemArtifactStore) -> None:
    """~60 ms of CPU for 20 epochs once matplotlib is loaded (the first call also pays for the
    import and for building the figure); the bound is loose for busy CI machines."""
    history = _history(20)
    upload_learning_curve(study, study.ask(), history, artifact_store=artifacts)
    seconds = []
    for _ in range(5):
        trial = study.ask()
        started = time.process_time()
        upload_learning_curve(study, trial, history, artifact_store=artifacts)
        seconds.append(time.process_time() - started)
    assert statistics.median(seconds) < 0.25, seconds


def test_best_note_is_written_on_the_best_trial(study: optuna.Study) -> None:
    from optuna_dashboard import get_note

    assert write_best_note(study) is None, "no completed trial yet"
    study.set_user_attr("objective_metric", "val_accuracy")  # as `run` stores it
    for value in (0.91, 0.97, 0.93):
        trial = study.ask()
        _sample(trial)
        if value == 0.91:
            trial.set_user_attr("phase", "baseline")
        if value == 0.97:
            trial.set_user_attr("model_uri", "models:/dash/2")
            trial.set_user_attr("best_epoch", 14)
        study.tell(trial, value)
    assert write_best_note(study, test_accuracy=0.9612) == 1
    note = get_note(optuna.Trial(study, study.trials[1]._trial_id))
    assert "#1" in note
    assert "best: trial 1 val_accuracy 0.9700 — baseline recipe 0.910, gain +6.0 pt" in note
    for text in ("dropout", "weight_decay", "0.97", "0.9612", "models:/dash/2", "14"):
        assert text in note
    assert get_note(optuna.Trial(study, study.trials[0]._trial_id)) == ""
    # Written again (e.g. when the test accuracy is known): the note is replaced.
    write_best_note(study, test_accuracy=0.95, model_uri="models:/dash@champion")
    note = get_note(optuna.Trial(study, study.trials[1]._trial_id))
    assert "0.95" in note and "models:/dash@champion" in note and "0.9612" not in note


def test_a_superseded_champion_says_so_and_a_user_s_notes_are_kept(study: optuna.Study) -> None:
    """Two trials both read "Champion of study" once the champion moved, and every launch
    replaced the notes a user had written in the dashboard (the one thing it lets them edit)."""
    from optuna_dashboard import get_note, save_note

    study.set_user_attr("objective_metric", "val_accuracy")
    for value in (0.91, 0.93):
        trial = study.ask()
        _sample(trial)
        study.tell(trial, value)
    assert write_best_note(study) == 1
    first = optuna.Trial(study, study.trials[1]._trial_id)
    save_note(first, get_note(first) + "\nlooks overfit: check the curve\n")
    save_note(study, "my plan: try cutout next")  # the user's study note, over regsearch's
    trial = study.ask()
    _sample(trial)
    study.tell(trial, 0.97)
    assert write_best_note(study) == 2
    old = get_note(first)
    assert old.startswith("## Former champion of study `dash`: #1")
    assert "trials?numbers=2" in old and "looks overfit: check the curve" in old
    assert "## Champion" not in old and "## Best trial" not in old
    assert get_note(optuna.Trial(study, study.trials[2]._trial_id)).startswith("## Best trial")
    note = get_note(study)
    assert note.startswith("## Verdict of study `dash`") and note.rstrip().endswith(
        "my plan: try cutout next"
    )
    write_best_note(study)  # again: the user's text stays once, below regsearch's part
    assert get_note(study).count("my plan: try cutout next") == 1


def test_the_note_of_a_refit_champion_shows_no_validation_score_of_its_own(
    study: optuna.Study,
) -> None:
    from search.report.dashboard import best_note_markdown

    study.set_user_attr("objective_metric", "val_accuracy")
    trial = study.ask()
    _sample(trial)
    attrs = {"phase": "refit", "train_images": 1437, "val_accuracy": 0.9972, "best_epoch": 20}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 0.982)
    note = best_note_markdown(study, study.trials[0])
    assert "val_accuracy (its configuration's confirm mean) | 0.982" in note
    assert "training + validation, 1,437 images" in note
    assert "0.9972" not in note and "best epoch" not in note


def test_best_note_on_a_grid_study(tmp_path: Path) -> None:
    """Building the live Trial that `save_note` needs must not run the study's sampler."""
    from optuna_dashboard import get_note

    grid = optuna.samplers.GridSampler({"dropout": [0.0, 0.5]})
    study = optuna.create_study(
        storage=open_storage(f"sqlite:///{tmp_path}/grid.db"), sampler=grid, direction="maximize"
    )
    study.optimize(lambda t: 1.0 - t.suggest_float("dropout", 0.0, 0.5), n_trials=2)
    assert write_best_note(study) == study.best_trial.number
    assert "dropout" in get_note(optuna.Trial(study, study.best_trial._trial_id))


def test_dashboard_api_serves_the_note_and_the_curve(
    study: optuna.Study, artifacts: FileSystemArtifactStore
) -> None:
    from optuna_dashboard import wsgi

    trial = study.ask()
    _sample(trial)
    artifact_id = upload_learning_curve(study, trial, _history(), artifact_store=artifacts)
    study.tell(trial, 0.97)
    write_best_note(study, test_accuracy=0.96, model_uri="models:/dash/1")
    app = wsgi(study._storage, artifact_store=artifacts)

    status, body = _wsgi_get(app, "/api/studies")
    assert status == 200
    (summary,) = json.loads(body)["study_summaries"]
    assert summary["study_name"] == "dash"

    status, body = _wsgi_get(app, f"/api/studies/{summary['study_id']}")
    assert status == 200
    (best,) = json.loads(body)["best_trials"]
    assert best["number"] == 0
    assert "models:/dash/1" in best["note"]["body"] and best["note"]["version"] == 1
    (artifact,) = best["artifacts"]
    assert artifact["artifact_id"] == artifact_id and artifact["mimetype"] == "image/png"

    path = f"/artifacts/{summary['study_id']}/{best['trial_id']}/{artifact_id}"
    status, body = _wsgi_get(app, path)
    assert status == 200 and body.startswith(PNG_MAGIC)


def _request(base: str, method: str, path: str, payload: Any = None) -> tuple[int, bytes]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def test_the_served_dashboard_cannot_delete_or_change_studies(tmp_path: Path) -> None:
    """`regsearch dashboard` may be bound to the network without authentication: its API
    reads everything and writes only notes; deleting, creating, renaming a study or telling,
    annotating a trial is refused."""
    storage = open_storage(f"sqlite:///{tmp_path}/studies/regsearch.db")
    study = optuna.create_study(study_name="keep", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    running = study.ask()
    with serving(
        lambda port: [sys.executable, "-m", "search", "dashboard", "--port", str(port)],
        cwd=tmp_path,
        ready="/api/studies",
        what="regsearch dashboard",
        timeout=60,
    ) as (base, body):
        (summary,) = json.loads(body)["study_summaries"]
        sid, tid = summary["study_id"], running._trial_id
        for method, path, payload in (
            ("DELETE", f"/api/studies/{sid}", None),
            ("DELETE", f"/api/studies/{sid}/", None),
            ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
            ("POST", f"/api/studies/{sid}/rename", {"study_name": "renamed"}),
            ("POST", f"/api/trials/{tid}/tell", {"state": "Complete", "values": [9.0]}),
            ("POST", f"/api/trials/{tid}/user-attrs", {"user_attrs": {"x": 1}}),
            ("DELETE", f"/api/artifacts/{sid}/{tid}/0123abcd", None),
            ("POST", "/incompatible-rdb-schema", None),
        ):
            status, reply = _request(base, method, path, payload)
            assert status == 403, (method, path, status, reply[:200])
            assert "read-only" in json.loads(reply)["reason"], reply

        status, reply = _request(base, "GET", f"/api/studies/{sid}")
        assert status == 200 and len(json.loads(reply)["trials"]) == 3
        # The note editor still works (notes live beside the trials, never in them).
        note = {"version": 1, "body": "looked at it"}
        assert _request(base, "PUT", f"/api/studies/{sid}/{tid}/note", note)[0] == 204

    assert optuna.get_all_study_names(storage=storage) == ["keep"]
    kept = optuna.load_study(study_name="keep", storage=storage).trials
    assert [t.state.name for t in kept] == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert kept[2].user_attrs == {}
