"""Study configuration: defaults, study files merged over them, `--set` overrides, and the
one-line `UserError` every mistake turns into."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.config.overrides import apply_overrides, deep_merge
from search.config.schema import DEFAULT_SPACE, DEFAULTS, StudyConfig
from search.core.errors import UserError
from search.study.studyfile import load_config


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _error(**kwargs: object) -> str:
    with pytest.raises(UserError) as exc:
        load_config(**kwargs)  # type: ignore[arg-type]
    message = str(exc.value)
    assert "\n" not in message, message
    assert message.strip() == message and message
    return message


# --------------------------------------------------------------------------- defaults


def test_defaults_load() -> None:
    config = load_config()
    assert isinstance(config, StudyConfig)
    assert config.study == "digits"
    assert config.dataset.name == "digits"
    assert config.model.name == "auto" and config.train.batch_size == "auto"
    assert config.train.epochs == 20
    assert config.objective.metric == "val_accuracy"
    assert config.objective.direction == "maximize"
    assert config.search.sampler.name == "tpe"
    assert config.search.pruner.name == "successive-halving"
    assert config.space == DEFAULT_SPACE


def test_defaults_are_not_mutated_by_loading() -> None:
    before = deep_merge({}, DEFAULTS)
    load_config(overrides=["train.epochs=3", "space.dropout=0.2"])
    assert before == DEFAULTS


# --------------------------------------------------------------------------- study files


def test_study_file_changes_only_stated_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "study.yaml",
        "study: my-study\ntrain:\n  epochs: 3\n  lr: 0.01\nspace:\n  dropout: 0.1\n",
    )
    config = load_config(path)
    defaults = load_config()
    assert config.study == "my-study"
    assert config.train.epochs == 3
    assert config.train.lr == 0.01
    # Siblings of the stated keys keep their defaults.
    assert config.train.batch_size == defaults.train.batch_size
    assert config.train.optimizer == defaults.train.optimizer
    assert config.dataset == defaults.dataset
    assert config.search == defaults.search
    # `space: {dropout: 0.1}` fixes dropout and keeps every other default entry.
    assert config.space["dropout"] == 0.1
    assert config.space == {**DEFAULT_SPACE, "dropout": 0.1}


def test_weights_under_the_home_folder_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`weights: ~/…` in a study file (the docs' own example) names the user's home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path = _write(tmp_path / "study.yaml", "model:\n  weights: ~/w/resnet.safetensors\n")
    assert load_config(path).model.weights == tmp_path / "w" / "resnet.safetensors"


def test_study_file_partial_distribution_merges_with_default_range(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", "space:\n  dropout: {high: 0.3}\n")
    assert load_config(path).space["dropout"] == {"type": "float", "low": 0.0, "high": 0.3}


def test_study_file_distribution_with_type_replaces_default(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.yaml", "space:\n  dropout: {type: categorical, choices: [0.0, 0.5]}\n"
    )
    assert load_config(path).space["dropout"] == {"type": "categorical", "choices": [0.0, 0.5]}


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_study_file_means_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(_write(tmp_path / "s.yaml", text)) == load_config()


def test_missing_study_file(tmp_path: Path) -> None:
    message = _error(path=tmp_path / "nope.yaml")
    assert "not found" in message
    assert "nope.yaml" in message


def test_bad_yaml_study_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", "train:\n  epochs: [1, 2\n  lr: 3\n")
    message = _error(path=path)
    assert "bad.yaml" in message
    assert "not valid YAML" in message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("42\n", "int")])
def test_non_mapping_study_file(tmp_path: Path, text: str, kind: str) -> None:
    message = _error(path=_write(tmp_path / "list.yaml", text))
    assert "list.yaml" in message
    assert "mapping" in message
    assert kind in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("space:\n  yes: 1\n", "space.yes: unknown parameter"),
        ("train: {on: 3}\n", "train.on: unknown key"),
    ],
)
def test_a_yaml_boolean_word_as_a_key_is_named_as_written(
    tmp_path: Path, text: str, expected: str
) -> None:
    """YAML 1.1 reads `yes`/`on` as true: as a key it is still the word the user wrote."""
    assert _error(path=_write(tmp_path / "s.yaml", text)).startswith(expected)
    assert load_config(overrides=["tracking.register_model=no"]).tracking.register_model is False


def test_unknown_key_in_study_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", "train:\n  epoch: 3\n")
    assert _error(path=path) == "train.epoch: unknown key; did you mean 'epochs'?"


def test_a_misspelt_key_is_named_with_the_nearest_known_one(tmp_path: Path) -> None:
    assert _error(overrides=["search.confirm.topk=2"]) == (
        "search.confirm.topk: unknown key; did you mean 'top_k'?"
    )
    assert _error(overrides=["zzz=1"]) == "zzz: unknown key", "nothing close: no guess"


# --------------------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    ("assignment", "attribute", "expected"),
    [
        ("train.epochs=3", ("train", "epochs"), 3),
        ("train.lr=1e-2", ("train", "lr"), 0.01),
        ("train.lr=0.5", ("train", "lr"), 0.5),
        ("train.optimizer=sgd", ("train", "optimizer"), "sgd"),
        ("train.compile=true", ("train", "compile"), True),
        ("search.n_trials=7", ("search", "n_trials"), 7),
        ("early_stopping.patience=null", ("early_stopping", "patience"), None),
        ("study=other.study_1", ("study",), "other.study_1"),
    ],
)
def test_set_parses_yaml_values(
    assignment: str, attribute: tuple[str, ...], expected: object
) -> None:
    value: object = load_config(overrides=[assignment])
    for part in attribute:
        value = getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)


def test_set_mapping_with_type_replaces_space_entry() -> None:
    config = load_config(overrides=["space.dropout={type: float, low: 0, high: 0.5}"])
    assert config.space["dropout"] == {"type": "float", "low": 0, "high": 0.5}
    assert config.space["weight_decay"] == DEFAULT_SPACE["weight_decay"]


def test_set_fixed_space_value() -> None:
    config = load_config(overrides=["space.mixup_alpha=0"])
    assert config.space == {**DEFAULT_SPACE, "mixup_alpha": 0}


def test_set_mapping_without_type_merges() -> None:
    config = load_config(overrides=["space.dropout={high: 0.2}"])
    assert config.space["dropout"] == {"type": "float", "low": 0.0, "high": 0.2}


def test_set_applies_in_order_and_after_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", "train: {epochs: 3}\n")
    config = load_config(path, overrides=["train.epochs=4", "train.epochs=5"])
    assert config.train.epochs == 5


def test_flags_override_set_and_ignore_none() -> None:
    config = load_config(
        overrides=["search.n_trials=3"],
        flags={"search.n_trials": 9, "search.timeout": None},
    )
    assert config.search.n_trials == 9
    assert config.search.timeout is None


def test_apply_overrides_returns_a_new_mapping() -> None:
    base = {"train": {"epochs": 1, "lr": 0.1}}
    out = apply_overrides(base, ["train.epochs=2", "new.key=x"])
    assert out == {"train": {"epochs": 2, "lr": 0.1}, "new": {"key": "x"}}
    assert base == {"train": {"epochs": 1, "lr": 0.1}}


def test_sampler_shorthand_and_options() -> None:
    config = load_config(overrides=["search.sampler={name: random, seed: 3}"])
    assert config.search.sampler.name == "random"
    assert config.search.sampler.options == {"seed": 3}
    config = load_config(overrides=["search.pruner=none"])
    assert config.search.pruner.name == "none"
    assert config.search.pruner.options == {}


def test_exponents_without_a_dot_are_numbers_in_files_and_in_set(tmp_path: Path) -> None:
    """YAML 1.1 read `1e-4` as the string '1e-4': a fixed weight decay was refused as "outside
    the allowed range", categorical choices stayed strings."""
    (tmp_path / "s.yaml").write_text("space:\n  weight_decay: 1e-4\ntrain: {lr: 3E-3}\n")
    config = load_config(tmp_path / "s.yaml")
    assert config.space["weight_decay"] == 1e-4 and config.train.lr == 3e-3
    config = load_config(overrides=["space.lr={type: categorical, choices: [1e-3, 3e-3]}"])
    assert config.space["lr"]["choices"] == [1e-3, 3e-3]


