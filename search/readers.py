"""The file-based data sets: torchvision's on-disk formats under `dataset.root` (`cifar10`,
`cifar100`, `mnist`, `fashion-mnist`; fetched only with `dataset.download: true`) and
`imagefolder` (one sub-folder of images per class, decoded once into a uint8 cache next to the
images). The four torchvision sets keep their official test split as the test split (`Loaded`'s
`test_size`). Each registers itself with `search.images.register_dataset`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.config import DatasetConfig
from search.errors import UserError, first_line
from search.files import atomic_file
from search.images import Loaded, register_dataset

__all__: list[str] = []  # nothing to import: the loaders are reached through the registry

_log = logging.getLogger(__name__)


def _root(cfg: DatasetConfig) -> Path:
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
        raise UserError(
            f"dataset {cfg.name}: cannot read the {what} files under {root} ({first_line(exc)})"
        ) from None


def _download(cfg: DatasetConfig, what: str, root: Path, fetch: Callable[[], Any]) -> None:
    try:
        fetch()
    except Exception as exc:  # offline: URLError; bad archive: RuntimeError; ...
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


def _read_cifar(root: Path, layout: _CifarLayout) -> Loaded:
    folder = root / layout.folder
    xs, ys = [], []
    for name in (*layout.train, layout.test):
        entry = _load_batch(folder / name)
        data = np.asarray(entry["data"], dtype=np.uint8)
        xs.append(data.reshape(-1, 3, 32, 32))  # rows of 1024 red, 1024 green, 1024 blue
        ys.append(np.asarray(entry[layout.labels], dtype=np.int64))
    classes = tuple(str(c) for c in _load_batch(folder / layout.meta)[layout.names])
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

    root = _locate(_root(cfg), (layout.folder,), present)
    if not present(root):
        if not cfg.download:
            raise _missing(cfg, layout.what, root)
        import torchvision.datasets

        fetch = getattr(torchvision.datasets, layout.torchvision)
        _download(cfg, layout.what, root, lambda: fetch(str(root), train=True, download=True))
    loaded: Loaded = _read(cfg, layout.what, root, lambda: _read_cifar(root, layout))
    return loaded


register_dataset("cifar10")(_cifar)
register_dataset("cifar100")(_cifar)


def _gunzip_atomically(src: Path, dst: Path) -> None:
    with atomic_file(dst) as out, gzip.open(src, "rb") as f:
        shutil.copyfileobj(f, out)


def _mnist(cfg: DatasetConfig) -> Loaded:
    """MNIST / Fashion-MNIST from torchvision's `<root>/MNIST/raw` / `<root>/FashionMNIST/raw`
    idx files (plain, or `.gz`: decompressed next to themselves once, or into a temporary folder
    when that one is read-only), read by torchvision. The official 10 000 test images stay the
    test split. Digits are not mirrored (allow_flip False); clothes are."""
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if cfg.name == "mnist" else FashionMNIST
    what = "MNIST" if cfg.name == "mnist" else "Fashion-MNIST"
    names = [os.path.splitext(f)[0] for f, _ in cls.resources]  # train-images-idx3-ubyte, ...

    def legacy(root: Path) -> bool:  # torchvision's old processed/*.pt files, read as they are
        processed = root / cls.__name__ / "processed"
        return all((processed / f).is_file() for f in ("training.pt", "test.pt"))

    def present(root: Path) -> bool:
        raw = root / cls.__name__ / "raw"
        plain_or_gz = all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in names)
        return plain_or_gz or legacy(root)

    root = _locate(_root(cfg), (cls.__name__, "raw"), present)
    raw = root / cls.__name__ / "raw"
    if not present(root):
        if not cfg.download:
            raise _missing(cfg, what, root)
        _download(cfg, what, root, lambda: cls(str(root), train=True, download=True))
    with ExitStack() as stack:
        packed = [n for n in names if not (raw / n).is_file() and (raw / f"{n}.gz").is_file()]
        read_root = root
        if packed and not legacy(root):
            try:
                for n in packed:
                    _gunzip_atomically(raw / f"{n}.gz", raw / n)
            except OSError:
                read_root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                tmp_raw = read_root / cls.__name__ / "raw"
                tmp_raw.mkdir(parents=True)
                for n in names:
                    if (raw / n).is_file():
                        os.symlink((raw / n).resolve(), tmp_raw / n)
                    else:
                        _gunzip_atomically(raw / f"{n}.gz", tmp_raw / n)
        train = _read(cfg, what, root, lambda: cls(str(read_root), train=True))
        test = _read(cfg, what, root, lambda: cls(str(read_root), train=False))
    x = torch.cat([train.data, test.data])[:, None].numpy()
    y = torch.cat([train.targets, test.targets]).numpy().astype(np.int64)
    classes = tuple(str(c) for c in cls.classes)
    flip = cfg.name == "fashion-mnist"
    return Loaded(np.ascontiguousarray(x, dtype=np.uint8), y, classes, 255.0, flip, len(test))


register_dataset("mnist")(_mnist)
register_dataset("fashion-mnist")(_mnist)


# --------------------------------------------------------------------------- imagefolder

_CACHE_FORMAT = 2  # 2: the grey flags of the images
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _fingerprint(
    root: Path, samples: list[tuple[str, int]], classes: tuple[str, ...], size: int
) -> str:
    """Changes when a file is added, removed, renamed, rewritten or touched, or the size changes."""
    h = hashlib.sha256(json.dumps([_CACHE_FORMAT, size, list(classes)]).encode())
    for path, label in samples:
        st = os.stat(path)
        rel = os.path.relpath(path, root)
        h.update(json.dumps([rel, label, st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


def _decode(path: str, size: int) -> tuple[np.ndarray, bool]:
    """One image as uint8 (3, size, size): RGB, resized (not cropped) to a square; and whether
    it is grayscale (a single-channel file, or one whose R, G and B are equal)."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger
        single = img.mode in _GREY_MODES
        rgb = img.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    grey = single or bool((array[0] == array[1]).all() and (array[1] == array[2]).all())
    return array, grey


