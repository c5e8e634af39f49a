"""The confirm phase's racing, small-data resplits and ablation feedback, on deterministic
fake training outcomes: which retrains are planned round by round, which configuration stops,
and which one the study answers with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.config.schema import DatasetConfig
from search.core.records import BASELINE, CONFIG_ATTR, PHASE_ATTR, SEARCH, VAL_IMAGES_ATTR
from search.data.dataset import load_dataset
from search.report.summary import best_summary, verdict
from search.study.evidence import (
    ABLATE_ATTR,
    ABLATION,
    CONFIRM,
    SEED_ATTR,
    SOURCE_ATTR,
    SPLIT_ATTR,
    confirm_seeds,
    evidence,
    plan,
)
from search.study.studies import best_trial
from search.study.studyfile import load_config
from tests.helpers import SPACE_DISTRIBUTIONS

RECIPE = {"weight_decay": 0.01, "dropout": 0.5, "aug_strength": 0.5, "mixup_alpha": 0.2,
          "label_smoothing": 0.1}  # fmt: skip


def _params(i: int) -> dict[str, float]:
    return {**RECIPE, "dropout": 0.05 * i}


def _config(**confirm: object):
    settings = {"top_k": 3, "seeds": 3, **confirm}
    return load_config(
        overrides=[f"search.confirm.{k}={str(v).lower()}" for k, v in settings.items()]
    )


def _study(config) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(CONFIG_ATTR, config.portable_dict())
    study.set_user_attr(VAL_IMAGES_ATTR, 1000)  # as `regsearch run` stores it
    return study


def _add(study: optuna.Study, value: float, params: Mapping[str, Any], **attrs: Any) -> int:
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=value,
            params=dict(params),
            distributions=SPACE_DISTRIBUTIONS,
            user_attrs=attrs,
        )
    )
    return study.trials[-1].number


def _search(study: optuna.Study, values: list[float]) -> list[int]:
    """The baseline trial, then one search trial per value (each its own configuration)."""
    numbers = [_add(study, 0.9, RECIPE, **{PHASE_ATTR: BASELINE})]
    numbers += [
        _add(study, v, _params(i + 1), **{PHASE_ATTR: SEARCH}) for i, v in enumerate(values)
    ]
    return numbers


Outcome = Callable[[Mapping[str, Any]], float]


def _run_rounds(
    study: optuna.Study, config, outcome: Outcome, val_images: int | None = 1000
) -> list[list[tuple[Any, ...]]]:
    """Plan, run what was planned with `outcome`, again until nothing is planned: the planned
    retrains of each round as (phase, source, seed, ablate)."""
    rounds = []
    while True:
        todo = plan(study.get_trials(), config, study.direction, val_images=val_images)
        if not todo:
            return rounds
        rounds.append(
            [
                (
                    i.user_attrs[PHASE_ATTR],
                    i.user_attrs[SOURCE_ATTR],
                    i.user_attrs[SEED_ATTR],
                    i.user_attrs.get(ABLATE_ATTR),
                )
                for i in todo
            ]
        )
        for item in todo:
            _add(study, outcome(item.user_attrs), item.params, **item.user_attrs)


# The confirm phase's values, by configuration (the baseline first) and seed: the first two
# searched configurations cross from seed to seed; the baseline and the third are far behind.
TABLE = [
    [0.80, 0.81, 0.80],
    [0.95, 0.96, 0.955],
    [0.955, 0.950, 0.955],
    [0.90, 0.91, 0.90],
]


def _from(table: list[list[float]], numbers: list[int], seeds: list[int]) -> Outcome:
    """A retrain's value from `table`; an ablation costs 5 pt (each regularizer helps)."""

    def outcome(attrs: Mapping[str, Any]) -> float:
        value = table[numbers.index(attrs[SOURCE_ATTR])][seeds.index(attrs[SEED_ATTR])]
        return value - 0.05 if attrs[PHASE_ATTR] == ABLATION else value

    return outcome


def _setup(**confirm: object) -> tuple[Any, optuna.Study, list[int], list[int]]:
    config = _config(**confirm)
    study = _study(config)
    return config, study, _search(study, [0.97, 0.96, 0.95]), confirm_seeds(config, 3)


