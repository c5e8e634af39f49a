"""The file-based data sets, read from tiny files written in their real on-disk formats: CIFAR
pickled batches, MNIST idx files (plain and gzipped, flat or in torchvision's layout),
class-per-folder images with their cache and their `image_size: auto`."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from optuna.trial import TrialState
from PIL import Image
from pydantic import ValidationError
from rich.console import Console

from search.config.schema import (
    DatasetConfig,
    EarlyStoppingConfig,
    ModelConfig,
    ObjectiveConfig,
    Regularization,
    TrainConfig,
    TrialConfig,
)
from search.core.errors import UserError
from search.data.dataset import Dataset, load_dataset
from search.data.sample import write_mnist_idx
from search.run.options import RunOptions
from search.run.runner import run_study
from search.study.studyfile import load_config
from search.training.auto import resolve
from search.training.train import MAX_EPOCHS, train
from tests.helpers import TEST_BUDGET

CIFAR10_NAMES = [f"c10-{i}" for i in range(10)]
CIFAR100_NAMES = ["apple", "bee", "cloud", "dolphin"]  # a trimmed fine-label list
UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: refused at once, never a real download


def _ids(data: Dataset) -> dict[str, list[int]]:
    """Every test image carries its id in pixel (0, 0, 0) and its label in (0, 0, 1)."""
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        assert split.x[:, 0, 0, 1].long().tolist() == split.y.tolist(), name
        out[name] = sorted(split.x[:, 0, 0, 0].tolist())
    return out


def _check_common(data: Dataset, shape: tuple[int, int, int]) -> None:
    assert data.shape == shape
    assert data.max_value == 255.0
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.uint8
        assert split.y.dtype == torch.int64
        assert split.x.shape == (len(split), *shape)
        assert split.x.is_contiguous()


# --------------------------------------------------------------------------- CIFAR


def _cifar_images(ids: list[int], labels: list[int]) -> np.ndarray:
    """Rows of 3072 bytes: 1024 red, 1024 green, 1024 blue, each 32x32 row-major."""
    rng = np.random.default_rng(ids[0])
    data = rng.integers(0, 256, size=(len(ids), 3072), dtype=np.uint8)
    data[:, 0] = ids  # red (0, 0)
    data[:, 1] = labels  # red (0, 1)
    data[:, 1024] = 255 - np.asarray(ids)  # green (0, 0): checks the channel order
    return data


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the originals are Python 2 pickles


def _write_cifar10(root: Path, per_class_per_batch: int = 1) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    next_id = 0
    for b in range(1, 6):
        labels = [c for c in range(10) for _ in range(per_class_per_batch)]
        ids = list(range(next_id, next_id + len(labels)))
        next_id += len(labels)
        _dump(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": labels,
                "data": _cifar_images(ids, labels),
                "filenames": [f"img_{i}.png" for i in ids],
            },
        )
    labels = list(range(10))
    ids = list(range(200, 210))
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": labels,
            "data": _cifar_images(ids, labels),
            "filenames": [f"img_{i}.png" for i in ids],
        },
    )
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": 10, "label_names": CIFAR10_NAMES, "num_vis": 3072},
    )


def _write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, ids, labels in (
        ("train", list(range(20)), [i % 4 for i in range(20)]),
        ("test", list(range(100, 108)), [i % 4 for i in range(8)]),
    ):
        _dump(
            folder / name,
            {
                "filenames": [f"img_{i}.png" for i in ids],
                "batch_label": f"{name} batch",
                "fine_labels": labels,
                "coarse_labels": [lab // 2 for lab in labels],  # deliberately not the fine ones
                "data": _cifar_images(ids, labels),
            },
        )
    _dump(
        folder / "meta",
        {"fine_label_names": CIFAR100_NAMES, "coarse_label_names": ["food", "sky"]},
    )


def test_cifar10_reads_torchvision_batches_and_keeps_the_official_test_split(
    tmp_path: Path,
) -> None:
    _write_cifar10(tmp_path / "data")
    data = load_dataset(DatasetConfig(name="cifar10", root=tmp_path / "data"))
    _check_common(data, (3, 32, 32))
    assert data.name == "cifar10"
    assert data.classes == tuple(CIFAR10_NAMES)
    assert data.allow_flip is True
    ids = _ids(data)
    assert ids["test"] == list(range(200, 210))  # exactly the test batch
    assert sorted(ids["train"] + ids["val"]) == list(range(50))  # all five training batches
    assert len(data.val) == 10  # val_fraction 0.2 of the 50 training images ...
    assert sorted(data.val.y.tolist()) == list(range(10))  # ... one per class: stratified
    for split in (data.train, data.val, data.test):  # green (0, 0) = 255 - id: channels in order
        assert (split.x[:, 1, 0, 0].int() == 255 - split.x[:, 0, 0, 0].int()).all()


def test_cifar10_test_split_is_the_test_batch_in_file_order(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    data = load_dataset(DatasetConfig(name="cifar10", root=tmp_path, val_fraction=0.4))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    ref_x = torch.from_numpy(entry["data"].reshape(-1, 3, 32, 32))
    assert torch.equal(data.test.x, ref_x)  # test keeps the file's order
    assert data.test.y.tolist() == entry["labels"]
    assert len(data.val) == 20  # 0.4 of 50


def test_cifar10_splits_are_fixed_by_split_seed(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    cfg = DatasetConfig(name="cifar10", root=tmp_path)
    a, b = _ids(load_dataset(cfg)), _ids(load_dataset(cfg))
    c = _ids(load_dataset(cfg.model_copy(update={"split_seed": 1})))
    assert a == b
    assert c["val"] != a["val"]
    assert c["test"] == a["test"]  # the official test split never moves


def test_cifar_root_may_name_the_batches_folder(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    data = load_dataset(DatasetConfig(name="cifar10", root=tmp_path / "cifar-10-batches-py"))
    assert len(data.test) == 10


def test_cifar100_uses_fine_labels_and_meta_names(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    data = load_dataset(DatasetConfig(name="cifar100", root=tmp_path, val_fraction=0.2))
    _check_common(data, (3, 32, 32))
    assert data.classes == tuple(CIFAR100_NAMES)
    assert data.num_classes == 4
    assert data.allow_flip is True
    ids = _ids(data)  # labels match the fine label stored in each image
    assert ids["test"] == list(range(100, 108))
    assert sorted(ids["train"] + ids["val"]) == list(range(20))
    assert sorted(data.val.y.tolist()) == [0, 1, 2, 3]


def test_damaged_cifar_file_is_a_one_line_error(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=r"^dataset cifar10: cannot read the CIFAR-10 files") as e:
        load_dataset(DatasetConfig(name="cifar10", root=tmp_path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("batch", "keep"), [("data_batch_2", 9), ("test_batch", 11)])
def test_cifar_labels_must_pair_one_to_one_with_images(
    tmp_path: Path, batch: str, keep: int
) -> None:
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / batch
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["labels"] = (entry["labels"] * 2)[:keep]
    _dump(path, entry)
    with pytest.raises(UserError) as e:
        load_dataset(DatasetConfig(name="cifar10", root=tmp_path))
    assert str(e.value) == (
        f"dataset cifar10: {keep} labels for 10 images in {path}; every image needs exactly "
        "one label"
    )


def test_cifar_labels_outside_the_classes_name_their_batch(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["labels"] = [-1, *entry["labels"][1:]]
    _dump(path, entry)
    with pytest.raises(UserError) as e:
        load_dataset(DatasetConfig(name="cifar10", root=tmp_path))
    assert str(e.value) == f"dataset cifar10: the labels in {path} must lie in 0..9, got -1..9"


# --------------------------------------------------------------------------- MNIST

IDX_NAMES = [
    f"{split}-{kind}-ubyte"
    for split in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
]
FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's `dataset-fashion-mnist`


def _idx(array: np.ndarray) -> bytes:
    """The idx format: magic (0, 0, 0x08 = unsigned bytes, ndim), big-endian dims, the bytes."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, 0x08, array.ndim]) + dims + array.astype(np.uint8).tobytes()


