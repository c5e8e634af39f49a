"""`regsearch bench`: performance figures as ratios measured side by side in one process.

Each figure runs its contenders alternately (A B A B …) on the same machine and reports the
median of the per-pair ratios, so drift in machine load hits both sides alike.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from search.config import load_config
from search.data import Dataset, load_dataset
from search.space import SearchSpace
from search.train import train

__all__ = ["BENCHMARKS", "machine", "run_benchmarks"]

# A middle-of-the-road trial of the default study: every regularizer on, no early stop, so the
# service run and the bare run train exactly the same epochs.
_TRIAL_OVERRIDES = [
    "space.weight_decay=0.005",
    "space.dropout=0.2",
    "space.aug_strength=0.3",
    "space.mixup_alpha=0.4",
    "space.label_smoothing=0.1",
    "early_stopping.patience=null",
    "search.pruner=none",
    "search.confirm=none",  # the figures are of search trials
]


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def trial_overhead(*, repeats: int = 5, epochs: int = 20) -> dict[str, Any]:
    """Wall time of one digits trial run through the service (Optuna report/prune, MLflow
    params/metrics/run lifecycle, champion bookkeeping) ÷ the same `train()` call alone.

    The first service trial of the study becomes the champion (model logged and registered);
    later ones have the same value, so they are not registered. Both ratios are reported.
    """
    import optuna

    from search.objective import Objective
    from search.storage import open_storage
    from search.study import create_or_resume
    from search.tracking import Tracker

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config(overrides=[*_TRIAL_OVERRIDES, f"train.epochs={epochs}"])
    data = load_dataset(config.dataset)
    space = SearchSpace.from_config(config)
    trial_cfg = space.resolve(space.fixed_values())
    with tempfile.TemporaryDirectory() as tmp:
        config = config.model_copy(update={"study": "bench-overhead"})
        storage = open_storage(f"sqlite:///{tmp}/optuna.db", config.search)
        study, _ = create_or_resume(config, storage)
        tracker = Tracker.for_study(study, config, tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        tracker._warm.join()  # one-time imports: paid once per worker, not per trial
        objective = Objective(config, data, device=torch.device("cpu"), tracker=tracker)
        bare_data = data.to("cpu")
        train(replace(trial_cfg, train=trial_cfg.train.model_copy(update={"epochs": 2})), bare_data)

        bare, service = [], []
        for _ in range(repeats):
            bare.append(_timed(lambda: train(trial_cfg, bare_data)))
            service.append(
                _timed(
                    lambda: study.optimize(objective, n_trials=1, callbacks=[objective.after_tell])
                )
            )
        champion_seconds = _champion_seconds(tracker, study, config, trial_cfg, data)
        tracker.close(study, finished=True, data=data)
    ratios = [s / b for s, b in zip(service, bare, strict=True)]
    return {
        "trial_overhead": round(statistics.median(ratios[1:] or ratios), 3),
        "trial_overhead_with_champion": round(ratios[0], 3),
        "champion_register_seconds": round(champion_seconds, 3),
        "bare_trial_seconds": round(statistics.median(bare), 3),
        "service_trial_seconds": round(statistics.median(service[1:] or service), 3),
        "epochs": epochs,
        "repeats": repeats,
    }


def _champion_seconds(
    tracker: Any, study: Any, config: Any, trial_cfg: Any, data: Dataset
) -> float:
    """Seconds to log + register + alias the digits model once more (warm process)."""
    result = train(replace(trial_cfg, train=trial_cfg.train.model_copy(update={"epochs": 1})), data)
    run_id = tracker.start_trial(999, {})
    seconds = _timed(
        lambda: tracker.register_champion(run_id, number=999, value=-1.0, result=result, data=data)
    )
    tracker.end_trial(run_id, state="COMPLETE", summary={})
    return seconds


def train_images_per_second(
    *, models: tuple[str, ...] | None = None, steps: int = 6
) -> dict[str, Any]:
    """Training throughput (augmented images per second through forward+backward+step) of each
    model on a synthetic 32×32 RGB set on the current device, and the share of step time spent
    in data slicing + augmentation."""
    from models import list_models
    from search.augment import BatchTransform
    from search.train import batch, build_model, make_optimizer, resolve_device

    device = resolve_device("auto")
    config = load_config(
        overrides=[
            "dataset={name: synthetic, num_samples: 1200, image_size: 32, channels: 3}",
            "space={weight_decay: 0.005, dropout: 0.1, aug_strength: 0.5, mixup_alpha: 0.2, "
            "label_smoothing: 0.1, cutmix_alpha: 1.0, cutout: 0.25, drop_path: 0.1}",
            "train.batch_size=128",
        ]
    )
    data = load_dataset(config.dataset).to(device)
    space = SearchSpace.from_config(config)
    results: dict[str, Any] = {}
    for name in models or tuple(list_models()):
        cfg = space.resolve(space.fixed_values())
        cfg = replace(cfg, model=cfg.model.model_copy(update={"name": name}))
        model, _ = build_model(cfg, data)
        model = model.to(device)
        optimizer = make_optimizer(model, cfg)
        transform = BatchTransform(
            cfg.regularization, num_classes=data.num_classes, allow_flip=True, colour=True
        )
        bs = 128
        data_s = step_s = 0.0
        for step in range(steps + 1):  # step 0 warms up
            idx = torch.randint(0, len(data.train), (bs,), device=device)
            t0 = time.perf_counter()
            x, y = transform(*batch(data.train, idx, data.max_value))
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if step:
                data_s += t1 - t0
                step_s += t2 - t0
        results[name] = {
            "images_per_second": round(steps * bs / step_s, 1),
            "data_share": round(data_s / step_s, 4),
        }
    return {"device": str(device), "batch_size": 128, "image": "3x32x32", "models": results}


class _PILImages(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """The seed's reference input pipeline: PIL images, a torchvision transform per image.

    Index `i` serves image `i mod len(images)`, so the set can be longer than the pool (the
    warm-up batches of `augment_speedup` are extra indices, not fewer timed images)."""

    def __init__(self, images: list[Any], labels: list[int], length: int, transform: Any) -> None:
        self.images, self.labels, self.length, self.transform = images, labels, length, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = index % len(self.images)
        return self.transform(self.images[i]), self.labels[i]


def augment_speedup(
    *,
    images: int = 20_000,
    batch_size: int = 256,
    rounds: int = 3,
    workers: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Augmented images per second of `BatchTransform` on whole uint8 batches held as one tensor
    (A, ours) ÷ the same per-image operations as torchvision PIL transforms in a `DataLoader`
    (B, the seed's reference pipeline), both on the CPU; the median of A/B per round.

    Both sides run the same policy: aug_strength 1 (translate ±0.125 of the side, zoom
    0.8–1.2, rotation ±15°, horizontal flip p=0.5, brightness/contrast/saturation 0.4) and
    cutout 0.25, no MixUp/CutMix. B uses `RandomAffine`, which covers our translate, zoom and
    rotation in one bilinear warp with zero fill (closer to ours than `RandomResizedCrop`, which
    crops and changes the aspect ratio), then `RandomHorizontalFlip`, `ColorJitter(0.4, 0.4,
    0.4)`, `ToTensor` and `RandomErasing(p=1, value=0)` of a square 0.25² of the area (an 8×8
    square on 32×32; ours is the same square but may be clipped at the border).

    A: per batch, slice the uint8 (N, 3, 32, 32) tensor by a fresh permutation, convert to
    float / 255 and call the transform, as `train()` does, with `torch.get_num_threads()`
    intra-op threads; one warm-up batch before the first round.
    B: `DataLoader(batch_size, num_workers=workers, shuffle=True)` over the PIL images (made once
    from the same uint8 array, outside the timing), default start method; `workers` defaults
    to `torch.get_num_threads()`, i.e. the cores A may use. Each round builds a new loader, so
    worker start-up is excluded: the clock starts once the first batch of every worker has
    arrived (those `workers` warm-up batches are extra indices and are not counted) and stops
    when `images` more images have arrived.
    The rounds alternate A B A B …, so drift in machine load hits both sides alike.
    """
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from search.augment import BatchTransform
    from search.config import Regularization
    from search.data import ImageSet
    from search.train import batch

    if images < 1 or batch_size < 1 or rounds < 1:
        raise ValueError(
            f"need images, batch_size, rounds >= 1; got {images=}, {batch_size=}, {rounds=}"
        )
    workers = torch.get_num_threads() if workers is None else workers
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (images,), generator=gen)
    images_set = ImageSet(pixels, labels)

    cutout = 0.25
    ours = BatchTransform(
        Regularization(aug_strength=1.0, cutout=cutout, mixup_alpha=0.0),
        num_classes=10,
        allow_flip=True,
        colour=True,
    )
    reference = T.Compose(
        [
            T.RandomAffine(
                degrees=15,
                translate=(0.125, 0.125),
                scale=(0.8, 1.2),
                interpolation=T.InterpolationMode.BILINEAR,
                fill=0,
            ),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
            T.ToTensor(),
            T.RandomErasing(p=1.0, scale=(cutout**2, cutout**2), ratio=(1.0, 1.0), value=0),
        ]
    )
    pil = [Image.fromarray(a) for a in pixels.permute(0, 2, 3, 1).contiguous().numpy()]
    warm_batches = max(workers, 1)
    dataset = _PILImages(pil, labels.tolist(), images + warm_batches * batch_size, reference)

    def batched() -> float:
        perm = torch.randperm(images, generator=gen)
        start = time.perf_counter()
        for i in range(0, images, batch_size):
            idx = perm[i : i + batch_size]
            ours(*batch(images_set, idx, 255.0))
        return images / (time.perf_counter() - start)

    def per_image() -> float:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True)
        seen, start = 0, 0.0
        for k, (x, _) in enumerate(loader):
            if k == warm_batches - 1:
                start = time.perf_counter()
            elif k >= warm_batches:
                seen += len(x)
                if seen >= images:
                    break
        return seen / (time.perf_counter() - start)

    ours(*batch(images_set, torch.arange(batch_size), 255.0))  # warm-up
    a, b = [], []
    for _ in range(rounds):
        a.append(batched())
        b.append(per_image())
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {
        "augment_speedup": round(statistics.median(ratios), 2),
        "batched_images_per_second": round(statistics.median(a), 1),
        "reference_images_per_second": round(statistics.median(b), 1),
        "reference_workers": workers,
        "images": images,
        "batch_size": batch_size,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "round_ratios": [round(r, 2) for r in ratios],
    }