def test_racing_runs_seeds_in_rounds_and_stops_what_can_no_longer_win() -> None:
    config, study, numbers, seeds = _setup(ablation=False)
    rounds = _run_rounds(study, config, _from(TABLE, numbers, seeds))
    assert [sorted(r) for r in rounds[:2]] == [
        sorted((CONFIRM, n, seed, None) for n in numbers) for seed in seeds[:2]
    ], "every configuration runs the first two seeds, one round at a time"
    # After two seeds the baseline (15 pt behind) and the third configuration (5 pt) could
    # not catch up with one more seed; the two that cross run the third seed.
    assert sorted(rounds[2]) == [(CONFIRM, numbers[1], seeds[2], None),
                                 (CONFIRM, numbers[2], seeds[2], None)]  # fmt: skip
    assert len(rounds) == 3
    ev = evidence(study.get_trials(), config, study.direction, val_images=1000)
    assert ev is not None and ev.confirm_complete and ev.pending == 0
    assert ev.champion is not None and ev.champion.source == numbers[1]
    assert {a.source: a.dropped_after for a in ev.arms if a.dropped_after} == {
        numbers[0]: 2,
        numbers[3]: 2,
    }
    assert (ev.retrains, ev.full_retrains) == (10, 12)
    # The gain is paired on the seeds the baseline ran.
    assert ev.gain is not None and ev.gain.n == 2 and ev.gain.mean == pytest.approx(0.15)
    line = verdict(best_summary(study), "val_accuracy")
    assert "racing ran 10 of 12 retrains" in line


@pytest.mark.parametrize("far_ahead", [False, True])
def test_racing_replayed_on_a_full_phase_is_the_live_race(far_ahead: bool) -> None:
    """`bench --only racing` replays racing on a `racing: false` study's retrains: the same
    retrains, champion and intervals as a live study with racing, also when one
    configuration is left after two seeds (its third seed and the dropped ones' must not
    count) and with the ablation settling on the race's own noise."""
    from search.bench.racing import replay

    table = [row[:] for row in TABLE]
    if far_ahead:
        table[1] = [0.97, 0.98, 0.975]
    live_config, live, numbers, seeds = _setup()
    base = _from(table, numbers, seeds)

    def outcome(attrs: Mapping[str, Any]) -> float:
        if attrs[PHASE_ATTR] == ABLATION and attrs[ABLATE_ATTR] == "dropout":
            return base({**attrs, PHASE_ATTR: CONFIRM}) + 0.006  # off looks a little better
        return base(attrs)

    _run_rounds(live, live_config, outcome)
    ev = evidence(live.get_trials(), live_config, live.direction, val_images=1000)
    assert ev is not None and ev.ablation_complete and ev.champion is not None
    full_config, full, _, _ = _setup(racing=False)
    _run_rounds(full, full_config, outcome)
    replayed = replay(full)
    assert replayed["raced_retrains"] == ev.retrains < replayed["full_retrains"]
    assert replayed["raced_champion"] == f"trial {ev.champion.source}"
    assert replayed["same_champion"] and replayed["replay_complete"]


def test_without_racing_every_seed_of_every_configuration_is_planned_at_once() -> None:
    config, study, numbers, seeds = _setup(ablation=False, racing=False)
    rounds = _run_rounds(study, config, _from(TABLE, numbers, seeds))
    assert len(rounds) == 1 and len(rounds[0]) == 12


def test_configurations_within_the_noise_all_run_every_seed() -> None:
    config, study, numbers, seeds = _setup(ablation=False)
    noisy = [  # the order flips from seed to seed
        [0.94, 0.96, 0.95],
        [0.96, 0.94, 0.95],
        [0.95, 0.95, 0.96],
        [0.955, 0.945, 0.94],
    ]
    rounds = _run_rounds(study, config, _from(noisy, numbers, seeds))
    assert [len(r) for r in rounds] == [4, 4, 4]
    ev = evidence(study.get_trials(), config, study.direction, val_images=1000)
    assert ev is not None and not any(a.dropped_after for a in ev.arms)
    assert ev.retrains == ev.full_retrains == 12


