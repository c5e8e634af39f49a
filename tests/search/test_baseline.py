"""The baseline recipe: what it trains, how it is enqueued, how a bad one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.config.schema import DEFAULT_BASELINE
from search.config.space import SearchSpace
from search.core.errors import UserError
from search.core.records import BASELINE, PHASE_ATTR, baseline_trial
from search.study.studies import create_or_resume, enqueue_baseline
from search.study.studyfile import load_config


def test_the_default_baseline_is_the_seed_recipe_with_the_other_regularizers_off() -> None:
    config = load_config()
    assert config.baseline == DEFAULT_BASELINE
    values = SearchSpace.from_config(config).baseline_values()
    assert values == {**DEFAULT_BASELINE, "cutmix_alpha": 0.0, "cutout": 0.0, "drop_path": 0.0}


def test_a_fixed_regularizer_keeps_its_value_and_a_searched_lr_the_file_s() -> None:
    config = load_config(
        overrides=[
            "space.cutout=0.2",
            "space.lr={type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
            "train.lr=0.002",
            "baseline.dropout=0.3",
        ]
    )
    space = SearchSpace.from_config(config)
    values = space.baseline_values()
    assert values is not None
    assert values["cutout"] == 0.2 and values["dropout"] == 0.3 and values["lr"] == 0.002
    assert values["mixup_alpha"] == DEFAULT_BASELINE["mixup_alpha"]  # merged with the recipe
    params = space.baseline_params()
    assert params is not None and set(params) == {e.name for e in space.searched}


def test_a_baseline_mapping_is_the_whole_recipe_in_a_file_and_in_set(tmp_path: Path) -> None:
    """`baseline: {dropout: 0.3}` is that recipe, the other regularizers off: what the docs
    say, and not the default recipe with dropout 0.3. An empty one is every regularizer off
    (`bench --only fashion`'s plain network trained the default recipe before this)."""
    study_file = tmp_path / "s.yaml"
    study_file.write_text("baseline: {dropout: 0.3}\n")
    zeros = {name: 0.0 for name in load_config().space}
    for config in (load_config(study_file), load_config(overrides=["baseline={dropout: 0.3}"])):
        assert config.baseline == {"dropout": 0.3}
        assert SearchSpace.from_config(config).baseline_values() == {**zeros, "dropout": 0.3}
    from search.bench.fashion import PLAIN

    plain = load_config(overrides=PLAIN)
    assert SearchSpace.from_config(plain).baseline_values() == zeros
    stored = load_config(base={"baseline": {"dropout": 0.3}})  # a study's stored config
    assert stored.baseline == {"dropout": 0.3}


@pytest.mark.parametrize("off", ["none", "off", "null"])
def test_baseline_none_turns_it_off(off: str) -> None:
    config = load_config(overrides=[f"baseline={off}"])
    assert config.baseline is None
    assert SearchSpace.from_config(config).baseline_values() is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("baseline.dropout=1.5", "baseline.dropout: 1.5 is outside the allowed range [0, 1)"),
        ("baseline.lr=0.1", "baseline.lr: not a regularizer"),
    ],
)
def test_a_bad_baseline_names_the_key(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")):
        SearchSpace.from_config(load_config(overrides=[override]))


def test_the_baseline_is_enqueued_once_and_first(tmp_path: Path) -> None:
    from search.study.storage import open_storage

    config = load_config(overrides=["study=b"])
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study, created = create_or_resume(config, storage)
    assert created
    assert not enqueue_baseline(study, config), "a second worker does not enqueue it again"
    (waiting,) = study.get_trials()
    assert waiting.state.name == "WAITING" and waiting.number == 0
    assert waiting.user_attrs[PHASE_ATTR] == BASELINE
    # What it trains with: the recipe, and the fixed-off regularizers the recipe leaves out.
    off = {"cutmix_alpha": 0.0, "cutout": 0.0, "drop_path": 0.0}
    assert waiting.user_attrs["overrides"] == {**DEFAULT_BASELINE, **off}
    assert waiting.system_attrs["fixed_params"] == DEFAULT_BASELINE  # Optuna keeps them here
    assert baseline_trial(study) is None  # not run yet


def test_a_recipe_value_outside_the_searched_choices_trains_as_an_override(
    tmp_path: Path,
) -> None:
    """Searched choices without the recipe's dropout 0.5, a searched optimizer without the
    file's adamw, a width range beside `width: auto`: Optuna refused the enqueued values and
    trial 0, the recipe, failed. It trains them as overrides, without those params."""
    import optuna

    from search.study.storage import open_storage

    config = load_config(
        overrides=[
            "study=c",
            "space.dropout={type: categorical, choices: [0.0, 0.1, 0.3]}",
            "space.optimizer={type: categorical, choices: [sgd]}",
            "space.width={type: int, low: 16, high: 64, step: 16}",
        ]
    )
    study, _ = create_or_resume(config, open_storage(f"sqlite:///{tmp_path}/s.db"))
    space = SearchSpace.from_config(config)
    trial = study.ask()
    cfg = space.sample(trial, trial.user_attrs["overrides"])
    assert cfg.regularization.dropout == 0.5 and cfg.train.optimizer == "adamw"
    assert cfg.model.width is None  # auto
    assert cfg.regularization.weight_decay == DEFAULT_BASELINE["weight_decay"]
    assert set(trial.params) == {"weight_decay", "aug_strength", "mixup_alpha", "label_smoothing"}
    study.tell(trial, 0.5)
    from search.report.summary import trials_table

    columns = {c.header: c._cells for c in trials_table(study).columns}
    assert columns["dropout"] == ["0.5"], "the table shows what the recipe trained with"
    searched = study.ask()  # the next trial samples the whole space
    cfg = space.sample(searched)
    assert cfg.regularization.dropout in (0.0, 0.1, 0.3) and cfg.train.optimizer == "sgd"
    assert {"dropout", "optimizer", "width"} <= set(searched.params)
    assert isinstance(
        searched.distributions["dropout"], optuna.distributions.CategoricalDistribution
    )


def test_an_ablation_of_a_log_range_regularizer_shows_what_it_trained_with() -> None:
    """Off (0) lies outside weight decay's log range: the ablation trial has no such param,
    and what `status` and the report show of it is the 0 it trained with."""
    import optuna

    from search.report.summary import trained_params

    config = load_config()
    space = SearchSpace.from_config(config)
    study = optuna.create_study(direction="maximize")
    champion = {"weight_decay": 1e-3, "dropout": 0.2, "aug_strength": 0.3, "mixup_alpha": 0.1,
                "label_smoothing": 0.05}  # fmt: skip
    overrides = {"weight_decay": 0.0, "seed": 1000}
    study.enqueue_trial(champion, user_attrs={"ablate": "weight_decay", "overrides": overrides})
    trial = study.ask()
    cfg = space.sample(trial, {"weight_decay": 0.0})
    assert cfg.regularization.weight_decay == 0.0 and cfg.regularization.dropout == 0.2
    study.tell(trial, 0.5)
    shown = trained_params(study.trials[0])
    assert shown["weight_decay"] == 0.0 and shown["seed"] == 1000 and shown["dropout"] == 0.2


def test_a_grid_study_runs_its_grid_only(tmp_path: Path) -> None:
    from search.study.storage import open_storage

    repo = Path(__file__).resolve().parents[2]
    config = load_config(repo / "studies" / "exercise-dropout.yaml")
    study, _ = create_or_resume(config, open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert study.get_trials() == []


@pytest.mark.parametrize(
    ("direction", "best_value", "base_value", "gain"),
    [("maximize", 0.97, 0.91, 0.06), ("minimize", 0.20, 0.35, 0.15)],
)
def test_the_gain_is_positive_when_the_best_trial_beats_the_recipe(
    tmp_path: Path, direction: str, best_value: float, base_value: float, gain: float
) -> None:
    import optuna

    from search.report.summary import best_summary, verdict
    from search.study.storage import open_storage

    study = optuna.create_study(
        storage=open_storage(f"sqlite:///{tmp_path}/g.db"), direction=direction
    )
    for value, phase in ((base_value, BASELINE), (best_value, "search")):
        trial = study.ask()
        trial.suggest_float("dropout", 0.0, 0.6)
        trial.set_user_attr(PHASE_ATTR, phase)
        study.tell(trial, value)
    summary = best_summary(study)
    assert summary is not None and summary["trial"] == 1
    assert summary["gain"] == pytest.approx(gain)
    assert summary["baseline"]["trial"] == 0
    metric = "val_accuracy" if direction == "maximize" else "val_loss"
    shown = "gain +6.0 pt" if direction == "maximize" else "gain +0.15"
    assert shown in verdict(summary, metric)
