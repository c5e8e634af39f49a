"""Your own network: a timm or torchvision model, a user factory and a fine-tune from a weights
file, each searched end to end; its champion loads where regsearch, timm and the user's code
cannot be imported. And each way such a network is refused before anything is created."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient

from search.core.records import CONFIG_ATTR
from tests.helpers import regsearch

_FACTORY = """
    from torch import nn

    def small(*, num_classes, in_channels, dropout=0.0):
        # No drop_path parameter: the study must leave stochastic depth out.
        return nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16, num_classes),
        )
"""
_MODULE = "own_net_factory"


def _synthetic(size: int, channels: int) -> dict[str, Any]:
    return {
        "name": "synthetic",
        "image_size": size,
        "channels": channels,
        "num_samples": 160,
        "num_classes": 4,
    }


def _study_file(folder: Path, study: str, model: dict[str, Any], data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "study": study,
        "dataset": data,
        "model": model,
        "train": {"epochs": 2},
        "search": {"n_trials": 2, "confirm": "off"},
        "space": {"drop_path": {"type": "float", "low": 0.0, "high": 0.2}},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    return MlflowClient(uri, registry_uri=uri)


def _champion_in_a_bare_process(root: Path, study: str, data: dict[str, Any]) -> dict[str, Any]:
    """Load `models:/<study>@champion` in a process where regsearch, timm and the user's
    module cannot be imported, and score it on the study's test split."""
    from search.config.schema import DatasetConfig
    from search.data.dataset import load_dataset

    test = load_dataset(DatasetConfig(**data)).test
    np.save(root / "x.npy", (test.x.numpy() / 255.0).astype(np.float32))
    np.save(root / "y.npy", test.y.numpy())
    script = textwrap.dedent(
        f"""
        import json, sys
        for name in ("search", "models", "timm", "{_MODULE}"):
            sys.modules[name] = None  # any import of them fails
        import mlflow, mlflow.pytorch, numpy as np, torch
        mlflow.set_tracking_uri("sqlite:///{root}/mlruns/mlflow.db")
        model = mlflow.pytorch.load_model("models:/{study}@champion")
        x = torch.from_numpy(np.load("{root}/x.npy"))
        y = np.load("{root}/y.npy")
        with torch.no_grad():
            accuracy = float((model(x).argmax(1).numpy() == y).mean())
        print(json.dumps({{"accuracy": accuracy}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd="/", capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _write_weights(path: Path) -> None:
    """Weights as timm saves them: a 1000-class, RGB `test_resnet`."""
    from safetensors.torch import save_file

    from models import create_model

    net = create_model("timm/test_resnet", num_classes=1000, in_channels=3).net
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


_CASES = {
    "timm": ({"name": "timm/test_resnet"}, _synthetic(16, 1)),
    "torchvision": ({"name": "torchvision/resnet18"}, _synthetic(32, 3)),
    "factory": ({"name": f"{_MODULE}:small"}, _synthetic(12, 1)),
    "finetune": ({"name": "timm/test_resnet", "weights": "w.safetensors"}, _synthetic(16, 1)),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(_CASES))
def test_any_network_is_searched_and_its_champion_loads_without_regsearch(
    kind: str, tmp_path: Path
) -> None:
    model, data = _CASES[kind]
    folder = tmp_path / "project"
    if kind == "factory":
        folder.mkdir()
        (folder / f"{_MODULE}.py").write_text(textwrap.dedent(_FACTORY))
    if "weights" in model:
        _write_weights(tmp_path / model["weights"])
    study = f"own-{kind}"
    path = _study_file(folder, study, model, data)
    proc = regsearch("run", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"{study}: this launch took ")
    if kind == "factory":  # imported from the study file's folder, stored for every worker
        assert f"drop_path left out of the search space and the baseline ({_MODULE}:small " in (
            proc.stderr
        )
    if kind == "torchvision":
        assert "torchvision/resnet18: 11.1" in proc.stderr  # ≥ 1M parameters, said once
        assert "dropout left out of the search space" in proc.stderr
    if kind == "finetune":
        assert "re-initialised (shape differs)" in proc.stderr
        assert "conv1.0.weight summed over RGB for grey images" in proc.stderr
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    trials = optuna.load_study(study_name=study, storage=storage).trials
    states = [t.state for t in trials]
    assert len(states) == 2 and optuna.trial.TrialState.FAIL not in states, states
    out = _champion_in_a_bare_process(tmp_path, study, data)
    version = _client(tmp_path).get_model_version_by_alias(study, "champion")
    assert out["accuracy"] == pytest.approx(float(version.tags["test_accuracy"]), abs=1e-9)


@pytest.mark.slow
def test_a_left_out_regularizer_is_recorded_in_the_study_and_the_parent_run(
    tmp_path: Path,
) -> None:
    path = _study_file(tmp_path / "p", "left", {"name": "torchvision/resnet18"}, _synthetic(16, 1))
    proc = regsearch("run", str(path), "--n-trials", "1", "--set", "train.epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = "left: dropout left out of the search space and the baseline"
    assert line + " (torchvision/resnet18 takes no dropout)" in proc.stderr
    study = optuna.load_study(
        study_name="left", storage=f"sqlite:///{tmp_path}/studies/regsearch.db"
    )
    assert study.user_attrs["left_out"] == {
        "dropout": "torchvision/resnet18 takes no dropout",
        "drop_path": "torchvision/resnet18 takes no drop_path",
    }
    stored = study.user_attrs[CONFIG_ATTR]
    assert stored["space"]["dropout"] == 0.0 and "dropout" not in stored["baseline"]
    assert all("dropout" not in t.params for t in study.trials)
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("left")
    assert experiment is not None
    parent = client.search_runs([experiment.experiment_id], "tags.role = 'study'")[0]
    assert "dropout: torchvision/resnet18 takes no dropout" in parent.data.tags["left_out"]


@pytest.mark.slow
def test_workers_import_the_factory_from_the_study_folder_and_fail_at_start_without_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / f"{_MODULE}.py").write_text(textwrap.dedent(_FACTORY))
    path = _study_file(folder, "fac", {"name": f"{_MODULE}:small"}, _synthetic(12, 1))
    proc = regsearch("run", str(path), "--workers", "2", "--n-trials", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    trials = optuna.load_study(study_name="fac", storage=storage).trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    # Both workers built the network: no trial failed, but one a worker started after the
    # other had taken the budget's last (`surplus`, the shared budget's overshoot).
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert all(t.user_attrs.get("stop_reason") == "surplus" for t in failed), [
        t.user_attrs.get("stop_reason") for t in failed
    ]
    # The module gone from this machine: a joining worker stops at start-up with the reason,
    # before it takes a trial.
    shutil.rmtree(folder)
    proc = regsearch("worker", "fac", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"regsearch: error: model.name: cannot import '{_MODULE}' for '{_MODULE}:small': "
        f"ModuleNotFoundError: No module named '{_MODULE}' (looked on sys.path and in {folder})"
    )
    after = optuna.load_study(study_name="fac", storage=storage).trials
    assert len(after) == len(trials)


_BRANCHY = """
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self, num_classes, in_channels):
            super().__init__()
            self.fc = nn.Linear(in_channels, num_classes)

        def forward(self, x):
            x = x.mean(dim=(2, 3))
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                return self.fc(x)
            return -self.fc(x)

    def build(*, num_classes, in_channels):
        return Branchy(num_classes, in_channels)
