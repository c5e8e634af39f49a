"""The study file: typed, validated, with defaults, YAML loading and `--set` overrides.

A study file states only what differs from `DEFAULTS`; nested mappings are merged key by key
(so `space: {dropout: 0.1}` fixes dropout and keeps the rest of the default space). Every
mistake becomes a `UserError` whose one line names the key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from search.errors import UserError, first_line

__all__ = [
    "DEFAULTS",
    "ConfirmConfig",
    "DatasetConfig",
    "EarlyStoppingConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "PrunerConfig",
    "Regularization",
    "SamplerConfig",
    "SearchConfig",
    "StudyConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrialConfig",
    "apply_overrides",
    "deep_merge",
    "flatten",
    "parse_config",
    "safe_study_name",
]


def _auto_or_positive_int(value: Any) -> Any:
    """`auto` or an integer >= 1 (not a bool, not 2.5): one message for every such key."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected auto or an integer >= 1, got {value!r}")
    return value


def _off_is_none(value: Any) -> Any:
    """`none`, `off` or `false` in a study file turns a section off (None)."""
    return None if value is None or str(value).lower() in ("none", "off", "false") else value


# Integers are integers: YAML's `true` is not 1 and 2.5 is not 2.
Int = Annotated[int, Strict()]


class _Section(BaseModel):
    # No NaN or infinity in any float key: `warmup_epochs: .inf` would fail every trial.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetConfig(_Section):
    name: Literal[
        "digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder"
    ] = "digits"
    # The folder holding the files of cifar10, cifar100, mnist, fashion-mnist (torchvision's
    # layout: <root>/cifar-10-batches-py, <root>/MNIST/raw, ...) or imagefolder (one sub-folder
    # of images per class). Required for those; unused by digits and synthetic.
    root: Path | None = None
    # Fetch a missing torchvision data set into `root` (needs network access); off by default.
    download: bool = False
    # Data sets with an official test split (cifar10, cifar100, mnist, fashion-mnist) keep it as
    # the test split: `test_fraction` is then unused and `val_fraction` is the share of the
    # official training images held out for validation.
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: Int = 0
    # Train on this share of the training split: a stratified subset (at least one image a
    # class), seeded by `split_seed`, each smaller fraction inside every larger one. The
    # validation and test splits stay the same, so studies at other fractions compare.
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # `synthetic` only: a learnable set of any shape, for tests and benchmarks.
    num_samples: Int = Field(2000, ge=20)
    num_classes: Int = Field(10, ge=2)
    # Channels of the images the models see: `auto` keeps the data set's own (an ImageFolder:
    # the majority of its images, so grayscale PNGs stay 1-channel; `synthetic`: 1); 1 or 3
    # converts (luma, or the grey channel repeated). `synthetic` makes any count it is given.
    channels: Literal["auto"] | int = "auto"
    # Whether augmentation may mirror images: `auto` follows the data set (no for digits and
    # MNIST, whose mirrored glyphs are other glyphs; yes for photos, clothes and folders).
    flip: Literal["auto"] | bool = "auto"
    # Side of the square images of `synthetic` (default 8) and `imagefolder` (default 32, the
    # size images are resized to); filled in from the name when left out, unused by the others.
    image_size: Int | None = Field(None, ge=4)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DatasetConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must be < 0.9, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self

    @field_validator("flip", mode="before")
    @classmethod
    def _auto_or_bool(cls, flip: Any) -> Any:
        if flip != "auto" and not isinstance(flip, bool):
            raise ValueError(f"expected auto, true or false, got {flip!r}")
        return flip

    @field_validator("channels", mode="before")
    @classmethod
    def _auto_or_channels(cls, channels: Any) -> Any:
        return _auto_or_positive_int(channels)

    @model_validator(mode="after")
    def _root_and_image_size(self) -> DatasetConfig:
        file_based = ("cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder")
        if self.name in file_based and self.root is None:
            where = (
                "a folder with one sub-folder of images per class"
                if self.name == "imagefolder"
                else "the folder that holds its files, or receives them with dataset.download: true"
            )
            raise ValueError(f"dataset.root is required for dataset {self.name} ({where})")
        default_size = {"synthetic": 8, "imagefolder": 32}.get(self.name)
        if self.image_size is None and default_size is not None:
            object.__setattr__(self, "image_size", default_size)
        return self


