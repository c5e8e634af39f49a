"""Optuna storage: the URL (flag, env, file, default), an `RDBStorage` with heartbeats (SQLite
set up for a few concurrent local workers by `search.study.sqlite_setup`), stale trials, and what a
storage error says."""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import hashlib
import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.core.errors import UserError, first_line
from search.core.records import (
    BEST_EPOCH_ATTR,
    BEST_VALUE_ATTR,
    CHAMPION_ERROR_ATTR,
    EPOCHS_TRAINED_ATTR,
    RUN_ID_ATTR,
    STOP_REASON_ATTR,
    TIEBREAK_ATTR,
    TRACKING_ERROR,
    TRAIN_ACCURACY_ATTR,
    TRAIN_IMAGES_ATTR,
    VAL_ACCURACY_ATTR,
)
from search.core.urls import redact_url, sqlite_path
from search.study.sqlite_setup import SQLITE_BUSY_TIMEOUT_S, prepare_sqlite, sync_normal

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.config.schema import SearchConfig

__all__ = [
    "DEFAULT_STORAGE",
    "LOST",
    "artifact_dir",
    "describe_storage_error",
    "enqueue_retry",
    "fail_and_retry",
    "fail_stale_trials",
    "make_artifact_dir",
    "open_existing",
    "open_storage",
    "resolve_storage_url",
    "storage_error_of",
    "study_lock",
    "use_heartbeats",
]

_log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///studies/regsearch.db"
STORAGE_ENV = "REGSEARCH_STORAGE"
ARTIFACTS_ENV = "REGSEARCH_ARTIFACTS"


def resolve_storage_url(flag: str | None = None, config_value: str | None = None) -> str:
    """`--storage`, then `$REGSEARCH_STORAGE`, then the study file, then the default. An
    in-memory SQLite database is refused: the study would vanish with the process, after its
    models were registered in MLflow."""
    url = flag or os.environ.get(STORAGE_ENV) or config_value or DEFAULT_STORAGE
    if url.split("?", 1)[0].split("+", 1)[0].startswith("sqlite:") and sqlite_path(url) is None:
        raise UserError(
            f"storage {redact_url(url)}: an in-memory database keeps nothing after this "
            f"process; use sqlite:///PATH.db (the default is {DEFAULT_STORAGE})"
        )
    return url


def artifact_dir(url: str, flag: str | Path | None = None) -> Path:
    """Where Optuna artifacts (learning-curve figures) of this storage live: `--artifacts`,
    then `$REGSEARCH_ARTIFACTS`, then beside a SQLite file, else `studies/artifacts` on this
    machine (workers on several machines need a shared folder: the flag or the variable)."""
    chosen = flag or os.environ.get(ARTIFACTS_ENV)
    if chosen:
        return Path(chosen)
    path = sqlite_path(url)
    return (path.parent if path is not None else Path("studies")) / "artifacts"


def make_artifact_dir(url: str, flag: str | Path | None = None) -> Path:
    """`artifact_dir`, created: one line naming `--artifacts` when it cannot be a folder."""
    folder = artifact_dir(url, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        source = "--artifacts" if flag else (ARTIFACTS_ENV if os.environ.get(ARTIFACTS_ENV) else "")
        what = f"{source}: " if source else "artifact folder "
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        why = (
            f"{blocker} is not a folder"
            if blocker is not None and not blocker.is_dir()
            else exc.strerror or type(exc).__name__
        )
        raise UserError(f"{what}cannot create the folder {folder} ({why})") from None
    return folder


def open_storage(
    url: str,
    search: SearchConfig | None = None,
    *,
    create: bool = True,
) -> optuna.storages.RDBStorage:
    """An `RDBStorage` (the only Optuna storage with heartbeats); `UserError` if unreachable.

    `create=False` refuses to create a new SQLite file (for read-only commands such as
    `status`, so that a typo in a path does not leave an empty database behind).
    """
    import optuna

    engine_kwargs: dict[str, Any] = {}
    db_file = sqlite_path(url)
    if db_file is not None:
        if not create and not db_file.exists():
            raise UserError(f"no study storage at {db_file} (run `regsearch run` first)")
        try:
            prepare_sqlite(db_file)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open storage {redact_url(url)}: {exc}") from None
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs["pool_pre_ping"] = True

    try:
        storage = _create_storage(url, engine_kwargs, _heartbeats(search))
    except optuna.exceptions.StorageInternalError as exc:
        cause = exc.__cause__ or exc
        raise UserError(f"cannot open storage {redact_url(url)}: {first_line(cause)}") from None
    except ImportError:  # Optuna's "Failed to import DB access module …"
        raise UserError(_missing_driver(url)) from None
    except Exception as exc:  # SQLAlchemy's ArgumentError, NoSuchModuleError, OperationalError…
        raise UserError(f"cannot open storage {redact_url(url)}: {first_line(exc)}") from None
    if db_file is not None:
        sync_normal(storage)
    return storage


def open_existing(flag_or_url: str | None = None) -> optuna.storages.RDBStorage:
    """The storage of `--storage` (or `$REGSEARCH_STORAGE`, else the default: see
    `resolve_storage_url`), which must exist already: for commands that read or join a study."""
    return open_storage(resolve_storage_url(flag_or_url), create=False)


def _heartbeats(search: SearchConfig | None) -> dict[str, Any]:
    """The `RDBStorage` heartbeat arguments of `search` (none without a heartbeat interval)."""
    if search is None or not search.heartbeat_interval:
        return {}
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=search.max_retry)
    return {
        "heartbeat_interval": search.heartbeat_interval,
        "grace_period": search.grace_period or 4 * search.heartbeat_interval,
        "heartbeat_stale_trial_callback": _retry_without_outcome(retry),
    }


