"""`augment_speedup` smoke test: tiny sizes, every figure present and positive (no speed
thresholds: the figure depends on the machine)."""

from __future__ import annotations

import pytest

from search.bench import BENCHMARKS, augment_speedup


def test_augment_speedup_registered() -> None:
    assert BENCHMARKS["augment_speedup"] is augment_speedup


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
    assert out["reference_workers"] == workers
    assert out["images"] == 96
    assert len(out["round_ratios"]) == 2


def test_augment_speedup_rejects_empty() -> None:
    with pytest.raises(ValueError):
        augment_speedup(images=0)


def test_storage_ms_per_trial_reports_both_ends_of_the_study() -> None:
    from search.bench import storage_ms_per_trial

    out = storage_ms_per_trial(trials=20, epochs=2)
    assert out["sqlite"]["ms_at_10"] > 0 and out["sqlite"]["ms_at_20"] > 0
    assert "postgresql" in out  # measured, or "skipped: <reason>" without a server


@pytest.mark.slow
def test_worker_scaling_compares_one_and_two_workers() -> None:
    from search.bench import worker_scaling

    out = worker_scaling(trials=2, epochs=1)
    assert out["worker_scaling"] > 0
    assert out["trials_per_minute_1_worker"] > 0 and out["trials_per_minute_2_workers"] > 0
