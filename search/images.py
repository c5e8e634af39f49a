"""What a data set is once loaded: uint8 image tensors in fixed splits (`ImageSet`,
`Dataset`), what a loader returns (`Loaded`) and the registry of loaders by name.

Images are kept as uint8 (N, C, H, W) so a whole training set fits on the device; the training
loop converts batches to float in [0, 1] by dividing by `max_value` (16 for digits, whose pixels
are 0..16; 255 for ordinary images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from search.config import DatasetConfig

__all__ = [
    "CHUNK",
    "Dataset",
    "ImageSet",
    "Loaded",
    "LoaderResult",
    "dataset_loader",
    "register_dataset",
]


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
    channel_note: str = ""  # why the images have the channels they have (for `auto`)

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
        # Sums over chunks in float64 rather than one float copy of the whole set (+600 MB
        # for CIFAR-10 on the host).
        x = self.train.x
        channels = x.shape[1]
        total = torch.zeros(channels, dtype=torch.float64, device=x.device)
        squares = torch.zeros(channels, dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], CHUNK):
            block = x[start : start + CHUNK].to(torch.float64).div_(self.max_value)
            total += block.sum(dim=(0, 2, 3))
            squares += block.square().sum(dim=(0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        var = (squares - count * mean.square()) / max(1, count - 1)
        std = var.clamp_min(0).sqrt().clamp_min(1e-3)
        return mean.tolist(), std.tolist()


CHUNK = 4096  # images per step when a whole-set float copy would be too big


class Loaded(NamedTuple):
    """What a loader returns: the plain 5-tuple `(x, y, classes, max_value, allow_flip)`, or this
    with `test_size` set when the last `test_size` images are the set's official test split."""

    x: np.ndarray  # uint8 (N, C, H, W)
    y: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]
    max_value: float
    allow_flip: bool
    test_size: int | None = None
    grey: int | None = None  # how many of the images are grayscale, where a folder mixes them


LoaderResult = tuple[np.ndarray, np.ndarray, tuple[str, ...], float, bool]
_Loader = Callable[[DatasetConfig], LoaderResult | Loaded]
_LOADERS: dict[str, _Loader] = {}


def register_dataset(name: str) -> Callable[[_Loader], _Loader]:
    """Make `fn` the loader of `dataset.name: NAME`."""

    def decorate(fn: _Loader) -> _Loader:
        _LOADERS[name] = fn
        return fn

    return decorate


def dataset_loader(name: str) -> _Loader:
    """The loader registered for `name`; KeyError when there is none."""
    return _LOADERS[name]
