"""The statistics behind a report: seed and bootstrap intervals, paired tests, multiplicity corrections, Pareto
fronts, data-size power laws."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class Interval:
    """A mean over `n` units with a two-sided interval (NaN bounds when there is none).

    The units are seeds for `mean_ci` (a Student-t interval) and examples for the bootstraps (a percentile
    interval)."""

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


#: spreads below this share of the values' magnitude are rounding, not variance (2.1 − 2.3 ≠ 2.0 − 2.2 in floats)
_RTOL_CONSTANT = 1e-12


def _negligible(spread: float, *values) -> bool:
    scale = max((float(np.abs(v).max()) for v in values if np.size(v)), default=0.0)
    return spread <= _RTOL_CONSTANT * scale


def welch_p(a, b) -> float:
    """Two-sided Welch t-test p-value over the finite values of two independent samples.

    NaN ("no test possible") when either side has fewer than 2 finite values, or when both sides have zero
    variance (a spread within 1e-12 of their magnitude, float rounding) and different means: a t statistic with
    a zero standard error is not evidence. Two constant samples with the same mean give 1.0.
    """
    a = np.asarray([v for v in a if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if v is not None and np.isfinite(v)], dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if _negligible(np.ptp(a), a) and _negligible(np.ptp(b), b):
        return 1.0 if _negligible(abs(a.mean() - b.mean()), a, b) else math.nan
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


# -- example-level bootstraps and paired comparisons --------------------------------------------------------------

#: cells of one resampling-weights block (n_boot rows × n examples), which bounds the memory of a bootstrap
_BLOCK_CELLS = 2_000_000


@dataclass(frozen=True)
class PairedDiff:
    """A − B of two runs (or seed-paired sets of runs) scored on the same examples.

    `low`/`high`: the percentile bootstrap interval; `se`: the bootstrap standard error; `p`: the two-sided
    paired-bootstrap p-value; `n`: paired examples (per seed: the smallest seed's); `seeds`: seed pairs.
    """

    diff: float
    low: float
    high: float
    p: float
    n: int
    se: float
    seeds: int = 1


def _check_bootstrap(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), but got level={level}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, but got n_boot={n_boot}")


def _columns(*pairs) -> np.ndarray:
    """The (sums, counts) pairs side by side as an n × 2k array (counts None: ones), rows with a non-finite
    entry dropped.

    Raises:
        ValueError: the lengths differ, or a count is negative.
    """
    cols = []
    for sums, counts in pairs:
        s = np.asarray(sums, dtype=float).ravel()
        c = np.ones_like(s) if counts is None else np.asarray(counts, dtype=float).ravel()
        cols += [s, c]
    if len({len(c) for c in cols}) > 1:
        raise ValueError(f"sums and counts must have one entry per example, but got lengths {[len(c) for c in cols]}")
    x = np.column_stack(cols) if cols[0].size else np.empty((0, len(cols)))
    x = x[np.isfinite(x).all(axis=1)]
    if (x[:, 1::2] < 0).any():
        raise ValueError("counts must be non-negative token counts, but got a negative one")
    return x


def _resampled_totals(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Column totals of `n_boot` resamples of the rows of `x` with replacement: an (n_boot, columns) array.

    Each resample is a row of multinomial counts (how often each example is drawn), so a block of resamples is
    one matrix product.
    """
    n = len(x)
    out = np.empty((n_boot, x.shape[1]))
    step = max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        out[start:start + rows] = rng.multinomial(n, np.full(n, 1 / n), size=rows) @ x
    return out


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num, dtype=float) / den


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _centred_p(boot: np.ndarray, diff: float) -> float:
    """Two-sided bootstrap p-value: the replicates shifted to the null (mean zero around `diff`) that are at
    least as far from zero as `diff`, (1 + count) / (1 + replicates)."""
    boot = boot[np.isfinite(boot)]
    return float((1 + np.count_nonzero(np.abs(boot - diff) >= abs(diff))) / (1 + len(boot)))


