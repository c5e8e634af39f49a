"""The `regsearch` command line. Heavy imports (torch, optuna, mlflow) happen inside the
commands, so `regsearch --help` is instant."""

from __future__ import annotations

import sys

import click

from search.core.errors import StorageFailure, UserError
from search.core.urls import redact_url
from search.run.proctitle import hide_secrets

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="regsearch")
def cli() -> None:
    """Hyperparameter search for the regularization of deep image classifiers.

    Optuna samples weight decay, dropout, augmentation strength, MixUp, label smoothing (and
    CutMix, Cutout, stochastic depth); every trial trains on the GPU when there is one; MLflow
    records every trial and registers the best model as models:/<study>@champion.
    """


def _register() -> None:
    from search.cli import _bench, _confirm, _dashboard, _report, _run, _status, _ui

    for module in (_run, _confirm, _status, _report, _dashboard, _ui, _bench):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def _fail(message: str, code: int = 2) -> None:
    first = redact_url(message).strip().splitlines()
    click.echo(f"regsearch: error: {first[0] if first else 'failed'}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors → one line on stderr and exit code 2; a store
    that fails mid-run → one line and exit code 1."""
    if argv is None:  # a real process: no password in what `ps` shows of it
        hide_secrets(sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="regsearch", standalone_mode=False)
    except UserError as exc:
        _fail(str(exc), getattr(exc, "exit_code", 2))
    except StorageFailure as exc:
        _fail(str(exc), StorageFailure.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # Ctrl+C → 130, SIGTERM → 143 (`search.core.signals`): the conventional shell codes.
        args = sys.argv[1:] if argv is None else argv
        command = next((a for a in args if not a.startswith("-")), "")
        hint = (
            "; finished trials are kept, and the same command resumes the study"
            if command in ("run", "worker", "confirm")
            else ""
        )
        click.echo(f"regsearch: interrupted{hint}", err=True)
        # click turns KeyboardInterrupt into Abort; the original is its __cause__.
        sys.exit(getattr(exc.__cause__ or exc, "exit_code", 130))
    except click.UsageError as exc:  # a bad flag value, a missing argument: one line too
        command = exc.ctx.command_path if exc.ctx is not None else "regsearch"
        _fail(f"{exc.format_message()} (see {command} --help)", exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
