"""The search-efficiency benchmarks: the curve bank replays exactly what training would give,
a replayed study is the real study, and the figures are read off the traces as documented."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import optuna
import pytest
import torch

from search.bench.efficiency import (
    PRUNERS,
    CurveBank,
    StudyTrace,
    _Curve,
    choose_pruner,
    replay_study,
)
from search.bench.regret import (
    CANDIDATES,
    EPOCHS,
    SMOOTHED,
    choose,
    closest,
    contenders,
    regret,
    regret_row,
    summary,
    top_configurations,
)
from search.bench.runs import worker_rate
from search.config.schema import StudyConfig
from search.config.space import SearchSpace
from search.core.records import FINISHED, WORKER_ATTR
from search.data.dataset import Dataset, load_dataset
from search.study.studyfile import load_config
from search.training.train import EpochStats, train
from tests.helpers import TEST_BUDGET

TINY = [
    "dataset={name: synthetic, num_samples: 240, image_size: 8, channels: 1, num_classes: 3}",
    "train.epochs=4",
    "search.n_trials=6",
    "search.confirm=none",
    "tracking.enabled=false",
    "search.pruner={name: median, n_startup_trials: 2, n_warmup_steps: 1}",
    "search.sampler={name: tpe, seed: 1, n_startup_trials: 3}",
    "early_stopping.patience=2",
    TEST_BUDGET,
]


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def config() -> StudyConfig:
    return load_config(overrides=TINY)


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def data(config: StudyConfig) -> Dataset:
    return load_dataset(config.dataset)


def _history(result: Any) -> list[tuple[float, float]]:
    return [(s.val_accuracy, s.val_loss) for s in result.history]


def test_the_bank_replays_each_curve_as_training_it_alone_would(
    config: StudyConfig, data: Dataset
) -> None:
    space = SearchSpace.from_config(config)
    cfg_a, cfg_b = (
        space.sample(optuna.trial.FixedTrial(p))
        for p in (
            {
                "weight_decay": 1e-4,
                "dropout": 0.1,
                "aug_strength": 0.2,
                "mixup_alpha": 0.0,
                "label_smoothing": 0.0,
            },
            {
                "weight_decay": 1e-3,
                "dropout": 0.4,
                "aug_strength": 0.6,
                "mixup_alpha": 0.4,
                "label_smoothing": 0.1,
            },
        )
    )
    no_patience = cfg_a.early_stopping.model_copy(update={"patience": None})  # all epochs
    cfg_a = replace(cfg_a, early_stopping=no_patience)
    cfg_b = replace(cfg_b, early_stopping=no_patience)
    alone = {"a": train(cfg_a, data), "b": train(cfg_b, data)}

    bank = CurveBank()
    stop_after_one = bank(cfg_a, data, on_epoch=lambda s: "pruned" if s.epoch == 1 else None)
    b = bank(cfg_b, data)  # trains B in between: A's run must not see B's random draws
    a = bank(cfg_a, data)  # epoch 1 replayed, 2-4 trained now
    assert stop_after_one.stop_reason == "pruned" and stop_after_one.epochs_trained == 1
    assert _history(a) == _history(alone["a"]) and _history(b) == _history(alone["b"])
    assert a.best_value == alone["a"].best_value and a.best_epoch == alone["a"].best_epoch
    assert bank.trained_epochs == 8 and bank.used_epochs == 9


def test_the_bank_trains_a_configuration_once_whatever_its_early_stopping(
    config: StudyConfig, data: Dataset
) -> None:
    space = SearchSpace.from_config(config)
    cfg = space.resolve(space.fixed_values())
    patient = replace(cfg, early_stopping=cfg.early_stopping.model_copy(update={"patience": 1}))
    unstopped = replace(
        cfg, early_stopping=cfg.early_stopping.model_copy(update={"patience": None})
    )
    bank = CurveBank()
    full = bank(unstopped, data)
    stopped = bank(patient, data)  # the same curve, cut where patience 1 cuts it
    assert bank.trained_epochs == full.epochs_trained == 4
    assert _history(stopped) == _history(full)[: stopped.epochs_trained]


def test_a_replayed_study_is_the_real_study(config: StudyConfig, data: Dataset) -> None:
    from search.run.objective import Objective
    from search.study.studies import create_or_resume

    trace = replay_study(config, data, CurveBank())
    study, _ = create_or_resume(config, optuna.storages.InMemoryStorage())
    study.optimize(Objective(config, data, device=torch.device("cpu")), n_trials=6)
    real = sorted(study.get_trials(states=FINISHED), key=lambda t: t.number)
    assert len(trace.values) == len(real) == 6
    assert trace.values == [
        t.value if t.state == optuna.trial.TrialState.COMPLETE else None for t in real
    ]
    assert sum(trace.epochs) == sum(len(t.intermediate_values) for t in real)
    assert any(v is None for v in trace.values), "the tiny study should prune something"


def test_a_trace_reads_best_values_and_trials_to_target() -> None:
    trace = StudyTrace([0.5, None, 0.97, 0.99, None, 0.98], [4, 1, 4, 4, 2, 4], 1.0)
    assert trace.best == 0.99
    assert trace.best_after(3) == 0.97
    assert trace.trials_to(0.98) == 4 and trace.trials_to(0.999) is None


def test_the_default_pruner_is_the_cheapest_that_keeps_the_best_value() -> None:
    def row(ratio: float, delta: float) -> dict[str, float]:
        return {"pruning_epoch_ratio": ratio, "pruning_best_delta": delta}

    table = {
        "none": row(1.0, 0.0),
        "early_stopping": row(0.2, 0.0),  # not a pruner: never chosen
        "median": row(0.6, 0.0),
        "hyperband": row(0.3, -0.02),  # cheapest, but loses two points
        "wilcoxon": row(0.5, -0.004),
    }
    assert choose_pruner(table) == "wilcoxon"
    assert choose_pruner(table, min_delta=0.0) == "median"
    assert choose_pruner(table, min_delta=0.01) == "hyperband"  # none qualifies: cheapest


def test_worker_rate_times_each_worker_from_its_first_start_to_its_last_end() -> None:
    t0 = datetime(2026, 12, 1, 12, 0, 0)

    def trial(number: int, worker: str, start: float, end: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.FrozenTrial(
            number=number,
            state=optuna.trial.TrialState.COMPLETE,
            value=0.5,
            datetime_start=t0 + timedelta(seconds=start),
            datetime_complete=t0 + timedelta(seconds=end),
            params={},
            distributions={},
            user_attrs={WORKER_ATTR: worker},
            system_attrs={},
            intermediate_values={},
            trial_id=number,
        )

    # Worker a: 3 trials in 60 s; worker b starts 30 s late (its start-up), 2 trials in 30 s.
    trials = [
        trial(0, "a", 0, 20),
        trial(1, "a", 20, 40),
        trial(2, "a", 40, 60),
        trial(3, "b", 30, 45),
        trial(4, "b", 45, 60),
    ]
    assert worker_rate(trials) == pytest.approx(3 / 1 + 2 / 0.5)


# --------------------------------------------------------------------------- pruning regret


class _ScriptedBank(CurveBank):
    """A bank whose curves are written out (validation accuracy per epoch, keyed by the
    configuration's dropout) instead of trained."""

    def __init__(self, curves: dict[float, list[float]]) -> None:
        super().__init__()
        self.curves = curves

    def _curve(self, cfg: Any, data: Dataset, device: torch.device | None) -> _Curve:
        accuracies = self.curves[round(cfg.regularization.dropout, 3)]
        stats = [
            EpochStats(epoch, 1.0, 0.5, 1.0, accuracy, 1.0, 0.1, 0.0)
            for epoch, accuracy in enumerate(accuracies, 1)
        ]
        return _Curve(None, iter(()), torch.get_rng_state(), 0.0, stats)


def _params(dropout: float) -> dict[str, float]:
    return {
        "weight_decay": 1e-4,
        "dropout": dropout,
        "aug_strength": 0.2,
        "mixup_alpha": 0.0,
        "label_smoothing": 0.0,
    }


def test_pruning_regret_counts_a_killed_top_configuration_and_the_value_lost(
    data: Dataset,
) -> None:
    curves = {
        0.5: [0.7, 0.8, 0.9, 0.9],  # the baseline recipe: never pruned, completes at 0.9
        0.1: [0.3, 0.9, 0.95, 0.96],  # slow start: the threshold pruner stops it at epoch 1
        0.2: [0.7, 0.6, 0.6, 0.99],  # best at the last epoch: early stopping ends it at 3
        0.3: [0.6, 0.8, 0.85, 0.85],
        0.4: [0.55, 0.6, 0.6, 0.6],
    }
    sequence = [_params(d) for d in (0.1, 0.2, 0.3, 0.4)]
    bank = _ScriptedBank(curves)

    def study(*items: str) -> StudyTrace:
        config = load_config(overrides=[*TINY, "search.n_trials=5", *items])
        return replay_study(config, data, bank, enqueue=sequence)

    full = study(*PRUNERS["none"])
    assert full.values == [0.9, 0.96, 0.99, 0.85, 0.6] and full.epochs == [4] * 5
    assert full.phases[0] == "baseline" and full.params[1:] == sequence
    pruned = study("search.pruner={name: threshold, lower: 0.5}")
    assert pruned.values == [0.9, None, 0.7, 0.85, 0.6] and pruned.epochs == [4, 1, 3, 4, 4]

    assert top_configurations(full.values) == [2, 1, 0]  # type: ignore[arg-type]
    row = regret(full, pruned)
    assert row.killed == [1, 2]  # pruned; stopped before its best epoch. The baseline lives
    assert row.best == 0.9 and row.best_lost == pytest.approx(0.99 - 0.9)
    assert (row.epochs, row.full_epochs, row.pruned) == (16, 20, 1)
    assert row.epochs_saved == pytest.approx(0.2)
    assert not row.meets() and row.meets(max_killed=2, min_saved=0.2)
    assert regret(full, full).killed == [] and regret(full, full).best_lost == 0.0


def test_regret_rows_rank_ties_by_the_tiebreak_then_the_trial_order() -> None:
    full = [0.9, 0.95, 0.95, 0.9, 0.8]
    assert top_configurations(full) == [1, 2, 0]
    assert top_configurations(full, [0.3, 0.2, 0.1, 0.05, 0.0]) == [2, 1, 3]
    # #3 (a top configuration by its lower loss) completed below its value: killed, though
    # #0 with the same full-budget value completed at it, so no value is lost.
    row = regret_row(
        full, 100, [0.9, 0.95, 0.95, 0.85, None], [20, 20, 20, 20, 4], tiebreaks=[1, 1, 1, 0, 1]
    )
    assert row.killed == [3] and row.best_lost == 0.0 and row.pruned == 1
    assert row.epochs_saved == pytest.approx(0.16) and not row.meets()
    with pytest.raises(ValueError, match="2 trials replayed"):
        regret_row(full, 100, [0.9, 0.9], [20, 20])


def test_best_so_far_pruning_sees_each_curve_as_its_running_best() -> None:
    from search.bench.regret import _best_so_far

    trial = optuna.trial.create_trial(
        params={},
        distributions={},
        value=0.6,
        intermediate_values={1: 0.5, 2: 0.4, 3: 0.6, 4: 0.55},
    )
    assert _best_so_far(trial, True).intermediate_values == {1: 0.5, 2: 0.5, 3: 0.6, 4: 0.6}
    assert _best_so_far(trial, False).intermediate_values == {1: 0.5, 2: 0.4, 3: 0.4, 4: 0.4}
    assert trial.intermediate_values[2] == 0.4  # the study's own record is untouched


def test_the_regret_verdict_keeps_a_default_that_meets_the_rule_else_the_cheapest_that_does() -> (
    None
):
    def row(saved: float, killed: int, lost: float = 0.0) -> dict[str, Any]:
        return {
            "epochs_saved": saved,
            "killed": list(range(killed)),
            "best_lost": lost,
            "meets_rule": killed <= 1 and saved >= 0.4,
        }

    rows = {
        "a": {"none": row(0.0, 0), "sh": row(0.6, 2), "gentle": row(0.45, 1), "wide": row(0.5, 0)},
        "b": {"none": row(0.0, 0), "sh": row(0.5, 1), "gentle": row(0.42, 0), "wide": row(0.5, 1)},
    }
    assert choose(rows, "sh") == ("wide", ["wide", "gentle"])
    assert choose(rows, "gentle") == ("gentle", ["wide", "gentle"])
    rows["b"]["wide"] = row(0.3, 0)
    rows["b"]["gentle"] = row(0.35, 0)
    assert choose(rows, "sh") == (None, [])
    # Met once each: gentle and wide only save too little (gentle less so), sh kills one too many.
    assert closest(rows) == ["gentle", "wide", "sh"]
    assert summary(rows)["sh"] == {
        "cases_meeting_rule": 1,
        "cases": 2,
        "killed": 3,
        "killed_most": 2,
        "saved_mean": 0.55,
        "saved_least": 0.5,
        "lost_most": 0.0,
    }


def test_the_regret_contenders_are_valid_studies_of_the_default_budget() -> None:
    assert load_config().train.epochs == EPOCHS
    for name, (items, _) in contenders().items():
        config = load_config(overrides=items)
        # The default patience unless the contender is named for another one.
        patience = int(name.rpartition("patience-")[2]) if "patience-" in name else 6
        assert config.early_stopping.patience in (None, patience), name
    assert set(SMOOTHED) & set(PRUNERS) == set() and set(CANDIDATES) & set(PRUNERS) == set()


def test_the_fashion_regret_sets_are_skipped_with_their_reason_when_the_files_are_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from search.bench import regret as bench_regret

    monkeypatch.setattr(bench_regret, "FASHION_ROOT", tmp_path / "absent")
    reasons = {name: bench_regret._skip_reason(name) for name in bench_regret.SETS}
    assert reasons.pop("digits") is None
    assert reasons and all(r is not None and "absent" in r for r in reasons.values())
