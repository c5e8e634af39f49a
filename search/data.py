"""Data sets as uint8 tensors with fixed train / val / test splits.

Images are kept as uint8 (N, C, H, W) so a whole training set fits on the device; the training
loop converts batches to float in [0, 1] by dividing by `max_value` (16 for digits, whose pixels
are 0..16; 255 for ordinary images). Splits are stratified and fixed by `split_seed`, so every
trial of a study — and every worker — sees the same validation and test images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from search.config import DatasetConfig
from search.errors import UserError

__all__ = ["Dataset", "ImageSet", "load_dataset", "register_dataset"]


@dataclass(frozen=True)
class ImageSet:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


@dataclass(frozen=True)
class Dataset:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    max_value: float
    allow_flip: bool  # a mirrored digit is another glyph; a mirrored cat is still a cat

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with all three splits on `device` (moved once per worker)."""
        return replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the training images in [0, 1] (for the model's Normalize)."""
        x = self.train.x.float().div_(self.max_value)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()


_Loader = Callable[[DatasetConfig], tuple[np.ndarray, np.ndarray, tuple[str, ...], float, bool]]
_LOADERS: dict[str, _Loader] = {}


def register_dataset(name: str) -> Callable[[_Loader], _Loader]:
    def decorate(fn: _Loader) -> _Loader:
        _LOADERS[name] = fn
        return fn

    return decorate


@register_dataset("digits")
def _digits(cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], float, bool]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    classes = tuple(str(c) for c in bunch.target_names)
    return x, bunch.target.astype(np.int64), classes, 16.0, False


@register_dataset("synthetic")
def _synthetic(cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], float, bool]:
    """Learnable but not trivial: each class is a smooth random prototype; samples are the
    prototype at a random contrast plus pixel noise."""
    rng = np.random.default_rng(cfg.split_seed + 12345)
    c, s, k, n = cfg.channels, cfg.image_size, cfg.num_classes, cfg.num_samples
    coarse = rng.uniform(0, 1, size=(k, c, 4, 4))
    reps = -(-s // 4)
    protos = np.kron(coarse, np.ones((1, 1, reps, reps)))[:, :, :s, :s]
    y = np.arange(n) % k
    rng.shuffle(y)
    contrast = rng.uniform(0.6, 1.0, size=(n, 1, 1, 1))
    x = protos[y] * contrast + rng.normal(0, 0.25, size=(n, c, s, s))
    x = np.clip(x * 255, 0, 255).astype(np.uint8)
    return x, y.astype(np.int64), tuple(f"class_{i}" for i in range(k)), 255.0, True


def _stratified_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def load_dataset(cfg: DatasetConfig) -> Dataset:
    try:
        loader = _LOADERS[cfg.name]
    except KeyError:
        raise UserError(f"dataset.name: unknown data set {cfg.name!r}") from None
    x, y, classes, max_value, allow_flip = loader(cfg)
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < 3:
        raise UserError(f"dataset {cfg.name!r}: every class needs at least 3 images to split")
    train, val, test = _stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)

    def subset(ix: np.ndarray) -> ImageSet:
        return ImageSet(torch.from_numpy(np.ascontiguousarray(x[ix])), torch.from_numpy(y[ix]))

    return Dataset(
        cfg.name, subset(train), subset(val), subset(test), classes, max_value, allow_flip
    )
