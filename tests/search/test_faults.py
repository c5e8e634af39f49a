"""Fault injection: a worker killed with SIGKILL at seeded random moments (and at the two that
matter most: right after a trial completes, while its model registers, and during the budget's
last trial), then relaunched. Every time the study must end whole: exactly `n_trials`
finished, nothing RUNNING in Optuna or MLflow, both SQLite files intact, and `@champion` the
best COMPLETE trial's model, loadable."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from search.core.records import FINISHED
from search.study.studies import best_trial
from tests.helpers import Launch, forked, regsearch, start_regsearch

N_TRIALS = 3
ROUNDS = 10
# A launch of this study takes about 3.3 s on a quiet machine forked from the tests' zygote
# (8.5 s as a new interpreter, 5 s of it imports): the random moments fall inside it, from
# start-up through training and registration (the seeded draws reach 2.78 s).
_LAUNCH_S = 2.8 if forked() else 7.5
SETTINGS = (
    "--set",
    "train.epochs=3",
    "--set",
    "search.heartbeat_interval=1",
    "--set",
    "search.grace_period=2",
    "--set",
    "search.pruner=none",
    "--set",
    "early_stopping.patience=null",
    "--quiet",
)


def _storage(root: Path) -> str:
    return f"sqlite:///{root}/studies/regsearch.db"


def _trials(root: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=_storage(root)).get_trials()
    except Exception:  # not created yet, or the file is being written
        return []


def _kill_when(proc: Launch, root: Path, study: str, moment: str, delay: float) -> str:
    """SIGKILL `proc` at `moment`: after `delay` seconds ("random"), as soon as a trial is
    COMPLETE ("registering": its model registers right after), or when the last trial of the
    budget runs ("last"). Returns what happened."""
    deadline = time.monotonic() + 60
    start = time.monotonic()
    while time.monotonic() < deadline and proc.poll() is None:
        trials = _trials(root, study) if moment != "random" else []
        if moment == "random" and time.monotonic() - start >= delay:
            break
        if moment == "registering" and any(t.state.name == "COMPLETE" for t in trials):
            break
        if moment == "last" and any(
            t.number >= N_TRIALS - 1 and t.state.name == "RUNNING" for t in trials
        ):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        return "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return "killed"


def _check_whole(root: Path, study_name: str, n_trials: int = N_TRIALS) -> None:
    import mlflow
    from mlflow import MlflowClient

    study = optuna.load_study(study_name=study_name, storage=_storage(root))
    states = [t.state for t in study.trials]
    assert sum(s in FINISHED for s in states) == n_trials, states
    assert optuna.trial.TrialState.RUNNING not in states
    unexplained = [
        t.number
        for t in study.trials
        if t.state.name == "FAIL" and not t.user_attrs.get("stop_reason")
    ]
    assert not unexplained, f"FAIL trials without a stop_reason: {unexplained}"
    for db in (root / "studies" / "regsearch.db", root / "mlruns" / "mlflow.db"):
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", db
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)  # not a registry URI an earlier test set
    experiment = client.get_experiment_by_name(study_name)
    assert experiment is not None
    running = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    assert not running, [r.data.tags for r in running]
    best = best_trial(study)
    assert best is not None
    where = [(t.number, t.state.name, t.value, t.user_attrs.get("val_loss")) for t in study.trials]
    try:
        version = client.get_model_version_by_alias(study_name, "champion")
    except Exception as exc:
        raise AssertionError(f"no @champion: {exc}; {where}; {study.user_attrs}") from None
    assert version.tags["trial"] == str(best.number), "@champion is not the best trial"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pytorch.load_model(f"models:/{study_name}@champion")
    import torch

    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_relaunch_leaves_a_whole_study(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    moments = ["registering", "last"] + ["random"] * (ROUNDS - 2)
    outcomes = []
    for round_, moment in enumerate(moments):
        study = f"faults-{round_}"
        args = ("run", "--study", study, "--n-trials", str(N_TRIALS), *SETTINGS)
        proc = start_regsearch(*args, cwd=tmp_path)
        outcomes.append(_kill_when(proc, tmp_path, study, moment, rng.uniform(0.5, _LAUNCH_S)))
        again = regsearch(*args, cwd=tmp_path, timeout=300)
        assert again.returncode == 0, (round_, moment, again.stderr[-2000:])
        _check_whole(tmp_path, study)
    assert outcomes.count("killed") >= ROUNDS - 2, outcomes


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: a real filesystem that the test can fill."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is made by mounting a small tmpfs, which needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write zeros until the filesystem says ENOSPC; the file to delete to free it again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 20))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_a_full_disk_stops_the_worker_in_one_line_and_the_next_launch_finishes(
    small_disk: Path,
) -> None:
    """Both stores (Optuna and MLflow SQLite files) and the checkpoints live on a disk that
    fills up mid-study: the worker stops with exit code 1 and one line, the cut-off trial is
    FAIL with its reason, and a relaunch with space again finishes a whole study."""
    n_trials = 2
    args = ("run", "--study", "full", "--n-trials", str(n_trials), *SETTINGS)
    args += ("--set", "train.epochs=15")  # a trial of a few seconds: the disk fills inside it
    proc = start_regsearch(*args, cwd=small_disk)
    deadline = time.monotonic() + 90

    def training() -> bool:  # a trial that has reported epochs, after a COMPLETE one
        trials = _trials(small_disk, "full")
        return any(t.state.name == "COMPLETE" for t in trials) and any(
            t.state.name == "RUNNING" and t.intermediate_values for t in trials
        )

    while not training():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    filler = _fill(small_disk)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("regsearch: error: storage failed: ")
    assert "disk is full" in stderr or "No space left" in stderr, stderr

    filler.unlink()
    again = regsearch(*args, cwd=small_disk, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    _check_whole(small_disk, "full", n_trials)
    study = optuna.load_study(study_name="full", storage=_storage(small_disk))
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed, "the trial the full disk cut off is FAIL (and retried)"
    reasons = [t.user_attrs.get("stop_reason", "") for t in failed]
    assert all(r.startswith(("storage_error: ", "lost: ")) for r in reasons), reasons
