"""Start from pretrained weights on disk: safetensors or a PyTorch state dict, as timm and
torchvision save them.

The file is matched to the network by parameter name. A tensor whose shape differs is
adapted where that is sound (a 3-channel first convolution summed for grey images, as timm's
``adapt_input_conv`` does) and otherwise left at its fresh initialisation — a classifier head
for another number of classes — and reported in one line. A file that fits few of the
network's tensors, or lacks more than a few of them, is refused: it is weights for another
architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["WeightsReport", "load_weights", "read_weights"]

# Where the weights sit in checkpoints that hold more than a state dict.
_CONTAINERS = ("state_dict", "model", "model_state_dict", "module", "net")
_MIN_SHARE = 0.5  # of the network's tensors the file must fit
# Tensors of the network the file may lack (left at their initialisation): a classifier head
# named otherwise, a few extra layers; more is another architecture (resnet18's weights lack
# 98 of resnet34's 218 tensors).
_MAX_ABSENT, _MAX_ABSENT_SHARE = 4, 0.05


@dataclass(frozen=True)
class WeightsReport:
    loaded: int  # tensors taken from the file
    total: int  # tensors of the network
    reinitialised: tuple[str, ...]  # names left fresh: shapes differ (a new head)
    adapted: tuple[str, ...]  # names adapted (RGB first convolution for grey images)
    unused: int  # tensors of the file the network has no place for
    absent: tuple[str, ...] = ()  # names the file lacks, left at their initialisation

    def line(self, path: str | Path) -> str:
        """One line for the console and MLflow."""
        parts = [f"weights {path}: {self.loaded} of {self.total} tensors loaded"]
        if self.adapted:
            parts.append(f"{', '.join(self.adapted)} summed over RGB for grey images")
        if self.reinitialised:
            parts.append(f"{', '.join(self.reinitialised)} re-initialised (shape differs)")
        if self.absent:
            parts.append(f"{', '.join(self.absent)} not in the file (initialised fresh)")
        if self.unused:
            parts.append(f"{self.unused} tensors of the file unused")
        return "; ".join(parts)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `path` (safetensors, or a `torch.save` file read with
    ``weights_only``: no code from the file runs). `ValueError` with one line when unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"model.weights: no file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ValueError(f"model.weights: cannot read {path} ({first})") from None
    for key in _CONTAINERS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"model.weights: {path} holds no state dict of tensors")
    prefix = "module."  # saved from DataParallel / DistributedDataParallel
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_weights(
    net: nn.Module, path: str | Path, *, state: Mapping[str, torch.Tensor] | None = None
) -> WeightsReport:
    """Load the weights file `path` (or its already read `state`) into `net` in place."""
    source = dict(state) if state is not None else read_weights(path)
    own = net.state_dict()
    take: dict[str, torch.Tensor] = {}
    reinit: list[str] = []
    adapted: list[str] = []
    for name, mine in own.items():
        theirs = source.get(name)
        if theirs is None:
            continue
        if theirs.shape == mine.shape:
            take[name] = theirs
        elif (
            theirs.dim() == 4
            and mine.dim() == 4
            and theirs.shape[1] == 3
            and mine.shape[1] == 1
            and theirs.shape[0] == mine.shape[0]
            and theirs.shape[2:] == mine.shape[2:]
        ):
            take[name] = theirs.sum(dim=1, keepdim=True)
            adapted.append(name)
        else:
            reinit.append(name)
    counted = [k for k in own if not k.endswith("num_batches_tracked")]
    fitted = [k for k in counted if k in take]
    absent = [k for k in counted if k not in source]
    if len(fitted) < _MIN_SHARE * len(counted) or len(absent) > max(
        _MAX_ABSENT, _MAX_ABSENT_SHARE * len(counted)
    ):
        missing = next((k for k in counted if k not in take), "")
        raise ValueError(
            f"model.weights: {path} fits {len(fitted)} of the network's {len(counted)} tensors "
            f"and lacks {len(absent)} (first missing: {missing}); are they weights for this "
            "architecture?"
        )
    net.load_state_dict({**own, **take})
    unused = len(set(source) - set(own))
    return WeightsReport(len(take), len(own), tuple(reinit), tuple(adapted), unused, tuple(absent))
