"""Environment: the most common versions, devices and git state over the runs, and when the report was made."""

from __future__ import annotations

import pandas as pd

from harness.report.context import ReportContext
from harness.report.document import Section, frame_table
from harness.report.findings import environment
from harness.report.sections.base import register


@register("environment", order=170)
def environment_section(ctx: ReportContext) -> list[Section]:
    env = environment(ctx.df)
    env["report generated"] = ctx.generated_at
    return [Section("Environment", tables=[frame_table(pd.DataFrame({"key": list(env), "value": list(env.values())}),
                                                       "Most common value over the runs")])]
