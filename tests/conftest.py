"""Shared fixtures: every test runs in its own working directory with a clean environment, so
the default stores (studies/regsearch.db, mlruns/) never touch the repository."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


_ENV = ("REGSEARCH_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    yield tmp_path
    # `mlflow.set_tracking_uri` / `set_registry_uri` write these variables; monkeypatch only
    # restores what it changed itself, so a URI set during a test would outlive it.
    for var in _ENV:
        os.environ.pop(var, None)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    import torch

    torch.set_num_threads(1)
