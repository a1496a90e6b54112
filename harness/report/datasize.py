"""Data-size curves: mean eval loss per training-set size of each series, and a power law fitted per series with
its parameter intervals and whether the data identify it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.frame import ok_runs
from harness.report.stats import PowerLawFit, fit_power_law, mean_ci

__all__ = ["COLUMNS", "DataSizeCurves", "data_size_analysis"]


#: the table's columns: per parameter its estimate and interval, then the fit's quality and what it supports
COLUMNS = ["series", "a", "a_low", "a_high", "b", "b_low", "b_high", "c", "c_low", "c_high", "R²", "RMSE", "points",
           "sizes", "identified", "reason", "n to reach target"]


@dataclass
class DataSizeCurves:
    points: pd.DataFrame  # series, n, eval_loss mean/ci_low/ci_high, seeds
    fits: dict[str, PowerLawFit | None]  # series → its fit (None: fewer than 3 distinct n, or no convergence)
    table: pd.DataFrame  # one row per series, COLUMNS: n to reach target is NaN unless the fit is identified
    target: float | None


def _row(series: str, fit: PowerLawFit | None, sizes: int, target: float | None) -> dict:
    if fit is None:
        why = f"{sizes} distinct sizes (a curve needs 3)" if sizes < 3 else "the least-squares fit did not converge"
        return {**dict.fromkeys(COLUMNS), "series": series, "sizes": sizes, "identified": False, "reason": why}
    row = {"series": series, "R²": fit.r2, "RMSE": fit.rmse, "points": fit.points, "sizes": fit.sizes,
           "identified": fit.identified, "reason": fit.reason,
           "n to reach target": fit.n_for(target) if target is not None else math.nan}
    for name, value, (low, high) in zip("abc", (fit.a, fit.b, fit.c), fit.ci):
        row.update({name: value, f"{name}_low": low, f"{name}_high": high})
    return row


def data_size_analysis(df: pd.DataFrame, target: float | None) -> DataSizeCurves:
    """Per series (a configuration without its n_train): mean loss per n, the power-law fit with its parameter
    intervals and whether it is identified, and — for identified fits only — the n to reach `target` (default:
    the worst series' mean loss at its largest n, a level every series reaches)."""
    runs = ok_runs(df)
    runs = runs[~runs["reference"]].copy()
    runs["series"] = runs["config"].str.replace(r"-n\d+(?=-|$)", "", regex=True)
    runs["n"] = pd.to_numeric(runs["data.n_train"], errors="coerce")
    points, fits, sizes = [], {}, {}
    for series, group in runs.groupby("series", sort=False):
        for n, at_n in group.groupby("n"):
            ci = mean_ci(pd.to_numeric(at_n["eval_loss"], errors="coerce").tolist())
            points.append({"series": series, "n": n, "eval_loss_mean": ci.mean, "eval_loss_ci_low": ci.low,
                           "eval_loss_ci_high": ci.high, "seeds": ci.n})
        fits[series] = fit_power_law(group["n"], pd.to_numeric(group["eval_loss"], errors="coerce"))
        sizes[series] = int(group["n"].nunique())
    points = pd.DataFrame(points)
    if target is None and len(points):
        target = float(points.loc[points.groupby("series")["n"].idxmax(), "eval_loss_mean"].max())
    table = pd.DataFrame([_row(series, fit, sizes[series], target) for series, fit in fits.items()], columns=COLUMNS)
    return DataSizeCurves(points, fits, table, target)
