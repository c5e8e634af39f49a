"""One process opens the study storage once per launch: the CLI builds one `RunOptions`, and
the storage a command opened (to read a stored config, to create the study) is the one its
trials, its summary and a sweep's table use, not opened again."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import search.study.storage
from search.cli import main
from search.core.errors import UserError
from search.run.options import OpenedStorage, RunOptions
from tests.helpers import TEST_BUDGET

# A tiny study: a few seconds per launch on one CPU thread, no MLflow.
TINY = [
    "--set",
    "dataset={name: synthetic, num_samples: 120, image_size: 8, num_classes: 3}",
    "--set",
    "train.epochs=1",
    "--set",
    "train.device=cpu",
    "--set",
    "search.pruner=none",
    "--set",
    "search.confirm=none",
    "--set",
    "tracking.enabled=false",
    "--set",
    TEST_BUDGET,
    "--threads",
    "1",
    "--quiet",
]


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of each storage `open_storage` opened, wherever it is looked up (a refused
    open, such as `open_existing` before the first launch, is not one)."""
    calls: list[str] = []
    real = search.study.storage.open_storage

    def counting(url: str, *args: Any, **kwargs: Any) -> Any:
        storage = real(url, *args, **kwargs)
        calls.append(url)
        return storage

    for name, module in list(sys.modules.items()):
        if name.startswith("search.") and getattr(module, "open_storage", None) is real:
            monkeypatch.setattr(module, "open_storage", counting)
    return calls


def _main(*args: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert not exit_info.value.code


def test_a_launch_in_process_opens_the_storage_once(opens: list[str]) -> None:
    _main("run", "--study", "once", "--n-trials", "1", *TINY)
    assert len(opens) == 1  # a new study (1 before this change too)
    opens.clear()
    _main("run", "--study", "once", "--n-trials", "2", *TINY)  # by name: its stored config
    assert len(opens) == 1  # was 2: the stored config's storage, then the run's
    opens.clear()
    _main("worker", "once", "--threads", "1", "--quiet")
    assert len(opens) == 1  # was 2: the study's config, then the run's
    opens.clear()
    _main("confirm", "once", "--top-k", "1", "--seeds", "1", "--no-ablation", "--quiet")
    assert len(opens) == 1  # was 2
    opens.clear()
    _main("run", "--study", "once", "--fractions", "0.5,1", "--n-trials", "1", *TINY)
    assert len(opens) == 1  # was 4: the stored config, one per fraction, the sweep's table


def test_a_launch_with_workers_opens_it_once_per_process(
    opens: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[list[str], dict[str, str]]] = []

    class Started:  # a worker process, run below in this one
        def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
            started.append((cmd, env))

        def poll(self) -> int:
            return 0

        def wait(self) -> int:
            return 0

    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", Started)
    _main("run", "--study", "two", "--n-trials", "2", "--workers", "2", *TINY)
    monkeypatch.setattr(subprocess, "Popen", popen)
    # The launch creates the study and reads its summary on one storage: was 2 (3 when the
    # storage existed: `run --study` looks for a stored config first).
    assert len(opens) == 1 and len(started) == 2
    for cmd, env in started:
        opens.clear()
        monkeypatch.setenv("REGSEARCH_STORAGE", env["REGSEARCH_STORAGE"])
        _main(*cmd[3:])  # `python -m search worker two …`
        # Each worker is a process of its own and opens its own storage, once (was 2): an
        # N-worker launch opens it N + 1 times in all (was 2N + 2, or 2N + 3).
        assert len(opens) == 1


def test_copies_of_the_options_share_the_storage_opened_once(opens: list[str]) -> None:
    options = RunOptions("sqlite:///s.db", quiet=True)
    worker = dataclasses.replace(options, worker_index=1, title="regsearch worker s #1")
    assert worker.storage() is options.storage() is worker.storage()
    assert opens == ["sqlite:///s.db"]
    assert worker == dataclasses.replace(options, worker_index=1, title=worker.title)


def test_open_existing_resolves_the_url_and_the_study_s_heartbeats_follow(
    opens: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from search.config.schema import SearchConfig
    from search.study.storage import open_existing, open_storage

    with pytest.raises(UserError, match="no study storage"):
        open_existing()  # the default storage, not there yet: not created either
    assert not Path("studies").exists()
    open_storage("sqlite:///s.db")
    monkeypatch.setenv("REGSEARCH_STORAGE", "sqlite:///s.db")
    existing = open_existing()  # the worker's and confirm's open: no heartbeats yet
    assert existing.heartbeat_interval is None
    search = SearchConfig(heartbeat_interval=5, max_retry=1)
    options = RunOptions("sqlite:///s.db", opened=OpenedStorage(existing))
    assert options.storage(search) is existing  # the study's heartbeats, on the same storage
    fresh = open_storage("sqlite:///s.db", search)
    for storage in (existing, fresh):
        assert (storage.heartbeat_interval, storage.grace_period) == (5, 20)
        assert callable(storage.get_heartbeat_stale_trial_callback())
    assert opens == ["sqlite:///s.db"] * 3
