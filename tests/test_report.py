"""Reports built from synthetic stores: the numbers in the tables, the fronts, the fits, the sentences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import run_cli
from harness.report.build import build
from harness.report.findings import significance
from harness.report.frame import lower_is_better
from harness.report.objectives import loss_mix
from harness.report.render import write
from harness.report.stats import fit_power_law, mean_ci, pareto_mask, power_law, welch_p
from report_store import write_run


def _section(report, title):
    return next(s for s in report.sections if s.title == title)


def _row(report, config):
    return report.summary.set_index("config").loc[config]


# -- statistics -------------------------------------------------------------------------------------------------

def test_mean_ci_is_the_student_t_interval():
    ci = mean_ci([1.0, 1.2, 1.4])
    half = stats.t.ppf(0.975, 2) * 0.2 / math.sqrt(3)  # sd 0.2 over 3 seeds
    assert ci.mean == pytest.approx(1.2) and ci.n == 3
    assert ci.low == pytest.approx(1.2 - half) and ci.high == pytest.approx(1.2 + half)
    one = mean_ci([5.0, None, float("nan")])
    assert one.mean == 5.0 and one.n == 1 and math.isnan(one.low)


def test_pareto_mask_minimizes_both_and_keeps_ties():
    cost = [1000, 2000, 2500, 1000, 3000, np.nan]
    loss = [2.0, 1.5, 1.8, 2.0, 1.5, 1.0]
    # C (2500, 1.8) is beaten by B; E (3000, 1.5) ties B on loss at a higher cost; the NaN point is never on it
    assert pareto_mask(cost, loss).tolist() == [True, True, False, True, False, False]
    # higher-better quality (accuracy): the best accuracy at the lowest cost wins
    assert pareto_mask([1, 2, 3], [0.5, 0.4, 0.9], minimize_quality=False).tolist() == [True, False, True]


def test_power_law_fit_recovers_a_known_law():
    rng = np.random.default_rng(0)
    n = np.repeat([50, 100, 200, 400, 800, 1600, 3200], 3)
    loss = power_law(n, 8.0, 0.5, 1.5) + rng.normal(0, 0.002, len(n))
    fit = fit_power_law(n, loss)
    assert fit.a == pytest.approx(8.0, rel=0.05) and fit.b == pytest.approx(0.5, rel=0.03)
    assert fit.c == pytest.approx(1.5, abs=0.02) and fit.r2 > 0.999
    assert fit.n_for(1.5 + 8.0 * 400 ** -0.5) == pytest.approx(400, rel=0.05)
    assert fit.n_for(1.0) == math.inf  # below the floor: never reached
    assert fit_power_law([10, 20], [2.0, 1.9]) is None  # two points do not make a curve
    assert fit.identified


def test_three_sizes_fit_a_non_negative_floor_and_say_they_are_not_identified():
    # nearly linear in log n, as a short CPU run gives: unconstrained, c ran to -147
    fit = fit_power_law([16, 16, 64, 64, 256, 256], [1.55, 1.55, 1.455, 1.455, 1.34, 1.34])
    assert fit.c >= 0 and not fit.identified and fit.sizes == 3


def test_welch_and_the_words_for_it():
    a, b = [2.0, 2.1, 1.9], [2.5, 2.6, 2.4]
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert significance(a, b).startswith("significant over 3 seeds (Welch p=")
    assert significance([2.0, 2.2, 1.8], [2.05, 2.25, 1.85]).startswith("not significant")
    assert significance([2.0], [2.5, 2.6]) == "single seed — no significance"


# -- reports from stores of several shapes ------------------------------------------------------------------------

def test_method_only_three_seeds(tmp_path):
    losses = {"lora": [2.0, 2.1, 1.9], "qlora": [2.2, 2.3, 2.1], "full": [1.8, 1.85, 1.75]}
    mems = {"lora": 1000, "qlora": 600, "full": 3000}
    for method, values in losses.items():
        for seed, loss in enumerate(values):
            write_run(tmp_path, "cmp", method=method, seed=seed, eval_loss=loss, mem=mems[method] + seed,
                      params={"lora": 10_000, "qlora": 10_000, "full": 1_000_000}[method])
    report = build("cmp", tmp_path)
    assert report.axes == ["method.name"]
    lora = _row(report, "lora-n100")
    assert lora["n_seeds"] == 3
    ppl = np.exp(losses["lora"])
    ci = stats.t.interval(0.95, 2, loc=ppl.mean(), scale=stats.sem(ppl))
    assert lora["eval_ppl_mean"] == pytest.approx(ppl.mean())
    assert (lora["eval_ppl_ci_low"], lora["eval_ppl_ci_high"]) == pytest.approx(ci)
    # the table shows mean ± half-width and marks the best column value (full has the lowest ppl)
    table = _section(report, "Summary").tables[0]
    by_name = {row[0].text: row for row in table.rows}
    col = table.columns.index("eval ppl")
    assert by_name["lora-n100"][col].text == f"{ppl.mean():.2f} ± {(ci[1] - ci[0]) / 2:.2f}"
    assert by_name["full-n100"][col].best and not by_name["lora-n100"][col].best
    mem_col = table.columns.index("peak train MiB")
    assert by_name["qlora-n100"][mem_col].best
    # fronts: against memory every method is on it (each trades memory for quality)
    bullets = _section(report, "Findings").bullets
    assert bullets[0].startswith("Best eval ppl: full-n100")
    front = next(b for b in bullets if b.startswith("Pareto front of eval ppl against peak train MiB"))
    assert front.endswith("qlora-n100, lora-n100, full-n100.")
    qlora = next(b for b in bullets if b.startswith("qlora-n100 used 80% less peak training memory than full-n100"))
    # seeds share data order across methods: paired over seeds, Holm-corrected over the findings' comparisons
    p = stats.ttest_rel(losses["qlora"], losses["full"]).pvalue
    assert "paired t-test over 3 seeds" in qlora and f"Holm-adjusted p={min(1, 2 * p):.2g} over 2 comparisons" in qlora
    paths = write(report, tmp_path / "reports" / "cmp")
    csv = pd.read_csv(paths["csv"])
    assert csv.set_index("config").loc["lora-n100", "eval_ppl_mean"] == pytest.approx(ppl.mean())
    assert (tmp_path / "reports" / "cmp" / "pareto_eval_ppl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![" in paths["markdown"].read_text() and "| **" in paths["markdown"].read_text()


def test_single_seed_says_so(tmp_path):
    write_run(tmp_path, "one", method="lora", eval_loss=2.0, mem=1000)
    write_run(tmp_path, "one", method="ia3", eval_loss=2.4, mem=500)
    report = build("one", tmp_path)
    bullets = _section(report, "Findings").bullets
    assert bullets[0] == ("Best eval ppl: lora-n100 (7.39, single seed). Against the runner-up ia3-n100: no test "
                          "possible (one seed and no per-example scores).")
    table = _section(report, "Summary").tables[0]
    assert all("±" not in cell.text for row in table.rows for cell in row)


def test_decode_latency_unmerged_and_merged_with_their_iqrs(tmp_path):
    write_run(tmp_path, "lat", method="lora", extra={
        "infer_decode_ms_per_token": 31.5, "infer_decode_ms_per_token_iqr": 2.1, "latency_samples": 20,
        "infer_decode_ms_per_token_merged": 30.0, "infer_decode_ms_per_token_merged_iqr": 0.5})
    write_run(tmp_path, "lat", method="prompt_tuning", extra={  # does not merge
        "infer_decode_ms_per_token": 35.0, "infer_decode_ms_per_token_iqr": 9.0, "latency_samples": 20})
    report = build("lat", tmp_path)
    section = _section(report, "Summary")
    table = section.tables[0]
    cols = [table.columns.index(c) for c in ("decode ms/token", "decode IQR", "merged decode ms/token",
                                             "merged decode IQR")]
    by_name = {row[0].text: [row[c] for c in cols] for row in table.rows}
    assert [c.text for c in by_name["lora-n100"]] == ["31.5", "2.1", "30.0", "0.5"]
    assert [c.text for c in by_name["prompt_tuning-n100"]] == ["35.0", "9.0", "–", "–"]
    assert by_name["lora-n100"][0].best and not any(c.best for row in by_name.values() for c in row[1::2])  # IQR: no best
    assert "median over its latency prompts × repeats" in " ".join(section.paragraphs)


def test_a_slug_rerun_under_other_settings_is_not_averaged_with_the_old_runs_as_seeds(tmp_path):
    old_lr = {"train": {"lr": 1e-3}}
    for seed in (0, 1):  # the same grid point, first at lr 1e-3 ...
        write_run(tmp_path, "rerun", method="lora", seed=seed, eval_loss=3.0, overrides=old_lr)
    for seed in (2, 3):  # ... then rerun after `base` changed to lr 2e-3 (finished later)
        write_run(tmp_path, "rerun", method="lora", seed=seed, eval_loss=2.0 + 0.01 * seed, overrides={"train": {"lr": 2e-3}})
    write_run(tmp_path, "rerun", method="ia3", eval_loss=2.5, overrides={"train": {"lr": 2e-3}})
    report = build("rerun", tmp_path)
    lora = _row(report, "lora-n100")
    assert lora["n_seeds"] == 2 and lora["eval_loss_mean"] == pytest.approx(2.025)
    intro = " ".join(_section(report, "Summary").paragraphs)
    assert "Left out: 2 runs of 1 configuration (lora-n100) made under earlier settings (differing in train.lr)" in intro
    # the same spec and seed twice (its data's version changed, which the spec does not show): the newer counts
    write_run(tmp_path, "rerun", method="ia3", slug="ia3-n100-s0", eval_loss=2.2, micro_batch=8,
              overrides={"train": {"lr": 2e-3, "micro_batch": 4}}, finished_at="2026-11-23T11:00:00+00:00")
    report = build("rerun", tmp_path)
    ia3 = _row(report, "ia3-n100")
    assert ia3["n_seeds"] == 1 and ia3["eval_loss_mean"] == pytest.approx(2.2)
    intro = " ".join(_section(report, "Summary").paragraphs)
    assert "Left out: 3 runs of 2 configurations (ia3-n100, lora-n100)" in intro
    assert "ia3-n100: the same spec, with an older version of its data or of a run it read" in intro
    # the untouched base scored again (its data changed): its newer row is the one every run is measured against
    same = {"train": {"lr": 2e-3, "micro_batch": 4}}
    write_run(tmp_path, "rerun", method="none", slug="base-tiny", eval_loss=3.0, micro_batch=2, overrides=same)
    write_run(tmp_path, "rerun", method="none", slug="base-tiny", eval_loss=3.5, micro_batch=8, overrides=same,
              finished_at="2026-11-23T11:00:00+00:00")
    base = _row(build("rerun", tmp_path), "base-tiny")
    assert bool(base["reference"]) and base["n_seeds"] == 1 and base["eval_loss_mean"] == pytest.approx(3.5)
    assert report.axes == ["method.name"]  # the left-out runs' lr does not make lr an axis


def test_rank_alpha_grid_gets_a_heatmap(tmp_path):
    for r in (4, 8, 16):
        for alpha in (8, 16):
            write_run(tmp_path, "ra", method="lora", r=r, alpha=alpha, eval_loss=2.0 - r / 100 + alpha / 1000)
    report = build("ra", tmp_path)
    assert {"method.r", "method.alpha"} <= set(report.axes) and "method.name" not in report.axes
    section = _section(report, "Rank and alpha")
    assert section.figures[0][0] == "rank_alpha.png"
    assert _row(report, "lora-r16-a8-n100")["eval_loss_mean"] == pytest.approx(2.0 - 0.16 + 0.008)
    assert _section(report, "Findings").bullets[0].startswith("Best eval ppl: lora-r16-a8-n100")


def test_data_size_curve_recovers_the_law(tmp_path):
    laws = {"lora": (6.0, 0.5, 1.6), "full": (9.0, 0.6, 1.4)}
    rng = np.random.default_rng(1)
    for method, (a, b, c) in laws.items():
        for n in (50, 100, 200, 400, 800, 1600):
            for seed in range(3):
                write_run(tmp_path, "ds", method=method, n_train=n, seed=seed,
                          eval_loss=float(power_law(n, a, b, c) + rng.normal(0, 0.001)))
    report = build("ds", tmp_path)
    assert "data.n_train" in report.axes
    for method, (a, b, c) in laws.items():
        fit = report.fits[method]
        assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=0.1)
        assert fit.points == 18
    section = _section(report, "Data-size curves")
    table = section.tables[0]
    rows = {row[0].text: row for row in table.rows}
    # default target: the worst series' mean at its largest n (lora's), which full reaches earlier
    target = power_law(1600, *laws["lora"])
    n_col = table.columns.index("n to reach target")
    assert rows["lora"][n_col].sort == pytest.approx(1600, rel=0.1)
    full_n = ((laws["full"][0] / (target - laws["full"][2])) ** (1 / laws["full"][1]))
    assert rows["full"][n_col].sort == pytest.approx(full_n, rel=0.1)
    assert not any("Caveat" in p for p in section.paragraphs)  # six sizes: the fit is identified


def test_a_three_size_curve_carries_the_caveat(tmp_path):
    for n in (16, 64, 256):
        for seed in range(2):
            write_run(tmp_path, "ds3", method="lora", n_train=n, seed=seed, eval_loss=2.0 - 0.1 * math.log(n))
    section = _section(build("ds3", tmp_path), "Data-size curves")
    assert any("lora has fewer than 4 distinct n" in p for p in section.paragraphs)


def test_failures_and_caveats(tmp_path):
    write_run(tmp_path, "bad", method="lora", seed=0, eval_loss=2.0)
    write_run(tmp_path, "bad", method="lora", seed=1, eval_loss=2.1)
    write_run(tmp_path, "bad", method="dora", status="failed")
    write_run(tmp_path, "bad", method="ia3", micro_batch=8, tokens=8000, eval_loss=2.3,
              env={"torch": "2.14.0", "git_sha": "def456"})
    report = build("bad", tmp_path)
    section = _section(report, "Failures and caveats")
    failed = section.tables[0]
    assert [c.text for c in failed.rows[0]] == ["dora-n100-s0", "failed", "RuntimeError", "dora broke on purpose"]
    assert "dora-n100" not in set(report.summary["config"])  # a failed run is no data point
    bullets = " ".join(section.bullets)
    assert "`train.micro_batch` differs between compared runs (4, 8)" in bullets
    assert "Training token budgets differ by 100%" in bullets
    assert "1 run(s) made with a different `torch` than the rest (2.13.0+cpu): ia3-n100-s0" in bullets
    assert "1 run(s) made with a different `git_sha`" in bullets


def test_reference_row_and_cost(tmp_path):
    write_run(tmp_path, "ref", method="none", eval_loss=3.0, train_s=0.0, params=0)
    write_run(tmp_path, "ref", method="lora", eval_loss=2.0, train_s=3600.0,
              extra={"forgetting_ppl_pct": 4.0, "task.chatterbot_mc.acc": 0.5})
    write_run(tmp_path, "ref", method="ia3", eval_loss=2.5, train_s=1800.0,
              extra={"forgetting_ppl_pct": 1.0, "task.chatterbot_mc.acc": 0.3})
    report = build("ref", tmp_path, price_per_hour=3.0)
    base = _row(report, "none")
    assert bool(base["reference"]) and report.axes == ["method.name"]
    cost = {row[0].text: row for row in _section(report, "Cost").tables[0].rows}
    assert "none" not in cost
    assert cost["lora-n100"][2].sort == pytest.approx(3.0)   # one hour at $3
    gain = math.exp(3.0) - math.exp(2.0)
    assert cost["lora-n100"][3].sort == pytest.approx(gain)
    assert cost["lora-n100"][4].text == "–"  # not a 4-bit run
    assert cost["lora-n100"][5].sort == pytest.approx(3.0 / gain)
    bullets = _section(report, "Findings").bullets
    assert any(b.startswith("Best chatterbot_mc.acc: lora-n100 (0.500, single seed). Against the runner-up ia3-n100: "
                            "no test possible") for b in bullets)
    assert any(b.startswith("Forgetting") and "most lora-n100 (+4.0, single seed), least ia3-n100 (+1.0, single seed)"
               in b for b in bullets)
    assert len(_section(report, "Pareto fronts").figures) == 2  # ppl, and the task accuracy


def test_each_run_is_measured_against_its_own_untouched_base(tmp_path):
    fp = write_run(tmp_path, "own", method="none", slug="base-tiny", eval_loss=3.0, train_s=0.0, params=0,
                   extra={"task.chatterbot_mc.acc": 0.25})
    four_bit = {"model": {"load_in_4bit": True}}
    q4 = write_run(tmp_path, "own", method="none", slug="base-tiny-4bit", eval_loss=3.5, train_s=0.0, params=0,
                   extra={"task.chatterbot_mc.acc": 0.4}, overrides=four_bit)
    write_run(tmp_path, "own", method="lora", eval_loss=2.0, train_s=3600.0, reference=fp,
              extra={"task.chatterbot_mc.acc": 0.3})
    write_run(tmp_path, "own", method="qlora", eval_loss=2.5, train_s=3600.0, reference=q4,
              extra={"task.chatterbot_mc.acc": 0.45}, overrides=four_bit)
    report = build("own", tmp_path, price_per_hour=1.0)
    cost = {row[0].text: row for row in _section(report, "Cost").tables[0].rows}
    assert cost["lora-n100"][3].sort == pytest.approx(math.exp(3.0) - math.exp(2.0))
    # the gain from the full-precision base (not its own 4-bit base's 3.5), the 4-bit base's loss beside it
    assert cost["qlora-n100"][3].sort == pytest.approx(math.exp(3.0) - math.exp(2.5))
    assert cost["qlora-n100"][4].sort == pytest.approx(math.exp(3.5) - math.exp(3.0))
    assert cost["lora-n100"][4].text == "–"
    bullets = _section(report, "Findings").bullets
    assert any(b.startswith("Best chatterbot_mc.acc: qlora-n100 (0.450, single seed); its untouched base scored 0.400.")
               for b in bullets)


def test_cli_report_writes_three_files_and_refuses_nothing_to_report(tmp_path):
    for seed in range(2):
        write_run(tmp_path / "results", "cli", method="lora", seed=seed, eval_loss=2.0 + seed / 10)
    out = tmp_path / "reports"
    res = run_cli("report", "cli", "--results", str(tmp_path / "results"), "--out", str(out))
    assert res.code == 0, res.err
    html = (out / "cli" / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html
    assert "src='http" not in html and 'src="http' not in html and "<link" not in html
    assert (out / "cli" / "report.md").is_file() and (out / "cli" / "summary.csv").is_file()
    assert "Best eval ppl: lora-n100" in res.out
    missing = run_cli("report", "nothing", "--results", str(tmp_path / "results"))
    assert missing.code == 2 and "no finished runs for experiment `nothing`" in missing.err
    price = run_cli("report", "cli", "--results", str(tmp_path / "results"), "--price-per-hour", "-1")
    assert price.code == 2 and "--price-per-hour" in price.err


# -- objective sections ---------------------------------------------------------------------------------------------

TEACHER_LOSS = 2.0  # every student below distils the same teacher (ppl e²)


def _distill(tmp_path, exp, mix: dict, seed: int, loss: float, *, teachers: list | None = None,
             speedup: float | None = 1.8, kl: float = 0.3, status: str = "ok"):
    losses = {"ce": 1.0, "kl": 1.0, "feature": 0.0, "relation": 0.0, **mix}
    objective = {"name": "distill", "student": {"keep_layers": "every_2nd"}, "temperature": 2.0, "losses": losses,
                 **({"teachers": teachers} if teachers else {"teacher": "run:lora-n100-s0"})}
    return write_run(tmp_path, exp, method="full", seed=seed, eval_loss=loss, status=status, objective=objective,
                     slug=None if not teachers else f"distill-ens-s{seed}",
                     extra={"teacher_eval_ppl": math.exp(TEACHER_LOSS), "compression_ratio": 2.0,
                            "quality_retention_pct": 100 * math.exp(TEACHER_LOSS - loss), "infer_speedup": speedup,
                            "distill_kl_before": 1.2, "distill_kl": kl, "teacher_params": 2e6, "student_params": 1e6})


def test_distillation_section_compares_loss_mixes(tmp_path):
    write_run(tmp_path, "kd", method="lora", eval_loss=TEACHER_LOSS)  # the sft teacher: in no distillation row
    for seed, loss in enumerate([2.30, 2.32]):
        _distill(tmp_path, "kd", {}, seed, loss, kl=0.40)
    for seed, loss in enumerate([2.15, 2.17]):
        _distill(tmp_path, "kd", {"feature": 1.0}, seed, loss, kl=0.25 + seed / 100)
    _distill(tmp_path, "kd", {"feature": 1.0, "relation": 0.5}, 0, 3.0, status="failed")
    _distill(tmp_path, "kd", {}, 0, 2.4, teachers=[{"model": "smollm2-135m", "weight": 1.0}, {"model": "run:lora-n100-s0", "weight": 0.5}], speedup=None)
    report = build("kd", tmp_path)
    assert [s.title for s in report.sections].count("Distillation") == 1
    assert not any(s.title == "Preference" for s in report.sections)
    section = _section(report, "Distillation")
    table = section.tables[0]
    rows = {row[0].text: dict(zip(table.columns, row)) for row in table.rows}
    assert list(rows) == ["distill-kl+feat-full-n100", "distill-kl-full-n100", "distill-ens"]  # best retention first
    feat, kl, ens = rows["distill-kl+feat-full-n100"], rows["distill-kl-full-n100"], rows["distill-ens"]
    assert (feat["loss mix"].text, kl["loss mix"].text, ens["loss mix"].text) == ("kl+feat", "kl", "kl")
    assert feat["method"].text == "full" and feat["teacher"].text == "run:lora-n100-s0"
    assert ens["teacher"].text == "ensemble of 2"
    retention = 100 * np.exp(TEACHER_LOSS - np.array([2.15, 2.17]))
    half = stats.t.ppf(0.975, 1) * stats.sem(retention)
    assert feat["quality retention %"].text == f"{retention.mean():.1f} ± {half:.1f}"
    assert feat["quality retention %"].best and not kl["quality retention %"].best
    assert feat["n"].text == "2" and feat["compression ×"].text == "2.00"
    assert feat["KL before → after"].text == "1.200 → 0.255" and feat["KL before → after"].best
    assert kl["KL before → after"].text == "1.200 → 0.400" and not kl["KL before → after"].best
    assert feat["student ppl vs teacher"].text == (f"{np.exp([2.15, 2.17]).mean():.2f} vs "
                                                   f"{math.exp(TEACHER_LOSS):.2f}")
    assert ens["speed-up ×"].text == "–" and kl["speed-up ×"].text == "1.80"
    assert "teacher cache s" not in table.columns  # no run cached its teacher
    # the failed relation run is no data point, but a failure
    assert "distill-kl+feat+rel-full-n100" not in rows
    failed = _section(report, "Failures and caveats").tables[0]
    assert failed.rows[0][0].text == "distill-kl+feat+rel-full-n100-s0"
    # findings from the numbers: the feature mix kept more at the same compression
    first = section.bullets[0]
    assert first.startswith("At 2× compression, full kl+feat (distill-kl+feat-full-n100) kept the most of the "
                            f"teacher's quality: {retention.mean():.1f}%")
    assert f"against {100 * np.exp(TEACHER_LOSS - np.array([2.30, 2.32])).mean():.1f}% for full kl " in first
    assert "over 2 paired seeds (paired t p=" in first  # a seed's runs share its data order: paired
    assert section.bullets[1] == "Closest to the teacher after training: full kl+feat (distill-kl+feat-full-n100), KL 1.200 → 0.255."
    paths = write(report, tmp_path / "out")
    assert (tmp_path / "out" / "distillation.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Distillation" in paths["markdown"].read_text()


def test_distillation_findings_follow_the_numbers(tmp_path):
    # the response-only mix wins here: the sentence must say so, not name the feature mix
    _distill(tmp_path, "kd2", {}, 0, 2.1)
    _distill(tmp_path, "kd2", {"feature": 1.0}, 0, 2.5)
    bullets = _section(build("kd2", tmp_path), "Distillation").bullets
    assert bullets[0].startswith("At 2× compression, full kl (distill-kl-full-n100) kept the most")
    assert "single seed — no significance" in bullets[0]


def test_preference_section_lists_each_method(tmp_path):
    start = {"start": "run:lora-r8-n100-s0"}
    for seed in range(2):
        write_run(tmp_path, "pref", method="lora", seed=seed, params=10_000, mem=900,
                  objective={"name": "dpo", "beta": 0.1, **start},
                  extra={"pref_accuracy": 0.70 + seed / 50, "pref_accuracy_train": 0.9, "reward_margin": 0.5,
                         "kl_to_ref": 0.05})
        write_run(tmp_path, "pref", method="full", seed=seed, params=1_000_000, mem=3000,
                  objective={"name": "dpo", "beta": 0.1, **start},
                  extra={"pref_accuracy": 0.80 + seed / 50, "pref_accuracy_train": 0.99, "reward_margin": 1.5,
                         "kl_to_ref": 0.20})
    write_run(tmp_path, "pref", method="lora", objective={"name": "kto", "beta": 0.2}, extra={"pref_accuracy": 0.6})
    write_run(tmp_path, "pref", method="ia3", objective={"name": "kto", "beta": 0.1}, status="oom")
    report = build("pref", tmp_path)
    assert not any(s.title == "Distillation" for s in report.sections)
    section = _section(report, "Preference")
    table = section.tables[0]
    rows = {row[0].text: dict(zip(table.columns, row)) for row in table.rows}
    assert list(rows) == ["dpo-full-n100", "dpo-lora-n100", "kto-lora-n100"]  # no row for the oom kto run
    full, lora, kto = rows["dpo-full-n100"], rows["dpo-lora-n100"], rows["kto-lora-n100"]
    assert (full["objective"].text, full["method"].text, full["β"].text) == ("dpo", "full", "0.1")
    assert full["started from"].text == "run:lora-r8-n100-s0" and kto["started from"].text == "–"
    half = stats.t.ppf(0.975, 1) * stats.sem([80.0, 82.0])
    assert full["pref accuracy %"].text == f"81.0 ± {half:.1f}" and full["pref accuracy %"].best
    assert lora["pref accuracy %"].text == f"71.0 ± {half:.1f}" and not lora["pref accuracy %"].best
    assert kto["pref accuracy %"].text == "60.0" and kto["KL to ref"].text == "–"
    assert lora["KL to ref"].best and not full["KL to ref"].best  # lower KL is better
    assert full["reward margin"].best and lora["trainable params"].best
    bullets = section.bullets
    assert bullets[0].startswith("Highest preference accuracy: dpo full (dpo-full-n100), 81.0% of held-out pairs "
                                 "ranked right (chance: 50%) at a KL to the reference of 0.200; next dpo lora "
                                 "(dpo-lora-n100) at 71.0%, no test possible over 2 paired seeds (their differences "
                                 "do not vary)")  # a constant gap over two seeds is not evidence
    assert bullets[1] == "dpo lora (dpo-lora-n100) stayed closest to its reference (KL 0.050) at 71.0% accuracy."
    assert section.figures[0][0] == "preference.png" and section.figures[0][1][:4] == b"\x89PNG"


def test_sft_only_experiment_has_no_objective_sections(tmp_path):
    write_run(tmp_path, "sft", method="lora", eval_loss=2.0)
    write_run(tmp_path, "sft", method="full", eval_loss=1.9)
    titles = [s.title for s in build("sft", tmp_path).sections]
    assert "Distillation" not in titles and "Preference" not in titles


def test_new_metrics_know_their_direction():
    for key in ("pref_accuracy", "reward_margin", "quality_retention_pct", "compression_ratio", "infer_speedup"):
        assert lower_is_better(key) is False, key
    for key in ("kl_to_ref", "distill_kl"):
        assert lower_is_better(key) is True, key
    assert loss_mix({"ce": 1, "kl": 1, "feature": 0.5, "relation": 0.1}) == "kl+feat+rel"
    assert loss_mix({"ce": 1, "kl": 0, "feature": 0, "relation": 0}) == "ce"
    assert loss_mix({}) == "kl"  # the LossWeights defaults, as the run itself had them


def test_a_contended_run_keeps_its_quality_but_not_its_say_on_speed_and_memory(tmp_path):
    """qlora's memory and time were taken while another job held the CPU: its cells are marked, the
    note says why, it is never a column's best there, and the memory and time findings leave it out."""
    from report_store import ENV

    quiet = {**ENV, "contended": False, "contention": None, "others_cpu_cores": 0.04, "load_avg_start": 1.1}
    busy = {**ENV, "contended": True, "others_cpu_cores": 1.8, "load_avg_start": 3.1,
            "contention": "other processes used 1.8 CPU cores on average (load 3.1 → 2.9)"}
    write_run(tmp_path, "busy", method="full", eval_loss=1.8, mem=3000, train_s=50.0, params=1_000_000, env=quiet)
    write_run(tmp_path, "busy", method="lora", eval_loss=2.0, mem=1000, train_s=60.0, env=quiet)
    write_run(tmp_path, "busy", method="qlora", eval_loss=2.2, mem=300, train_s=40.0, env=busy)
    report = build("busy", tmp_path)
    table = _section(report, "Summary").tables[0]
    by_name = {row[0].text: row for row in table.rows}
    qlora = by_name["qlora-n100"]
    for label in ("peak train MiB", "train tokens/s", "train s", "$ per run"):
        assert qlora[table.columns.index(label)].text.endswith(" †"), label
        assert not by_name["lora-n100"][table.columns.index(label)].text.endswith("†")
    for label in ("eval ppl", "eval loss", "trainable params", "artifact MB"):  # quality and sizes are not timed
        assert "†" not in qlora[table.columns.index(label)].text, label
    mem = table.columns.index("peak train MiB")
    assert by_name["lora-n100"][mem].best and not qlora[mem].best  # qlora's 300 MiB is not a clean best
    assert table.notes and table.notes[0].startswith("† memory or time taken while processes outside the sweep")
    assert "1 of 3 runs" in table.notes[0]
    cost = _section(report, "Cost").tables[0]
    cost_rows = {row[0].text: row for row in cost.rows}
    assert cost_rows["qlora-n100"][cost.columns.index("train s")].text == "40.0 †"
    assert "†" not in cost_rows["lora-n100"][cost.columns.index("train s")].text and cost.notes
    bullets = _section(report, "Findings").bullets
    assert bullets[0].startswith("Best eval ppl: full-n100")
    memory_front = next(b for b in bullets if b.startswith("Pareto front of eval ppl against peak train MiB"))
    assert "qlora" not in memory_front and memory_front.endswith("lora-n100, full-n100.")
    assert not any(b.startswith("qlora-n100 used") for b in bullets)
    assert any(b.startswith("1 contended run (qlora-n100-s0) left out of the memory and time comparisons")
               for b in bullets)
    assert _row(report, "qlora-n100")["eval_ppl_mean"] == pytest.approx(math.exp(2.2))  # its quality stays
    assert _row(report, "qlora-n100")["n_contended"] == 1 and _row(report, "lora-n100")["n_contended"] == 0
    env = {row[0].text: row[1].text for row in _section(report, "Environment").tables[0].rows}
    assert env["contended runs"] == "1 of 3 (qlora-n100-s0)"
    assert env["CPU cores used outside the sweep"] == "median 0.04, max 1.80 over 3 runs"
    assert "contention" not in env and "others_cpu_cores" not in env
    paths = write(report, tmp_path / "reports" / "busy")
    assert "† memory or time taken" in paths["markdown"].read_text()
    assert '<p class="note">† memory or time taken' in paths["html"].read_text()


