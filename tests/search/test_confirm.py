"""The confirm phase end to end, as a user runs it: `regsearch confirm` on a finished study,
the verdict the same in the CLI, `best --json`, the report, the dashboard note and the MLflow
parent run; `@champion` on the confirmed winner; and a worker killed in the middle of it."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import regsearch, start_regsearch

# Two searched regularizers and a two-value recipe keep the ablation to ≤ 2 × seeds retrains.
SMALL = (
    "--set", "train.epochs=2",
    "--set", "search.pruner=none",
    "--set", "early_stopping.patience=null",
    "--set", "space={dropout: {type: float, low: 0.0, high: 0.5}, "
    "aug_strength: {type: float, low: 0.0, high: 1.0}, weight_decay: 0.0, mixup_alpha: 0.0, "
    "label_smoothing: 0.0}",
    "--set", "baseline={dropout: 0.5, aug_strength: 0.5}",
    "--quiet",
)  # fmt: skip


def _study(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root}/studies/regsearch.db")


def _phases(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials():
        phase = t.user_attrs.get("phase", "search")
        out[phase] = out.get(phase, 0) + 1
    return out


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def confirmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-trial study run without a confirm phase, then `regsearch confirm` on it."""
    root = tmp_path_factory.mktemp("confirm")
    first = regsearch("run", "--study", "c", "--n-trials", "3", *SMALL, cwd=root)
    assert first.returncode == 0, first.stderr[-2000:]
    proc = regsearch("confirm", "c", "--top-k", "1", "--seeds", "2", "--no-racing", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (root / "confirm.out").write_text(proc.stdout + proc.stderr)
    return root


@pytest.mark.slow
def test_confirm_retrains_the_top_configuration_and_the_baseline_then_ablates(
    confirmed: Path,
) -> None:
    study = _study(confirmed, "c")
    states = {t.state.name for t in study.get_trials()}
    assert states == {"COMPLETE"}, "nothing left RUNNING or WAITING"
    phases = _phases(study)
    assert phases["search"] + phases["baseline"] == 3, "n_trials unchanged by the retrains"
    assert phases["confirm"] == 4, "(top 1 + baseline) × 2 seeds"
    best = json.loads(regsearch("best", "c", "--json", cwd=confirmed).stdout)
    champion = best["champion"]
    assert champion["val"]["n"] == 2 and champion["seeds"] == [1000, 1001]
    active = {k for k, v in champion["params"].items() if v != 0.0}
    if champion["is_baseline"]:
        active = {"dropout", "aug_strength"}
    assert phases.get("ablation", 0) == 2 * len(active)
    assert set(best["contributions"]) == active
    for c in best["contributions"].values():
        assert c["n"] == 2 and c["low"] <= c["mean"] <= c["high"]
    # The champion trial is the refit on training + validation images (`search.study.refit`) of
    # the configuration with the best mean; the model before it, its best-seed retrain.
    winner = study.trials[best["trial"]]
    assert winner.user_attrs["phase"] == "refit"
    assert winner.user_attrs["source"] == champion["source"]
    before = study.trials[winner.user_attrs["refit_of"]]
    assert before.user_attrs["phase"] in ("confirm", "ablation")
    assert before.user_attrs["source"] == champion["source"]
    assert best["refit"]["of"] == best["test"]["before_refit_trial"] == before.number
    assert best["confirm"] == {"complete": True, "pending": 0, "started": True}
    test = best["test"]
    for who in ("champion", "baseline"):
        assert 0 <= test[who]["accuracy"] <= 1 and 0 <= test[who]["ece"] <= 1
        assert test[who]["nll"] > 0
    assert test["gain"]["low"] <= test["gain"]["mean"] <= test["gain"]["high"]
    assert best["test_accuracy"] == test["champion"]["accuracy"]


def test_the_champion_alias_points_at_the_confirmed_winner(confirmed: Path) -> None:
    from mlflow import MlflowClient

    best = json.loads(regsearch("best", "c", "--json", cwd=confirmed).stdout)
    assert best["champion_uri"] == "models:/c@champion"
    client = MlflowClient(registry_uri=f"sqlite:///{confirmed}/mlruns/mlflow.db")
    version = client.get_model_version_by_alias("c", "champion")
    assert version.tags["trial"] == str(best["trial"])
    assert best["model_uri"] == f"models:/c/{version.version}"


@pytest.mark.slow
def test_the_verdict_is_the_same_in_the_cli_the_parent_run_the_report_and_the_note(
    confirmed: Path,
) -> None:
    from mlflow import MlflowClient

    text = regsearch("best", "c", cwd=confirmed).stdout
    line = text.splitlines()[0]
    assert line.startswith("champion: ") and "(2 seeds)" in line and "contributions:" in line
    assert ", test " in line and ("gain val " in line or "the baseline recipe itself" in line)
    assert line in (confirmed / "confirm.out").read_text(), "the end of the run says the same"
    client = MlflowClient(f"sqlite:///{confirmed}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("c")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.role = 'study'")
    assert parent.data.tags["verdict"] == line
    best = json.loads(regsearch("best", "c", "--json", cwd=confirmed).stdout)
    assert parent.data.metrics["champion_val_mean"] == pytest.approx(
        best["champion"]["val"]["mean"]
    )
    assert parent.data.metrics["test_accuracy"] == pytest.approx(best["test_accuracy"])
    for name, c in best["contributions"].items():
        assert parent.data.metrics[f"contribution_{name}"] == pytest.approx(c["mean"])
    retrains = client.search_runs([experiment.experiment_id], "tags.phase = 'confirm'")
    assert len(retrains) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in retrains} == {parent.info.run_id}

    proc = regsearch("report", "c", "--out", str(confirmed / "report"), cwd=confirmed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (confirmed / "report" / "index.html").read_text()
    first = page.index("<section>")
    assert page.index("<h2>Verdict</h2>") == first + len("<section>"), "the first section"
    import html

    assert html.escape(line) in page
    assert (confirmed / "report" / "contributions.png").stat().st_size > 1000

    from optuna_dashboard._note import get_note_from_system_attrs

    study = _study(confirmed, "c")
    winner = study.trials[best["trial"]]
    attrs = study._storage.get_study_system_attrs(study._study_id)
    note = get_note_from_system_attrs(attrs, winner._trial_id)["body"]
    assert line in note
    # One name for the champion in every tool: run, status, best, the report, the dashboard's
    # study note and the MLflow parent run.
    name = best["champion_name"]
    assert name.startswith("configuration of trial ") or name.startswith("the baseline recipe")
    assert f", model from trial {best['trial']}, seed " in name
    assert name in line and name in text and name in (confirmed / "confirm.out").read_text()
    assert parent.data.tags["champion"] == name
    assert html.escape(name) in page
    status = regsearch("status", "c", cwd=confirmed).stdout
    assert f"champion: {name}" in status
    assert f"**Champion:** {name}" in get_note_from_system_attrs(attrs, None)["body"]


def test_confirm_on_an_unknown_study_is_one_line_and_exit_2(confirmed: Path) -> None:
    proc = regsearch("confirm", "nosuch", cwd=confirmed)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "regsearch: error: unknown study 'nosuch'; known: c"
    proc = regsearch("confirm", "c", "--seeds", "0", cwd=confirmed)
    assert proc.returncode == 2 and "--seeds" in proc.stderr


def test_more_seeds_extend_the_phase_with_only_the_missing_retrains(confirmed: Path) -> None:
    before = _phases(_study(confirmed, "c"))
    proc = regsearch(
        "confirm", "c", "--top-k", "1", "--seeds", "3", "--no-ablation", "--no-racing",
        cwd=confirmed,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = _phases(_study(confirmed, "c"))
    assert after["confirm"] == before["confirm"] + 2, "one more seed for each configuration"
    assert after.get("ablation", 0) == before.get("ablation", 0), "--no-ablation"
    best = json.loads(regsearch("best", "c", "--json", cwd=confirmed).stdout)
    assert best["champion"]["val"]["n"] == 3 and best["champion"]["seeds"] == [1000, 1001, 1002]


def _running_retrain(db: Path) -> int | None:
    """A RUNNING confirm-phase trial, read from the file read-only (polling through Optuna
    would create the store and race the launch creating it). It may not have sent its first
    heartbeat yet: such a trial must be found stale too."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            row = c.execute(
                "SELECT t.number FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'phase' "
                "AND a.value_json = '\"confirm\"' LIMIT 1"
            ).fetchone()
    except sqlite3.Error:  # the schema is not there yet
        return None
    return None if row is None else int(row[0])


@pytest.mark.slow
def test_a_worker_killed_in_the_confirm_phase_is_resumed_and_the_phase_finishes(
    tmp_path: Path,
) -> None:
    args = (
        "run", "--study", "k", "--n-trials", "2", *SMALL,
        "--set", "search.confirm={top_k: 1, seeds: 2}",
        "--set", "search.heartbeat_interval=1",
        "--set", "search.grace_period=2",
    )  # fmt: skip
    proc = start_regsearch(*args, cwd=tmp_path, confirm=True)
    deadline = time.monotonic() + 180
    killed_in = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            killed_in = _running_retrain(tmp_path / "studies" / "regsearch.db")
            if killed_in is not None:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert killed_in is not None, "the run never reached its confirm phase"

    again = regsearch(*args, cwd=tmp_path, timeout=300, confirm=True)
    assert again.returncode == 0, again.stderr[-2000:]
    study = _study(tmp_path, "k")
    lost = study.trials[killed_in]
    assert lost.state.name == "FAIL" and lost.user_attrs["stop_reason"].startswith("lost:")
    retried = [
        t
        for t in study.get_trials()
        if t.number > killed_in
        and t.user_attrs.get("phase") == "confirm"
        and t.user_attrs.get("source") == lost.user_attrs["source"]
        and t.user_attrs.get("seed") == lost.user_attrs["seed"]
    ]
    assert [t.state.name for t in retried] == ["COMPLETE"], "retried once, same seed and config"
    assert not [t for t in study.get_trials() if t.state.name in ("RUNNING", "WAITING")]
    best = json.loads(regsearch("best", "k", "--json", cwd=tmp_path).stdout)
    assert best["confirm"] == {"complete": True, "pending": 0, "started": True}
    assert best["champion"]["val"]["n"] == 2 and best["contributions"]
    assert best["test"] is not None and best["champion_uri"] == "models:/k@champion"


@pytest.mark.slow
def test_confirm_on_a_study_whose_search_is_unfinished_says_it_runs_the_search_first(
    tmp_path: Path,
) -> None:
    small = [a for a in SMALL if a != "--quiet"]
    first = regsearch("run", "--study", "u", "--n-trials", "2", "--timeout", "1e-6", *small,
                      cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    proc = regsearch("confirm", "u", "--top-k", "1", "--seeds", "2", "--no-racing", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "u: the search has 0 of its 2 trials: it runs the rest first, then the confirm phase"
        in (proc.stderr)
    )
    assert _phases(_study(tmp_path, "u"))["confirm"] == 4
