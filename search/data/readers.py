"""The data sets in torchvision's on-disk formats under `dataset.root`: `cifar10`, `cifar100`
(pickled batches), `mnist`, `fashion-mnist` (idx files, also lying flat in the root); fetched
only with `dataset.download: true`. They keep their official test split as the test split
(`Loaded`'s `test_size`). Each registers itself with `search.data.images.register_dataset`;
`imagefolder` is `search.data.imagefolder`'s.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.config.schema import DatasetConfig
from search.core.errors import UserError, first_line
from search.data.idx import read_idx
from search.data.images import Loaded, register_dataset

# The loaders are reached through the registry; `dataset_root` is shared with imagefolder.
__all__ = ["dataset_root"]


def dataset_root(cfg: DatasetConfig) -> Path:
    if cfg.root is None:  # the config validator already requires it; model_construct does not
        raise UserError(f"dataset.root is required for dataset {cfg.name}")
    return Path(cfg.root).expanduser()


def _locate(root: Path, layout: tuple[str, ...], present: Callable[[Path], bool]) -> Path:
    """`root`, or — when its files are not there — `root` with a trailing start of `layout`
    removed: a root pointed at `<d>/cifar-10-batches-py` or `<d>/MNIST/raw` means `<d>`."""
    if present(root):
        return root
    for k in range(len(layout), 0, -1):
        if len(root.parts) > k and root.parts[-k:] == layout[:k] and present(root.parents[k - 1]):
            return root.parents[k - 1]
    return root


def _missing(cfg: DatasetConfig, what: str, root: Path) -> UserError:
    return UserError(
        f"dataset {cfg.name}: no {what} files under {root} (set dataset.download: true to fetch "
        "them, or point dataset.root at them)"
    )


def _read(cfg: DatasetConfig, what: str, root: Path, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except UserError:
        raise
    except Exception as exc:  # torchvision's readers raise anything from OSError to assert
        why = f"a file lacks the key {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise UserError(
            f"dataset {cfg.name}: cannot read the {what} files under {root} ({why})"
        ) from None


def _count_mismatch(
    name: str, images: Path, n_images: int, labels: Path, n_labels: int
) -> UserError:
    """Images and labels that do not pair one to one: training on them would teach shifted
    labels (more images) or fail with an IndexError (more labels)."""
    where = f"for {n_images:,} images in {images}"
    if labels != images:
        where = f"in {labels} {where}"
    return UserError(
        f"dataset {name}: {n_labels:,} labels {where}; every image needs exactly one label"
    )


def _check_labels(name: str, path: Path, labels: np.ndarray, n_classes: int) -> None:
    """Labels outside 0..n_classes − 1 in `path`, named with the file (the data set's own
    check further on could only name the data set)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(
            f"dataset {name}: the labels in {path} must lie in 0..{n_classes - 1}, got "
            f"{labels.min()}..{labels.max()}"
        )


def _remove_new_empty_folders(root: Path, since: float, *, root_too: bool) -> None:
    """The empty folders under `root` made since `since` (a failed download's `MNIST/raw`), and
    `root` itself when `root_too`: a failed launch leaves nothing half-made behind."""
    if not root.is_dir():
        return
    for dirpath, _, _ in os.walk(root, topdown=False):
        folder = Path(dirpath)
        if folder == root and not root_too:
            continue
        with contextlib.suppress(OSError):
            if folder.stat().st_mtime >= since - 1 and not any(folder.iterdir()):
                folder.rmdir()


def _download(cfg: DatasetConfig, what: str, root: Path, fetch: Callable[[], Any]) -> None:
    started, existed = time.time(), root.exists()
    try:
        fetch()
    except Exception as exc:  # offline: URLError; bad archive: RuntimeError; ...
        _remove_new_empty_folders(root, started, root_too=not existed)
        raise UserError(
            f"dataset {cfg.name}: could not download {what} into {root} ({first_line(exc)})"
        ) from None


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds plain data and numpy arrays and nothing else.

    CIFAR's python batches are pickles, and unpickling runs whatever callables a file names:
    a crafted `data_batch_1` in a user's folder would run code in every worker (the folder is
    stored in the study). The official batches need only these few globals; any other one is
    refused, so a hostile file is an error, not code execution."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            # Protocol 5 (`pickle.HIGHEST_PROTOCOL`, what a re-saved copy often uses) builds an
            # array from its raw bytes with this; it runs nothing else.
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # how a Python 2 pickle's bytes arrive under latin1
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        entry = _ArraysOnly(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} holds a {type(entry).__name__}, not a CIFAR batch")
    return entry


