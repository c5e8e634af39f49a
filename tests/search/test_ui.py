"""`regsearch ui` opens on the study's runs, not on MLflow 3's GenAI home page (the server
itself is started in tests/search/test_cli.py; here its start is intercepted)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.cli import main
from search.tracking.mlflow_store import create_store
from tests.helpers import regsearch


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient]:
    (tmp_path / "mlruns").mkdir()
    create_store(tmp_path / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    return uri, MlflowClient(uri)


def _opened(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[str, list[str]]:
    """The URL `regsearch ui ARGS` prints and the server command it would run."""
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append(list(argv)))
    with pytest.raises(SystemExit) as exited:
        main(["ui", *args, "--port", "5123"])
    assert exited.value.code == 0
    (url,) = re.findall(r"http://\S+", capsys.readouterr().err)
    (command,) = started
    return url, command


def test_ui_opens_on_the_runs_of_the_named_study(
    store: tuple[str, MlflowClient],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri, client = store
    client.create_experiment("digits")
    other = client.create_experiment("other")
    url, command = _opened(monkeypatch, capsys, "other", "--tracking-uri", uri)
    assert url == f"http://127.0.0.1:5123/#/experiments/{other}/runs"
    assert command[command.index("--backend-store-uri") + 1] == uri
    # Artifacts beside the database, where the runs keep theirs (was under the .db file).
    root = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    assert command[command.index("--default-artifact-root") + 1] == root


def test_ui_opens_on_the_default_study_else_on_the_list(
    store: tuple[str, MlflowClient],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri, client = store
    client.create_experiment("other")
    url, _ = _opened(monkeypatch, capsys, "--tracking-uri", uri)
    assert url == "http://127.0.0.1:5123/#/experiments", "no default study: the list"
    digits = client.create_experiment("digits")
    url, _ = _opened(monkeypatch, capsys, "--tracking-uri", uri)
    assert url == f"http://127.0.0.1:5123/#/experiments/{digits}/runs"


def test_ui_of_an_unknown_study_is_one_line_naming_the_known_ones(
    store: tuple[str, MlflowClient], tmp_path: Path
) -> None:
    uri, client = store
    client.create_experiment("other")
    proc = regsearch("ui", "nope", "--tracking-uri", uri, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line == f"regsearch: error: unknown study 'nope' in the MLflow store {uri}; known: other"


def test_a_tracking_file_that_is_no_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.db").write_text("not a database\n")
    with pytest.raises(SystemExit) as exited:
        main(["ui", "x", "--tracking-uri", f"sqlite:///{tmp_path}/notes.db"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("regsearch: error: cannot read the MLflow store sqlite:///")
    assert "file is not a database" in line


def test_a_dashboard_port_in_use_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import optuna

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/studies/regsearch.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["dashboard", "--port", str(port)])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # not "… on http://…" before it
    assert line.startswith(f"regsearch: error: --host/--port: cannot serve on 127.0.0.1:{port} (")


def test_a_ui_port_in_use_is_one_line(
    store: tuple[str, MlflowClient],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's server printed uvicorn's log lines about it and exited 0."""
    import socket

    uri, client = store
    client.create_experiment("digits")
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append(list(argv)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["ui", "--tracking-uri", uri, "--port", str(port)])
    assert exited.value.code == 2 and not started
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"regsearch: error: --host/--port: cannot serve on 127.0.0.1:{port} (")
