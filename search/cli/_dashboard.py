"""`regsearch dashboard`: optuna-dashboard on the study storage."""

from __future__ import annotations

import click

from search.cli._options import (
    artifacts_option,
    check_port,
    host_port_options,
    storage_option,
    warn_if_public,
)
from search.core.errors import UserError


@click.command("dashboard")
@storage_option
@host_port_options(8080)
@artifacts_option
def dashboard_command(storage: str | None, host: str, port: int, artifacts: str | None) -> None:
    """optuna-dashboard on the study storage: history, importances, intermediate values.

    Read-only but for notes: it cannot delete, create or change studies or trials."""
    import bottle
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi

    from search.report.dashboard import read_only
    from search.study.storage import make_artifact_dir, open_existing, resolve_storage_url

    url = resolve_storage_url(storage)
    store = open_existing(url)
    folder = make_artifact_dir(url, artifacts)
    warn_if_public(host)
    check_port(host, port)  # before the line saying it serves
    click.echo(f"optuna-dashboard on http://{host}:{port}; Ctrl+C to stop", err=True)
    # optuna-dashboard's `run_server` is `bottle.run` of this app, without the guard.
    app = wsgi(store, artifact_store=FileSystemArtifactStore(str(folder)))
    try:
        bottle.run(read_only(app), host=host, port=port)
    except OSError as exc:  # the port is taken, the host is no interface of this machine
        raise UserError(f"--host/--port: cannot serve on {host}:{port} ({exc})") from None


COMMANDS = [dashboard_command]