@dataclass(frozen=True)
class _CifarLayout:
    what: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels: str
    names: str
    torchvision: str  # the class whose download (archive md5 checked) fetches the files


_CIFAR = {
    "cifar10": _CifarLayout(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        "CIFAR10",
    ),
    "cifar100": _CifarLayout(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        "CIFAR100",
    ),
}


def _read_cifar(name: str, root: Path, layout: _CifarLayout) -> Loaded:
    folder = root / layout.folder
    classes = tuple(str(c) for c in _load_batch(folder / layout.meta)[layout.names])
    xs, ys = [], []
    for batch in (*layout.train, layout.test):
        entry = _load_batch(folder / batch)
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[layout.labels], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{batch} holds data of shape {data.shape}, not rows of 3072 bytes")
        if len(labels) != len(data):
            raise _count_mismatch(name, folder / batch, len(data), folder / batch, len(labels))
        _check_labels(name, folder / batch, labels, len(classes))
        xs.append(data.reshape(-1, 3, 32, 32))  # rows of 1024 red, 1024 green, 1024 blue
        ys.append(labels)
    return Loaded(
        np.ascontiguousarray(np.concatenate(xs)),
        np.concatenate(ys),
        classes,
        255.0,
        True,
        len(ys[-1]),
    )


def _cifar(cfg: DatasetConfig) -> Loaded:
    """CIFAR-10/100 from torchvision's `cifar-10-batches-py` / `cifar-100-python` folder under
    `dataset.root`: the 50 000 training images then the official 10 000 test images, which stay
    the test split. CIFAR-100 uses the 100 fine labels and their names from `meta`. The batches
    are read with an unpickler that builds only arrays and plain data (`_ArraysOnly`), so a
    converted or trimmed copy reads as well as the pristine one and no file can run code."""
    layout = _CIFAR[cfg.name]
    files = [*layout.train, layout.test, layout.meta]

    def present(root: Path) -> bool:
        return all((root / layout.folder / f).is_file() for f in files)

    root = _locate(dataset_root(cfg), (layout.folder,), present)
    if not present(root):
        if not cfg.download:
            raise _missing(cfg, layout.what, root)
        import torchvision.datasets

        fetch = getattr(torchvision.datasets, layout.torchvision)
        _download(cfg, layout.what, root, lambda: fetch(str(root), train=True, download=True))
    loaded: Loaded = _read(cfg, layout.what, root, lambda: _read_cifar(cfg.name, root, layout))
    return loaded


register_dataset("cifar10")(_cifar)
register_dataset("cifar100")(_cifar)


_IDX_SPLITS = (  # (images, labels) of the official train and test splits
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
_IDX_NAMES = tuple(name for pair in _IDX_SPLITS for name in pair)
_MNIST_FOLDER = {"mnist": ("MNIST", "MNIST"), "fashion-mnist": ("FashionMNIST", "Fashion-MNIST")}


def _idx_file(folder: Path, name: str) -> Path | None:
    """`name` or `name.gz` in `folder` (the plain one when both are there)."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _idx_folders(root: Path, tv_name: str) -> tuple[Path, Path]:
    """Where the four idx files may lie: flat in `root` (as Debian's dataset-fashion-mnist and
    the original sites ship them) or in torchvision's `<root>/<Name>/raw`."""
    return root, root / tv_name / "raw"


def _idx_folder(root: Path, tv_name: str) -> Path | None:
    for folder in _idx_folders(root, tv_name):
        if all(_idx_file(folder, n) for n in _IDX_NAMES):
            return folder
    return None


def _legacy_mnist(root: Path, tv_name: str) -> Path | None:
    """torchvision's old `<root>/<Name>/processed/{training,test}.pt`, when that is all there is."""
    processed = root / tv_name / "processed"
    present = all((processed / f).is_file() for f in ("training.pt", "test.pt"))
    return processed if present else None


def _missing_idx(cfg: DatasetConfig, what: str, root: Path, tv_name: str) -> UserError:
    looked = " and in ".join(str(f) for f in _idx_folders(root, tv_name))
    partial = ""
    for folder in _idx_folders(root, tv_name):
        lacking = [f"{n}[.gz]" for n in _IDX_NAMES if _idx_file(folder, n) is None]
        if len(lacking) < len(_IDX_NAMES):
            partial = f"; {folder} lacks {', '.join(lacking)}"
            break
    return UserError(
        f"dataset {cfg.name}: no {what} files under {root} (looked for "
        f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz] in {looked}{partial}; set "
        "dataset.download: true to fetch them, or point dataset.root at them)"
    )


