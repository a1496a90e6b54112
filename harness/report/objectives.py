"""What the objective sections (distillation, preference) read from their runs' specs: the spec columns they
carry, a distillation's loss mix and teacher, seed summaries, and cells of spec values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from harness.objectives.distill import LossWeights
from harness.report.columns import missing
from harness.report.document import Cell
from harness.report.frame import Metric, summarize
from harness.report.kinds import OBJECTIVE_COLUMN

__all__ = ["SPEC_COLUMNS", "MIX", "loss_mix", "teacher_label", "objective_summary", "spec_cell", "pair_cell"]

#: spec columns a section's rows carry from their first run (summarize keeps them beside the means)
SPEC_COLUMNS = ["method.name", OBJECTIVE_COLUMN, "objective.teacher", "objective.teachers", "objective.beta",
                "objective.loss_type", "objective.start", "objective.cache_teacher", *(f"objective.losses.{k}" for k in LossWeights.model_fields)]
#: (weight, short name) in the order the slug writes them (grid.make_slug)
MIX = [("kl", "kl"), ("feature", "feat"), ("relation", "rel")]


def loss_mix(weights: dict) -> str:
    """The losses a distillation used, named as its slug names them ("kl+feat+rel"; "ce" for none).

    A weight the spec lacks takes its `LossWeights` default, as the run itself did."""
    defaults = LossWeights()
    used = [short for key, short in MIX
            if (getattr(defaults, key) if missing(weights.get(key)) else float(weights[key])) > 0]
    return "+".join(used) or "ce"


def teacher_label(row) -> str:
    """The teacher's name, or "ensemble of N" when the spec lists several."""
    teachers = row.get("objective.teachers")
    if isinstance(teachers, str) and teachers.startswith("["):  # load_runs stores lists as JSON text
        teachers = json.loads(teachers)
    if isinstance(teachers, list) and len(teachers) > 1:
        return f"ensemble of {len(teachers)}"
    if isinstance(teachers, list) and teachers:  # entries are {model, weight}
        only = teachers[0]
        return str(only.get("model", json.dumps(only))) if isinstance(only, dict) else str(only)
    teacher = row.get("objective.teacher")
    return "–" if missing(teacher) else str(teacher)


def objective_summary(runs: pd.DataFrame, metrics: list[Metric], order: Metric) -> pd.DataFrame:
    """Seed statistics per configuration with the `SPEC_COLUMNS`, best `order` first."""
    summary = summarize(runs, metrics, SPEC_COLUMNS)
    return summary.sort_values(f"{order.key}_mean", ascending=order.lower_is_better, na_position="last",
                               kind="stable").reset_index(drop=True)


def spec_cell(row, column: str) -> Cell:
    """A spec value of a summary row ("–" when unset; floats in their shortest form)."""
    value = row.get(column)
    return Cell("–", None) if missing(value) else Cell(f"{value:g}" if isinstance(value, float) else str(value), value)


def pair_cell(row, left: Metric, right: Metric, joint: str, by: Metric, best: bool) -> Cell:
    """Two means in one cell ("0.81 → 0.32"), sorted and marked by metric `by` (one of the two)."""
    a, b, key = row[f"{left.key}_mean"], row[f"{right.key}_mean"], row[f"{by.key}_mean"]
    if not (np.isfinite(a) or np.isfinite(b)):
        return Cell("–")
    return Cell(f"{left.format(a)} {joint} {right.format(b)}", float(key) if np.isfinite(key) else None, best)
