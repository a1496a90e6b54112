"""Cost: train time priced per GPU-hour, and per perplexity point gained over the full-precision untouched base."""

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
    """Money per run and per perplexity point gained over the full-precision untouched base (when a
    reference row exists); a 4-bit run's quantization loss (its 4-bit base's ppl less the full-precision
    base's) in a column of its own, so recovering it is not counted as a gain."""
    rows = []
    for _, row in summary[~summary["reference"]].iterrows():
        base = reference_value(summary, row, "eval_ppl_mean", full_precision=True)
        gain = base - row.get("eval_ppl_mean", math.nan)
        quantization = reference_value(summary, row, "eval_ppl_mean") - base if row.get("quantized") else math.nan
        cost = row["cost_usd_mean"]
        rows.append({"configuration": row["config"], "train s": row["train_s_mean"], "$ per run": cost,
                     "ppl gained vs base": gain if np.isfinite(gain) else None,
                     "4-bit base ppl loss": quantization if np.isfinite(quantization) else None,
                     "$ per ppl point": cost / gain if np.isfinite(gain) and gain > 0 else None})
    return pd.DataFrame(rows)


@register("cost", order=150)
def cost_section(ctx: ReportContext) -> list[Section]:
    if ctx.summary.empty:
        return []
    cost = Section("Cost", paragraphs=[
        f"At ${ctx.price_per_hour:.2f} per GPU-hour (change with --price-per-hour), train time becomes money. "
        f"'ppl gained vs base' is measured from the untouched base in full precision for every run, 4-bit ones "
        f"included (so a QLoRA run is not credited for recovering its own quantization loss); '4-bit base ppl "
        f"loss' is what loading that base in 4 bits cost before any training; '$ per ppl point' divides the cost "
        f"by the gain."])
    table = frame_table(cost_table(ctx.summary, ctx.price_per_hour), "Cost per configuration",
                        {"train s": "{:.1f}", "$ per run": "{:.5f}", "ppl gained vs base": "{:.2f}",
                         "4-bit base ppl loss": "{:.2f}", "$ per ppl point": "{:.6f}"})
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
