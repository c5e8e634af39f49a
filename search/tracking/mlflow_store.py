"""The local MLflow store (`sqlite:///mlruns/mlflow.db`): created whole or not at all, and a
store an interrupted first launch left half-made rebuilt when nothing in it can be lost.

MLflow's schema migrations take about 2 s, so they run once per MLflow version, into an empty
template store in the user's cache (`$XDG_CACHE_HOME/regsearch`, else `~/.cache/regsearch`);
each new project's store is a copy of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from mlflow import MlflowClient

__all__ = ["create_store", "rebuild_if_half_made"]

_log = logging.getLogger(__name__)


def _init_store(uri: str) -> None:
    """Run MLflow's schema migrations on the store at `uri` (tracking and registry tables)."""
    client = MlflowClient(uri, registry_uri=uri)
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)


def _template() -> Path | None:
    """The migrated, empty store of this MLflow version in the user's cache (made now if
    missing, whole or not at all); None where the cache cannot be written."""
    import mlflow

    try:  # Path.home() raises where there is no home (no $HOME, no passwd entry)
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "regsearch"
    except RuntimeError:
        return None
    template = cache / f"mlflow-{mlflow.__version__}.db"
    if template.exists():
        return template
    tmp = cache / f".{template.name}.{os.getpid()}.tmp"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _init_store(f"sqlite:///{tmp}")
        with contextlib.suppress(FileExistsError):  # another process was quicker
            os.link(tmp, template)
    except Exception as exc:  # a read-only cache, a full disk: migrate in place instead
        _log.debug("no MLflow store template in %s: %s", cache, exc)
        return None
    finally:
        with contextlib.suppress(OSError):  # linked into place, or never made
            tmp.unlink()
    return template


def _copy_template(template: Path, dest: Path) -> None:
    """`template` copied to `dest`, its Default experiment made as MLflow would make it here
    (artifacts under `./mlruns/0` of this folder, created now)."""
    import shutil
    import sqlite3

    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    shutil.copyfile(template, dest)
    location = append_to_uri_path(resolve_uri_if_local(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH), "0")
    now = int(time.time() * 1000)
    with contextlib.closing(sqlite3.connect(dest)) as conn, conn:
        conn.execute(
            "UPDATE experiments SET artifact_location = ?, creation_time = ?,"
            " last_update_time = ? WHERE experiment_id = 0",
            (location, now, now),
        )


def create_store(path: Path) -> None:
    """Create MLflow's SQLite store at `path` complete or not at all.

    The migrations take seconds, and a Ctrl+C or a kill in the middle left a file every later
    launch refused ("table … already exists", "out-of-date database schema"). They now run
    on a temporary file beside it (a copy of the cached template, `_template`), which is linked
    into place once complete: a reader sees no store or a whole one, and of two workers
    creating it at once, one link wins."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        template = _template()
        if template is not None:
            _copy_template(template, tmp)
        else:
            _init_store(f"sqlite:///{tmp}")
        with contextlib.suppress(FileExistsError):  # another process was quicker
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _holds_runs(path: Path) -> bool:
    """Whether a SQLite MLflow store holds any run or registered model (unreadable: True)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            return any(
                conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                for table in ("runs", "registered_models")
                if table in tables
            )
    except sqlite3.Error:
        return True  # not ours to throw away


def _schema_is_whole(path: Path) -> bool:
    """Whether the SQLite store's schema is MLflow's current one, with no migration left
    half-done (`_alembic_tmp_*` tables)."""
    import sqlite3

    import sqlalchemy
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version

    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if any(t.startswith("_alembic_tmp") for t in tables) or "alembic_version" not in tables:
        return False
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        return bool(_get_schema_version(engine) == _get_latest_schema_revision())
    finally:
        engine.dispose()


def rebuild_if_half_made(path: Path) -> None:
    """A store left half-created by an interrupted first launch of an older version (its
    schema incomplete, and no run or model in it: nothing to lose) is moved aside and made
    anew. A store with runs is never touched (an older MLflow's: `mlflow db upgrade`)."""
    try:
        whole = _schema_is_whole(path)
    except Exception:  # unreadable as SQLite: not ours to judge
        return
    if whole or _holds_runs(path):
        return
    aside = path.with_name(f"{path.name}.broken-{int(time.time())}")
    os.replace(path, aside)
    _log.warning("MLflow store %s was half-created; moved aside to %s", path, aside.name)
