"""What every report section reads, computed once per report: the runs, their varied axes and seed summary."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from harness.report.datasize import DataSizeCurves, data_size_analysis
from harness.report.frame import COSTS, FORGETTING, QUALITY, Metric, summarize, task_metrics, varied_axes

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
        return QUALITY + self.tasks + forgetting + COSTS

    @cached_property
    def summary(self) -> pd.DataFrame:
        return summarize(self.df, self.metrics, self.axes)

    @property
    def quality(self) -> Metric:
        """The quality fronts and findings rank by: eval perplexity."""
        return QUALITY[1]

    @property
    def costs(self) -> list[Metric]:
        return [m for m in COSTS if m.key in FRONT_COSTS]

    @cached_property
    def data_size(self) -> DataSizeCurves | None:
        """The data-size curves when `data.n_train` varies over at least two sizes, else None."""
        if "data.n_train" in self.axes and pd.to_numeric(self.df["data.n_train"], errors="coerce").nunique() >= 2:
            return data_size_analysis(self.df, self.target_loss)
        return None
