"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from search.errors import UserError
from search.urls import redact_url

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


def make_console(*, stderr: bool = False) -> Any:
    """A rich console; off a terminal (CI logs, pipes) 200 columns rather than rich's 80."""
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def host_port_options(default_port: int) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        fn = click.option("--port", default=default_port, show_default=True, type=int)(fn)
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


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when an http(s) tracking server does not answer.

    MLflow's client retries a refused connection for minutes (7 retries with back-off) before
    it says anything; one GET of the server's `/health` within `timeout` seconds answers the
    same question before any study, run or folder exists. Any HTTP answer (even 401 or 404
    from a proxy) counts as reachable; other schemes are not probed.
    """
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    netloc = parts.netloc.rpartition("@")[2]  # urllib takes no credentials in the URL
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answered
    except (TimeoutError, urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot reach tracking server {redact_url(uri)} ({reason}); start it, fix "
            "--tracking-uri / $MLFLOW_TRACKING_URI, or set tracking.enabled: false"
        ) from None