def bootstrap_ratio_ci(sums, counts, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Token-weighted mean Σsums / Σcounts over examples with a percentile bootstrap interval.

    Each example is its summed NLL (`sums`) and its token count (`counts`; None: ones, a plain mean). The
    interval takes the `(1 ± level) / 2` quantiles of the ratio over `n_boot` resamples of the examples with
    replacement. Examples with a non-finite entry are dropped; `n` is the examples kept (one has no interval).

    Raises:
        ValueError: `level` outside (0, 1), `n_boot` < 1, lengths that differ, or a negative count.
    """
    _check_bootstrap(level, n_boot)
    x = _columns((sums, counts))
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(_ratio(x[:, 0].sum(), x[:, 1].sum()))
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan, 1)
    tot = _resampled_totals(x, n_boot, np.random.default_rng(seed))
    return Interval(mean, *_percentiles(_ratio(tot[:, 0], tot[:, 1]), level), len(x))


def bootstrap_mean_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Mean of per-example scores (task accuracy 0/1, …) with a percentile bootstrap interval over examples;
    `bootstrap_ratio_ci` with unit counts."""
    return bootstrap_ratio_ci(values, None, level, n_boot, seed)


def _paired_columns(a_sums, a_counts, b_sums, b_counts) -> np.ndarray:
    if (a_counts is None) != (b_counts is None):
        raise ValueError("a_counts and b_counts must both be given (token-weighted means) or both be None "
                         "(plain means), but got one of them")
    return _columns((a_sums, a_counts), (b_sums, b_counts))


def _diff(x: np.ndarray) -> float:
    return float(_ratio(x[:, 0].sum(), x[:, 1].sum()) - _ratio(x[:, 2].sum(), x[:, 3].sum()))


def _resampled_diffs(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    tot = _resampled_totals(x, n_boot, rng)
    return _ratio(tot[:, 0], tot[:, 1]) - _ratio(tot[:, 2], tot[:, 3])


def _paired_result(diff: float, boot: np.ndarray, level: float, n: int, seeds: int) -> PairedDiff:
    return PairedDiff(diff, *_percentiles(boot, level), _centred_p(boot, diff), n, float(np.nanstd(boot, ddof=1)),
                      seeds)


def paired_difference(a_sums, a_counts, b_sums, b_counts=None, *, level: float = 0.95, n_boot: int = 2000,
                      seed: int = 0) -> PairedDiff:
    """Difference A − B of the token-weighted means Σsums/Σcounts of two runs scored on the same examples
    (same order), with a paired bootstrap.

    Each of `n_boot` replicates resamples the examples with replacement and applies the same indices to A and B,
    so what the examples share cancels. The interval is the percentile interval of the replicates, `se` their
    standard deviation, and `p` the two-sided paired-bootstrap p-value: the share of replicates, shifted to
    mean zero, at least as far from zero as the observed difference, (1 + count) / (1 + n_boot) — so
    1 / (1 + n_boot) is the smallest. Counts None on both sides: plain means (task scores). An example with a
    non-finite entry on either side is dropped from both; fewer than 2 examples give NaN bounds, se and p.
    One seed measures example noise only, not the run-to-run noise of training: see `paired_difference_seeds`.

    Raises:
        ValueError: one of the counts None and the other not, lengths that differ, a negative count, or a
            `level` / `n_boot` out of range.
    """
    _check_bootstrap(level, n_boot)
    x = _paired_columns(a_sums, a_counts, b_sums, b_counts)
    if len(x) < 2:
        diff = _diff(x) if len(x) else math.nan
        return PairedDiff(diff, math.nan, math.nan, math.nan, len(x), math.nan)
    return _paired_result(_diff(x), _resampled_diffs(x, n_boot, np.random.default_rng(seed)), level, len(x), 1)


def paired_difference_seeds(a, b, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> PairedDiff:
    """A − B over several seeds, each seed's A and B runs scored on the same examples: the mean over seeds of
    the per-seed differences of token-weighted means, with a two-level bootstrap.

    `a` and `b` are lists of (sums, counts) per seed, aligned (a[i] and b[i] share seed i's data order; counts
    None: plain means). Each replicate resamples the seed pairs with replacement, then, for every seed drawn,
    resamples that seed's examples with replacement using the same indices for its A and B, and averages the
    per-seed differences; so the interval, `se` and `p` (as in `paired_difference`) carry both the seed-to-seed
    and the example-to-example variance. With few seeds the seed level is coarse (2 seeds allow only 3 distinct
    seed resamples, and the bootstrap variance is (k − 1)/k of the seed variance of k seeds); one seed is
    `paired_difference`.

    Raises:
        ValueError: `a` and `b` of different lengths or empty, a seed with no paired examples, or the errors of
            `paired_difference`.
    """
    _check_bootstrap(level, n_boot)
    if len(a) != len(b) or not a:
        raise ValueError(f"a and b must hold one (sums, counts) per seed, aligned, but got {len(a)} and {len(b)}")
    if len(a) == 1:
        return paired_difference(*a[0], *b[0], level=level, n_boot=n_boot, seed=seed)
    per_seed = [_paired_columns(sa, ca, sb, cb) for (sa, ca), (sb, cb) in zip(a, b)]
    if empty := [i for i, x in enumerate(per_seed) if len(x) == 0]:
        raise ValueError(f"every seed must have paired examples, but seeds at positions {empty} have none")
    boot = _two_level(per_seed, n_boot, np.random.default_rng(seed), _resampled_diffs)
    diff = float(np.mean([_diff(x) for x in per_seed]))
    return _paired_result(diff, boot, level, min(len(x) for x in per_seed), len(per_seed))


def _two_level(per_seed: list[np.ndarray], n_boot: int, rng: np.random.Generator, resample) -> np.ndarray:
    """`n_boot` replicates of the mean over seeds: each draws the seeds with replacement, then every drawn seed's
    examples (`resample(x, count, rng)` → `count` statistics of resamples of the rows of x)."""
    k = len(per_seed)
    drawn = rng.integers(0, k, size=(n_boot, k))
    values = np.empty((n_boot, k))
    for i, x in enumerate(per_seed):
        where = drawn == i  # every draw of seed i gets its own example resample
        if where.any():
            values[where] = resample(x, int(where.sum()), rng)
    return values.mean(axis=1)


def _resampled_ratios(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    tot = _resampled_totals(x, n_boot, rng)
    return _ratio(tot[:, 0], tot[:, 1])


def bootstrap_ratio_ci_seeds(per_seed, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """The mean over seeds of each seed's Σsums / Σcounts (`per_seed`: one (sums, counts) per seed; counts None:
    plain means) with the two-level bootstrap of `paired_difference_seeds`: seeds drawn with replacement, then
    each drawn seed's examples, so seed and example noise are both in the interval. One seed is
    `bootstrap_ratio_ci`; `n` is the smallest seed's example count.

    Raises:
        ValueError: no seeds, a seed without examples, or the errors of `bootstrap_ratio_ci`.
    """
    _check_bootstrap(level, n_boot)
    if len(per_seed) == 1:
        return bootstrap_ratio_ci(*per_seed[0], level=level, n_boot=n_boot, seed=seed)
    xs = [_columns(pair) for pair in per_seed]
    if not xs or any(len(x) == 0 for x in xs):
        raise ValueError("per_seed must hold one (sums, counts) with examples per seed")
    boot = _two_level(xs, n_boot, np.random.default_rng(seed), _resampled_ratios)
    mean = float(np.mean([_ratio(x[:, 0].sum(), x[:, 1].sum()) for x in xs]))
    return Interval(mean, *_percentiles(boot, level), min(len(x) for x in xs))


def paired_t_p(a, b) -> float:
    """Two-sided paired t-test p-value (scipy.stats.ttest_rel) over seed pairs a[i], b[i].

    Pairs with a missing side are dropped. NaN with fewer than 2 pairs, and NaN when the differences have zero
    variance (within float rounding, 1e-12 of the values' magnitude) but a nonzero mean: a zero standard
    error is not evidence, so let the example-level tests (`paired_difference_seeds`) decide. Identical pairs
    (all differences zero) give 1.0.

    Raises:
        ValueError: `a` and `b` of different lengths.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must be aligned seed pairs, but got {len(a)} and {len(b)} values")
    x = np.asarray([(u, v) for u, v in zip(a, b) if u is not None and v is not None], dtype=float).reshape(-1, 2)
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) < 2:
        return math.nan
    d = x[:, 0] - x[:, 1]
    if _negligible(np.ptp(d), x):
        return 1.0 if _negligible(abs(d.mean()), x) else math.nan
    return float(stats.ttest_rel(x[:, 0], x[:, 1]).pvalue)


# -- multiplicity, power, chance ------------------------------------------------------------------------------------

def _pvalues(pvalues) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray([math.nan if v is None else v for v in pvalues], dtype=float).ravel()
    ok = np.isfinite(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], but got {p[ok][(p[ok] < 0) | (p[ok] > 1)].tolist()}")
    return p, ok


def _adjusted(pvalues, step) -> np.ndarray:
    """`step(sorted_p, m)` → the adjusted values of the finite p-values sorted ascending, put back in place;
    NaN entries stay NaN and are not counted in the family size m."""
    p, ok = _pvalues(pvalues)
    out = np.full_like(p, math.nan)
    m = int(ok.sum())
    if m:
        order = np.argsort(p[ok])
        out[np.flatnonzero(ok)[order]] = step(p[ok][order], m)
    return out


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values: sorted ascending, p_(i)·(m − i + 1) made non-decreasing by a running
    maximum, capped at 1 (as statsmodels' multipletests(method="holm")). NaN entries stay NaN and are not
    counted in the family size m.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    return _adjusted(pvalues, lambda p, m: np.minimum(np.maximum.accumulate(p * np.arange(m, 0, -1)), 1.0))


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini–Hochberg false-discovery-rate adjusted p-values: sorted ascending, p_(i)·m / i made
    non-increasing from the largest down by a running minimum, capped at 1 (as statsmodels'
    multipletests(method="fdr_bh")). NaN entries stay NaN and are not counted in the family size m.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    return _adjusted(pvalues, lambda p, m: np.minimum(
        np.minimum.accumulate((p * m / np.arange(1, m + 1))[::-1])[::-1], 1.0))


def minimum_detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """(z_{1−α/2} + z_{power})·se: the smallest true difference a two-sided level-`alpha` test with standard
    error `se` detects with probability `power` (normal approximation).

    Raises:
        ValueError: `alpha` or `power` outside (0, 1), or a negative `se`.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), but got alpha={alpha}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), but got power={power}")
    if se < 0:
        raise ValueError(f"se must be a non-negative standard error, but got se={se}")
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)


def chance_corrected(student: float, teacher: float, chance: float) -> float:
    """(student − chance) / (teacher − chance): the share of the teacher's gain over chance the student keeps
    (0 at chance, 1 at the teacher); NaN when the teacher is not above chance or a value is missing."""
    if any(v is None or not math.isfinite(v) for v in (student, teacher, chance)) or teacher <= chance:
        return math.nan
    return (student - chance) / (teacher - chance)


def chance_from_choices(k: int) -> float:
    """The accuracy of a uniform guess among `k` choices, 1/k.

    Raises:
        ValueError: `k` is not a positive integer.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive number of choices, but got k={k}")
    return 1 / k


# -- data-size power laws ---------------------------------------------------------------------------------------------

#: the fit's upper bound on the exponent b (no data-size curve falls faster than n^-5)
B_MAX = 5.0


def power_law(n, a, b, c):
    """The saturating data-size law L(n) = a·n^(-b) + c."""
    return a * np.power(n, -b) + c


_NAN3 = (math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class PowerLawFit:
    """L(n) = a·n^(-b) + c fitted by least squares, with its fit quality and parameter uncertainty.

    `se`: standard errors of (a, b, c) from curve_fit's covariance (scaled by the residual variance); `ci`: the
    `level` intervals estimate ± t_{(1+level)/2, points−3}·se (NaN when the covariance is not finite);
    `at_bound`: the parameters the fit pressed against a bound ("b = 5"); `covariance_finite`: False when the
    covariance is infinite, NaN, or hides a rank-deficient Jacobian.
    """

    a: float
    b: float
    c: float
    r2: float
    rmse: float
    points: int
    #: distinct n values: with 3 the three parameters fit them exactly, so they are not identified
    sizes: int = 0
    se: tuple[float, float, float] = _NAN3
    ci: tuple[tuple[float, float], ...] = ((math.nan, math.nan),) * 3
    at_bound: tuple[str, ...] = ()
    covariance_finite: bool = True

    @property
    def reason(self) -> str:
        """Why a, b and c are not identified ("" when they are): fewer than 4 distinct sizes, a parameter at a
        bound of the fit, or a covariance that is not finite; several joined by "; "."""
        why = []
        if self.sizes < 4:
            why.append(f"{self.sizes} distinct sizes for 3 parameters")
        if self.at_bound:
            why.append(f"a parameter at its bound ({', '.join(self.at_bound)})")
        if not self.covariance_finite:
            why.append("covariance not finite")
        return "; ".join(why)

    @property
    def identified(self) -> bool:
        return not self.reason

    def n_for(self, target: float) -> float:
        """The n at which the fitted curve reaches `target` (inf when it never does; NaN when the fit is not
        identified: such a curve is read between the measured sizes only)."""
        if not self.identified:
            return math.nan
        if not target > self.c or self.a <= 0 or self.b <= 0:
            return math.inf
        return float((self.a / (target - self.c)) ** (1 / self.b))


def _at_bound(n: np.ndarray, y: np.ndarray, a: float, b: float, c: float, rtol: float) -> tuple[str, ...]:
    """The parameters within `rtol` of a bound: a and c relative to the largest loss (a by its largest term,
    a·min(n)^-b), b relative to B_MAX."""
    scale = float(np.abs(y).max()) or 1.0
    hits = []
    if a * float(n.min()) ** -b <= rtol * scale:
        hits.append("a = 0")
    if b <= rtol * B_MAX:
        hits.append("b = 0")
    elif b >= B_MAX * (1 - rtol):
        hits.append(f"b = {B_MAX:g}")
    if c <= rtol * scale:
        hits.append("c = 0")
    return tuple(hits)


def _covariance_ok(n: np.ndarray, a: float, b: float, cov: np.ndarray) -> bool:
    """Finite, non-negative variances, and a Jacobian of full rank (curve_fit's pseudo-inverse would otherwise
    report a finite covariance for a direction the data do not constrain)."""
    if not np.isfinite(cov).all() or (np.diag(cov) < 0).any():
        return False
    jac = np.column_stack([np.power(n, -b), -a * np.power(n, -b) * np.log(n), np.ones_like(n)])
    norms = np.linalg.norm(jac, axis=0)
    return bool((norms > 0).all() and np.linalg.matrix_rank(jac / norms, tol=1e-10) == 3)


def fit_power_law(n, loss, *, level: float = 0.95, rtol: float = 1e-3) -> PowerLawFit | None:
    """Least-squares fit of L(n) = a·n^(-b) + c with a, c ≥ 0 (a loss floor is never negative) and
    0 ≤ b ≤ B_MAX, over every (n, loss) point (seeds are repeated n); None with fewer than 3 distinct n.

    The parameter intervals are `level` t-intervals on points − 3 degrees of freedom around the estimates
    (symmetric, not clipped to the bounds).
    `rtol`: how close (relative) to a bound a parameter counts as at it. See `PowerLawFit.reason` for when
    the fit is not identified.

    Raises:
        ValueError: `level` outside (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), but got level={level}")
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)  # an inf covariance is reported, not warned
        try:
            (a, b, c), cov = optimize.curve_fit(power_law, n, y, p0=(a0, b0, c0),
                                                bounds=([0, 0, 0], [np.inf, B_MAX, np.inf]), maxfev=20000)
        except (RuntimeError, ValueError):
            return None
    pred = power_law(n, a, b, c)
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else math.nan
    finite = _covariance_ok(n, a, b, cov)
    se, ci = _NAN3, ((math.nan, math.nan),) * 3
    if finite and len(y) > 3:
        se = tuple(float(v) for v in np.sqrt(np.diag(cov)))
        t = stats.t.ppf((1 + level) / 2, len(y) - 3)
        ci = tuple((float(p - t * s), float(p + t * s)) for p, s in zip((a, b, c), se))
    return PowerLawFit(float(a), float(b), float(c), r2, math.sqrt(ss_res / len(y)), len(y), len(np.unique(n)),
                       se, ci, _at_bound(n, y, a, b, c, rtol), finite)