def test_the_ablation_settles_a_clearly_helping_regularizer_after_one_seed() -> None:
    """The pooled noise of the confirm phase bounds what the remaining seeds can do: a
    regularizer whose removal costs 5 pt cannot come back to beat the champion and is not
    retrained again; one whose removal looks better keeps running."""
    config, study, numbers, seeds = _setup()
    base = _from(TABLE, numbers, seeds)

    def outcome(attrs: Mapping[str, Any]) -> float:
        if attrs[PHASE_ATTR] == ABLATION and attrs[ABLATE_ATTR] == "mixup_alpha":
            offset = (0.008, 0.0, -0.004)[seeds.index(attrs[SEED_ATTR])]
            return base({**attrs, PHASE_ATTR: CONFIRM}) + offset  # better at first: unclear
        return base(attrs)

    rounds = _run_rounds(study, config, outcome)
    by_name: dict[str, int] = {}
    for key in (k for r in rounds for k in r if k[0] == ABLATION):
        by_name[key[3]] = by_name.get(key[3], 0) + 1
    assert by_name.pop("mixup_alpha") >= 2
    assert set(by_name.values()) == {1}, by_name  # the others: one seed each
    ev = evidence(study.get_trials(), config, study.direction, val_images=1000)
    assert ev is not None and ev.ablation_complete and ev.pending == 0
    helped = ev.contributions["dropout"]
    assert helped.n == 1 and helped.low is not None and helped.low > 0
    assert ev.full_retrains == 4 * 3 + 5 * 3 and ev.retrains < ev.full_retrains


def test_an_ablated_configuration_that_beats_the_champion_becomes_the_champion() -> None:
    config, study, numbers, seeds = _setup()
    base = _from(TABLE, numbers, seeds)

    def outcome(attrs: Mapping[str, Any]) -> float:
        if attrs[PHASE_ATTR] == ABLATION and attrs[ABLATE_ATTR] == "aug_strength":
            return base({**attrs, PHASE_ATTR: CONFIRM}) + 0.03  # augmentation hurts: +3 pt off
        return base(attrs)

    _run_rounds(study, config, outcome)
    ev = evidence(study.get_trials(), config, study.direction, val_images=1000)
    assert ev is not None and ev.champion is not None and ev.replaced is not None
    assert ev.champion.ablate == "aug_strength" and ev.replaced.source == numbers[1]
    assert len(ev.champion.values) == len(ev.replaced.values) == 3
    assert ev.gain is not None and ev.gain.mean == pytest.approx(0.955 + 0.03 - 0.805)
    champion = best_trial(study)
    assert champion is not None and champion.user_attrs[PHASE_ATTR] == ABLATION
    assert champion.user_attrs[ABLATE_ATTR] == "aug_strength"
    best = best_summary(study)
    assert best is not None and best["champion"]["ablated"] == "aug_strength"
    line = verdict(best, "val_accuracy")
    assert f"configuration of trial {numbers[1]} with aug_strength off" in line
    assert "aug_strength hurt: switching it off gained +3.0 pt" in line
    # What `best`, the report and the dashboard show is the configuration the model trained.
    assert best["params"]["aug_strength"] == best["champion"]["params"]["aug_strength"] == 0.0
    assert study.trials[numbers[1]].params["aug_strength"] > 0
    from search.report.summary import trials_table

    table = trials_table(study)
    phases = {
        str(n): p for n, p in zip(table.columns[0]._cells, table.columns[2]._cells, strict=True)
    }
    assert phases[str(numbers[1])] == "★ champion −aug_strength"
    # A size sweep's next study starts from the configuration that won, not the one it
    # replaced (listed once, after it).
    from search.study.sweep import top_configurations

    warm = top_configurations(study)
    assert warm[0] == {**study.trials[numbers[1]].params, "aug_strength": 0.0}
    assert warm.count(study.trials[numbers[1]].params) == 1


def test_a_small_validation_split_retrains_each_seed_on_its_own_split_and_keeps_ties() -> None:
    """Under 500 validation images every seed has its own split (all configurations of one
    seed share it, so they stay paired), and configurations tied with the last of the top
    k join the confirm phase (up to 2 × top_k): the tie is broken by retrains, not order."""
    config = _config(ablation=False, top_k=2)
    study = _study(config)
    numbers = _search(study, [1.0, 1.0, 1.0, 1.0, 1.0, 0.98])
    todo = plan(study.get_trials(), config, study.direction, val_images=60)
    sources = {i.user_attrs[SOURCE_ATTR] for i in todo}
    assert sources == set(numbers[:5])  # the baseline and 4 of the 5 tied (2 × top_k)
    assert {i.user_attrs[SPLIT_ATTR] for i in todo} == {1}  # the first seed: split 1
    _run_rounds(study, config, lambda a: 0.9 + 0.01 * a[SPLIT_ATTR], val_images=60)
    splits = {
        (t.user_attrs[SEED_ATTR], t.user_attrs[SPLIT_ATTR])
        for t in study.trials
        if t.user_attrs.get(PHASE_ATTR) == CONFIRM
    }
    assert splits == {(s, i) for i, s in enumerate(confirm_seeds(config, 3), 1)}
    # A large validation split keeps the study's own split and the top k alone.
    fresh = _study(config)
    _search(fresh, [1.0, 1.0, 1.0, 1.0, 1.0, 0.98])
    todo = plan(fresh.get_trials(), config, fresh.direction, val_images=1000)
    assert len({i.user_attrs[SOURCE_ATTR] for i in todo}) == 3
    assert all(SPLIT_ATTR not in i.user_attrs for i in todo)


