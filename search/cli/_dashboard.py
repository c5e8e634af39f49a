"""`regsearch dashboard`: optuna-dashboard on the study storage."""

from __future__ import annotations

from pathlib import Path

import click

from search.cli._options import host_port_options, storage_option, warn_if_public


@click.command("dashboard")
@storage_option
@host_port_options(8080)
@click.option(
    "--artifacts",
    type=click.Path(path_type=Path),
    default=None,
    help="Optuna artifact store (learning-curve figures) [default: beside the SQLite file, "
    "else studies/artifacts].",
)
def dashboard_command(storage: str | None, host: str, port: int, artifacts: Path | None) -> None:
    """optuna-dashboard on the study storage: history, importances, intermediate values."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from search.storage import artifact_dir, open_storage, resolve_storage_url

    url = resolve_storage_url(storage)
    store = open_storage(url, create=False)
    artifacts = artifacts or artifact_dir(url)
    artifacts.mkdir(parents=True, exist_ok=True)
    warn_if_public(host)
    click.echo(f"optuna-dashboard on http://{host}:{port}; Ctrl+C to stop", err=True)
    run_server(store, host=host, port=port, artifact_store=FileSystemArtifactStore(str(artifacts)))


COMMANDS = [dashboard_command]
