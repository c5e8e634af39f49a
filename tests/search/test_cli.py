"""The CLI as a user meets it: real subprocesses, real SQLite storage, real MLflow store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.helpers import regsearch, serving

CONTRACT = ("weight_decay", "dropout", "aug_strength", "mixup_alpha", "label_smoothing")
TINY = ("--set", "train.epochs=3", "--set", "search.pruner=none", "--quiet")


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small finished study shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("tiny")
    proc = regsearch("run", "--study", "tiny", "--n-trials", "3", *TINY, cwd=root)
    assert proc.returncode == 0, proc.stderr
    (root / "run.log").write_text(proc.stderr)
    return root


def test_run_ends_with_the_champion_uri(tiny_study: Path) -> None:
    lines = (tiny_study / "run.log").read_text().splitlines()
    assert "champion: models:/tiny@champion" in lines
    assert any(line.startswith("model: models:/tiny/") for line in lines)


def test_help_lists_the_contract_commands(tmp_path: Path) -> None:
    proc = regsearch("--help", cwd=tmp_path)
    assert proc.returncode == 0
    commands = ("run", "worker", "confirm", "status", "best", "dashboard", "ui", "report", "bench")
    for command in commands:
        assert f"  {command} " in proc.stdout


def test_run_creates_default_stores_and_finishes_the_budget(tiny_study: Path) -> None:
    assert (tiny_study / "studies" / "regsearch.db").exists()
    assert (tiny_study / "mlruns" / "mlflow.db").exists()
    with sqlite3.connect(tiny_study / "studies" / "regsearch.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    proc = regsearch("status", "tiny", "--json", cwd=tiny_study)
    rows = json.loads(proc.stdout)
    assert len(rows) == 3
    assert {r["state"] for r in rows} == {"COMPLETE"}
    for row in rows:
        assert set(CONTRACT) <= set(row["params"])
        assert row["epochs"] == 3 and row["stop_reason"] == "max_epochs"
        assert 0.0 <= row["value"] <= 1.0
    values = [r["value"] for r in rows]
    assert values == sorted(values, reverse=True), "status lists the best trial first"


def test_best_json_has_the_contract_keys(tiny_study: Path) -> None:
    proc = regsearch("best", "tiny", "--json", cwd=tiny_study)
    assert proc.returncode == 0, proc.stderr
    best = json.loads(proc.stdout)
    assert set(best) == {
        "study",
        "trial",
        "phase",
        "value",
        "params",
        "model_uri",
        "champion_uri",
        "test_accuracy",
        "baseline",
        "gain",
        "gain_interval",
        "champion",
        "contributions",
        "test",
        "confirm",
        "epochs_saved",
        "input",
        "champion_name",
        "refit",
        "hint",
    }
    assert best["study"] == "tiny"
    assert best["input"] == {
        "shape": [1, 8, 8],
        "dtype": "float32",
        "range": [0.0, 1.0],
        "classes": 10,
    }
    text = regsearch("best", "tiny", cwd=tiny_study).stdout
    assert "input: float32 images in [0, 1], shape (N, 1, 8, 8); returns 10 logits" in text
    assert best["model_uri"].startswith("models:/tiny/")
    assert best["champion_uri"] == "models:/tiny@champion"
    assert 0.0 <= best["test_accuracy"] <= 1.0
    status = json.loads(regsearch("status", "tiny", "--json", cwd=tiny_study).stdout)
    assert best["value"] == max(r["value"] for r in status)


def test_every_study_runs_the_baseline_recipe_first_and_reports_the_gain(
    tiny_study: Path,
) -> None:
    from mlflow import MlflowClient

    best = json.loads(regsearch("best", "tiny", "--json", cwd=tiny_study).stdout)
    baseline = best["baseline"]
    assert baseline["trial"] == 0
    recipe = {"weight_decay": 0.01, "dropout": 0.5, "aug_strength": 0.5}
    assert baseline["params"] == {**recipe, "mixup_alpha": 0.2, "label_smoothing": 0.1}
    assert best["gain"] == pytest.approx(best["value"] - baseline["value"])
    assert best["gain"] >= 0  # the best trial is at least as good as the baseline
    uri = f"sqlite:///{tiny_study}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.phase = 'baseline'")
    assert [r.data.tags["trial"] for r in runs] == ["0"]
    parent = client.search_runs([experiment.experiment_id], "tags.role = 'study'")
    assert parent[0].data.metrics["gain"] == pytest.approx(best["gain"])
    text = regsearch("best", "tiny", cwd=tiny_study).stdout
    verdict = text.splitlines()[0]  # the same line as the end of `run`
    assert verdict.startswith(f"best: trial {best['trial']} val_accuracy {best['value']:.4f}")
    assert f"baseline recipe {baseline['value']:.3f}" in verdict


def test_status_without_study_lists_studies(tiny_study: Path) -> None:
    rows = json.loads(regsearch("status", "--json", cwd=tiny_study).stdout)
    assert [r["study"] for r in rows] == ["tiny"]
    assert rows[0]["trials"] == 3 and rows[0]["direction"] == "maximize"


def test_optuna_cli_reads_the_study(tiny_study: Path) -> None:
    optuna_cli = Path(sys.executable).with_name("optuna")
    proc = subprocess.run(
        [
            str(optuna_cli),
            "trials",
            "--study-name",
            "tiny",
            "--storage",
            "sqlite:///studies/regsearch.db",
            "-f",
            "json",
        ],
        cwd=tiny_study,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    trials = json.loads(proc.stdout)
    assert len(trials) == 3
    for name in CONTRACT:
        assert name in trials[0]["params"]


def test_resume_extends_the_same_study(tmp_path: Path) -> None:
    assert (
        regsearch("run", "--study", "grow", "--n-trials", "2", *TINY, cwd=tmp_path).returncode == 0
    )
    proc = regsearch("run", "--study", "grow", "--n-trials", "3", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(regsearch("status", "grow", "--json", cwd=tmp_path).stdout)
    assert sorted(r["number"] for r in rows) == [0, 1, 2]


def test_resume_with_a_different_config_is_refused(tmp_path: Path) -> None:
    assert regsearch("run", "--study", "s", "--n-trials", "1", *TINY, cwd=tmp_path).returncode == 0
    proc = regsearch(
        "run", "--study", "s", "--n-trials", "2", *TINY, "--set", "train.lr=0.1", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "Traceback" not in proc.stderr


def test_a_study_file_states_only_what_differs(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        textwrap.dedent(
            """
            study: from-file
            train: {epochs: 2}
            search: {n_trials: 2, pruner: none}
            space:
              dropout: 0.25
              lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
            tracking: {enabled: false}
            """
        )
    )
    proc = regsearch("run", "mine.yaml", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(regsearch("status", "from-file", "--json", cwd=tmp_path).stdout)
    assert len(rows) == 2
    for row in rows:
        assert "dropout" not in row["params"]  # fixed, not searched
        assert {"lr", "weight_decay", "label_smoothing"} <= set(row["params"])
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


_HAS_CUDA = torch.cuda.is_available()


def _main(*args: str) -> int:
    """The console entry point, in process (cheap); subprocess tests cover the real binary."""
    from search.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0)


@pytest.mark.parametrize(
    ("args", "file_text", "expected"),
    [
        (["--set", "train.epoch=3"], None, "train.epoch: unknown key"),
        (["--set", "train.epochs=0"], None, "train.epochs"),
        (["--set", "space.dropout={type: float, low: 0.2, high: 1.5}"], None, "space.dropout"),
        (
            ["--set", "space.dropout={type: float, low: 0.5, high: 0.1}"],
            None,
            "low must be <= high",
        ),
        (["--set", "space.wobble=0.1"], None, "space.wobble: unknown parameter"),
        (["--set", "search.pruner=sometimes"], None, "unknown pruner 'sometimes'"),
        (["--set", "search.pruner={name: median, n_warmup: 1}"], None, "search.pruner (median)"),
        (["--set", "model.name=resnet9000"], None, "unknown model 'resnet9000'"),
        (["--set", "noequals"], None, "--set 'noequals'"),
        (["--device", "tpu"], None, "'--device': expected auto, cpu, mps, cuda or cuda:N"),
        (["bad.yaml"], "train: {epochs: [1, 2}\n", "bad.yaml"),
        (["bad.yaml"], "- just\n- a list\n", "must be a mapping"),
        (["bad.yaml"], "trian: {epochs: 2}\n", "trian: unknown key"),
        (["missing.yaml"], None, "study file not found"),
        (
            ["--storage", "postgresql+psycopg://bob:hunter2@127.0.0.1:1/x"],
            None,
            "cannot open storage",
        ),
        (["--workers", "0"], None, "--workers"),
        (["--storage", "sqlite://"], None, "an in-memory database keeps nothing"),
        (
            ["--set", "search.sampler.n_startup_trials=abc"],
            None,
            "search.sampler (tpe): n_startup_trials must be int, got 'abc'",
        ),
        (
            ["--set", "search.pruner={name: hyperband, min_resource: 0}"],
            None,
            "search.pruner (hyperband): fails on its first trials: ZeroDivisionError",
        ),
        (["--set", "search.pruner={name: wilcoxon, p_threshold: 2}"], None, "p_threshold must"),
        (["--set", "search.sampler=grid"], None, "space.weight_decay: the grid sampler needs a"),
        (["--tracking-uri", "sqlite:///bad.yaml"], "not: a database\n", "not an SQLite database"),
        (
            ["--tracking-uri", "postgresql://bob:hunter2@127.0.0.1:1/x"],
            None,
            "cannot use tracking URI postgresql://bob:***@127.0.0.1:1/x (",
        ),
        (["--artifacts", "bad.yaml"], "a file\n", "--artifacts: cannot create the folder"),
        (["--fractions", ""], None, "--fractions: expected fractions"),
        (["--set", "train.seed=99999999999999999"], None, "train.seed: Input should be less"),
        (["--set", "dataset.split_seed=-1"], None, "dataset.split_seed: Input should be greater"),
        pytest.param(
            ["--workers", "2", "--device", "cuda"],
            None,
            "train.device: device 'cuda' requested but CUDA is not available",
            marks=pytest.mark.skipif(_HAS_CUDA, reason="this machine has a GPU"),
        ),
        (["--gpus", "0,x"], None, "'x' is not a GPU index"),
        (["--gpus", "1,1"], None, "GPU 1 is listed twice"),
        (["--gpus", "0", "--device", "cpu"], None, "--gpus needs --device auto or cuda"),
        (["--gpus", "0,1", "--workers", "1"], None, "leaves GPUs of --gpus 0,1 idle"),
        pytest.param(
            ["--gpus", "0"],
            None,
            "this machine has no CUDA device",
            marks=pytest.mark.skipif(_HAS_CUDA, reason="this machine has a GPU"),
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    file_text: str | None,
    expected: str,
) -> None:
    if file_text is not None:
        (tmp_path / "bad.yaml").write_text(file_text)
    assert _main("run", *args, "--quiet") == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("regsearch: error: ")
    assert expected in lines[0]
    assert "hunter2" not in err
    # Nothing half-created: a rejected launch leaves no study storage behind.
    assert not (tmp_path / "studies" / "regsearch.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_user_error_from_the_real_binary_has_no_traceback(tmp_path: Path) -> None:
    proc = regsearch("run", "--set", "space.dropout=1.5", cwd=tmp_path, real=True)
    assert proc.returncode == 2
    assert proc.stderr == (
        "regsearch: error: space.dropout: 1.5 is outside the allowed range [0, 1)\n"
    )
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["run", "--n-trials", "abc"],
            "Invalid value for '--n-trials': 'abc' is not a valid integer. "
            "(see regsearch run --help)",
        ),
        (["run", "--bogus"], "No such option '--bogus'"),
        (["nosuch"], "No such command 'nosuch'. (see regsearch --help)"),
        (
            ["worker", "digits", "--device", "tpu"],
            "'--device': expected auto, cpu, mps, cuda or cuda:N, got 'tpu' "
            "(see regsearch worker --help)",
        ),
        (["confirm", "digits", "--device", "tpu"], "(see regsearch confirm --help)"),
    ],
)
def test_a_bad_flag_is_one_line_too(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Click's own errors (a value of the wrong type, an unknown option) keep the one-line
    contract: no Usage/Try block."""
    assert _main(*args) == 2
    (only,) = capsys.readouterr().err.strip().splitlines()
    assert only.startswith("regsearch: error: ") and line in only


