"""The search space: parsing and checking entries, sampling real Optuna trials into a
`TrialConfig`, and the grid for the grid sampler."""

from __future__ import annotations

import copy
import math
from dataclasses import fields
from typing import Any

import optuna
import pytest

from search.config.schema import (
    DEFAULT_BASELINE,
    DEFAULT_SPACE,
    Regularization,
    StudyConfig,
    TrialConfig,
)
from search.config.space import REGULARIZERS, SearchSpace, space_of
from search.config.trial import CORE_REGULARIZERS
from search.core.errors import UserError
from search.study.studies import enqueue_baseline, make_sampler
from search.study.studyfile import load_config, validate_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONTRACT = ("weight_decay", "dropout", "aug_strength", "mixup_alpha", "label_smoothing")


def _space(space: dict[str, Any], **sections: Any) -> SearchSpace:
    return SearchSpace.from_config(StudyConfig(space=space, **sections))


def _space_error(space: dict[str, Any]) -> str:
    with pytest.raises(UserError) as exc:
        _space(space)
    message = str(exc.value)
    assert "\n" not in message
    return message


def _trial(seed: int = 0) -> optuna.Trial:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return study.ask()


# --------------------------------------------------------------------------- parsing errors


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"dropout": 1.0}, "space.dropout: 1.0 is outside the allowed range [0, 1)"),
        ({"dropout": -0.1}, "space.dropout: -0.1 is outside the allowed range [0, 1)"),
        ({"weight_decay": 1.5}, "space.weight_decay: 1.5 is outside the allowed range [0, 1]"),
        ({"mixup_alpha": -1}, "space.mixup_alpha: -1 is outside the allowed range [0, inf)"),
        ({"label_smoothing": "high"}, "space.label_smoothing: 'high' is outside"),
        ({"drop_path": True}, "space.drop_path: True is outside"),
        (
            {"dropout": {"type": "float", "low": 0.0, "high": 1.0}},
            "space.dropout: 1.0 is outside the allowed range [0, 1)",
        ),
        (
            {"cutout": {"type": "categorical", "choices": [0.1, 2.0]}},
            "space.cutout: 2.0 is outside the allowed range [0, 1]",
        ),
        (
            {"dropout": {"type": "float", "low": 0.5, "high": 0.1}},
            "space.dropout: low must be <= high",
        ),
        (
            {"width": {"type": "int", "low": 16, "high": 8}},
            "space.width: low must be <= high",
        ),
        (
            {"weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
            "space.weight_decay: a log range needs low > 0",
        ),
        (
            {"weight_decay": {"type": "float", "low": -1e-3, "high": 0.1, "log": True}},
            "space.weight_decay: a log range needs low > 0",
        ),
        (
            {"width": {"type": "int", "low": 0, "high": 8, "log": True}},
            "space.width: a log range needs low >= 1",
        ),
        (
            {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0}},
            "space.dropout: step must be > 0",
        ),
        (
            {"weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True, "step": 0.1}},
            "space.weight_decay: log and step cannot be combined",
        ),
        ({"dropout": {"type": "uniform", "low": 0, "high": 1}}, "space.dropout: a distribution"),
        ({"dropout": {"low": 0, "high": 1}}, "space.dropout: a distribution needs type"),
        (
            {"dropout": {"type": "float", "low": 0, "high": 0.5, "lo": 1}},
            "space.dropout.lo: unknown key for a float distribution",
        ),
        ({"dropout": {"type": "float", "low": 0}}, "space.dropout.high:"),
        ({"optimizer": {"type": "categorical", "choices": []}}, "space.optimizer:"),
        ({"dropout": [0.1, 0.2]}, "space.dropout: expected a value or a distribution"),
        ({"bogus": 1}, "space.bogus: unknown parameter"),
        ({"train.dropout": 0.1}, "space.train.dropout: unknown parameter"),
        ({"model.lr": 0.1}, "space.model.lr: unknown parameter"),
        ({"device": "cpu"}, "space.device: unknown parameter"),
        ({"train.compile": True}, "space.train.compile: unknown parameter"),
        ({"lr": 0.1, "train.lr": 0.2}, "space.train.lr: 'lr' is already given as space.lr"),
        (
            {"regularization.dropout": 0.1, "dropout": 0.2},
            "space.dropout: 'dropout' is already given as space.regularization.dropout",
        ),
        (
            {"optimizer": {"type": "categorical", "choices": ["adamw", "adam"]}},
            "space.optimizer: 'adam' is not a valid train.optimizer",
        ),
        ({"optimizer": "rmsprop"}, "space.optimizer: 'rmsprop' is not a valid train.optimizer"),
        (
            {"width": {"type": "int", "low": 0, "high": 8}},
            "space.width: 0 is not a valid model.width",
        ),
        ({"lr": 0}, "space.lr: 0 is not a valid train.lr"),
        (
            {"model.name": {"type": "categorical", "choices": ["small-cnn", "nope"]}},
            "space.model.name: 'nope' is not a valid model.name",
        ),
        (  # not "space.width.choices.0.bool: Input should be a valid boolean"
            {"width": {"type": "categorical", "choices": [[1], 32]}},
            "space.width.choices.0: expected a number, a string, true/false or null, got [1]",
        ),
    ],
)
def test_bad_entries_name_the_entry(space: dict[str, Any], expected: str) -> None:
    message = _space_error(space)
    assert message.startswith(expected), message


