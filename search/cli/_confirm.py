"""`regsearch confirm`: run, finish or extend a study's confirm phase."""

from __future__ import annotations

import os

import click

from search.cli._options import artifacts_option, device_option, storage_option, tracking_option
from search.core.errors import UserError
from search.run.launch import check_tracking, run_in_process
from search.run.options import OpenedStorage, RunOptions


@click.command("confirm")
@click.argument("study_name", metavar="STUDY")
@storage_option
@tracking_option
@click.option(
    "--top-k", type=click.IntRange(min=1), default=None, help="Configurations to retrain."
)
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Fresh seeds for each.")
@click.option("--ablation/--no-ablation", default=None, help="Ablate the champion (default on).")
@click.option(
    "--racing/--no-racing",
    default=None,
    help="Stop retraining what can no longer win (default on); off: every seed of every one.",
)
@device_option
@click.option("--threads", type=int, default=None, help="CPU threads for this worker.")
@artifacts_option
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def confirm_command(
    study_name: str,
    storage: str | None,
    tracking_uri: str | None,
    top_k: int | None,
    seeds: int | None,
    ablation: bool | None,
    racing: bool | None,
    device: str | None,
    threads: int | None,
    artifacts: str | None,
    quiet: bool,
) -> None:
    """Run, finish or extend a study's confirm phase: the top configurations and the baseline
    retrained with fresh seeds, the champion chosen by its mean, then its ablation. A larger
    --top-k or --seeds adds only the missing retrains (with racing, only for the
    configurations still in the race: --no-racing retrains every one); other workers may join with
    `regsearch worker STUDY`."""
    from search.config.schema import ConfirmConfig
    from search.study.storage import open_existing, resolve_storage_url
    from search.study.studies import load_existing
    from search.study.studyfile import validate_config

    url = resolve_storage_url(storage)
    opened = open_existing(url)  # the only open of this process: the run below reuses it
    study, config = load_existing(study_name, opened)
    if config is None:
        raise UserError(f"study {study_name!r} has no stored config: it is not a regsearch study")
    if config.search.sampler.name == "grid":
        raise UserError(
            f"study {study_name!r} is a grid study (search.sampler: grid): it runs its grid "
            "only, with no baseline recipe, so it has no confirm phase"
        )
    from search.core.records import FINISHED
    from search.study.studies import count_trials

    done = count_trials(study, FINISHED)
    if done < config.search.n_trials and not quiet:  # say why search trials run first
        click.echo(
            f"{study_name}: the search has {done} of its {config.search.n_trials} trials: "
            "it runs the rest first, then the confirm phase",
            err=True,
        )
    current = (config.search.confirm or ConfirmConfig()).model_dump()
    asked = {"top_k": top_k, "seeds": seeds, "ablation": ablation, "racing": racing}
    current.update({k: v for k, v in asked.items() if v is not None})
    data = config.model_dump(mode="json")
    data["search"]["confirm"] = current
    config = validate_config(data)
    check_tracking(config, tracking_uri)
    options = RunOptions(
        url,
        tracking_uri,
        device,
        threads=threads,
        artifacts=artifacts,
        quiet=quiet,
        worker_index=os.getpid(),
        title=f"regsearch confirm {study_name}",
        opened=OpenedStorage(opened),
    )
    run_in_process(config, options)


COMMANDS = [confirm_command]
