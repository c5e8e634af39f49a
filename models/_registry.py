"""Name -> builder registry so the search service can pick architectures by string.

Hyperparameters are validated here, once, so every architecture gets the same
checks and error messages no matter which builder ends up running.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ._external import build_external, is_external

__all__ = ["create_model", "list_models", "register_model"]

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25

# Builders are called with keyword arguments only: num_classes, in_channels, dropout,
# drop_path, width, mean and std (tuples of floats of length in_channels), all validated.
_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DEFAULT_WIDTH: dict[str, int] = {}
_SIZED: set[str] = set()  # builders that shape themselves to ``image_size``


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    default_width: int,
    sized: bool = False,
    **fixed: Any,
) -> None:
    """Register ``builder`` (a model class or function) under ``name``, with the width it
    gets when ``create_model`` is given none and any architecture arguments (``depth=16``)
    fixed for that name. ``sized`` builders also receive ``image_size`` (the input side) and
    choose their depth from it. Duplicates are an error, not an override."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = functools.partial(builder, **fixed) if fixed else builder
    _DEFAULT_WIDTH[name] = default_width
    if sized:
        _SIZED.add(name)


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_MODELS)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stats(
    values: Sequence[float] | None, default: float, name: str, in_channels: int
) -> tuple[float, ...]:
    if values is None:
        return (default,) * in_channels
    out = tuple(float(v) for v in values)
    if len(out) != in_channels:
        raise ValueError(f"len({name}) must equal in_channels={in_channels}, got {name}={values!r}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {name}={values!r}")
    return out


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    dropout: float = 0.0,
    drop_path: float = 0.0,
    width: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    path: str | None = None,
) -> nn.Module:
    """Build a registered model that maps float images in [0, 1], (N, C, H, W), to logits.

    ``dropout`` is applied right before the classifier, ``drop_path`` is the
    stochastic-depth rate of the last residual block (earlier blocks get a
    linearly smaller rate), ``width`` scales the channel counts (``None`` uses
    the architecture's default), and ``mean``/``std`` are the per-channel input
    normalization baked into the model (default 0.5 / 0.25). ``image_size`` is the side of
    the (square) training images: size-aware models such as ``small-cnn`` add stages for larger
    images so their receptive field covers the input (default 8); the others ignore it.

    ``name`` may also be ``timm/<name>``, ``torchvision/<name>`` or a factory
    ``package.module:callable`` (imported from ``sys.path``, then from the folder ``path``):
    the same contract, with ``kwargs`` passed to that builder as they are (`_external`).
    """
    external = is_external(name)
    if not external and name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if kwargs and not external:
        raise ValueError(
            f"model.kwargs applies to timm/, torchvision/ and factory models, not {name!r}"
        )
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes=}")
    if not _is_int(in_channels) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels=}")
    if not 0.0 <= dropout < 1.0:  # also rejects NaN
        raise ValueError(f"dropout must be in [0, 1), got {dropout=}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {drop_path=}")
    if width is not None and (not _is_int(width) or width < 1):
        raise ValueError(f"width must be None or an int >= 1, got {width=}")
    if image_size is not None and (not _is_int(image_size) or image_size < 1):
        raise ValueError(f"image_size must be None or an int >= 1, got {image_size=}")
    # An outside network's statistics may be its weights' own (3 values for grey images).
    channels = len(mean) if external and mean is not None else in_channels
    mean_t = _stats(mean, DEFAULT_MEAN, "mean", channels)
    std_t = _stats(std, DEFAULT_STD, "std", len(mean_t))
    if not all(s > 0 for s in std_t):
        raise ValueError(f"std must be > 0 for every channel, got {std=}")
    if external:
        return build_external(
            name,
            num_classes=num_classes,
            in_channels=in_channels,
            dropout=float(dropout),
            drop_path=float(drop_path),
            width=width,
            mean=mean_t,
            std=std_t,
            image_size=image_size,
            kwargs=kwargs,
            path=path,
        )
    sized = {"image_size": image_size} if name in _SIZED and image_size is not None else {}
    return _MODELS[name](
        **sized,
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=float(dropout),
        drop_path=float(drop_path),
        width=_DEFAULT_WIDTH[name] if width is None else width,
        mean=mean_t,
        std=std_t,
    )
