"""The file-based data sets, read from tiny files written in their real on-disk formats: CIFAR
pickled batches, MNIST idx files (plain and gzipped), class-per-folder images with their cache."""

from __future__ import annotations

import io
import json
import os
import pickle
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

from search.config import (
    DatasetConfig,
    EarlyStoppingConfig,
    ModelConfig,
    ObjectiveConfig,
    Regularization,
    TrainConfig,
    TrialConfig,
)
from search.data import Dataset, load_dataset
from search.errors import UserError
from search.runner import RunOptions, run_study
from search.sample_data import write_mnist_idx
from search.studyfile import load_config
from search.train import MAX_EPOCHS, train

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


# --------------------------------------------------------------------------- MNIST


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
    assert (raw / "train-images-idx3-ubyte").is_file()  # decompressed once, next to the .gz
    assert not [p for p in raw.iterdir() if p.suffix == ".tmp"]
    assert _ids(load_dataset(DatasetConfig(name="fashion-mnist", root=tmp_path))) == ids


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


def test_imagefolder_default_size_is_32(tmp_path: Path) -> None:
    _write_images(tmp_path)
    cfg = DatasetConfig(name="imagefolder", root=tmp_path)
    assert cfg.image_size == 32
    assert load_dataset(cfg).shape == (3, 32, 32)
    assert _cache(tmp_path, 32).is_file()


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
    assert (cfg.name, cfg.root, cfg.download, cfg.image_size) == ("digits", None, False, None)
    assert DatasetConfig(name="synthetic").image_size == 8
    assert load_config(overrides=["dataset={name: synthetic}"]).dataset.image_size == 8
    assert load_config(overrides=["dataset={name: imagefolder, root: x}"]).dataset.image_size == 32


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("cifar10", "CIFAR-10"),
        ("cifar100", "CIFAR-100"),
        ("mnist", "MNIST"),
        ("fashion-mnist", "Fashion-MNIST"),
    ],
)
def test_missing_files_name_the_set_and_the_folder(tmp_path: Path, name: str, what: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(UserError) as e:
        load_dataset(DatasetConfig(name=name, root=root))  # type: ignore[arg-type]
    assert str(e.value) == (
        f"dataset {name}: no {what} files under {root} (set dataset.download: true to fetch "
        "them, or point dataset.root at them)"
    )
    assert not root.exists()  # nothing was created


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
    with pytest.raises(UserError, match="every class needs at least 3 images"):
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
