"""Shared fixtures: every test runs in its own working directory with a clean environment, so
the default stores (studies/regsearch.db, mlruns/) never touch the repository, and the user's
cache (the MLflow store template) is one of the session's own.

Under pytest-xdist (`-n auto` in pyproject's addopts) each worker's processes get one CPU thread,
and the slow end-to-end tests are handed out first, longest-first scheduling that keeps one of
them from finishing alone at the end."""

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


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one core each: no oversubscribed CPU
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first


@pytest.fixture(scope="session", autouse=True)
def _session(tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