def _decode_all(cfg: DatasetConfig, paths: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    def one(path: str) -> tuple[np.ndarray, bool]:
        try:
            return _decode(path, size)
        except Exception as exc:  # PIL.UnidentifiedImageError, OSError, DecompressionBombError
            raise UserError(
                f"dataset {cfg.name}: cannot read image {path} ({first_line(exc)})"
            ) from None

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
        decoded = list(pool.map(one, paths))
    grey = np.asarray([g for _, g in decoded], dtype=bool)
    if not decoded:
        return np.zeros((0, 3, size, size), dtype=np.uint8), grey
    return np.stack([image for image, _ in decoded]), grey


def _read_cache(path: Path, fingerprint: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged or foreign file: rebuild it
        _log.warning("ignoring unreadable image cache %s (%s)", path, first_line(exc))
        return None
    if not isinstance(blob, dict) or blob.get("fingerprint") != fingerprint:
        return None
    return blob["x"].numpy(), blob["y"].numpy(), blob["grey"].numpy()


@register_dataset("imagefolder")
def _imagefolder(cfg: DatasetConfig) -> Loaded:
    """One sub-folder of images per class under `dataset.root` (torchvision's ImageFolder
    layout and extensions; classes in sorted folder order). Every image is decoded once,
    converted to RGB (grayscale ones are counted: `dataset.channels: auto` follows the
    majority) and resized to `image_size` x `image_size`; the result is cached in
    `<root>/.regsearch-cache-<size>.pt`, written atomically, and reused while the folder's file
    list, sizes and modification times are unchanged (a read-only folder is decoded each time)."""
    from torchvision.datasets import ImageFolder

    root = _root(cfg)
    size = cfg.image_size or 32
    if not root.is_dir():
        raise UserError(
            f"dataset {cfg.name}: no folder {root} (dataset.root must hold one sub-folder of "
            "images per class)"
        )
    try:
        folder = ImageFolder(str(root), allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(
            f"dataset {cfg.name}: no class folders of images under {root} ({first_line(exc)})"
        ) from None
    samples = [(str(p), int(c)) for p, c in folder.samples]
    classes = tuple(folder.classes)
    if not samples:
        raise UserError(f"dataset {cfg.name}: no images in the class folders under {root}")
    fingerprint = _fingerprint(root, samples, classes, size)
    cache = root / f".regsearch-cache-{size}.pt"
    cached = _read_cache(cache, fingerprint)
    if cached is not None:
        x, y, grey = cached
    else:
        x, grey = _decode_all(cfg, [p for p, _ in samples], size)
        y = np.asarray([c for _, c in samples], dtype=np.int64)
        blob = {
            "format": _CACHE_FORMAT,
            "fingerprint": fingerprint,
            "classes": list(classes),
            "x": torch.from_numpy(x),
            "y": torch.from_numpy(y),
            "grey": torch.from_numpy(grey),
        }
        try:
            with atomic_file(cache) as f:
                torch.save(blob, f)
        except OSError as exc:
            _log.warning("cannot write the image cache %s (%s)", cache, first_line(exc))
    # No mirroring unless `dataset.flip: true`: a folder may hold digits, letters or signs,
    # whose mirror image is another class (3 test points lost on 32 px digits), while photos
    # gain less from it than that.
    return Loaded(x, y, classes, 255.0, False, grey=int(grey.sum()))
