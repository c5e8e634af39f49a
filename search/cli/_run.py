"""`regsearch run` and `regsearch worker`."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from search.cli._options import (
    artifacts_option,
    device_option,
    make_console,
    storage_option,
    tracking_option,
)
from search.core.errors import UserError
from search.run.launch import check_tracking, run_in_process, run_workers
from search.run.options import OpenedStorage, RunOptions
from search.training.placement import parse_gpus, worker_gpus

__all__ = ["COMMANDS", "RunOptions", "check_tracking", "run_in_process", "run_workers"]


def _console() -> Any:
    return make_console(stderr=True)


@click.command("run")
@click.argument("config_file", metavar="[CONFIG]", required=False, type=click.Path(path_type=Path))
@click.option(
    "--study", "study_name", default=None, help="Study name (also the MLflow experiment)."
)
@storage_option
@tracking_option
@click.option("--n-trials", type=int, default=None, help="Total finished trials for the study.")
@click.option("--timeout", type=float, default=None, help="Stop starting trials after SECONDS.")
@click.option(
    "--workers", type=int, default=None, help="Worker processes (default 1, or one per --gpus)."
)
@click.option(
    "--gpus",
    default=None,
    metavar="0,1,…",
    help="One worker per listed GPU (round robin if --workers is larger).",
)
@device_option
@click.option("--threads", type=int, default=None, help="CPU threads per worker.")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key."
)
@click.option(
    "--fractions",
    default=None,
    metavar="0.1,0.25,…",
    help="A size sweep: one study per fraction of the training split, named STUDY-fF, "
    "smallest first, each warm-started from the previous one.",
)
@artifacts_option
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def run_command(
    config_file: Path | None,
    study_name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    n_trials: int | None,
    timeout: float | None,
    workers: int | None,
    gpus: str | None,
    device: str | None,
    threads: int | None,
    overrides: tuple[str, ...],
    fractions: str | None,
    artifacts: str | None,
    quiet: bool,
) -> None:
    """Create or resume a study and run its trials (no CONFIG: the built-in digits study)."""
    from search.study.studyfile import load_config
    from search.study.sweep import parse_fractions

    if fractions is not None and not fractions.strip():
        raise UserError("--fractions: expected fractions such as 0.1,0.25,0.5, got ''")
    # `--fractions` is `sweep.fractions`: `--set sweep.warm_start=false` goes beside it.
    given = parse_fractions(fractions) if fractions is not None else None
    flags: dict[str, Any] = {
        "study": study_name,
        "search.n_trials": n_trials,
        "search.timeout": timeout,
        "train.device": device,
        "sweep.fractions": given,
    }
    # Resume by name: without a file, an existing study's (or size sweep's) stored config is
    # the base, and flags and --set change only what they state.
    named: dict[str, Any] = {}
    if config_file is None:  # `--set study=…` / `--set storage=…` name them as the flags do
        from search.config.overrides import apply_overrides

        named = apply_overrides({}, overrides)
    looked_in = storage or (str(named["storage"]) if named.get("storage") else None)
    base, opened = (
        _stored(
            study_name or (str(named["study"]) if named.get("study") else None),
            looked_in,
            sweep=fractions is not None or "sweep" in named,
        )
        if config_file is None
        else (None, None)
    )
    if base is not None and base.get("sweep") and given is not None:
        # Extending a sweep resumed by name: the fractions given join those it has, so each
        # new one is warm-started from the one below it.
        known = list(base["sweep"].get("fractions") or [])
        flags["sweep.fractions"] = sorted(set(known) | set(given))
    config = load_config(config_file, overrides=overrides, flags=flags, base=base)
    if base is not None and not quiet:
        what = "sweep" if config.sweep is not None else "study"
        _console().print(f"{config.study}: resuming with the config stored in the {what}")
    gpu_list = parse_gpus(gpus) if gpus is not None else None
    workers = workers if workers is not None else len(gpu_list or [0])
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    pinned = _gpu_plan(workers, gpu_list, config.train.device)
    from search.study.storage import resolve_storage_url

    url = resolve_storage_url(storage, config.storage)
    check_tracking(config, tracking_uri)
    if opened is not None and url != resolve_storage_url(looked_in):  # not what was read
        opened = None
    options = RunOptions(
        url,
        tracking_uri,
        device,
        threads=threads,
        artifacts=artifacts,
        quiet=quiet,
        opened=OpenedStorage(opened),  # the stored config's: not opened again
    )
    if config.sweep is not None:
        _run_sweep(config, options, pinned)
        return
    if workers == 1 and pinned == [None]:
        run_in_process(config, replace(options, title=f"regsearch run {config.study}"))
        return
    run_workers(config, options, pinned)


def _run_sweep(config: Any, options: RunOptions, pinned: list[str | None]) -> None:
    """One study per fraction of `config.sweep`, smallest first, each warm-started from the
    one before; then the sweep's table. Rerunning the command resumes it (finished studies
    end at once), as does `run --study SWEEP` (each study keeps the sweep's config as given).
    The fractions share `options`, so their storage is opened once."""
    from search.study.storage import open_existing
    from search.study.sweep import Member, fraction_configs, remember_sweep

    console = _console()
    previous: str | None = None
    given = config.portable_dict()
    # Every study the sweep already has keeps this launch's config as the sweep's own, also
    # those this launch does not reach (interrupted): `run --study SWEEP` resumes with it.
    # (No storage yet: no study either, and a launch refused later creates nothing.)
    if options.opened.storage is None:
        with contextlib.suppress(UserError):
            options.opened.storage = open_existing(options.storage_url)
    if options.opened.storage is not None:
        remember_sweep(options.opened.storage, config.study, given)
    for cfg in fraction_configs(config, config.sweep.fractions):
        member = Member(config.study, cfg.dataset.train_fraction, previous, config=given)
        if not options.quiet:
            seeded = f", seeded with the best configurations of {previous}" if previous else ""
            console.print(
                f"{config.study}: sweep — {cfg.study} trains on "
                f"{member.fraction:g} of the training split{seeded}"
            )
        # Each study's "this launch took" counts from its own start, not the sweep's.
        own = replace(options, sweep=member, started=time.monotonic())
        if pinned == [None]:
            run_in_process(cfg, replace(own, title=f"regsearch run {cfg.study}"))
        else:
            run_workers(cfg, own, pinned)
        previous = cfg.study if config.sweep.warm_start else None
    from search.report.sweep import sweep_table

    table, sentences = sweep_table(options.storage(), config.study)
    console.print(table)
    for sentence in sentences:
        console.print(f"  {sentence}", soft_wrap=True)
    console.print(f"{config.study}: `regsearch report {config.study}` draws the sweep")


def _stored(
    study_name: str | None, storage: str | None, *, sweep: bool
) -> tuple[dict[str, Any] | None, Any]:
    """The stored config `run` resumes, and the storage it was read from (None when there is
    no storage yet): the named study's (or the default study's), or, when a size sweep is
    asked for or no study has the name given, the config of the sweep of that name as given.
    A new sweep never starts from a study's stored config: that holds its `auto` values
    resolved for its own data (a batch size for all its images, not a fraction's)."""
    from search.config.schema import DEFAULTS
    from search.study.storage import open_existing
    from search.study.studies import stored_config
    from search.study.sweep import stored_sweep, sweep_studies

    try:
        opened = open_existing(storage)
    except UserError:  # no storage yet: a new study
        return None, None
    name = study_name or DEFAULTS["study"]
    stored = None if sweep else stored_config(opened, name)
    if stored is None and (sweep or study_name is not None):
        stored = stored_sweep(opened, name)
        if stored is None and not sweep and sweep_studies(opened, name):
            raise UserError(
                f"{name!r} is a size sweep of an earlier regsearch, which did not keep its "
                "config: resume it once with `--fractions` and the --set items it was "
                "launched with"
            )
    return stored, opened


def _gpu_plan(workers: int, gpus: list[int] | None, device: str) -> list[str | None]:
    """`CUDA_VISIBLE_DEVICES` per worker (torch is loaded already: config validation)."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return worker_gpus(workers, gpus, device=device, count=count, visible=visible)


@click.command("worker")
@click.argument("study_name", metavar="STUDY")
@storage_option
@tracking_option
@device_option
@click.option("--threads", type=int, default=None, help="CPU threads for this worker.")
@click.option("--worker-index", type=int, default=None, help="Offsets the sampler seed.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a machine-local key (dataset.root, dataset.path, model.path, train.device).",
)
@artifacts_option
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def worker_command(
    study_name: str,
    storage: str | None,
    tracking_uri: str | None,
    device: str | None,
    threads: int | None,
    worker_index: int | None,
    overrides: tuple[str, ...],
    artifacts: str | None,
    quiet: bool,
) -> None:
    """Join an existing study (its config is stored in the study), e.g. from another machine."""
    from search.config.overrides import apply_overrides
    from search.study.storage import open_existing, resolve_storage_url
    from search.study.studies import load_existing
    from search.study.studyfile import validate_config

    url = resolve_storage_url(storage)
    opened = open_existing(url)  # the only open of this process: the run below reuses it
    _, config = load_existing(study_name, opened)
    if config is None:
        raise UserError(
            f"study {study_name!r} has no stored config (created by plain Optuna, or its "
            f"creation was interrupted); `regsearch run --study {study_name}` completes it"
        )
    if overrides:
        # Anything beyond machine-local keys is refused by the resume check in create_or_resume.
        config = validate_config(apply_overrides(config.model_dump(mode="json"), overrides))
    check_tracking(config, tracking_uri)
    # Started by `regsearch run --workers N` (which passes --worker-index and prints the
    # summary itself), or on its own, e.g. on another machine.
    spawned = worker_index is not None
    index = worker_index if worker_index is not None else os.getpid()
    options = RunOptions(
        url,
        tracking_uri,
        device,
        threads=threads,
        artifacts=artifacts,
        quiet=quiet,
        worker_index=index,
        title=f"regsearch worker {study_name}" + (f" #{worker_index}" if spawned else ""),
        export_check=False,  # the study's launch exported its network
        opened=OpenedStorage(opened),
    )
    run_in_process(config, options, summary=not spawned)


COMMANDS = [run_command, worker_command]