"""


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.name=timm/resnet_18", "model.name: unknown timm model 'resnet_18'; did you mean"),
        (
            "model.name=not_a_module_anywhere:build",
            "model.name: cannot import 'not_a_module_anywhere' for "
            "'not_a_module_anywhere:build': ModuleNotFoundError",
        ),
        ("model.name=branchy_user_net:build", "cannot be exported with torch.export"),
        ("model.name=timm/vgg11", "model.name: timm/vgg11 fails on this data's (1, 8, 8) images"),
        ("model.weights=missing.safetensors", "model.weights: no file missing.safetensors"),
        ("model.kwargs={global_pool: max}", "model.kwargs applies to timm/, torchvision/"),
    ],
)
def test_a_network_that_cannot_serve_stops_the_launch_before_anything_is_created(
    setting: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "branchy_user_net.py").write_text(textwrap.dedent(_BRANCHY))
    extra = ["--set", f"model.path={tmp_path}"] if "branchy" in setting else []
    proc = regsearch("run", "--study", "refused", "--set", setting, *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("regsearch: error: ") and message in last, last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlruns").exists()


def test_a_built_in_network_too_small_for_the_images_stops_the_launch() -> None:
    """airbench pools three times: a 6 px image is gone before its head. Only outside
    networks were run before the trials, so every trial failed with torch's message."""
    from search.core.errors import UserError
    from search.run.runner import prepare
    from search.study.studyfile import load_config

    config = load_config(
        overrides=["dataset.name=synthetic", "dataset.image_size=6", "model.name=airbench"]
    )
    with pytest.raises(UserError, match=r"model.name: airbench fails on this data's \(1, 6, 6\)"):
        prepare(config, export=False)


