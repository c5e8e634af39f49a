"""The same study file on the same machine with the same thread count gives the same trials,
values and verdict: what the README promises of a fresh study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import regsearch


def _run(folder: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    folder.mkdir()
    proc = regsearch(
        "run",
        "--study",
        "again",
        "--n-trials",
        "5",
        "--threads",
        "1",
        "--set",
        "train.epochs=4",
        "--set",
        "search.confirm={top_k: 1, seeds: 2, ablation: false}",
        cwd=folder,
        confirm=True,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(regsearch("status", "again", "--json", cwd=folder).stdout)
    best = json.loads(regsearch("best", "again", "--json", cwd=folder).stdout)
    return rows, best


@pytest.mark.slow
def test_the_same_study_twice_gives_the_same_trials_and_verdict(tmp_path: Path) -> None:
    first_rows, first = _run(tmp_path / "one")
    second_rows, second = _run(tmp_path / "two")
    keys = ("number", "state", "phase", "value", "params", "epochs", "stop_reason")
    assert [{k: r[k] for k in keys} for r in first_rows] == [
        {k: r[k] for k in keys} for r in second_rows
    ]
    assert any(r["phase"] == "confirm" for r in first_rows)
    for key in ("champion_name", "value", "test_accuracy", "gain", "champion", "test"):
        assert first[key] == second[key], key