def _mnist_splits(per_class: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images (N, 28, 28), labels) for train and test; pixel (0, 0) is the image's id (train
    0.., test 100..) and (0, 1) its label."""
    rng = np.random.default_rng(0)
    splits = []
    for labels, first_id in ((np.repeat(np.arange(10), per_class), 0), (np.arange(10), 100)):
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(first_id, first_id + len(labels))
        images[:, 0, 1] = labels
        splits.append((images, labels))
    return splits


def _write_idx(
    folder: Path, splits: list[tuple[np.ndarray, np.ndarray]], *, gz: bool
) -> list[Path]:
    """The four idx files flat in `folder`, as Debian and the original sites ship them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, (x, y) in zip(("train", "t10k"), splits, strict=True):
        for kind, array in (("images-idx3", x), ("labels-idx1", y)):
            blob = _idx(array)
            path = folder / f"{split}-{kind}-ubyte{'.gz' if gz else ''}"
            path.write_bytes(gzip.compress(blob) if gz else blob)
            written.append(path)
    return written


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _write_mnist(root: Path, folder: str, *, gz: bool, per_class: int = 5) -> None:
    """Random 28x28 images whose pixel (0, 0) is the image's id and (0, 1) its label."""
    rng = np.random.default_rng(0)
    splits = []
    for labels, first_id in ((np.repeat(np.arange(10), per_class), 0), (np.arange(10), 100)):
        images = rng.integers(0, 256, size=(len(labels), 1, 28, 28), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(first_id, first_id + len(labels))
        images[:, 0, 0, 1] = labels
        splits.append((images, labels))
    write_mnist_idx(root, splits[0], splits[1], folder=folder, gz=gz)


def test_mnist_reads_idx_files(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "MNIST", gz=False)
    data = load_dataset(DatasetConfig(name="mnist", root=tmp_path))
    _check_common(data, (1, 28, 28))
    assert data.classes == tuple(torchvision.datasets.MNIST.classes)
    assert data.allow_flip is False  # a mirrored digit is another glyph
    ids = _ids(data)
    assert ids["test"] == list(range(100, 110))
    assert sorted(ids["train"] + ids["val"]) == list(range(50))
    assert sorted(data.val.y.tolist()) == list(range(10))


def test_fashion_mnist_reads_gzipped_idx_files(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "FashionMNIST", gz=True)
    data = load_dataset(DatasetConfig(name="fashion-mnist", root=tmp_path / "FashionMNIST"))
    _check_common(data, (1, 28, 28))
    assert data.classes[:2] == ("T-shirt/top", "Trouser")
    assert data.num_classes == 10
    assert data.allow_flip is True  # a mirrored shirt is still a shirt
    ids = _ids(data)
    assert ids["test"] == list(range(100, 110))
    raw = tmp_path / "FashionMNIST" / "raw"
    assert _files(raw) == sorted(f"{n}.gz" for n in IDX_NAMES)  # decompressed in memory only
    assert _ids(load_dataset(DatasetConfig(name="fashion-mnist", root=tmp_path))) == ids
    assert _ids(load_dataset(DatasetConfig(name="fashion-mnist", root=raw))) == ids


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_lying_flat_in_the_root_are_read(tmp_path: Path, gz: bool) -> None:
    folder = tmp_path / "fashion-mnist"
    _write_idx(folder, _mnist_splits(), gz=gz)
    before = _files(tmp_path)
    data = load_dataset(DatasetConfig(name="fashion-mnist", root=folder))
    _check_common(data, (1, 28, 28))
    assert data.num_classes == 10
    ids = _ids(data)
    assert ids["test"] == list(range(100, 110))
    assert sorted(ids["train"] + ids["val"]) == list(range(50))
    assert _files(tmp_path) == before  # nothing written next to the user's files


def test_torchvision_legacy_processed_files_are_read(tmp_path: Path) -> None:
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for name, (x, y) in zip(("training.pt", "test.pt"), _mnist_splits(), strict=True):
        torch.save((torch.from_numpy(x), torch.from_numpy(y)), processed / name)
    data = load_dataset(DatasetConfig(name="mnist", root=tmp_path))
    _check_common(data, (1, 28, 28))
    assert _ids(data)["test"] == list(range(100, 110))


@pytest.mark.parametrize(("split", "images", "labels"), [("train", 200, 190), ("t10k", 50, 60)])
def test_idx_labels_must_pair_one_to_one_with_images(
    tmp_path: Path, split: str, images: int, labels: int
) -> None:
    rng = np.random.default_rng(1)
    splits = [
        (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(m) % 10)
        for n, m in ((200, 200), (50, 50))
    ]
    index = 0 if split == "train" else 1
    splits[index] = (splits[index][0][:images], np.arange(labels) % 10)
    _write_idx(tmp_path, splits, gz=True)
    with pytest.raises(UserError) as e:
        load_dataset(DatasetConfig(name="mnist", root=tmp_path))
    assert str(e.value) == (
        f"dataset mnist: {labels} labels in {tmp_path}/{split}-labels-idx1-ubyte.gz for {images} "
        f"images in {tmp_path}/{split}-images-idx3-ubyte.gz; every image needs exactly one label"
    )


def test_idx_labels_outside_the_ten_classes_name_their_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = np.arange(50) % 10
    labels[3] = 12
    splits = [
        (rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), np.arange(200) % 10),
        (rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), labels),
    ]
    _write_idx(tmp_path, splits, gz=True)
    with pytest.raises(UserError) as e:
        load_dataset(DatasetConfig(name="fashion-mnist", root=tmp_path))
    assert str(e.value) == (
        f"dataset fashion-mnist: the labels in {tmp_path}/t10k-labels-idx1-ubyte.gz must lie in "
        "0..9, got 0..12"
    )


