"""Data sets: uint8 images, fixed stratified train/val/test splits, synthetic shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from search.config.schema import DatasetConfig
from search.core.errors import UserError
from search.data.dataset import Dataset, ImageSet, load_dataset

N_DIGITS = 1797


def _rows(images: ImageSet) -> list[tuple[int, ...]]:
    return [tuple(r) for r in images.x.flatten(1).tolist()]


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def digits() -> Dataset:
    return load_dataset(DatasetConfig(name="digits"))


# --------------------------------------------------------------------------- digits


def test_digits_format(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.classes == tuple(str(i) for i in range(10))
    assert digits.num_classes == 10
    assert digits.shape == (1, 8, 8)
    assert digits.max_value == 16.0
    assert digits.allow_flip is False  # a mirrored digit is another glyph
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.uint8
        assert split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert split.x.shape[0] == len(split)
        assert int(split.x.max()) == 16
        assert int(split.x.min()) == 0
        assert set(split.y.unique().tolist()) == set(range(10))


def test_digits_splits_are_disjoint_and_cover_the_data_set(digits: Dataset) -> None:
    train, val, test = (set(_rows(s)) for s in (digits.train, digits.val, digits.test))
    # Every digits image is unique, so disjoint images mean disjoint indices.
    assert len(train) == len(digits.train)
    assert not train & val and not train & test and not val & test
    assert len(digits.train) + len(digits.val) + len(digits.test) == N_DIGITS
    bunch = load_digits()
    everything = {tuple(r) for r in bunch.images.astype(np.uint8).reshape(N_DIGITS, -1).tolist()}
    assert train | val | test == everything


def test_digits_labels_match_images(digits: Dataset) -> None:
    bunch = load_digits()
    label_of = {
        tuple(img): int(t)
        for img, t in zip(
            bunch.images.astype(np.uint8).reshape(N_DIGITS, -1).tolist(),
            bunch.target,
            strict=True,
        )
    }
    for split in (digits.train, digits.val, digits.test):
        assert [label_of[r] for r in _rows(split)] == split.y.tolist()


@pytest.mark.parametrize(("val", "test"), [(0.2, 0.2), (0.1, 0.3), (0.15, 0.05), (0.4, 0.4)])
def test_split_sizes_match_fractions(val: float, test: float) -> None:
    data = load_dataset(DatasetConfig(val_fraction=val, test_fraction=test))
    assert abs(len(data.val) - val * N_DIGITS) <= 2
    assert abs(len(data.test) - test * N_DIGITS) <= 2
    assert len(data.train) + len(data.val) + len(data.test) == N_DIGITS


def test_splits_are_stratified(digits: Dataset) -> None:
    overall = np.bincount(load_digits().target, minlength=10)
    for split, fraction in ((digits.train, 0.6), (digits.val, 0.2), (digits.test, 0.2)):
        counts = np.bincount(split.y.numpy(), minlength=10)
        assert np.abs(counts - overall * fraction).max() <= 2, (fraction, counts)


def test_same_split_seed_same_splits(digits: Dataset) -> None:
    again = load_dataset(DatasetConfig(name="digits", split_seed=0))
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x)
        assert torch.equal(a.y, b.y)


def test_other_split_seed_other_splits(digits: Dataset) -> None:
    other = load_dataset(DatasetConfig(name="digits", split_seed=1))
    assert len(other.val) == len(digits.val)
    assert set(_rows(other.val)) != set(_rows(digits.val))
    assert set(_rows(other.test)) != set(_rows(digits.test))
    # Still a partition of the same images.
    assert set(_rows(other.train)) | set(_rows(other.val)) | set(_rows(other.test)) == set(
        _rows(digits.train)
    ) | set(_rows(digits.val)) | set(_rows(digits.test))


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize(
    ("channels", "size", "classes", "samples"), [(1, 8, 3, 300), (3, 10, 5, 200), (2, 4, 2, 40)]
)
def test_synthetic_shapes(channels: int, size: int, classes: int, samples: int) -> None:
    cfg = DatasetConfig(
        name="synthetic",
        num_samples=samples,
        image_size=size,
        channels=channels,
        num_classes=classes,
    )
    data = load_dataset(cfg)
    assert data.shape == (channels, size, size)
    assert data.num_classes == classes
    assert data.classes == tuple(f"class_{i}" for i in range(classes))
    assert data.max_value == 255.0
    assert data.allow_flip is True
    assert len(data.train) + len(data.val) + len(data.test) == samples
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.uint8
        assert split.x.shape == (len(split), channels, size, size)
        assert set(split.y.unique().tolist()) == set(range(classes))
    train, val, test = (set(_rows(s)) for s in (data.train, data.val, data.test))
    assert not train & val and not train & test and not val & test


def test_synthetic_is_reproducible_and_depends_on_split_seed() -> None:
    cfg = DatasetConfig(name="synthetic", num_samples=60, num_classes=3)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert torch.equal(a.train.x, b.train.x)
    c = load_dataset(cfg.model_copy(update={"split_seed": 1}))
    assert not torch.equal(a.train.x, c.train.x)


def test_synthetic_image_size_auto_is_8_and_is_stored() -> None:
    from search.study.studyfile import load_config
    from search.training.auto import resolve

    config = load_config(overrides=["dataset={name: synthetic, num_samples: 60}"])
    assert config.dataset.image_size == "auto"
    choice = resolve(config, load_dataset(config.dataset))
    assert choice.config.dataset.image_size == 8
    assert "image size 8 (auto: synthetic default)" in choice.notes


def test_a_synthetic_set_too_big_for_memory_is_refused_before_drawing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("search.data.images.memory_budget", lambda: (1_000_000, 2_000_000))
    cfg = DatasetConfig(name="synthetic", num_samples=2000, image_size=64)
    with pytest.raises(UserError) as e:
        load_dataset(cfg)
    message = str(e.value)
    assert message.startswith(
        "dataset synthetic: 2,000 images at 64×64×1 (8.2 MB as uint8), their split copies and "
        "the float draw need about "
    )
    assert message.endswith(
        "more than half of the 2.0 MB available; lower dataset.image_size or dataset.num_samples"
    )
    monkeypatch.setattr("search.data.images.memory_budget", lambda: None)  # unknown: not refused
    assert load_dataset(cfg.model_copy(update={"num_samples": 60})).shape == (1, 64, 64)


def test_the_memory_budget_is_half_the_available_memory() -> None:
    from search.data.images import memory_budget

    budget = memory_budget()
    assert budget is not None  # Linux: /proc/meminfo
    assert 0 < budget[0] == budget[1] // 2


def test_too_few_images_per_class() -> None:
    cfg = DatasetConfig(name="synthetic", num_samples=20, num_classes=10)
    with pytest.raises(UserError, match="at least 3 images"):
        load_dataset(cfg)


def test_unknown_data_set_name() -> None:
    cfg = DatasetConfig.model_construct(name="nope")
    with pytest.raises(UserError, match=r"^dataset\.name: unknown data set 'nope'"):
        load_dataset(cfg)


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("channels", [1, 3])
def test_mean_std(channels: int) -> None:
    data = load_dataset(
        DatasetConfig(name="synthetic", num_samples=60, channels=channels, num_classes=3)
    )
    mean, std = data.mean_std()
    assert len(mean) == len(std) == channels
    x = data.train.x.double() / 255.0
    for c in range(channels):
        assert mean[c] == pytest.approx(x[:, c].mean().item(), rel=1e-5)
        assert std[c] == pytest.approx(x[:, c].std().item(), rel=1e-4)
        assert 0.0 < mean[c] < 1.0
        assert 0.0 < std[c] < 1.0


def test_mean_std_of_digits(digits: Dataset) -> None:
    mean, std = digits.mean_std()
    assert len(mean) == len(std) == 1
    assert 0.2 < mean[0] < 0.4
    assert 0.3 < std[0] < 0.45


def test_mean_std_of_constant_images_is_clamped() -> None:
    x = torch.full((4, 2, 3, 3), 8, dtype=torch.uint8)
    split = ImageSet(x, torch.arange(4) % 2)
    data = Dataset("const", split, split, split, ("a", "b"), 16.0, False)
    mean, std = data.mean_std()
    assert mean == pytest.approx([0.5, 0.5])
    assert std == pytest.approx([1e-3, 1e-3])


def test_to_moves_every_split_and_keeps_the_rest(digits: Dataset) -> None:
    """A worker moves its data set to the device once: all three splits go, images and
    labels, shapes and dtypes kept ("meta" stands for a GPU here)."""
    moved = digits.to("meta")
    for before, after in zip(
        (digits.train, digits.val, digits.test), (moved.train, moved.val, moved.test), strict=True
    ):
        assert after.x.device.type == after.y.device.type == "meta"
        assert (after.x.shape, after.x.dtype) == (before.x.shape, before.x.dtype)
        assert (after.y.shape, after.y.dtype) == (before.y.shape, before.y.dtype)
    assert (moved.classes, moved.max_value, moved.allow_flip) == (
        digits.classes,
        digits.max_value,
        digits.allow_flip,
    )
    assert digits.train.x.device.type == "cpu", "the original stays where it was"


# --------------------------------------------------------------------------- train_fraction


def test_a_train_fraction_is_a_stratified_subset_inside_every_larger_one(digits: Dataset) -> None:
    """A size sweep compares studies at several fractions: each trains on a stratified share
    of the same training images (smaller inside larger), validated and tested on the same
    images."""
    full = _rows(digits.train)
    full_counts = np.bincount(digits.train.y.numpy(), minlength=10)
    previous: set[tuple[int, ...]] | None = None
    for fraction in (0.1, 0.25, 0.5):
        part = load_dataset(DatasetConfig(name="digits", train_fraction=fraction))
        assert _rows(part.val) == _rows(digits.val) and _rows(part.test) == _rows(digits.test)
        counts = np.bincount(part.train.y.numpy(), minlength=10)
        assert (np.abs(counts - fraction * full_counts) <= 0.5 + 1e-9).all(), counts
        rows = set(_rows(part.train))
        assert rows <= set(full)
        if previous is not None:
            assert previous <= rows, "a smaller fraction's images are all in the larger one"
        previous = rows


def test_a_tiny_train_fraction_keeps_one_image_of_every_class(digits: Dataset) -> None:
    part = load_dataset(DatasetConfig(name="digits", train_fraction=0.001))
    assert sorted(part.train.y.tolist()) == list(range(10))


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_a_train_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="train_fraction"):
        DatasetConfig(name="digits", train_fraction=fraction)


# --------------------------------------------------------------------------- subset, label noise


def test_a_subset_is_the_labelled_images_a_smaller_user_would_have_before_any_split() -> None:
    """`dataset.subset: 300` takes a stratified 300 images first, then splits them as a study
    of 300 images would: validation and test come out of the 300, not out of all 1,797."""
    part = load_dataset(DatasetConfig(name="digits", subset=300))
    assert (len(part.train), len(part.val), len(part.test)) == (180, 60, 60)
    for split in (part.train, part.val, part.test):
        counts = np.bincount(split.y.numpy(), minlength=10)
        assert counts.max() - counts.min() <= 2, "stratified: every class alike"
    again = load_dataset(DatasetConfig(name="digits", subset=300))
    assert _rows(again.val) == _rows(part.val), "seeded by split_seed: the same in every worker"
    other = load_dataset(DatasetConfig(name="digits", subset=300, split_seed=1))
    assert _rows(other.train) != _rows(part.train)


def test_a_subset_keeps_an_official_test_split_whole(tmp_path) -> None:
    from search.data.sample import digits_images, write_mnist_idx

    x, y = digits_images(28)
    write_mnist_idx(tmp_path, (x[:1400], y[:1400]), (x[1400:], y[1400:]))
    data = load_dataset(DatasetConfig(name="mnist", root=tmp_path, subset=200))
    assert (len(data.train), len(data.val), len(data.test)) == (160, 40, len(y) - 1400)


def test_a_subset_too_small_to_split_is_one_line() -> None:
    with pytest.raises(ValueError, match="subset"):
        DatasetConfig(name="digits", subset=10)
    with pytest.raises(UserError, match=r"^dataset.subset: 20 images keep fewer than 3 of some"):
        load_dataset(DatasetConfig(name="digits", subset=20, val_fraction=0.1, test_fraction=0.1))
    with pytest.raises(UserError, match=r"cannot split 40 images \(a validation and a test split"):
        load_dataset(DatasetConfig(name="digits", subset=40, val_fraction=0.1, test_fraction=0.1))


def test_label_noise_replaces_that_share_of_the_training_labels_only(digits: Dataset) -> None:
    noisy = load_dataset(DatasetConfig(name="digits", label_noise=0.4))
    assert _rows(noisy.train) == _rows(digits.train), "the same images"
    wrong = (noisy.train.y != digits.train.y).float().mean().item()
    assert wrong == pytest.approx(0.4, abs=1 / len(digits.train))
    assert torch.equal(noisy.val.y, digits.val.y) and torch.equal(noisy.test.y, digits.test.y)
    with pytest.raises(ValueError, match="label_noise"):
        DatasetConfig(name="digits", label_noise=1.0)


def test_a_resplit_keeps_validation_labels_true_under_label_noise(digits: Dataset) -> None:
    """The confirm phase's own splits (a small validation split) pool training and validation
    images: the replaced labels stay in training, in the same share, and every validation
    label is the image's true one."""
    noisy = load_dataset(DatasetConfig(name="digits", label_noise=0.4))
    rows = _rows(digits.train) + _rows(digits.val)
    labels = torch.cat([digits.train.y, digits.val.y]).tolist()
    true = dict(zip(rows, labels, strict=True))
    for index in (1, 2):
        split = noisy.resplit(index)
        assert [true[r] for r in _rows(split.val)] == split.val.y.tolist()
        truth = torch.tensor([true[r] for r in _rows(split.train)])
        wrong = (split.train.y != truth).float().mean().item()
        assert wrong == pytest.approx(0.4, abs=1 / len(split.train))
        assert split.train_true_y is not None and torch.equal(split.train_true_y, truth)
    assert torch.equal(noisy.resplit(1).train.y, noisy.resplit(1).train.y), "seeded"