PG_ADMIN_ENV = "REGSEARCH_BENCH_PG"  # e.g. postgresql://postgres@127.0.0.1:5432/postgres


def _storage_loop(url: str, *, trials: int, epochs: int) -> list[float]:
    """Seconds per trial of the service's own Optuna work with no training: ask, sample the
    contract space, report (+ prune check) every epoch, tell, with the default study's sampler
    and pruner, as the objective does them. How it grows with the study."""
    import optuna

    from search.objective import report_epoch
    from search.storage import open_storage
    from search.study import make_pruner, make_sampler

    config = load_config()
    space = SearchSpace.from_config(config)
    study = optuna.create_study(
        storage=open_storage(url),  # ask/tell has no heartbeat thread: measure without one
        sampler=make_sampler(config),
        pruner=make_pruner(config),
        direction=config.objective.direction,
        study_name="bench-storage",
    )
    seconds = []
    for number in range(trials):
        start = time.perf_counter()
        trial = study.ask()
        cfg = space.sample(trial)
        value = 0.5 + 0.4 * cfg.regularization.dropout  # any deterministic curve will do
        state = optuna.trial.TrialState.COMPLETE
        for epoch in range(1, epochs + 1):
            curve = value * epoch / epochs + 0.001 * (number % 7)
            if report_epoch(trial, curve, epoch, can_prune=True):
                state = optuna.trial.TrialState.PRUNED
                break
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        seconds.append(time.perf_counter() - start)
    return seconds