def test_another_sampler_keeps_the_seed_however_it_is_named(tmp_path: Path) -> None:
    """docs/study-files.md: "A sampler keeps its seed". `sampler: random` in a file or
    `--set search.sampler=random` dropped it, and two launches sampled differently."""
    (tmp_path / "s.yaml").write_text("search:\n  sampler: random\n")
    assert load_config(tmp_path / "s.yaml").search.sampler.options == {"seed": 0}
    for item in ("random", "{name: random}"):
        config = load_config(overrides=["search.sampler.seed=7", f"search.sampler={item}"])
        assert (config.search.sampler.name, config.search.sampler.options) == (
            "random",
            {"seed": 7},
        )
    assert load_config(
        overrides=["search.sampler={name: qmc, seed: 3}"]
    ).search.sampler.options == {"seed": 3}
    unseeded = load_config(overrides=["search.sampler={name: random, seed: null}"])
    assert unseeded.search.sampler.options == {"seed": None}


@pytest.mark.parametrize("item", ["noequals", "=3", "train..epochs=3", ".epochs=1", "train.=1"])
def test_set_bad_syntax(item: str) -> None:
    message = _error(overrides=[item])
    assert message.startswith("--set")
    assert "KEY.SUB=VALUE" in message


def test_set_bad_yaml_value() -> None:
    message = _error(overrides=["train.epochs=[1, 2"])
    assert message.startswith("--set train.epochs:")
    assert "not valid YAML" in message


