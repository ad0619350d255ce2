"""Confidence intervals for accuracies: on 1,319 GSM8K problems a 2-point gap between runs is within noise
(the 95% interval is about ±2.5 points at 50%), so every accuracy is reported with one."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; stays inside [0, 1] and is sane at 0/n and n/n,
    where the normal (Wald) interval collapses to a point."""
    if n <= 0:
        raise ValueError(f"an interval needs at least one trial, got n={n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must lie in [0, n], got {correct} of {n}")
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if correct == 0 else max(0.0, center - half)  # exact ends: rounding would leave 1 - 1e-16
    hi = 1.0 if correct == n else min(1.0, center + half)
    return lo, hi
