"""`imagefolder`: one sub-folder of images per class under `dataset.root`, decoded once into a
uint8 tensor cached next to the images (`<root>/.regsearch-cache-<size>.pt`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.config.schema import DatasetConfig
from search.core.errors import UserError, first_line
from search.core.files import atomic_file
from search.data.images import Loaded, check_memory, format_bytes, register_dataset
from search.data.readers import dataset_root

__all__ = ["AUTO_SIZE_CAP", "auto_side"]

_log = logging.getLogger(__name__)

# 2: the grey flags of the images; 3: centre-cropped, not squashed; 4: 16-bit and float images
# scaled to 8 bits, EXIF orientation applied, hidden files and folders left out
_CACHE_FORMAT = 4
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
AUTO_SIZE_CAP = 224  # `image_size: auto` never decodes a folder larger than this


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


def _each_image(cfg: DatasetConfig, paths: list[str], fn: Callable[[str], Any]) -> Iterator[Any]:
    """`fn(path)` for every path, in order, on a few threads (PIL decodes without the GIL);
    an image PIL cannot read is a one-line UserError naming it."""

    def one(path: str) -> Any:
        try:
            return fn(path)
        except Exception as exc:  # PIL.UnidentifiedImageError, OSError, DecompressionBombError
            raise UserError(
                f"dataset {cfg.name}: cannot read image {path} ({first_line(exc)})"
            ) from None

    pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
    try:
        yield from pool.map(one, paths)
    finally:  # a bad image stops the rest at once, not after every other image is decoded
        pool.shutdown(cancel_futures=True)


def _header_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:  # reads the header only; nothing is decoded
        return img.size


def auto_side(sizes: list[tuple[int, int]]) -> tuple[int, str]:
    """The side `image_size: auto` decodes a folder at, and why: the images' own size when they
    share one, else the most common (ties: the smaller); the shorter side of a non-square size;
    at most `AUTO_SIZE_CAP` (larger photos would take gigabytes at full size) and at least 4."""
    counts = Counter(sizes)
    (w, h), n = min(counts.items(), key=lambda kv: (-kv[1], min(kv[0]), kv[0]))
    if len(counts) == 1:
        why = f"all {len(sizes):,} images are {w}×{h}"
    else:
        why = (
            f"the most common of {len(counts):,} sizes: {n:,} of {len(sizes):,} images are {w}×{h}"
        )
    side = min(w, h)
    if w != h:
        why += f", shorter side {side}"
    if side > AUTO_SIZE_CAP:
        side, why = AUTO_SIZE_CAP, f"{why}, capped at {AUTO_SIZE_CAP}"
    elif side < DatasetConfig.MIN_SIZE:
        side, why = DatasetConfig.MIN_SIZE, f"{why}, raised to {DatasetConfig.MIN_SIZE}"
    return side, why


def _eight_bit(img: Any) -> Any:
    """A 16-bit, 32-bit or float grayscale image as 8-bit "L" (PIL's `convert` clips those to
    0..255: a 16-bit image came out nearly all white). 16-bit values are divided by 257
    (65,535 → 255); 32-bit integers too when any exceeds 255; floats up to 1.0 are taken as 0..1,
    others as 0..255. Other modes are returned as they are."""
    from PIL import Image

    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img, dtype=np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    top = float(values.max(initial=0.0))
    if img.mode.startswith("I;16") or (img.mode == "I" and top > 255):
        values = values / 257.0
    elif img.mode == "F" and top <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _decode(path: str, size: int) -> tuple[np.ndarray, bool]:
    """One image as uint8 (3, size, size): RGB, its shorter side resized to `size` and the
    longer one centre-cropped to it (a squash would distort every non-square image); and
    whether it is grayscale (a single-channel file, or one whose R, G and B are equal)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale (both sides >= size)
        single = img.mode in _GREY_MODES
        rgb = _eight_bit(ImageOps.exif_transpose(img)).convert("RGB")
    if rgb.size != (size, size):
        rgb = ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    grey = single or bool((array[0] == array[1]).all() and (array[1] == array[2]).all())
    return array, grey


def _decode_all(cfg: DatasetConfig, paths: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(paths), 3, size, size), dtype=np.uint8)  # filled in place: no 2nd copy
    grey = np.zeros(len(paths), dtype=bool)
    decoded = _each_image(cfg, paths, lambda p: _decode(p, size))
    for i, (image, is_grey) in enumerate(decoded):
        x[i], grey[i] = image, is_grey
    return x, grey


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


# torchvision's ImageFolder extensions, and two more PIL reads.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif", ".jfif")  # fmt: skip


def _class_folders(cfg: DatasetConfig, root: Path) -> list[str]:
    if not root.is_dir():
        raise UserError(
            f"dataset {cfg.name}: no folder {root} (dataset.root must hold one sub-folder of "
            "images per class)"
        )
    try:
        found = sorted(
            e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")
        )
    except OSError as exc:
        raise UserError(
            f"dataset {cfg.name}: no class folders of images under {root} ({first_line(exc)})"
        ) from None
    if not found:
        raise UserError(
            f"dataset {cfg.name}: no class folders of images under {root} (dataset.root must "
            "hold one sub-folder of images per class)"
        )
    return found


