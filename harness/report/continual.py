"""Continual learning's chains: the stages of each chain of continual runs as a loss matrix, with ACC, BWT, FWT
and forgetting."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.objectives.parts import continual_metrics
from harness.report.columns import as_list, column, text
from harness.report.domains import loss_metric
from harness.report.frame import ok_runs
from harness.report.kinds import runs_for

__all__ = ["Chain", "continual_chains"]


@dataclass
class Chain:
    """The stages of one continual chain: R[i][j] = loss on sequence[j] after stage i, b[j] = before stage 0."""

    name: str
    strategy: str
    method: str
    sequence: list[str]
    r: np.ndarray
    b: np.ndarray | None
    missing: list[int]  # stages without an ok run

    @property
    def complete(self) -> bool:
        return not self.missing and len(self.sequence) >= 2 and bool(np.isfinite(self.r).all())

    def summary(self) -> dict[str, float] | None:
        """ACC (mean final loss), BWT, FWT and average forgetting, losses oriented (None when incomplete)."""
        if not self.complete:
            return None
        baseline = self.b if self.b is not None and np.isfinite(self.b).all() else None
        return continual_metrics.summary(self.r, baseline, higher_is_better=False)


def continual_chains(df: pd.DataFrame) -> list[Chain]:
    """Every chain of continual stage runs (by `objective.chain`), stages ordered by `objective.stage`."""
    if df.empty:
        return []
    runs = runs_for(df, "continual")
    chains = []
    for name, group in runs.groupby(column(runs, "objective.chain").astype(str), sort=True):
        sequence = [str(s) for s in as_list(column(group, "objective.sequence").iloc[0])]
        ok = ok_runs(group)
        stage = pd.to_numeric(column(ok, "objective.stage"), errors="coerce")
        r = np.full((len(sequence), len(sequence)), math.nan)
        for i in range(len(sequence)):
            at = ok[stage == i]
            for j, domain in enumerate(sequence):
                col = loss_metric(domain).key
                if len(at) and col in at:
                    r[i, j] = pd.to_numeric(at[col], errors="coerce").mean()
        first = ok[stage == 0]
        b = None
        before = [loss_metric(d, "task_eval_before").key for d in sequence]
        if len(first) and all(c in first for c in before):
            b = np.array([pd.to_numeric(first[c], errors="coerce").mean() for c in before], dtype=float)
            b = b if np.isfinite(b).all() else None
        chains.append(Chain(name, text(column(group, "objective.strategy").iloc[0]) or "?",
                            text(column(group, "method.name").iloc[0]) or "?", sequence, r, b,
                            [i for i in range(len(sequence)) if not (stage == i).any()]))
    return chains

