"""Running a model over images: uint8 batches to floats on the device (channels_last and bf16
autocast as configured), logits, and the metrics of a split (loss, accuracy, calibration)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from search.data.dataset import ImageSet

__all__ = [
    "ECE_BINS",
    "Evaluation",
    "autocast",
    "batch",
    "evaluate",
    "evaluate_full",
    "expected_calibration_error",
    "predict",
    "uses_channels_last",
]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for `bf16`, and for `auto` on CUDA; plain float32 otherwise."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_channels_last(device: torch.device, memory_format: str) -> bool:
    """Whether images and weights go channels_last: `auto` means on CUDA."""
    return memory_format == "channels_last" or (memory_format == "auto" and device.type == "cuda")


def _to_float(x: torch.Tensor, max_value: float, channels_last: bool) -> torch.Tensor:
    x = x.to(torch.float32, copy=True).div_(max_value)  # a copy even if x were float already
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def batch(
    images: ImageSet, idx: torch.Tensor, max_value: float, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images at `idx` as floats in [0, 1], and their labels. `index_select` makes the
    same copy as `x[idx]` without advanced indexing's overhead (0.29 → 0.06 ms for 256
    CIFAR-sized images on a CPU)."""
    x = _to_float(images.x.index_select(0, idx), max_value, channels_last)
    return x, images.y.index_select(0, idx)


ECE_BINS = 15


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE (Guo et al. 2017): the gap between confidence and accuracy, averaged over `bins`
    equal-width confidence bins weighted by their share of the images."""
    if confidence.numel() == 0:
        return math.nan
    confidence = confidence.float()
    which = (confidence * bins).long().clamp_(0, bins - 1)
    conf_sum = torch.bincount(which, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(which, weights=correct.float(), minlength=bins)
    return float((conf_sum - acc_sum).abs().sum().item() / confidence.numel())


@torch.no_grad()
def predict(
    model: nn.Module,
    images: ImageSet,
    *,
    max_value: float,
    batch_size: int = 1024,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> torch.Tensor:
    """The model's float32 logits for every image (eval mode), on the images' device."""
    was_training = model.training
    model.eval()
    device = images.x.device
    channels_last = uses_channels_last(device, memory_format)
    out = []
    for start in range(0, len(images), batch_size):
        x = _to_float(images.x[start : start + batch_size], max_value, channels_last)
        with autocast(device, precision):
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0, device=device)


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy (the NLL)
    accuracy: float
    ece: float  # expected calibration error, `ECE_BINS` bins
    correct: torch.Tensor  # bool per image: for paired comparisons of two models


def evaluate_full(
    model: nn.Module,
    images: ImageSet,
    *,
    max_value: float,
    batch_size: int = 1024,
    precision: str = "fp32",
    memory_format: str = "auto",
) -> Evaluation:
    """Loss, accuracy, calibration and per-image correctness of `model` on `images`."""
    logits = predict(
        model,
        images,
        max_value=max_value,
        batch_size=batch_size,
        precision=precision,
        memory_format=memory_format,
    )
    if len(images) == 0:
        return Evaluation(math.nan, math.nan, math.nan, torch.zeros(0, dtype=torch.bool))
    loss = F.cross_entropy(logits, images.y).item()
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    correct = predicted == images.y
    return Evaluation(
        loss=loss,
        accuracy=int(correct.sum().item()) / len(images),
        ece=expected_calibration_error(confidence, correct),
        correct=correct.cpu(),
    )


def evaluate(model: nn.Module, images: ImageSet, **options: Any) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` in eval mode on `images` (`options`: those
    of `evaluate_full`)."""
    full = evaluate_full(model, images, **options)
    return full.loss, full.accuracy
