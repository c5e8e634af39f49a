"""SIGTERM as a clean stop: it raises `Terminated` (a KeyboardInterrupt) in the main thread,
so a running trial ends the way Ctrl+C ends it — FAIL in Optuna with `stop_reason`
interrupted, KILLED in MLflow — and the process exits 143 (128 + SIGTERM)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType
from typing import Any

__all__ = ["Terminated", "absorbing_interrupts", "on_sigterm", "sigterm_interrupts"]


class Terminated(KeyboardInterrupt):
    exit_code = 128 + signal.SIGTERM


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signum}")


@contextmanager
def on_sigterm(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """`handler` takes SIGTERM while this runs. Python installs signal handlers from the main
    thread only: a launch from another thread (a web app, a thread pool) keeps the
    process's own handling."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sigterm_interrupts() -> AbstractContextManager[None]:
    """SIGTERM raises `Terminated` in the main thread while this runs."""
    return on_sigterm(_raise)


@contextmanager
def absorbing_interrupts() -> Iterator[None]:
    """Ctrl+C and SIGTERM do nothing while this runs: the bookkeeping of a first interrupt
    (a trial's retry, its outcome) is not cut off by a second. For code that re-raises the
    first one after it; off the main thread, signals do not reach it anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: None) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
