"""Generated sentences with effect sizes and significance, and the caveats a reader must see."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.contention import EVIDENCE_KEYS
from harness.metrics import METRICS
from harness.report.examples import ExampleScores
from harness.report.frame import (FORGETTING, TEST, Metric, contended, device_figure, ok_runs, reference_value,
                                  summarize)
from harness.report.stats import (PairedDiff, holm, minimum_detectable_difference, paired_t_p, pareto_mask,
                                  welch_p)

ALPHA = 0.05
#: the test-split twin of a validation figure
TEST_OF = {"eval_loss": TEST[0], "eval_ppl": TEST[1]}
BUDGET_COLUMNS = ["train.micro_batch", "train.grad_accum", "train.seq_len", "train.max_steps", "train.epochs",
                  "train.kernels", "train.compile", "env.attn_implementation", "train.world_size"]
#: what a budget column means where a run does not record it (older runs, options at their defaults)
BUDGET_DEFAULTS = {"train.kernels": "none", "train.compile": False, "env.attn_implementation": "sdpa",
                   "train.world_size": 1}
VERSION_COLUMNS = ["env.git_sha", "env.git_dirty", "env.torch", "env.transformers", "env.peft",
                   "env.bitsandbytes", "env.accelerate", "env.datasets", "env.python"]


def significance(a: list[float], b: list[float]) -> str:
    """How a difference between two seed samples reads: Welch p, or why there is none."""
    if min(len(a), len(b)) < 2:
        return "single seed — no significance"
    p = welch_p(a, b)
    n = f"{len(a)} vs {len(b)} seeds" if len(a) != len(b) else f"{len(a)} seeds"
    if math.isnan(p):
        return f"no test possible over {n}"
    return f"{'significant' if p < ALPHA else 'not significant'} over {n} (Welch p={p:.2g})"


def seed_significance(runs: pd.DataFrame, a: str, b: str, key: str) -> str:
    """How configuration `a` against `b` on `key` reads over seeds: a paired t-test over the seeds both ran
    (a seed's runs share its data order), else `significance` of the unpaired samples. Uncorrected: for a
    section's own sentence, not the findings' family."""
    sa, sb = _by_seed(runs, a, key), _by_seed(runs, b, key)
    shared = sorted(set(sa) & set(sb))
    if len(shared) < 2:
        return significance(list(sa.values()), list(sb.values()))
    p = paired_t_p([sa[s] for s in shared], [sb[s] for s in shared])
    if math.isnan(p):
        return f"no test possible over {len(shared)} paired seeds (their differences do not vary)"
    return (f"{'significant' if p < ALPHA else 'not significant'} over {len(shared)} paired seeds "
            f"(paired t p={p:.2g}, uncorrected)")


def _pct(new: float, old: float) -> float:
    return (new - old) / abs(old) * 100 if old else math.nan


def _seeds(runs: pd.DataFrame, config: str, key: str) -> list[float]:
    values = pd.to_numeric(runs.loc[runs["config"] == config, key], errors="coerce")
    return [float(v) for v in values if np.isfinite(v)]


def _mem(mib: float) -> str:
    return f"{mib / 1024:.2f} GB" if mib >= 1024 else f"{mib:.0f} MiB"


def _cost_text(a: str, b: str, ca: list[float], cb: list[float], cost: Metric) -> str:
    """`a` against `b` on a cost, in words."""
    cost_pct = _pct(np.mean(ca), np.mean(cb))
    fmt = _mem if cost.key.startswith("peak_mem") else (lambda v: f"{v:.1f} s") if cost.key == "train_s" else cost.format
    ratio = np.mean(ca) / np.mean(cb) if np.mean(cb) else math.nan
    if np.isfinite(ratio) and 0 < ratio and (ratio < 0.1 or ratio > 10):  # "100% less" hides a 200-fold difference
        factor = 1 / ratio if ratio < 1 else ratio
        return (f"{a} used {factor:.0f}× {'less' if ratio < 1 else 'more'} {cost.phrase} than {b} "
                f"({fmt(np.mean(ca))} vs {fmt(np.mean(cb))})")
    if abs(cost_pct) < 0.5:
        return f"{a} used about the same {cost.phrase} as {b} ({fmt(np.mean(ca))})"
    return (f"{a} used {abs(cost_pct):.0f}% {'less' if cost_pct < 0 else 'more'} {cost.phrase} than {b} "
            f"({fmt(np.mean(ca))} vs {fmt(np.mean(cb))})")


def pareto_members(summary: pd.DataFrame, quality: Metric, cost: Metric) -> list[str]:
    """Configurations on the (cost, quality) front, cheapest first."""
    rows = summary[~summary["reference"]]
    if f"{cost.key}_mean" not in rows or f"{quality.key}_mean" not in rows:
        return []
    if quality.lower_is_better is None or cost.lower_is_better is None:  # no direction, no front
        return []
    mask = pareto_mask(rows[f"{cost.key}_mean"], rows[f"{quality.key}_mean"], quality.lower_is_better,
                       minimize_cost=cost.lower_is_better)
    front = rows[mask].sort_values(f"{cost.key}_mean", ascending=cost.lower_is_better)
    return front["config"].tolist()


@dataclass
class Comparison:
    """One quality comparison the findings make, A − B, and what the family's correction made of it.

    `diff` is on the ratio scale (loss for a perplexity, the score itself otherwise); `source` says what
    its interval and p-value rest on."""

    a: str
    b: str
    metric: Metric
    diff: PairedDiff | None = None
    p: float = math.nan
    source: str = ""
    p_adjusted: float = math.nan
    family: int = 0

    @property
    def decided(self) -> bool:
        """The difference holds after the family's correction."""
        return bool(np.isfinite(self.p_adjusted) and self.p_adjusted < ALPHA)

    @property
    def tested(self) -> bool:
        return bool(np.isfinite(self.p))

    def _on_scale(self, v: float) -> str:
        """A difference in the metric's own terms: % for a perplexity (exp of a loss difference)."""
        if _is_ppl(self.metric):
            return f"{100 * math.expm1(v):+.1f}%"
        return f"{v * self.metric.scale:+.3f}"

    def detectable(self) -> str:
        """The smallest difference this comparison could detect (80% power, at the corrected level)."""
        if self.diff is None or not np.isfinite(self.diff.se) or self.diff.se <= 0:
            return ""
        mdd = minimum_detectable_difference(self.diff.se, ALPHA / max(self.family, 1))
        return f"; it could detect a difference of about ±{self._on_scale(mdd).lstrip('+')} at 80% power"

    def verdict(self) -> str:
        """How the comparison reads after correction, as a clause."""
        if not self.tested:
            return ("no test possible (one seed and no per-example scores)" if self.diff is None
                    else "no test possible")
        interval = (f"95% CI of {self.a} − {self.b}: {self._on_scale(self.diff.low)} to "
                    f"{self._on_scale(self.diff.high)}, " if self.diff is not None and np.isfinite(self.diff.low) else "")
        where = f"{interval}{self.source}, Holm-adjusted p={self.p_adjusted:.2g} over {self.family} comparisons"
        if self.decided:
            return f"a real difference ({where})"
        return f"indistinguishable at this budget ({where}{self.detectable()})"


def _is_ppl(metric: Metric) -> bool:
    return metric.key.endswith("_ppl") or metric.key.endswith("perplexity")


def _test(runs: pd.DataFrame, examples: ExampleScores | None, a: str, b: str, metric: Metric) -> Comparison:
    """A against B on `metric`: paired over examples (and seeds) when the runs kept per-example scores;
    else a paired t-test over the seeds both ran (seeds share data order); else no test."""
    key = "eval_loss" if metric.key == "eval_ppl" else "test_loss" if metric.key == "test_ppl" else metric.key
    diff = examples.difference(a, b, key) if examples is not None else None
    if diff is not None and np.isfinite(diff.p):
        seeds = f" and {diff.seeds} seeds" if diff.seeds > 1 else ""
        return Comparison(a, b, metric, diff, diff.p, f"paired bootstrap over {diff.n} examples{seeds}")
    sa, sb = _by_seed(runs, a, key), _by_seed(runs, b, key)
    shared = sorted(set(sa) & set(sb))
    p = paired_t_p([sa[s] for s in shared], [sb[s] for s in shared])
    return Comparison(a, b, metric, None, p, f"paired t-test over {len(shared)} seeds")


def _by_seed(runs: pd.DataFrame, config: str, key: str) -> dict:
    rows = runs[runs["config"] == config]
    if key not in rows or "seed" not in rows:
        return {}
    values = pd.to_numeric(rows[key], errors="coerce")
    return {int(s): float(v) for s, v in zip(rows["seed"], values) if np.isfinite(v)}


def correct(comparisons: list[Comparison]) -> None:
    """Holm's step-down correction over the comparisons that could be tested (the report's family)."""
    tested = [c for c in comparisons if c.tested]
    for c, p in zip(tested, holm([c.p for c in tested])):
        c.p_adjusted, c.family = float(p), len(tested)


@dataclass
class Findings:
    """The findings' sentences and the comparisons behind them (their family, corrected together)."""

    bullets: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def tested(self) -> int:
        return sum(c.tested for c in self.comparisons)

    @property
    def survived(self) -> int:
        return sum(c.decided for c in self.comparisons)


def _interval_text(row, metric: Metric) -> str:
    low, high = row.get(f"{metric.key}_ci_low"), row.get(f"{metric.key}_ci_high")
    if low is None or not (np.isfinite(low) and np.isfinite(high)):
        return ""
    source = row.get(f"{metric.key}_ci_from")
    over = {"examples": "over examples", "examples and seeds": "over examples and seeds"}.get(
        source, f"over {int(row['n_seeds'])} seeds")
    return f", 95% CI {metric.format(low)}–{metric.format(high)} {over}"


def _value_text(row, metric: Metric) -> str:
    n = int(row["n_seeds"])
    return (metric.format(row[f"{metric.key}_mean"]) + _interval_text(row, metric)
            + (", single seed" if n == 1 else f", {n} seeds"))


def assess(df: pd.DataFrame, summary: pd.DataFrame, quality: Metric, costs: list[Metric], tasks: list[Metric],
           examples: ExampleScores | None = None) -> Findings:
    """Short sentences a reader can act on, and the comparisons behind them.

    The best configuration is chosen on the validation split (`quality`) and its test-split figure is given
    beside it. Every quality claim "A is better than B" (the best against the runner-up, each Pareto member
    against the best, each task's best against its runner-up) is one comparison of a family corrected
    together by Holm's method; a claim is made only when its corrected p-value is under ALPHA, otherwise
    the two are called indistinguishable at this budget, with the smallest difference the comparison could
    have detected. Memory and time (`device_figure`) are compared over the runs nobody competed with only:
    a contended run (`env.contended`) keeps its quality, not its say in what is faster or smaller."""
    out = Findings()
    runs = ok_runs(df)
    busy = contended(runs)
    clean_runs = runs[~busy]
    clean_summary = summarize(clean_runs, [quality, *costs], []) if busy.any() else summary
    rows = summary[~summary["reference"]].dropna(subset=[f"{quality.key}_mean"]) if not summary.empty else summary
    if rows.empty:
        out.bullets.append("No finished run to compare.")
        return out
    ranked = rows.sort_values(f"{quality.key}_mean", ascending=quality.lower_is_better)
    best_row = ranked.iloc[0]
    best = best_row["config"]
    comparisons: list[tuple[str, Comparison]] = []  # (role, comparison), made in the order they are read
    if len(ranked) > 1:
        comparisons.append(("runner-up", _test(runs, examples, ranked.iloc[1]["config"], best, quality)))
    fronts = []
    for cost in costs:
        timed = device_figure(cost.key)
        cost_summary, cost_runs = (clean_summary, clean_runs) if timed else (summary, runs)
        front = pareto_members(cost_summary, quality, cost) if not cost_summary.empty else []
        fronts.append((cost, front, cost_runs))
        for member in front:
            if member != best and not any(c.a == member and c.metric == quality for _, c in comparisons):
                comparisons.append(("front", _test(runs, examples, member, best, quality)))
    task_tops = []
    for task in primary_scores(tasks):
        col = f"{task.key}_mean"
        if col in rows and rows[col].notna().any() and task.lower_is_better is not None:
            by_task = rows.dropna(subset=[col]).sort_values(col, ascending=task.lower_is_better)
            versus = (_test(runs, examples, by_task.iloc[1]["config"], by_task.iloc[0]["config"], task)
                      if len(by_task) > 1 else None)
            task_tops.append((task, by_task.iloc[0], versus))
            if versus is not None:
                comparisons.append(("task", versus))
    correct([c for _, c in comparisons])
    out.comparisons = [c for _, c in comparisons]

    test = TEST_OF.get(quality.key)
    test_text = (f"; on the test split, which chose nothing, {test.label} {_value_text(best_row, test)}"
                 if test is not None and np.isfinite(best_row.get(f"{test.key}_mean", math.nan)) else "")
    head = f"Best {quality.label}: {best} ({_value_text(best_row, quality)}){test_text}."
    runner = next((c for role, c in comparisons if role == "runner-up"), None)
    if runner is not None and runner.tested and not runner.decided:
        head += (f" It is not distinguishable from the runner-up {runner.a}: {runner.verdict()} — no single "
                 f"winner at this budget.")
    elif runner is not None and runner.decided:
        head += f" It beats the runner-up {runner.a}: {runner.verdict()}."
    elif runner is not None:
        head += f" Against the runner-up {runner.a}: {runner.verdict()}."
    out.bullets.append(head)
    by_member = {c.a: c for role, c in comparisons if role in ("front", "runner-up") and c.metric == quality}
    for cost, front, cost_runs in fronts:
        if len(front) > 1:
            out.bullets.append(f"Pareto front of {quality.label} against {cost.label} (cheapest first): "
                               f"{', '.join(front)}.")
        for member in front:
            if member == best:
                continue
            ca, cb = _seeds(cost_runs, member, cost.key), _seeds(cost_runs, best, cost.key)
            qa, qb = _seeds(runs, member, quality.key), _seeds(runs, best, quality.key)
            if not (ca and cb and qa and qb):
                continue
            q_pct = _pct(np.mean(qa), np.mean(qb))
            sentence = (f"{_cost_text(member, best, ca, cb, cost)}; its {quality.label} was {abs(q_pct):.1f}% "
                        f"{'higher' if q_pct > 0 else 'lower'} ({quality.format(np.mean(qa))} vs "
                        f"{quality.format(np.mean(qb))}): {by_member[member].verdict()}.")
            if sentence not in out.bullets:
                out.bullets.append(sentence)
    if busy.any() and any(device_figure(c.key) for c in costs):
        slugs = runs.loc[busy, "slug"].tolist()
        its = "their" if len(slugs) != 1 else "its"
        out.bullets.append(f"{len(slugs)} contended run{'s' * (len(slugs) != 1)} ({', '.join(slugs[:8])}"
                           f"{' …' if len(slugs) > 8 else ''}) left out of the memory and time comparisons: processes "
                           f"outside the sweep competed for {its} hardware ({its} quality figures stay; `ftbench show "
                           f"RUN` gives the evidence).")
    for task, top, versus in task_tops:
        col = f"{task.key}_mean"
        base_value = reference_value(summary, top, col)
        base = f"; its untouched base scored {task.format(base_value)}" if np.isfinite(base_value) else ""
        against = f" Against the runner-up {versus.a}: {versus.verdict()}." if versus is not None else ""
        out.bullets.append(f"Best {task.label}: {top['config']} ({_value_text(top, task)}){base}.{against}")
    col = f"{FORGETTING.key}_mean"
    if col in rows and rows[col].notna().any():
        worse_high = FORGETTING.lower_is_better
        worst = rows.loc[rows[col].idxmax() if worse_high else rows[col].idxmin()]
        least = rows.loc[rows[col].idxmin() if worse_high else rows[col].idxmax()]
        out.bullets.append(f"Forgetting (general-text perplexity against the untouched base, in %): most "
                           f"{worst['config']} ({_value_text(worst, FORGETTING)}), least {least['config']} "
                           f"({_value_text(least, FORGETTING)}); an interval that contains 0 is no evidence of "
                           f"forgetting.")
    return out


def primary_scores(tasks: list[Metric]) -> list[Metric]:
    """One score per task, the one a claim is made on: its declared primary metric (built-in tasks declare it
    exactly), else its first score."""
    out: dict[str, Metric] = {}
    for task in tasks:
        name = task.key.split(".")[1]
        declared = METRICS.lookup(task.key)
        if name not in out or (declared is not None and not declared.is_pattern):
            out[name] = task
    return list(out.values())


def findings(df: pd.DataFrame, summary: pd.DataFrame, quality: Metric, costs: list[Metric],
             tasks: list[Metric], examples: ExampleScores | None = None) -> list[str]:
    """The sentences of `assess`."""
    return assess(df, summary, quality, costs, tasks, examples).bullets


def failures(df: pd.DataFrame, absent: list[dict] = ()) -> pd.DataFrame:
    """Runs that did not end ok, with their reasons, then `absent` ones (damaged, unfinished or missing
    from the store: `harness.report.build.absent_runs`)."""
    bad = df[df["status"] != "ok"] if not df.empty else df
    cols = [c for c in ("slug", "status", "error_type", "error") if c in bad]
    bad = bad[cols].reset_index(drop=True)
    if not absent:
        return bad
    extra = pd.DataFrame(list(absent), columns=["slug", "status", "error_type", "error"])
    return extra if bad.empty else pd.concat([bad, extra], ignore_index=True)


def caveats(df: pd.DataFrame) -> list[str]:
    """Warnings: budgets that differ between compared runs; runs on another code or package version."""
    runs = ok_runs(df)
    runs = runs[~runs["reference"]] if "reference" in runs else runs
    out = []
    if runs.empty:
        return out
    for col in BUDGET_COLUMNS:
        if col not in runs:
            continue
        column = runs[col].where(runs[col].notna(), BUDGET_DEFAULTS.get(col)) if col in BUDGET_DEFAULTS else runs[col]
        if column.astype(str).nunique() > 1:
            values = ", ".join(sorted(column.astype(str).unique()))
            out.append(f"`{col}` differs between compared runs ({values}): memory, speed and quality are not "
                       f"like for like across it.")
    if "train_tokens" in runs:
        by_n = runs.groupby(runs["data.n_train"].astype(str) if "data.n_train" in runs else 0)["train_tokens"]
        for n, tokens in by_n:
            tokens = pd.to_numeric(tokens, errors="coerce").dropna()
            if len(tokens) > 1 and tokens.max() > 1.02 * tokens.min():
                out.append(f"Training token budgets differ by {(tokens.max() / tokens.min() - 1) * 100:.0f}% "
                           f"between runs{'' if n == 0 else f' with n_train={n}'} "
                           f"({tokens.min():.0f}–{tokens.max():.0f} tokens).")
    for col in VERSION_COLUMNS:
        if col in df and df[col].astype(str).nunique() > 1:
            majority = df[col].astype(str).mode().iloc[0]
            odd = df.loc[df[col].astype(str) != majority, "slug"].tolist()
            out.append(f"{len(odd)} run(s) made with a different `{col.removeprefix('env.')}` than the rest "
                       f"({majority}): {', '.join(odd[:8])}{' …' if len(odd) > 8 else ''}.")
    return out


def contention_summary(df: pd.DataFrame) -> dict[str, str]:
    """How many of the watched runs were contended (which), and others' CPU cores and the load
    average over them (median, max); empty when no run was watched."""
    watched = df[df["env.contended"].notna()] if "env.contended" in df else df.iloc[0:0]
    if watched.empty:
        return {}
    busy = watched.loc[contended(watched), "slug"].tolist()
    out = {"contended runs": f"{len(busy)} of {len(watched)}"
                             + (f" ({', '.join(busy[:8])}{' …' if len(busy) > 8 else ''})" if busy else "")}
    for col, name in (("env.others_cpu_cores", "CPU cores used outside the sweep"),
                      ("env.load_avg_start", "load average at run start")):
        values = pd.to_numeric(watched[col], errors="coerce").dropna() if col in watched else pd.Series(dtype=float)
        if len(values):
            out[name] = f"median {values.median():.2f}, max {values.max():.2f} over {len(values)} runs"
    return out


def environment(df: pd.DataFrame) -> dict[str, str]:
    """Hardware, versions, git sha and dates, as the most common value over the runs; how many runs
    were contended, and the spread of the evidence."""
    out = {}
    evidence = {f"env.{key}" for key in EVIDENCE_KEYS}
    for col in sorted(c for c in df.columns if c.startswith("env.") and c not in evidence):
        values = df[col].dropna().astype(str)
        if len(values):
            extra = f" (+{values.nunique() - 1} other)" if values.nunique() > 1 else ""
            out[col.removeprefix("env.")] = values.mode().iloc[0] + extra
    out.update(contention_summary(df))
    for col, name in (("started_at", "first run started"), ("finished_at", "last run finished")):
        if col in df and df[col].notna().any():
            out[name] = str(df[col].dropna().min() if col == "started_at" else df[col].dropna().max())
    return out
