"""Throughput figures of `regsearch bench`, on the CPU or a GPU (`--device cuda`).

`train_images_per_second`: augmented images a second through forward, backward and step of
every model, eager and (optionally) compiled, with the share of the step spent in data slicing
and augmentation. `augment_speedup`: the batched augmentation engine against the
per-image PIL pipeline. `airbench_trial`: a whole 10-epoch trial of the `airbench` model on
CIFAR-shaped data, against airbench's published speed. On a GPU the data are CIFAR-shaped
(50,000 × 3 × 32 × 32), as in the GPU acceptance run; on the CPU smaller, to finish in seconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from search.config.space import space_of
from search.data.dataset import Dataset, ImageSet
from search.study.studyfile import load_config

__all__ = [
    "AIRBENCH_IMAGES_PER_SECOND",
    "airbench_trial",
    "augment_speedup",
    "train_images_per_second",
]

# airbench94 (Keller Jordan, 2024): CIFAR-10 to 94% in ≈3.3 s on one A100, ≈10 epochs of
# 50,000 images, i.e. ≈150k training images a second with the data on the GPU.
AIRBENCH_IMAGES_PER_SECOND = 150_000
CIFAR_TRAIN = 50_000

# Every regularizer on, at middling rates: what a trial of a study trains with.
_SPACE = (
    "space={weight_decay: 0.005, dropout: 0.1, aug_strength: 0.5, mixup_alpha: 0.2, "
    "label_smoothing: 0.1, cutmix_alpha: 1.0, cutout: 0.25, drop_path: 0.1}"
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cifar_shaped(
    n_train: int, device: torch.device, *, n_val: int = 1000, seed: int = 0
) -> Dataset:
    """Random uint8 3×32×32 images with 10 random labels, on `device` (timing only: nothing
    is learnt from them)."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> ImageSet:
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
        return ImageSet(x, torch.randint(0, 10, (n,), generator=gen)).to(device)

    return Dataset(
        name="cifar-shaped",
        train=split(n_train),
        val=split(n_val),
        test=split(n_val),
        classes=tuple(str(i) for i in range(10)),
        max_value=255.0,
        allow_flip=True,
    )


def train_images_per_second(
    *,
    device: torch.device | None = None,
    models: tuple[str, ...] | None = None,
    images: int | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    compile: tuple[bool, ...] | None = None,
) -> dict[str, Any]:
    """Training throughput of each model on CIFAR-shaped data on `device` (default: the
    best there is), eager and, by default on a GPU, compiled too.

    Per model and mode: one warm-up step (with `compile`, its seconds are the compile time),
    then `steps` timed steps with one synchronisation at the end (as `train()` runs: no sync
    inside the loop); then the same batches through slicing + augmentation alone, whose time
    over the full steps' is `data_share`.
    """
    from models import list_models
    from search.training.train import resolve_device

    device = device or resolve_device("auto")
    gpu = device.type == "cuda"
    images = images or (CIFAR_TRAIN if gpu else 1200)
    batch_size = batch_size or (512 if gpu else 128)
    steps = steps or (30 if gpu else 6)
    compile = compile if compile is not None else ((False, True) if gpu else (False,))
    data = cifar_shaped(images, device)
    config = load_config(overrides=[_SPACE, f"train.batch_size={batch_size}"])
    space = space_of(config)
    results: dict[str, Any] = {}
    for name in models or tuple(list_models()):
        cfg = space.resolve(space.fixed_values())
        cfg = replace(cfg, model=cfg.model.model_copy(update={"name": name}))
        results[name] = {
            "compiled" if compiled else "eager": _throughput(
                cfg, data, batch_size=batch_size, steps=steps, compiled=compiled
            )
            for compiled in compile
        }
    return {
        "device": _device_name(device),
        "images": images,
        "image": "3x32x32",
        "batch_size": batch_size,
        "steps": steps,
        "precision": "bf16 autocast" if gpu else "fp32",
        "models": results,
    }


