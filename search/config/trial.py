"""The sections of a study file that say how one model trains — data set, model, training,
early stopping, objective — and the `TrialConfig` a trial trains with (those sections plus the
sampled `Regularization`, whose fields are the table of the regularizers: `REGULARIZERS`). The
study as a whole (`StudyConfig`) is `search.config.schema`'s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "CORE_REGULARIZERS",
    "REGULARIZERS",
    "DatasetConfig",
    "EarlyStoppingConfig",
    "Int",
    "ModelConfig",
    "ObjectiveConfig",
    "Regularization",
    "Regularizer",
    "Section",
    "TrainConfig",
    "TrialConfig",
    "auto_or_positive_int",
    "off_is_none",
]


def auto_or_positive_int(value: Any) -> Any:
    """`auto` or an integer >= 1 (not a bool, not 2.5): one message for every such key."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected auto or an integer >= 1, got {value!r}")
    return value


def off_is_none(value: Any) -> Any:
    """`none`, `off` or `false` in a study file turns a section off (None)."""
    return None if value is None or str(value).lower() in ("none", "off", "false") else value


# Integers are integers: YAML's `true` is not 1 and 2.5 is not 2.
Int = Annotated[int, Strict()]


class Section(BaseModel):
    # No NaN or infinity in any float key: `warmup_epochs: .inf` would fail every trial.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Seeds fit every generator they reach (numpy's and scikit-learn's take < 2**32, and a
# confirm retrain adds 1000 + i to `train.seed`).
MAX_SEED = 2**31 - 1


# Sets whose official test split is the test split (`dataset.test_fraction` unused).
OFFICIAL_TEST_SPLIT = ("cifar10", "cifar100", "mnist", "fashion-mnist")


class DatasetConfig(Section):
    NAMES: ClassVar[tuple[str, ...]] = (
        "digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder"
    )  # fmt: skip
    MIN_SIZE: ClassVar[int] = 4  # the bounds of `image_size`, and of the images of any set
    MAX_SIZE: ClassVar[int] = 1024
    # One of NAMES, or a loader `package.module:callable` (`search.data.userdata`).
    name: str = "digits"
    # The folder holding the files of cifar10, cifar100, mnist, fashion-mnist (torchvision's
    # layout: <root>/cifar-10-batches-py, <root>/MNIST/raw, ...; the four idx files of mnist and
    # fashion-mnist may also lie flat in it) or imagefolder (one sub-folder of images per
    # class). Required for those; unused by digits and synthetic; passed to a loader that
    # takes `root`.
    root: Path | None = None
    # Folder to import a package.module:callable data set from when it is not on sys.path;
    # default: the study file's folder.
    path: Path | None = None
    # Fetch a missing torchvision data set into `root` (needs network access); off by default.
    download: bool = False
    # Data sets with an official test split (cifar10, cifar100, mnist, fashion-mnist) keep it as
    # the test split: `test_fraction` is then unused and `val_fraction` is the share of the
    # official training images held out for validation.
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: Int = Field(0, ge=0, le=MAX_SEED)
    # Train on this share of the training split: a stratified subset (at least one image a
    # class), seeded by `split_seed`, each smaller fraction inside every larger one. The
    # validation and test splits stay the same, so studies at other fractions compare.
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # Use only this many labelled images (a stratified, seeded subset of the images outside
    # the test split), taken before the validation (and test) split: a study as a user with
    # that many labelled images would run it. Default: all of them.
    subset: Int | None = Field(None, ge=20)
    # Replace this share of the training split's labels by another class, at random (seeded
    # by `split_seed`): a benchmark of robustness to wrong labels. The validation and test
    # splits keep their labels.
    label_noise: float = Field(0.0, ge=0.0, lt=1.0)
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
    # Side of the square images of `synthetic` and `imagefolder` (the size images are decoded
    # at: shorter side resized, centre-cropped). `auto`: 8 for synthetic; a folder's own size
    # (the most common one, at most 224). A study stores the side its data has.
    image_size: Literal["auto"] | int = "auto"

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DatasetConfig:
        if self.name in OFFICIAL_TEST_SPLIT:  # `test_fraction` is unused
            if self.val_fraction >= 0.9:
                raise ValueError(f"val_fraction must be < 0.9, got {self.val_fraction}")
        elif self.val_fraction + self.test_fraction >= 0.9:
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
        return auto_or_positive_int(channels)

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name in cls.NAMES:
            return name
        if ":" in name:
            from search.core.imports import is_import_spec  # imports torch: only for a spec

            if is_import_spec(name):
                return name
        raise ValueError(
            f"unknown data set {name!r}; known: {', '.join(cls.NAMES)} or a loader "
            "package.module:callable"
        )

    @field_validator("image_size", mode="before")
    @classmethod
    def _auto_or_side(cls, size: Any) -> Any:
        if size is None or size == "auto":  # None: the default of studies stored before auto
            return "auto"
        low, high = cls.MIN_SIZE, cls.MAX_SIZE
        if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
            raise ValueError(f"expected auto or an integer from {low} to {high}, got {size!r}")
        return size

    @model_validator(mode="after")
    def _root_is_given(self) -> DatasetConfig:
        file_based = ("cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder")
        if self.name in file_based and self.root is None:
            where = (
                "a folder with one sub-folder of images per class"
                if self.name == "imagefolder"
                else "the folder that holds its files, or receives them with dataset.download: true"
            )
            raise ValueError(f"dataset.root is required for dataset {self.name} ({where})")
        return self


