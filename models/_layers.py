"""Building blocks shared by all architectures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import stochastic_depth

__all__ = [
    "BasicBlock",
    "DropPath",
    "Dropout",
    "Normalize",
    "conv3x3",
    "drop_path_rates",
    "init_weights",
]


class _Rate(nn.Module):
    """A drop rate held twice: as a float for eager mode, and as a non-persistent 0-d buffer
    that `torch.compile` reads as a graph input. A float attribute would be specialised (a
    guard on its value), so each trial's sampled rate would recompile the model, and after
    dynamo's recompile limit (8) later trials would silently run uncompiled. The buffer is
    not in `state_dict`: checkpoints are the same as with torch's own modules."""

    rate: Tensor

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop rate must be in [0, 1], got {p}")
        self.p = float(p)
        self.register_buffer("rate", torch.tensor(self.p), persistent=False)

    def _keep(self, shape: Sequence[int], x: Tensor) -> Tensor:
        """Inverted-dropout mask of `shape`: 0 where dropped, 1 / (1 - p) where kept."""
        keep = 1.0 - self.rate.to(x.dtype)
        noise = torch.rand(shape, device=x.device, dtype=x.dtype) < keep
        return noise.to(x.dtype) / keep.clamp_min(1e-6)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout(_Rate):
    """`nn.Dropout` (same eager path and RNG use) whose rate does not recompile a compiled
    model."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if torch.compiler.is_compiling():
            return x * self._keep(x.shape, x)
        return F.dropout(x, self.p, True)


class DropPath(_Rate):
    """Stochastic depth per sample (torchvision's `StochasticDepth(p, "row")` in eager mode):
    a residual branch is dropped for a whole image. Its rate does not recompile a compiled
    model."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if torch.compiler.is_compiling():
            return x * self._keep([x.shape[0]] + [1] * (x.ndim - 1), x)
        return stochastic_depth(x, self.p, "row", True)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer of every model.

    Baking normalization into the model means callers (training loop, export,
    serving) only ever feed raw [0, 1] images. The statistics are persistent
    buffers so they travel with ``state_dict`` and follow ``.to(device)``.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(
                f"mean and std must be non-empty and equally long, got {mean=}, {std=}"
            )
        if not all(s > 0 for s in std):
            raise ValueError(f"std must be > 0 for every channel, got {std=}")
        shape = (1, len(mean), 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
        std_t = torch.tensor(std, dtype=torch.float32).view(shape)
        self.register_buffer("mean", mean_t, persistent=True)
        self.register_buffer("std", std_t, persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        # Static shape check (fine under torch.export): without it a 1-channel
        # input would silently broadcast against 3-channel statistics.
        if x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected {self.mean.shape[1]} input channels, got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def drop_path_rates(drop_path: float, n_blocks: int) -> list[float]:
    """Linear stochastic-depth schedule: block ``i`` gets ``drop_path * i / (n_blocks - 1)``.

    Early blocks compute low-level features every later block depends on, so
    they are dropped least (the first block never); the last gets ``drop_path``.
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks=}")
    if n_blocks == 1:
        return [drop_path]
    return [drop_path * i / (n_blocks - 1) for i in range(n_blocks)]


def init_weights(model: nn.Module) -> None:
    """He init for convs (ReLU/GELU nets), unit BN scale, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 'same' conv without bias: every one is followed by BatchNorm, which has its own shift."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation ResNet basic block with stochastic depth on the residual branch.

    The branch is dropped per sample (``mode="row"``) so the shortcut alone
    carries the signal for those samples; in eval mode it is always kept.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            conv3x3(in_ch, out_ch, stride),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            conv3x3(out_ch, out_ch),
            nn.BatchNorm2d(out_ch),
        )
        self.drop_path = DropPath(drop_path)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.shortcut(x) + self.drop_path(self.branch(x)))
