"""Batched augmentation: identity at strength 0, flip and cutout rates, per-sample randomness,
MixUp/CutMix soft targets, colour jitter for colour images only, outputs in [0, 1]."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from search.config.schema import Regularization
from search.training.augment import (
    AugmentPolicy,
    BatchTransform,
    affine_augment,
    affine_grid,
    colour_jitter,
    cutout,
)


def _asymmetric(n: int, c: int = 1, h: int = 8, w: int = 8) -> torch.Tensor:
    """`n` copies of one random image that differs from its mirror image."""
    torch.manual_seed(123)
    image = torch.rand(1, c, h, w)
    assert not torch.equal(image, image.flip(-1))
    return image.expand(n, c, h, w).contiguous()


def _transform(
    *, num_classes: int = 5, allow_flip: bool = True, colour: bool = False, **reg: float
) -> BatchTransform:
    return BatchTransform(
        Regularization(**reg), num_classes=num_classes, allow_flip=allow_flip, colour=colour
    )


def _matches(out: torch.Tensor, ref: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
    """Per sample: does `out[i]` equal `ref[i]` (within atol)?"""
    if atol == 0.0:
        return (out == ref).flatten(1).all(dim=1)
    return torch.isclose(out, ref, atol=atol, rtol=0.0).flatten(1).all(dim=1)


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize("allow_flip", [True, False])
@pytest.mark.parametrize("colour", [True, False])
def test_strength_zero_is_identity(allow_flip: bool, colour: bool) -> None:
    policy = AugmentPolicy.from_strength(0.0, allow_flip=allow_flip, colour=colour)
    assert policy == AugmentPolicy()
    assert policy.is_identity


def test_strength_scales_the_policy() -> None:
    half = AugmentPolicy.from_strength(0.5, allow_flip=True, colour=True)
    full = AugmentPolicy.from_strength(1.0, allow_flip=True, colour=True)
    assert not full.is_identity
    assert full.translate == pytest.approx(2 * half.translate) and full.translate > 0
    assert full.scale == pytest.approx(2 * half.scale) and full.scale > 0
    assert full.rotate == pytest.approx(2 * half.rotate) and full.rotate > 0
    assert full.jitter == pytest.approx(2 * half.jitter) and full.jitter > 0
    assert half.flip == full.flip == 0.5


@pytest.mark.parametrize("strength", [1e-6, 0.3, 1.0])
def test_no_flip_when_data_set_forbids_it(strength: float) -> None:
    policy = AugmentPolicy.from_strength(strength, allow_flip=False, colour=False)
    assert policy.flip == 0.0
    assert _transform(aug_strength=strength, allow_flip=False).policy.flip == 0.0


@pytest.mark.parametrize("strength", [1e-6, 1.0])
def test_colour_jitter_only_for_colour_data(strength: float) -> None:
    assert _transform(aug_strength=strength, colour=False).policy.jitter == 0.0
    assert _transform(aug_strength=strength, colour=True).policy.jitter > 0.0


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_unit_interval_is_rejected(strength: float) -> None:
    with pytest.raises(ValueError, match="aug_strength"):
        AugmentPolicy.from_strength(strength, allow_flip=True, colour=True)


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("shape", [(6, 1, 8, 8), (4, 3, 7, 5)])
def test_all_zero_regularization_returns_input_unchanged(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.rand(shape)
    y = torch.randint(0, 5, (shape[0],))
    x_in, y_in = x.clone(), y.clone()
    out_x, out_y = _transform(colour=shape[1] == 3)(x, y)
    assert torch.equal(out_x, x_in)
    assert torch.equal(out_y, y_in)
    assert out_y.dtype == torch.int64


def test_without_mixing_labels_stay_integer() -> None:
    torch.manual_seed(0)
    y = torch.randint(0, 5, (16,))
    _, out_y = _transform(aug_strength=1.0, cutout=0.3)(torch.rand(16, 1, 8, 8), y)
    assert torch.equal(out_y, y)


# --------------------------------------------------------------------------- flips


def test_flip_rate_is_one_half() -> None:
    torch.manual_seed(0)
    x = _asymmetric(4000)
    out = affine_augment(x, AugmentPolicy(flip=0.5))
    same, flipped = _matches(out, x), _matches(out, x.flip(-1))
    assert (same ^ flipped).all(), "every output is the image or its exact mirror"
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize(("c", "h", "w"), [(3, 7, 5), (1, 6, 10)])
def test_flip_is_a_horizontal_mirror_for_any_shape(c: int, h: int, w: int) -> None:
    torch.manual_seed(1)
    x = _asymmetric(400, c, h, w)
    out = affine_augment(x, AugmentPolicy(flip=0.5))
    same, flipped = _matches(out, x, 1e-5), _matches(out, x.flip(-1), 1e-5)
    assert (same ^ flipped).all()
    assert 0.4 < flipped.float().mean().item() < 0.6


def test_flip_probability_zero_never_flips() -> None:
    torch.manual_seed(0)
    x = _asymmetric(500)
    assert torch.equal(affine_augment(x, AugmentPolicy()), x)


def test_batch_transform_flips_half_the_samples_at_small_strength() -> None:
    torch.manual_seed(2)
    x = _asymmetric(2000)
    out, _ = _transform(aug_strength=1e-6)(x, torch.zeros(2000, dtype=torch.int64))
    same, flipped = _matches(out, x, 1e-3), _matches(out, x.flip(-1), 1e-3)
    assert (same ^ flipped).all()
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


def test_batch_transform_never_flips_when_not_allowed() -> None:
    torch.manual_seed(3)
    x = _asymmetric(1000)
    out, _ = _transform(aug_strength=1e-6, allow_flip=False)(x, torch.zeros(1000).long())
    assert _matches(out, x, 1e-3).all()
    assert not _matches(out, x.flip(-1), 1e-3).any()


# --------------------------------------------------------------------------- cutout


@pytest.mark.parametrize(("fraction", "side"), [(0.25, 4), (0.5, 8), (0.1, 2)])
def test_cutout_zeroes_one_clipped_square(fraction: float, side: int) -> None:
    torch.manual_seed(0)
    n, h, w = 3000, 16, 16
    x = torch.ones(n, 2, h, w)
    out = cutout(x, fraction)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    mask = out == 0
    assert torch.equal(mask[:, 0], mask[:, 1]), "one square for all channels"
    area = mask[:, 0].flatten(1).sum(dim=1)
    assert area.max().item() == side * side  # squares fully inside have exactly side² pixels
    assert (area >= 1).all()  # the centre is always inside the image
    assert (area <= side * side).all()
    # The zeroed region is a rectangle: its area is rows × cols of its bounding box.
    rows = mask[:, 0].any(dim=2).sum(dim=1)
    cols = mask[:, 0].any(dim=1).sum(dim=1)
    assert torch.equal(rows * cols, area)
    # Average masked share: at most the square's share (side rounds fraction × 16), less
    # by the clipping at the borders.
    mean_fraction = area.float().mean().item() / (h * w)
    full = (side / h) ** 2
    assert abs(full - fraction**2) <= 0.01
    assert 0.5 * full < mean_fraction <= full


def test_cutout_positions_differ_per_sample() -> None:
    torch.manual_seed(0)
    out = cutout(torch.ones(64, 1, 16, 16), 0.25)
    masks = {tuple(m.flatten().tolist()) for m in out == 0}
    assert len(masks) > 32


def test_cutout_through_batch_transform() -> None:
    torch.manual_seed(0)
    x = torch.ones(500, 1, 10, 10)
    out, _ = _transform(cutout=0.3)(x, torch.zeros(500).long())
    zeroed = (out == 0).flatten(1).float().mean(dim=1)
    assert (zeroed > 0).all()
    assert zeroed.max().item() == pytest.approx(0.09)
    assert 0.0 < zeroed.mean().item() <= 0.09


# --------------------------------------------------------------------------- per sample


@pytest.mark.parametrize("channels", [1, 3])
def test_identical_images_get_different_augmentations(channels: int) -> None:
    torch.manual_seed(0)
    x = _asymmetric(2, channels, 12, 12)
    out, _ = _transform(aug_strength=1.0, allow_flip=False, colour=channels == 3)(
        x, torch.zeros(2).long()
    )
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert not torch.allclose(out[0], x[0], atol=1e-4)


def test_colour_jitter_differs_per_sample_and_stays_in_range() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 6, 6).expand(8, 3, 6, 6).contiguous()
    out = colour_jitter(x, 0.4)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8


@pytest.mark.parametrize(("h", "w"), [(32, 32), (7, 9), (1, 5)])
def test_hand_written_grid_equals_torch_affine_grid(h: int, w: int) -> None:
    theta = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(h * w))
    expected = F.affine_grid(theta, [16, 3, h, w], align_corners=False)
    assert torch.allclose(affine_grid(theta, h, w), expected, atol=1e-6, rtol=0.0)


def test_colour_jitter_is_brightness_then_contrast_then_saturation() -> None:
    # The one-pass form must equal the three factors applied one after the other.
    x = torch.rand(32, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    out = colour_jitter(x.clone(), 0.4)
    torch.manual_seed(7)
    b, c, s = ((1.0 + (torch.rand(32) * 2.0 - 1.0) * 0.4).view(32, 1, 1, 1) for _ in range(3))
    ref = x * b
    ref = (ref - ref.mean(dim=(1, 2, 3), keepdim=True)) * c + ref.mean(dim=(1, 2, 3), keepdim=True)
    ref = (ref - ref.mean(dim=1, keepdim=True)) * s + ref.mean(dim=1, keepdim=True)
    assert torch.allclose(out, ref.clamp(0.0, 1.0), atol=1e-6, rtol=0.0)


def test_colour_jitter_leaves_its_input_alone() -> None:
    x = torch.rand(4, 3, 5, 5)
    before = x.clone()
    colour_jitter(x, 0.4)
    assert torch.equal(x, before)


# --------------------------------------------------------------------------- mixing


def _mix_lambda(x: torch.Tensor, y: torch.Tensor, out_y: torch.Tensor) -> float | None:
    """λ of one MixUp batch, read from the target mass of the samples' own labels (torchvision
    mixes each sample with its neighbour in `y.roll(1)`)."""
    differs = y != y.roll(1)
    if not differs.any():
        return None
    lam = out_y[differs, y[differs]]
    assert torch.allclose(lam, lam[0], atol=1e-6), "one λ per batch"
    return float(lam[0])


def test_mixup_soft_targets_and_lambda_distribution() -> None:
    torch.manual_seed(0)
    transform = _transform(mixup_alpha=1.0, num_classes=4)
    lambdas = []
    for _ in range(600):
        x = torch.rand(8, 1, 4, 4)
        y = torch.randint(0, 4, (8,))
        out_x, out_y = transform(x, y)
        assert out_y.shape == (8, 4)
        assert torch.allclose(out_y.sum(dim=1), torch.ones(8))
        assert (out_y >= 0).all()
        lam = _mix_lambda(x, y, out_y)
        if lam is None:
            continue
        # The images are mixed with the same λ as the targets.
        assert torch.allclose(out_x, lam * x + (1 - lam) * x.roll(1, dims=0), atol=1e-5)
        lambdas.append(lam)
    lam_t = torch.tensor(lambdas)
    assert len(lambdas) > 500
    assert abs(lam_t.mean().item() - 0.5) < 0.05  # Beta(1, 1) is uniform on [0, 1]
    assert lam_t.min().item() < 0.1 and lam_t.max().item() > 0.9
    assert abs((lam_t < 0.25).float().mean().item() - 0.25) < 0.07


def test_small_mixup_alpha_gives_lambda_near_the_ends() -> None:
    torch.manual_seed(0)
    transform = _transform(mixup_alpha=0.1, num_classes=3)
    lambdas = []
    for _ in range(300):
        x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
        lam = _mix_lambda(x, y, transform(x, y)[1])
        assert lam is not None
        lambdas.append(lam)
    near_ends = sum(lam < 0.1 or lam > 0.9 for lam in lambdas) / len(lambdas)
    assert near_ends > 0.6  # Beta(0.1, 0.1) puts most mass near 0 and 1


def test_cutmix_target_mass_matches_pasted_area() -> None:
    torch.manual_seed(0)
    transform = _transform(cutmix_alpha=1.0, num_classes=8)
    for _ in range(100):
        n = 8
        y = torch.arange(n)
        # Each image is constant, so the pixels it keeps can be counted after mixing.
        x = (torch.arange(n, dtype=torch.float32) / n).view(n, 1, 1, 1).expand(n, 1, 10, 10)
        out_x, out_y = transform(x.contiguous(), y)
        assert torch.allclose(out_y.sum(dim=1), torch.ones(n))
        own = (out_x == x).flatten(1).float().mean(dim=1)
        assert torch.allclose(out_y[y, y], own, atol=1e-6)
        other = (out_x == x.roll(1, dims=0)).flatten(1).float().mean(dim=1)
        assert torch.allclose(own + other, torch.ones(n))


@pytest.mark.parametrize(
    "reg",
    [
        {"mixup_alpha": 0.4},
        {"cutmix_alpha": 1.0},
        {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "aug_strength": 1.0, "cutout": 0.25},
    ],
)
def test_targets_are_distributions(reg: dict[str, float]) -> None:
    torch.manual_seed(0)
    transform = _transform(num_classes=6, colour=True, **reg)
    for _ in range(50):
        y = torch.randint(0, 6, (10,))
        _, out_y = transform(torch.rand(10, 3, 8, 8), y)
        assert out_y.shape == (10, 6)
        assert out_y.dtype.is_floating_point
        assert (out_y >= 0).all()
        assert torch.allclose(out_y.sum(dim=1), torch.ones(10), atol=1e-6)
        assert (out_y[torch.arange(10), y] > 0).all()


def test_both_mixers_are_used() -> None:
    torch.manual_seed(0)
    transform = _transform(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=2)
    x = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    y = torch.tensor([0, 1])
    kinds = set()
    for _ in range(60):
        out_x, _ = transform(x, y)
        strictly_between = ((out_x > 0) & (out_x < 1)).any().item()
        kinds.add("mixup" if strictly_between else "cutmix")
    assert kinds == {"mixup", "cutmix"}


# --------------------------------------------------------------------------- range


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_outputs_stay_in_unit_interval(channels: int, strength: float) -> None:
    torch.manual_seed(0)
    transform = _transform(
        aug_strength=strength,
        cutout=0.3,
        mixup_alpha=0.5,
        cutmix_alpha=0.5,
        colour=channels == 3,
    )
    for _ in range(20):
        x = torch.rand(32, channels, 12, 12)
        x[:4] = 1.0  # saturated images must not overshoot under brightness/contrast
        out_x, _ = transform(x, torch.randint(0, 5, (32,)))
        assert out_x.shape == x.shape
        assert torch.isfinite(out_x).all()
        assert out_x.min().item() >= 0.0
        assert out_x.max().item() <= 1.0 + 1e-6