def test_set_below_a_scalar() -> None:
    message = _error(overrides=["train.epochs.x=1"])
    assert "train.epochs" in message
    assert "not a mapping" in message


# --------------------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    ("overrides", "prefix", "detail"),
    [
        (["bogus=1"], "bogus:", "unknown key"),
        (["train.epoch=3"], "train.epoch:", "unknown key"),
        (["dataset.nmae=digits"], "dataset.nmae:", "unknown key"),
        (["train.epochs=abc"], "train.epochs:", "'abc'"),
        (["train.epochs=0"], "train.epochs:", "greater than or equal to 1"),
        (["train.lr=-1"], "train.lr:", "greater than 0"),
        (["train.optimizer=adam"], "train.optimizer:", "'adam'"),
        (["train.device=gpu"], "train.device:", "'gpu'"),
        (["dataset.val_fraction=1.5"], "dataset.val_fraction:", "1.5"),
        (["dataset.val_fraction=0.5", "dataset.test_fraction=0.5"], "dataset:", "< 0.9"),
        (["model.name=nope"], "model.name:", "unknown model 'nope'"),
        (["search.sampler=foo"], "search.sampler.name:", "unknown sampler 'foo'"),
        (["search.sampler={name: bar}"], "search.sampler.name:", "unknown sampler 'bar'"),
        (["search.pruner=foo"], "search.pruner.name:", "unknown pruner 'foo'"),
        (["study=a b"], "study:", "not a valid study name"),
        (["study=-lead"], "study:", "not a valid study name"),
        (["study=x/y"], "study:", "not a valid study name"),
        (["space.dropout=1.5"], "space.dropout:", "outside the allowed range"),
        (["space.nope=1"], "space.nope:", "unknown parameter"),
    ],
)
def test_errors_name_the_key(overrides: list[str], prefix: str, detail: str) -> None:
    message = _error(overrides=overrides)
    assert message.startswith(prefix), message
    assert detail in message


def test_several_errors_are_counted_on_one_line() -> None:
    message = _error(overrides=["train.epochs=0", "train.lr=0"])
    assert message.startswith("train.epochs:")
    assert "(and 1 more)" in message


def test_val_loss_with_maximize_is_an_error() -> None:
    message = _error(overrides=["objective.metric=val_loss", "objective.direction=maximize"])
    assert message.startswith("objective:")
    assert "val_loss" in message
    assert "minimize" in message


@pytest.mark.parametrize(
    ("metric", "direction"), [("val_loss", "minimize"), ("val_accuracy", "maximize")]
)
def test_direction_derived_from_metric(metric: str, direction: str) -> None:
    config = load_config(overrides=[f"objective.metric={metric}"])
    assert config.objective.direction == direction


def test_direction_derived_from_metric_in_study_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", "objective:\n  metric: val_loss\n")
    assert load_config(path).objective.direction == "minimize"


def test_matching_explicit_direction_is_accepted() -> None:
    config = load_config(overrides=["objective.metric=val_loss", "objective.direction=minimize"])
    assert config.objective.direction == "minimize"


def test_portable_dict_drops_machine_local_keys() -> None:
    config = load_config(
        overrides=[
            "storage=postgresql://u:secret@db/x",
            "tracking.uri=http://u:pw@mlflow",
            "train.device=cpu",
        ]
    )
    portable = config.portable_dict()
    assert "storage" not in portable
    assert "uri" not in portable["tracking"]
    assert "device" not in portable["train"]
    assert "secret" not in repr(portable)
    assert portable["train"]["epochs"] == config.train.epochs