@pytest.mark.parametrize("gz", [True, False])
def test_an_idx_header_claiming_2_31_images_is_refused_without_allocating(
    tmp_path: Path, gz: bool
) -> None:
    files = _write_idx(tmp_path, _mnist_splits(), gz=gz)
    lie = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**31, 28, 28))
    lie += bytes(3 * 28 * 28)  # three images where the header promises 2**31
    files[0].write_bytes(gzip.compress(lie) if gz else lie)
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as e:
            load_dataset(DatasetConfig(name="mnist", root=tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak:,} bytes allocated"  # not the 1.7 TB the header claims
    message = str(e.value)
    assert message.startswith(f"dataset mnist: cannot read the MNIST files under {tmp_path} (")
    claim = "2,147,483,648 × 28 × 28 = 1,683,627,180,032 bytes of data (1.7 TB) but holds 2,352"
    assert f"{files[0]} claims {claim}" in message
    assert "\n" not in message


def test_a_truncated_or_false_gz_idx_file_is_named(tmp_path: Path) -> None:
    files = _write_idx(tmp_path, _mnist_splits(), gz=True)
    whole = files[1].read_bytes()
    files[1].write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=rf"\({re.escape(str(files[1]))}: Compressed file ended"):
        load_dataset(DatasetConfig(name="mnist", root=tmp_path))
    files[1].write_bytes(gzip.decompress(whole))  # plain bytes under a .gz name
    with pytest.raises(UserError, match=rf"\({re.escape(str(files[1]))}: Not a gzipped file"):
        load_dataset(DatasetConfig(name="mnist", root=tmp_path))


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (bytes([1, 2, 8, 1]), "is not an idx file (bad magic number)"),
        (bytes([0, 0, 0x0D, 1]), "holds idx elements of type 0x0D; expected 0x08"),
        (bytes([0, 0, 8, 3]), "holds a 3-dimensional idx array; expected 1"),
    ],
)
def test_an_idx_file_with_a_wrong_header_is_named(
    tmp_path: Path, header: bytes, detail: str
) -> None:
    files = _write_idx(tmp_path, _mnist_splits(), gz=False)
    files[3].write_bytes(header + (10).to_bytes(4, "big") + bytes(10))  # the test labels
    with pytest.raises(UserError, match=re.escape(f"({files[3]} {detail}")):
        load_dataset(DatasetConfig(name="mnist", root=tmp_path))