def use_heartbeats(storage: optuna.storages.RDBStorage, search: SearchConfig) -> None:
    """Give a storage opened before the study's config was read (`open_existing`) the
    heartbeats `open_storage(url, search)` would have given it."""
    settings = _heartbeats(search)
    storage.heartbeat_interval = settings.get("heartbeat_interval")
    storage.grace_period = settings.get("grace_period")
    callback = settings.get("heartbeat_stale_trial_callback")
    storage.heartbeat_stale_trial_callback = storage.failed_trial_callback = callback


def _create_storage(
    url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any], *, attempts: int = 5
) -> optuna.storages.RDBStorage:
    """Our `RDBStorage` on `url`. Opening a database that holds no schema yet creates it, and
    two processes doing that at once (two launches on a fresh project, a test polling one)
    collide: the slower one finds a table or the schema's version row already there, or (SQLite)
    a lock it cannot wait for, and fails. The other one is creating the schema, so it opens the
    storage again, a few times."""
    import optuna

    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.x
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _storage_class()(url, engine_kwargs=engine_kwargs, **heartbeat)
        except Exception as exc:
            if attempt == attempts or not _lost_creation_race(exc):
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _lost_creation_race(exc: BaseException) -> bool:
    """Whether `exc` (or its cause) is another process having created the schema first."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:  # a chain may loop back on itself
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return any(
        isinstance(e, IntegrityError)
        or (
            isinstance(e, OperationalError | ProgrammingError)
            and any(m in str(e) for m in ("already exists", "database is locked"))
        )
        for e in chain
    )


@functools.cache
def _storage_class() -> type[optuna.storages.RDBStorage]:
    """Optuna's `RDBStorage` with two repairs. (A class made on first use: optuna is imported
    lazily.)

    - A WAITING trial (the baseline recipe, a retry, a confirm retrain) is claimed by one
      worker only. Optuna reads the trial with `SELECT … FOR UPDATE`, then writes RUNNING;
      SQLite has no row locks, so two local workers could both read WAITING and both train the
      trial (74 of 200 enqueued trials claimed twice by 4 threads, measured); the second then
      crashed with "Cannot tell a COMPLETE trial". The claim is now one conditional UPDATE.
    - The heartbeat survives a storage outage. Optuna's heartbeat thread dies (with a
      traceback on stderr) at the first failed write, and the trial then goes stale while it
      still trains; here a failed beat is one warning line, and the next beat tries again.
    - Stale trials are failed by regsearch's `fail_stale_trials` alone (the runner calls it
      before each trial): Optuna's own pass inside `study.optimize` would fail them without a
      stop reason and enqueue their retries outside `study_lock`, where a kill between the
      two writes loses the retry.
    """
    from datetime import datetime

    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    class Storage(RDBStorage):
        def set_trial_state_values(
            self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
        ) -> bool:
            if state != TrialState.RUNNING or values is not None:
                return bool(super().set_trial_state_values(trial_id, state, values))
            from optuna.storages._rdb.models import TrialModel
            from optuna.storages._rdb.storage import _create_scoped_session

            with _create_scoped_session(self.scoped_session) as session:
                claimed = (
                    session.query(TrialModel)
                    .filter(TrialModel.trial_id == trial_id, TrialModel.state == TrialState.WAITING)
                    .update({TrialModel.state: TrialState.RUNNING}, synchronize_session=False)
                )
                if claimed == 1:  # in the same transaction, which holds the write lock now
                    trial = TrialModel.find_or_raise_by_id(trial_id, session)
                    trial.datetime_start = datetime.now()
            return bool(claimed == 1)

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            return []  # `fail_stale_trials` below finds them, before every trial

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                super().record_heartbeat(trial_id)
            except Exception as exc:
                _log.warning("trial heartbeat not recorded: %s", describe_storage_error(exc))

    return Storage


def _missing_driver(url: str) -> str:
    """One line naming what to install when the URL's database driver is missing."""
    scheme = url.split("://", 1)[0]
    dialect, _, driver = scheme.partition("+")
    if dialect in ("postgresql", "postgres"):
        fix = (
            "pip install 'psycopg[binary]' (psycopg 3; in the checkout: pip install -e "
            "'.[postgres]') and use a postgresql+psycopg:// URL"
            if driver in ("", "psycopg")
            else f"install the {driver!r} package, or pip install 'psycopg[binary]' and "
            "use postgresql+psycopg://"
        )
    else:
        fix = f"install the Python driver for {scheme}:// (SQLAlchemy names it in its docs)"
    return f"cannot open storage {redact_url(url)}: its database driver is not installed; {fix}"


