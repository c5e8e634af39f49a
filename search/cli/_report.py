"""`regsearch report`: an HTML + PNG report of one study."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from search.cli._options import make_console, storage_option
from search.core.errors import UserError

T = TypeVar("T")


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
    from search.config.schema import safe_study_name
    from search.report.page import write_report
    from search.study.storage import open_existing
    from search.study.studies import load_existing
    from search.study.sweep import sweep_studies

    opened = open_existing(storage)
    # The name may come from a shared storage that other tools write: never `reports/../x`.
    out = out_dir if out_dir is not None else Path("reports") / safe_study_name(study_name)
    names = {s.study_name for s in _summaries(opened)}
    if sweep_studies(opened, study_name):  # a size sweep of that name (and maybe a study too)
        from search.report.sweep import write_sweep_report

        # A study of the same name has the folder; the sweep goes below it.
        where = out / "sweep" if study_name in names else out
        sweep = _writing(where, lambda: write_sweep_report(opened, study_name, where))
        assert sweep is not None
        click.echo(str(sweep.index))
        if study_name not in names:
            return
        for stale in (sweep.figure, sweep.csv, sweep.json):  # written there before the study
            (out / stale.name).unlink(missing_ok=True)
    study, config = load_existing(study_name, opened)
    console = None if quiet else make_console(stderr=True)
    result = _writing(out, lambda: write_report(study, out, config=config, console=console))
    click.echo(str(result.index))


def _summaries(storage: Any) -> list[Any]:
    import optuna

    return optuna.get_all_study_summaries(storage, include_best_trial=False)


def _writing(out: Path, write: Callable[[], T]) -> T:
    """`write()` into the folder `out` (created), any OSError as a one-line user error."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        return write()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the report ({exc.strerror or exc})") from None


COMMANDS = [report_command]
