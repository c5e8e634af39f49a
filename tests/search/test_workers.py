"""Several workers, PostgreSQL, dead workers and signals — real processes, real servers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.helpers import Launch, assert_runs_ended, regsearch, serving, start_regsearch

PG_ADMIN = os.environ.get("REGSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TINY = ("--set", "train.epochs=2", "--set", "search.pruner=none", "--quiet")


@pytest.fixture
def pg_database() -> Iterator[Callable[[], str]]:
    """Creates fresh PostgreSQL databases for one test and drops them afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server answers at {PG_ADMIN}: {str(exc).strip()[:120]}")
    created: list[str] = []
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")

    def create() -> str:
        name = f"regsearch_test_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{base}/{name}"

    with admin:
        try:
            yield create
        finally:
            for name in created:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: Callable[[], str]) -> str:
    return pg_database()


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).trials


@pytest.mark.postgres
@pytest.mark.slow
def test_four_workers_share_one_budget_on_postgres(tmp_path: Path, pg_url: str) -> None:
    """4 workers × 5 trials: exactly 20 finished trials, distinct numbers, every one with
    its own FINISHED MLflow run under one parent run."""
    proc = regsearch(
        "run",
        "--study",
        "pg",
        "--workers",
        "4",
        "--n-trials",
        "20",
        "--storage",
        pg_url,
        *TINY,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trials(pg_url, "pg")
    finished = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
    assert len(finished) == 20, Counter(t.state.name for t in trials)
    assert len({t.number for t in trials}) == len(trials)
    others = [t for t in trials if t not in finished]
    assert all(t.user_attrs.get("stop_reason") == "surplus" for t in others), "only overshoot"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("pg")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 20 and len(runs) == 21
    assert_runs_ended(runs)


@pytest.mark.postgres
def test_password_never_reaches_study_or_mlflow(tmp_path: Path, pg_url: str) -> None:
    """The storage URL is not stored in the study's config nor logged to MLflow."""
    secret_url = pg_url.replace("postgres@", "postgres:s3cr3t-pw@")  # trust auth ignores it
    proc = regsearch(
        "run", "--study", "pw", "--n-trials", "1", "--storage", secret_url, *TINY, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "s3cr3t" not in proc.stderr + proc.stdout
    study = optuna.load_study(study_name="pw", storage=pg_url)
    assert "s3cr3t" not in json.dumps(study.user_attrs)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for run in client.search_runs([client.get_experiment_by_name("pw").experiment_id]):
        assert "s3cr3t" not in json.dumps([run.data.params, run.data.tags])


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="reads /proc/PID/cmdline")
def test_process_title_hides_the_password_and_shows_the_trial(tmp_path: Path, pg_url: str) -> None:
    """What `ps` shows of a worker: never the password once regsearch has started (the
    interpreter's first milliseconds are before any of our code runs), then the trial. A real
    interpreter: a child forked from the tests' zygote never had the URL in its argv."""
    secret_url = pg_url.replace("postgres@", "postgres:s3cr3t-pw@")
    args = ("--study", "title", "--n-trials", "2", "--storage", secret_url, *TINY)
    proc = _start(tmp_path, *args, real=True)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    titles = []
    while proc.poll() is None:
        try:
            titles.append(cmdline.read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:  # exited between poll() and the read
            break
        time.sleep(0.02)
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    first = next((i for i, t in enumerate(titles) if t.startswith("regsearch")), None)
    assert first is not None, titles[:3]
    assert not [t for t in titles[first:] if "s3cr3t" in t]
    assert any(t.startswith("regsearch run title: trial ") for t in titles), titles[-3:]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_machines_share_learning_curves_through_one_artifact_folder(
    tmp_path: Path, pg_url: str
) -> None:
    """Two "machines" (working directories) on one PostgreSQL study: with a shared folder
    (variable on one, flag on the other) every curve lands there and reads back."""
    from optuna.artifacts import FileSystemArtifactStore

    shared = tmp_path / "shared-artifacts"
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    machine_a.mkdir()
    machine_b.mkdir()
    common = ("--study", "curves", "--storage", pg_url, *TINY)
    first = regsearch(
        "run", "--n-trials", "1", *common, cwd=machine_a, env={"REGSEARCH_ARTIFACTS": str(shared)}
    )
    assert first.returncode == 0, first.stderr[-2000:]
    second = regsearch("run", "--n-trials", "2", "--artifacts", str(shared), *common, cwd=machine_b)
    assert second.returncode == 0, second.stderr[-2000:]

    study = optuna.load_study(study_name="curves", storage=pg_url)
    store = FileSystemArtifactStore(str(shared))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        (meta,) = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        with store.open_reader(meta.artifact_id) as reader:
            assert reader.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not (machine_a / "studies").exists() and not (machine_b / "studies").exists()


@pytest.mark.slow
def test_four_local_workers_on_sqlite_do_not_lock(tmp_path: Path) -> None:
    proc = regsearch(
        "run",
        "--study",
        "lite",
        "--workers",
        "4",
        "--n-trials",
        "4",
        *TINY,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "locked" not in proc.stderr
    trials = _trials(f"sqlite:///{tmp_path}/studies/regsearch.db", "lite")
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4


def _start(tmp_path: Path, *args: str, real: bool = False) -> Launch:
    return start_regsearch("run", *args, cwd=tmp_path, real=real)


# A worker's death is noticed within seconds; every epoch of a trial is trained.
FAST_STALE = (
    "--set",
    "search.heartbeat_interval=1",
    "--set",
    "search.grace_period=2",
    "--set",
    "early_stopping.patience=null",
)


def _running_with_an_epoch(storage: str, study: str, phase: str | None = None) -> int | None:
    """The number of a RUNNING trial (of `phase`, if given) that has reported an epoch, read
    from the SQLite file read-only: polling through Optuna would create the file and its
    schema if the launch has not yet, racing the launch's own creation of it."""
    path = Path(storage.removeprefix("sqlite:///"))
    if not path.exists():
        return None
    in_phase = (
        " AND EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id "
        "AND a.key = 'phase' AND a.value_json = ?)"
        if phase is not None
        else ""
    )
    args = (study, json.dumps(phase)) if phase is not None else (study,)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as conn:
        row = conn.execute(
            "SELECT t.number FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = ? AND t.state = 'RUNNING' AND EXISTS "
            "(SELECT 1 FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id)"
            f"{in_phase} ORDER BY t.number LIMIT 1",
            args,
        ).fetchone()
    return None if row is None else int(row[0])


def _wait_for_running_trial(
    storage: str, study: str, timeout: float = 120, proc: Launch | None = None
) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the worker ended (exit {proc.returncode}): {err[-2000:]}")
        try:
            number = _running_with_an_epoch(storage, study)
            if number is not None:
                return _trials(storage, study)[number]
        except sqlite3.Error as exc:  # the schema is not created yet
            last_error = exc
        time.sleep(0.3)
    raise AssertionError(f"no trial started training in time (last: {last_error!r})")


@pytest.mark.slow
def test_sigterm_ends_the_running_trial_cleanly(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    proc = _start(
        tmp_path,
        "--study",
        "term",
        "--n-trials",
        "3",
        "--set",
        "train.epochs=200",
        "--set",
        "early_stopping.patience=null",
        "--quiet",
    )
    running = _wait_for_running_trial(storage, "term", proc=proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "regsearch: interrupted; finished trials are kept, and the same command resumes the study"
    )
    trial = _trials(storage, "term")[running.number]
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["stop_reason"] == "interrupted"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    parent = optuna.load_study(study_name="term", storage=storage).user_attrs[
        "mlflow_parent_run_id"
    ]
    assert client.get_run(parent).info.status == "KILLED"


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_retried_with_the_same_params(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    proc = _start(
        tmp_path,
        "--study",
        "kill",
        "--n-trials",
        "2",
        "--set",
        "train.epochs=4",
        *FAST_STALE,
        "--set",
        "search.pruner=none",
        "--quiet",
    )
    victim = _wait_for_running_trial(storage, "kill")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(3)  # let the heartbeat go stale
    resumed = regsearch("worker", "kill", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = _trials(storage, "kill")
    assert trials[victim.number].state.name == "FAIL"
    assert not [t for t in trials if t.state.name == "RUNNING"]
    retried_number = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in trials if retried_number(t) == victim.number]
    assert retried and retried[0].params == victim.params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"


@pytest.mark.slow
def test_a_killed_worker_s_last_trial_is_retried_and_the_study_finishes(tmp_path: Path) -> None:
    """The budget's last trial: the relaunch (right away, inside the grace period) must not
    count the dead RUNNING trial as done, but wait for it to go stale and retry it."""
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    proc = _start(
        tmp_path,
        "--study",
        "last",
        "--n-trials",
        "1",
        "--set",
        "train.epochs=100",  # ~8 s of training: long enough to be caught RUNNING and killed
        *FAST_STALE,
        "--quiet",
    )
    victim = _wait_for_running_trial(storage, "last", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = regsearch(
        "run", "--study", "last", "--set", "train.epochs=2", cwd=tmp_path, timeout=120
    )
    # train.epochs differs from the stored 100: resume by name refuses it, naming the key...
    assert resumed.returncode == 2 and "train.epochs" in resumed.stderr
    resumed = regsearch("run", "--study", "last", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = _trials(storage, "last")
    assert trials[victim.number].state.name == "FAIL"
    assert [t.state.name for t in trials].count("COMPLETE") == 1
    assert not [t for t in trials if t.state.name == "RUNNING"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    study = optuna.load_study(study_name="last", storage=storage)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_log_to_an_mlflow_server_on_postgres(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    """The many-machine setup on one machine: Optuna on PostgreSQL, an `mlflow server` on a
    PostgreSQL backend with a shared artifact destination, two workers logging over HTTP."""

    storage, backend = pg_database(), pg_database()
    with serving(
        lambda port: [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            (tmp_path / "shared-artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ready="/health",
        what="mlflow server",
        timeout=120,
    ) as (uri, _):
        proc = regsearch(
            "run",
            "--study",
            "remote",
            "--workers",
            "2",
            "--n-trials",
            "4",
            "--storage",
            storage,
            "--tracking-uri",
            uri,
            *TINY,
            cwd=tmp_path,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = MlflowClient(uri, registry_uri=uri)  # not the process-wide registry URI
        experiment = client.get_experiment_by_name("remote")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        assert len(runs) == 1 + 4
        assert_runs_ended(runs)
        version = client.get_model_version_by_alias("remote", "champion")
        assert "test_accuracy" in version.tags
        assert any((tmp_path / "shared-artifacts").rglob("MLmodel")), "artifacts went to the server"


_SMALL_CONFIRMED = (
    "--n-trials",
    "3",
    "--set",
    "train.epochs=12",
    "--set",
    "early_stopping.patience=null",
    "--set",
    "search.pruner=none",
    "--set",
    "search.confirm={top_k: 1, seeds: 2, ablation: true}",
    "--set",
    "space={dropout: {type: float, low: 0.1, high: 0.5}, weight_decay: 0.001, "
    "aug_strength: 0.0, mixup_alpha: 0.0, label_smoothing: 0.0}",
)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["baseline", "confirm", "ablation"])
def test_sigterm_in_any_phase_then_a_relaunch_loses_nothing(phase: str, tmp_path: Path) -> None:
    """Ctrl+C / SIGTERM during the baseline, a confirm retrain or an ablation retrain: the
    trial ends FAIL "interrupted", and the relaunch reruns it with the same params, phase and
    seed, so the study ends as an uninterrupted one does: every retrain of the plan done, the
    champion compared over the same seeds as the others, with a baseline."""
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    proc = start_regsearch("run", "--study", "t", *_SMALL_CONFIRMED, "--quiet", cwd=tmp_path,
                           confirm=True)  # fmt: skip
    deadline = time.monotonic() + 240
    victim = None
    while victim is None:
        assert proc.poll() is None, f"the launch ended before a {phase} trial ran"
        assert time.monotonic() < deadline, f"no {phase} trial caught running"
        with contextlib.suppress(sqlite3.Error):
            victim = _running_with_an_epoch(storage, "t", phase)
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    interrupted = _trials(storage, "t")[victim]
    assert interrupted.state.name == "FAIL"
    assert interrupted.user_attrs["stop_reason"] == "interrupted"
    resumed = regsearch("run", "--study", "t", "--quiet", cwd=tmp_path, timeout=400, confirm=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = _trials(storage, "t")
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    retried_number = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    (retry,) = [t for t in trials if retried_number(t) == victim]
    assert retry.state.name == "COMPLETE" and retry.params == interrupted.params
    for key in ("phase", "seed", "source", "ablate"):
        assert retry.user_attrs.get(key) == interrupted.user_attrs.get(key), key
    best = json.loads(regsearch("best", "t", "--json", cwd=tmp_path).stdout)
    assert best["confirm"] == {"complete": True, "pending": 0, "started": True}
    assert best["baseline"] is not None and best["baseline"]["val"]["n"] == 2
    assert best["champion"]["val"]["n"] == 2
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert sum(t.user_attrs.get("phase") in ("search", "baseline") for t in done) == 3
    # top_k 1 and the baseline, 2 seeds each; on digits' 360 validation images a search
    # configuration tied with the best joins them (the sampler is not seeded here).
    raced = {t.user_attrs.get("source") for t in done if t.user_attrs.get("phase") == "confirm"}
    assert len(raced) in (2, 3)
    assert sum(t.user_attrs.get("phase") == "confirm" for t in done) == 2 * len(raced)
    ablated = sum(t.user_attrs.get("phase") == "ablation" for t in done)
    # Racing may settle a regularizer after one seed: each ran its contribution's seeds.
    assert ablated == sum(c["n"] for c in best["contributions"].values()) and ablated > 0
