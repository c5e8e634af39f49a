"""Holes found by fault injection and hostile inputs: names from a shared storage that would
become paths, numeric values that used to create a study and then fail every trial (or give a
traceback), a one-class folder."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.config.schema import DatasetConfig, safe_study_name
from search.core.errors import UserError
from search.data.dataset import load_dataset
from search.data.sample import digits_images, write_imagefolder
from search.study.studyfile import load_config
from tests.helpers import regsearch


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("search.sampler.seed=.nan", "search.sampler: seed must be an integer"),
        ("search.sampler.seed=1e30", "search.sampler: seed must be an integer"),
        ("train.warmup_epochs=.inf", "train.warmup_epochs: Input should be a finite number"),
        ("train.lr=1e308", "train.lr: Input should be less than or equal to 10"),
        ("train.epochs=true", "train.epochs: Input should be a valid integer"),
        ("search.n_trials=2.0", "search.n_trials: Input should be a valid integer"),
        ("early_stopping.min_delta=.nan", "early_stopping.min_delta: Input should be a finite"),
    ],
)
def test_bad_numbers_are_one_line_errors_before_anything_exists(item: str, key: str) -> None:
    with pytest.raises(UserError, match=key.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=[item])


def test_bad_numbers_through_the_cli_exit_2_and_create_nothing(tmp_path: Path) -> None:
    proc = regsearch("run", "--set", "search.sampler.seed=.nan", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "regsearch: error: search.sampler: seed must be an integer in [0, 2**32), got nan"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_one_class_folder_is_refused_before_the_study_exists(tmp_path: Path) -> None:
    x, y = digits_images(16)
    write_imagefolder(tmp_path / "one", x[y == 3][:12], y[y == 3][:12])
    with pytest.raises(UserError, match=r"found 1 class .*needs at least 2"):
        load_dataset(DatasetConfig(name="imagefolder", root=tmp_path / "one", image_size=16))
    proc = regsearch(
        "run",
        "--set",
        "dataset.name=imagefolder",
        "--set",
        f"dataset.root={tmp_path / 'one'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "needs at least 2" in proc.stderr
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize("name", ["../x", "/abs/x", "ok\n", "a/b", ".hidden", ""])
def test_unsafe_study_names_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="not a valid study name"):
        safe_study_name(name)
    with pytest.raises(UserError, match="not a valid study name"):
        load_config(overrides=[], flags={"study": name})


def test_report_never_writes_outside_reports_for_a_name_from_storage(tmp_path: Path) -> None:
    """Another tool put a study named `../escape` in the shared storage."""
    (tmp_path / "studies").mkdir()
    url = f"sqlite:///{tmp_path}/studies/regsearch.db"
    study = optuna.create_study(study_name="../escape", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    proc = regsearch("report", "../escape", cwd=tmp_path)
    assert proc.returncode == 2
    assert "not a valid study name" in proc.stderr
    assert not (tmp_path / "escape").exists() and not (tmp_path / "reports").exists()
    # With an explicit --out the report is written there (the name is only shown).
    out = tmp_path / "out"
    ok = regsearch("report", "../escape", "--out", str(out), "--quiet", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "studies"]


def test_status_hides_a_password_with_spaces(tmp_path: Path) -> None:
    proc = regsearch(
        "status", "--storage", "postgresql+psycopg://u:pass word@127.0.0.1:1/db", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "pass word" not in proc.stderr and "word" not in proc.stderr
    assert "u:***@127.0.0.1:1" in proc.stderr


class _Payload:
    """What a crafted CIFAR batch holds: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_crafted_cifar_batch_cannot_run_code(tmp_path: Path) -> None:
    import pickle

    from tests.search.test_datasets import _write_cifar10

    _write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:
        pickle.dump({"data": _Payload(marker), "labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match=r"refusing to load posix\.system") as err:
        load_dataset(DatasetConfig(name="cifar10", root=tmp_path / "data"))
    assert "\n" not in str(err.value)
    assert not marker.exists(), "the payload ran"
    # Through the CLI, as every worker of a study would load it: exit 2, still nothing ran.
    proc = regsearch(
        "run",
        "--set",
        "dataset.name=cifar10",
        "--set",
        f"dataset.root={tmp_path / 'data'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "refusing to load" in proc.stderr
    assert not marker.exists()


def test_a_study_left_without_its_config_is_completed_by_the_next_run(tmp_path: Path) -> None:
    """A kill between `create_study` and storing the config left a bare study."""
    (tmp_path / "studies").mkdir()
    url = f"sqlite:///{tmp_path}/studies/regsearch.db"
    optuna.create_study(study_name="half", storage=url, direction="maximize")
    refused = regsearch("worker", "half", cwd=tmp_path)
    assert refused.returncode == 2 and "regsearch run --study half" in refused.stderr
    args = ("--set", "train.epochs=1", "--set", "tracking.enabled=false", "--quiet")
    first = regsearch("run", "--study", "half", "--n-trials", "1", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    study = optuna.load_study(study_name="half", storage=url)
    assert study.user_attrs["regsearch_config"]["train"]["epochs"] == 1
    assert study.metric_names == ["val_accuracy"]
    joined = regsearch("worker", "half", "--quiet", cwd=tmp_path)
    assert joined.returncode == 0, joined.stderr
    other = regsearch("run", "--study", "half", "--set", "train.epochs=2", cwd=tmp_path)
    assert other.returncode == 2 and "train.epochs" in other.stderr


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.8, 1.6, 2.4])
def test_a_kill_while_the_mlflow_store_is_created_leaves_none_or_a_whole_one(
    tmp_path: Path, delay: float
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    code = (
        "from pathlib import Path; from search.tracking.mlflow_store import create_store; "
        f"create_store(Path({str(db)!r}))"
    )
    # An empty cache: the kill falls in MLflow's migrations (of the cached template).
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2], env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if db.exists():  # created before the kill: whole, since it is linked in only then
        import sqlite3

        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    proc = regsearch(
        "run", "--n-trials", "1", "--set", "train.epochs=1", "--quiet", cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert db.exists()


def test_a_half_created_store_from_an_older_version_is_rebuilt(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:  # what an interrupted migration left behind
        conn.execute("CREATE TABLE runs (run_uuid TEXT)")
        conn.execute("CREATE TABLE _alembic_tmp_params (key TEXT)")
    proc = regsearch("run", "--n-trials", "1", "--set", "train.epochs=1", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in db.parent.glob("mlflow.db.broken-*")], "the old file is kept aside"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    assert client.get_experiment_by_name("digits") is not None


_ALIAS_BOMB = (
    "{a: &a [x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b], d: [*c, *c, *c, *c, *c, *c, *c, *c, *c]}"
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", f"space.x={_ALIAS_BOMB}"], "aliases (*name) are not allowed"),
        (["--set", "a" + ".a" * 1000 + "=1"], "a key is at most 16 levels deep"),
        (["--set", "space.x=" + "[" * 3000], "nested more than 16 levels deep"),
        (["--set", "space.x=" + "1," * 40_000], "a value is at most 65,536 characters"),
        (["--threads", "-3"], "--threads must be an integer >= 1, got -3"),
        (["--tracking-uri", "file:///tmp/somewhere"], "keeps no runs or models in a file store"),
        (["--tracking-uri", "ftp://host/x"], "unsupported scheme 'ftp'"),
        (["--study", "s" * 128, "--fractions", "0.5,1"], "a study name is at most 128"),
    ],
)
def test_hostile_values_are_one_short_line_and_create_nothing(
    args: list[str], message: str, tmp_path: Path
) -> None:
    proc = regsearch("run", "--n-trials", "1", *args, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert len(lines[0]) < 400  # an offending value is quoted, cut to ~200 characters
    assert list(tmp_path.iterdir()) == []


def test_a_study_file_with_an_alias_bomb_or_of_megabytes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(f"space:\n  x: {_ALIAS_BOMB}\n")
    with pytest.raises(UserError, match=r"bomb\.yaml: line 2 is not valid YAML \(aliases"):
        load_config(tmp_path / "bomb.yaml")
    (tmp_path / "big.yaml").write_text("space: [" + "1," * 1_000_000 + "1]\n")
    with pytest.raises(UserError, match=r"big\.yaml is 2,000,011 bytes; a study file is at most"):
        load_config(tmp_path / "big.yaml")


def test_a_fifo_among_the_images_is_not_read(tmp_path: Path) -> None:
    """A named pipe called `pipe.png` in a class folder hung the launch (and every worker
    reading the folder): only regular files are images."""
    import os
    import threading

    x, y = digits_images(16)
    folder = write_imagefolder(tmp_path / "imgs", x[:30], y[:30] % 3)
    os.mkfifo(folder / "0" / "pipe.png")
    result: list[object] = []
    cfg = DatasetConfig(name="imagefolder", root=folder, image_size=16)
    reader = threading.Thread(target=lambda: result.append(load_dataset(cfg)), daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the launch hung on the FIFO"
    data = result[0]
    assert len(data.train) + len(data.val) + len(data.test) == 30
