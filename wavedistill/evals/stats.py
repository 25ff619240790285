"""Means with their standard errors, for probes whose examples come in groups (positions of one window).

Positions of one window are not independent draws, so a rate over positions gets a *cluster* standard
error (windows as clusters: the linearised variance of a ratio estimator), not the binomial one, which
would be too small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / sqrt(n)) of independent values."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def ratio_se(sums: Sequence[float], counts: Sequence[float]) -> tuple[float, float, int]:
    """sum(sums) / sum(counts) over clusters, its cluster-robust standard error, and the total count.

    Clusters with no count are left out; with fewer than two clusters left the error is nan.
    """
    pairs = [(a, n) for a, n in zip(sums, counts) if n > 0]
    total = sum(n for _, n in pairs)
    if total == 0:
        return float("nan"), float("nan"), 0
    ratio = sum(a for a, _ in pairs) / total
    k = len(pairs)
    if k < 2:
        return ratio, float("nan"), int(total)
    var = k / (k - 1) * sum((a - ratio * n) ** 2 for a, n in pairs) / total ** 2
    return ratio, math.sqrt(var), int(total)


def estimate(value: float, se: float, n: int, **extra) -> dict:
    """The record every probe writes for one measured quantity."""
    return {"value": value, "se": se, "n": n, **extra}
