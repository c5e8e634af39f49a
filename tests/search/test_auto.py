"""Defaults that fit the data: `model.name: auto`, `train.batch_size: auto`, `dataset.channels:
auto`, the size-aware small-cnn, and budgets for tiny training splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model
from models._small_cnn import small_cnn_plan
from search.config.schema import DatasetConfig
from search.data.dataset import load_dataset
from search.data.sample import digits_images, write_imagefolder, write_mnist_idx
from search.study.studyfile import load_config
from search.training.auto import batch_size_for, epoch_plan, model_for, resolve
from tests.helpers import TEST_BUDGET, regsearch


@pytest.mark.parametrize(
    ("shape", "n_train", "name", "width"),
    [
        ((1, 8, 8), 1078, "small-cnn", None),  # the embedded digits: unchanged
        ((1, 28, 28), 1149, "small-cnn", None),
        ((3, 32, 32), 1078, "small-cnn", None),
        ((1, 64, 64), 300, "small-cnn", None),
        ((1, 28, 28), 48_000, "small-cnn", 32),  # MNIST-sized: wider
        ((3, 32, 32), 40_000, "airbench", None),  # CIFAR-sized colour: the CIFAR net
        ((3, 96, 96), 40_000, "small-cnn", 32),  # beyond airbench's sizes
    ],
)
def test_auto_model_follows_image_size_channels_and_set_size(
    shape: tuple[int, int, int], n_train: int, name: str, width: int | None
) -> None:
    chosen, chosen_width, why = model_for(shape, n_train)
    assert (chosen, chosen_width) == (name, width)
    assert f"{max(shape[1:])} px" in why and f"{n_train:,}" in why


@pytest.mark.parametrize(
    ("n_train", "batch"), [(40, 16), (180, 16), (240, 16), (600, 64), (1078, 128), (50_000, 128)]
)
def test_auto_batch_size_gives_small_splits_several_steps(n_train: int, batch: int) -> None:
    assert batch_size_for(n_train) == batch
    if n_train >= 128:
        assert -(-n_train // batch) >= 8, "at least 8 optimizer steps an epoch"


def test_an_epoch_of_a_tiny_split_repeats_passes_until_it_has_enough_steps() -> None:
    assert epoch_plan(1078, 128, 45) == (5, 45)  # the digits default: five passes of 9 steps
    assert epoch_plan(800, 64, 45) == (4, 52)  # Fashion-MNIST 1,000: four passes of 13
    assert epoch_plan(1078, 128, 8) == (1, 9)  # a budget under one pass: one pass
    assert epoch_plan(40, 16, 8) == (3, 9)  # 3 steps a pass: three passes an epoch
    assert epoch_plan(10, 16, 1) == (1, 1)


@pytest.mark.parametrize("size", [8, 12, 16, 24, 28, 32, 48, 64])
def test_small_cnn_receptive_field_covers_the_whole_input(size: int) -> None:
    """The centre unit of the last feature map (before global pooling) must see every input
    pixel, corners included: otherwise a 28 px digit is classified from a patch."""
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1, image_size=size).eval()
    x = torch.rand(1, 1, size, size, requires_grad=True)
    features = model.stages(model.stem(model.normalize(x)))
    h, w = features.shape[-2:]
    assert max(h, w) <= 4, f"{size} px ends at {h}x{w}, not <= 4x4"
    features[0, :, h // 2, w // 2].sum().backward()
    grad = x.grad[0, 0].abs()
    for corner in (grad[0, 0], grad[0, -1], grad[-1, 0], grad[-1, -1]):
        assert corner > 0, f"{size} px: a corner is outside the receptive field"


def test_small_cnn_keeps_its_8px_shape_and_adds_stages_with_size() -> None:
    assert small_cnn_plan(8) == (1, [1, 2])  # the original two-block net
    assert len(small_cnn_plan(32)[1]) == 3
    assert len(small_cnn_plan(64)[1]) == 4
    params8 = sum(
        p.numel() for p in create_model("small-cnn", num_classes=10, in_channels=1).parameters()
    )
    assert params8 < 30_000, "the 8x8 default stays a ~20k-parameter net"


def _grey_folder(root: Path, per_class: int = 8, size: int = 28) -> Path:
    x, y = digits_images(size)
    keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(3)])
    return write_imagefolder(root, x[keep], y[keep])


def test_grayscale_imagefolder_is_one_channel_and_colour_stays_three(tmp_path: Path) -> None:
    grey = _grey_folder(tmp_path / "grey")
    data = load_dataset(DatasetConfig(name="imagefolder", root=grey, image_size=28))
    assert data.shape == (1, 28, 28)
    assert "24 of 24 images are grayscale" in data.channel_note
    rgb, labels = digits_images(16, rgb=True)
    colour = write_imagefolder(tmp_path / "rgb", rgb[:30], labels[:30] % 3)
    assert load_dataset(DatasetConfig(name="imagefolder", root=colour, image_size=16)).shape[0] == 3
    # An explicit setting converts either way.
    as_rgb = load_dataset(DatasetConfig(name="imagefolder", root=grey, image_size=28, channels=3))
    assert as_rgb.shape[0] == 3
    assert torch.equal(as_rgb.train.x[:, 0], as_rgb.train.x[:, 2])
    as_grey = load_dataset(
        DatasetConfig(name="imagefolder", root=colour, image_size=16, channels=1)
    )
    assert as_grey.shape[0] == 1


def test_a_mixed_folder_follows_its_majority(tmp_path: Path) -> None:
    from PIL import Image

    root = _grey_folder(tmp_path / "mixed", per_class=4, size=16)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(root / "0" / "red.png")
    data = load_dataset(DatasetConfig(name="imagefolder", root=root, image_size=16))
    assert data.shape[0] == 1 and "12 of 13" in data.channel_note


def test_resolve_stores_concrete_choices_and_says_why(tmp_path: Path) -> None:
    x, y = digits_images(28)
    root = write_mnist_idx(tmp_path, (x[:200], y[:200]), (x[200:260], y[200:260]))
    config = load_config(overrides=["dataset.name=mnist", f"dataset.root={root}"])
    assert config.model.name == "auto" and config.train.batch_size == "auto"
    choice = resolve(config, load_dataset(config.dataset))
    assert choice.config.model.name == "small-cnn"
    assert choice.config.train.batch_size == 16  # 160 training images
    assert choice.config.dataset.channels == 1
    assert any(n.startswith("model small-cnn (auto: 28 px") for n in choice.notes)
    # The epoch the note describes is the one trained: 10 steps a pass, 45 steps an epoch.
    assert "batch size 16 (auto: 10 steps a pass over 160 images, 5 passes an epoch)" in (
        choice.notes
    )
    lowered = load_config(overrides=["dataset.name=mnist", f"dataset.root={root}", TEST_BUDGET])
    one_pass = resolve(lowered, load_dataset(lowered.dataset))
    assert "batch size 16 (auto: 10 steps an epoch on 160 images)" in one_pass.notes
    explicit = load_config(
        overrides=["dataset.name=mnist", f"dataset.root={root}", "model.name=resnet18"]
    )
    assert resolve(explicit, load_dataset(explicit.dataset)).config.model.name == "resnet18"


def test_auto_chooses_by_the_whole_training_split_in_a_size_sweep() -> None:
    """A sweep's fractions of a CIFAR-sized set trained small-cnn at 0.25 and airbench at
    0.5 and 1: the sweep compared two networks, not one network on more data."""
    from dataclasses import replace

    config = load_config(
        overrides=["dataset.name=synthetic", "dataset.channels=3", "dataset.image_size=24"]
    )
    quarter = config.dataset.model_copy(update={"train_fraction": 0.25})
    data = load_dataset(quarter)
    whole = load_dataset(config.dataset)
    assert data.full_train == len(whole.train) > len(data.train) and whole.full_train == 0
    as_if_large = replace(data, full_train=40_000)  # what a CIFAR-sized split holds
    choice = resolve(config, as_if_large)
    assert choice.config.model.name == "airbench"
    assert choice.config.train.batch_size == batch_size_for(len(data.train))  # this fraction's
    assert any(f"({len(data.train):,} at this fraction)" in n for n in choice.notes)


@pytest.mark.slow
def test_grayscale_folder_study_gives_a_one_channel_champion(tmp_path: Path) -> None:
    """End to end as a user: a folder of grayscale PNGs, the default study (short), then the
    champion from MLflow takes the (N, 1, H, W) input the user naturally feeds."""
    import mlflow

    folder = _grey_folder(tmp_path / "pngs", per_class=10, size=28)
    proc = regsearch(
        "run",
        "--study",
        "grey",
        "--n-trials",
        "1",
        "--set",
        "dataset.name=imagefolder",
        "--set",
        f"dataset.root={folder}",
        "--set",
        "dataset.image_size=28",
        "--set",
        "train.epochs=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "grey: model small-cnn (auto: 28 px, 1 channel" in proc.stderr
    assert "channels 1 (auto: 30 of 30 images are grayscale)" in proc.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")  # not an earlier test's
    model = mlflow.pytorch.load_model("models:/grey@champion")
    with torch.no_grad():
        logits = model(torch.rand(4, 1, 28, 28))
    assert logits.shape == (4, 3)
    parent = mlflow.search_runs(experiment_names=["grey"], filter_string="tags.role = 'study'")
    assert parent.loc[0, "params.model.name"] == "small-cnn"
    assert parent.loc[0, "params.dataset.channels"] == "1"
    assert "grayscale" in parent.loc[0, "tags.auto"]
    stored = json.loads(regsearch("status", "grey", "--json", cwd=tmp_path).stdout)
    assert stored and stored[0]["state"] == "COMPLETE"