def test_unknown_parameter_lists_searchable_names() -> None:
    message = _space_error({"bogus": 1})
    for name in (*REGULARIZERS, "lr", "optimizer", "width", "epochs"):
        assert name in message


def test_load_config_checks_the_space() -> None:
    with pytest.raises(UserError, match=r"^space\.dropout: 1\.0 is outside"):
        load_config(overrides=["space.dropout=1.0"])


# --------------------------------------------------------------------------- parsed entries


def test_default_space_entries() -> None:
    space = SearchSpace.from_config(load_config())
    assert [e.name for e in space.searched] == list(CONTRACT)
    assert space.fixed_values() == {"cutmix_alpha": 0.0, "cutout": 0.0, "drop_path": 0.0}
    assert {e.section for e in space.entries} == {"regularization"}


@pytest.mark.parametrize(
    ("key", "name", "section"),
    [
        ("lr", "lr", "train"),
        ("train.lr", "lr", "train"),
        ("optimizer", "optimizer", "train"),
        ("width", "width", "model"),
        ("model.width", "width", "model"),
        ("model.name", "name", "model"),
        ("dropout", "dropout", "regularization"),
        ("regularization.dropout", "dropout", "regularization"),
    ],
)
def test_bare_and_dotted_keys(key: str, name: str, section: str) -> None:
    value = {"lr": 0.01, "optimizer": "sgd", "width": 8, "name": "small-cnn", "dropout": 0.1}
    space = _space({key: value[name]})
    (entry,) = space.entries
    assert (entry.name, entry.section, entry.searched) == (name, section, False)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("seed", range(5))
def test_default_space_samples_inside_bounds(seed: int) -> None:
    space = SearchSpace.from_config(load_config())
    trial = _trial(seed)
    cfg = space.sample(trial)
    assert isinstance(cfg, TrialConfig)
    assert set(trial.params) == set(CONTRACT)
    reg = cfg.regularization
    for name in CONTRACT:
        dist = DEFAULT_SPACE[name]
        value = getattr(reg, name)
        assert trial.params[name] == value
        assert dist["low"] <= value <= dist["high"], (name, value)
    # Fixed entries are not Optuna parameters but reach the trial config.
    assert (reg.cutmix_alpha, reg.cutout, reg.drop_path) == (0.0, 0.0, 0.0)


