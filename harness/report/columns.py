"""Reading the runs frame's spec columns: a column a store may lack, a missing value, a list stored as JSON text."""

from __future__ import annotations

import json
import math

import pandas as pd

__all__ = ["as_list", "column", "missing", "text"]


def missing(value) -> bool:
    """None or NaN: a spec field a run did not set, a metric it did not measure."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def text(value) -> str:
    """The value as text, "" when missing."""
    return "" if missing(value) else str(value)


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """Column `name`, or all-None when no run's spec has it (sft runs have no `objective.*`)."""
    return df[name] if name in df else pd.Series(None, index=df.index, dtype=object)


def as_list(value) -> list:
    """A spec list, also when load_runs stored it as JSON text."""
    if isinstance(value, str) and value.startswith("["):
        value = json.loads(value)
    return list(value) if isinstance(value, (list, tuple)) else []
