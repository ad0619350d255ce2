"""Uncertainty score -> per-sample label-smoothing value.

Pure NumPy: fitted once over the whole training set (after mixing, before any sharding), so every
process derives the same values from the same data. Strategies:

- ``uncertainty`` (the paper's): eps_i = eps_bar * u_i / mean(u), clipped at ``smoothing_max`` and
  rescaled until the mean is eps_bar again. The authors iterate clip/rescale; that loop converges to
  eps_i = min(c * u_i, eps_max) for a single scale c, which we solve for in closed form (exact mean,
  always terminates) and refuse with a clear error when no c reaches the target.
- ``linear``: [u_lo, u_hi] mapped linearly onto [smoothing_min, smoothing_max].
- ``constant``: one eps for every sample (the label-smoothing baseline).
- ``none``: eps = 0 (plain SFT).
- ``explicit``: the dataset already carries eps per sample (no mapping, only validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UsageError

STRATEGIES = ("uncertainty", "linear", "constant", "none", "explicit")
# The paper's loop stops once |mean - target| < 1e-3; the closed form is exact, this is the check.
MEAN_TOLERANCE = 1e-3


class SmoothingMappingError(UsageError):
    """The requested smoothing cannot be produced from these scores."""


@dataclass(frozen=True)
class SmoothingMap:
    """A fitted mapping: eps = clip(scale * u / unit + offset, lo, hi). Apply it to eval data unchanged.

    ``unit`` (the largest training score for 'uncertainty') keeps ``scale`` finite for any score magnitude.
    """

    strategy: str
    scale: float = 0.0
    offset: float = 0.0
    lo: float = 0.0
    hi: float = 0.0
    unit: float = 1.0

    def __call__(self, uncertainty) -> np.ndarray:
        u = np.asarray(uncertainty, dtype=np.float64)
        if self.strategy == "explicit":
            return u.copy()
        return np.clip(self.scale * (u / self.unit) + self.offset, self.lo, self.hi)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("strategy", "scale", "offset", "lo", "hi", "unit")}


def fit_smoothing(
    uncertainty,
    strategy: str,
    *,
    target_mean: float = 0.1,
    smoothing_min: float = 0.0,
    smoothing_max: float = 0.99,
    uncertainty_range: tuple[float, float] = (0.0, 99.0),
) -> SmoothingMap:
    """Fit the mapping for ``strategy`` on the training set's scores (ignored by constant/none)."""
    if strategy not in STRATEGIES:
        raise SmoothingMappingError(f"unknown smoothing strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not 0.0 <= smoothing_min <= smoothing_max < 1.0:
        raise SmoothingMappingError(
            f"need 0 <= smoothing_min ({smoothing_min}) <= smoothing_max ({smoothing_max}) < 1"
        )
    if strategy == "none":
        return SmoothingMap("none")
    if strategy == "constant":
        if not 0.0 <= target_mean < 1.0:
            raise SmoothingMappingError(f"constant smoothing must lie in [0, 1), got {target_mean}")
        return SmoothingMap("constant", lo=target_mean, hi=target_mean)
    if strategy == "explicit":
        return SmoothingMap("explicit", lo=0.0, hi=1.0)

    if strategy == "linear":  # the declared range, not the scores, fixes the line
        u_lo, u_hi = uncertainty_range
        if not u_hi > u_lo:
            raise SmoothingMappingError(f"uncertainty_range must be increasing, got [{u_lo}, {u_hi}]")
        scale = (smoothing_max - smoothing_min) / (u_hi - u_lo)
        return SmoothingMap("linear", scale=scale, offset=smoothing_min - scale * u_lo, lo=smoothing_min, hi=smoothing_max)
    u = np.asarray(uncertainty if uncertainty is not None else [], dtype=np.float64)
    if u.size == 0:
        raise SmoothingMappingError("no uncertainty scores to fit the smoothing mapping on")
    return _fit_proportional(u, target_mean, smoothing_max)


def _fit_proportional(u: np.ndarray, target_mean: float, eps_max: float) -> SmoothingMap:
    """Solve mean(min(c*u, eps_max)) == target_mean for c (the fixed point of the paper's clip/rescale loop)."""
    if not 0.0 < target_mean < 1.0:
        raise SmoothingMappingError(f"target mean smoothing must lie in (0, 1), got {target_mean}")
    if (u < 0).any():
        raise SmoothingMappingError("uncertainty scores must be >= 0 for the 'uncertainty' strategy")
    n = u.size
    unit = float(u.max()) if u.size and u.max() > 0 else 1.0
    u = u / unit
    positive = np.sort(u[u > 0])[::-1]
    if positive.size == 0:
        raise SmoothingMappingError(
            f"every uncertainty score is 0, so the 'uncertainty' strategy gives eps = 0 everywhere and cannot reach "
            f"the target mean {target_mean}; use strategy 'constant' or 'none', or check the scores"
        )
    reachable = eps_max * positive.size / n
    if target_mean > reachable + 1e-12:
        raise SmoothingMappingError(
            f"target mean smoothing {target_mean} is unreachable: with smoothing_max={eps_max} and "
            f"{positive.size}/{n} samples with a score above 0, the largest possible mean is {reachable:.4f}"
        )
    # With the k largest scores clipped at eps_max, the rest scale linearly: c = (n*t - k*eps_max) / sum(rest).
    # The k that is consistent (clipped ones have c*u >= eps_max, the others c*u < eps_max) is the answer.
    suffix = np.concatenate([np.cumsum(positive[::-1])[::-1], [0.0]])  # suffix[k] = sum(positive[k:])
    for k in range(positive.size):
        c = (n * target_mean - k * eps_max) / suffix[k]
        clipped_ok = k == 0 or c * positive[k - 1] >= eps_max - 1e-12
        if clipped_ok and c * positive[k] <= eps_max + 1e-12:
            break
    else:  # every positive sample clipped: only when the target equals the reachable maximum
        c = eps_max / positive[-1]
    fitted = SmoothingMap("uncertainty", scale=float(c), lo=0.0, hi=eps_max, unit=unit)
    mean = float(fitted(u * unit).mean())
    if not math.isclose(mean, target_mean, abs_tol=MEAN_TOLERANCE):  # a bug guard, not an expected path
        raise SmoothingMappingError(f"internal error: fitted mean {mean} != target {target_mean}")
    return fitted


def summarize(eps, bins: int = 10) -> str:
    """One log line: min/mean/max and a text histogram of eps over [0, max]."""
    e = np.asarray(eps, dtype=np.float64)
    if e.size == 0:
        return "no samples"
    top = max(float(e.max()), 1e-12)
    counts, _ = np.histogram(e, bins=bins, range=(0.0, top))
    blocks = " ▁▂▃▄▅▆▇█"
    peak = counts.max()
    bar = "".join(blocks[0 if c == 0 else max(1, round(8 * c / peak))] for c in counts)
    return f"n={e.size} min={e.min():.4f} mean={e.mean():.4f} max={e.max():.4f} hist[0,{top:.3f}]=|{bar}|"
