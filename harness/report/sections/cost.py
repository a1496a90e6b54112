"""Cost: train time priced per GPU-hour, and per perplexity point gained over the untouched base."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.report.context import ReportContext
from harness.report.document import Section, frame_table
from harness.report.frame import reference_value
from harness.report.sections.base import register

__all__ = ["cost_table"]


def cost_table(summary: pd.DataFrame, price: float) -> pd.DataFrame:
    """Money per run and per perplexity point gained over its own untouched base (when a reference row exists)."""
    rows = []
    for _, row in summary[~summary["reference"]].iterrows():
        gain = reference_value(summary, row, "eval_ppl_mean") - row.get("eval_ppl_mean", math.nan)
        cost = row["cost_usd_mean"]
        rows.append({"configuration": row["config"], "train s": row["train_s_mean"], "$ per run": cost,
                     "ppl gained vs base": gain if np.isfinite(gain) else None,
                     "$ per ppl point": cost / gain if np.isfinite(gain) and gain > 0 else None})
    return pd.DataFrame(rows)


@register("cost", order=150)
def cost_section(ctx: ReportContext) -> list[Section]:
    if ctx.summary.empty:
        return []
    cost = Section("Cost", paragraphs=[
        f"At ${ctx.price_per_hour:.2f} per GPU-hour (change with --price-per-hour), train time becomes money. "
        f"'$ per ppl point' divides it by the perplexity the run gained over the untouched base."])
    cost.tables.append(frame_table(cost_table(ctx.summary, ctx.price_per_hour), "Cost per configuration",
                                   {"train s": "{:.1f}", "$ per run": "{:.5f}", "ppl gained vs base": "{:.2f}",
                                    "$ per ppl point": "{:.6f}"}))
    return [cost]
