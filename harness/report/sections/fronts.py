"""Pareto fronts: eval perplexity (and up to two task scores) against memory, trainable parameters and time."""

from __future__ import annotations

from harness.report import figures
from harness.report.context import ReportContext
from harness.report.document import Section
from harness.report.sections.base import register


@register("fronts", order=20)
def fronts_section(ctx: ReportContext) -> list[Section]:
    summary, quality, costs = ctx.summary, ctx.quality, ctx.costs
    if summary.empty or not summary[f"{quality.key}_mean"].notna().any():
        return []
    fronts = Section("Pareto fronts", paragraphs=[
        "A configuration is on a front when no other is at least as good on both axes and better on one. "
        "Front members are red and named; bars are 95% intervals over seeds."])
    fronts.figures.append(("pareto_eval_ppl.png", figures.pareto(summary, quality, costs),
                           f"{quality.label} against peak train memory, trainable parameters and train time"))
    for task in [t for t in ctx.tasks if t.key.endswith((".acc", ".acc_norm", ".rougeL"))][:2]:
        name = task.key.replace(".", "_")
        fronts.figures.append((f"pareto_{name}.png", figures.pareto(summary, task, costs),
                               f"{task.label} against the same costs"))
    return [fronts]
