"""Metrics derived from per-sample results: accuracies with confidence intervals."""

from __future__ import annotations

import math

__all__ = ["wilson_interval", "accuracy"]


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson, JASA 1927).

    Better behaved than the normal approximation near 0 and 1, where robust accuracies live.
    Returns ``(nan, nan)`` for ``total == 0``. The interval's end at 0 (no successes) or 1 (all)
    is exact: the formula's ``centre - half`` is 0 there in exact arithmetic, and would round to a
    stray 1e-19 in floating point.
    """
    if total == 0:
        return math.nan, math.nan
    z = _normal_quantile(0.5 + confidence / 2)
    p = successes / total
    denom = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high


def accuracy(correct: int, total: int, confidence: float = 0.95) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high", "count", "total"}`` for ``correct`` out of ``total``."""
    low, high = wilson_interval(correct, total, confidence)
    return {"value": correct / total if total else math.nan, "ci_low": low, "ci_high": high,
            "count": correct, "total": total}


def _normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF, by bisection on ``math.erf`` (exact to ~1e-12)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
