"""A user's data set by import path: `dataset.name: package.module:loader`.

The loader is imported from `sys.path`, then from `dataset.path` (the study file's folder by
default, stored in the study so every worker finds it), and called with `root=dataset.root`
when it takes a `root` parameter (or `**kwargs`) and `dataset.root` is set, else with no
arguments. It returns `(images, labels, class_names)` — a tuple, or a mapping with the keys
`images`, `labels`, `classes`:

- images: uint8, numpy or torch, N×H×W (grayscale), N×H×W×C or N×C×H×W with C 1 or 3. A
  4-dimensional array is channels-last when its last dimension is 1 or 3 and its second is
  not; when both are (e.g. 3×…×3), it is read as N×C×H×W.
- labels: N integers in 0..K-1 (numpy, torch or a sequence).
- class names: K strings, label i naming class i.

Whatever does not fit is a one-line `UserError` naming the loader. The images are not mirrored
by augmentation unless `dataset.flip: true`; the split is the usual stratified one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from search.config.schema import DatasetConfig
from search.core.errors import UserError, first_line
from search.data.images import Loaded

__all__ = ["load_user"]

_KEYS = ("images", "labels", "classes")
_CHANNELS = (1, 3)


def _takes_root(loader: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): call it bare
        return False
    return any(p.name == "root" or p.kind is p.VAR_KEYWORD for p in params)


def _call(loader: Callable[..., Any], cfg: DatasetConfig) -> Any:
    root = {"root": cfg.root.expanduser()} if cfg.root is not None and _takes_root(loader) else {}
    try:
        return loader(**root)
    except Exception as exc:
        raise UserError(
            f"dataset.name: loader {cfg.name!r} failed: {first_line(exc, typed=True)}"
        ) from None


def _parts(cfg: DatasetConfig, result: Any) -> tuple[Any, Any, Any]:
    if isinstance(result, Mapping):
        missing = [k for k in _KEYS if k not in result]
        if missing:
            raise _bad(cfg, f"returned a mapping without {', '.join(missing)}")
        return result["images"], result["labels"], result["classes"]
    if isinstance(result, tuple) and len(result) == 3:
        return result
    what = f"a {len(result)}-tuple" if isinstance(result, tuple) else type(result).__name__
    raise _bad(cfg, f"returned {what}; expected (images, labels, class_names)")


def _bad(cfg: DatasetConfig, what: str) -> UserError:
    return UserError(f"dataset.name: loader {cfg.name!r} {what}")


def _array(value: Any) -> np.ndarray | None:
    """`value` as a numpy array when it is one or a torch tensor (on any device), else None."""
    if isinstance(value, np.ndarray):
        return value
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return None


def _images(cfg: DatasetConfig, value: Any) -> np.ndarray:
    x = _array(value)
    if x is None:
        raise _bad(
            cfg, f"returned images as {type(value).__name__}; expected a numpy array or tensor"
        )
    if x.dtype != np.uint8:
        raise _bad(cfg, f"returned images of dtype {x.dtype}; expected uint8 (0..255)")
    shape = "×".join(str(d) for d in x.shape)
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in _CHANNELS:  # N×C×H×W, also when the last dimension could be C
            return x
        if x.shape[3] in _CHANNELS:
            return x.transpose(0, 3, 1, 2)
        raise _bad(
            cfg,
            f"returned images of shape {shape}; neither N×H×W×C nor N×C×H×W with C 1 or 3",
        )
    raise _bad(cfg, f"returned images of shape {shape}; expected N×H×W, N×H×W×C or N×C×H×W")


def _labels(cfg: DatasetConfig, value: Any, n: int) -> np.ndarray:
    y = _array(value)
    if y is None:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise _bad(cfg, f"returned labels as {type(value).__name__}; expected N integers")
        y = np.asarray(value)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (y.size == 0)):
        raise _bad(
            cfg,
            f"returned labels of dtype {y.dtype} and shape {y.shape}; expected N integers",
        )
    if len(y) != n:
        raise _bad(cfg, f"returned {len(y):,} labels for {n:,} images")
    return y.astype(np.int64)


def _classes(cfg: DatasetConfig, value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise _bad(cfg, f"returned class names as {type(value).__name__}; expected K strings")
    names = list(value)
    odd = next((v for v in names if not isinstance(v, str)), None)
    if odd is not None:
        raise _bad(cfg, f"returned a class name {odd!r} that is not a string")
    names = [str(v) for v in names]  # numpy's str_ is a str, but not one YAML or JSON writes
    twice = next((v for i, v in enumerate(names) if v in names[:i]), None)
    if twice is not None:
        raise _bad(cfg, f"returned the class name {twice!r} twice; each class needs its own")
    return tuple(names)


def load_user(cfg: DatasetConfig) -> Loaded:
    """The data set of the loader `cfg.name` names, checked (see the module's docstring)."""
    from search.core.imports import import_callable

    folders = [cfg.path.expanduser()] if cfg.path else []
    loader = import_callable(cfg.name, key="dataset.name", folders=folders)
    images, labels, classes = _parts(cfg, _call(loader, cfg))
    x = _images(cfg, images)
    y = _labels(cfg, labels, len(x))
    names = _classes(cfg, classes)
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise _bad(
            cfg,
            f"returned labels {y.min()}..{y.max()} for {len(names)} class names; labels must "
            f"lie in 0..{len(names) - 1}",
        )
    return Loaded(np.ascontiguousarray(x), y, names, 255.0, False)
