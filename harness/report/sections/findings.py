"""Findings: the comparisons between configurations that the numbers support, with their significance."""

from __future__ import annotations

from harness.report.context import ReportContext
from harness.report.document import Section
from harness.report.findings import findings
from harness.report.sections.base import register


@register("findings", order=130)
def findings_section(ctx: ReportContext) -> list[Section]:
    return [Section("Findings", bullets=findings(ctx.df, ctx.summary, ctx.quality, ctx.costs, ctx.tasks))]
