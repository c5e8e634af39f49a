"""regsearch from Python (`search.api`): two studies in one process, the same verdict as
`regsearch best --json`, the champion as an `nn.Module`, the CLI's messages as exceptions,
and nothing left behind in the process."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
import yaml

from search.api import StudyResult, best, load_champion, run
from search.core.errors import UserError
from tests.helpers import TEST_BUDGET, regsearch

_TINY = ["train.epochs=2", "search.confirm=off", TEST_BUDGET]


@pytest.mark.slow
def test_two_studies_in_one_process_give_the_cli_s_verdicts(tmp_path: Path) -> None:
    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    threads = torch.get_num_threads()
    level = optuna.logging.get_verbosity()
    rng = torch.get_rng_state()
    mlflow_level = logging.getLogger("mlflow").level
    # One from a mapping, one from a study file with overrides: different data and models.
    first = run(
        {"study": "from-dict", "search": {"n_trials": 2}, "model": {"name": "small-cnn"}},
        overrides=_TINY,
        threads=1,
    )
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump(
            {
                "study": "from-file",
                "dataset": {"name": "synthetic", "image_size": 12, "num_samples": 120},
                "search": {"n_trials": 2},
            }
        )
    )
    second = run(tmp_path / "s.yaml", overrides=[*_TINY, "train.seed=3"])
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == before
    assert torch.get_num_threads() == threads and optuna.logging.get_verbosity() == level
    assert torch.equal(torch.get_rng_state(), rng)  # a notebook's random draws go on as before
    assert logging.getLogger("mlflow").level == mlflow_level
    for result in (first, second):
        cli = regsearch("best", result.name, "--json", cwd=tmp_path)
        assert cli.returncode == 0, cli.stderr
        assert result.best == json.loads(cli.stdout)
        assert best(result.name) == result.best
        assert result.verdict is not None and result.verdict.startswith("best: trial ")
    assert first.best is not None and second.best is not None
    assert first.best["params"] != second.best["params"]
    model = load_champion("from-file")
    with torch.no_grad():
        assert model(torch.rand(3, 1, 12, 12)).shape == (3, 10)
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == before


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (None, ["space.dropout=1.5"], "space.dropout: 1.5 is outside the allowed range [0, 1)"),
        ({"search": {"n_trals": 3}}, [], "search.n_trals: unknown key; did you mean 'n_trials'?"),
        ("missing.yaml", [], "study file not found: missing.yaml"),
        ({"model": {"name": "timm/resnet_18"}}, [], "unknown timm model 'resnet_18'"),
    ],
)
def test_bad_input_raises_the_cli_s_one_line_message(
    config: object, overrides: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError) as info:
        run(config, overrides=overrides)  # type: ignore[arg-type]
    assert message in str(info.value) and "\n" not in str(info.value)
    if config is None:  # the same line as the command line's
        cli = regsearch("run", "--set", overrides[0], cwd=tmp_path)
        assert cli.returncode == 2 and cli.stderr.strip() == f"regsearch: error: {info.value}"
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlruns").exists()


def test_a_champion_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no champion for study 'nothing-here'"):
        load_champion("nothing-here")
    assert not (tmp_path / "mlruns").exists()


def test_a_launch_from_another_thread_runs_and_one_override_string_is_one_override(
    tmp_path: Path,
) -> None:
    """A web app or a thread pool calls `run` off the main thread, where Python takes no
    signal handlers: the study runs all the same. The study file's own tracking store is the
    one the result names, so `load_champion` finds the champion there."""
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump(
            {
                "study": "threaded",
                "dataset": {"name": "synthetic", "image_size": 8, "num_samples": 80},
                "search": {"n_trials": 1, "confirm": "off"},
                "tracking": {"uri": f"sqlite:///{tmp_path}/elsewhere/mlflow.db"},
            }
        )
    )
    results: list[object] = []
    thread = threading.Thread(
        target=lambda: results.append(run(tmp_path / "s.yaml", overrides="train.epochs=1"))
    )
    thread.start()
    thread.join(timeout=300)
    (result,) = results
    assert isinstance(result, StudyResult) and result.best is not None
    assert result.best["params"] is not None
    assert result.tracking_uri == f"sqlite:///{tmp_path}/elsewhere/mlflow.db"
    model = load_champion(result.name, tracking_uri=result.tracking_uri)
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


_NOTEBOOK = """
import logging, os, sys
import torch
from search.api import best, load_champion, run

log = logging.getLogger("notebook")
root = logging.getLogger()
before = (root.level, list(root.handlers))
result = run(
    {"study": "nb", "dataset": {"name": "synthetic", "image_size": 8, "num_samples": 80}},
    overrides=["search.n_trials=1", "search.confirm=off", "train.epochs=1"],
)
assert (root.level, list(root.handlers)) == before, (root.level, root.handlers)
os.makedirs("elsewhere")
os.chdir("elsewhere")  # a notebook's %cd
assert best(result.name, storage=result.storage)["study"] == "nb"
model = load_champion(result.name, tracking_uri=result.tracking_uri)
with torch.no_grad():
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
assert (root.level, list(root.handlers)) == before, (root.level, root.handlers)
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
log.info("the notebook's own log line")
"""


def test_a_notebook_keeps_its_logging_and_its_handles_outlive_a_change_of_folder(
    tmp_path: Path,
) -> None:
    """In a fresh process (MLflow configures the root logger on its first import only): the
    notebook's `logging.basicConfig` still works after a launch and a champion load, and the
    result's storage and tracking URI still open after `os.chdir`."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _NOTEBOOK], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the notebook's own log line" in done.stdout


def test_a_notebook_factory_with_worker_processes_is_refused_before_anything_is_created(
    tmp_path: Path,
) -> None:
    with pytest.raises(UserError) as info:
        run({"model": {"name": "__main__:make_net"}}, workers=2)
    assert str(info.value).startswith(
        "model.name: __main__:make_net is defined in this process, which worker processes "
        "cannot import"
    )
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlruns").exists()