def test_a_resplit_pools_train_and_validation_and_keeps_the_test_split() -> None:
    data = load_dataset(DatasetConfig(name="digits", subset=300))
    assert data.resplit(0) is data
    one, two = data.resplit(1), data.resplit(2)
    for other in (one, two):
        assert (len(other.train), len(other.val)) == (len(data.train), len(data.val))
        assert other.test is data.test
        pooled = sorted(map(bytes, [*other.train.x.numpy(), *other.val.x.numpy()]))
        assert pooled == sorted(map(bytes, [*data.train.x.numpy(), *data.val.x.numpy()]))
        # Stratified: the same count of each class in validation.
        assert sorted(other.val.y.tolist()) == sorted(data.val.y.tolist())
    assert not (one.val.x == data.val.x).all() and not (one.val.x == two.val.x).all()
    again = data.resplit(1)
    assert (again.val.x == one.val.x).all(), "a split is the same in every worker"


def test_the_remaining_seeds_move_a_sum_by_the_bound_of_their_noise_not_its_multiple() -> None:
    """The racing rule in numbers (noise 1 pt a seed, 30 degrees of freedom: t = 2.04). After
    one of three seeds, an ablation that changed nothing (difference 0) can no longer beat the
    champion beyond the 3-seed interval (−√3 × 2.04 = −3.5 pt): the two seeds left move the
    sum by at most 2.04 × √2 = 2.9 pt. An arm 4 pt behind in all with three seeds left stops
    (they move it by at most 2.04 × √3 = 3.5 pt); with 2 degrees of freedom (t = 4.30: 7.4 pt)
    it stays in. (The rule before, two noise units a remaining seed, kept both running.)"""
    from search.study.arms import Arm
    from search.study.evidence import _ablation_settled, _race

    assert _ablation_settled([0.0], 3, 0.01, 30)
    assert not _ablation_settled([-0.01], 3, 0.01, 30)  # removal looked better: next seed
    seeds = [1, 2]
    leader = Arm(0, {}, baseline=False, values={1: 0.90, 2: 0.92})
    near = Arm(1, {}, baseline=False, values={1: 0.89, 2: 0.91})  # 2 pt behind in all
    behind = Arm(2, {}, baseline=False, values={1: 0.88, 2: 0.90})  # 4 pt behind in all
    alive, noise, df = _race([leader, near, behind], seeds, 3, 1.0, 0.01)
    assert noise == pytest.approx(0.01) and df == 2  # the floor: these differences never vary
    assert alive == [leader, near, behind]
    many = {s: 0.9 for s in range(1, 32)}  # 30 degrees of freedom of the same floor
    leader = Arm(0, {}, baseline=False, values=dict(many))
    behind = Arm(2, {}, baseline=False, values={**many, 1: 0.88, 2: 0.88})  # 4 pt behind
    alive, noise, df = _race([leader, behind], list(many), 3, 1.0, 0.01)
    assert df == 30 and alive == [leader]
    assert behind.dropped_after == 31


def test_racing_replayed_on_the_full_phase_runs_a_subset_and_names_both_champions() -> None:
    """`bench --only racing`'s replay: a study that ran every retrain (`racing: false`) is
    raced again from its own trials; racing runs the retrains it would have run, no more."""
    from search.bench.racing import replay

    config, study, numbers, seeds = _setup(racing=False)
    _run_rounds(study, config, _from(TABLE, numbers, seeds))
    out = replay(study)
    assert out["full_retrains"] == 4 * 3 + 5 * 3  # four configurations, five ablations
    # Racing: the baseline and the third configuration stop after two seeds (10 of 12), and
    # every ablation (each costs 5 pt) settles after one seed.
    assert out["raced_retrains"] == 10 + 5
    assert out["same_champion"] and out["full_champion"] == f"trial {numbers[1]}"
    assert out["dropped"] == {f"trial {numbers[0]}": 2, f"trial {numbers[3]}": 2}
    live = _setup()  # the same outcomes with racing on, run round by round
    _run_rounds(live[1], live[0], _from(TABLE, live[2], live[3]))
    ev = evidence(live[1].get_trials(), live[0], live[1].direction, val_images=1000)
    assert ev is not None and ev.retrains == out["raced_retrains"]
