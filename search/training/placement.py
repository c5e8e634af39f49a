"""Which GPU each worker of `regsearch run --workers N` sees.

Each worker process gets `CUDA_VISIBLE_DEVICES` set to one GPU and trains on `cuda`, so a
worker cannot touch another's memory and its device is always `cuda:0` inside it. GPU indices
on the command line count the devices this process can see (they go through an existing
`CUDA_VISIBLE_DEVICES`, as `cuda:N` would).
"""

from __future__ import annotations

from search.core.errors import UserError

__all__ = ["parse_gpus", "worker_gpus"]


def parse_gpus(text: str) -> list[int]:
    """`"0,1,3"` → `[0, 1, 3]`; a one-line `UserError` naming the bad entry otherwise."""
    gpus = []
    for part in text.split(","):
        entry = part.strip()
        if not entry.isdigit():
            raise UserError(f"--gpus {text}: {entry!r} is not a GPU index (use e.g. 0,1,2)")
        if int(entry) in gpus:
            raise UserError(f"--gpus {text}: GPU {entry} is listed twice")
        gpus.append(int(entry))
    return gpus


def worker_gpus(
    workers: int,
    gpus: list[int] | None,
    *,
    device: str,
    count: int,
    visible: str | None = None,
) -> list[str | None]:
    """`CUDA_VISIBLE_DEVICES` for each worker, or None where the worker is not pinned.

    `gpus` given: worker i gets `gpus[i % len(gpus)]`. Not given: with several workers, a
    `cuda`/`auto` device and more than one GPU, the workers are spread over all of them.
    `count` is the number of GPUs this process sees; `visible` its `CUDA_VISIBLE_DEVICES`.
    """
    if gpus is None:
        if workers < 2 or count < 2 or device not in ("auto", "cuda"):
            return [None] * workers
        gpus = list(range(count))
    elif workers < len(gpus):
        raise UserError(f"--workers {workers} leaves GPUs of --gpus {_join(gpus)} idle")
    if device not in ("auto", "cuda"):
        raise UserError(f"--gpus needs --device auto or cuda (one GPU per worker), got {device}")
    if count == 0:
        raise UserError(f"--gpus {_join(gpus)}: this machine has no CUDA device")
    missing = [g for g in gpus if g >= count]
    if missing:
        raise UserError(f"--gpus: there is no GPU {missing[0]} (this process sees {count})")
    names = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return [names[gpus[i % len(gpus)]] for i in range(workers)]


def _join(gpus: list[int]) -> str:
    return ",".join(str(g) for g in gpus)
