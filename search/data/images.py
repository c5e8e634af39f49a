"""What a data set is once loaded: uint8 image tensors in fixed splits (`ImageSet`,
`Dataset`), what a loader returns (`Loaded`) and the registry of loaders by name.

Images are kept as uint8 (N, C, H, W) so a whole training set fits on the device; the training
loop converts batches to float in [0, 1] by dividing by `max_value` (16 for digits, whose pixels
are 0..16; 255 for ordinary images).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from search.config.schema import DatasetConfig

__all__ = [
    "CHUNK",
    "Dataset",
    "ImageSet",
    "Loaded",
    "LoaderResult",
    "check_memory",
    "dataset_loader",
    "format_bytes",
    "memory_budget",
    "noisy_labels",
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
    size_note: str = ""  # why the images have the size they have (for `auto`)
    notes: tuple[str, ...] = ()  # what the loader did that the user should hear of
    # `dataset.label_noise`: the training split's true labels (its `y` holds the replaced
    # ones), the share replaced and the seed, so that `resplit` pools true labels and replaces
    # the same share of its own training split: validation labels stay true.
    train_true_y: torch.Tensor | None = None
    label_noise: float = 0.0
    noise_seed: int = 0
    # The training split's size before `dataset.train_fraction` (0: no fraction taken): what
    # `model.name: auto` chooses by, so that every study of a size sweep trains one network.
    full_train: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with all three splits on `device` (moved once per worker)."""
        true_y = None if self.train_true_y is None else self.train_true_y.to(device)
        return replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            train_true_y=true_y,
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

    def with_val_in_train(self) -> Dataset:
        """The training split with the validation images added (a refit, `search.study.refit`): all
        the labelled images, the test split still held out. The validation split stays, for
        the per-epoch display only: its images are training images now."""
        train = ImageSet(
            torch.cat([self.train.x, self.val.x]), torch.cat([self.train.y, self.val.y])
        )
        true_y = self.train_true_y
        return replace(
            self,
            train=train,
            train_true_y=None if true_y is None else torch.cat([true_y, self.val.y]),
        )

    def resplit(self, index: int) -> Dataset:
        """Split `index` of the labelled images: the training and validation images pooled and
        split again, stratified, seeded by `index`, with as many validation images as the
        study's own split (0: the study's own split). The test split stays. The confirm phase
        of a study with a small validation split retrains each seed on its own split
        (`search.study.evidence`), so its choice is not the luck of one split."""
        if index == 0:
            return self
        from sklearn.model_selection import train_test_split

        x = torch.cat([self.train.x, self.val.x])
        true_train = self.train.y if self.train_true_y is None else self.train_true_y
        y = torch.cat([true_train, self.val.y])
        pool = np.arange(len(y))
        labels = y.cpu().numpy()
        train, val = train_test_split(
            pool, test_size=len(self.val), stratify=labels, random_state=10_000 + index
        )
        train, val = np.sort(train), np.sort(val)
        train_y = y[torch.from_numpy(train).to(y.device)]
        true_y = None
        if self.label_noise > 0.0:
            noisy = noisy_labels(
                labels, train, self.label_noise, self.num_classes, self.noise_seed + index
            )
            true_y, train_y = train_y, torch.from_numpy(noisy[train]).to(y.device)
        train_ix = torch.from_numpy(train).to(x.device)
        val_ix = torch.from_numpy(val).to(x.device)
        return replace(
            self,
            train=ImageSet(x[train_ix], train_y),
            val=ImageSet(x[val_ix], y[val_ix]),
            train_true_y=true_y,
        )


def noisy_labels(
    y: np.ndarray, train: np.ndarray, share: float, classes: int, seed: int
) -> np.ndarray:
    """A copy of `y` with `share` of the training indices `train` relabelled to another class,
    uniformly at random, seeded (`dataset.label_noise`); other indices keep their labels."""
    if share <= 0.0:
        return y
    rng = np.random.default_rng(seed + 7919)
    flipped = rng.choice(train, size=round(share * len(train)), replace=False)
    y = y.copy()
    y[flipped] = (y[flipped] + rng.integers(1, classes, size=len(flipped))) % classes
    return y


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
    size_note: str | None = None  # how the side was chosen, where it was (`image_size: auto`)
    notes: tuple[str, ...] = ()  # lines for the console: what was decoded, at what size


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


# --------------------------------------------------------------------------- memory


def format_bytes(nbytes: float) -> str:
    """`nbytes` for a person: `2.4 MB`, `745.1 GB` (decimal units)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{int(nbytes):,} bytes"


def _available_memory() -> int | None:
    """Bytes of memory available now: Linux's MemAvailable (page cache that can be dropped
    included), else the free physical pages; None where neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def memory_budget() -> tuple[int, int] | None:
    """(bytes a data set may take while it is loaded, bytes available): half of the memory
    available now, leaving the rest to the model, the optimizer and everything else on the
    machine. None when the available memory cannot be read (then nothing is refused)."""
    available = _available_memory()
    return None if available is None else (available // 2, available)


def check_memory(name: str, what: str, nbytes: int, *, lower: str = "dataset.image_size") -> None:
    """Refuse, before allocating, a data set that would take `nbytes` while it is loaded
    (`what`: how that was counted) when that is over `memory_budget()`: a UserError naming the
    setting to `lower`, instead of an out-of-memory kill minutes into the decode."""
    from search.core.errors import UserError

    budget = memory_budget()
    if budget is None or nbytes <= budget[0]:
        return
    raise UserError(
        f"dataset {name}: {what} need about {format_bytes(nbytes)} of memory while loading, "
        f"more than half of the {format_bytes(budget[1])} available; lower {lower}"
    )
