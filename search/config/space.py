"""The search space: the only module that calls `trial.suggest_*`.

An entry is a fixed value or a distribution. Regularizers are addressed by their contract
names; any `train.*` or `model.*` key may be searched too (by its bare name, e.g. `lr`, or
dotted, e.g. `train.lr`). The Optuna parameter name is always the bare name, so it is the same
in Optuna, MLflow and the dashboard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from search.config.schema import (
    _UNION_TAG,
    ModelConfig,
    Regularization,
    StudyConfig,
    TrainConfig,
    TrialConfig,
)
from search.config.trial import REGULARIZERS
from search.core.errors import UserError

if TYPE_CHECKING:
    import optuna

__all__ = ["REGULARIZERS", "SearchSpace", "SpaceEntry", "space_of"]

Scalar = bool | int | float | str

# Per-worker or structural settings that make no sense to search.
_NOT_SEARCHABLE = {"device", "precision", "memory_format", "compile", "eval_batch_size", "name"}
_TRAIN_KEYS = set(TrainConfig.model_fields) - _NOT_SEARCHABLE
_MODEL_KEYS = (set(ModelConfig.model_fields) - _NOT_SEARCHABLE) | {"name"}


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def contains(self, value: Any) -> bool:
        """Whether Optuna takes `value` as this distribution's (an enqueued param)."""
        raise NotImplementedError


class FloatDist(_Dist):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatDist:
        if not self.low <= self.high:
            raise ValueError(f"low must be <= high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got step={self.step}")
        return self

    def contains(self, value: Any) -> bool:
        real = isinstance(value, int | float) and not isinstance(value, bool)
        return real and self.low <= value <= self.high

    def values(self) -> list[float]:
        if self.step is None:
            raise ValueError("the grid sampler needs a step (or categorical choices)")
        n = math.floor((self.high - self.low) / self.step + 1e-9)
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class IntDist(_Dist):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntDist:
        if not self.low <= self.high:
            raise ValueError(f"low must be <= high, got low={self.low}, high={self.high}")
        if self.log and self.low < 1:
            raise ValueError(f"a log range needs low >= 1, got low={self.low}")
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got step={self.step}")
        if self.log and self.step != 1:
            raise ValueError("log and step cannot be combined")
        return self

    def contains(self, value: Any) -> bool:
        whole = isinstance(value, int) and not isinstance(value, bool)
        return whole and self.low <= value <= self.high

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class CategoricalDist(_Dist):
    type: Literal["categorical"]
    choices: list[Scalar | None]  # null: a key's own `auto` (`model.width`)

    @model_validator(mode="after")
    def _check(self) -> CategoricalDist:
        if not self.choices:
            raise ValueError("choices must not be empty")
        return self

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def values(self) -> list[Scalar | None]:
        return list(self.choices)

    def bounds(self) -> list[Any]:
        return list(self.choices)


_DISTS: dict[str, type[FloatDist] | type[IntDist] | type[CategoricalDist]] = {
    "float": FloatDist,
    "int": IntDist,
    "categorical": CategoricalDist,
}
Distribution = FloatDist | IntDist | CategoricalDist


@dataclass(frozen=True)
class SpaceEntry:
    name: str
    section: Literal["regularization", "train", "model"]
    value: Scalar | Distribution

    @property
    def searched(self) -> bool:
        return isinstance(self.value, _Dist)


def _section_of(key: str) -> tuple[str, Literal["regularization", "train", "model"]]:
    prefix, _, bare = key.rpartition(".")
    if prefix in ("", "regularization") and bare in REGULARIZERS:
        return bare, "regularization"
    if prefix in ("", "train") and bare in _TRAIN_KEYS:
        return bare, "train"
    if prefix in ("", "model") and bare in _MODEL_KEYS:
        return bare, "model"
    known = ", ".join([*REGULARIZERS, *sorted(_TRAIN_KEYS), *sorted(_MODEL_KEYS)])
    raise UserError(f"space.{key}: unknown parameter; searchable: {known}")