def _read_idx_splits(name: str, folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images (N, H, W), labels) of the train and the test split in `folder`."""
    splits = []
    for images, labels in _IDX_SPLITS:
        images_path, labels_path = _idx_file(folder, images), _idx_file(folder, labels)
        assert images_path is not None and labels_path is not None  # checked by _idx_folder
        x, y = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
        if len(x) != len(y):
            raise _count_mismatch(name, images_path, len(x), labels_path, len(y))
        _check_labels(name, labels_path, y, 10)
        splits.append((x, y))
    return splits


def _read_legacy_splits(name: str, processed: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same from torchvision's old `processed/{training,test}.pt` (pairs of tensors)."""
    splits = []
    for path in (processed / "training.pt", processed / "test.pt"):
        pair = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise ValueError(f"{path.name} is not an (images, targets) pair")
        x, y = (np.asarray(t) for t in pair)
        if x.ndim != 3:
            raise ValueError(f"{path.name} holds images of shape {x.shape}, not (N, H, W)")
        if len(x) != len(y):
            raise _count_mismatch(name, path, len(x), path, len(y))
        _check_labels(name, path, y, 10)
        splits.append((x, y))
    return splits


def _wxh(hw: tuple[int, ...]) -> str:
    return f"{hw[1]}×{hw[0]}"


def _mnist(cfg: DatasetConfig) -> Loaded:
    """MNIST / Fashion-MNIST from their four idx files (plain or `.gz`), lying flat in
    `dataset.root` (Debian's `/usr/share/datasets/fashion-mnist`, the original downloads) or
    in torchvision's `<root>/MNIST/raw` / `<root>/FashionMNIST/raw`; else torchvision's legacy
    `processed/*.pt`. Gzipped files are decompressed in memory (`search.data.idx`): nothing is
    written next to the user's files. Every image file must hold as many images as its label
    file labels. The official 10 000 test images stay the test split. Digits are not mirrored
    (allow_flip False); clothes are."""
    tv_name, what = _MNIST_FOLDER[cfg.name]

    def present(root: Path) -> bool:
        return _idx_folder(root, tv_name) is not None or _legacy_mnist(root, tv_name) is not None

    asked = dataset_root(cfg)
    root = _locate(asked, (tv_name, "raw"), present)
    if not present(root):
        if not cfg.download:
            raise _missing_idx(cfg, what, asked, tv_name)
        import torchvision.datasets

        fetch = getattr(torchvision.datasets, tv_name)
        _download(cfg, what, root, lambda: fetch(str(root), train=True, download=True))
    folder = _idx_folder(root, tv_name)
    legacy = _legacy_mnist(root, tv_name)
    splits: list[tuple[np.ndarray, np.ndarray]]
    if folder is not None:
        where = folder
        splits = _read(cfg, what, where, lambda: _read_idx_splits(cfg.name, where))
    elif legacy is not None:
        processed = legacy
        splits = _read(cfg, what, processed, lambda: _read_legacy_splits(cfg.name, processed))
    else:  # a download that left no files
        raise _missing_idx(cfg, what, root, tv_name)
    (train_x, _), (test_x, _) = splits
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(
            f"dataset {cfg.name}: the {what} training images are {_wxh(train_x.shape[1:])} but "
            f"the test images {_wxh(test_x.shape[1:])}"
        )
    x = np.concatenate([x for x, _ in splits])[:, None]
    y = np.concatenate([y for _, y in splits]).astype(np.int64)
    from torchvision.datasets import MNIST, FashionMNIST

    classes = tuple(str(c) for c in (MNIST if cfg.name == "mnist" else FashionMNIST).classes)
    flip = cfg.name == "fashion-mnist"
    test_size = len(splits[1][1])
    return Loaded(np.ascontiguousarray(x, dtype=np.uint8), y, classes, 255.0, flip, test_size)


register_dataset("mnist")(_mnist)
register_dataset("fashion-mnist")(_mnist)
