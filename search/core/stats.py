"""The confirm phase's arithmetic: means over a handful of seeds with Student-t 95% intervals,
and a paired bootstrap of an accuracy difference over the same test images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Interval", "mean_interval", "paired_bootstrap"]


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values with its 95% interval (None for fewer than two values)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_interval(values: Sequence[float]) -> Interval | None:
    """Mean and Student-t 95% interval of `values` (seeds: a handful, so t, not normal)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, None, None, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t975(n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_bootstrap(
    a_correct: Sequence[bool], b_correct: Sequence[bool], *, resamples: int = 5000, seed: int = 0
) -> tuple[float, float, float]:
    """(accuracy of a − accuracy of b, 2.5th and 97.5th percentile) over `resamples` paired
    resamples of the same test images."""
    import numpy as np

    a = np.asarray(a_correct, dtype=np.float64)
    b = np.asarray(b_correct, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired bootstrap needs two equal, non-empty vectors")
    diff = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(resamples, diff.size))
    means = diff[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)