def test_the_real_fashion_mnist_as_debian_ships_it() -> None:
    if not all((FASHION / f"{n}.gz").is_file() for n in IDX_NAMES):
        pytest.skip(f"{FASHION} not installed (apt-get install dataset-fashion-mnist)")
    data = load_dataset(DatasetConfig(name="fashion-mnist", root=FASHION))
    assert len(data.train) + len(data.val) + len(data.test) == 70_000
    assert len(data.test) == 10_000
    assert data.shape == (1, 28, 28)
    assert data.num_classes == 10 and data.classes[-1] == "Ankle boot"
    assert np.bincount(data.test.y.numpy()).tolist() == [1000] * 10


# --------------------------------------------------------------------------- imagefolder

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def _write_images(root: Path, per_class: int = 5) -> None:
    """Solid-colour images in several sizes, modes and formats (RGB PNG, RGBA PNG, JPEG, grey)."""
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.new("RGB", (20 + 7 * i, 12 + 5 * i), rgb)
            if i % 4 == 1:
                img.convert("RGBA").save(root / name / f"{i}.png")
            elif i % 4 == 2:
                img.save(root / name / f"{i}.jpg", quality=95)
            elif i % 4 == 3:
                img.convert("L").save(root / name / f"{i}.bmp")
            else:
                img.save(root / name / f"{i}.png")
    (root / "README.txt").write_text("not a class folder")
    (root / "red" / "notes.txt").write_text("not an image")


def _cache(root: Path, size: int = 16) -> Path:
    return root / f".regsearch-cache-{size}.pt"


