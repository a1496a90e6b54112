"""Rank and alpha: a heatmap of eval perplexity over LoRA's r × alpha grid."""

from __future__ import annotations

from harness.report import figures
from harness.report.context import ReportContext
from harness.report.document import Section
from harness.report.sections.base import register


@register("rank_alpha", order=110)
def rank_alpha_section(ctx: ReportContext) -> list[Section]:
    if not {"method.r", "method.alpha"} <= set(ctx.axes) or ctx.summary.empty:
        return []
    return [Section("Rank and alpha", paragraphs=["Mean eval perplexity over r × alpha per method."],
                    figures=[("rank_alpha.png", figures.rank_alpha(ctx.summary, ctx.quality),
                              "eval perplexity heatmap")])]
