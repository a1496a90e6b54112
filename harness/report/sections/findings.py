"""Findings: the comparisons between configurations that the numbers support, with their significance."""

from __future__ import annotations

from harness.report.context import ReportContext
from harness.report.document import Section
from harness.report.sections.base import register


@register("findings", order=130)
def findings_section(ctx: ReportContext) -> list[Section]:
    found = ctx.findings
    section = Section("Findings", bullets=found.bullets)
    if found.comparisons:
        section.paragraphs.append(
            f"Each claim that one configuration is better than another is one of the {len(found.comparisons)} "
            f"quality comparisons below, tested together: paired over the same validation examples (and seeds, "
            f"which share data order), Holm-corrected at α = 0.05. {found.survived} of {found.tested} tested "
            f"comparison{'s' * (found.tested != 1)} survived; the rest are called indistinguishable at this budget.")
    return [section]