class ModelConfig(Section):
    # `auto`: chosen from the data set's image size, channels and size (`search.training.auto`); the
    # choice is what the study stores. Also a built-in name (`models.list_models()`),
    # `timm/<name>`, `torchvision/<name>` or a factory `package.module:callable`.
    name: str = "auto"
    width: Int | None = Field(None, ge=1)
    # Passed as they are to a timm, torchvision or factory builder (`global_pool: avg`).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # Start every trial from these weights (safetensors or a state dict); a head whose shape
    # differs is re-initialised.
    weights: Path | None = None
    # The input normalisation inside the model; default: the weights' own where known
    # (timm's pretrained config, torchvision's weights), else the training images' statistics.
    mean: list[float] | None = None
    std: list[float] | None = None
    # The folder a factory's module is imported from when it is not on sys.path (filled in
    # with the study file's folder).
    path: Path | None = None

    @field_validator("weights")
    @classmethod
    def _home(cls, weights: Path | None) -> Path | None:
        return None if weights is None else weights.expanduser()  # `~/weights/…` in a file

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str, info: ValidationInfo) -> str:
        if name == "auto" or (info.context and not info.context.get("check_model", True)):
            return name  # a stored config, read by a command that builds no model
        from models import check_name, is_external, list_models  # imports torch: seconds
        from search.core.imports import is_import_spec

        if ":" in name and not is_import_spec(name):
            raise ValueError(f"{name!r} is not of the form package.module:callable")
        if is_external(name):
            check_name(name)  # timm installed, a known timm or torchvision name
        elif name not in list_models():
            raise ValueError(
                f"unknown model {name!r}; known: {', '.join(list_models())}, timm/<name>, "
                "torchvision/<name> or package.module:callable"
            )
        return name

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and not all(v > 0 for v in std):
            raise ValueError(f"every std must be > 0, got {std}")
        return std

    @model_validator(mode="after")
    def _stats_and_kwargs(self) -> ModelConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("model.mean and model.std go together")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"model.mean and model.std differ in length: {self.mean}, {self.std}")
        if self.kwargs and not (":" in self.name or "/" in self.name):
            raise ValueError(
                "model.kwargs applies to timm/, torchvision/ and package.module:callable models"
            )
        return self


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class TrainConfig(Section):
    epochs: Int = Field(20, ge=1)
    # `auto`: from the training split's size (`search.training.auto.batch_size_for`), so a
    # small split still gets several optimizer steps an epoch.
    batch_size: Literal["auto"] | int = "auto"
    # An epoch (the unit of pruning and early-stopping patience) repeats passes over a small
    # training split until it holds at least this many optimizer steps: 45 gives the digits 5
    # passes and 1,000 Fashion-MNIST images 4, what regularized training needs to pay on small
    # data (docs/benchmarks.md, Fashion-MNIST); from about 5,640 images on an epoch is one pass.
    min_steps_per_epoch: Int = Field(45, ge=1)
    lr: float = Field(3e-3, gt=0.0, le=10.0)  # above 10 every trial diverges
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # `auto`: channels_last on CUDA (what its convolutions run fastest in), contiguous else.
    # Not on the CPU, though faster there too: torch 2.14.1's oneDNN corrupts the heap in
    # the backward of a strided 1x1 conv with few input channels on one thread.
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    compile: bool = False
    seed: Int = Field(0, ge=0, le=MAX_SEED)
    train_eval_size: Int = Field(512, ge=1)
    eval_batch_size: Int = Field(1024, ge=1)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _auto_or_size(cls, size: Any) -> Any:
        return auto_or_positive_int(size)

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not DEVICE_PATTERN.match(device):
            raise ValueError(f"expected auto, cpu, mps, cuda or cuda:N, got {device!r}")
        return device


