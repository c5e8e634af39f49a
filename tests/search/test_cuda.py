"""The CUDA path (`pytest -m cuda`): skipped, with its reason, on a machine without a GPU.

On a GPU: a trial trains with bf16 autocast and channels_last and gives finite curves; the
host↔device synchronisations of a trial do not grow with its optimizer steps (only the
epoch-end metrics sync); `train.compile` works; an out-of-memory trial fails alone and the next
one runs; the champion trained on CUDA loads and predicts the same on a CPU-only process; two
workers share one GPU with exact totals. `bash scripts/gpu-acceptance.sh` runs these.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from search.config.space import SearchSpace
from search.data.dataset import load_dataset
from search.study.studyfile import load_config
from search.training.train import train
from tests.helpers import regsearch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False on this machine)",
    ),
]
CIFAR_SHAPED = [
    "dataset={name: synthetic, image_size: 32, channels: 3, num_samples: 2000}",
    "model.name=small-cnn",
    "train.device=cuda",
    "early_stopping.patience=null",
]


def _trial(*overrides: str):
    config = load_config(overrides=[*CIFAR_SHAPED, *overrides])
    space = SearchSpace.from_config(config)
    values = {**space.fixed_values(), **(space.baseline_values() or {})}
    return space.resolve(values), load_dataset(config.dataset).to(torch.device("cuda"))


def test_a_trial_trains_on_cuda_with_bf16_and_channels_last() -> None:
    cfg, data = _trial("train.epochs=3")
    assert cfg.train.precision == "auto", "auto = bf16 autocast on CUDA"
    result = train(cfg, data, device=torch.device("cuda"))
    assert result.epochs_trained == 3 and result.best_value is not None
    for stats in result.history:
        values = [stats.train_loss, stats.val_loss, stats.val_accuracy, stats.fit_loss]
        assert all(torch.isfinite(torch.tensor(values))), stats
    assert all(v.device.type == "cpu" for v in result.state_dict.values()), "weights on host"


def _syncs(min_steps: int) -> int:
    cfg, data = _trial("train.epochs=2", f"train.min_steps_per_epoch={min_steps}")
    train(cfg, data, device=torch.device("cuda"), on_epoch=None)  # warm-up: cuDNN, allocator
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(cfg, data, device=torch.device("cuda"))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_synchronisations_do_not_grow_with_the_optimizer_steps() -> None:
    """Only the epoch-end metrics sync with the host: 4× the steps, the same syncs."""
    few, many = _syncs(8), _syncs(32)
    assert many <= few + 2, f"{few} syncs at 8 steps an epoch, {many} at 32: the step loop syncs"


def test_compile_works_on_cuda_and_compiles_once_for_a_worker_s_trials() -> None:
    """Two trials with other dropout and stochastic-depth rates: the second compiles nothing
    (its rates are graph inputs), and each reports its first step's seconds."""
    from dataclasses import replace

    from torch._dynamo.utils import counters

    cfg, data = _trial("train.epochs=2", "train.compile=true")
    torch._dynamo.reset()
    first = train(cfg, data, device=torch.device("cuda"))
    assert first.best_value is not None and first.epochs_trained == 2
    frames = counters["frames"]["ok"]
    other = replace(
        cfg, regularization=cfg.regularization.model_copy(update={"dropout": 0.3, "drop_path": 0.1})
    )
    second = train(other, data, device=torch.device("cuda"))
    assert second.best_value is not None
    assert counters["frames"]["ok"] == frames, "the second trial recompiled"
    assert first.compile_seconds is not None and second.compile_seconds is not None


def test_an_out_of_memory_trial_fails_alone_and_the_next_one_runs(tmp_path: Path) -> None:
    import io

    import optuna
    from rich.console import Console

    from search.run.options import RunOptions
    from search.run.runner import run_study

    config = load_config(
        overrides=[
            *CIFAR_SHAPED,
            "study=oom",
            "train.epochs=1",
            "search.n_trials=2",
            "search.pruner=none",
            "search.confirm=none",
            "baseline=none",
            "tracking.enabled=false",
            "space.width={type: categorical, choices: [16, 2048]}",
        ]
    )
    storage = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="oom", storage=storage, direction="maximize")
    study.enqueue_trial({"width": 2048})  # gigabytes of activations: over the 2 GiB cap
    study.enqueue_trial({"width": 16})
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 2 * 2**30 / total))
    try:
        run_study(config, RunOptions(storage, quiet=True), console=Console(file=io.StringIO()))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    first, second = optuna.load_study(study_name="oom", storage=storage).trials[:2]
    assert first.state.name == "FAIL"
    assert first.user_attrs["stop_reason"].startswith("out_of_memory")
    assert second.state.name == "COMPLETE"


def test_the_champion_trained_on_cuda_predicts_the_same_on_a_cpu_only_process(
    tmp_path: Path,
) -> None:
    args = ("run", "--study", "gpu", "--n-trials", "2", "--device", "cuda", "--quiet")
    sets = [a for s in CIFAR_SHAPED[:2] for a in ("--set", s)]
    proc = regsearch(*args, *sets, "--set", "train.epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = f"""
import json, mlflow, numpy as np, torch
assert not torch.cuda.is_available()
mlflow.set_registry_uri("sqlite:///{tmp_path}/mlruns/mlflow.db")
mlflow.set_tracking_uri("sqlite:///{tmp_path}/mlruns/mlflow.db")
model = mlflow.pyfunc.load_model("models:/gpu@champion")
x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
print(json.dumps(np.asarray(model.predict(x), dtype=np.float32).tolist()))
"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    on_cpu = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    from mlflow import MlflowClient

    from search.tracking.registry import load_checkpoint

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    version = client.get_model_version_by_alias("gpu", "champion")
    model = load_checkpoint(client, str(version.run_id)).to("cuda")
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        on_gpu = model(x.cuda()).float().cpu()
    torch.testing.assert_close(on_cpu, on_gpu, rtol=1e-3, atol=1e-3)


def test_two_workers_share_one_gpu_with_exact_totals(tmp_path: Path) -> None:
    sets = [a for s in CIFAR_SHAPED[:2] for a in ("--set", s)]
    proc = regsearch(
        "run", "--study", "two", "--n-trials", "6", "--workers", "2", "--gpus", "0,0",
        "--set", "train.epochs=2", *sets, "--quiet", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(regsearch("status", "two", "--json", cwd=tmp_path).stdout)
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 6
    assert not [r for r in rows if r["state"] == "RUNNING"]
