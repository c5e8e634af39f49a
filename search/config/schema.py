"""The study file: typed, validated, with defaults (`DEFAULTS`).

A study file states only what differs from `DEFAULTS`; nested mappings are merged key by key
(so `space: {dropout: 0.1}` fixes dropout and keeps the rest of the default space). Every
mistake becomes a `UserError` whose one line names the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Self

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from search.config.overrides import shown
from search.config.trial import (
    REGULARIZERS,
    DatasetConfig,
    EarlyStoppingConfig,
    Int,
    ModelConfig,
    ObjectiveConfig,
    Regularization,
    Section,
    TrainConfig,
    TrialConfig,
    off_is_none,
)
from search.core.errors import UserError

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
    "fraction_label",
    "parse_config",
    "repeated_name",
    "safe_study_name",
]


class _Named(Section):
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


class ConfirmConfig(Section):
    """The confirm phase after the search budget: the `top_k` best distinct configurations
    and the baseline retrained with `seeds` fresh training seeds, then the champion's
    ablation (each active regularizer off, the same seeds) when `ablation` is on."""

    top_k: Int = Field(3, ge=1)
    seeds: Int = Field(3, ge=1)
    ablation: bool = True
    # Racing: seeds are run one round at a time and a configuration clearly behind the
    # leader after a round stops being retrained (`search.study.evidence`); false: every seed of
    # every configuration, and of every ablation.
    racing: bool = True
    # A validation split smaller than this (images): each confirm seed retrains every
    # configuration on its own train/validation split of the labelled images, so the choice
    # is not the luck of one small split; 0: always the study's own split.
    resplit_below: Int = Field(500, ge=0)
    # Once the champion is chosen (and ablated), its configuration and the recipe's are
    # trained again on the training + validation images for the epochs the confirm phase
    # found, and that refit is the registered champion (`search.study.refit`); false: the champion
    # is the best-seed retrain, trained on the training split alone.
    refit: bool = True


class SearchConfig(Section):
    n_trials: Int = Field(24, ge=1)
    timeout: float | None = Field(None, gt=0.0)
    sampler: SamplerConfig = SamplerConfig(name="tpe", options={"seed": 0})
    # Chosen by `regsearch bench --only regret` (docs/benchmarks.md): rungs at 4, 8 and 16
    # epochs, the top half goes on. Over 9 replayed studies (digits, Fashion-MNIST 1,000 and
    # the same with 40% wrong labels; 3 sampler seeds) it killed 3 of the 27 full-budget top-3
    # configurations (at most 1 a study) and saved 39.7% of the epochs; the earlier default
    # (rungs at 2, 6, 18, the top third) saved 66% but killed 21 of 27.
    pruner: PrunerConfig = PrunerConfig(
        name="successive-halving", options={"min_resource": 4, "reduction_factor": 2}
    )
    heartbeat_interval: Int | None = Field(30, ge=1)
    grace_period: Int | None = Field(None, ge=1)
    max_retry: Int = Field(2, ge=0)
    confirm: ConfirmConfig | None = ConfirmConfig()

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm_off(cls, value: Any) -> Any:
        return off_is_none(value)


class TrackingConfig(Section):
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


def fraction_label(fraction: float) -> str:
    """How a size sweep names the study of `fraction` (`S-f<label>`)."""
    return f"{fraction:g}"


def repeated_name(fractions: Sequence[float]) -> str | None:
    """Why two of `fractions` would share one study (the label shows 6 significant digits:
    0.1 and 0.1000001 are both `S-f0.1`), or None."""
    seen: dict[str, float] = {}
    for fraction in sorted(fractions):
        label = fraction_label(fraction)
        if label in seen and seen[label] != fraction:
            return (
                f"{seen[label]!r} and {fraction!r} would both be the study of fraction {label}; "
                "give fractions that differ within 6 significant digits"
            )
        seen[label] = fraction
    return None


class SweepConfig(Section):
    """A size sweep (`regsearch run --fractions`): one study per fraction of the training
    split, smallest first, each warm-started from the one before (`search.study.sweep`)."""

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
        clash = repeated_name(fractions)
        if clash is not None:
            raise ValueError(clash)
        return sorted(fractions)


class StudyConfig(Section):
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
    # The parsed search space, once per config (`search.config.space.space_of`): not a field,
    # so not dumped, not compared, and not kept by `model_copy`.
    _space: Any = PrivateAttr(default=None)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied._space = None  # `update` may change the space, or the sections it checks against
        return copied

    def __eq__(self, other: object) -> bool:
        # The fields alone: a config whose space was read equals one whose space was not.
        if not isinstance(other, StudyConfig):
            return NotImplemented
        return type(self) is type(other) and dict(self) == dict(other)

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_off(cls, value: Any) -> Any:
        return off_is_none(value)

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
        """The config as stored in the study: JSON-safe, without machine-local secrets, and
        without `search.timeout`, which is one launch's (a resume by name or a joining worker
        runs to the budget unless it is given its own)."""
        data = self.model_dump(mode="json")
        data.pop("storage", None)
        data["tracking"].pop("uri", None)
        data["train"].pop("device", None)
        data["search"].pop("timeout", None)
        return data


# The baseline recipe (hand-set; the table's `baseline` column): AdamW weight decay 0.01,
# dropout 0.5, medium augmentation, MixUp 0.2, label smoothing 0.1.
DEFAULT_BASELINE: dict[str, float] = {
    name: row.baseline for name, row in REGULARIZERS.items() if row.baseline is not None
}

# The built-in default study: the core regularizers searched on digits; CutMix, Cutout and
# stochastic depth are available but fixed off (turn them on in a study file).
DEFAULT_SPACE: dict[str, Any] = {
    name: dict(row.default_search) if row.default_search is not None else 0.0
    for name, row in REGULARIZERS.items()
}
DEFAULTS: dict[str, Any] = {**StudyConfig().model_dump(mode="python"), "space": DEFAULT_SPACE}
DEFAULTS["objective"]["direction"] = None  # derived from the metric unless a file says otherwise


# --------------------------------------------------------------------------- loading


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
        msg = f"{msg} (got {shown(first['input'])})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc or 'config'}: {msg}{more}"


def parse_config(data: Mapping[str, Any], *, check_model: bool = True) -> StudyConfig:
    """Validate a merged mapping into a `StudyConfig` (its keys and values; the search space,
    sampler and pruner are checked by `search.study.studyfile.validate_config`).

    `check_model=False` skips the model-name check, which imports torch (seconds): for
    commands that only read a study, whose stored config was checked when it was created.
    """
    try:
        return StudyConfig.model_validate(data, context={"check_model": check_model})
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc)) from None
