"""Optuna storage: SQLite files in WAL mode, read-only opening, one-line errors without
passwords, and URL redaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from search.core.errors import UserError
from search.core.urls import redact_url
from search.study.storage import DEFAULT_STORAGE, open_storage, resolve_storage_url
from search.study.studyfile import load_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def _storage_error(url: str, **kwargs: object) -> str:
    with pytest.raises(UserError) as exc:
        open_storage(url, **kwargs)  # type: ignore[arg-type]
    message = str(exc.value)
    assert "\n" not in message
    # `from None`: no chained exception that a traceback could print with the URL in it.
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__
    return message


# --------------------------------------------------------------------------- sqlite


@pytest.mark.parametrize("relative", ["studies/regsearch.db", "a/b/c/x.db", "x.db"])
def test_sqlite_file_is_created_in_wal_mode(tmp_path: Path, relative: str) -> None:
    storage = open_storage(f"sqlite:///{relative}")
    path = tmp_path / relative  # relative to the working directory, which is tmp_path
    assert path.is_file()
    assert _journal_mode(path) == "wal"
    optuna.create_study(study_name="here", storage=storage)
    assert optuna.get_all_study_names(f"sqlite:///{path}") == ["here"], "that file holds it"


def test_sqlite_connections_commit_without_an_fsync_per_transaction(tmp_path: Path) -> None:
    # synchronous=NORMAL (1) in WAL mode: each trial.report skips an fsync, the file stays safe.
    storage = open_storage("sqlite:///studies/s.db")
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_launches_that_create_a_new_sqlite_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Two launches on a fresh project at the same moment (or a launch and something reading
    the study) both create the schema: the slower one used to fail on a table or version row
    the other had just made, or on the switch to WAL (60 of 80 opens, 4 at a time)."""
    import threading

    for round_ in range(8):
        url = f"sqlite:///{tmp_path}/r{round_}/regsearch.db"
        start = threading.Barrier(4)
        errors: list[str] = []

        def launch(
            url: str = url, start: threading.Barrier = start, errors: list[str] = errors
        ) -> None:
            start.wait()
            try:
                optuna.create_study(study_name="s", storage=open_storage(url), load_if_exists=True)
            except Exception as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=launch) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))] == ["s"]


def test_an_enqueued_trial_is_claimed_by_one_local_worker_only(tmp_path: Path) -> None:
    """Four workers on one SQLite file race for 100 WAITING trials (the baseline recipe, a
    retry, a confirm retrain are all enqueued): each is claimed exactly once. With Optuna's
    own claim, which relies on row locks SQLite lacks, about a third were claimed twice and
    trained twice; the second worker then crashed telling an already COMPLETE trial."""
    import threading
    from collections import Counter

    url = f"sqlite:///{tmp_path}/race.db"
    study = optuna.create_study(storage=open_storage(url), study_name="race")
    for x in range(100):
        study.enqueue_trial({"x": float(x)})
    claims: Counter[int] = Counter()
    start = threading.Barrier(4)

    def worker() -> None:
        storage = open_storage(url)
        study_id = storage.get_study_id_from_name("race")
        start.wait()
        while waiting := storage.get_all_trials(
            study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,)
        ):
            for trial in waiting[:3]:  # the oldest first, as `study.ask` takes them
                if storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.RUNNING):
                    claims[trial.number] += 1
                    break

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(claims) == list(range(100))
    assert [n for n, count in claims.items() if count > 1] == []
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(running) == 100 and all(t.datetime_start is not None for t in running)


def test_sqlite_absolute_path_and_query(tmp_path: Path) -> None:
    path = tmp_path / "abs" / "s.db"
    open_storage(f"sqlite:///{path}?timeout=5")
    assert path.is_file()
    assert _journal_mode(path) == "wal"
    assert not (tmp_path / "abs" / "s.db?timeout=5").exists()


