"""Summary statistics of per-sample scores: mean and standard error of the mean."""

from __future__ import annotations

import math


def standard_error(values: list[float]) -> float:
    """Standard error of the mean (sample std / sqrt(n)); 0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the finite values (NaN, NaN when none; SE 0 for one)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return sum(finite) / len(finite), standard_error(finite)
