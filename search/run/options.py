"""The settings of one launch on this machine (`RunOptions`): built once by the CLI or the Python
API, passed to `search.run.launch` and `search.run.runner`, with the launch's storage, which
one process opens once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from search.core.errors import UserError

if TYPE_CHECKING:
    import optuna

    from search.config.schema import SearchConfig
    from search.study.sweep import Member

__all__ = ["OpenedStorage", "RunOptions"]


@dataclass
class OpenedStorage:
    """A launch's storage once opened (None before)."""

    storage: optuna.storages.RDBStorage | None = None


@dataclass(frozen=True)
class RunOptions:
    """The per-machine settings of one launch (the study's own settings are in its config);
    the per-worker ones are set with `dataclasses.replace`."""

    storage_url: str
    tracking_uri: str | None = None
    device: str | None = None  # overrides train.device
    threads: int | None = None  # CPU threads (each worker's)
    artifacts: str | None = None  # --artifacts (else $REGSEARCH_ARTIFACTS, else a default)
    quiet: bool = False
    worker_index: int = 0  # offsets the sampler seed
    title: str | None = None  # process title prefix, e.g. "regsearch worker digits #1"
    sweep: Member | None = None  # the study is one fraction of a size sweep
    # Export an outside network untrained before the first trial (the launch does; a worker
    # joins a study whose launch did).
    export_check: bool = True
    started: float = field(default_factory=time.monotonic)  # for the elapsed time `run` ends with
    # Shared by the copies `replace` makes: the launch's storage, opened once in this process.
    opened: OpenedStorage = field(default_factory=OpenedStorage, compare=False, repr=False)

    def __post_init__(self) -> None:
        threads = self.threads
        if threads is not None and (isinstance(threads, bool) or threads < 1):
            raise UserError(f"--threads must be an integer >= 1, got {threads}")

    def storage(self, search: SearchConfig | None = None) -> optuna.storages.RDBStorage:
        """The launch's storage: opened at the first call (a launch refused before that
        creates nothing), the same one after; `search` gives it the study's heartbeats."""
        from search.study import storage as storages

        opened = self.opened.storage
        if opened is None:
            opened = self.opened.storage = storages.open_storage(self.storage_url, search)
        elif search is not None:
            storages.use_heartbeats(opened, search)
        return opened
