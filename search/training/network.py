"""The study's network: built for each trial (`build_model`) and checked once at launch
(`check_network`), whether it is a built-in, a timm or torchvision model or the user's own.

At launch, before any trial: the network is built (a factory that cannot be imported, an
unknown name or a weights file for another architecture stops here with one line, in the
launch and in every worker); a model-side regularizer (`dropout`, `drop_path`) the network
cannot take is left out of the search space and the baseline recipe, with one printed line,
rather than searched while it does nothing; and an outside network is exported once with
`torch.export`, untrained, so that a network whose champion could not be registered stops
the launch instead of the end of an hour's study.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from models import (
    MODEL_SIDE,
    External,
    create_model,
    is_external,
    load_weights,
    pretrained_stats,
)
from models import read_weights as _read_weights
from models import supported as _supported
from search.config.space import space_of
from search.core.errors import UserError, first_line
from search.training.auto import AUTO, AutoChoice, model_for

if TYPE_CHECKING:
    from search.config.schema import StudyConfig, TrialConfig
    from search.data.dataset import Dataset

__all__ = [
    "LEFT_OUT_ATTR",
    "build_model",
    "check_network",
    "describe_input",
    "input_contract",
    "model_kwargs",
]

# Study user attribute: {regularizer: why it is not searched} for the network of the study.
LEFT_OUT_ATTR = "left_out"


@functools.lru_cache(maxsize=2)
def _weights(path: str, mtime_ns: int) -> dict[str, torch.Tensor]:
    """A weights file read once per process (every trial of a worker starts from it)."""
    return _read_weights(path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return _weights(str(path), os.stat(path).st_mtime_ns)
    except (OSError, ValueError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else f"model.weights: no file {path}"
        raise UserError(message) from None


def _stats(cfg: TrialConfig, data: Dataset) -> tuple[list[float], list[float]]:
    """The model's input normalisation: `model.mean/std`, else the pretrained weights' own
    where known, else the training images' statistics."""
    m = cfg.model
    if m.mean is not None and m.std is not None:
        return list(m.mean), list(m.std)
    if m.weights is not None and is_external(m.name):
        published = pretrained_stats(m.name)
        if published is not None:
            return published
    return data.mean_std()


def model_kwargs(cfg: TrialConfig, data: Dataset) -> dict[str, Any]:
    """The `create_model` arguments of the trial's network (JSON-safe: they are stored with
    its checkpoint to rebuild it)."""
    mean, std = _stats(cfg, data)
    name, width = cfg.model.name, cfg.model.width
    if name == AUTO:
        name, auto_width, _ = model_for(data.shape, len(data.train))
        width = width if width is not None else auto_width
    kwargs: dict[str, Any] = {
        "name": name,
        "num_classes": data.num_classes,
        "in_channels": data.shape[0],
        "dropout": cfg.regularization.dropout,
        "drop_path": cfg.regularization.drop_path,
        "width": width,
        "mean": mean,
        "std": std,
        "image_size": max(data.shape[1:]),
    }
    if cfg.model.kwargs:
        kwargs["kwargs"] = dict(cfg.model.kwargs)
    if cfg.model.path is not None:
        kwargs["path"] = str(cfg.model.path)
    return kwargs


def _build_error(name: str, exc: Exception) -> UserError:
    """One line for a network that cannot be built; our own checks name their key already."""
    line = first_line(exc)
    if isinstance(exc, ValueError) and line.startswith("model."):
        return UserError(line)
    return UserError(f"model.name: cannot build {name}: {line}")


def _create(kwargs: dict[str, Any]) -> nn.Module:
    try:
        return create_model(**kwargs)
    except Exception as exc:  # a builder's own error: TypeError, ValueError, RuntimeError…
        raise _build_error(kwargs["name"], exc) from None


def build_model(cfg: TrialConfig, data: Dataset) -> tuple[nn.Module, dict[str, Any]]:
    """The trial's network for `data`, started from `model.weights` when given, and the
    `create_model` arguments that rebuild it (without the weights: a checkpoint has its own)."""
    kwargs = model_kwargs(cfg, data)
    # Not `_create`: a trial's failure (out of memory for a sampled width) keeps its own kind;
    # what a user can fix was found out at launch (`check_network`).
    model = create_model(**kwargs)
    materialize(model, data)
    if cfg.model.weights is not None:
        _load(model, cfg.model.weights)
    return model, kwargs


def materialize(model: nn.Module, data: Dataset) -> None:
    """Give lazy layers (`nn.LazyLinear`, …) their shapes with one forward pass on two of the
    data's images, before weights are loaded and the optimizer takes the parameters."""
    from torch.nn.modules.lazy import LazyModuleMixin

    lazy = (m for m in model.modules() if isinstance(m, LazyModuleMixin))
    if any(m.has_uninitialized_params() for m in lazy):
        training = model.training
        model.eval()
        with torch.no_grad():
            model(_example(data))
        model.train(training)