def test_default_storage_lands_in_the_working_directory(tmp_path: Path) -> None:
    open_storage(DEFAULT_STORAGE)
    assert (tmp_path / "studies" / "regsearch.db").is_file()


def test_studies_persist_across_openings(tmp_path: Path) -> None:
    url = "sqlite:///studies/s.db"
    study = optuna.create_study(study_name="kept", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    reopened = open_storage(url, create=False)
    again = optuna.load_study(study_name="kept", storage=reopened)
    assert len(again.trials) == 2
    assert _journal_mode(tmp_path / "studies" / "s.db") == "wal"


def test_create_false_refuses_a_missing_file(tmp_path: Path) -> None:
    message = _storage_error("sqlite:///studies/typo.db", create=False)
    assert "typo.db" in message
    assert not (tmp_path / "studies" / "typo.db").exists()
    assert not (tmp_path / "studies").exists()


def test_create_false_opens_an_existing_file(tmp_path: Path) -> None:
    optuna.create_study(study_name="kept", storage=open_storage("sqlite:///s.db"))
    storage = open_storage("sqlite:///s.db", create=False)
    assert optuna.get_all_study_names(storage) == ["kept"]


def test_in_memory_sqlite_creates_no_file(tmp_path: Path) -> None:
    storage = open_storage("sqlite:///:memory:")
    optuna.create_study(storage=storage).optimize(lambda t: 0.0, n_trials=1)
    assert list(tmp_path.iterdir()) == []


def test_sqlite_under_a_regular_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    message = _storage_error("sqlite:///afile/x.db")
    assert message.startswith("cannot open storage sqlite:///afile/x.db")


# --------------------------------------------------------------------------- heartbeats


def test_heartbeat_from_search_config() -> None:
    search = load_config(overrides=["search.heartbeat_interval=10", "search.max_retry=1"]).search
    storage = open_storage("sqlite:///s.db", search)
    assert storage.heartbeat_interval == 10
    assert storage.grace_period == 40  # 4 × the interval unless given
    assert callable(storage.failed_trial_callback)  # retries (see the stale-trial test)


def test_heartbeat_grace_period_and_off() -> None:
    search = load_config(overrides=["search.grace_period=7"]).search
    assert open_storage("sqlite:///s.db", search).grace_period == 7
    search = load_config(overrides=["search.heartbeat_interval=null"]).search
    storage = open_storage("sqlite:///s.db", search)
    assert storage.heartbeat_interval is None
    assert open_storage("sqlite:///s.db").heartbeat_interval is None


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:secret@127.0.0.1:1/x",
        "postgresql+psycopg://u@127.0.0.1:1/x?password=secret",
        "postgresql+nosuchdriver://u:secret@127.0.0.1:1/x",
        "mysql+nosuchdriver://admin:secret@127.0.0.1:1/x",
    ],
)
def test_unreachable_storage_error_hides_the_password(url: str) -> None:
    message = _storage_error(url)
    assert "secret" not in message
    assert message.startswith("cannot open storage ")
    assert "127.0.0.1:1/x" in message
    assert "***" in message


def test_a_missing_database_driver_names_what_to_install() -> None:
    message = _storage_error("postgresql+pg8000://u:secret@127.0.0.1:1/x")
    assert "secret" not in message
    assert "its database driver is not installed" in message
    assert "pip install 'psycopg[binary]'" in message


def test_unparsable_url() -> None:
    message = _storage_error("not a url")
    assert message.startswith("cannot open storage not a url:")


# --------------------------------------------------------------------------- url resolution


