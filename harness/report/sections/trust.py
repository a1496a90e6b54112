"""The report's first box: how much its numbers can be trusted (seeds, examples, noise, corrected findings)."""

from __future__ import annotations

import pandas as pd

from harness.report.context import ReportContext
from harness.report.document import Section
from harness.report.frame import ok_runs
from harness.report.repeats import REPEATS, SPREAD
from harness.report.sections.base import register

__all__ = ["trust_section"]


def _seeds(summary: pd.DataFrame) -> str:
    counts = summary.loc[~summary["reference"], "n_seeds"].astype(int) if not summary.empty else pd.Series(dtype=int)
    if counts.empty:
        return "no configuration finished"
    low, high = int(counts.min()), int(counts.max())
    n = f"{low}" if low == high else f"{low}–{high}"
    return (f"{n} seed{'s' * (high != 1)} per configuration ({len(counts)} configurations)"
            + (": a single seed measures example noise, not training's run-to-run noise" if high == 1 else ""))


def _tasks(df: pd.DataFrame) -> str:
    docs = [f"{c.removeprefix('task.').removesuffix('.n')} {int(pd.to_numeric(df[c], errors='coerce').max())}"
            for c in df.columns if c.startswith("task.") and c.endswith(".n") and df[c].notna().any()]
    return f"documents per task: {', '.join(docs)}" if docs else ""


def _noise_floor(df: pd.DataFrame) -> str:
    key = SPREAD + "eval_loss"
    if REPEATS not in df or key not in df or not (pd.to_numeric(df[REPEATS], errors="coerce") >= 2).any():
        return ("noise floor not measured (grid `repeats: N` reruns each spec and seed to measure it; see the "
                "Noise floor section when it does)")
    spread = pd.to_numeric(df[key], errors="coerce").dropna()
    return f"noise floor: eval loss moved by up to {spread.max():.2g}% between repeats of one spec and seed"


def _upper(text: str) -> str:
    return text[:1].upper() + text[1:]


@register("trust", order=5)
def trust_section(ctx: ReportContext) -> list[Section]:
    df = ok_runs(ctx.df)
    if df.empty:
        return []
    bullets = [_upper(_seeds(ctx.summary)) + "."]
    splits = ctx.examples.examples_per_split()
    if splits:
        bullets.append("Examples behind each quality figure: " + "; ".join(f"{k} {v}" for k, v in splits.items())
                       + ". The validation split chooses every best; the test split is reported beside it and "
                         "chooses nothing.")
    tasks = _tasks(df)
    if tasks:
        bullets.append(_upper(tasks) + ".")
    from_examples = [c for c in ctx.summary.columns if c.endswith("_ci_from")
                     and ctx.summary[c].astype(str).str.startswith("examples").any()]
    bullets.append("Every quality figure carries a 95% interval: a bootstrap over the examples it averages (and over "
                   "seeds when there are several)." if from_examples else
                   "Intervals come from seeds only (these runs kept no per-example scores): a single seed has none.")
    bullets.append(_upper(_noise_floor(df)) + ".")
    found = ctx.findings
    if found.comparisons:
        bullets.append(f"Findings: {found.survived} of {found.tested} quality comparisons survived Holm's correction "
                       f"at α = 0.05; only those name a winner.")
    return [Section("How much to trust this", bullets=bullets)]
