"""One worker per GPU: which `CUDA_VISIBLE_DEVICES` each worker of `--workers N` gets."""

from __future__ import annotations

import pytest

from search.core.errors import UserError
from search.training.placement import parse_gpus, worker_gpus


def test_parse_gpus() -> None:
    assert parse_gpus("0") == [0]
    assert parse_gpus("3, 1,0") == [3, 1, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "'' is not a GPU index"), ("0,-1", "'-1'"), ("cuda:0", "'cuda:0'"), ("2,2", "twice")],
)
def test_parse_gpus_rejects(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_gpus(text)


def test_one_worker_per_listed_gpu() -> None:
    assert worker_gpus(2, [1, 3], device="auto", count=4) == ["1", "3"]


def test_more_workers_than_gpus_go_round_robin() -> None:
    assert worker_gpus(5, [0, 1], device="cuda", count=2) == ["0", "1", "0", "1", "0"]


def test_indices_count_the_gpus_this_process_sees() -> None:
    # Launched with CUDA_VISIBLE_DEVICES=4,6: GPU 1 here is physical GPU 6.
    assert worker_gpus(1, [1], device="auto", count=2, visible="4,6") == ["6"]


def test_several_gpus_spread_workers_without_the_flag() -> None:
    assert worker_gpus(4, None, device="auto", count=2) == ["0", "1", "0", "1"]
    assert worker_gpus(3, None, device="cuda", count=3, visible="GPU-a,GPU-b,GPU-c") == [
        "GPU-a",
        "GPU-b",
        "GPU-c",
    ]


@pytest.mark.parametrize(
    ("workers", "device", "count"),
    [(1, "auto", 4), (4, "auto", 1), (4, "auto", 0), (4, "cpu", 4), (4, "cuda:1", 4)],
)
def test_no_pinning_without_the_flag_unless_several_workers_share_several_gpus(
    workers: int, device: str, count: int
) -> None:
    assert worker_gpus(workers, None, device=device, count=count) == [None] * workers


@pytest.mark.parametrize(
    ("workers", "gpus", "device", "count", "message"),
    [
        (1, [0], "auto", 0, "this machine has no CUDA device"),
        (2, [0, 2], "auto", 2, "there is no GPU 2 \\(this process sees 2\\)"),
        (1, [0], "cpu", 1, "--gpus needs --device auto or cuda"),
        (1, [0], "cuda:1", 2, "--gpus needs --device auto or cuda"),
        (1, [0, 1], "auto", 2, "--workers 1 leaves GPUs of --gpus 0,1 idle"),
    ],
)
def test_impossible_placements_are_user_errors(
    workers: int, gpus: list[int], device: str, count: int, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        worker_gpus(workers, gpus, device=device, count=count)
