"""Cost: train time priced per GPU-hour, and per perplexity point gained over the untouched base."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.report.context import ReportContext
from harness.report.document import BUSY_MARK, Section, Table, busy_note, frame_table
from harness.report.frame import device_figure, reference_value
from harness.report.sections.base import register

__all__ = ["cost_table"]

#: the metric each column of the cost table is made from
SOURCES = {"train s": "train_s", "$ per run": "cost_usd", "$ per ppl point": "cost_usd"}


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
    table = frame_table(cost_table(ctx.summary, ctx.price_per_hour), "Cost per configuration",
                        {"train s": "{:.1f}", "$ per run": "{:.5f}", "ppl gained vs base": "{:.2f}",
                         "$ per ppl point": "{:.6f}"})
    cost.tables.append(_mark_busy(table, ctx.summary))
    return [cost]


def _mark_busy(table: Table, summary: pd.DataFrame) -> Table:
    """Mark the time-based cells of configurations with a contended seed, and say so under the table."""
    if "n_contended" not in summary or not (summary["n_contended"] > 0).any():
        return table
    busy = set(summary.loc[summary["n_contended"] > 0, "config"])
    marked = [i for i, col in enumerate(table.columns) if col in SOURCES and device_figure(SOURCES[col])]
    for row in table.rows:
        if row[0].text in busy:
            for i in marked:
                if row[i].text != "–":
                    row[i].text += f" {BUSY_MARK}"
    table.notes.append(busy_note(int(summary["n_contended"].sum()), int(summary["n_seeds"].sum())))
    return table
