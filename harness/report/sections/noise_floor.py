"""Noise floor: how far apart the repeats of one spec and seed (grid `repeats: N`) land, per cost figure.

Only in a report whose experiment repeated its runs; docs/reports.md says how to get one.
"""

from __future__ import annotations

import pandas as pd

from harness.metrics import METRICS
from harness.report.context import ReportContext
from harness.report.document import Cell, Section, Table, number_cell
from harness.report.frame import COSTS
from harness.report.repeats import REPEATS, SPREAD, noise_floor
from harness.report.sections.base import register

__all__ = ["cost_figures", "noise_floor_section"]


def cost_figures() -> list[str]:
    """The report's cost columns (COSTS), then every other figure the vocabulary says a device measured
    (memory, time, latency: its `device` is set), in declaration order."""
    device = [m.key for m in METRICS if m.device and not m.is_pattern]
    return list(dict.fromkeys([*(m.key for m in COSTS), *device]))


@register("noise_floor", order=155)
def noise_floor_section(ctx: ReportContext) -> list[Section]:
    df = ctx.df
    if REPEATS not in df or not (pd.to_numeric(df[REPEATS], errors="coerce") >= 2).any():
        return []
    floor = noise_floor(df, cost_figures())
    labels = {m.key: m.label for m in COSTS}
    # a figure no device measures (a count, a size) that never moved is no noise: named once, not a row of zeros
    fixed = [k for k, largest in zip(floor["figure"], floor["largest"])
             if largest == 0 and not METRICS.get(k).device]
    floor = floor[~floor["figure"].isin(fixed)]
    groups = df[pd.to_numeric(df[REPEATS], errors="coerce") >= 2]
    counts = sorted(set(pd.to_numeric(groups[REPEATS]).astype(int)))
    times = " or ".join(str(n) for n in counts)
    section = Section("Noise floor", paragraphs=[
        f"{len(groups)} configuration/seed pair(s) ran {times} times each with the same seed (grid `repeats`). "
        "For each cost figure, the spread of one pair's repeats is (max − min) ÷ mean in %; the table gives its "
        "median and the largest over the pairs. A difference between configurations smaller than the median "
        "spread is within this machine's run-to-run noise. Everywhere else in this report the repeats of a seed "
        "are averaged into one row: `n seeds` counts seeds, not repeats."])
    rows = [[Cell(labels.get(r["figure"], r["figure"]), r["figure"]), number_cell(r["median"], "{:.1f}"),
             number_cell(r["largest"], "{:.1f}"), Cell(str(int(r["groups"])), int(r["groups"]))]
            for _, r in floor.iterrows()]
    section.tables.append(Table("Run-to-run spread of each cost figure over repeats of one spec",
                                ["cost figure", "median run-to-run spread %", "largest %", "groups"], rows))
    if fixed:
        section.paragraphs.append("Identical in every repeat: " + ", ".join(labels.get(k, k) for k in fixed) + ".")
    quality = pd.to_numeric(groups[SPREAD + "eval_loss"], errors="coerce") if SPREAD + "eval_loss" in groups else None
    if quality is not None and quality.notna().any():
        section.paragraphs.append("Eval loss was identical in every repeat of a seed: the quality figures are "
                                  "reproducible here." if quality.max() == 0 else
                                  f"Eval loss moved by up to {quality.max():.2g}% between repeats of a seed.")
    return [section]