def _run_factory(tmp_path: Path, source: str, factory: str, *args: str) -> Any:
    """`regsearch run --set model.name=FACTORY ARGS…` with the module `source` written into
    `tmp_path` (FACTORY is `module:callable`; the module is named after it)."""
    (tmp_path / f"{factory.partition(':')[0]}.py").write_text(textwrap.dedent(source))
    return regsearch(
        "run", "--set", f"model.name={factory}", "--set", f"model.path={tmp_path}", *args,
        cwd=tmp_path,
    )  # fmt: skip


_MISFITS = """
    from torch import nn

    def wrong_head(*, num_classes, in_channels):  # ImageNet's 1,000 logits whatever the data
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(1000))

    def lazy(*, num_classes, in_channels):  # shapes from the first batch
        return nn.Sequential(
            nn.LazyConv2d(8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(num_classes)
        )

    def rgb_only(*, num_classes, in_channels):  # a first convolution fixed at 3 channels
        return nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)
        )
"""


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "wrong_head",
            "model.name: misfit_nets:wrong_head returns (2, 1000) for 2 images in training "
            "mode; expected logits of shape (2, 10) (10 classes)",
        ),
        ("rgb_only", "model.name: misfit_nets:rgb_only fails on this data's (1, 8, 8) images"),
    ],
)
def test_a_network_that_misfits_the_data_stops_the_launch_without_a_registered_model(
    factory: str, message: str, tmp_path: Path
) -> None:
    """The forward check does not depend on registering the champion: without it, a network
    that misfits the images or the classes would fail every trial instead."""
    proc = _run_factory(
        tmp_path,
        _MISFITS,
        f"misfit_nets:{factory}",
        "--study",
        "misfit",
        "--set",
        "tracking.register_model=false",
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("regsearch: error: ") and message in last, last
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlruns").exists()


def test_a_network_with_lazy_layers_is_searched_and_registered(tmp_path: Path) -> None:
    proc = _run_factory(
        tmp_path,
        _MISFITS,
        "misfit_nets:lazy",
        "--study",
        "lazy",
        "--n-trials",
        "1",
        "--set",
        "train.epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model misfit_nets:lazy: 0.0" in proc.stderr  # its parameters were counted
    assert "champion: models:/lazy@champion" in proc.stderr


_FRAGILE = """
    from torch import nn

    class Fragile(nn.Module):
        def __init__(self, num_classes, in_channels, dropout):
            super().__init__()
            self.dropout = dropout
            self.fc = nn.Linear(in_channels, num_classes)

        def forward(self, x):
            if self.training and self.dropout > 0:
                raise RuntimeError(f"cannot train with dropout {self.dropout:.2f}")
            return self.fc(x.mean(dim=(2, 3)))

    def build(*, num_classes, in_channels, dropout=0.0):
        return Fragile(num_classes, in_channels, dropout)
"""


def test_every_failed_trial_records_why_and_the_launch_quotes_it(tmp_path: Path) -> None:
    """Built fine at launch (dropout 0), then every trial with a dropout fails in training:
    each FAIL records the exception's line and the worker; the launch's last line quotes it."""
    proc = _run_factory(
        tmp_path,
        _FRAGILE,
        "fragile_net:build",
        "--study",
        "fragile",
        "--set",
        "space.dropout={type: float, low: 0.1, high: 0.5}",
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("regsearch: error: study 'fragile' stopped: ")
    assert "in a row failed; last: error: RuntimeError: cannot train with dropout 0." in last
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    failed = optuna.load_study(study_name="fragile", storage=storage).trials
    assert failed and all(t.state == optuna.trial.TrialState.FAIL for t in failed)
    for trial in failed:
        assert trial.user_attrs["stop_reason"].startswith("error: RuntimeError: cannot train")
        assert ":" in trial.user_attrs["worker"]  # host:pid


@pytest.mark.slow
def test_worker_processes_that_fail_end_the_launch_with_their_code_and_one_line(
    tmp_path: Path,
) -> None:
    """With --workers, each worker prints its own reason; the launch then says how many
    failed, in one line, and exits with the first one's code."""
    proc = _run_factory(
        tmp_path,
        _FRAGILE,
        "fragile_net:build",
        "--study",
        "fragile2",
        "--workers",
        "2",
        "--threads",
        "1",
        "--set",
        "space.dropout={type: float, low: 0.1, high: 0.5}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        "regsearch: error: 2 of 2 worker processes failed (exit code 2); their own lines above "
        "say why"
    )
    assert sum("in a row failed; last: error: RuntimeError" in line for line in lines) == 2
    assert "Traceback" not in proc.stderr
