"""`regsearch ui`: the MLflow UI on the tracking store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from search.cli._options import host_port_options, tracking_option, warn_if_public
from search.errors import UserError
from search.urls import redact_url


@click.command("ui")
@tracking_option
@host_port_options(5000)
def ui_command(tracking_uri: str | None, host: str, port: int) -> None:
    """The MLflow UI (runs, curves, the registered champion) on the tracking store."""
    from search.urls import resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri, None)
    if uri.startswith(("http://", "https://")):
        raise UserError(f"{redact_url(uri)} is already an MLflow server: open it in a browser")
    local = sqlite_path(uri)
    if local is not None and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')} (run `regsearch run` first)"
        )
    warn_if_public(host)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "1"]
    if local is not None:
        cmd += ["--default-artifact-root", (local / "artifacts").resolve().as_uri()]
    # The job runner starts a pool of consumer processes the UI does not need.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    click.echo(
        f"MLflow UI on http://{host}:{port} (store {redact_url(uri)}); Ctrl+C to stop", err=True
    )
    os.execve(sys.executable, cmd, env)


COMMANDS = [ui_command]