# -- repeats: the noise floor ----------------------------------------------------------------------------------------

def _repeat(tmp_path, exp, method, seed, repeat, train_s, mem, loss=2.0):
    slug = f"{method}-n100-s{seed}" + (f"-rep{repeat}" if repeat else "")
    write_run(tmp_path, exp, method=method, seed=seed, slug=slug, train_s=train_s, mem=mem, eval_loss=loss,
              overrides={"repeat": repeat} if repeat else None)


def test_repeats_are_pooled_per_seed_and_give_the_noise_floor(tmp_path):
    # lora: seeds 0 and 1, each run twice; full: seed 0 run three times; ia3: once (no group)
    for repeat, (train_s, mem) in enumerate([(10.0, 1000.0), (12.0, 1010.0)]):
        _repeat(tmp_path, "noise", "lora", 0, repeat, train_s, mem)
        _repeat(tmp_path, "noise", "lora", 1, repeat, train_s * 2, mem, loss=2.2)
    for repeat, train_s in enumerate([20.0, 21.0, 25.0]):
        _repeat(tmp_path, "noise", "full", 0, repeat, train_s, 3000.0, loss=1.8)
    _repeat(tmp_path, "noise", "ia3", 0, 0, 5.0, 500.0)
    report = build("noise", tmp_path)
    # elsewhere a repeat is no seed: one summary row per configuration, seeds counted, repeats averaged
    assert sorted(report.summary["config"]) == ["full-n100", "ia3-n100", "lora-n100"]
    lora, full = _row(report, "lora-n100"), _row(report, "full-n100")
    assert (lora["n_seeds"], full["n_seeds"]) == (2, 1)
    assert lora["train_s_mean"] == pytest.approx((11.0 + 22.0) / 2)
    assert lora["eval_loss_mean"] == pytest.approx(2.1) and full["train_s_mean"] == pytest.approx(22.0)
    section = _section(report, "Noise floor")
    assert "3 configuration/seed pair(s) ran 2 or 3 times" in section.paragraphs[0]
    table = section.tables[0]
    assert table.columns == ["cost figure", "median run-to-run spread %", "largest %", "groups"]
    rows = {row[0].sort: row for row in table.rows}
    # train_s: lora s0 2/11, lora s1 4/22 (both 18.2%), full 5/22 (22.7%)
    assert rows["train_s"][1].text == "18.2" and rows["train_s"][2].text == "22.7" and rows["train_s"][3].text == "3"
    # memory: lora 10/1005 in both seeds, full not at all; the median is lora's
    assert [c.sort for c in rows["peak_mem_train_mb"][1:3]] == pytest.approx([1000 / 1005, 1000 / 1005])
    assert "trainable_params" not in rows  # a count that never moved is named once, not a row of zeros
    assert any(p.startswith("Identical in every repeat: trainable params") for p in section.paragraphs)
    assert "Eval loss was identical in every repeat of a seed: the quality figures are reproducible here." in (
        section.paragraphs)
    # without repeats there is no such section (docs/reports.md says how to get one)
    write_run(tmp_path, "plain", method="lora")
    assert "Noise floor" not in [s.title for s in build("plain", tmp_path).sections]


