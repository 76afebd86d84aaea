"""Statistics every analysis and study shares, written once: rank correlation, intervals, safe means.

- `spearman(x, y)`: Spearman's rho with average ranks for ties (NaN when undefined);
- `rank_correlation(a, b)`: Spearman over the cells finite in both tensors (patching vs attribution);
- `wilson_interval(k, n)`: 95% Wilson score interval of a proportion (sensible at 0% and 100%);
- `bootstrap_interval(values, stat)`: percentile bootstrap 95% interval of any statistic;
- `nanmean(t)`, `fraction(hit, valid)`: means that ignore what is not finite / not valid.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import torch

from dgt_interp.errors import DgtInterpError


class StatsError(DgtInterpError, ValueError):
    """Too little data for a statistic (one-line message)."""


def ranks(v: torch.Tensor) -> torch.Tensor:
    """0-based ranks of a 1-D tensor, ties given their average rank."""
    order = torch.argsort(v, stable=True)
    out = torch.empty_like(v)
    out[order] = torch.arange(len(v), dtype=v.dtype)
    for val in torch.unique(v):
        tie = v == val
        out[tie] = out[tie].mean()
    return out


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant or n < 2."""
    x, y = torch.as_tensor(x).double().flatten(), torch.as_tensor(y).double().flatten()
    if x.numel() < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum()) / den if den > 0 else float("nan")


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two same-shape tensors over the cells finite in both."""
    ok = torch.isfinite(a) & torch.isfinite(b)
    if int(ok.sum()) < 2:
        raise StatsError("need at least two finite cells to rank-correlate")
    return spearman(a[ok], b[ok])


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sensible at 0% and 100%); (0, 1) for n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(values: Sequence, stat: Callable[[list], float], *, draws: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(resampled values)` (rows resampled with replacement).

    Draws whose statistic is NaN (e.g. a constant resample for a correlation) are left out; (NaN,
    NaN) if fewer than two values or no draw is defined."""
    values = list(values)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    stats = []
    for _ in range(draws):
        v = stat([values[rng.randrange(len(values))] for _ in values])
        if not math.isnan(v):
            stats.append(v)
    if not stats:
        return (float("nan"), float("nan"))
    stats.sort()
    lo = stats[int((1 - level) / 2 * (len(stats) - 1))]
    hi = stats[int(math.ceil((1 + level) / 2 * (len(stats) - 1)))]
    return (lo, hi)


def nanmean(t) -> float:
    """Mean of the finite entries (NaN if none)."""
    t = torch.as_tensor(t, dtype=torch.float64) if not isinstance(t, torch.Tensor) else t
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else float("nan")


def fraction(hit: torch.Tensor, valid: torch.Tensor) -> float:
    """Share of `valid` entries that are `hit` (NaN if nothing is valid)."""
    n = int(valid.sum())
    return float((hit & valid).sum()) / n if n else float("nan")


__all__ = ["StatsError", "ranks", "spearman", "rank_correlation", "wilson_interval", "bootstrap_interval", "nanmean",
           "fraction"]
