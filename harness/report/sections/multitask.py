"""Single-task vs multi-task: each task's eval loss in the mixture against training on it alone."""

from __future__ import annotations

import pandas as pd

from harness.report import figures
from harness.report.context import ReportContext
from harness.report.document import Section, number_table
from harness.report.domains import multitask_comparison
from harness.report.sections.base import register

__all__ = ["multitask_section"]


def multitask_section(df: pd.DataFrame) -> Section | None:
    """Each task's loss under multitask training against training on it alone; None without multitask runs."""
    table = multitask_comparison(df)
    if table.empty:
        return None
    section = Section("Single-task vs multi-task", paragraphs=[
        "Per task, the eval loss on its validation split of each multitask run against the run trained on that task "
        "alone (same method when there is one); negative Δ: the mixture helped. Examples seen: the multitask run's "
        "count per task; the single-task run's nominal max_steps × micro_batch × grad_accum."])
    out = []
    for label, group in table.groupby("multitask", sort=False):
        d = group["Δ loss (multi − single)"].dropna()
        if len(d):
            out.append(f"{label}: lower loss than single-task on {int((d < 0).sum())} of {len(d)} task(s), "
                       f"mean Δ {d.mean():+.3f}.")
    section.bullets = out or ["No single-task run to compare with."]
    bars = table.pivot_table(index="task", columns="multitask", values="multitask loss", aggfunc="first", sort=False)
    bars.insert(0, "single-task", table.groupby("task", sort=False)["single-task loss"].first())
    section.figures.append(("multitask.png", figures.grouped_bars(bars, "eval loss", "Eval loss per task: alone vs "
                                                                  "in the mixture"), "eval loss per task, single-task "
                            "run against each multitask run"))
    section.tables.append(number_table(table.drop(columns=["multitask config"]), "One row per (task, multitask run)",
                                       {"multitask loss": "{:.3f}", "single-task loss": "{:.3f}",
                                        "multitask examples": "{:,.0f}", "single-task examples": "{:,.0f}",
                                        "Δ loss (multi − single)": "{:+.3f}"}))
    return section


@register("multitask", order=70)
def _build(ctx: ReportContext) -> list[Section]:
    section = multitask_section(ctx.df)
    return [] if section is None else [section]
