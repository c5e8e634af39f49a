"""SIGTERM as a clean stop: it raises `Terminated` (a KeyboardInterrupt) in the main thread,
so a running trial ends the way Ctrl+C ends it — FAIL in Optuna with `stop_reason`
interrupted, KILLED in MLflow — and the process exits 143 (128 + SIGTERM)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Terminated", "sigterm_interrupts"]


class Terminated(KeyboardInterrupt):
    exit_code = 128 + signal.SIGTERM


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signum}")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