def _throughput(
    cfg: Any, data: Dataset, *, batch_size: int, steps: int, compiled: bool
) -> dict[str, float]:
    from search.training.augment import BatchTransform
    from search.training.evaluation import batch
    from search.training.train import build_model, make_optimizer

    device = data.train.x.device
    gpu = device.type == "cuda"
    transform = BatchTransform(
        cfg.regularization, num_classes=data.num_classes, allow_flip=True, colour=True
    )
    model, _ = build_model(cfg, data)
    model = model.to(device)
    if gpu:
        model = model.to(memory_format=torch.channels_last)
    step_model: Any = torch.compile(model) if compiled else model
    optimizer = make_optimizer(model, cfg)
    n = len(data.train)
    batches = [torch.randint(0, n, (batch_size,), device=device) for _ in range(steps + 1)]

    def augmented(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return transform(*batch(data.train, idx, data.max_value, gpu))

    def step(idx: torch.Tensor) -> None:
        x, y = augmented(idx)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            logits = step_model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def loop(fn: Callable[[torch.Tensor], Any], todo: list[torch.Tensor]) -> None:
        for idx in todo:
            fn(idx)

    warm = _seconds(lambda: step(batches[0]), device)
    step_s = _seconds(lambda: loop(step, batches[1:]), device)
    data_s = _seconds(lambda: loop(augmented, batches[1:]), device)
    figures = {
        "images_per_second": round(steps * batch_size / step_s, 1),
        "data_share": round(min(1.0, data_s / step_s), 4),
    }
    if compiled:
        figures["compile_seconds"] = round(warm, 2)
    return figures


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def airbench_trial(
    *,
    device: torch.device | None = None,
    images: int | None = None,
    epochs: int = 10,
    val_images: int = 1000,
    warmup_images: int = 2048,
) -> dict[str, Any]:
    """Seconds for one trial as `regsearch run` trains it (`train()`: the batched
    augmentation, the per-epoch evaluation on a `val_images` validation split and a 512-image
    clean training subset) of the `airbench` model, `epochs` epochs of CIFAR-shaped data,
    after a one-epoch warm-up on `warmup_images`;
    `airbench_ratio` is those seconds ÷ the seconds airbench's published ≈150k images/s
    would take for the same images (1 = as fast; 2 = twice as slow)."""
    from search.training.train import resolve_device, train

    device = device or resolve_device("auto")
    images = images or CIFAR_TRAIN
    data = cifar_shaped(images, device, n_val=val_images)
    config = load_config(
        overrides=[
            _SPACE,
            "model.name=airbench",
            f"train.epochs={epochs}",
            "train.batch_size=512",
            "train.min_steps_per_epoch=1",  # an epoch is one pass, as airbench counts it
            "train.warmup_epochs=0.5",
            "early_stopping.patience=null",
        ]
    )
    space = space_of(config)
    cfg = space.resolve(space.fixed_values())
    warm = replace(cfg, train=cfg.train.model_copy(update={"epochs": 1}))
    warm_data = cifar_shaped(warmup_images, device, n_val=val_images)
    train(warm, warm_data, device=device)  # cuDNN autotune, the allocator
    seconds = _seconds(lambda: train(cfg, data, device=device), device)
    reference = images * epochs / AIRBENCH_IMAGES_PER_SECOND
    return {
        "device": _device_name(device),
        "model": "airbench",
        "images": images,
        "epochs": epochs,
        "seconds": round(seconds, 2),
        "images_per_second": round(images * epochs / seconds, 1),
        "airbench_seconds_at_150k_per_s": round(reference, 2),
        "airbench_ratio": round(seconds / reference, 2),
    }


class _PILImages(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """The reference input pipeline: PIL images, a torchvision transform per image.

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
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Augmented images per second of `BatchTransform` on whole uint8 batches held as one tensor
    (A, ours) ÷ the same per-image operations as torchvision PIL transforms in a `DataLoader`
    (B, the reference pipeline); the median of A/B per round. A runs on `device` (the
    CPU by default; on a GPU with the images held there, as `train()` holds them, and B's
    batches are copied to the GPU, as a trial would need them); B always runs on the CPU.

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

    from search.config.schema import Regularization
    from search.training.augment import BatchTransform
    from search.training.evaluation import batch

    if images < 1 or batch_size < 1 or rounds < 1:
        raise ValueError(
            f"need images, batch_size, rounds >= 1; got {images=}, {batch_size=}, {rounds=}"
        )
    device = device or torch.device("cpu")
    workers = torch.get_num_threads() if workers is None else workers
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (images,), generator=gen)
    images_set = ImageSet(pixels, labels).to(device)

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
        perm = torch.randperm(images, generator=gen).to(device)
        _sync(device)
        start = time.perf_counter()
        for i in range(0, images, batch_size):
            idx = perm[i : i + batch_size]
            ours(*batch(images_set, idx, 255.0))
        _sync(device)
        return images / (time.perf_counter() - start)

    def per_image() -> float:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True)
        seen, start = 0, 0.0
        for k, (x, _) in enumerate(loader):
            if k == warm_batches - 1:
                start = time.perf_counter()
            elif k >= warm_batches:
                if device.type != "cpu":
                    x.to(device, non_blocking=True)
                seen += len(x)
                if seen >= images:
                    break
        _sync(device)
        return seen / (time.perf_counter() - start)

    ours(*batch(images_set, torch.arange(batch_size, device=device), 255.0))  # warm-up
    a, b = [], []
    for _ in range(rounds):
        a.append(batched())
        b.append(per_image())
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {
        "augment_speedup": round(statistics.median(ratios), 2),
        "batched_images_per_second": round(statistics.median(a), 1),
        "reference_images_per_second": round(statistics.median(b), 1),
        "device": _device_name(device),
        "reference_workers": workers,
        "images": images,
        "batch_size": batch_size,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "round_ratios": [round(r, 2) for r in ratios],
    }
