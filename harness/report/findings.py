"""Generated sentences with effect sizes and significance, and the caveats a reader must see."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.contention import EVIDENCE_KEYS
from harness.report.frame import FORGETTING, Metric, contended, device_figure, ok_runs, reference_value, summarize
from harness.report.stats import pareto_mask, welch_p

ALPHA = 0.05
BUDGET_COLUMNS = ["train.micro_batch", "train.grad_accum", "train.seq_len", "train.max_steps", "train.epochs"]
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


def _pct(new: float, old: float) -> float:
    return (new - old) / abs(old) * 100 if old else math.nan


def _seeds(runs: pd.DataFrame, config: str, key: str) -> list[float]:
    values = pd.to_numeric(runs.loc[runs["config"] == config, key], errors="coerce")
    return [float(v) for v in values if np.isfinite(v)]


def _mem(mib: float) -> str:
    return f"{mib / 1024:.2f} GB" if mib >= 1024 else f"{mib:.0f} MiB"


def compare(runs: pd.DataFrame, a: str, b: str, quality: Metric, cost: Metric) -> str | None:
    """`a` against `b`: the cost difference, then the quality difference with its significance."""
    qa, qb = _seeds(runs, a, quality.key), _seeds(runs, b, quality.key)
    ca, cb = _seeds(runs, a, cost.key), _seeds(runs, b, cost.key)
    if not (qa and qb and ca and cb):
        return None
    cost_pct = _pct(np.mean(ca), np.mean(cb))
    fmt = _mem if cost.key.startswith("peak_mem") else (lambda v: f"{v:.1f} s") if cost.key == "train_s" else cost.format
    ratio = np.mean(ca) / np.mean(cb) if np.mean(cb) else math.nan
    if np.isfinite(ratio) and 0 < ratio and (ratio < 0.1 or ratio > 10):  # "100% less" hides a 200-fold difference
        factor = 1 / ratio if ratio < 1 else ratio
        cost_text = (f"{a} used {factor:.0f}× {'less' if ratio < 1 else 'more'} {cost.phrase} than {b} "
                     f"({fmt(np.mean(ca))} vs {fmt(np.mean(cb))})")
    elif abs(cost_pct) < 0.5:
        cost_text = f"{a} used about the same {cost.phrase} as {b} ({fmt(np.mean(ca))})"
    else:
        cost_text = (f"{a} used {abs(cost_pct):.0f}% {'less' if cost_pct < 0 else 'more'} {cost.phrase} than {b} "
                     f"({fmt(np.mean(ca))} vs {fmt(np.mean(cb))})")
    q_pct = _pct(np.mean(qa), np.mean(qb))
    direction = "higher" if q_pct > 0 else "lower"
    return (f"{cost_text}; its {quality.label} was {abs(q_pct):.1f}% {direction} "
            f"({quality.format(np.mean(qa))} vs {quality.format(np.mean(qb))}), {significance(qa, qb)}.")


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


def findings(df: pd.DataFrame, summary: pd.DataFrame, quality: Metric, costs: list[Metric],
             tasks: list[Metric]) -> list[str]:
    """Short sentences a reader can act on: the best, the fronts, each front member against the best.

    Memory and time (`device_figure`) are compared over the runs nobody competed with only: a
    contended run (`env.contended`) keeps its quality, not its say in what is faster or smaller."""
    runs = ok_runs(df)
    busy = contended(runs)
    clean_runs = runs[~busy]
    clean_summary = summarize(clean_runs, [quality, *costs], []) if busy.any() else summary
    rows = summary[~summary["reference"]].dropna(subset=[f"{quality.key}_mean"]) if not summary.empty else summary
    if rows.empty:
        return ["No finished run to compare."]
    best_row = rows.sort_values(f"{quality.key}_mean", ascending=quality.lower_is_better).iloc[0]
    best = best_row["config"]
    n = int(best_row["n_seeds"])
    out = [f"Best {quality.label}: {best} ({quality.format(best_row[f'{quality.key}_mean'])}"
           + (f", 95% CI {quality.format(best_row[f'{quality.key}_ci_low'])}–"
              f"{quality.format(best_row[f'{quality.key}_ci_high'])} over {n} seeds)" if n > 1 else ", single seed)")]
    for cost in costs:
        timed = device_figure(cost.key)
        cost_summary, cost_runs = (clean_summary, clean_runs) if timed else (summary, runs)
        front = pareto_members(cost_summary, quality, cost) if not cost_summary.empty else []
        if len(front) > 1:
            out.append(f"Pareto front of {quality.label} against {cost.label} (cheapest first): {', '.join(front)}.")
        for member in front:
            if member != best:
                sentence = compare(cost_runs, member, best, quality, cost)
                if sentence and sentence not in out:
                    out.append(sentence)
    if busy.any() and any(device_figure(c.key) for c in costs):
        slugs = runs.loc[busy, "slug"].tolist()
        its = "their" if len(slugs) != 1 else "its"
        out.append(f"{len(slugs)} contended run{'s' * (len(slugs) != 1)} ({', '.join(slugs[:8])}"
                   f"{' …' if len(slugs) > 8 else ''}) left out of the memory and time comparisons: processes outside "
                   f"the sweep competed for {its} hardware ({its} quality figures stay; `ftbench show RUN` gives the "
                   f"evidence).")
    for task in tasks:
        col = f"{task.key}_mean"
        if col in rows and rows[col].notna().any() and task.lower_is_better is not None:
            top = rows.sort_values(col, ascending=task.lower_is_better).iloc[0]
            base_value = reference_value(summary, top, col)
            base = f"; its untouched base scored {task.format(base_value)}" if np.isfinite(base_value) else ""
            out.append(f"Best {task.label}: {top['config']} ({task.format(top[col])}){base}.")
    col = f"{FORGETTING.key}_mean"
    if col in rows and rows[col].notna().any():
        worse_high = FORGETTING.lower_is_better
        worst = rows.loc[rows[col].idxmax() if worse_high else rows[col].idxmin()]
        least = rows.loc[rows[col].idxmin() if worse_high else rows[col].idxmax()]
        out.append(f"Forgetting (general-text perplexity against the untouched base): most {worst['config']} "
                   f"({FORGETTING.format(worst[col])}%), least {least['config']} ({FORGETTING.format(least[col])}%).")
    return out


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not end ok, with their reasons."""
    bad = df[df["status"] != "ok"] if not df.empty else df
    cols = [c for c in ("slug", "status", "error_type", "error") if c in bad]
    return bad[cols].reset_index(drop=True)


def caveats(df: pd.DataFrame) -> list[str]:
    """Warnings: budgets that differ between compared runs; runs on another code or package version."""
    runs = ok_runs(df)
    runs = runs[~runs["reference"]] if "reference" in runs else runs
    out = []
    if runs.empty:
        return out
    for col in BUDGET_COLUMNS:
        if col in runs and runs[col].astype(str).nunique() > 1:
            values = ", ".join(sorted(runs[col].astype(str).unique()))
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