class ModelConfig(_Section):
    # `auto`: chosen from the data set's image size, channels and size (`search.auto`); the
    # choice is what the study stores.
    name: str = "auto"
    width: Int | None = Field(None, ge=1)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str, info: ValidationInfo) -> str:
        if name == "auto" or (info.context and not info.context.get("check_model", True)):
            return name  # a stored config, read by a command that builds no model
        from models import list_models  # imports torch: seconds

        if name not in list_models():
            raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
        return name


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class TrainConfig(_Section):
    epochs: Int = Field(20, ge=1)
    # `auto`: from the training split's size (`search.auto.batch_size_for`), so a small split
    # still gets several optimizer steps an epoch.
    batch_size: Literal["auto"] | int = "auto"
    # An epoch (the unit of pruning and early-stopping patience) repeats passes over a tiny
    # training split until it holds at least this many optimizer steps.
    min_steps_per_epoch: Int = Field(8, ge=1)
    lr: float = Field(3e-3, gt=0.0, le=10.0)  # above 10 every trial diverges
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # `auto`: channels_last on CUDA (what its convolutions run fastest in), contiguous else.
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    compile: bool = False
    seed: Int = 0
    train_eval_size: Int = Field(512, ge=1)
    eval_batch_size: Int = Field(1024, ge=1)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _auto_or_size(cls, size: Any) -> Any:
        return _auto_or_positive_int(size)

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError(f"expected auto, cpu, mps, cuda or cuda:N, got {device!r}")
        return device


