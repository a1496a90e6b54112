"""Failures and caveats: runs that did not finish ok, and budget or version differences between runs."""

from __future__ import annotations

from harness.report.context import ReportContext
from harness.report.document import Section, frame_table
from harness.report.findings import caveats, failures
from harness.report.sections.base import register


@register("failures", order=160)
def failures_section(ctx: ReportContext) -> list[Section]:
    failed = failures(ctx.df, ctx.absent)
    problems = Section("Failures and caveats",
                       bullets=caveats(ctx.df) or ["No budget or version differences between runs."])
    if len(failed):
        pruned = int((failed["status"] == "pruned").sum())
        note = f"; {pruned} of them pruned on purpose by the search" if pruned else ""
        absent = {state: int((failed["status"] == state).sum()) for state in ("damaged", "unfinished", "missing")}
        absent = [f"{n} {state}" for state, n in absent.items() if n]
        note += f"; not in the report's figures: {', '.join(absent)}" if absent else ""
        problems.tables.append(frame_table(failed, f"{len(failed)} run(s) did not finish ok{note}"))
    else:
        problems.paragraphs.append("Every run finished ok.")
    return [problems]
