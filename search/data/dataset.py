"""Data sets as uint8 tensors with fixed train / val / test splits.

Images are kept as uint8 (N, C, H, W) so a whole training set fits on the device; the training
loop converts batches to float in [0, 1] by dividing by `max_value` (16 for digits, whose pixels
are 0..16; 255 for ordinary images). Splits are stratified and fixed by `split_seed`, so every
trial of a study — and every worker — sees the same validation and test images.

Sources: `digits` (scikit-learn's bundled set), `synthetic`, torchvision's on-disk formats under
`dataset.root` (`cifar10`, `cifar100`, `mnist`, `fashion-mnist`; fetched only with
`dataset.download: true`; `search.data.readers`), `imagefolder` (one sub-folder of images per class,
decoded once into a uint8 cache next to the images; `search.data.imagefolder`) and a user's loader
`package.module:callable` (`search.data.userdata`). The four torchvision sets keep their official
test split as our test split; train / val are split from their official training images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from search.config.schema import DatasetConfig
from search.core.errors import UserError, first_line
from search.data import imagefolder as _imagefolder  # noqa: F401  (registers imagefolder)
from search.data import readers as _readers  # noqa: F401  (registers the torchvision formats)
from search.data.images import (
    CHUNK,
    Dataset,
    ImageSet,
    Loaded,
    LoaderResult,
    check_memory,
    dataset_loader,
    format_bytes,
    noisy_labels,
    register_dataset,
)

__all__ = [
    "Dataset",
    "ImageSet",
    "Loaded",
    "labelled_subset",
    "load_dataset",
    "register_dataset",
    "train_subset",
]


@register_dataset("digits")
def _digits(cfg: DatasetConfig) -> LoaderResult:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    classes = tuple(str(c) for c in bunch.target_names)
    return x, bunch.target.astype(np.int64), classes, 16.0, False


SYNTHETIC_SIZE = 8  # `synthetic`'s side under `image_size: auto`
_BLOCK = 1 << 22  # float64 values per step of the synthetic draw (32 MB an array)


@register_dataset("synthetic")
def _synthetic(cfg: DatasetConfig) -> Loaded:
    """Learnable but not trivial: each class is a smooth random prototype; samples are the
    prototype at a random contrast plus pixel noise. Refused before drawing when it would not
    fit in half the available memory (`image_size: 100000` would ask for 745 GiB)."""
    rng = np.random.default_rng(cfg.split_seed + 12345)
    c = 1 if cfg.channels == "auto" else cfg.channels
    s = SYNTHETIC_SIZE if cfg.image_size == "auto" else int(cfg.image_size)
    k, n = cfg.num_classes, cfg.num_samples
    reps = -(-s // 4)
    pixels = c * s * s
    rows = max(1, min(CHUNK, _BLOCK // pixels))  # images per step of the float draw
    nbytes = n * pixels
    working = 2 * nbytes + 8 * k * c * (4 * reps) ** 2 + 3 * 8 * rows * pixels
    check_memory(
        cfg.name,
        f"{n:,} images at {s}×{s}×{c} ({format_bytes(nbytes)} as uint8), their split copies "
        "and the float draw",
        working,
        lower="dataset.image_size or dataset.num_samples",
    )
    coarse = rng.uniform(0, 1, size=(k, c, 4, 4))
    protos = np.kron(coarse, np.ones((1, 1, reps, reps)))[:, :, :s, :s]
    y = np.arange(n) % k
    rng.shuffle(y)
    contrast = rng.uniform(0.6, 1.0, size=(n, 1, 1, 1))
    x = np.empty((n, c, s, s), dtype=np.uint8)
    # In steps: one float64 copy of a CIFAR-sized set is 1.5 GB. The noise is drawn in the
    # same order, so the images are the same bytes whatever the step.
    for i in range(0, n, rows):
        j = min(n, i + rows)
        block = protos[y[i:j]] * contrast[i:j] + rng.normal(0, 0.25, size=(j - i, c, s, s))
        x[i:j] = np.clip(block * 255, 0, 255).astype(np.uint8)
    classes = tuple(f"class_{i}" for i in range(k))
    why = "synthetic default" if cfg.image_size == "auto" else None
    return Loaded(x, y.astype(np.int64), classes, 255.0, True, size_note=why)


def _stratified_split(
    y: np.ndarray, pool: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    rest, test = train_test_split(
        pool, test_size=test_fraction, stratify=y[pool], random_state=seed
    )
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _split_off_val(
    y: np.ndarray, pool: np.ndarray, test_size: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last `test_size` images are the official test split; val is a stratified
    `val_fraction` of the official training images `pool` before them."""
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(pool, test_size=val_fraction, stratify=y[pool], random_state=seed)
    return np.sort(train), np.sort(val), np.arange(len(y) - test_size, len(y))


