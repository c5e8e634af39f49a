"""`regsearch bench`: performance figures as side-by-side ratios."""

from __future__ import annotations

import json
import os

import click

from search.core.errors import UserError


@click.command("bench")
@click.option("--only", "names", multiple=True, metavar="NAME", help="Run only this benchmark.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where the throughput figures train: auto, cpu, cuda or cuda:N. With cuda, the "
    "default figures are the GPU path's (throughput eager and compiled, augmentation, a "
    "CIFAR-shaped airbench trial).",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A study key every benchmark that runs studies applies last, e.g. "
    "train.min_steps_per_epoch=8 (the figures of another budget, side by side).",
)
def bench_command(
    names: tuple[str, ...],
    as_json: bool,
    threads: int | None,
    device: str,
    settings: tuple[str, ...],
) -> None:
    """Measure trial overhead, training throughput and other figures on this machine."""
    from search.bench.runs import SETTINGS_VAR
    from search.bench.suite import BENCHMARKS, run_benchmarks
    from search.study.studyfile import load_config

    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"--only {unknown[0]}: unknown benchmark; known: {', '.join(BENCHMARKS)}")
    load_config(overrides=settings)  # a bad key or value stops here, in one line
    if settings:
        os.environ[SETTINGS_VAR] = json.dumps(list(settings))
    if threads:
        import torch

        torch.set_num_threads(threads)
    from search.training.train import resolve_device

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"--device {device}: {exc}") from None
    figures = run_benchmarks(
        list(names) or None, device=device, echo=lambda m: click.echo(m, err=True)
    )
    if settings:
        figures["machine"]["study_settings"] = list(settings)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for section, values in figures.items():
        click.echo(f"{section}:")
        # A figure that renders its own tables leaves the long data behind them to --json.
        rendered = any(isinstance(v, str) and "\n" in v for v in values.values())
        left: list[str] = []
        for key, value in values.items():
            if isinstance(value, str) and "\n" in value:  # a table: as printed, indented
                click.echo(f"  {key}:")
                for line in value.splitlines():
                    click.echo(f"    {line}".rstrip())
            elif rendered and isinstance(value, dict | list) and len(repr(value)) > 200:
                left.append(key)
            else:
                click.echo(f"  {key}: {value}")
        if left:
            click.echo(f"  ({', '.join(left)}: with --json)")


COMMANDS = [bench_command]
