"""Networks from outside the registry: ``timm/<name>``, ``torchvision/<name>`` and a user
factory ``package.module:callable``, each behind the same keyword contract as the built-ins.

Every outside network is wrapped in `External`: the input normalisation goes in front (so the
model still takes float images in [0, 1] and exports whole), and grey images are repeated to
the three channels a torchvision network expects. The model-side regularizers reach the
network through its builder, under the name it takes (`MODEL_SIDE`); one it does not take
shows up in `supported`, and the search leaves it out rather than search a knob that does
nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ._imports import import_callable
from ._layers import Normalize

__all__ = [
    "MODEL_SIDE",
    "TIMM",
    "TORCHVISION",
    "External",
    "build_external",
    "check_name",
    "is_external",
    "kind_of",
    "pretrained_stats",
    "supported",
]

TIMM, TORCHVISION = "timm/", "torchvision/"
# The contract names of the model-side regularizers, and what each kind of builder calls them
# (the first name its network class takes wins: DenseNet's dropout is `drop_rate`).
MODEL_SIDE = ("dropout", "drop_path")
_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "timm": {"dropout": ("drop_rate",), "drop_path": ("drop_path_rate",)},
    "torchvision": {"dropout": ("dropout", "drop_rate"), "drop_path": ("stochastic_depth_prob",)},
    "factory": {"dropout": ("dropout",), "drop_path": ("drop_path",)},
}
# The side of the input, for networks built for one size (ViTs).
_SIZE_NAMES = ("img_size", "image_size")


def kind_of(name: str) -> str:
    """`timm`, `torchvision`, `factory` or `builtin`."""
    if name.startswith(TIMM):
        return "timm"
    if name.startswith(TORCHVISION):
        return "torchvision"
    if ":" in name:
        return "factory"
    return "builtin"


def is_external(name: str) -> bool:
    return kind_of(name) != "builtin"


class External(nn.Module):
    """An outside network with the normalisation in front: float images in [0, 1], shape
    (N, C, H, W), in; logits out. `expand` repeats a grey channel for a 3-channel network."""

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        expand: int = 0,
    ) -> None:
        super().__init__()
        self.expand = int(expand)
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        if self.expand:
            x = x.expand(-1, self.expand, -1, -1)
        out = self.net(self.normalize(x))
        if not isinstance(out, Tensor):
            # torchvision's GoogLeNet and Inception v3 return their auxiliary classifiers'
            # logits beside the main ones in training mode: the main logits are the output.
            logits = getattr(out, "logits", None)
            if not isinstance(logits, Tensor):
                raise TypeError(f"the network returned {type(out).__name__}, not logits")
            out = logits
        return out


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ValueError("timm is not installed: pip install 'regsearch[timm]'") from None
    return timm


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    try:
        return tvm.get_model_builder(name)
    except ValueError:
        import difflib

        near = difflib.get_close_matches(name, tvm.list_models(module=tvm), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"unknown torchvision classification model {name!r}{hint}") from None


def check_name(name: str, *, folders: Sequence[Path] = ()) -> None:
    """A `ValueError` (one line) when an outside `name` cannot be built here: timm missing, an
    unknown timm or torchvision name; a factory is imported (`search.core.imports` errors)."""
    kind = kind_of(name)
    if kind == "timm":
        timm = _timm()
        arch = name.removeprefix(TIMM)
        if not timm.is_model(arch):
            import difflib

            near = difflib.get_close_matches(arch, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"unknown timm model {arch!r}{hint}")
    elif kind == "torchvision":
        _torchvision_builder(name.removeprefix(TORCHVISION))


def _takes(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """(the named keyword parameters of `fn`, whether it takes **kwargs)."""
    params = inspect.signature(fn).parameters.values()
    named = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


# Per outside name: the network class's named parameters (found by building it once), so a
# trial builds its network once with exactly the arguments it takes.
_CLASS_PARAMS: dict[str, set[str]] = {}


def _factory(name: str, folders: Sequence[Path]) -> Callable[..., nn.Module]:
    return import_callable(name, key="model.name", folders=folders)


def _class_params(name: str, build: Callable[..., nn.Module], base: dict[str, Any]) -> set[str]:
    if name not in _CLASS_PARAMS:
        net = build(**base)
        named, _ = _takes(type(net).__init__)
        _CLASS_PARAMS[name] = named
    return _CLASS_PARAMS[name]


def _builder(
    name: str, *, num_classes: int, in_channels: int, folders: Sequence[Path]
) -> tuple[Callable[..., nn.Module], dict[str, Any], set[str], int]:
    """(builder, its fixed arguments, the parameter names its network takes, the channels the
    network reads)."""
    kind = kind_of(name)
    base: dict[str, Any]
    if kind == "timm":
        check_name(name)
        timm = _timm()
        arch = name.removeprefix(TIMM)

        def build(**kw: Any) -> nn.Module:
            return timm.create_model(arch, pretrained=False, **kw)

        base = {"num_classes": num_classes, "in_chans": in_channels}
        return build, base, _class_params(name, build, base), in_channels
    if kind == "torchvision":
        builder = _torchvision_builder(name.removeprefix(TORCHVISION))
        base = {"weights": None, "num_classes": num_classes}
        return builder, base, _class_params(name, builder, base), 3
    factory = _factory(name, folders)
    named, var_kw = _takes(factory)
    contract = {"num_classes", "in_channels", "image_size", "width", *MODEL_SIDE}
    takes = contract if var_kw else named
    return factory, {"num_classes": num_classes}, takes, in_channels


def supported(
    name: str, *, num_classes: int, in_channels: int, folders: Sequence[Path] = ()
) -> set[str]:
    """The model-side regularizers (`dropout`, `drop_path`) the network of `name` takes."""
    _, _, takes, _ = _builder(
        name, num_classes=num_classes, in_channels=in_channels, folders=folders
    )
    kind = kind_of(name)
    return {reg for reg in MODEL_SIDE if any(n in takes for n in _NAMES[kind][reg])}


def pretrained_stats(name: str) -> tuple[list[float], list[float]] | None:
    """The input mean/std of the published weights of `name` (timm's pretrained config,
    torchvision's weights transforms), or None where unknown (a user factory)."""
    kind = kind_of(name)
    if kind == "timm":
        timm = _timm()
        cfg = timm.models.get_pretrained_cfg(name.removeprefix(TIMM))
        if cfg is None or cfg.mean is None or cfg.std is None:
            return None
        return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
    if kind == "torchvision":
        import torchvision.models as tvm

        try:
            weights = tvm.get_model_weights(name.removeprefix(TORCHVISION))
        except (ValueError, KeyError):
            return None
        transforms = weights.DEFAULT.transforms()
        return [float(v) for v in transforms.mean], [float(v) for v in transforms.std]
    return None


def build_external(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    dropout: float,
    drop_path: float,
    width: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | None,
    kwargs: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
) -> External:
    """The outside network of `name`, wrapped with its normalisation. A model-side regularizer
    the network does not take must be 0 (the search leaves it out); `kwargs` go to the builder
    as they are (`model.kwargs`); `path` is where a factory's module may be imported from."""
    folders = [Path(path)] if path else []
    kind = kind_of(name)
    build, args, takes, net_channels = _builder(
        name, num_classes=num_classes, in_channels=in_channels, folders=folders
    )
    extra = dict(kwargs or {})
    for reg, value in (("dropout", dropout), ("drop_path", drop_path)):
        key = next((n for n in _NAMES[kind][reg] if n in takes), None)
        if key is None:
            if value:
                raise ValueError(f"{name} takes no {reg} (got {reg}={value})")
            continue
        args[key] = float(value)
    if kind == "factory":
        contract: dict[str, int | None] = {
            "in_channels": in_channels,
            "image_size": image_size,
            "width": width,
        }
        args.update({k: v for k, v in contract.items() if k in takes and v is not None})
    elif width is not None:
        raise ValueError(f"model.width applies to built-in models and factories, not {name}")
    elif image_size is not None:
        size_key = next((n for n in _SIZE_NAMES if n in takes), None)
        if size_key is not None and size_key not in extra:
            args[size_key] = image_size  # a ViT is built for one input side
    if in_channels not in (net_channels, 1):
        raise ValueError(f"{name} reads {net_channels}-channel images, got {in_channels}")
    clash = sorted(set(extra) & set(args))
    if clash:
        raise ValueError(f"model.kwargs: {', '.join(clash)} is set by regsearch; leave it out")
    net = build(**args, **extra)
    if not isinstance(net, nn.Module):
        raise ValueError(f"{name} returned a {type(net).__name__}, not a torch nn.Module")
    expand = net_channels if in_channels != net_channels else 0
    return External(
        net,
        mean=_fit(mean, net_channels, "mean"),
        std=_fit(std, net_channels, "std"),
        expand=expand,
    )


def _fit(stats: Sequence[float], channels: int, what: str) -> list[float]:
    """Per-channel statistics for a network reading `channels` channels: a grey image's one
    value repeated for an RGB network, RGB weights' values averaged for a grey one (as timm
    adapts a pretrained first convolution)."""
    values = [float(v) for v in stats]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        return [sum(values) / len(values)]
    raise ValueError(f"{what} has {len(values)} values; the network reads {channels} channels")
