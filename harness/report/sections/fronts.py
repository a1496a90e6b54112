"""Pareto fronts: eval perplexity (and up to two task scores) against memory, trainable parameters and time."""

from __future__ import annotations

from harness.report import figures, interactive
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
        "Front members are red and named; bars are 95% intervals over seeds. On the HTML page, pick any two "
        "of the experiment's figures as axes (each ranked in its declared direction) and the methods to "
        "include: the front is recomputed for them; hover a point for its configuration and every figure "
        "with its interval."])
    fronts.figures.append(("pareto_eval_ppl.png", figures.pareto(summary, quality, costs),
                           f"{quality.label} against peak train memory, trainable parameters and train time"))
    for task in [t for t in ctx.tasks if t.key.endswith((".acc", ".acc_norm", ".rougeL"))][:2]:
        name = task.key.replace(".", "_")
        fronts.figures.append((f"pareto_{name}.png", figures.pareto(summary, task, costs),
                               f"{task.label} against the same costs"))
    view = interactive.pareto_view(summary, ctx.metrics, ctx.axes, replaces=tuple(n for n, _, _ in fronts.figures),
                                   caption="Pareto explorer: choose the axes and the methods; red points are the "
                                           "front for the chosen axes, bars their 95% intervals; hover or click a "
                                           "point for every figure it has")
    if view is not None:
        fronts.views.append(view)
    return [fronts]
