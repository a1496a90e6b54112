"""The statistics behind a report: seed intervals, Welch tests, Pareto fronts, data-size power laws."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class Interval:
    """Mean of `n` seeds with a two-sided Student-t confidence interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values, level: float = 0.95) -> Interval:
    """Mean and t-interval of the finite values; one value has no interval."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan, 1)
    sem = stats.sem(x)
    if sem == 0:
        return Interval(mean, mean, mean, len(x))
    low, high = stats.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high), len(x))


def welch_p(a, b) -> float:
    """Two-sided Welch t-test p-value; NaN when either side has fewer than 2 finite values."""
    a = np.asarray([v for v in a if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if v is not None and np.isfinite(v)], dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.var(a) == 0 and np.var(b) == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def pareto_mask(cost, quality, minimize_quality: bool = True, *, minimize_cost: bool = True) -> np.ndarray:
    """True for the points no other point beats on both axes, each in its own direction.

    A point is dominated when another is at least as good on both and strictly better on one.
    Points with a missing coordinate are never on the front.
    """
    c = np.asarray(cost, dtype=float) * (1 if minimize_cost else -1)
    q = np.asarray(quality, dtype=float) * (1 if minimize_quality else -1)
    ok = np.isfinite(c) & np.isfinite(q)
    mask = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        dominated = others & (c <= c[i]) & (q <= q[i]) & ((c < c[i]) | (q < q[i]))
        mask[i] = not dominated.any()
    return mask


def power_law(n, a, b, c):
    """The saturating data-size law L(n) = a·n^(-b) + c."""
    return a * np.power(n, -b) + c


@dataclass(frozen=True)
class PowerLawFit:
    a: float
    b: float
    c: float
    r2: float
    rmse: float
    points: int
    #: distinct n values: with 3 the three parameters fit them exactly, so they are not identified
    sizes: int = 0

    @property
    def identified(self) -> bool:
        return self.sizes >= 4

    def n_for(self, target: float) -> float:
        """The n at which the fitted curve reaches `target` (inf when it never does)."""
        if not target > self.c or self.a <= 0 or self.b <= 0:
            return math.inf
        return float((self.a / (target - self.c)) ** (1 / self.b))


def fit_power_law(n, loss) -> PowerLawFit | None:
    """Least-squares fit of L(n) = a·n^(-b) + c (a, b, c ≥ 0: a loss floor is never negative); None with
    fewer than 3 distinct n."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(loss, dtype=float)
    keep = np.isfinite(n) & np.isfinite(y) & (n > 0)
    n, y = n[keep], y[keep]
    if len(np.unique(n)) < 3:
        return None
    # start from a pure power law through the two ends, the floor a little under the best loss
    c0 = max(float(y.min()) - 0.1 * float(np.ptp(y) or 1.0), 0.0)
    b0 = 0.5
    a0 = max(float(y.max()) - c0, 1e-3) * float(n.min()) ** b0
    try:
        (a, b, c), _ = optimize.curve_fit(power_law, n, y, p0=(a0, b0, c0),
                                          bounds=([0, 0, 0], [np.inf, 5, np.inf]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    pred = power_law(n, a, b, c)
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return PowerLawFit(float(a), float(b), float(c), r2, math.sqrt(ss_res / len(y)), len(y), len(np.unique(n)))