def test_imagefolder_decodes_resizes_and_labels(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs")
    data = load_dataset(DatasetConfig(name="imagefolder", root=tmp_path / "imgs", image_size=16))
    _check_common(data, (3, 16, 16))
    assert data.classes == ("blue", "green", "red")  # sorted folder names
    assert data.allow_flip is False, "a folder may hold glyphs: mirroring only when asked"
    flipped = DatasetConfig(name="imagefolder", root=tmp_path / "imgs", image_size=16, flip=True)
    assert load_dataset(flipped).allow_flip is True
    assert len(data.train) + len(data.val) + len(data.test) == 15
    greys = 0
    for split in (data.train, data.val, data.test):
        mean = split.x.float().mean(dim=(2, 3))  # (N, 3)
        for img_mean, label in zip(mean, split.y.tolist(), strict=True):
            r, g, b = COLOURS[data.classes[label]]
            if float(img_mean.max() - img_mean.min()) < 2.0:  # the grey copy, made RGB
                greys += 1
                assert abs(float(img_mean[0]) - (0.299 * r + 0.587 * g + 0.114 * b)) < 2.0
            else:
                assert int(img_mean.argmax()) == (r, g, b).index(255)
                assert float(img_mean.max()) > 240.0
    assert greys == 3  # one .bmp per class
    counts = [int((s.y == c).sum()) for s in (data.train, data.val, data.test) for c in range(3)]
    assert counts == [3, 3, 3, 1, 1, 1, 1, 1, 1]  # stratified 0.6 / 0.2 / 0.2


def _write_sized(root: Path, sizes: list[tuple[int, int]], per_size: int = 1) -> Path:
    """Three classes, each with `per_size` images of every (width, height) in `sizes`: green,
    with a red band on the left and a blue one on the right of a fifth of the width each."""
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(sizes * per_size):
            a = np.zeros((h, w, 3), dtype=np.uint8)
            a[:, :, 1] = 255
            band = w // 8
            a[:, :band] = (255, 0, 0)
            a[:, w - band :] = (0, 0, 255)
            Image.fromarray(a).save(root / f"c{c}" / f"{i}.png")
    return root


def _auto_choice(root: Path) -> tuple[int, tuple[str, ...]]:
    spec = json.dumps({"name": "imagefolder", "root": str(root)})
    config = load_config(overrides=[f"dataset={spec}"])
    assert config.dataset.image_size == "auto"  # the default
    choice = resolve(config, load_dataset(config.dataset))
    return int(choice.config.dataset.image_size), choice.notes


def test_imagefolder_auto_size_is_the_images_own(tmp_path: Path) -> None:
    side, notes = _auto_choice(_write_sized(tmp_path, [(28, 28)], per_size=5))
    assert side == 28  # stored in the study, so every worker decodes at 28
    assert "image size 28 (auto: all 15 images are 28×28)" in notes
    assert "dataset imagefolder: decoded 15 images at 28×28×3 (35.3 kB as uint8)" in notes
    assert _cache(tmp_path, 28).is_file()


def test_imagefolder_non_square_images_are_centre_cropped_at_their_shorter_side(
    tmp_path: Path,
) -> None:
    _write_sized(tmp_path, [(40, 30)], per_size=5)
    side, notes = _auto_choice(tmp_path)
    assert side == 30
    assert "image size 30 (auto: all 15 images are 40×30, shorter side 30)" in notes
    data = load_dataset(DatasetConfig(name="imagefolder", root=tmp_path, image_size=30))
    assert data.shape == (3, 30, 30)
    green = torch.tensor([0, 255, 0], dtype=torch.uint8)[:, None, None]
    assert (data.train.x == green).all()  # the side bands cropped away, not squashed in
    halved = load_dataset(DatasetConfig(name="imagefolder", root=tmp_path, image_size=15))
    assert halved.shape == (3, 15, 15)
    # Resized and cropped: at most a bleed of the bands at the edges (a squash: 255 there).
    assert (halved.train.x[:, 0, :, 0] < 64).all() and (halved.train.x[:, 2, :, -1] < 64).all()


def test_imagefolder_auto_size_follows_the_most_common_size_and_is_capped(
    tmp_path: Path,
) -> None:
    side, notes = _auto_choice(
        _write_sized(tmp_path / "a", [(20, 20), (20, 20), (36, 36)], per_size=2)
    )
    assert side == 20
    assert "image size 20 (auto: the most common of 2 sizes: 12 of 18 images are 20×20)" in notes
    side, notes = _auto_choice(_write_sized(tmp_path / "b", [(16, 16), (24, 20)], per_size=3))
    assert side == 16  # a tie: the smaller
    side, notes = _auto_choice(_write_sized(tmp_path / "c", [(300, 260)], per_size=5))
    assert side == 224
    why = "all 15 images are 300×260, shorter side 260, capped at 224"
    assert f"image size 224 (auto: {why})" in notes


def test_imagefolder_too_big_for_memory_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_sized(tmp_path, [(28, 28)], per_size=3)
    (tmp_path / "c0" / "0.png").write_bytes(b"not a png, never decoded")
    monkeypatch.setattr("search.data.images.memory_budget", lambda: (40_000, 80_000))
    cfg = DatasetConfig(name="imagefolder", root=tmp_path, image_size=32)
    with pytest.raises(UserError) as e:
        load_dataset(cfg)
    assert str(e.value) == (
        "dataset imagefolder: 9 images at 32×32×3 (27.6 kB as uint8) and their split copies "
        "need about 55.3 kB of memory while loading, more than half of the 80.0 kB available; "
        "lower dataset.image_size"
    )
    assert not list(tmp_path.glob(".regsearch-cache-*"))


def test_imagefolder_cache_is_written_reused_and_rebuilt(tmp_path: Path) -> None:
    _write_images(tmp_path)
    cfg = DatasetConfig(name="imagefolder", root=tmp_path, image_size=16)
    first = load_dataset(cfg)
    cache = _cache(tmp_path)
    assert cache.is_file()
    files = {p.name for p in tmp_path.iterdir() if p.is_file()}
    assert files == {cache.name, "README.txt"}  # and no temporary file left behind
    stamp = cache.stat().st_mtime_ns

    # Reused: the cache is not rewritten, and the images are not decoded again — an image
    # garbled in place (same size, same mtime) still loads, from the cache.
    victim = tmp_path / "red" / "0.png"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = load_dataset(cfg)
    assert cache.stat().st_mtime_ns == stamp
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)

    # A touched file invalidates it: now the garbled image is decoded, and refused.
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(UserError, match=r"^dataset imagefolder: cannot read image .*0\.png"):
        load_dataset(cfg)
    Image.new("RGB", (9, 9), COLOURS["red"]).save(victim)

    # An added file rebuilds it.
    Image.new("RGB", (30, 30), COLOURS["green"]).save(tmp_path / "green" / "extra.png")
    third = load_dataset(cfg)
    assert len(third.train) + len(third.val) + len(third.test) == 16
    assert cache.stat().st_mtime_ns != stamp
    blob = torch.load(cache, weights_only=True)
    assert blob["x"].shape == (16, 3, 16, 16) and blob["x"].dtype == torch.uint8
    assert blob["classes"] == ["blue", "green", "red"]

    # Another image size is another cache; a damaged cache is rebuilt.
    load_dataset(cfg.model_copy(update={"image_size": 8}))
    assert _cache(tmp_path, 8).is_file()
    cache.write_bytes(b"garbage")
    assert torch.equal(load_dataset(cfg).train.x, third.train.x)
    assert torch.load(cache, weights_only=True)["x"].shape[0] == 16


