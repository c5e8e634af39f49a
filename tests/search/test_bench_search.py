"""The search-efficiency benchmarks: the curve bank replays exactly what training would give,
a replayed study is the real study, and the figures are read off the traces as documented."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import optuna
import pytest
import torch

from search.bench_runs import worker_rate
from search.bench_search import CurveBank, StudyTrace, choose_pruner, replay_study
from search.config import StudyConfig
from search.data import Dataset, load_dataset
from search.records import FINISHED, WORKER_ATTR
from search.space import SearchSpace
from search.studyfile import load_config
from search.train import train

TINY = [
    "dataset={name: synthetic, num_samples: 240, image_size: 8, channels: 1, num_classes: 3}",
    "train.epochs=4",
    "search.n_trials=6",
    "search.confirm=none",
    "tracking.enabled=false",
    "search.pruner={name: median, n_startup_trials: 2, n_warmup_steps: 1}",
    "search.sampler={name: tpe, seed: 1, n_startup_trials: 3}",
    "early_stopping.patience=2",
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


def test_a_replayed_study_is_the_real_study(config: StudyConfig, data: Dataset) -> None:
    from search.objective import Objective
    from search.study import create_or_resume

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
