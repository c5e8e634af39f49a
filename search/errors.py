"""The exceptions the CLI turns into one line on stderr, without a traceback."""

from __future__ import annotations

__all__ = ["StorageFailure", "UserError"]


class UserError(Exception):
    """A mistake the user can fix (bad file, bad key, unknown study, unreachable storage):
    exit code 2.

    The message must be one line that names the culprit; it is printed without a traceback.
    It must never contain a password: build it from `redact_url(...)` when a URL is involved.
    """


class StorageFailure(Exception):
    """The Optuna or MLflow store failed during a run (an outage, a full disk): exit code 1.

    What was recorded stays; the next launch fails the trial that was cut off (it stops
    sending heartbeats) and retries it."""

    exit_code = 1