def test_imagefolder_trains_one_epoch_end_to_end(tmp_path: Path) -> None:
    _write_images(tmp_path, per_class=6)
    data = load_dataset(DatasetConfig(name="imagefolder", root=tmp_path, image_size=12))
    cfg = TrialConfig(
        model=ModelConfig(name="small-cnn", width=8),
        train=TrainConfig(epochs=1, batch_size=8, device="cpu"),
        regularization=Regularization(aug_strength=0.5, mixup_alpha=0.2, dropout=0.1),
        early_stopping=EarlyStoppingConfig(),
        objective=ObjectiveConfig(),
    )
    result = train(cfg, data)
    assert result.stop_reason == MAX_EPOCHS
    assert result.epochs_trained == 1
    assert result.best_stats is not None
    assert 0.0 <= result.best_stats.val_accuracy <= 1.0
    assert result.model_kwargs["in_channels"] == 3
    assert result.model_kwargs["num_classes"] == 3


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder"])
def test_file_based_sets_require_a_root(name: str) -> None:
    with pytest.raises(ValidationError, match=r"dataset\.root is required"):
        DatasetConfig(name=name)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"^dataset: dataset\.root is required for dataset"):
        load_config(overrides=[f"dataset.name={name}"])


def test_builtin_default_is_unchanged() -> None:
    cfg = DatasetConfig()
    assert (cfg.name, cfg.root, cfg.download, cfg.image_size) == ("digits", None, False, "auto")
    assert load_dataset(DatasetConfig(name="synthetic", num_samples=60)).shape == (1, 8, 8)
    assert load_config(overrides=["dataset={name: imagefolder, root: x}"]).dataset.image_size == (
        "auto"
    )
    # A study stored before `auto` holds `image_size: null`: it still reads.
    assert DatasetConfig.model_validate({"image_size": None}).image_size == "auto"


@pytest.mark.parametrize("value", ["3", "1025", "100000", "12.5", "true", "big"])
def test_image_size_is_auto_or_4_to_1024(value: str) -> None:
    with pytest.raises(UserError) as e:
        load_config(overrides=[f"dataset.image_size={value}"])
    assert str(e.value).startswith("dataset.image_size: expected auto or an integer from 4 to 1024")


def test_dataset_name_is_a_known_set_or_a_loader_path() -> None:
    assert load_config(overrides=["dataset.name=my_pkg.data:load"]).dataset.name == (
        "my_pkg.data:load"
    )
    for bad in ("nope", "my_pkg:", "a b:c"):
        with pytest.raises(UserError) as e:
            load_config(overrides=[f"dataset.name={json.dumps(bad)}"])
        assert str(e.value) == (
            f"dataset.name: unknown data set {bad!r}; known: digits, synthetic, cifar10, "
            "cifar100, mnist, fashion-mnist, imagefolder or a loader package.module:callable"
        )


