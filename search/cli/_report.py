"""`regsearch report`: an HTML + PNG report of one study."""

from __future__ import annotations

from pathlib import Path

import click

from search.cli._options import make_console, storage_option
from search.errors import UserError


@click.command("report")
@click.argument("study_name", metavar="STUDY")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Output folder for index.html and the PNG figures [default: reports/STUDY].",
)
@storage_option
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def report_command(study_name: str, out_dir: Path | None, storage: str | None, quiet: bool) -> None:
    """HTML report of a study: Optuna's plots, train/val gap per regularizer, learning curves,
    epochs saved by pruning and early stopping. Works while the study is still running."""
    from search.report import write_report
    from search.storage import open_storage, resolve_storage_url
    from search.study import load_existing

    study, config = load_existing(
        study_name, open_storage(resolve_storage_url(storage), create=False)
    )
    from search.config import safe_study_name

    # The name may come from a shared storage that other tools write: never `reports/../x`.
    out = out_dir if out_dir is not None else Path("reports") / safe_study_name(study.study_name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    console = None if quiet else make_console(stderr=True)
    try:
        result = write_report(study, out, config=config, console=console)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the report ({exc.strerror or exc})") from None
    click.echo(str(result.index))


COMMANDS = [report_command]