def labelled_subset(y: np.ndarray, pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A stratified `size` of the labelled indices `pool` (`dataset.subset`), seeded: the
    images a user with only `size` labelled images would have, before any split."""
    from sklearn.model_selection import train_test_split

    if size >= len(pool):
        return pool
    keep, _ = train_test_split(pool, train_size=size, stratify=y[pool], random_state=seed)
    return np.sort(keep)


def train_subset(y: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified `fraction` of the training indices `train`: per class, the first
    round(fraction × its count) (at least 1) of one seeded shuffle, so the subset at a smaller
    fraction lies inside the subset at every larger one (a size sweep adds images, it never
    swaps them)."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(y[train]):
        members = train[y[train] == label]
        members = members[rng.permutation(len(members))]
        keep.append(members[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(keep))


_SIZED = ("imagefolder", "synthetic")  # the loaders that decode at `dataset.image_size`


def _short_classes(y: np.ndarray, classes: tuple[str, ...], need: int) -> str | None:
    """The classes with fewer than `need` of the labels `y`, as "cat has 1, dog has 2" (at
    most 300 characters), or None when every class has enough."""
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() >= need:
        return None
    short = ", ".join(f"{classes[i]} has {counts[i]}" for i in np.flatnonzero(counts < need))
    return short[:300]


def _loader(name: str) -> Callable[[DatasetConfig], LoaderResult | Loaded]:
    if ":" in name:  # `package.module:callable`, its form checked by DatasetConfig
        from search.data.userdata import load_user

        return load_user
    try:
        return dataset_loader(name)
    except KeyError:
        raise UserError(f"dataset.name: unknown data set {name!r}") from None


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """The data set `cfg` names, with its images in the channels `dataset.channels` asks for and
    split into fixed train / val / test splits (see the module's docstring)."""
    loaded = Loaded(*_loader(cfg.name)(cfg))
    x, y, classes, max_value, allow_flip, test_size, grey = loaded[:7]
    height, width = x.shape[2:]
    low, high = DatasetConfig.MIN_SIZE, DatasetConfig.MAX_SIZE  # a study stores the side
    if height != width or not low <= height <= high:
        raise UserError(
            f"dataset {cfg.name!r}: images of {width}×{height} pixels; images must be square, "
            f"{low} to {high} pixels a side"
        )
    if isinstance(cfg.image_size, int) and cfg.image_size != height and cfg.name not in _SIZED:
        raise UserError(
            f"dataset.image_size: {cfg.image_size}, but {cfg.name} images are {width}×{height} "
            f"and are not resized (only {' and '.join(_SIZED)} decode at a chosen size): "
            "leave it auto"
        )
    x, channel_note = _channels(cfg, x, grey)
    allow_flip = allow_flip if cfg.flip == "auto" else bool(cfg.flip)
    if len(classes) < 2:
        raise UserError(
            f"dataset {cfg.name!r}: found {len(classes)} class{'es' if len(classes) != 1 else ''}"
            f" ({', '.join(classes) or 'none'}); a classifier needs at least 2"
        )
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise UserError(
            f"dataset {cfg.name!r}: labels must lie in 0..{len(classes) - 1} "
            f"(one per class name), got {y.min()}..{y.max()}"
        )
    need = 2 if test_size else 3
    short = _short_classes(y[: len(y) - test_size] if test_size else y, classes, need)
    if short is not None:
        what = "training images to split off validation images" if test_size else "images to split"
        raise UserError(f"dataset {cfg.name!r}: every class needs at least {need} {what}; {short}")
    pool = np.arange(len(y) - (test_size or 0))  # the labelled images (official test split aside)
    try:
        if cfg.subset is not None:
            pool = labelled_subset(y, pool, cfg.subset, cfg.split_seed)
            if (short := _short_classes(y[pool], classes, need)) is not None:
                raise UserError(
                    f"dataset.subset: {cfg.subset} images keep fewer than {need} of some class, "
                    f"one for each split ({short}): raise it, or leave it out"
                )
        if test_size:
            train, val, test = _split_off_val(y, pool, test_size, cfg.val_fraction, cfg.split_seed)
        else:
            train, val, test = _stratified_split(
                y, pool, cfg.val_fraction, cfg.test_fraction, cfg.split_seed
            )
    except ValueError as exc:  # e.g. fewer validation images than classes
        why = first_line(exc)
        if "greater or equal to the number of classes" in why:
            why = (
                f"a validation and a test split of at least one image per class ({len(classes)} "
                f"classes) take more than val_fraction {cfg.val_fraction:g} / test_fraction "
                f"{cfg.test_fraction:g} of them: add images or raise those fractions"
            )
        raise UserError(f"dataset {cfg.name!r}: cannot split {len(pool)} images ({why})") from None
    full_train = 0
    if cfg.train_fraction < 1.0:
        full_train = len(train)
        train = train_subset(y, train, cfg.train_fraction, cfg.split_seed)
    true_y, y = y, noisy_labels(y, train, cfg.label_noise, len(classes), cfg.split_seed)

    def subset(ix: np.ndarray) -> ImageSet:
        return ImageSet(torch.from_numpy(np.ascontiguousarray(x[ix])), torch.from_numpy(y[ix]))

    return Dataset(
        cfg.name,
        subset(train),
        subset(val),
        subset(test),
        classes,
        max_value,
        allow_flip,
        channel_note,
        loaded.size_note or f"{cfg.name} images are {width}×{height}",
        loaded.notes,
        train_true_y=torch.from_numpy(true_y[train]) if cfg.label_noise > 0.0 else None,
        label_noise=cfg.label_noise,
        noise_seed=cfg.split_seed,
        full_train=full_train,
    )


_LUMA32 = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's "L"


def _channels(cfg: DatasetConfig, x: np.ndarray, grey: int | None) -> tuple[np.ndarray, str]:
    """The images with the channels `dataset.channels` asks for, and why they have them.
    `auto` keeps the set's own, except that a folder of mostly grayscale images becomes
    1-channel; 1 and 3 convert (luma, or the grey channel repeated)."""
    have, n = x.shape[1], len(x)
    if cfg.channels == "auto" or cfg.name == "synthetic":
        if grey is None:
            return x, f"{cfg.name} images have {have} channel{'s' if have > 1 else ''}"
        want = 1 if 2 * grey > n else have
        note = f"{grey:,} of {n:,} images are grayscale"
    else:
        want, note = cfg.channels, "dataset.channels"
    if want == have:
        return x, note
    if have == 1 and want == 3:
        return np.repeat(x, 3, axis=1), note
    if have == 3 and want == 1:
        top = max(255, int(x.max(initial=0)))
        grey_x = np.empty((n, 1, *x.shape[2:]), dtype=x.dtype)
        for i in range(0, n, CHUNK):  # in steps: a float32 copy of the set is 4× its size
            luma = np.tensordot(x[i : i + CHUNK].astype(np.float32), _LUMA32, axes=([1], [0]))
            grey_x[i : i + CHUNK, 0] = np.clip(np.rint(luma), 0, top)
        return grey_x, note
    raise UserError(
        f"dataset.channels: cannot make {want}-channel images from the {have}-channel images "
        f"of {cfg.name} (use auto, 1 or 3)"
    )
