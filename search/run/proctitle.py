"""Process titles: what `ps` and `top` show for a regsearch process.

The command line of a process is readable by every user of the machine (`ps aux`,
`/proc/PID/cmdline`). A storage or tracking URL given with `--storage` carries its password
there, so the first thing `regsearch` does is rewrite its own title with the password replaced
by ***. Workers then show what they are doing: `regsearch worker digits #1: trial 17, epoch
3/20`.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from search.core.urls import redact_url

if TYPE_CHECKING:
    from search.training.train import EpochStats

__all__ = ["TrialTitle", "hide_secrets", "set_title"]


def set_title(title: str) -> None:
    """Set this process's title (imported here: `regsearch --help` need not load it)."""
    import setproctitle

    setproctitle.setproctitle(title)


def hide_secrets(argv: list[str]) -> None:
    """Rewrite the title as `regsearch ARGS` with every password replaced, if `argv` holds
    one (otherwise the title stays as it is)."""
    shown = [redact_url(arg) for arg in argv]
    if shown != argv:
        set_title(shlex.join(["regsearch", *shown]))


class TrialTitle:
    """A `RunListener` that keeps the worker's title on the current trial and epoch."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._epochs = 0

    def trial_started(self, number: int, epochs: int) -> None:
        self._epochs = epochs
        set_title(f"{self.prefix}: trial {number}")

    def epoch_done(self, number: int, stats: EpochStats) -> None:
        set_title(f"{self.prefix}: trial {number}, epoch {stats.epoch}/{self._epochs}")