def test_storage_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_storage_url() == DEFAULT_STORAGE
    assert resolve_storage_url(None, "sqlite:///file.db") == "sqlite:///file.db"
    monkeypatch.setenv("REGSEARCH_STORAGE", "sqlite:///env.db")
    assert resolve_storage_url(None, "sqlite:///file.db") == "sqlite:///env.db"
    assert resolve_storage_url("sqlite:///flag.db", "sqlite:///file.db") == "sqlite:///flag.db"


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://optuna:s3cr3t@db.example.com:5432/studies",
            "postgresql+psycopg://optuna:***@db.example.com:5432/studies",
        ),
        ("postgresql://u:secret@host/db", "postgresql://u:***@host/db"),
        (
            "mysql+pymysql://root:hunter2@localhost/optuna",
            "mysql+pymysql://root:***@localhost/optuna",
        ),
        ("https://alice:tok3n@mlflow.example.com/", "https://alice:***@mlflow.example.com/"),
        ("http://bob:pa:ss/w@127.0.0.1:5000", "http://bob:***@127.0.0.1:5000"),
        ("postgresql://:onlypw@host/db", "postgresql://:***@host/db"),
        (
            "postgresql://u@host/db?sslmode=require&password=secret",
            "postgresql://u@host/db?sslmode=require&password=***",
        ),
        ("postgresql://u@host/db?password=secret", "postgresql://u@host/db?password=***"),
        ("https://host/api?TOKEN=abc&x=1", "https://host/api?TOKEN=***&x=1"),
        # A password with spaces (unencoded) and the sslpassword query key.
        ("postgresql://u:pass word 2@host/db", "postgresql://u:***@host/db"),
        (
            "postgresql://u@host/db?sslmode=verify-full&sslpassword=k3y",
            "postgresql://u@host/db?sslmode=verify-full&sslpassword=***",
        ),
        (
            "error connecting to postgresql://a:one@h1/db, then mysql://b:two@h2/db",
            "error connecting to postgresql://a:***@h1/db, then mysql://b:***@h2/db",
        ),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///studies/regsearch.db",
        "sqlite:////abs/path/x.db",
        "sqlite:///:memory:",
        "postgresql://u@host:5432/db",
        "postgresql://host:5432/db?sslmode=require",
        "http://localhost:5000",
        "https://mlflow.example.com/#/experiments/1",
        "file:///tmp/mlruns",
        "mlruns",
    ],
)
def test_redact_url_leaves_password_less_urls_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_an_optuna_store_whose_creation_was_cut_off_is_finished_on_the_next_open(
    tmp_path: Path,
) -> None:
    """A kill while Optuna creates its schema leaves some tables and no version row (seen by
    killing real launches: 12 of 13 tables). The next open creates the rest and works."""
    from optuna.storages._rdb import models
    from sqlalchemy import create_engine

    path = tmp_path / "half.db"
    engine = create_engine(f"sqlite:///{path}")
    some = [t for t in models.BaseModel.metadata.sorted_tables if t.name != "version_info"][:5]
    models.BaseModel.metadata.create_all(engine, tables=some)
    engine.dispose()

    storage = open_storage(f"sqlite:///{path}")
    study = optuna.create_study(storage=storage, study_name="whole")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="whole", storage=storage).trials) == 2
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_stale_trial_is_failed_with_its_reason_and_retried_without_its_outcome(
    tmp_path: Path,
) -> None:
    import time

    from search.config.schema import SearchConfig
    from search.study.storage import LOST, fail_stale_trials

    search = SearchConfig(heartbeat_interval=1, grace_period=1)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", search)
    study = optuna.create_study(storage=storage, study_name="stale")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("phase", "confirm")
    trial.set_user_attr("stop_reason", "max_epochs")
    storage.record_heartbeat(trial._trial_id)  # then its worker dies
    time.sleep(2.2)
    assert fail_stale_trials(study) == [trial.number]
    lost, retry = study.get_trials()
    assert lost.state.name == "FAIL" and lost.user_attrs["stop_reason"].startswith(f"{LOST}: ")
    assert retry.state.name == "WAITING" and retry.params == lost.params
    assert retry.user_attrs == {"phase": "confirm"}  # what it is, not how the lost one ended


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_retried(
    tmp_path: Path,
) -> None:
    """Optuna's stale check needs a heartbeat row: a worker killed between taking a trial and
    its first beat left it RUNNING for ever, and a study waiting for it never finished."""
    import time

    from search.config.schema import SearchConfig
    from search.study.storage import LOST, fail_stale_trials

    search = SearchConfig(heartbeat_interval=1, grace_period=1)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", search)
    study = optuna.create_study(storage=storage, study_name="unbeaten")
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    dead = study.ask(x)  # no heartbeat ever: its worker was killed right here
    time.sleep(1.5)
    alive = study.ask(x)  # just taken: its first beat may not be written yet
    assert fail_stale_trials(study) == [dead.number]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[dead.number].state.name == "FAIL"
    assert trials[dead.number].user_attrs["stop_reason"].startswith(f"{LOST}: ")
    assert trials[alive.number].state.name == "RUNNING"
    retry = [t for t in trials.values() if t.state.name == "WAITING"]
    assert [t.params for t in retry] == [trials[dead.number].params]