@contextlib.contextmanager
def study_lock(study: optuna.Study, name: str) -> Iterator[None]:
    """Hold a lock named `name` for the study across every worker that shares its storage:
    a file lock beside a SQLite file (workers on one machine), a PostgreSQL advisory lock
    (any machine). Read-then-write steps such as moving the champion alias run under it;
    other storages get no lock."""
    backend = getattr(study._storage, "_backend", study._storage)
    engine: Any = getattr(backend, "engine", None)
    url: Any = getattr(engine, "url", None)
    kind = url.get_backend_name() if url is not None else None
    database = url.database if url is not None else None
    if kind == "sqlite" and database not in (None, "", ":memory:"):
        import fcntl

        path = Path(database)
        with open(path.with_name(f"{path.name}.{name}.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif kind == "postgresql":
        from sqlalchemy import text

        digest = hashlib.sha256(f"regsearch:{study.study_name}:{name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        yield


# What ends a trial whose worker stopped sending heartbeats (`fail_stale_trials`).
LOST = "lost"
_RETRY_LOCK = "retry"
# User attrs that describe a trial's outcome: a retried trial starts without them (it keeps
# the rest, e.g. a phase or a seed that made it what it is).
OUTCOME_ATTRS = frozenset(
    {
        STOP_REASON_ATTR,
        RUN_ID_ATTR,
        EPOCHS_TRAINED_ATTR,
        BEST_EPOCH_ATTR,
        TRAIN_ACCURACY_ATTR,
        VAL_ACCURACY_ATTR,
        TIEBREAK_ATTR,
        TRACKING_ERROR,
        CHAMPION_ERROR_ATTR,
        BEST_VALUE_ATTR,  # a pruned trial's best epoch value
        TRAIN_IMAGES_ATTR,  # what a refit trained on
    }
)


def _retry_without_outcome(
    retry: Callable[[optuna.Study, FrozenTrial], None],
) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's retry callback copies every user and system attr into the retried trial; the
    outcome of the lost attempt (its stop reason, its MLflow run, its learning-curve figure,
    which `optuna.artifacts` records as an `artifacts:<id>` system attr) is not the retry's."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in OUTCOME_ATTRS}
        trial._system_attrs = {
            k: v for k, v in trial.system_attrs.items() if not k.startswith("artifacts:")
        }
        retry(study, trial)

    callback.max_retry = getattr(retry, "_max_retry", None)  # type: ignore[attr-defined]
    return callback


def fail_and_retry(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """End a RUNNING trial FAIL with `reason` as its `stop_reason` and enqueue its retry with
    the storage's stale-trial callback (same params, same phase). False when another worker
    ended it first: then it is theirs to retry."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    # Under the lock `_restore_lost_retries` takes: it never sees this FAIL before its retry.
    with study_lock(study, _RETRY_LOCK):
        try:
            storage.set_trial_user_attr(trial_id, STOP_REASON_ATTR, reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return False
        except UpdateFinishedTrialError:
            return False
        enqueue_retry(study, trial_id)
    return True


def _lost_without_retry(study: optuna.Study) -> list[FrozenTrial]:
    """Trials failed as lost whose retry was never enqueued (the process that failed them
    was killed between the two writes) and that have retries left."""
    from optuna.trial import TrialState

    callback = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    max_retry = getattr(callback, "max_retry", None)
    trials = study.get_trials(deepcopy=False)
    retried = {h[-1] for t in trials if (h := t.system_attrs.get("retry_history"))}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and str(t.user_attrs.get(STOP_REASON_ATTR, "")).startswith(f"{LOST}:")
        and t.number not in retried
        and (max_retry is None or len(t.system_attrs.get("retry_history", [])) < max_retry)
    ]


def _restore_lost_retries(study: optuna.Study) -> None:
    """Enqueue the retries `_lost_without_retry` finds (the confirm phase counts a FAIL
    retrain as ended: without its retry, its seed would be missing from the verdict)."""
    if not _lost_without_retry(study):  # the usual case, read without the lock
        return
    with study_lock(study, _RETRY_LOCK):
        for trial in _lost_without_retry(study):
            enqueue_retry(study, trial._trial_id)


def enqueue_retry(study: optuna.Study, trial_id: int) -> None:
    """Enqueue the retry of a trial that will not finish (killed, lost, interrupted): the same
    params, the same phase and seed, without the outcome of this attempt, at most
    `search.max_retry` times (the storage's retry callback). Nothing without one
    (`search.heartbeat_interval: null`)."""
    storage = study._storage
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Optuna's `fail_stale_trials`, plus a `stop_reason` on each trial it fails: RUNNING
    trials whose worker stopped sending heartbeats (killed, or cut off from the storage)
    become FAIL and are retried by the storage's callback. Returns the failed numbers."""
    from optuna.storages._heartbeat import BaseHeartbeat

    storage = study._storage
    interval = isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval()
    if not interval:
        return []
    backend: Any = getattr(storage, "_backend", storage)
    grace = getattr(backend, "grace_period", None) or 2 * interval
    reason = f"{LOST}: its worker sent no heartbeat for {grace} s (killed, or cut off); retried"
    stale = _stale_trial_ids(backend, study._study_id, grace)
    failed = [trial_id for trial_id in stale if fail_and_retry(study, trial_id, reason)]
    _restore_lost_retries(study)
    return [storage.get_trial(trial_id).number for trial_id in failed]


def _stale_trial_ids(backend: Any, study_id: int, grace: float) -> list[int]:
    """RUNNING trials whose last heartbeat is older than `grace` seconds (Optuna's rule), and
    those that never sent one and started over `grace` seconds ago: a worker killed between
    taking a trial and its first heartbeat (Optuna skips those, so they stayed RUNNING for
    ever). A live worker beats right after it takes a trial, so that second rule only finds
    dead ones; it compares `datetime_start`, which the worker wrote from its own clock, with
    this machine's, so clocks out by more than the grace period would need a larger one."""
    if not hasattr(backend, "scoped_session"):  # not an RDB storage: Optuna's rule alone
        return list(backend._get_stale_trial_ids(study_id))
    import datetime

    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    limit = datetime.timedelta(seconds=grace)
    stale: list[int] = []
    with _create_scoped_session(backend.scoped_session, True) as session:
        db_now: Any = session.execute(sqlalchemy.func.now()).scalar()
        db_now = db_now.replace(tzinfo=None)  # PostgreSQL's is aware, SQLite's naive
        running = (
            session.query(models.TrialModel)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialModel.study_id == study_id)
            .all()
        )
        for trial in running:
            if trial.heartbeats:  # one row per trial, its time from the database's clock
                silent = db_now - trial.heartbeats[0].heartbeat
            elif trial.datetime_start is not None:  # never beat: the worker's clock
                silent = datetime.datetime.now() - trial.datetime_start
            else:
                continue
            if silent > limit:
                stale.append(int(trial.trial_id))
    return stale


_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def storage_error_of(exc: BaseException) -> BaseException | None:
    """The storage failure in `exc`'s chain (an outage, a full disk, a broken connection),
    innermost first; None when `exc` is something else (a bug, a user error)."""
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    found: BaseException | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.Error | sqlalchemy.exc.SQLAlchemyError) or (
            isinstance(current, OSError) and current.errno in _DISK_ERRNOS
        ):
            found = current  # keep going: the innermost says most ("disk is full")
        elif isinstance(current, StorageInternalError) and found is None:
            found = current
        current = current.__cause__ or current.__context__
    return found


def describe_storage_error(exc: BaseException) -> str:
    """One line for a storage failure: the innermost cause's message, password-free."""
    cause = storage_error_of(exc) or exc
    orig = getattr(cause, "orig", None)  # SQLAlchemy wraps the driver's exception
    cause = orig if isinstance(orig, BaseException) else cause
    return f"{first_line(cause)} ({type(cause).__module__}.{type(cause).__name__})"
