"""Batched augmentation on the training device, random per sample.

One scalar, `aug_strength` in [0, 1], scales the whole geometric/photometric policy
(`AugmentPolicy.from_strength`, documented in docs/study-files.md); 0 is the identity.
Cutout, MixUp and CutMix have their own regularizer values. Everything works on a whole
(N, C, H, W) float batch in one pass: a per-image PIL pipeline would run these same
operations one image at a time on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from search.config.schema import Regularization

__all__ = [
    "AugmentPolicy",
    "BatchTransform",
    "affine_augment",
    "affine_grid",
    "colour_jitter",
    "cutout",
]


@dataclass(frozen=True)
class AugmentPolicy:
    """Ranges of the per-sample random operations; see `from_strength` for the mapping."""

    translate: float = 0.0  # max shift, fraction of the side
    scale: float = 0.0  # zoom factor drawn from [1 - scale, 1 + scale]
    rotate: float = 0.0  # max rotation, degrees
    flip: float = 0.0  # probability of a horizontal flip
    jitter: float = 0.0  # brightness/contrast/saturation factors drawn from [1 - j, 1 + j]

    @classmethod
    def from_strength(cls, strength: float, *, allow_flip: bool, colour: bool) -> AugmentPolicy:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"aug_strength must be in [0, 1], got {strength=}")
        s = strength
        return cls(
            translate=0.125 * s,
            scale=0.2 * s,
            rotate=15.0 * s,
            flip=0.5 if (allow_flip and s > 0) else 0.0,
            jitter=0.4 * s if colour else 0.0,
        )

    @property
    def is_identity(self) -> bool:
        return not (self.translate or self.scale or self.rotate or self.flip or self.jitter)


def _uniform(n: int, half_width: float, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, device=device) * 2.0 - 1.0) * half_width


def _centres(size: int, theta: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates of the pixel centres along one side (`align_corners=False`)."""
    return (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2.0 + 1.0) / size - 1.0


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`F.affine_grid(theta, (N, C, height, width), align_corners=False)`, written directly:
    F.affine_grid builds an (N, H, W, 3) base grid and multiplies it; two multiply-adds per
    coordinate take 40 % of its time on a CPU batch of 256 × 32 × 32."""
    xs, ys = _centres(width, theta).view(1, 1, width), _centres(height, theta).view(1, height, 1)
    t = theta.reshape(-1, 6, 1, 1).unbind(1)
    grid = theta.new_empty(theta.shape[0], height, width, 2)
    torch.add(t[0] * xs, t[1] * ys + t[2], out=grid[..., 0])
    torch.add(t[3] * xs, t[4] * ys + t[5], out=grid[..., 1])
    return grid


def affine_augment(x: torch.Tensor, policy: AugmentPolicy) -> torch.Tensor:
    """Translate, zoom, rotate and flip each image by its own random amounts, in one
    `grid_sample` call for the whole batch (bilinear, zero padding)."""
    n, device = x.shape[0], x.device
    angle = _uniform(n, math.radians(policy.rotate), device)
    zoom = 1.0 + _uniform(n, policy.scale, device)
    flip = torch.where(torch.rand(n, device=device) < policy.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
    # Output pixel p maps to input pixel R(angle) · diag(flip, 1) / zoom · p + shift.
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, :, 2] = _uniform(2 * n, 2.0 * policy.translate, device).view(n, 2)
    grid = affine_grid(theta, *x.shape[-2:])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def colour_jitter(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in [1 - amount, 1 + amount].

    Brightness b then contrast c around the image mean m is one affine map,
    (b·x - b·m)·c + b·m = b·c·x + b·m·(1 - c), so it takes one pass over the batch; saturation
    is then done in place: two full-size passes instead of six.
    """
    n, device = x.shape[0], x.device
    shape = (n, 1, 1, 1)
    b, c, s = ((1.0 + _uniform(n, amount, device)).view(shape) for _ in range(3))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.addcmul(b * mean * (1.0 - c), x, b * c)
    gray = x.mean(dim=1, keepdim=True)
    x.mul_(s).addcmul_(gray, 1.0 - s)
    return x.clamp_(0.0, 1.0)


def cutout(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero one square per image, side `fraction` of the image side, centred anywhere (the
    square is clipped at the border, as in DeVries & Taylor's Cutout)."""
    n, _, h, w = x.shape
    size_h, size_w = max(1, round(fraction * h)), max(1, round(fraction * w))
    cy = torch.randint(0, h, (n, 1), device=x.device)
    cx = torch.randint(0, w, (n, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    in_rows = (rows >= cy - size_h // 2) & (rows < cy - size_h // 2 + size_h)  # (n, h)
    in_cols = (cols >= cx - size_w // 2) & (cols < cx - size_w // 2 + size_w)  # (n, w)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


class BatchTransform:
    """The training-time transform of one trial: (float images, int labels) → (images, targets).

    Targets are int labels, or soft targets (N, K) when MixUp/CutMix are on; label smoothing
    is applied by the loss (`F.cross_entropy(..., label_smoothing=)` handles both kinds).
    """

    def __init__(
        self,
        regularization: Regularization,
        *,
        num_classes: int,
        allow_flip: bool,
        colour: bool,
    ) -> None:
        self.policy = AugmentPolicy.from_strength(
            regularization.aug_strength, allow_flip=allow_flip, colour=colour
        )
        self.cutout = regularization.cutout
        mixers: list[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = []
        if regularization.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=regularization.mixup_alpha, num_classes=num_classes))
        if regularization.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=regularization.cutmix_alpha, num_classes=num_classes))
        # Both on: each batch uses one of them, chosen with probability 1/2 (timm's switch).
        self.mixer = v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.policy.rotate or self.policy.translate or self.policy.scale or self.policy.flip:
            x = affine_augment(x, self.policy)
        if self.policy.jitter:
            x = colour_jitter(x, self.policy.jitter)
        if self.cutout > 0:
            x = cutout(x, self.cutout)
        if self.mixer is not None:
            x, y = self.mixer(x, y)
        return x, y
