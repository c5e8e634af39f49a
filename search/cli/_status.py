"""`regsearch status` and `regsearch best`."""

from __future__ import annotations

import json
from typing import Any

import click

from search.cli._options import json_option, make_console, storage_option
from search.core.errors import UserError
from search.core.records import OBJECTIVE_METRIC_ATTR


def _storage(storage: str | None) -> Any:
    from search.study.storage import open_existing

    return open_existing(storage)


@click.command("status")
@click.argument("study_name", metavar="[STUDY]", required=False)
@storage_option
@json_option
@click.option("--all", "everything", is_flag=True, help="Also list the confirm phase's retrains.")
def status_command(
    study_name: str | None, storage: str | None, as_json: bool, everything: bool
) -> None:
    """List studies and their champions, or one study's trials ranked (state, value,
    regularizers, epochs, stop reason), the champion's configuration marked."""
    from search.report.summary import ranked_trials, study_rows, trial_row, trials_table

    store = _storage(storage)
    if study_name is None:
        rows = study_rows(store)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        from rich.table import Table

        table = Table(header_style="bold")
        for col in ("study", "direction", "trials", "value", "champion"):
            table.add_column(col)
        for r in rows:
            best = "–" if r["best_value"] is None else f"{r['best_value']:.4f}"
            table.add_row(
                r["study"], str(r["direction"]), str(r["trials"]), best, r["champion"] or "–"
            )
        make_console().print(table)
        return
    from search.report.sweep import sweep_rows
    from search.study.studies import load_existing, study_exists
    from search.study.sweep import sweep_studies

    sweep = bool(sweep_studies(store, study_name))  # a size sweep: a row per fraction
    if sweep and not study_exists(store, study_name):  # the sweep alone has the name
        if as_json:
            click.echo(json.dumps(sweep_rows(store, study_name), indent=2))
            return
        _print_sweep(store, study_name)
        return
    study, _ = load_existing(study_name, store)
    from search.report.summary import champion_source

    if as_json:
        from search.study.studies import best_trial
        from search.tracking.champion import model_uri_of

        source = champion_source(study)
        model = best_trial(study)
        rows = [
            {
                **trial_row(t),
                "model_uri": model_uri_of(study, t),
                "champion": t.number == source,  # the champion's configuration (★)
                "champion_model": model is not None and t.number == model.number,
            }
            for t in ranked_trials(study, everything=True)
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    from search.report.summary import best_summary

    console = make_console()
    answer = best_summary(study)
    if answer is not None:
        console.print(f"champion: {answer['champion_name']}", soft_wrap=True)
    console.print(trials_table(study, title=f"study {study_name}", everything=everything))
    if sweep:  # a study and a size sweep share the name: both answers
        console.print(f"{study_name} is also the name of a size sweep:")
        _print_sweep(store, study_name)


def _print_sweep(store: Any, sweep: str) -> None:
    from search.report.sweep import sweep_table

    table, sentences = sweep_table(store, sweep)
    console = make_console()
    console.print(table)
    for sentence in sentences:
        console.print(f"  {sentence}", soft_wrap=True)


@click.command("best")
@click.argument("study_name", metavar="STUDY")
@storage_option
@json_option
def best_command(study_name: str, storage: str | None, as_json: bool) -> None:
    """The study's answer: the verdict line (champion, baseline, gain, contributions), then the
    champion trial's value, params and MLflow model URI (--json: all of it)."""
    from search.report.summary import best_summary
    from search.study.studies import load_existing

    study, _ = load_existing(study_name, _storage(storage))
    best = best_summary(study)
    if best is None:
        raise UserError(f"study {study_name!r} has no completed trial yet")
    if as_json:
        click.echo(json.dumps(best, indent=2))
        return
    from search.report.summary import verdict

    metric = study.user_attrs.get(OBJECTIVE_METRIC_ATTR, "value")
    click.echo(verdict(best, metric))
    if best.get("hint"):
        click.echo(best["hint"])
    click.echo(f"study:  {best['study']}\nchampion:  {best['champion_name']}")
    click.echo(f"trial:  {best['trial']}\n{metric}:  {best['value']:.6g}")
    for key, value in best["params"].items():
        click.echo(f"  {key} = {value}")
    click.echo(f"model:  {best['model_uri'] or '(not registered)'}")
    if best["champion_uri"]:
        click.echo(f"champion: {best['champion_uri']}")
    if best.get("input"):
        from search.training.network import describe_input

        click.echo(describe_input(best["input"]))


COMMANDS = [status_command, best_command]
