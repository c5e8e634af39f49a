"""The confirm phase's planning and arithmetic, on deterministic fake training outcomes: the
champion is the best mean over seeds (not the luckiest single trial), the gain and each
regularizer's contribution are paired over seeds with a Student-t interval."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from search.core.records import BASELINE, PHASE_ATTR, SEARCH
from search.core.stats import mean_interval, paired_bootstrap
from search.report.summary import best_summary, verdict
from search.study.evidence import (
    ABLATE_ATTR,
    ABLATION,
    CONFIRM,
    SEED_ATTR,
    SOURCE_ATTR,
    confirm_seeds,
    evidence,
    plan,
)
from search.study.studies import best_trial, count_trials
from search.study.studyfile import load_config
from search.training.evaluation import expected_calibration_error
from tests.helpers import SPACE_DISTRIBUTIONS

# Two searched configurations: A has the luckiest search trial, B is better on average.
A = {"weight_decay": 1e-4, "dropout": 0.1, "aug_strength": 0.0, "mixup_alpha": 0.3,
     "label_smoothing": 0.05}  # fmt: skip
B = {"weight_decay": 1e-3, "dropout": 0.2, "aug_strength": 0.6, "mixup_alpha": 0.0,
     "label_smoothing": 0.1}  # fmt: skip
RECIPE = {"weight_decay": 0.01, "dropout": 0.5, "aug_strength": 0.5, "mixup_alpha": 0.2,
          "label_smoothing": 0.1}  # fmt: skip


def _config(direction_metric: str = "val_accuracy", **confirm: object):
    settings = {"top_k": 2, "seeds": 3, "racing": False, **confirm}
    sets = [f"search.confirm.{k}={str(v).lower()}" for k, v in settings.items()]
    return load_config(overrides=[*sets, f"objective.metric={direction_metric}"])


def _study(config, direction: str = "maximize") -> optuna.Study:
    """An in-memory study holding `config` (as `create_or_resume` stores it)."""
    from search.core.records import CONFIG_ATTR

    study = optuna.create_study(direction=direction)
    study.set_user_attr(CONFIG_ATTR, config.portable_dict())
    return study


def _add(study, value, params, **attrs) -> int:
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=value,
            params=params,
            distributions=SPACE_DISTRIBUTIONS,
            user_attrs=attrs,
        )
    )
    return study.trials[-1].number


def _searched(study) -> tuple[int, int, int]:
    base = _add(study, 0.95, RECIPE, **{PHASE_ATTR: BASELINE})
    a = _add(study, 0.99, A, **{PHASE_ATTR: SEARCH})  # the maximum: partly luck
    b = _add(study, 0.97, B, **{PHASE_ATTR: SEARCH})
    _add(study, 0.90, {**B, "dropout": 0.5}, **{PHASE_ATTR: SEARCH})  # not in the top 2
    return base, a, b


def _run_plan(study, config, outcome) -> list[int]:
    """Add every planned retrain as COMPLETE with `outcome(attrs)`; their numbers."""
    added = []
    for item in plan(study.get_trials(), config, study.direction):
        added.append(_add(study, outcome(item.user_attrs), item.params, **item.user_attrs))
    return added


def _confirmed(study, config) -> tuple[int, int, int]:
    """`_searched`, then its confirm phase run with the `CONFIRMED` values."""
    seeds = confirm_seeds(config, config.search.confirm.seeds)
    base, a, b = _searched(study)
    label = {base: "base", a: "a", b: "b"}
    _run_plan(
        study,
        config,
        lambda attrs: CONFIRMED[label[attrs[SOURCE_ATTR]]][seeds.index(attrs[SEED_ATTR])],
    )
    return base, a, b


CONFIRMED = {  # source label → value per seed index
    "base": [0.93, 0.94, 0.95],
    "a": [0.90, 0.91, 0.92],
    "b": [0.95, 0.96, 0.97],
}


def test_the_champion_is_the_best_mean_over_seeds_not_the_best_single_trial() -> None:
    config = _config()
    seeds = confirm_seeds(config, 3)
    study = _study(config)
    base, a, b = _searched(study)
    assert best_trial(study).number == a  # before the confirm phase: the search maximum
    label = {base: "base", a: "a", b: "b"}

    first = plan(study.get_trials(), config, study.direction)
    assert {(i.user_attrs[SOURCE_ATTR], i.user_attrs[SEED_ATTR]) for i in first} == {
        (s, seed) for s in (base, a, b) for seed in seeds
    }, "the top 2 distinct search configurations and the baseline, 3 fresh seeds each"
    assert all(i.user_attrs[PHASE_ATTR] == CONFIRM for i in first)
    # The baseline's retrains train with its recipe; every retrain with its own seed.
    assert all(i.user_attrs["overrides"]["seed"] == i.user_attrs[SEED_ATTR] for i in first)
    added = _run_plan(
        study,
        config,
        lambda attrs: CONFIRMED[label[attrs[SOURCE_ATTR]]][seeds.index(attrs[SEED_ATTR])],
    )
    assert len(added) == 9
    assert count_trials(study, (TrialState.COMPLETE,)) == 4, "retrains are outside n_trials"

    ev = evidence(study.get_trials(), config, study.direction)
    assert ev is not None and ev.confirm_complete
    assert ev.champion is not None and ev.champion.source == b  # mean 0.96 beats A's 0.91
    # Student-t 95% interval over 3 seeds: mean ± t(0.975, 2) · sd / √3, sd = 0.01.
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert ev.champion.interval.mean == pytest.approx(0.96)
    assert ev.champion.interval.low == pytest.approx(0.96 - half)
    assert ev.champion.interval.high == pytest.approx(0.96 + half)
    # Gain: paired by seed, B − baseline = +0.02 on every seed → an interval of width 0.
    assert ev.gain.mean == pytest.approx(0.02) and ev.gain.low == pytest.approx(0.02)
    # @champion goes to the champion configuration's best-seed retrain (0.97).
    champion = best_trial(study)
    assert champion.user_attrs[SOURCE_ATTR] == b and champion.value == pytest.approx(0.97)


def test_ablation_turns_each_active_regularizer_off_and_measures_its_contribution() -> None:
    config = _config()
    seeds = confirm_seeds(config, 3)
    study = _study(config)
    _base, _a, b = _confirmed(study, config)
    ablation = plan(study.get_trials(), config, study.direction)
    # B has mixup_alpha 0 (already off); the other four are ablated, 3 seeds each.
    assert {i.user_attrs[ABLATE_ATTR] for i in ablation} == {
        "weight_decay", "dropout", "aug_strength", "label_smoothing"
    }  # fmt: skip
    assert len(ablation) == 12 and all(i.user_attrs[PHASE_ATTR] == ABLATION for i in ablation)
    for item in ablation:
        assert item.user_attrs["overrides"][item.user_attrs[ABLATE_ATTR]] == 0.0
        assert item.params == B  # the champion's configuration, one regularizer overridden
    # aug_strength off costs 4, 5 and 6 points on the three seeds; the rest cost nothing.
    drop = {"aug_strength": [0.04, 0.05, 0.06]}
    _run_plan(
        study,
        config,
        lambda attrs: (
            CONFIRMED["b"][seeds.index(attrs[SEED_ATTR])]
            - drop.get(attrs[ABLATE_ATTR], [0.0] * 3)[seeds.index(attrs[SEED_ATTR])]
        ),
    )
    assert plan(study.get_trials(), config, study.direction) == [], "nothing left to plan"
    ev = evidence(study.get_trials(), config, study.direction, val_images=100)
    assert ev.ablation_complete and ev.pending == 0
    aug = ev.contributions["aug_strength"]
    # The interval comes from the noise of the whole confirm phase, pooled over its
    # configurations (B − base and B − A: 4 degrees of freedom), with or without racing.
    # Their differences never vary here, so the noise is its floor, one of 100 validation
    # images: mean ± t(0.975, 4) · 0.01 / √3 — not the aug ablation's own 3-seed spread.
    assert (ev.noise, ev.noise_df) == (pytest.approx(0.01), 4)
    half = 2.7764451051977987 * 0.01 / math.sqrt(3)
    assert (aug.mean, aug.low, aug.high) == pytest.approx((0.05, 0.05 - half, 0.05 + half))
    assert ev.contributions["dropout"].mean == pytest.approx(0.0)

    best = best_summary(study)
    line = verdict(best, "val_accuracy")
    model = best_trial(study)
    assert best["champion_name"] == (
        f"configuration of trial {b}, model from trial {model.number}, "
        f"seed {model.user_attrs[SEED_ATTR]}"
    )
    assert line.startswith(f"champion: {best['champion_name']}; val_accuracy 0.960 ± 0.025")
    assert "contributions: aug_strength +5.0 pt" in line


def test_the_recipe_searched_values_with_another_fixed_value_are_another_configuration() -> None:
    """The recipe trains its fixed regularizers at the recipe's values (overrides, not
    params): a search trial with the recipe's searched values and `space.dropout: 0` trains
    another configuration, and the best one of the search goes to the confirm phase."""
    from search.config.space import space_of
    from search.core.records import OVERRIDES_ATTR

    config = load_config(overrides=["space.dropout=0.0", "search.confirm.top_k=1"])
    space = space_of(config)
    searched = space.baseline_params()
    assert "dropout" not in searched and space.baseline_values()["dropout"] == 0.5
    study = _study(config)
    dists = {k: SPACE_DISTRIBUTIONS[k] for k in searched}

    def add(value: float, params: dict, **attrs: object) -> int:
        trial = create_trial(value=value, params=params, distributions=dists, user_attrs=attrs)
        study.add_trial(trial)
        return study.trials[-1].number

    add(0.80, searched, **{PHASE_ATTR: BASELINE, OVERRIDES_ATTR: space.baseline_values()})
    best = add(0.90, searched, **{PHASE_ATTR: SEARCH})
    add(0.85, {**searched, "mixup_alpha": 0.0}, **{PHASE_ATTR: SEARCH})
    ev = evidence(study.get_trials(), config, study.direction, val_images=1000)
    assert ev is not None and [a.source for a in ev.arms] == [0, best]


def test_a_minimised_metric_counts_a_lower_mean_as_better_and_its_gain_positive() -> None:
    config = _config("val_loss", ablation=False)
    seeds = confirm_seeds(config, 3)
    study = _study(config, "minimize")
    base = _add(study, 0.30, RECIPE, **{PHASE_ATTR: BASELINE})
    a = _add(study, 0.10, A, **{PHASE_ATTR: SEARCH})
    b = _add(study, 0.20, B, **{PHASE_ATTR: SEARCH})
    losses = {base: [0.30, 0.32, 0.34], a: [0.25, 0.26, 0.27], b: [0.20, 0.22, 0.24]}
    _run_plan(study, config, lambda at: losses[at[SOURCE_ATTR]][seeds.index(at[SEED_ATTR])])
    ev = evidence(study.get_trials(), config, study.direction)
    assert ev.champion.source == b
    assert ev.gain.mean == pytest.approx(0.10), "0.32 → 0.22: positive means better"
    assert plan(study.get_trials(), config, study.direction) == [], "ablation: off"


def test_a_larger_seed_count_plans_only_the_missing_retrains() -> None:
    config = _config(seeds=2, ablation=False)
    study = _study(config)
    _searched(study)
    _run_plan(study, config, lambda attrs: 0.9)
    assert plan(study.get_trials(), config, study.direction) == []
    more = plan(study.get_trials(), _config(seeds=3, ablation=False), study.direction)
    assert len(more) == 3, "one more seed for each of the three configurations"
    assert {i.user_attrs[SEED_ATTR] for i in more} == {confirm_seeds(config, 3)[2]}


def test_an_unfinished_retrain_leaves_the_phase_incomplete() -> None:
    config = _config(ablation=False)
    study = _study(config)
    _searched(study)
    items = plan(study.get_trials(), config, study.direction)
    for item in items[:-1]:
        _add(study, 0.9, item.params, **item.user_attrs)
    study.enqueue_trial(items[-1].params, user_attrs=items[-1].user_attrs)  # WAITING
    ev = evidence(study.get_trials(), config, study.direction)
    assert not ev.confirm_complete and ev.champion is None and ev.pending == 1
    assert best_trial(study).user_attrs[PHASE_ATTR] == SEARCH, "still the search's best"


def test_intervals_and_the_paired_bootstrap() -> None:
    assert mean_interval([0.5]).low is None, "one seed: no interval"
    assert mean_interval([]) is None
    iv = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert iv.mean == 2.5 and iv.high - 2.5 == pytest.approx(3.182446305284263 * 1.2909944 / 2)
    a = [True] * 100
    b = [True, False] * 50
    gain, low, high = paired_bootstrap(a, b)
    assert gain == 0.5 and 0.38 < low < 0.5 < high < 0.62
    assert paired_bootstrap(a, b) == (gain, low, high), "seeded: the same interval every time"
    gain, low, high = paired_bootstrap(a, a)
    assert (gain, low, high) == (0.0, 0.0, 0.0)


def test_expected_calibration_error_on_known_cases() -> None:
    confident_right = expected_calibration_error(torch.full((10,), 0.95), torch.ones(10))
    assert confident_right == pytest.approx(0.05, abs=1e-6)
    confident_wrong = expected_calibration_error(torch.ones(10), torch.zeros(10))
    assert confident_wrong == pytest.approx(1.0)
    # Half at 0.6 (60% right), half at 0.9 (90% right): calibrated.
    conf = torch.tensor([0.6] * 10 + [0.9] * 10)
    right = torch.tensor([1] * 6 + [0] * 4 + [1] * 9 + [0])
    assert expected_calibration_error(conf, right) == pytest.approx(0.0, abs=1e-6)


def test_a_grid_study_runs_its_grid_only() -> None:
    config = load_config(Path(__file__).parents[2] / "studies" / "exercise-augmentation.yaml")
    assert config.search.confirm is not None, "confirm is on by default…"
    study = _study(config)
    _add(study, 0.9, A, **{PHASE_ATTR: SEARCH})
    assert evidence(study.get_trials(), config, study.direction) is None, "…but not for a grid"
    assert plan(study.get_trials(), config, study.direction) == []


def test_the_confirm_banner_counts_what_is_retrained() -> None:
    from search.run.runner import _arms_line

    config = _config(top_k=5)
    study = _study(config)
    _searched(study)  # three distinct search configurations completed, fewer than top_k
    assert _arms_line(study, config) == (
        "the 3 best configurations of the search and the baseline recipe"
    )
    assert len(plan(study.get_trials(), config, study.direction)) == (3 + 1) * 3
    config = _config(top_k=2)
    study = _study(config)
    _searched(study)
    assert _arms_line(study, config) == (
        "the 2 best configurations of the search and the baseline recipe"
    )


def test_status_ranks_the_search_and_marks_the_champion_not_a_higher_ablation_retrain(
    tmp_path: Path,
) -> None:
    """An ablation retrain (weight decay off) scores above every confirmed mean: `status`
    still ranks only the search and baseline trials, marks the champion's configuration, and
    lists the retrains apart; the study list names the champion, not the retrain."""
    from rich.console import Console

    from search.report.summary import champion_source, ranked_trials, study_rows, trials_table

    config = _config()
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="abl", storage=storage, direction="maximize")
    from search.core.records import CONFIG_ATTR

    study.set_user_attr(CONFIG_ATTR, config.portable_dict())
    base, a, b = _confirmed(study, config)
    first_seed = confirm_seeds(config, 3)[0]
    ablated = _run_plan(  # one lucky retrain: its mean over the seeds stays below the champion's
        study,
        config,
        lambda attrs: (
            0.999
            if attrs[ABLATE_ATTR] == "weight_decay" and attrs[SEED_ATTR] == first_seed
            else 0.9
        ),
    )
    top = max(study.trials, key=lambda t: t.value or 0.0)
    assert top.number in ablated and top.value == 0.999
    assert champion_source(study) == b
    ranked = ranked_trials(study)
    assert [t.number for t in ranked] == [a, b, base, 3]  # search and baseline, best first
    assert [t.number for t in ranked_trials(study, everything=True)][:4] == [a, b, base, 3]
    console = Console(width=250, record=True)
    console.print(trials_table(study))
    text = console.export_text()
    rows = [line for line in text.splitlines() if "★ champion" in line]
    assert len(rows) == 1 and rows[0].split("│")[1].strip() == str(b)
    assert "retrains of the confirm phase not listed" in text and "0.999" not in text
    (row,) = study_rows(optuna.storages.RDBStorage(storage))
    assert row["best_trial"] != top.number and row["best_value"] != 0.999
    assert row["champion"].startswith(f"configuration of trial {b}, model from trial ")
    # The dashboard's study note: the verdict, the champion by its one name and a link to its
    # trial, and why the dashboard's own "Best Trial" badge (the ablation retrain) is not it.
    from optuna_dashboard import get_note

    from search.report.dashboard import write_best_note

    model = best_trial(study)
    assert write_best_note(study) == model.number
    note = get_note(study)
    assert note.startswith("## Verdict of study `abl`")
    assert verdict(best_summary(study), "value") in note
    assert f"**Champion:** {row['champion']}" in note
    assert f"(/dashboard/studies/{study._study_id}/trials?numbers={model.number})" in note
    assert f"*Best Trial* badge is on [trial {top.number}]" in note and "ablation" in note


def test_configurations_are_compared_on_the_seeds_all_of_them_completed() -> None:
    """A retrain that failed for good (its retries spent): the other configurations are not
    compared with it over more seeds than it has."""
    config = _config()
    seeds = confirm_seeds(config, 3)
    study = _study(config)
    base, a, b = _searched(study)
    label = {base: "base", a: "a", b: "b"}
    for item in plan(study.get_trials(), config, study.direction):
        attrs = item.user_attrs
        if attrs[SOURCE_ATTR] == b and attrs[SEED_ATTR] == seeds[2]:
            study.add_trial(
                create_trial(
                    state=TrialState.FAIL,
                    params=item.params,
                    distributions=SPACE_DISTRIBUTIONS,
                    user_attrs=attrs,
                )
            )
            continue
        value = CONFIRMED[label[attrs[SOURCE_ATTR]]][seeds.index(attrs[SEED_ATTR])]
        _add(study, value, item.params, **attrs)
    ev = evidence(study.get_trials(), config, study.direction)
    assert ev is not None and ev.confirm_complete
    assert {arm.interval.n for arm in ev.arms} == {2}, "every mean over the same two seeds"
    assert ev.champion is not None and ev.champion.source == b
    assert ev.champion.interval.mean == pytest.approx(0.955)  # seeds 1 and 2 only
    assert ev.gain.n == 2


def _c(mean: float, half: float = 0.01) -> dict[str, float]:
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": 3}


_ONE_PASS = "train.min_steps_per_epoch=8"  # the budget before the default became 45 steps


@pytest.mark.parametrize(
    ("overrides", "train_images", "contributions", "suggested"),
    [
        # The digits at 8 steps an epoch: one pass, dropout looked harmful, none clearly paid.
        ([_ONE_PASS], 1_077, {"dropout": _c(-0.007), "weight_decay": _c(0.0)}, 45),
        # Fashion-MNIST 1,000 (batch 64 for 800 images: 13 steps a pass).
        ([_ONE_PASS], 800, {"mixup_alpha": _c(-0.01), "aug_strength": _c(0.005)}, 65),
        ([_ONE_PASS], 1_077, {"dropout": _c(-0.007), "aug_strength": _c(0.02)}, None),  # one pays
        ([_ONE_PASS], 1_077, {"dropout": _c(0.0), "aug_strength": _c(0.004)}, None),  # none hurt
        ([_ONE_PASS], 20_000, {"dropout": _c(-0.007)}, None),  # not a small data set
        ([], 1_077, {"dropout": _c(-0.007)}, None),  # the default budget: 5 passes an epoch
        ([_ONE_PASS, "space.min_steps_per_epoch={type: int, low: 8, high: 64}"], 1_077,
         {"dropout": _c(-0.007)}, None),  # the budget is searched
        ([_ONE_PASS], 1_077, {}, None),  # no ablation
    ],
)  # fmt: skip
def test_the_budget_hint_names_the_passes_where_no_regularizer_paid(
    overrides: list[str],
    train_images: int,
    contributions: dict[str, dict[str, float]],
    suggested: int | None,
) -> None:
    """Small data, one pass an epoch, no regularizer clearly paying and one looking harmful:
    the verdict is followed by the budget that made them pay in docs/benchmarks.md."""
    from search.report.summary import budget_hint

    hint = budget_hint(contributions, load_config(overrides=overrides), train_images)
    if suggested is None:
        assert hint is None
    else:
        assert hint is not None and hint.startswith("hint: no regularizer paid")
        assert f"--set train.min_steps_per_epoch={suggested} gives 5 passes" in hint
        assert f"{train_images:,} images" in hint


def test_epochs_saved_counts_the_search_budget_as_the_report_does() -> None:
    """The baseline trial is one of the search's trials: the verdict's share of epochs saved
    left it out while the report's header ("epochs trained 44 of 60") counted it."""
    from search.study.evidence import epochs_saved

    config = load_config(overrides=["train.epochs=20"])
    study = optuna.create_study(direction="maximize")
    for phase, state, epochs in (
        (BASELINE, TrialState.COMPLETE, 20),
        (SEARCH, TrialState.PRUNED, 4),
        (SEARCH, TrialState.COMPLETE, 20),
        ("confirm", TrialState.COMPLETE, 20),  # a retrain: not the search's
    ):
        study.add_trial(
            create_trial(
                state=state,
                value=0.5 if state == TrialState.COMPLETE else None,
                intermediate_values={epochs: 0.5},
                user_attrs={PHASE_ATTR: phase, "epochs_trained": epochs},
            )
        )
    assert epochs_saved(study, config) == pytest.approx(1 - 44 / 60)
