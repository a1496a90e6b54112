"""Distillation: compression, retained quality, speed-up and KL to the teacher per distilled configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report import figures
from harness.report.columns import missing, text
from harness.report.context import ReportContext
from harness.report.document import Cell, Section, Table, metric_cell
from harness.report.findings import seed_significance
from harness.report.frame import DISTILL, QUALITY, best_rows, ok_runs
from harness.report.kinds import runs_for
from harness.report.objectives import MIX, loss_mix, objective_summary, pair_cell, spec_cell, teacher_label
from harness.report.sections.base import register

__all__ = ["distill_table", "distill_findings", "distill_section"]

PPL = QUALITY[1]
COMPRESSION, RETENTION, SPEEDUP, KL_BEFORE, KL_AFTER, TEACHER_PPL, CACHE = DISTILL


def _flag(value) -> bool:
    return not missing(value) and bool(value)

def distill_table(summary: pd.DataFrame) -> Table:
    best = {m.key: best_rows(summary, m) for m in (COMPRESSION, RETENTION, SPEEDUP, KL_AFTER, PPL)}
    cache = f"{CACHE.key}_mean" in summary and summary[f"{CACHE.key}_mean"].notna().any()
    columns = ["configuration", "method", "loss mix", "teacher", "n", COMPRESSION.label, RETENTION.label,
               SPEEDUP.label, "KL before → after", "student ppl vs teacher", *([CACHE.label] if cache else [])]
    rows = []
    for i, row in summary.iterrows():
        rows.append([Cell(row["config"], row["config"]), spec_cell(row, "method.name"), Cell(row["mix"], row["mix"]),
                     Cell(teacher_label(row), teacher_label(row)), Cell(str(row["n_seeds"]), row["n_seeds"]),
                     *(metric_cell(row, m, i in best[m.key]) for m in (COMPRESSION, RETENTION, SPEEDUP)),
                     pair_cell(row, KL_BEFORE, KL_AFTER, "→", KL_AFTER, i in best[KL_AFTER.key]),
                     pair_cell(row, PPL, TEACHER_PPL, "vs", PPL, i in best[PPL.key]),
                     *([metric_cell(row, CACHE, False)] if cache else [])])
    return Table("One row per distilled configuration: mean ± 95% CI half-width over seeds", columns, rows)


def distill_findings(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Which loss mix (or method) kept most of the teacher's quality at the same compression."""
    rows = summary[np.isfinite(summary[f"{RETENTION.key}_mean"])]
    if rows.empty:
        return ["No distilled run measured its quality retention."]
    out = []
    # "the same compression" to 3 significant digits: parameter counts of one student shape agree to that
    level = rows[f"{COMPRESSION.key}_mean"].map(lambda v: float(f"{v:.3g}") if np.isfinite(v) else None)
    for ratio, group in rows.groupby(level, sort=True):
        if group["group"].nunique() < 2:
            continue
        top = group.iloc[0]  # rows are sorted by retention, best first
        other = group[group["group"] != top["group"]].iloc[0]
        seeds = seed_significance(runs, top["config"], other["config"], RETENTION.key)
        out.append(f"At {ratio:g}× compression, {top['group']} ({top['config']}) kept the most of the teacher's quality: "
                   f"{_retention(top)}, against {RETENTION.format(other[f'{RETENTION.key}_mean'])}% for "
                   f"{other['group']} ({other['config']}); {seeds}.")
    if not out:  # nothing to compare at one compression: name the best overall
        top = rows.iloc[0]
        out.append(f"Best quality retention: {top['group']} ({top['config']}), {_retention(top)} at "
                   f"{COMPRESSION.format(top[f'{COMPRESSION.key}_mean'])}× compression and "
                   f"{SPEEDUP.format(top[f'{SPEEDUP.key}_mean'])}× the teacher's decode speed.")
    kl = rows[np.isfinite(rows[f"{KL_AFTER.key}_mean"]) & np.isfinite(rows[f"{KL_BEFORE.key}_mean"])]
    if len(kl) > 1:
        low = kl.loc[kl[f"{KL_AFTER.key}_mean"].idxmin()]
        out.append(f"Closest to the teacher after training: {low['group']} ({low['config']}), KL "
                   f"{KL_BEFORE.format(low[f'{KL_BEFORE.key}_mean'])} → {KL_AFTER.format(low[f'{KL_AFTER.key}_mean'])}.")
    return out


def _retention(row) -> str:
    return (f"{RETENTION.format(row[f'{RETENTION.key}_mean'])}% (student ppl {PPL.format(row[f'{PPL.key}_mean'])} "
            f"vs teacher {TEACHER_PPL.format(row[f'{TEACHER_PPL.key}_mean'])})")


def distill_section(df: pd.DataFrame) -> Section | None:
    """Compression, retained quality, speed-up and KL per distilled configuration; None without such runs."""
    runs = runs_for(ok_runs(df), "distillation")
    if runs.empty:
        return None
    summary = objective_summary(runs, [PPL, *DISTILL], RETENTION)
    summary["mix"] = [loss_mix({k: row.get(f"objective.losses.{k}") for k, _ in MIX}) for _, row in summary.iterrows()]
    summary["group"] = [" ".join(p for p in (text(row.get("method.name")), row["mix"]) if p)
                        + (f" ({teacher_label(row)})" if teacher_label(row).startswith("ensemble") else "")
                        + (" (cached teacher)" if _flag(row.get("objective.cache_teacher")) else "")
                        for _, row in summary.iterrows()]
    section = Section("Distillation", paragraphs=[(
        "Students trained toward a teacher. Quality retention is teacher ppl ÷ student ppl × 100 (100: as good "
        "as the teacher); compression is teacher ÷ student parameters; speed-up is teacher ÷ student decode time "
        "per token; KL is the student's token KL to the teacher (T = 1) before and after training.")])
    section.bullets = distill_findings(runs, summary)
    section.figures.append(("distillation.png", figures.distillation(summary, summary["group"], RETENTION,
                                                                      [COMPRESSION, SPEEDUP]),
                            ("quality retention against compression and against decode speed-up, per method and "
                             "loss mix (dashed: the teacher)")))
    section.tables.append(distill_table(summary))
    return section


@register("distillation", order=30)
def _build(ctx: ReportContext) -> list[Section]:
    section = distill_section(ctx.df)
    return [] if section is None else [section]
