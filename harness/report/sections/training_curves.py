"""Training curves: the loss logged per step by every ok run."""

from __future__ import annotations

from harness.report import figures, interactive
from harness.report.context import ReportContext
from harness.report.document import Section
from harness.report.frame import training_curves
from harness.report.sections.base import register


@register("training_curves", order=120)
def training_curves_section(ctx: ReportContext) -> list[Section]:
    curves = training_curves(ctx.df, ctx.root)
    if not len(curves):
        return []
    return [Section("Training curves", figures=[("training_curves.png", figures.training_curves(curves),
                                                 "loss per step")],
                    views=[interactive.training_curves_view(curves, replaces=("training_curves.png",))])]