class EarlyStoppingConfig(_Section):
    patience: Int | None = Field(6, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class ObjectiveConfig(_Section):
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _direction_matches_metric(self) -> ObjectiveConfig:
        natural = "minimize" if self.metric.endswith("loss") else "maximize"
        if self.direction is None:
            object.__setattr__(self, "direction", natural)
        elif self.direction != natural:
            raise ValueError(f"{self.metric} must be {natural}d, got direction={self.direction!r}")
        return self


class _Named(_Section):
    """`sampler: tpe` or `sampler: {name: tpe, seed: 1, ...}`; extra keys go to the constructor."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            return {"name": raw}
        if isinstance(raw, Mapping) and "name" in raw:
            rest = {k: v for k, v in raw.items() if k not in ("name", "options")}
            return {"name": raw["name"], "options": {**raw.get("options", {}), **rest}}
        return raw


SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "gp")
PRUNERS = (
    "median",
    "percentile",
    "hyperband",
    "successive-halving",
    "wilcoxon",
    "patient",
    "threshold",
    "none",
)


class SamplerConfig(_Named):
    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
        return name

    @model_validator(mode="after")
    def _integer_seed(self) -> SamplerConfig:
        seed = self.options.get("seed")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32
        ):
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        return self


class PrunerConfig(_Named):
    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in PRUNERS:
            raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")
        return name


class ConfirmConfig(_Section):
    """The confirm phase after the search budget: the `top_k` best distinct configurations
    and the baseline retrained with `seeds` fresh training seeds, then the champion's
    ablation (each active regularizer off, the same seeds) when `ablation` is on."""

    top_k: Int = Field(3, ge=1)
    seeds: Int = Field(3, ge=1)
    ablation: bool = True


class SearchConfig(_Section):
    n_trials: Int = Field(24, ge=1)
    timeout: float | None = Field(None, gt=0.0)
    sampler: SamplerConfig = SamplerConfig(name="tpe", options={"seed": 0})
    pruner: PrunerConfig = PrunerConfig(
        name="median", options={"n_startup_trials": 4, "n_warmup_steps": 4}
    )
    heartbeat_interval: Int | None = Field(30, ge=1)
    grace_period: Int | None = Field(None, ge=1)
    max_retry: Int = Field(2, ge=0)
    confirm: ConfirmConfig | None = ConfirmConfig()

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm_off(cls, value: Any) -> Any:
        return _off_is_none(value)


class TrackingConfig(_Section):
    enabled: bool = True
    uri: str | None = None
    register_model: bool = True


_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")  # fullmatch: no "\n" at the end


def safe_study_name(name: str) -> str:
    """`name` if it is a valid study name, else a `UserError`. For names read from a storage
    that other tools may write (`../x`, `/abs`, a trailing newline) before they become folder
    names: `reports/<study>`, MLflow's `artifacts/<study>`."""
    if not _STUDY_NAME.fullmatch(name):
        raise UserError(
            f"{name!r} is not a valid study name (letters, digits, '.', '_', '-'; "
            "it is also the MLflow experiment and registered-model name)"
        )
    return name


class SweepConfig(_Section):
    """A size sweep (`regsearch run --fractions`): one study per fraction of the training
    split, smallest first, each warm-started from the one before (`search.sweep`)."""

    fractions: list[float] = Field(min_length=1)
    # Seed each study with the previous fraction's best configurations (enqueued trials).
    warm_start: bool = True

    @field_validator("fractions")
    @classmethod
    def _in_zero_one(cls, fractions: list[float]) -> list[float]:
        bad = [f for f in fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"each fraction must be in (0, 1], got {bad[0]:g}")
        if len(set(fractions)) != len(fractions):
            raise ValueError("a fraction is listed twice")
        return sorted(fractions)


class StudyConfig(_Section):
    study: str = "digits"
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    search: SearchConfig = SearchConfig()
    space: dict[str, Any] = Field(default_factory=dict)
    # The hand-set recipe every study is compared with (an enqueued, unpruned trial with
    # phase "baseline"); regularizers not named are off, or their fixed value in `space`.
    baseline: dict[str, float] | None = Field(default_factory=lambda: dict(DEFAULT_BASELINE))
    storage: str | None = None
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig | None = None

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_off(cls, value: Any) -> Any:
        return _off_is_none(value)

    @field_validator("study")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not _STUDY_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a valid study name (letters, digits, '.', '_', '-'; "
                "it is also the MLflow experiment and registered-model name)"
            )
        return name

    def portable_dict(self) -> dict[str, Any]:
        """The config as stored in the study: JSON-safe, without machine-local secrets."""
        data = self.model_dump(mode="json")
        data.pop("storage", None)
        data["tracking"].pop("uri", None)
        data["train"].pop("device", None)
        return data


# The seed's hand-set recipe: AdamW weight decay 0.01, dropout 0.5, medium augmentation, MixUp
# 0.2, label smoothing 0.1.
DEFAULT_BASELINE: dict[str, float] = {
    "weight_decay": 0.01,
    "dropout": 0.5,
    "aug_strength": 0.5,
    "mixup_alpha": 0.2,
    "label_smoothing": 0.1,
}

# The built-in default study: the seed's five regularizers searched on digits; CutMix, Cutout
# and stochastic depth are available but fixed off (turn them on in a study file).
DEFAULT_SPACE: dict[str, Any] = {
    "weight_decay": {"type": "float", "low": 1.0e-5, "high": 0.1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "aug_strength": {"type": "float", "low": 0.0, "high": 1.0},
    "mixup_alpha": {"type": "float", "low": 0.0, "high": 1.0},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.3},
    "cutmix_alpha": 0.0,
    "cutout": 0.0,
    "drop_path": 0.0,
}
DEFAULTS: dict[str, Any] = {**StudyConfig().model_dump(mode="python"), "space": DEFAULT_SPACE}
DEFAULTS["objective"]["direction"] = None  # derived from the metric unless a file says otherwise


@dataclass(frozen=True)
class Regularization:
    """The regularizer values of one trial, under their contract names."""

    weight_decay: float = 0.0
    dropout: float = 0.0
    aug_strength: float = 0.0
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0
    cutmix_alpha: float = 0.0
    cutout: float = 0.0
    drop_path: float = 0.0


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs; built by `space.sample`, consumed by `train.train`."""

    model: ModelConfig
    train: TrainConfig
    regularization: Regularization
    early_stopping: EarlyStoppingConfig
    objective: ObjectiveConfig


# --------------------------------------------------------------------------- loading


def _merges(old: Any, new: Any) -> bool:
    """Whether `new` refines `old` key by key rather than replacing it. A space distribution
    (`type: ...`) or a differently named sampler/pruner (`name: ...`) replaces: a categorical
    must not inherit `low`/`high`, a hyperband pruner must not inherit the median's options."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return False
    return "type" not in new and new.get("name", old.get("name")) == old.get("name")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` over `base`, recursively for mappings that refine rather than replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and _merges(old, value):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_assignment(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {item!r}: expected KEY.SUB=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(
            f"--set {key}: value {raw!r} is not valid YAML ({first_line(exc)})"
        ) from None
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` items; values are parsed as YAML (numbers, lists, mappings)."""
    result = copy.deepcopy(dict(data))
    for item in assignments:
        path, value = _parse_assignment(item)
        node: dict[str, Any] = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(
                    f"--set {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a mapping"
                )
            node = child
        if _merges(node.get(path[-1]), value):
            node[path[-1]] = deep_merge(node[path[-1]], value)
        elif _renames(path, node, value):
            # `search.pruner.name=hyperband`: the median's options are not hyperband's. A
            # sampler's seed is every sampler's option, and stays.
            seed = (
                {**node.get("options", {}), **node}.get("seed") if path[-2] == "sampler" else None
            )
            node.clear()
            node["name"] = value
            if seed is not None:
                node["seed"] = seed
        else:
            node[path[-1]] = value
    return result


def _renames(path: list[str], node: Mapping[str, Any], value: Any) -> bool:
    """Whether `--set search.sampler.name=…` / `search.pruner.name=…` picks another class."""
    return (
        len(path) >= 2
        and path[-1] == "name"
        and path[-2] in ("sampler", "pruner")
        and node.get("name") != value
    )


_UNION_TAG = re.compile(r"literal\[.*\]|bool|int|float|str|none")


def _did_you_mean(loc: list[str]) -> str | None:
    """The known key closest to a misspelt one (`search.n_trals` → `n_trials`), if any."""
    import difflib
    import types
    import typing

    model: Any = StudyConfig
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            members = [a for a in typing.get_args(annotation) if hasattr(a, "model_fields")]
            annotation = members[0] if members else None
        model = annotation
    fields = getattr(model, "model_fields", None)
    if not fields:
        return None
    close = difflib.get_close_matches(loc[-1], list(fields), n=1, cutoff=0.6)
    return close[0] if close else None


def _format_validation_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    # Union members show up in the location (`flip.literal['auto']`, `flip.bool`): not keys.
    loc = ".".join(
        str(part)
        for part in first["loc"]
        if not str(part).startswith("function-") and not _UNION_TAG.fullmatch(str(part))
    )
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        near = _did_you_mean([str(p) for p in first["loc"]])
        if near:
            msg += f"; did you mean {near!r}?"
    elif first["type"] not in ("value_error", "assertion_error") and "input" in first:
        msg = f"{msg} (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc or 'config'}: {msg}{more}"


def flatten(
    data: Mapping[str, Any], *, keep: Iterable[str] = (), prefix: str = ""
) -> dict[str, Any]:
    """Dotted keys of a nested mapping (`{"train": {"lr": 1}}` → `{"train.lr": 1}`); the
    mappings at keys in `keep` (dotted) and empty ones stay whole values."""
    keep = frozenset(keep)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and path not in keep:
            flat.update(flatten(value, keep=keep, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat


def parse_config(data: Mapping[str, Any], *, check_model: bool = True) -> StudyConfig:
    """Validate a merged mapping into a `StudyConfig` (its keys and values; the search space,
    sampler and pruner are checked by `search.studyfile.validate_config`).

    `check_model=False` skips the model-name check, which imports torch (seconds): for
    commands that only read a study, whose stored config was checked when it was created.
    """
    try:
        return StudyConfig.model_validate(data, context={"check_model": check_model})
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc)) from None
