"""What every report section reads, computed once per report: the runs, their varied axes and seed summary."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.datasize import DataSizeCurves, data_size_analysis
from harness.report.examples import EXAMPLE_KEYS, ExampleScores
from harness.report.findings import Findings, assess
from harness.report.frame import (COSTS, FORGETTING, QUALITY, TEST, Metric, reference_row, summarize, task_metrics,
                                  varied_axes)

__all__ = ["FRONT_COSTS", "ReportContext"]

#: the costs a quality is plotted against
FRONT_COSTS = ["peak_mem_train_mb", "trainable_params", "train_s"]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ReportContext:
    """One experiment's runs (`load_runs`) and the report's options; derived tables are computed on first use.

    Args:
        price_per_hour: dollars per GPU-hour, for the cost section.
        target_loss: the eval loss the data-size curves read "n to reach" at (None: the worst series' last).
        storage: the full URL of a search's Optuna storage when the one in search.json lacks a password.
    """

    experiment: str
    df: pd.DataFrame
    root: Path | None = None
    price_per_hour: float = 2.0
    target_loss: float | None = None
    storage: str | None = None
    generated_at: str = field(default_factory=_now)
    #: runs the store lacks a usable record of (`harness.report.build.absent_runs`), for the failures section
    absent: list[dict] = field(default_factory=list)

    @cached_property
    def axes(self) -> list[str]:
        return varied_axes(self.df)

    @cached_property
    def tasks(self) -> list[Metric]:
        return task_metrics(self.df)

    @cached_property
    def metrics(self) -> list[Metric]:
        """Quality, task scores, general forgetting (when measured) and costs: the summary table's columns."""
        df = self.df
        forgetting = [FORGETTING] if FORGETTING.key in df and df[FORGETTING.key].notna().any() else []
        test = [m for m in TEST if m.key in df and df[m.key].notna().any()]
        return QUALITY + test + self.tasks + forgetting + COSTS

    @cached_property
    def examples(self) -> ExampleScores:
        """The runs' per-example scores (examples.json), for intervals and paired comparisons."""
        return ExampleScores(self.df, self.root)

    @cached_property
    def summary(self) -> pd.DataFrame:
        """`summarize`'s table, the interval of every quality figure a run kept per-example scores for taken
        over examples (and seeds): `<key>_ci_from` says "examples" or "seeds" per row."""
        summary = summarize(self.df, self.metrics, self.axes)
        if summary.empty:
            return summary
        keys = [m.key for m in self.metrics if m.key.startswith("task.") or m.key in EXAMPLE_KEYS]
        for key in keys:
            summary[f"{key}_ci_from"] = "seeds"
            for i, row in summary.iterrows():
                interval = self.examples.interval(row["config"], key)
                if interval is not None:
                    summary.loc[i, [f"{key}_ci_low", f"{key}_ci_high", f"{key}_ci_from"]] = [
                        interval.low, interval.high, "examples" if row["n_seeds"] == 1 else "examples and seeds"]
        if FORGETTING.key in {m.key for m in self.metrics}:
            self._forgetting_intervals(summary)
        return summary

    def _forgetting_intervals(self, summary: pd.DataFrame) -> None:
        """forgetting % against the run's own base, with the paired interval over general_ppl's documents."""
        key = "task.general_ppl.word_perplexity"
        col = FORGETTING.key
        summary[f"{col}_ci_from"] = "seeds"
        for i, row in summary[~summary["reference"]].iterrows():
            base = reference_row(summary, row)
            diff = self.examples.difference(row["config"], base["config"], key) if base is not None else None
            if diff is not None and np.isfinite(diff.low):
                summary.loc[i, [f"{col}_ci_low", f"{col}_ci_high", f"{col}_ci_from"]] = [
                    100 * math.expm1(diff.low), 100 * math.expm1(diff.high), "examples"]

    @property
    def quality(self) -> Metric:
        """The quality fronts and findings rank by: eval perplexity."""
        return QUALITY[1]

    @property
    def costs(self) -> list[Metric]:
        return [m for m in COSTS if m.key in FRONT_COSTS]

    @cached_property
    def findings(self) -> Findings:
        """The findings and their corrected comparisons (the findings section and the trust box read them)."""
        return assess(self.df, self.summary, self.quality, self.costs, self.tasks, self.examples)

    @cached_property
    def data_size(self) -> DataSizeCurves | None:
        """The data-size curves when `data.n_train` varies over at least two sizes, else None."""
        if "data.n_train" in self.axes and pd.to_numeric(self.df["data.n_train"], errors="coerce").nunique() >= 2:
            return data_size_analysis(self.df, self.target_loss)
        return None
