"""Small statistics for reports: mean with a Student-t 95 % confidence half-width."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats


def mean_ci(xs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its ``level`` confidence interval (0 for one sample)."""
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    mean = sum(xs) / n
    if n == 1:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    t = float(stats.t.ppf(0.5 + level / 2, n - 1))
    return mean, t * math.sqrt(var / n)