@pytest.mark.parametrize(("name", "what"), [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")])
def test_missing_files_name_the_set_and_the_folder(tmp_path: Path, name: str, what: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(UserError) as e:
        load_dataset(DatasetConfig(name=name, root=root))
    assert str(e.value) == (
        f"dataset {name}: no {what} files under {root} (set dataset.download: true to fetch "
        "them, or point dataset.root at them)"
    )
    assert not root.exists()  # nothing was created


@pytest.mark.parametrize(
    ("name", "what", "folder"),
    [("mnist", "MNIST", "MNIST"), ("fashion-mnist", "Fashion-MNIST", "FashionMNIST")],
)
def test_missing_idx_files_name_both_layouts(
    tmp_path: Path, name: str, what: str, folder: str
) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(UserError) as e:
        load_dataset(DatasetConfig(name=name, root=root))
    assert str(e.value) == (
        f"dataset {name}: no {what} files under {root} (looked for "
        f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz] in {root} and in "
        f"{root}/{folder}/raw; set dataset.download: true to fetch them, or point dataset.root "
        "at them)"
    )
    assert not root.exists()  # nothing was created
    files = _write_idx(root, _mnist_splits(), gz=True)
    files[3].unlink()
    with pytest.raises(UserError, match=rf"; {root} lacks t10k-labels-idx1-ubyte\[\.gz\]; set "):
        load_dataset(DatasetConfig(name=name, root=root))


def test_missing_image_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"^dataset imagefolder: no folder {tmp_path / 'x'} "):
        load_dataset(DatasetConfig(name="imagefolder", root=tmp_path / "x"))
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match=r"^dataset imagefolder: no class folders of images"):
        load_dataset(DatasetConfig(name="imagefolder", root=tmp_path / "x"))
    (tmp_path / "x" / "empty").mkdir()
    with pytest.raises(UserError, match=r"^dataset imagefolder: no images in the class folders"):
        load_dataset(DatasetConfig(name="imagefolder", root=tmp_path / "x"))


def test_too_few_images_for_a_class(tmp_path: Path) -> None:
    _write_images(tmp_path, per_class=3)
    for p in (tmp_path / "red").iterdir():
        if p.suffix != ".txt" and p.stem != "0":
            p.unlink()
    with pytest.raises(UserError, match=r"at least 3 images to split; red has 1$"):
        load_dataset(DatasetConfig(name="imagefolder", root=tmp_path, image_size=8))


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_download_offline_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Point torchvision at a local port that refuses connections, as an offline machine would:
    # the test never downloads anything, even where a network is available.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", UNREACHABLE + "cifar.tar.gz")
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [UNREACHABLE])
    cfg = DatasetConfig(name=name, root=tmp_path / "data", download=True)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=rf"^dataset {name}: could not download") as e:
        load_dataset(cfg)
    assert "\n" not in str(e.value)
    assert str(tmp_path / "data") in str(e.value)
    assert not (tmp_path / "data").exists(), "no empty MNIST/raw left behind"


def test_download_is_skipped_when_the_files_are_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", UNREACHABLE + "cifar.tar.gz")
    _write_cifar10(tmp_path)
    data = load_dataset(DatasetConfig(name="cifar10", root=tmp_path, download=True))
    assert len(data.test) == 10


# --------------------------------------------------------------------------- a whole study

_WRITERS: dict[str, tuple[Callable[[Path], None] | None, dict[str, Any]]] = {
    "digits": (None, {}),
    "synthetic": (None, {"num_samples": 60}),
    "cifar10": (_write_cifar10, {}),
    "cifar100": (_write_cifar100, {}),
    "mnist": (lambda root: _write_mnist(root, "MNIST", gz=False), {}),
    "fashion-mnist": (lambda root: _write_mnist(root, "FashionMNIST", gz=True), {}),
    "imagefolder": (_write_images, {"image_size": 8}),
}


@pytest.mark.parametrize("name", list(_WRITERS))
def test_a_study_runs_on_each_data_set(tmp_path: Path, name: str) -> None:
    write, extra = _WRITERS[name]
    spec: dict[str, Any] = {"name": name, **extra}
    if write is not None:
        write(tmp_path / "data")
        spec["root"] = str(tmp_path / "data")
    config = load_config(
        overrides=[
            f"dataset={json.dumps(spec)}",  # JSON is YAML: any tmp path survives the parse
            f"study={name}",
            "model.width=8",
            "train.epochs=1",
            "train.batch_size=16",
            "train.device=cpu",
            TEST_BUDGET,
            "search.n_trials=1",
            "search.pruner=none",
            "search.confirm=none",
            "tracking.enabled=false",
        ]
    )
    study = run_study(
        config,
        RunOptions(storage_url=f"sqlite:///{tmp_path}/o.db", quiet=True),
        console=Console(file=io.StringIO()),
    )
    assert study.study_name == name
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE], trials[0].user_attrs
    assert trials[0].value is not None and 0.0 <= trials[0].value <= 1.0