def test_noise_floor_lists_every_device_figure_of_the_vocabulary():
    from harness.metrics import METRICS
    from harness.report.sections.noise_floor import cost_figures

    figures = cost_figures()
    assert figures[:4] == ["peak_mem_train_mb", "peak_mem_eval_mb", "mem_weights_mb", "mem_optimizer_mb"]
    assert {"train_tokens_per_s", "wall_s", "infer_prefill_ms", "infer_decode_ms_per_token_merged"} <= set(figures)
    assert all(METRICS.get(k).device for k in figures if k not in ("trainable_params", "trainable_pct",
                                                                   "adapter_bytes", "cost_usd"))
    assert "eval_loss" not in figures


def test_the_summary_names_its_memory_semantics_and_runs_made_under_older_ones(tmp_path):
    """What the memory and speed columns measured, on which device; a run stored before the cost
    figures were redefined (no `env.cost_semantics`) is named, not silently compared."""
    from report_store import ENV

    write_run(tmp_path, "sem", method="lora")
    write_run(tmp_path, "sem", method="full", env={k: v for k, v in ENV.items() if k != "cost_semantics"})
    text = " ".join(_section(build("sem", tmp_path), "Summary").paragraphs)
    assert "absolute peak of each phase with the weights included — on cpu (2 runs) the run process's resident " \
           "set size (RSS)" in text
    assert "steady-state" in text and "1 run was measured under the earlier definitions" in text
    write_run(tmp_path, "sem2", method="lora")
    assert "earlier definitions" not in " ".join(_section(build("sem2", tmp_path), "Summary").paragraphs)
