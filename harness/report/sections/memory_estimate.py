"""Estimate vs measured: each configuration's predicted peak memory (harness.memory) beside the measured one."""

from __future__ import annotations

import pandas as pd

from harness.report.context import ReportContext
from harness.report.document import Section, frame_table
from harness.report.frame import ok_runs
from harness.report.sections.base import register

__all__ = ["estimate_table", "CPU_TOLERANCE_PCT", "GPU_TOLERANCE_PCT"]

#: how close the estimate should come: RSS on CPU is noisy; on a GPU, to max_memory_reserved
CPU_TOLERANCE_PCT, GPU_TOLERANCE_PCT = 20.0, 10.0
_PAIRS = (("train", "peak_mem_train_est_mb", "peak_mem_train_mb"), ("eval", "peak_mem_eval_est_mb", "peak_mem_eval_mb"))


def estimate_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (ok runs with an estimate, seeds averaged): estimated and measured train and
    eval peaks in MiB and the estimate's error in % of the measured peak."""
    runs = ok_runs(df)
    if runs.empty or "peak_mem_train_est_mb" not in runs:
        return pd.DataFrame()
    runs = runs[runs["peak_mem_train_est_mb"].notna() & ~runs.get("reference", False)]
    rows = []
    for config, group in runs.groupby("config", sort=False):
        row = {"configuration": config}
        for phase, est_key, measured_key in _PAIRS:
            est, measured = group[est_key].astype(float).mean(), group[measured_key].astype(float).mean()
            row[f"{phase} est MiB"], row[f"{phase} measured MiB"] = est, measured
            row[f"{phase} error %"] = 100 * (est - measured) / measured if measured == measured and measured else None
        rows.append(row)
    return pd.DataFrame(rows)


@register("memory_estimate", order=152)
def memory_estimate_section(ctx: ReportContext) -> list[Section]:
    table = estimate_table(ctx.df)
    if table.empty:
        return []
    errors = table["train error %"].dropna().abs()
    worst = f" The largest train error here is {errors.max():.1f}%." if not errors.empty else ""
    section = Section("Estimate vs measured memory", paragraphs=[
        "Before a run starts ftbench estimates its peak memory (weights, gradients, optimizer state, activations "
        "and logits, device overhead; `ftbench run --dry-run` shows it, `--memory-budget` refuses what would not "
        "fit). Here each estimate stands beside what the run measured; error % is (estimate − measured) ÷ measured. "
        f"The target is ±{CPU_TOLERANCE_PCT:.0f}% on CPU, where the measured peak is the process's resident set "
        "(RSS: sampled, and noisy — the allocator keeps freed memory, the runtime itself is a large share), and "
        f"±{GPU_TOLERANCE_PCT:.0f}% of max_memory_reserved on a GPU (the estimate predicts max_memory_allocated; "
        f"the allocator's cache comes on top).{worst}"])
    section.tables.append(frame_table(table, "Estimated vs measured peak memory per configuration (MiB)",
                                      {c: ("{:+.1f}" if c.endswith("%") else "{:,.0f}") for c in table.columns[1:]}))
    return [section]
