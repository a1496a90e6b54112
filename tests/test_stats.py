"""The report's statistics against known answers, scipy and statsmodels: bootstraps, paired tests, multiplicity
corrections, power, chance correction and the identification of data-size power laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from harness.report.build import build
from harness.report.findings import significance
from harness.report.stats import (benjamini_hochberg, bootstrap_mean_ci, bootstrap_ratio_ci, chance_corrected,
                                  chance_from_choices, fit_power_law, holm, minimum_detectable_difference,
                                  paired_difference, paired_difference_seeds, paired_t_p, power_law, welch_p)
from report_store import write_run


def _nll(rng, n: int, per_token: float = 2.0):
    """`n` examples: token counts and summed NLLs whose per-token mean is `per_token` (the true ratio)."""
    counts = rng.integers(5, 60, n).astype(float)
    sums = per_token * counts + rng.normal(0, 1.0, n) * np.sqrt(counts)
    return sums, counts


# -- bootstrap intervals ------------------------------------------------------------------------------------------

def test_ratio_ci_is_the_token_weighted_mean():
    ci = bootstrap_ratio_ci([10.0, 2.0, 30.0], [5, 1, 10], n_boot=500)
    assert ci.mean == pytest.approx(42 / 16) and ci.n == 3  # not the mean of the per-example ratios (2.33)
    assert ci.low <= ci.mean <= ci.high
    assert bootstrap_mean_ci([1, 0, 1, 1]).mean == 0.75
    one = bootstrap_ratio_ci([3.0, math.nan], [2, 4])  # the NaN example is dropped: one left, no interval
    assert one.mean == 1.5 and one.n == 1 and math.isnan(one.low)
    assert bootstrap_mean_ci([]).n == 0


def test_ratio_ci_covers_the_true_mean_at_least_nine_times_in_ten():
    rng = np.random.default_rng(0)
    covered = 0
    for draw in range(200):
        ci = bootstrap_ratio_ci(*_nll(rng, 100), n_boot=500, seed=draw)
        covered += ci.low <= 2.0 <= ci.high
    assert covered >= 180


@pytest.mark.parametrize("kwargs", [{"level": 1.0}, {"level": 0.0}, {"n_boot": 0}, {"n_boot": 2.5}])
def test_bootstrap_arguments_are_checked(kwargs):
    with pytest.raises(ValueError):
        bootstrap_ratio_ci([1.0, 2.0], [1, 1], **kwargs)


def test_bootstrap_inputs_are_checked():
    with pytest.raises(ValueError, match="one entry per example"):
        bootstrap_ratio_ci([1.0, 2.0], [1])
    with pytest.raises(ValueError, match="non-negative"):
        bootstrap_ratio_ci([1.0, 2.0], [1, -1])
    with pytest.raises(ValueError, match="both be given"):
        paired_difference([1.0, 2.0], [1, 1], [1.0, 2.0], None)


# -- paired differences -------------------------------------------------------------------------------------------

def test_a_constant_shift_on_every_example_is_the_difference_with_a_degenerate_interval():
    sums, counts = _nll(np.random.default_rng(1), 40)
    d = paired_difference(sums, counts, sums + 0.25 * counts, counts, n_boot=1000)  # B is 0.25 nats/token worse
    assert d.diff == pytest.approx(-0.25) and d.n == 40
    assert d.low == pytest.approx(-0.25) and d.high == pytest.approx(-0.25) and d.se == pytest.approx(0, abs=1e-12)
    assert d.p == pytest.approx(1 / 1001)  # every replicate is as far from zero as the estimate: the smallest p
    same = paired_difference(sums, counts, sums, counts)
    assert same.diff == 0 and same.p == 1.0


def test_paired_bootstrap_agrees_with_the_paired_t_test_on_plain_means():
    rng = np.random.default_rng(2)
    a = rng.normal(0.6, 0.3, 80)
    for effect, p_range in ((0.05, (0.005, 0.2)), (0.0, (0.2, 1.0))):
        b = a + effect + rng.normal(0, 0.2, 80)  # B is higher by `effect` on average
        d = paired_difference(a, None, b, None, n_boot=4000)
        t = stats.ttest_rel(a, b)
        assert d.diff == pytest.approx(np.mean(a - b))
        assert d.p == pytest.approx(t.pvalue, abs=0.03) and p_range[0] < d.p < p_range[1]
        assert d.se == pytest.approx(np.std(a - b, ddof=1) / math.sqrt(80), rel=0.1)
        assert d.low < d.diff < d.high
    worse = paired_difference(a, None, a + 0.2 + rng.normal(0, 0.2, 80), None)
    assert worse.high < 0 and worse.p < 0.01  # the direction: A − B is negative, B clearly higher


def test_one_seed_is_the_single_run_comparison():
    sums, counts = _nll(np.random.default_rng(3), 30)
    other = sums + np.random.default_rng(4).normal(0.1, 1.0, 30)
    assert paired_difference_seeds([(sums, counts)], [(other, counts)]) == paired_difference(sums, counts, other,
                                                                                             counts)


def test_seed_variance_enters_the_interval():
    rng = np.random.default_rng(5)
    shifts = [0.1, 0.3, 0.2, 0.4]  # B worse than A by a per-seed amount, no example noise within a seed
    a = [_nll(rng, 50) for _ in shifts]
    b = [(s + shift * c, c) for (s, c), shift in zip(a, shifts)]
    d = paired_difference_seeds(a, b, n_boot=4000)
    assert d.diff == pytest.approx(-np.mean(shifts)) and d.seeds == 4 and d.n == 50
    assert d.se == pytest.approx(np.std(shifts) / 2, rel=0.1)  # the bootstrap SE of a mean of 4 seeds
    assert -0.4 <= d.low < d.diff < d.high <= -0.1
    # with example noise too, the interval is wider than the seed spread alone gives
    noisy = [(s + shift * c + rng.normal(0, 3.0, 50), c) for (s, c), shift in zip(a, shifts)]
    assert paired_difference_seeds(a, noisy, n_boot=2000).se > d.se
    with pytest.raises(ValueError, match="aligned"):
        paired_difference_seeds(a, b[:3])


def test_paired_t_over_seeds():
    a, b = [2.0, 2.1, 1.9, 2.05], [2.2, 2.25, 2.15, 2.3]
    assert paired_t_p(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert math.isnan(paired_t_p([2.0], [2.1]))
    assert math.isnan(paired_t_p([2.0, 2.1, None], [2.2, 2.3, 1.0]))  # two pairs with one same difference: no test
    assert paired_t_p([2.0, 2.1], [2.0, 2.1]) == 1.0


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy, on the constant side of a real test
def test_welch_with_two_constant_groups_is_no_test():
    assert math.isnan(welch_p([2.0, 2.0], [2.5, 2.5]))  # a zero standard error is not p = 0
    assert welch_p([2.0, 2.0], [2.0, 2.0]) == 1.0
    assert significance([2.0, 2.0], [2.5, 2.5]) == "no test possible over 2 seeds"
    assert welch_p([2.0, 2.0, 2.0], [2.4, 2.5, 2.6]) == pytest.approx(
        stats.ttest_ind([2.0, 2.0, 2.0], [2.4, 2.5, 2.6], equal_var=False).pvalue)  # one constant side: a test


# -- multiplicity, power, chance ------------------------------------------------------------------------------------

P_SETS = [[0.01, 0.04, 0.03, 0.005, 0.2], [0.5, 0.5, 0.01, 0.01, 1.0, 0.049], [0.001], [0.03, 0.02, 0.9, 0.04]]


@pytest.mark.parametrize("pvalues", P_SETS)
@pytest.mark.parametrize("ours, theirs", [(holm, "holm"), (benjamini_hochberg, "fdr_bh")])
def test_corrections_match_statsmodels(pvalues, ours, theirs):
    assert ours(pvalues) == pytest.approx(multipletests(pvalues, method=theirs)[1], abs=1e-15)


@pytest.mark.parametrize("ours, theirs", [(holm, "holm"), (benjamini_hochberg, "fdr_bh")])
def test_missing_p_values_pass_through_and_leave_the_family(ours, theirs):
    p = [0.01, math.nan, 0.04, None, 0.03]
    out = ours(p)
    assert math.isnan(out[1]) and math.isnan(out[3])
    assert out[[0, 2, 4]] == pytest.approx(multipletests([0.01, 0.04, 0.03], method=theirs)[1])
    assert len(ours([])) == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ours([0.2, 1.5])


def test_minimum_detectable_difference_by_hand():
    # z_0.975 = 1.959964, z_0.8 = 0.841621
    assert minimum_detectable_difference(0.01) == pytest.approx(2.801585 * 0.01, rel=1e-6)
    assert minimum_detectable_difference(0.02, alpha=0.01, power=0.9) == pytest.approx(
        (2.575829 + 1.281552) * 0.02, rel=1e-6)
    for bad in ({"alpha": 0}, {"power": 1}):
        with pytest.raises(ValueError):
            minimum_detectable_difference(0.01, **bad)


def test_chance_correction():
    chance = chance_from_choices(4)
    assert chance == 0.25
    assert chance_corrected(0.25, 0.85, chance) == 0.0  # a student at chance kept nothing
    assert chance_corrected(0.85, 0.85, chance) == 1.0
    assert chance_corrected(0.55, 0.85, chance) == pytest.approx(0.5)
    assert math.isnan(chance_corrected(0.5, 0.25, chance)) and math.isnan(chance_corrected(0.5, 0.2, chance))
    with pytest.raises(ValueError):
        chance_from_choices(0)


# -- power laws -----------------------------------------------------------------------------------------------------

SIZES = np.array([16, 32, 64, 128, 256, 512], dtype=float)


def test_an_exact_law_is_identified():
    fit = fit_power_law(SIZES, power_law(SIZES, 8.0, 0.5, 1.5))
    assert fit.identified and fit.reason == "" and fit.sizes == 6
    assert (fit.a, fit.b, fit.c) == pytest.approx((8.0, 0.5, 1.5), rel=1e-6)
    assert fit.n_for(1.5 + 8.0 / 10) == pytest.approx(100, rel=1e-6)


def test_a_noisy_law_over_seeds_has_intervals_covering_the_truth():
    n = np.repeat(SIZES[:5], 2)  # 5 sizes × 2 seeds
    fit = fit_power_law(n, power_law(n, 8.0, 0.5, 1.5) + np.random.default_rng(0).normal(0, 0.003, len(n)))
    assert fit.identified and fit.points == 10
    for truth, (low, high), se in zip((8.0, 0.5, 1.5), fit.ci, fit.se):
        assert low < truth < high and se > 0
    t = stats.t.ppf(0.975, 10 - 3)
    assert fit.ci[1] == pytest.approx((fit.b - t * fit.se[1], fit.b + t * fit.se[1]))


def test_non_monotone_data_are_not_identified_and_give_no_n():
    fit = fit_power_law(SIZES[:5], [1.5, 1.3, 1.6, 1.2, 1.7])
    assert not fit.identified and "a parameter at its bound (b = 5)" in fit.reason
    assert math.isnan(fit.n_for(1.4))
    rising = fit_power_law(SIZES[:5], [1.2, 1.3, 1.4, 1.5, 1.6])  # worse with more data: a flat law at best
    assert not rising.identified and "a = 0" in rising.reason


def test_three_sizes_are_not_identified_and_say_why():
    fit = fit_power_law([16, 16, 64, 64, 256, 256], [1.56, 1.55, 1.46, 1.455, 1.35, 1.34])
    assert not fit.identified and fit.reason.startswith("3 distinct sizes for 3 parameters")
    assert math.isnan(fit.n_for(1.4))
    exact = fit_power_law([16, 64, 256], power_law(np.array([16, 64, 256.0]), 8.0, 0.5, 1.5))  # 3 points: no se
    assert "covariance not finite" in exact.reason and all(math.isnan(s) for s in exact.se)


# -- the data-size section --------------------------------------------------------------------------------------

def test_the_data_size_table_shows_intervals_and_what_is_not_identified(tmp_path):
    rng = np.random.default_rng(1)
    for n in (16, 32, 64, 128, 256):
        for seed in range(2):
            write_run(tmp_path, "ds", method="lora", n_train=n, seed=seed,
                      eval_loss=float(power_law(n, 6.0, 0.5, 1.6) + rng.normal(0, 0.002)))
            write_run(tmp_path, "ds", method="full", n_train=n, seed=seed,  # worse with more data
                      eval_loss=float(1.5 + 0.001 * n + rng.normal(0, 0.002)))
    section = next(s for s in build("ds", tmp_path).sections if s.title == "Data-size curves")
    table = section.tables[0]
    rows = {row[0].text: dict(zip(table.columns, row)) for row in table.rows}
    lora, full = rows["lora"], rows["full"]
    assert lora["identified"].text == "yes"
    b, low, high = (float(x) for x in lora["b"].text.replace("(", "").replace(")", "").replace("–", " ").split())
    assert low < 0.5 < high and lora["b"].sort == pytest.approx(b, abs=5e-4)  # sorts by the estimate
    assert full["identified"].text.startswith("no: a parameter at its bound")
    assert full["n to reach target"].text.startswith("not identified: a parameter at its bound")
    assert any("do not pin down the law of full" in p for p in section.paragraphs)


def test_seed_level_interval_holds_the_mean_over_seeds_and_one_seed_is_the_plain_bootstrap():
    from harness.report.stats import bootstrap_ratio_ci, bootstrap_ratio_ci_seeds

    rng = np.random.default_rng(0)
    seeds = [(rng.normal(20 + 2 * s, 3, 50), np.full(50, 10.0)) for s in range(3)]
    both = bootstrap_ratio_ci_seeds(seeds)
    assert both.mean == pytest.approx(np.mean([s.sum() / c.sum() for s, c in seeds]))
    assert both.low < both.mean < both.high and both.n == 50
    assert bootstrap_ratio_ci_seeds(seeds[:1]) == bootstrap_ratio_ci(*seeds[0])
