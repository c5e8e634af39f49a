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
def _handling(
    signals: tuple[signal.Signals, ...], handler: Callable[[int, FrameType | None], Any]
) -> Iterator[None]:
    """`handler` takes `signals` while this runs. Python installs signal handlers from the
    main thread only: off it (a web app, a thread pool) the process keeps its own handling,
    and signals do not reach this thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def on_sigterm(handler: Callable[[int, FrameType | None], Any]) -> AbstractContextManager[None]:
    """`handler` takes SIGTERM while this runs (in the main thread)."""
    return _handling((signal.SIGTERM,), handler)


def sigterm_interrupts() -> AbstractContextManager[None]:
    """SIGTERM raises `Terminated` in the main thread while this runs."""
    return on_sigterm(_raise)


def absorbing_interrupts() -> AbstractContextManager[None]:
    """Ctrl+C and SIGTERM do nothing while this runs: the bookkeeping of a first interrupt
    (a trial's retry, its outcome) is not cut off by a second. For code that re-raises the
    first one after it."""
    return _handling((signal.SIGINT, signal.SIGTERM), lambda signum, frame: None)