class EarlyStoppingConfig(Section):
    patience: Int | None = Field(6, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class ObjectiveConfig(Section):
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


@dataclass(frozen=True)
class Regularizer:
    """A regularizer's row of the table (`REGULARIZERS`): the values it takes, `low` to `high`
    (`high` itself when `high_included`); for the core regularizers, the default study's
    distribution of it and the baseline recipe's value. The others are off in both."""

    low: float
    high: float
    high_included: bool
    default_search: Mapping[str, Any] | None = None
    baseline: float | None = None

    @property
    def core(self) -> bool:
        return self.default_search is not None


def _regularizer(
    low: float,
    high: float,
    *,
    high_included: bool,
    search: Mapping[str, Any] | None = None,
    baseline: float | None = None,
) -> Any:
    """A `Regularization` field: 0 (off) unless set, with its row of the table."""
    row = Regularizer(low, high, high_included, search, baseline)
    return field(default=0.0, metadata={"row": row})


@dataclass(frozen=True)
class Regularization:
    """The regularizer values of one trial, under their contract names (0: off). Its fields
    are the one table of the regularizers: each one's metadata is its `Regularizer` row, and
    every list of regularizer names (`REGULARIZERS`, the defaults) is read from them."""

    weight_decay: float = _regularizer(
        0.0,
        1.0,
        high_included=True,
        search={"type": "float", "low": 1.0e-5, "high": 0.1, "log": True},
        baseline=0.01,
    )
    dropout: float = _regularizer(
        0.0,
        1.0,
        high_included=False,
        search={"type": "float", "low": 0.0, "high": 0.6},
        baseline=0.5,
    )
    aug_strength: float = _regularizer(
        0.0,
        1.0,
        high_included=True,
        search={"type": "float", "low": 0.0, "high": 1.0},
        baseline=0.5,
    )
    mixup_alpha: float = _regularizer(
        0.0,
        math.inf,
        high_included=False,
        search={"type": "float", "low": 0.0, "high": 1.0},
        baseline=0.2,
    )
    label_smoothing: float = _regularizer(
        0.0,
        1.0,
        high_included=False,
        search={"type": "float", "low": 0.0, "high": 0.3},
        baseline=0.1,
    )
    cutmix_alpha: float = _regularizer(0.0, math.inf, high_included=False)
    cutout: float = _regularizer(0.0, 1.0, high_included=True)
    drop_path: float = _regularizer(0.0, 1.0, high_included=False)


# The regularizers by contract name, in contract order: their rows of the table.
REGULARIZERS: dict[str, Regularizer] = {f.name: f.metadata["row"] for f in fields(Regularization)}
# Searched by the default study, in the baseline recipe, a column of every trials table.
CORE_REGULARIZERS: tuple[str, ...] = tuple(n for n, row in REGULARIZERS.items() if row.core)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs; built by `space.sample`, consumed by `train.train`."""

    model: ModelConfig
    train: TrainConfig
    regularization: Regularization
    early_stopping: EarlyStoppingConfig
    objective: ObjectiveConfig
