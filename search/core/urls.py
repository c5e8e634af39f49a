"""Password-free rendering of database and tracking URLs."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["DEFAULT_TRACKING_URI", "redact_url", "resolve_tracking_uri", "sqlite_path"]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def resolve_tracking_uri(flag: str | None, config_value: str | None) -> str:
    """`--tracking-uri`, then `$MLFLOW_TRACKING_URI`, then the study file, then the default.
    Here rather than in `search.tracking.runs` so that commands can resolve it without MLflow."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or config_value or DEFAULT_TRACKING_URI


# scheme://user:password@host → scheme://user:***@host. A regex rather than SQLAlchemy's URL
# parser so that it also works on http(s) URLs and on strings that do not parse. The password
# runs to the next '@' on the line and may hold anything else, spaces and '/' included (users
# do not always percent-encode): when in doubt, hide more.
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@\n]*?)@")
# password=, sslpassword=, passwd=, pwd=, token=, secret= … in a query string.
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:\w*password|passwd|pwd|\w*token|\w*secret)=)[^&\s]*", re.IGNORECASE
)


def redact_url(text: str) -> str:
    """Replace every password in `text` (a URL or a message holding URLs) with ***."""
    text = _USERINFO.sub(r"\g<head>:***@", text)
    return _QUERY_SECRET.sub(r"\g<key>***", text)


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL (Optuna's storage or MLflow's store); None for any
    other URL and for an in-memory database."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def absolute_sqlite(url: str) -> str:
    """`url` with a relative `sqlite:///` file made absolute (from the current folder): a
    handle that still opens the same store after a change of folder (a notebook's `%cd`)."""
    path = sqlite_path(url)
    if path is None or path.is_absolute():
        return url
    _, mark, query = url.partition("?")
    return f"sqlite:///{path.absolute()}{mark}{query}"