def storage_ms_per_trial(*, trials: int = 1000, epochs: int = 10) -> dict[str, Any]:
    """Milliseconds of storage + sampler + pruner work per trial near trial 10 and near the
    last trial, on SQLite and (when `$REGSEARCH_BENCH_PG` names an admin URL, or a server
    answers on 127.0.0.1:5432) on PostgreSQL in a scratch database."""
    import os
    import uuid

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, Any] = {"trials": trials, "epochs_per_trial": epochs}

    def summarise(seconds: list[float]) -> dict[str, float]:
        return {
            "ms_at_10": round(1000 * statistics.median(seconds[5:15]), 2),
            f"ms_at_{trials}": round(1000 * statistics.median(seconds[-10:]), 2),
        }

    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = summarise(
            _storage_loop(f"sqlite:///{tmp}/bench.db", trials=trials, epochs=epochs)
        )
    admin_url = os.environ.get(PG_ADMIN_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import psycopg

        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except Exception as exc:  # no driver or no server: report why, measure the rest
        out["postgresql"] = f"skipped: {type(exc).__name__}"
        return out
    name = f"regsearch_bench_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            out["postgresql"] = summarise(
                _storage_loop(f"{base}/{name}", trials=trials, epochs=epochs)
            )
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return out


def worker_scaling(*, trials: int = 8, epochs: int = 3) -> dict[str, Any]:
    """Finished trials per minute of a digits study with 2 workers ÷ with 1, one CPU thread
    per worker (the same CPU budget per trial), timed from the first trial's start to the
    last trial's end so process start-up is not counted."""
    import subprocess
    import sys

    import optuna

    rates = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "search", "run", "--study", "scaling", "--quiet"]
            cmd += ["--workers", str(workers), "--threads", "1", "--n-trials", str(trials)]
            cmd += ["--set", f"train.epochs={epochs}", "--set", "search.pruner=none"]
            cmd += ["--set", "tracking.enabled=false", "--set", "early_stopping.patience=null"]
            cmd += ["--set", "search.confirm=none"]  # search throughput, not the retrains
            subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
            study = optuna.load_study(
                study_name="scaling", storage=f"sqlite:///{tmp}/studies/regsearch.db"
            )
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            start = min(t.datetime_start for t in done if t.datetime_start)
            end = max(t.datetime_complete for t in done if t.datetime_complete)
            rates[workers] = len(done) / ((end - start).total_seconds() / 60)
    return {
        "worker_scaling": round(rates[2] / rates[1], 3),
        "trials_per_minute_1_worker": round(rates[1], 1),
        "trials_per_minute_2_workers": round(rates[2], 1),
        "trials": trials,
        "epochs": epochs,
    }


def _real_data() -> dict[str, Any]:
    from search.bench_real import real_data

    return real_data()


BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "trial_overhead": trial_overhead,
    "train_images_per_second": train_images_per_second,
    "augment_speedup": augment_speedup,
    "storage_ms_per_trial": storage_ms_per_trial,
    "worker_scaling": worker_scaling,
    "real_data": _real_data,
}
# Figures that take many minutes: run only when named with --only.
OPT_IN = ("real_data",)


def run_benchmarks(
    names: list[str] | None = None, *, echo: Callable[[str], None] | None = None
) -> dict[str, Any]:
    from search.memory import retain_freed_memory

    # As in `regsearch run`; DataLoader workers of the reference pipelines inherit it.
    out: dict[str, Any] = {"machine": {**machine(), "retain_freed_memory": retain_freed_memory()}}
    for name in names or [n for n in BENCHMARKS if n not in OPT_IN]:
        if echo:
            echo(f"bench: {name} …")
        out[name] = BENCHMARKS[name]()
    return out