def _parse_value(key: str, raw: Any) -> Scalar | Distribution:
    if isinstance(raw, Mapping):
        kind = raw.get("type")
        if kind not in _DISTS:
            raise UserError(
                f"space.{key}: a distribution needs type: float, int or categorical, got {kind!r}"
            )
        try:
            return _DISTS[kind].model_validate(raw)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            # Union members in the location (`choices.0.bool`) are no keys.
            loc = [str(p) for p in err["loc"]]
            where = ".".join(p for p in loc if not _UNION_TAG.fullmatch(p))
            msg = err["msg"].removeprefix("Value error, ")
            if len(where) < len(".".join(loc)):  # no member took it: say what would do
                msg = f"expected a number, a string, true/false or null, got {err['input']!r}"
            if err["type"] == "extra_forbidden":
                msg = f"unknown key for a {kind} distribution"
            raise UserError(f"space.{key}{'.' + where if where else ''}: {msg}") from None
    if isinstance(raw, bool | int | float | str):
        return raw
    raise UserError(f"space.{key}: expected a value or a distribution mapping, got {raw!r}")


def _check_regularizer(key: str, name: str, value: Any) -> None:
    row = REGULARIZERS[name]
    low, high = row.low, row.high
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and low <= value and (value <= high if row.high_included else value < high)
    if not ok:
        interval = f"[{low:g}, {high:g}{']' if row.high_included else ')'}"
        raise UserError(f"space.{key}: {value!r} is outside the allowed range {interval}")


def _check_section_value(config: StudyConfig, key: str, entry: SpaceEntry, value: Any) -> None:
    section = config.train if entry.section == "train" else config.model
    try:
        type(section).model_validate({**section.model_dump(), entry.name: value})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(
            f"space.{key}: {value!r} is not a valid {entry.section}.{entry.name} ({msg})"
        ) from None


def _is_int_field(section: str, name: str) -> bool:
    fields_of = {"train": TrainConfig.model_fields, "model": ModelConfig.model_fields}
    if section not in fields_of:
        return False
    annotation = str(fields_of[section][name].annotation)
    return annotation in ("<class 'int'>", "int | None", "typing.Optional[int]")


