"""`regsearch ui`: the MLflow UI on the tracking store, opened on a study's runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from search.cli._options import check_port, host_port_options, tracking_option, warn_if_public
from search.core.errors import UserError, first_line
from search.core.urls import redact_url


def _browser_host(host: str) -> str:
    """The address a browser on this machine opens for a server bound to `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _start_page(uri: str, study_name: str | None) -> str:
    """The UI route to open: the runs table of the study's experiment (named as the study),
    not MLflow 3's home page, which is about GenAI traces. Without a study, the default
    study's experiment if there is one, else the list of experiments. (The runs table, not
    the GenAI view, is also what the experiment's kind tag asks for: `search.tracking.runs` sets
    it when it creates or re-attaches to the experiment.)"""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from search.config.schema import StudyConfig

    name = study_name or StudyConfig().study
    try:
        client = MlflowClient(uri)
        found: Any = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "active":
            return f"#/experiments/{found.experiment_id}/runs"
        if study_name is None:
            return "#/experiments"
        names = sorted(
            e.name for e in client.search_experiments(max_results=1000) if e.name != "Default"
        )
    except (MlflowException, SQLAlchemyError) as exc:  # e.g. a file that is no database
        raise UserError(
            f"cannot read the MLflow store {redact_url(uri)}: {first_line(exc)}"
        ) from None
    known = ", ".join(names) if names else "none"
    raise UserError(
        f"unknown study {study_name!r} in the MLflow store {redact_url(uri)}; known: {known}"
    )


@click.command("ui")
@click.argument("study_name", metavar="[STUDY]", required=False)
@tracking_option
@host_port_options(5000)
def ui_command(study_name: str | None, tracking_uri: str | None, host: str, port: int) -> None:
    """The MLflow UI (runs, curves, the registered champion) on the tracking store, opened on
    the runs of STUDY (default: the default study if tracked, else the list of studies)."""
    from search.core.urls import resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri, None)
    if uri.startswith(("http://", "https://")):
        raise UserError(f"{redact_url(uri)} is already an MLflow server: open it in a browser")
    local = sqlite_path(uri)
    if local is not None and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')} (run `regsearch run` first)"
        )
    page = _start_page(uri, study_name)
    warn_if_public(host)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "1"]
    if local is not None:  # beside the database, where the runs' artifacts are
        cmd += ["--default-artifact-root", (local.parent / "artifacts").resolve().as_uri()]
    check_port(host, port)
    # The job runner starts a pool of consumer processes the UI does not need.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    click.echo(
        f"MLflow UI on http://{_browser_host(host)}:{port}/{page} (store {redact_url(uri)}); "
        "Ctrl+C to stop",
        err=True,
    )
    os.execve(sys.executable, cmd, env)


COMMANDS = [ui_command]