def _class_images(
    cfg: DatasetConfig, root: Path
) -> tuple[list[tuple[str, int]], tuple[str, ...], str | None]:
    """(path, label) of every image under the class folders (ImageFolder's layout and order:
    classes sorted, each folder's tree walked with links followed, paths sorted), the class
    names, and a note on the files left out. Hidden files and folders (`.DS_Store`,
    `.ipynb_checkpoints`, macOS's `._x.png`) are skipped. A folder link that leads back into
    the class folder or an ancestor (a loop), to another class's folder, or to a folder already
    read is refused: its images would be counted twice, across splits, or under two labels."""
    classes = _class_folders(cfg, root)
    root_real = os.path.realpath(root)
    class_real = {os.path.realpath(root / c): c for c in classes}
    samples: list[tuple[str, int]] = []
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    for label, name in enumerate(classes):
        top = os.path.realpath(root / name)
        if top in seen:
            raise UserError(
                f"dataset {cfg.name}: class folder {name} is {top}, a folder this data set "
                "reads already (under another class): remove the link"
            )
        seen.add(top)
        found: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            keep = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                real = os.path.realpath(os.path.join(dirpath, d))
                if (
                    real in seen
                    or real in class_real
                    or real == root_real
                    or top.startswith(real + os.sep)
                ):
                    shown = os.path.relpath(os.path.join(dirpath, d), root)
                    raise UserError(
                        f"dataset {cfg.name}: {shown} links to {real}, a folder this data set "
                        "reads already (a loop, or another class's images): remove the link"
                    )
                seen.add(real)
                keep.append(d)
            dirnames[:] = keep
            for f in filenames:
                path = os.path.join(dirpath, f)
                if f.startswith("."):
                    continue
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path):
                    # Regular files only: a FIFO named `x.png` would block the decode forever.
                    found.append((dirpath, f))
                else:
                    skipped[os.path.splitext(f)[1].lower() or f] += 1
        samples += [(os.path.join(d, f), label) for d, f in sorted(found)]
    if not samples:
        raise UserError(f"dataset {cfg.name}: no images in the class folders under {root}")
    note = None
    if skipped:
        kinds = ", ".join(f"{k} ×{n}" for k, n in skipped.most_common(4))
        more = ", …" if len(skipped) > 4 else ""
        note = (
            f"dataset {cfg.name}: left out {sum(skipped.values()):,} files that are no images "
            f"by their name ({kinds}{more}; images: {' '.join(IMAGE_EXTENSIONS)})"
        )
    return samples, tuple(classes), note


@register_dataset("imagefolder")
def _imagefolder(cfg: DatasetConfig) -> Loaded:
    """One sub-folder of images per class under `dataset.root` (torchvision's ImageFolder
    layout and extensions; classes in sorted folder order). Every image is decoded once,
    converted to RGB (grayscale ones are counted: `dataset.channels: auto` follows the
    majority), its shorter side resized to `image_size` and centre-cropped to a square
    (`image_size: auto`: see `auto_side`, read from the files' headers). A set that would not
    fit in half the available memory is refused before decoding. The result is cached in
    `<root>/.regsearch-cache-<size>.pt`, written atomically, and reused while the folder's file
    list, sizes and modification times are unchanged (a read-only folder is decoded each time)."""
    root = dataset_root(cfg)
    samples, classes, skipped_note = _class_images(cfg, root)
    paths = [p for p, _ in samples]
    size_note = None
    if cfg.image_size == "auto":
        size, size_note = auto_side(list(_each_image(cfg, paths, _header_size)))
        _log.info("dataset %s: image size %d (auto: %s)", cfg.name, size, size_note)
    else:
        size = int(cfg.image_size)
    n, nbytes = len(samples), len(samples) * 3 * size * size
    shape = f"{n:,} images at {size}×{size}×3 ({format_bytes(nbytes)} as uint8)"
    check_memory(cfg.name, f"{shape} and their split copies", 2 * nbytes)
    fingerprint = _fingerprint(root, samples, classes, size)
    cache = root / f".regsearch-cache-{size}.pt"
    cached = _read_cache(cache, fingerprint)
    if cached is not None:
        x, y, grey = cached
        note = f"dataset {cfg.name}: {shape} from the cache {cache}"
    else:
        _log.info("dataset %s: decoding %s", cfg.name, shape)
        note = f"dataset {cfg.name}: decoded {shape}"
        x, grey = _decode_all(cfg, paths, size)
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
    notes = (note,) if skipped_note is None else (note, skipped_note)
    if skipped_note is not None:
        _log.warning("%s", skipped_note)
    return Loaded(
        x, y, classes, 255.0, False, grey=int(grey.sum()), size_note=size_note, notes=notes
    )
