"""Data-size curves: eval loss against the number of training examples, with a power law fitted per series."""

from __future__ import annotations

import math

import pandas as pd

from harness.report import figures
from harness.report.columns import missing
from harness.report.context import ReportContext
from harness.report.document import Cell, Section, Table, number_cell
from harness.report.sections.base import register

_PARAM_FORMAT = {"a": "{:.3g}", "b": "{:.3f}", "c": "{:.3f}"}
_COLUMNS = ["series", "a", "b", "c", "R²", "RMSE", "points", "identified", "n to reach target"]


def _parameter(row, name: str) -> Cell:
    """The estimate with its interval, "0.420 (0.300–0.550)"; sorts by the estimate."""
    value, low, high = row[name], row[f"{name}_low"], row[f"{name}_high"]
    if missing(value) or not math.isfinite(value):
        return Cell("–")
    fmt = _PARAM_FORMAT[name]
    text = fmt.format(value)
    if not (missing(low) or missing(high)) and math.isfinite(low) and math.isfinite(high):
        text += f" ({fmt.format(low)}–{fmt.format(high)})"
    return Cell(text, float(value))


def _n_to_target(row) -> Cell:
    if not row["identified"]:
        return Cell(f"not identified: {row['reason']}")
    n = row["n to reach target"]
    if missing(n) or math.isnan(n):
        return Cell("–")
    return Cell("inf", math.inf) if math.isinf(n) else Cell(f"{n:.0f}", float(n))


def _table(table: pd.DataFrame, largest: dict[str, float]) -> Table:
    rows = []
    for _, row in table.iterrows():
        rows.append([Cell(row["series"], row["series"]), *(_parameter(row, p) for p in "abc"),
                     number_cell(row["R²"], "{:.3f}"), number_cell(row["RMSE"], "{:.4f}"),
                     number_cell(row["points"], "{:.0f}"),
                     Cell("yes" if row["identified"] else f"no: {row['reason']}", float(bool(row["identified"]))),
                     _n_to_target(row)])
    out = Table("Power-law fit per series (95% intervals of a, b, c)", list(_COLUMNS), rows)
    beyond = [r["series"] for _, r in table.iterrows() if r["identified"]
              and math.isfinite(r["n to reach target"]) and r["n to reach target"] > largest.get(r["series"], math.inf)]
    if beyond:
        out.notes.append(f"'n to reach target' of {', '.join(beyond)} lies beyond the largest measured n: an "
                         "extrapolation of the fitted law.")
    return out


@register("data_size", order=100)
def data_size_section(ctx: ReportContext) -> list[Section]:
    curves = ctx.data_size
    if curves is None:
        return []
    section = Section("Data-size curves", paragraphs=[
        f"Eval loss against the number of training examples, with L(n) = a·n^(-b) + c fitted per series "
        f"(least squares over every seed; a, b, c with 95% t-intervals from the fit's covariance on points − 3 "
        f"degrees of freedom). Target loss: {curves.target:.3f}; 'n to reach target' reads it off the fit "
        f"(inf: the fitted floor c is above the target), only where the fit is identified."])
    few = [name for name, fit in curves.fits.items() if fit is not None and fit.sizes < 4]
    if few:
        section.paragraphs.append(
            f"Caveat: {', '.join(few)} {'has' if len(few) == 1 else 'have'} fewer than 4 distinct n, so the "
            "three parameters pass through the points rather than being estimated from them: read the curve "
            "between the measured sizes, not a, b, c or an 'n to reach target' outside them. Add a fourth size.")
    loose = {name: fit.reason for name, fit in curves.fits.items()
             if fit is not None and fit.sizes >= 4 and not fit.identified}
    if loose:
        section.paragraphs.append(
            "Caveat: the data do not pin down the law of "
            + "; ".join(f"{name} ({why})" for name, why in loose.items())
            + ": the least-squares optimum sits where the law degenerates, so a, b, c mean little and no "
            "'n to reach target' is read off; read the points themselves.")
    section.figures.append(("data_size.png", figures.data_size(curves.points, curves.fits, curves.target),
                            "quality against n_train"))
    largest = curves.points.groupby("series")["n"].max().to_dict() if len(curves.points) else {}
    section.tables.append(_table(curves.table, largest))
    return [section]
