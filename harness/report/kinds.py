"""Which runs each report section reads, by objective: each objective declares its report sections
(`Objective.report_sections`), so no section names an objective."""

from __future__ import annotations

import pandas as pd

from harness.objectives import DEFAULT, SPEC_COLUMN, sections_of
from harness.report.columns import column, missing

__all__ = ["OBJECTIVE_COLUMN", "objective_of", "runs_for"]

#: the spec column naming a run's objective
OBJECTIVE_COLUMN = SPEC_COLUMN


def objective_of(df: pd.DataFrame) -> pd.Series:
    """Each row's objective name (runs or `summarize` rows); sft runs have none in their spec."""
    return column(df, OBJECTIVE_COLUMN).map(lambda v: DEFAULT if missing(v) else str(v))


def runs_for(df: pd.DataFrame, section: str) -> pd.DataFrame:
    """The rows of `df` whose objective contributes to report section `section` (any status; order kept);
    "single_task" is the plain fine-tuning and untouched-base rows that transfer, adaptation and
    multitask compare against.

    Raises:
        KeyError: no objective contributes to `section`.
    """
    names = sections_of(section)
    if not names:
        raise KeyError(f"no objective declares report section `{section}`")
    return df[objective_of(df).isin(names)]