class SearchSpace:
    """Parsed, checked space entries; `sample` turns a trial into a `TrialConfig`."""

    def __init__(self, config: StudyConfig, entries: Sequence[SpaceEntry]) -> None:
        self.config = config
        self.entries = tuple(entries)

    @classmethod
    def from_config(cls, config: StudyConfig) -> SearchSpace:
        """The parser: every reader takes the space from `space_of`, which parses once."""
        entries: list[SpaceEntry] = []
        seen: dict[str, str] = {}
        for key, raw in config.space.items():
            name, section = _section_of(str(key))
            if name in seen:
                raise UserError(f"space.{key}: {name!r} is already given as space.{seen[name]}")
            seen[name] = str(key)
            entry = SpaceEntry(name, section, _parse_value(str(key), raw))
            if isinstance(entry.value, FloatDist) and _is_int_field(section, name):
                raise UserError(
                    f"space.{key}: {section}.{name} is an integer; use type: int for its range"
                )
            candidates = entry.value.bounds() if isinstance(entry.value, _Dist) else [entry.value]
            for value in candidates:
                if section == "regularization":
                    _check_regularizer(str(key), name, value)
                else:
                    _check_section_value(config, str(key), entry, value)
            entries.append(entry)
        for name, value in (config.baseline or {}).items():
            if name not in REGULARIZERS:
                raise UserError(
                    f"baseline.{name}: not a regularizer (one of {', '.join(REGULARIZERS)})"
                )
            try:
                _check_regularizer(name, name, value)
            except UserError as exc:
                raise UserError(str(exc).replace("space.", "baseline.", 1)) from None
        return cls(config, entries)

    def baseline_values(self) -> dict[str, Scalar] | None:
        """Every regularizer of the baseline trial: the recipe's value, else the space's fixed
        value, else off (0). None when the study has no baseline."""
        if self.config.baseline is None:
            return None
        fixed = self.fixed_values()
        values: dict[str, Scalar] = {}
        for entry in self.entries:
            if entry.section == "regularization":
                default = fixed.get(entry.name, 0.0)
                values[entry.name] = self.config.baseline.get(entry.name, default)
            elif entry.searched:  # e.g. a searched `lr`: the recipe trains with the file's
                section = self.config.train if entry.section == "train" else self.config.model
                values[entry.name] = getattr(section, entry.name)
        return values

    def baseline_params(self) -> dict[str, Scalar] | None:
        """The baseline's values of the searched parameters (what its trial is enqueued with):
        those their distribution holds. The others (the recipe's dropout 0.5 beside searched
        choices [0, 0.1, 0.3], an `auto` width beside a searched range) are no params of its
        trial: it trains with them as overrides (`sample`)."""
        values = self.baseline_values()
        if values is None:
            return None
        return {
            e.name: values[e.name]
            for e in self.searched
            if e.name in values and _holds(e.value, values[e.name])
        }

    @property
    def searched(self) -> tuple[SpaceEntry, ...]:
        return tuple(e for e in self.entries if e.searched)

    def fixed_values(self) -> dict[str, Scalar]:
        return {e.name: e.value for e in self.entries if not isinstance(e.value, _Dist)}

    def grid(self) -> dict[str, list[Any]]:
        """The search space of Optuna's GridSampler: every searched entry needs a finite grid."""
        grid: dict[str, list[Any]] = {}
        for entry in self.searched:
            assert isinstance(entry.value, FloatDist | IntDist | CategoricalDist)
            try:
                grid[entry.name] = list(entry.value.values())
            except ValueError as exc:
                raise UserError(f"space.{entry.name}: {exc}") from None
        return grid

    def sample(
        self, trial: optuna.Trial, overrides: Mapping[str, Scalar] | None = None
    ) -> TrialConfig:
        """The trial's config; `overrides` (the baseline's values) replace what is sampled
        or fixed (the trial was enqueued with them, so its params say the same; one outside
        its distribution is not suggested at all: Optuna would refuse it)."""
        values: dict[str, Any] = {}
        overrides = overrides or {}
        for entry in self.entries:
            spec = entry.value
            if entry.name in overrides and not _holds(spec, overrides[entry.name]):
                continue
            if isinstance(spec, FloatDist):
                values[entry.name] = trial.suggest_float(
                    entry.name, spec.low, spec.high, log=spec.log, step=spec.step
                )
            elif isinstance(spec, IntDist):
                values[entry.name] = trial.suggest_int(
                    entry.name, spec.low, spec.high, log=spec.log, step=spec.step
                )
            elif isinstance(spec, CategoricalDist):
                values[entry.name] = trial.suggest_categorical(entry.name, spec.choices)
            else:
                values[entry.name] = spec
        values.update(overrides)
        return self.resolve(values)

    def resolve(self, values: Mapping[str, Any]) -> TrialConfig:
        """A `TrialConfig` from parameter values (a trial's params, or fixed values)."""
        by_section: dict[str, dict[str, Any]] = {"regularization": {}, "train": {}, "model": {}}
        for entry in self.entries:
            if entry.name in values:
                by_section[entry.section][entry.name] = values[entry.name]
        regularization = replace(
            Regularization(),
            **{k: float(v) for k, v in by_section["regularization"].items() if k in REGULARIZERS},
        )
        return TrialConfig(
            # Validated (not `model_copy`): a sampled value must meet the same rules as a file's.
            model=ModelConfig.model_validate(
                {**self.config.model.model_dump(), **by_section["model"]}
            ),
            train=TrainConfig.model_validate(
                {**self.config.train.model_dump(), **by_section["train"]}
            ),
            regularization=regularization,
            early_stopping=self.config.early_stopping,
            objective=self.config.objective,
        )


def _holds(spec: Distribution | Scalar, value: Any) -> bool:
    """Whether a searched entry's distribution holds `value` (a fixed entry holds anything)."""
    return not isinstance(spec, _Dist) or spec.contains(value)


def space_of(config: StudyConfig) -> SearchSpace:
    """The config's search space, parsed and checked once per config object and kept on it:
    every reader of the space gets this one `SearchSpace`. A copy (`model_copy`, which may
    change the space or the sections it checks against) parses its own."""
    space = config._space
    if not isinstance(space, SearchSpace) or space.config is not config:  # `copy.copy`'s
        space = SearchSpace.from_config(config)
        config._space = space
    return space