def test_a_launch_waiting_for_a_trial_running_elsewhere_says_what_it_waits_for(
    tmp_path: Path,
) -> None:
    """The budget's last trial is RUNNING in a dead worker: the launch waits out the grace
    period, then retries it — and says so once, rather than sitting silent."""
    from search.config.schema import SearchConfig
    from search.run.runner import _optimize_until_done

    search = SearchConfig(heartbeat_interval=1, grace_period=2)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", search)
    study = optuna.create_study(storage=storage, study_name="waits")
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    dead = study.ask(x)  # its worker was killed: no heartbeat will come
    said: list[str] = []
    _optimize_until_done(
        study,
        lambda trial: trial.suggest_float("x", 0, 1),
        n_trials=1,
        timeout=60,
        callbacks=[],
        max_consecutive_failures=3,
        say=said.append,
    )
    assert said == [
        f"waiting for trial {dead.number}, running elsewhere: a live worker finishes it; a dead "
        "worker's trial is failed and retried here once its heartbeat is stale (at most 4 s)"
    ]
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "COMPLETE"], states


def test_a_lost_trial_whose_retry_was_never_enqueued_gets_it_once(tmp_path: Path) -> None:
    """The process that failed a stale trial was killed before enqueueing its retry: the next
    stale check enqueues it (once, however many workers check), and not past `max_retry`."""
    from search.config.schema import SearchConfig
    from search.study.storage import LOST, fail_stale_trials

    search = SearchConfig(heartbeat_interval=1, grace_period=1, max_retry=1)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", search)
    study = optuna.create_study(storage=storage, study_name="orphan")
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    lost = study.ask(x)
    lost.set_user_attr("phase", "confirm")
    lost.set_user_attr("seed", 1001)
    # The first half of `fail_and_retry`, then the kill:
    storage.set_trial_user_attr(lost._trial_id, "stop_reason", f"{LOST}: no heartbeat")
    storage.set_trial_state_values(lost._trial_id, state=optuna.trial.TrialState.FAIL)
    assert fail_stale_trials(study) == [] and fail_stale_trials(study) == []
    waiting = [t for t in study.get_trials() if t.state.name == "WAITING"]
    assert len(waiting) == 1
    assert waiting[0].params == study.trials[lost.number].params
    assert waiting[0].user_attrs == {"phase": "confirm", "seed": 1001}
    # Its retry is lost the same way: max_retry=1 is spent, nothing more is enqueued.
    retry = study.ask()
    assert retry.number == waiting[0].number
    storage.set_trial_user_attr(retry._trial_id, "stop_reason", f"{LOST}: no heartbeat")
    storage.set_trial_state_values(retry._trial_id, state=optuna.trial.TrialState.FAIL)
    assert fail_stale_trials(study) == []
    assert not [t for t in study.get_trials() if t.state.name == "WAITING"]
    # A trial that failed for its own reasons (an error) is not retried by this.
    failed = study.ask(x)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    fail_stale_trials(study)
    assert not [t for t in study.get_trials() if t.state.name == "WAITING"]
