"""`regsearch bench` smoke tests: tiny sizes, every figure present and consistent (no speed
thresholds: the figures depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from search.bench.throughput import (
    AIRBENCH_IMAGES_PER_SECOND,
    airbench_trial,
    augment_speedup,
    train_images_per_second,
)
from tests.helpers import TEST_BUDGET, regsearch

CPU = torch.device("cpu")


def test_throughput_of_each_model_eager_and_compiled_with_its_data_share() -> None:
    out = train_images_per_second(
        device=CPU, models=("small-cnn", "airbench"), images=64, batch_size=16, steps=2
    )
    assert out["device"] == "cpu" and out["images"] == 64 and out["batch_size"] == 16
    assert set(out["models"]) == {"small-cnn", "airbench"}
    for modes in out["models"].values():
        assert list(modes) == ["eager"], "compile is the GPU run's default, not the CPU's"
        assert modes["eager"]["images_per_second"] > 0
        assert 0 < modes["eager"]["data_share"] <= 1


def test_the_airbench_trial_is_timed_against_airbench_s_published_speed() -> None:
    out = airbench_trial(device=CPU, images=128, epochs=1, val_images=32, warmup_images=64)
    assert out["model"] == "airbench" and out["epochs"] == 1 and out["seconds"] > 0
    reference = 128 / AIRBENCH_IMAGES_PER_SECOND
    assert out["airbench_ratio"] == pytest.approx(out["seconds"] / reference, rel=0.02)
    assert out["images_per_second"] == pytest.approx(128 / out["seconds"], rel=0.02)


def test_bench_on_a_device_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    proc = regsearch("bench", "--device", "cuda", "--json", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "regsearch: error: --device cuda: device 'cuda' requested but CUDA is not available"
    ]


@pytest.mark.parametrize("workers", [0, 1])
def test_augment_speedup_smoke(workers: int) -> None:
    out = augment_speedup(images=96, batch_size=32, rounds=2, workers=workers)
    for key in (
        "augment_speedup",
        "batched_images_per_second",
        "reference_images_per_second",
        "images",
    ):
        assert out[key] > 0, key
    assert out["reference_workers"] == workers and out["device"] == "cpu"
    assert out["images"] == 96
    assert len(out["round_ratios"]) == 2


def test_augment_speedup_rejects_empty() -> None:
    with pytest.raises(ValueError):
        augment_speedup(images=0)


def _postgres_answers() -> bool:
    try:
        import psycopg

        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except Exception:
        return False
    return True


@pytest.mark.slow
def test_storage_ms_per_trial_reports_both_ends_of_the_study_on_each_storage() -> None:
    from search.bench.storage import storage_ms_per_trial

    out = storage_ms_per_trial(trials=40, epochs=2)
    assert out["sqlite"]["ms_at_10"] > 0 and out["sqlite"]["ms_at_40"] > 0
    if not _postgres_answers():
        assert out["postgresql"].startswith("skipped: "), out["postgresql"]
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432: only the SQLite figure measured")
    contenders = out["postgresql_contenders"]
    assert set(contenders) == {"rdb", "rdb_no_pre_ping", "grpc_proxy"}
    assert out["postgresql"] == contenders["rdb"]  # the headline is the service's own storage
    for figures in contenders.values():
        assert figures["ms_at_10"] > 0 and figures["ms_at_40"] > 0


def test_the_storage_figure_s_study_is_filled_to_its_size_between_the_measured_ends(
    tmp_path: Path,
) -> None:
    import math

    from search.bench.storage import _storage_loop
    from search.study.storage import open_storage

    url = f"sqlite:///{tmp_path}/s.db"
    seconds = _storage_loop(open_storage(url), trials=40, epochs=3, measured=15)
    assert [math.isnan(s) for s in seconds] == [False] * 15 + [True] * 10 + [False] * 15
    trials = optuna.load_study(study_name="bench-storage", storage=url).trials
    assert [t.number for t in trials] == list(range(40))
    filled = trials[15:25]
    assert all(
        t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for t in filled
    )
    assert all(t.intermediate_values and t.params for t in filled), "whole trials, curves too"


@pytest.mark.slow
def test_worker_scaling_compares_one_and_two_workers_repeatedly() -> None:
    from search.bench.runs import worker_scaling

    out = worker_scaling(trials=2, epochs=1, repeats=1)  # one 1-worker and one 2-worker study
    assert len(out["ratios"]) == 1 and out["spread"] == [out["ratios"][0]] * 2
    assert out["worker_scaling"] == out["ratios"][0] > 0
    assert out["trials_per_minute_1_worker"] > 0 and out["trials_per_minute_2_workers"] > 0


def test_worker_rate_sums_each_worker_s_own_span_of_complete_trials() -> None:
    """Two workers, each timed from its first trial's start to its last trial's end: their
    start-up and the tail where one waits for the other do not count."""
    import datetime as dt

    from search.bench.runs import worker_rate
    from search.core.records import WORKER_ATTR

    t0 = dt.datetime(2026, 12, 3, 10, 0, 0)

    def trial(worker: str, start_s: float, end_s: float, state: str = "COMPLETE") -> Any:
        return optuna.trial.FrozenTrial(
            number=0,
            state=optuna.trial.TrialState[state],
            value=0.5 if state == "COMPLETE" else None,
            datetime_start=t0 + dt.timedelta(seconds=start_s),
            datetime_complete=t0 + dt.timedelta(seconds=end_s),
            params={},
            distributions={},
            user_attrs={WORKER_ATTR: worker},
            system_attrs={},
            intermediate_values={},
            trial_id=0,
        )

    trials = [
        trial("a", 10, 40),  # worker a: 2 trials in 60 s
        trial("a", 40, 70),
        trial("b", 30, 60),  # worker b: 1 trial in 30 s, started 20 s later
        trial("b", 60, 61, state="FAIL"),  # not a finished trial of the budget
    ]
    assert worker_rate(trials) == 2 / 1.0 + 1 / 0.5


def test_bench_set_reaches_every_study_a_benchmark_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`regsearch bench --set KEY=VALUE` is applied last to the studies a benchmark starts as
    `regsearch run` processes and to the ones it replays in process, so the figures of another
    budget come from the same command; a bad item stops the bench in one line."""
    from search.bench.efficiency import _config
    from search.bench.runs import SETTINGS_VAR, run_cli

    monkeypatch.setenv(SETTINGS_VAR, json.dumps(["train.epochs=2", TEST_BUDGET]))
    tiny = ["--study", "s", "--n-trials", "1", "--set", "train.epochs=1", "--set",
            "search.confirm=none", "--set", "tracking.enabled=false"]  # fmt: skip
    run_cli(tmp_path, tiny)
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trial.intermediate_values) == 2, "the bench's --set comes after the bench's own"
    replayed = _config(["train.epochs=1"], 0)
    assert (replayed.train.epochs, replayed.train.min_steps_per_epoch) == (2, 8)
    monkeypatch.delenv(SETTINGS_VAR)
    bad = regsearch("bench", "--only", "time_to_target", "--set", "train.epochs=0", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "regsearch: error: train.epochs: Input should be greater than or equal to 1 (got 0)"
    ]