def _tiny_classes(root: Path, names: tuple[str, ...] = ("a", "b"), n: int = 4) -> None:
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (8, 8), 40 + 60 * c + i).save(root / name / f"{i}.png")


def test_imagefolder_scales_16_bit_and_float_images_to_8_bits(tmp_path: Path) -> None:
    """PIL's RGB conversion clips 16-bit and float pixels to 0..255 (a 16-bit image came out
    nearly all white, a float one all black): they are scaled instead."""
    root = tmp_path / "deep"
    for name, level in (("dark", 10_000), ("bright", 50_000)):
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.full((8, 8), level + 100 * i, dtype=np.uint16)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "float").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(root / "float" / f"{i}.tif")
    data = load_dataset(DatasetConfig(name="imagefolder", root=root, image_size=8))
    x = torch.cat([data.train.x, data.val.x, data.test.x])
    y = torch.cat([data.train.y, data.val.y, data.test.y])
    means = {data.classes[c]: x[y == c].float().mean().item() for c in range(3)}
    assert means["bright"] == pytest.approx(50_150 / 257, abs=1.5)
    assert means["dark"] == pytest.approx(10_150 / 257, abs=1.5)
    assert means["float"] == pytest.approx(127.5, abs=1)


def test_imagefolder_leaves_out_hidden_files_and_names_what_it_skipped(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _tiny_classes(root)
    (root / ".ipynb_checkpoints").mkdir()  # no class
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "a" / "._0.png").write_bytes(b"\0\5\26\7")  # macOS AppleDouble: no image
    (root / "a" / "notes.txt").write_text("not an image")
    Image.new("L", (8, 8), 200).save(root / "b" / "extra.gif")
    data = load_dataset(DatasetConfig(name="imagefolder", root=root, image_size=8))
    assert data.classes == ("a", "b")
    assert len(data.train) + len(data.val) + len(data.test) == 9  # the GIF is read
    assert any(
        "left out 1 files that are no images by their name (.txt ×1" in n for n in data.notes
    )


@pytest.mark.parametrize(
    ("link", "target"),
    [("a/again", "."), ("a/up", ".."), ("a/other", "../b")],
    ids=["loop", "root", "another-class"],
)
def test_imagefolder_refuses_a_folder_link_back_into_the_data_set(
    tmp_path: Path, link: str, target: str
) -> None:
    """Followed, such a link would count images many times over, across the splits, or label
    another class's images as this one's."""
    root = tmp_path / "imgs"
    _tiny_classes(root)
    os.symlink(target, root / link)
    with pytest.raises(
        UserError, match=rf"^dataset imagefolder: {link} links to .*remove the link"
    ):
        load_dataset(DatasetConfig(name="imagefolder", root=root, image_size=8))
    # A class folder that is itself a link to images elsewhere is fine.
    os.remove(root / link)
    _tiny_classes(tmp_path / "elsewhere", names=("c",))
    os.symlink(tmp_path / "elsewhere" / "c", root / "c")
    data = load_dataset(DatasetConfig(name="imagefolder", root=root, image_size=8))
    assert data.classes == ("a", "b", "c")
    os.symlink(root / "a", root / "d")  # the same images under two labels
    with pytest.raises(
        UserError, match=r"^dataset imagefolder: class folder d is .*remove the link"
    ):
        load_dataset(DatasetConfig(name="imagefolder", root=root, image_size=8))


def test_cifar_batches_saved_with_pickle_protocol_5_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-saved copy (`pickle.HIGHEST_PROTOCOL`) builds its arrays from raw bytes."""
    original = pickle.dump
    monkeypatch.setattr(pickle, "dump", lambda obj, f, protocol=None: original(obj, f, protocol=5))
    _write_cifar10(tmp_path / "data")
    monkeypatch.setattr(pickle, "dump", original)
    data = load_dataset(DatasetConfig(name="cifar10", root=tmp_path / "data"))
    assert _ids(data)["test"] == list(range(200, 210))


def test_a_subset_that_leaves_a_class_short_names_it(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _tiny_classes(root, names=("a",), n=3)
    _tiny_classes(root, names=("b", "c"), n=40)
    with pytest.raises(UserError, match=r"^dataset.subset: 40 images keep fewer than 3 .*\(a has"):
        load_dataset(DatasetConfig(name="imagefolder", root=root, image_size=8, subset=40))


def test_test_fraction_is_not_counted_where_the_set_has_its_own_test_split() -> None:
    assert DatasetConfig(name="mnist", root=Path("x"), val_fraction=0.75).val_fraction == 0.75
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        DatasetConfig(name="digits", val_fraction=0.75)
