"""Which runs each report section reads, by objective: the one place in the report that names objectives.

`SECTION_OBJECTIVES` stands in for the objective registry: once each objective declares the report sections it
contributes to, `runs_for` asks the registry instead and this table goes.
"""

from __future__ import annotations

import pandas as pd

from harness.objectives.config import PREFERENCE
from harness.report.columns import column, missing

__all__ = ["OBJECTIVE_COLUMN", "SECTION_OBJECTIVES", "objective_of", "runs_for"]

#: the spec column naming a run's objective
OBJECTIVE_COLUMN = "objective.name"
#: a spec without an objective section trains plain SFT
DEFAULT_OBJECTIVE = "sft"
#: section → the objectives whose runs it reports ("single_task": the single-task and untouched-base rows that the
#: transfer, adaptation and multitask sections compare against)
SECTION_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "single_task": (DEFAULT_OBJECTIVE,),
    "distillation": ("distill",),
    "preference": tuple(PREFERENCE),
    "multitask": ("multitask",),
    "continual": ("continual",),
    "routing": ("route",),
}


def objective_of(df: pd.DataFrame) -> pd.Series:
    """Each row's objective name (runs or `summarize` rows); sft runs have none in their spec."""
    return column(df, OBJECTIVE_COLUMN).map(lambda v: DEFAULT_OBJECTIVE if missing(v) else str(v))


def runs_for(df: pd.DataFrame, section: str) -> pd.DataFrame:
    """The rows of `df` whose objective contributes to report section `section` (any status; order kept).

    Raises:
        KeyError: `section` has no entry in `SECTION_OBJECTIVES`.
    """
    return df[objective_of(df).isin(SECTION_OBJECTIVES[section])]
