"""`regsearch dashboard`: optuna-dashboard on the study storage."""

from __future__ import annotations

import click

from search.cli._options import (
    artifacts_option,
    host_port_options,
    storage_option,
    warn_if_public,
)


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
    from search.study.storage import artifact_dir, open_existing, resolve_storage_url

    url = resolve_storage_url(storage)
    store = open_existing(url)
    folder = artifact_dir(url, artifacts)
    folder.mkdir(parents=True, exist_ok=True)
    warn_if_public(host)
    click.echo(f"optuna-dashboard on http://{host}:{port}; Ctrl+C to stop", err=True)
    # optuna-dashboard's `run_server` is `bottle.run` of this app, without the guard.
    app = wsgi(store, artifact_store=FileSystemArtifactStore(str(folder)))
    bottle.run(read_only(app), host=host, port=port)


COMMANDS = [dashboard_command]