def test_log_range_is_sampled_on_a_log_scale() -> None:
    space = _space({"weight_decay": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [space.sample(study.ask()).regularization.weight_decay for _ in range(300)]
    assert all(1e-6 <= v <= 1e-1 for v in values)
    # Uniform in log space: about 4 in 5 values below 1e-2 (a linear range gives about 1 in 10).
    below = sum(v < 1e-2 for v in values) / len(values)
    assert 0.65 < below < 0.92


def test_fixed_values_are_not_params_but_land_in_trial_config() -> None:
    space = _space(
        {
            "dropout": 0.25,
            "cutout": 0.5,
            "mixup_alpha": 0.2,
            "lr": 0.05,
            "optimizer": "sgd",
            "width": 8,
            "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
        }
    )
    trial = _trial()
    cfg = space.sample(trial)
    assert set(trial.params) == {"label_smoothing"}
    assert cfg.regularization.dropout == 0.25
    assert cfg.regularization.cutout == 0.5
    assert cfg.regularization.mixup_alpha == 0.2
    assert cfg.train.lr == 0.05
    assert cfg.train.optimizer == "sgd"
    assert cfg.model.width == 8
    assert 0.0 <= cfg.regularization.label_smoothing <= 0.2


def test_train_and_model_keys_are_searched_into_their_sections() -> None:
    config = StudyConfig(
        space={
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
            "model.width": {"type": "int", "low": 4, "high": 12, "step": 4},
            "train.batch_size": {"type": "categorical", "choices": [16, 32]},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
        train={"epochs": 3, "momentum": 0.8},
        early_stopping={"patience": 2},
    )
    space = SearchSpace.from_config(config)
    seen_optimizers, seen_widths = set(), set()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        cfg = space.sample(trial)
        # Optuna names are always the bare names.
        assert set(trial.params) == {"lr", "optimizer", "width", "batch_size", "dropout"}
        assert cfg.train.lr == trial.params["lr"]
        assert 1e-4 <= cfg.train.lr <= 1e-1
        assert cfg.train.optimizer == trial.params["optimizer"]
        assert cfg.train.batch_size in (16, 32)
        assert cfg.model.width in (4, 8, 12)
        assert isinstance(cfg.model.width, int)
        assert 0.0 <= cfg.regularization.dropout <= 0.5
        # Unsearched settings come from the study config.
        assert cfg.train.epochs == 3
        assert cfg.train.momentum == 0.8
        assert cfg.model.name == "auto"
        assert cfg.early_stopping.patience == 2
        assert cfg.objective == config.objective
        seen_optimizers.add(cfg.train.optimizer)
        seen_widths.add(cfg.model.width)
    assert seen_optimizers == {"adamw", "sgd"}
    assert seen_widths == {4, 8, 12}


def test_entries_absent_from_the_space_keep_regularization_defaults() -> None:
    cfg = _space({"dropout": 0.1}).sample(_trial())
    assert cfg.regularization == Regularization(dropout=0.1)


def test_resolve_from_stored_params() -> None:
    space = SearchSpace.from_config(
        StudyConfig(
            space={
                **DEFAULT_SPACE,
                "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            }
        )
    )
    params = dict.fromkeys(CONTRACT, 0.1) | {"lr": 0.02}
    cfg = space.resolve(params)
    assert cfg.train.lr == 0.02
    assert cfg.regularization == Regularization(
        weight_decay=0.1, dropout=0.1, aug_strength=0.1, mixup_alpha=0.1, label_smoothing=0.1
    )


def test_a_null_choice_is_the_key_s_own_auto() -> None:
    space = _space({"width": {"type": "categorical", "choices": [None, 32]}})
    assert {space.resolve({"width": w}).model.width for w in (None, 32)} == {None, 32}
    assert space.sample(_trial()).model.width in (None, 32)


def test_regularization_values_are_floats() -> None:
    cfg = _space({"cutout": {"type": "categorical", "choices": [0, 1]}}).sample(_trial())
    assert isinstance(cfg.regularization.cutout, float)


def test_int_fields_sample_ints() -> None:
    space = _space({"epochs": {"type": "int", "low": 1, "high": 3}})
    cfg = space.sample(_trial())
    assert isinstance(cfg.train.epochs, int)
    assert 1 <= cfg.train.epochs <= 3


@pytest.mark.parametrize("key", ["epochs", "batch_size", "width"])
def test_float_range_over_an_int_field_is_refused_or_sampled_as_int(key: str) -> None:
    try:
        space = _space({key: {"type": "float", "low": 2, "high": 9}})
    except UserError as exc:
        assert str(exc).startswith(f"space.{key}:")
        return
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        cfg = space.sample(study.ask())
        value = getattr(cfg.model if key == "width" else cfg.train, key)
        assert isinstance(value, int), value


# --------------------------------------------------------------------------- grid


def test_grid_of_step_and_categorical_entries() -> None:
    space = _space(
        {
            "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
            "width": {"type": "int", "low": 4, "high": 16, "step": 4},
            "epochs": {"type": "int", "low": 1, "high": 3},
            "cutout": 0.25,
        }
    )
    grid = space.grid()
    assert grid == {
        "dropout": [0.0, 0.1, 0.2, 0.3],
        "optimizer": ["adamw", "sgd"],
        "width": [4, 8, 12, 16],
        "epochs": [1, 2, 3],
    }


def test_grid_float_step_not_dividing_the_range_stays_inside() -> None:
    grid = _space({"label_smoothing": {"type": "float", "low": 0.0, "high": 0.25, "step": 0.1}})
    values = grid.grid()["label_smoothing"]
    assert values == pytest.approx([0.0, 0.1, 0.2])
    assert all(math.isfinite(v) and v <= 0.25 for v in values)


def test_grid_needs_a_step_for_floats() -> None:
    space = SearchSpace.from_config(load_config())
    with pytest.raises(UserError, match=r"^space\.weight_decay: .*step"):
        space.grid()


def test_grid_sampler_visits_every_point() -> None:
    space = _space(
        {
            "dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    seen = set()

    def objective(trial: optuna.Trial) -> float:
        cfg = space.sample(trial)
        seen.add((round(cfg.regularization.dropout, 6), cfg.train.optimizer))
        return 0.0

    study.optimize(objective, n_trials=10)  # the grid sampler stops the study after 6
    assert len(study.trials) == 6
    assert seen == {(d, o) for d in (0.0, 0.1, 0.2) for o in ("adamw", "sgd")}


# --------------------------------------------------------------------------- one parse, one table


def test_the_regularizer_table_and_the_regularization_fields_agree() -> None:
    assert list(REGULARIZERS) == [f.name for f in fields(Regularization)]
    assert all(f.default == 0.0 for f in fields(Regularization)), "a regularizer is off unset"
    assert CORE_REGULARIZERS == CONTRACT
    assert list(DEFAULT_SPACE) == list(REGULARIZERS)
    assert list(DEFAULT_BASELINE) == list(CORE_REGULARIZERS)
    for name, row in REGULARIZERS.items():
        assert row.low <= 0.0 < row.high, name  # 0 is off, and allowed
        assert (name in CORE_REGULARIZERS) == (row.baseline is not None) == row.core


def test_the_space_is_parsed_once_per_config(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = SearchSpace.from_config
    parsed: list[StudyConfig] = []

    def counted(cls: type[SearchSpace], config: StudyConfig) -> SearchSpace:
        parsed.append(config)
        return parse(config)

    monkeypatch.setattr(SearchSpace, "from_config", classmethod(counted))
    grid = {"dropout": {"type": "categorical", "choices": [0.0, 0.5]}, "weight_decay": 0.01}
    config = validate_config({"space": grid, "search": {"sampler": "grid"}, "baseline": None})
    space = space_of(config)
    assert space_of(config) is space and space.config is config
    make_sampler(config)  # the grid sampler's grid
    assert not enqueue_baseline(optuna.create_study(), config)  # reads the baseline's params
    assert parsed == [config], "validated, then read by every reader, parsed once"


def test_a_copy_gets_its_own_space() -> None:
    config = StudyConfig(space={"dropout": 0.1, "lr": {"type": "float", "low": 0.01, "high": 0.1}})
    space = space_of(config)
    other = config.model_copy(update={"space": {"dropout": 0.3}})
    assert space_of(other) is not space and space_of(other).fixed_values() == {"dropout": 0.3}
    assert space_of(config) is space, "the original keeps its own"
    # A copy whose sections change resolves against its own (the space refers to its config).
    train = config.train.model_copy(update={"epochs": 3})
    for copied in (
        config.model_copy(update={"train": train}),
        config.model_copy(update={"train": train}, deep=True),
    ):
        assert space_of(copied).config is copied
        assert space_of(copied).resolve({}).train.epochs == 3
    assert space_of(copy.copy(config)) is not space
    # The kept space is no part of what a config says.
    assert config == StudyConfig(space=dict(config.space)) == config.model_copy()
