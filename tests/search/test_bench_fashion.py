"""`regsearch bench --only fashion`: its arithmetic, and one line where the data set is absent
(the figure itself takes many minutes: README, Benchmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.bench.fashion import PUBLISHED, fashion, fashion_root, wilson


def test_without_the_data_set_the_benchmark_is_skipped_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGSEARCH_FASHION_ROOT", str(tmp_path))
    assert fashion_root() is None
    out = fashion(sizes=(1000,))
    assert list(out) == ["skipped"] and "apt-get install dataset-fashion-mnist" in out["skipped"]


def test_the_official_files_are_found_plain_or_gzipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGSEARCH_FASHION_ROOT", str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert fashion_root() is None
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"")
    assert fashion_root() == tmp_path


def test_an_accuracy_on_10000_images_has_its_wilson_interval() -> None:
    low, high = wilson(8000, 10000)
    assert (round(low, 4), round(high, 4)) == (0.7920, 0.8077)
    low, high = wilson(10000, 10000)
    assert high == pytest.approx(1.0) and 0.9995 < low < 1.0


def test_the_published_reference_points_are_full_data_test_accuracies() -> None:
    assert PUBLISHED["ResNet18, flips, translation, rotation"] == 0.949
    assert all(0.8 < v < 1.0 for v in PUBLISHED.values())