def _load(model: nn.Module, path: Path) -> str:
    target = model.net if isinstance(model, External) else model  # the weights are the net's
    try:
        report = load_weights(target, path, state=read_weights(path))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return report.line(path)


@dataclass(frozen=True)
class _Left:
    name: str
    why: str


def _left_out(config: StudyConfig, data: Dataset) -> list[_Left]:
    """The model-side regularizers the study's network cannot take but the space or the
    baseline recipe sets."""
    name = config.model.name
    if not is_external(name):
        return []  # every built-in takes dropout and drop_path
    try:
        takes = _supported(
            name,
            num_classes=data.num_classes,
            in_channels=data.shape[0],
            folders=[config.model.path] if config.model.path else [],
        )
    except Exception as exc:
        raise _build_error(name, exc) from None
    left = []
    values = {entry.name: entry.value for entry in space_of(config).entries}
    for reg in MODEL_SIDE:
        if reg in takes:
            continue
        in_baseline = bool((config.baseline or {}).get(reg))
        if values.get(reg, 0.0) != 0.0 or in_baseline:
            left.append(_Left(reg, f"{name} takes no {reg}"))
    return left


def _without(config: StudyConfig, left: list[_Left]) -> StudyConfig:
    names = {item.name for item in left}
    space = {k: (0.0 if str(k).split(".")[-1] in names else v) for k, v in config.space.items()}
    baseline = (
        None
        if config.baseline is None
        else {k: v for k, v in config.baseline.items() if k not in names}
    )
    return config.model_copy(update={"space": space, "baseline": baseline})


def _example(data: Dataset) -> torch.Tensor:
    return data.val.x[:2].float().div(data.max_value).cpu()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    sink = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logging.disable(previous)


def _forward_check(model: nn.Module, data: Dataset, name: str) -> None:
    """Run the untrained network on two of the data's images as a trial will (training mode,
    then evaluation mode): a network that does not fit the images, or does not return one
    logit per class, stops the launch here rather than failing every trial."""
    example = _example(data)
    wanted = (len(example), data.num_classes)
    for mode in ("training", "evaluation"):
        model.train(mode == "training")
        try:
            with torch.no_grad():
                out = model(example)
        except Exception as exc:
            raise UserError(
                f"model.name: {name} fails on this data's {tuple(example.shape[1:])} images "
                f"in {mode} mode: {first_line(exc)}"
            ) from None
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if got != wanted:
            raise UserError(
                f"model.name: {name} returns {got} for {len(example)} images in {mode} mode; "
                f"expected logits of shape {wanted} ({data.num_classes} classes)"
            )
    model.eval()


def _export_check(model: nn.Module, data: Dataset, name: str) -> None:
    """Export the untrained network as the champion will be (torch.export, a dynamic batch):
    a network that cannot be exported stops the launch here."""
    from torch.export import Dim, export

    model.eval()
    example = _example(data)
    try:
        with _quiet():  # a failed trace prints its graph and warnings: the one line says it
            export(model, (example,), dynamic_shapes=({0: Dim.AUTO},))
    except Exception as exc:
        raise UserError(
            f"model.name: {name} cannot be exported with torch.export, so its champion could "
            f"not be registered ({first_line(exc, limit=300)}); set tracking.register_model: "
            "false to search without a registered champion"
        ) from None


def check_network(choice: AutoChoice, data: Dataset, *, export: bool = True) -> AutoChoice:
    """`choice` with the model-side regularizers the network cannot take left out (a note
    each), after building the network once (and, for an outside network with
    `export`, exporting it untrained)."""
    config = choice.config
    notes = list(choice.notes)
    left = _left_out(config, data)
    if left:
        config = _without(config, left)
        for item in left:
            notes.append(f"{item.name} left out of the search space and the baseline ({item.why})")
    space = space_of(config)
    cfg = space.resolve(space.fixed_values())
    kwargs = model_kwargs(cfg, data)
    model = _create(kwargs)
    name = kwargs["name"]
    # Every network, built in ones too (airbench's three poolings leave nothing of a 6 px
    # image): two images, before any trial; lazy layers get their shapes here.
    _forward_check(model, data, name)
    if is_external(name):
        params = sum(p.numel() for p in model.parameters())
        notes.append(f"model {name}: {params / 1e6:.2f}M parameters")
    if config.model.weights is not None:
        notes.append(_load(model, config.model.weights))
    if is_external(name) and export and config.tracking.register_model:
        _export_check(model, data, name)
    return AutoChoice(config, tuple(notes), tuple((item.name, item.why) for item in left))


def input_contract(data: Dataset) -> dict[str, Any]:
    """What the champion takes and returns (stored in the study, shown by `run` and `best`)."""
    return {
        "shape": list(data.shape),
        "dtype": "float32",
        "range": [0.0, 1.0],
        "classes": data.num_classes,
    }


def describe_input(contract: dict[str, Any]) -> str:
    """`contract` in one line."""
    c, h, w = contract["shape"]
    return (
        f"input: {contract['dtype']} images in [0, 1], shape (N, {c}, {h}, {w}); "
        f"returns {contract['classes']} logits"
    )
