"""The one exception type the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake the user can fix (bad file, bad key, unknown study, unreachable storage).

    The message must be one line that names the culprit; it is printed without a traceback.
    It must never contain a password: build it from `redact_url(...)` when a URL is involved.
    """
