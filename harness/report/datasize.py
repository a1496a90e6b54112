"""Data-size curves: mean eval loss per training-set size of each series, and a power law fitted per series."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.report.frame import ok_runs
from harness.report.stats import PowerLawFit, fit_power_law, mean_ci

__all__ = ["DataSizeCurves", "data_size_analysis"]


@dataclass
class DataSizeCurves:
    points: pd.DataFrame  # series, n, eval_loss mean/ci_low/ci_high, seeds
    fits: dict[str, PowerLawFit | None]  # series → its fit (None: fewer than 3 distinct n)
    table: pd.DataFrame  # one row per series: a, b, c, R², RMSE, points, n to reach target
    target: float | None


def data_size_analysis(df: pd.DataFrame, target: float | None) -> DataSizeCurves:
    """Per series (a configuration without its n_train): mean loss per n, the power-law fit, and the n to reach
    `target` (default: the worst series' mean loss at its largest n, a level every series reaches)."""
    runs = ok_runs(df)
    runs = runs[~runs["reference"]].copy()
    runs["series"] = runs["config"].str.replace(r"-n\d+(?=-|$)", "", regex=True)
    runs["n"] = pd.to_numeric(runs["data.n_train"], errors="coerce")
    points, fits = [], {}
    for series, group in runs.groupby("series", sort=False):
        for n, at_n in group.groupby("n"):
            ci = mean_ci(pd.to_numeric(at_n["eval_loss"], errors="coerce").tolist())
            points.append({"series": series, "n": n, "eval_loss_mean": ci.mean, "eval_loss_ci_low": ci.low,
                           "eval_loss_ci_high": ci.high, "seeds": ci.n})
        fits[series] = fit_power_law(group["n"], pd.to_numeric(group["eval_loss"], errors="coerce"))
    points = pd.DataFrame(points)
    if target is None and len(points):
        target = float(points.loc[points.groupby("series")["n"].idxmax(), "eval_loss_mean"].max())
    rows = []
    for series, fit in fits.items():
        if fit is None:
            rows.append({"series": series, "a": None, "b": None, "c": None, "R²": None, "RMSE": None,
                         "points": None, "n to reach target": None})
        else:
            rows.append({"series": series, "a": fit.a, "b": fit.b, "c": fit.c, "R²": fit.r2, "RMSE": fit.rmse,
                         "points": fit.points, "n to reach target": fit.n_for(target)})
    return DataSizeCurves(points, fits, pd.DataFrame(rows), target)
