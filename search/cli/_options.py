"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from search.core.errors import UserError
from search.run.launch import check_reachable, make_console

__all__ = ["check_reachable", "make_console"]  # where commands find them

F = TypeVar("F", bound=Callable[..., Any])

storage_option = click.option(
    "--storage",
    metavar="URL",
    default=None,
    help="Optuna storage URL [env REGSEARCH_STORAGE; default sqlite:///studies/regsearch.db].",
)
tracking_option = click.option(
    "--tracking-uri",
    metavar="URI",
    default=None,
    help="MLflow tracking URI [env MLFLOW_TRACKING_URI; default sqlite:///mlruns/mlflow.db].",
)

artifacts_option = click.option(
    "--artifacts",
    metavar="DIR",
    default=None,
    help="Optuna artifact folder for learning-curve figures; a shared one when workers run on "
    "several machines [env REGSEARCH_ARTIFACTS; default beside the SQLite file, else "
    "studies/artifacts].",
)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _device(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """`--device` as `train.device` takes it (torch's own error lists every device type)."""
    from search.config.trial import DEVICE_PATTERN

    if value is not None and not DEVICE_PATTERN.match(value):
        raise click.BadParameter(f"expected auto, cpu, mps, cuda or cuda:N, got {value!r}")
    return value


device_option = click.option(
    "--device", default=None, callback=_device, help="auto, cpu, cuda, cuda:N or mps."
)


def host_port_options(default_port: int) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        fn = click.option(
            "--port", default=default_port, show_default=True, type=click.IntRange(1, 65535)
        )(fn)
        fn = click.option(
            "--host",
            default="127.0.0.1",
            show_default=True,
            help="Interface to bind; anything beyond loopback exposes the service to the network.",
        )(fn)
        return fn

    return decorate


def warn_if_public(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.secho(
            f"warning: binding {host} exposes this service to the network without authentication",
            fg="yellow",
            err=True,
        )


def check_port(host: str, port: int) -> None:
    """A one-line UserError when `host:port` cannot be listened on (taken, or no such
    address), before the server starts: MLflow's server, exec'd in this process, would print
    uvicorn's log lines about it and exit 0; optuna-dashboard's would print that it listens."""
    import socket

    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        raise UserError(
            f"--host/--port: cannot serve on {host}:{port} ({exc.strerror or exc})"
        ) from None