@pytest.mark.slow
def test_time_to_target_is_when_the_best_search_value_first_reaches_it() -> None:
    from search.bench.runs import time_to_target

    tiny = (
        "--n-trials",
        "2",
        "--set",
        "train.epochs=1",
        "--set",
        "search.confirm=none",
        "--set",
        "tracking.enabled=false",
        "--set",
        TEST_BUDGET,
    )
    reached = time_to_target(target=0.0, args=tiny)  # any value reaches 0: the first trial
    assert reached["trials"] == 2 and reached["trial"] == 0
    assert 0 < reached["time_to_target_seconds"] <= reached["study_seconds"]
    assert reached["run_seconds"] > reached["study_seconds"]
    never = time_to_target(target=1.01, args=tiny)
    assert never["time_to_target_seconds"] is None and never["share_of_study"] is None


@pytest.mark.slow
def test_real_data_takes_the_recipe_s_figure_from_the_study_that_refit_it(tmp_path: Path) -> None:
    """The recipe beside a refit champion is the study's own recipe, refit the same way (a
    recipe trained apart, on the training split alone, credited the search with the refit)."""
    from search.bench.real import _run
    from search.report.summary import best_summary

    sets = [
        "dataset.subset=200",
        "search.n_trials=2",
        "train.epochs=1",
        "search.confirm={top_k: 1, seeds: 2, ablation: false}",
        TEST_BUDGET,
    ]
    row = _run(tmp_path, "tiny", sets)
    study = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/regsearch.db"
    )
    best = best_summary(study)
    assert best is not None and best["refit"] is not None, "the champion was refit"
    recipe = best["test"]["baseline"]["accuracy"]
    assert row["recipe_test_accuracy"] == pytest.approx(recipe, abs=5e-5)
    assert row["test_gain_over_recipe"]["mean"] == pytest.approx(
        best["test"]["gain"]["mean"], abs=5e-5
    )
