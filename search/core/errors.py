"""The exceptions the CLI turns into one line on stderr, without a traceback."""

from __future__ import annotations

__all__ = ["StorageFailure", "UserError", "WorkersFailed", "first_line"]


class UserError(Exception):
    """A mistake the user can fix (bad file, bad key, unknown study, unreachable storage):
    exit code 2.

    The message must be one line that names the culprit; it is printed without a traceback.
    It must never contain a password: build it from `redact_url(...)` when a URL is involved.
    """


class WorkersFailed(UserError):
    """Worker processes of a launch exited with an error (each printed its own line): the
    CLI exits with the first one's code."""

    def __init__(self, code: int, failed: int, workers: int) -> None:
        super().__init__(
            f"{failed} of {workers} worker processes failed (exit code {code}); their own "
            "lines above say why"
        )
        self.exit_code = code


class StorageFailure(Exception):
    """The Optuna or MLflow store failed during a run (an outage, a full disk): exit code 1.

    What was recorded stays; the next launch fails the trial that was cut off (it stops
    sending heartbeats) and retries it."""

    exit_code = 1


def first_line(exc: BaseException, *, limit: int = 500, typed: bool = False) -> str:
    """`exc` as one line for a user: the first line of its message (its type's name when it
    has none), passwords in URLs redacted, at most `limit` characters; `typed` puts the type's
    name first (`OSError: …`)."""
    from search.core.urls import redact_url

    lines = redact_url(str(exc)).strip().splitlines()
    line = lines[0].strip() if lines else type(exc).__name__
    if typed:
        line = f"{type(exc).__name__}: {line}"
    return line if len(line) <= limit else line[: limit - 1] + "…"