@pytest.mark.parametrize("command", [["status", "nope"], ["best", "nope"], ["worker", "nope"]])
def test_unknown_study_is_a_user_error(tiny_study: Path, command: list[str]) -> None:
    proc = regsearch(*command, cwd=tiny_study)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "regsearch: error: unknown study 'nope'; known: tiny"


def test_status_without_storage_does_not_create_one(tmp_path: Path) -> None:
    proc = regsearch("status", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no study storage" in proc.stderr
    assert not (tmp_path / "studies").exists()


def test_worker_joins_with_the_stored_config(tmp_path: Path) -> None:
    env = {"REGSEARCH_STORAGE": f"sqlite:///{tmp_path}/shared.db"}
    proc = regsearch("run", "--study", "w", "--n-trials", "1", *TINY, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    # The worker has no file and no --set: epochs=3 and pruner=none come from the study.
    proc = regsearch("worker", "w", "--quiet", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(regsearch("status", "w", "--json", cwd=tmp_path, env=env).stdout)
    assert len(rows) == 1, "n_trials is the study's total: the worker finds it spent"


@pytest.mark.slow
@pytest.mark.acceptance
def test_default_study_meets_the_acceptance_bar(tmp_path: Path) -> None:
    """`regsearch run` with no arguments: best val ≥ 0.97, some trials pruned, the confirm
    phase whole (the core issue's acceptance criteria), at the default training budget (45
    steps an epoch). Not in the default run: `pytest -n 0 -m acceptance` runs it alone, on
    every core (4.5 to 9 minutes on 2, as busy as the machine is), as `.ci/run` does after the
    suite; inside the suite it took about 8 minutes of one worker. Its wall time is a
    benchmark figure, `regsearch bench --only time_to_target` (`run_seconds`)."""
    proc = regsearch("run", cwd=tmp_path, timeout=1500, confirm=True, budget=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(regsearch("status", "digits", "--json", cwd=tmp_path).stdout)
    searched = [r for r in rows if r["phase"] in ("search", "baseline")]
    states = [r["state"] for r in searched]
    assert states.count("COMPLETE") + states.count("PRUNED") == 24
    assert "PRUNED" in states
    assert max(r["value"] for r in searched if r["state"] == "COMPLETE") >= 0.97
    # The confirm phase ran to the end: the top 3 (more where the search tied: 360
    # validation images split anew per seed) and the baseline, 2 seeds at least and a third
    # for what racing kept, then the ablation and the refit.
    retrains = [r for r in rows if r["phase"] == "confirm"]
    assert {r["state"] for r in retrains} == {"COMPLETE"}
    best = json.loads(regsearch("best", "digits", "--json", cwd=tmp_path).stdout)
    assert best["confirm"] == {"complete": True, "pending": 0, "started": True}
    assert best["contributions"]
    champion = best["champion"]
    arms = champion["retrains_without_racing"] // 3 - len(best["contributions"])
    assert 4 <= arms <= 7 and 2 * arms <= len(retrains) <= 3 * arms
    assert champion["retrains"] <= champion["retrains_without_racing"]
    assert best["champion"]["val"]["mean"] >= 0.97 and best["test_accuracy"] >= 0.95


@pytest.mark.slow
def test_ui_serves_the_tracking_store_on_loopback(tiny_study: Path) -> None:
    alias = "/api/2.0/mlflow/registered-models/alias?name=tiny&alias=champion"
    with serving(
        lambda port: [sys.executable, "-m", "search", "ui", "--port", str(port)],
        cwd=tiny_study,
        ready=alias,
        what="regsearch ui",
        timeout=150,
    ) as (_, body):
        version = json.loads(body)["model_version"]
        assert version["name"] == "tiny" and "champion" in version["aliases"]
