"""The report as a document (Report → Section → Table → Cell) and the helpers that turn numbers into cells."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report.columns import missing
from harness.report.frame import Metric
from harness.report.stats import PowerLawFit

__all__ = ["BUSY_MARK", "Cell", "Table", "View", "Section", "Report", "busy_note", "metric_cell", "number_cell", "sortable",
           "mean_of", "best_positions", "frame_table", "number_table"]

#: after a memory or time figure taken while something outside the sweep competed for the hardware
BUSY_MARK = "†"


@dataclass
class Cell:
    text: str
    sort: float | str | None = None  # the value a browser sorts the column by
    best: bool = False


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)  # footnotes, shown under the table


@dataclass
class View:
    """An interactive figure of the HTML page (`harness.report.interactive` builds and draws it).

    Args:
        kind: how the page draws it: "pareto" (the explorer: axes and groups chosen by the reader) or
            "plotly" (a fixed Plotly figure).
        data: its JSON-able payload.
        caption: shown under it.
        replaces: the section's PNG figures (file names) the HTML page leaves out because this view shows
            them; report.md keeps them.
    """

    kind: str
    data: dict
    caption: str
    replaces: tuple[str, ...] = ()


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, bytes, str]] = field(default_factory=list)  # (file name, png, caption)
    views: list[View] = field(default_factory=list)  # interactive figures of the HTML page (before its PNGs)


@dataclass
class Report:
    experiment: str
    generated_at: str
    axes: list[str]
    summary: pd.DataFrame
    sections: list[Section]
    fits: dict[str, PowerLawFit | None] = field(default_factory=dict)
    #: runs not in the report: damaged records, unfinished runs, grid points missing from the store
    #: ({slug, status, error_type, error} each; see `harness.report.build.absent_runs`)
    absent: list[dict] = field(default_factory=list)


def metric_cell(summary_row, metric: Metric, best: bool, busy: bool = False) -> Cell:
    """`mean ± CI half-width` of `metric` in a `summarize` row; "–" when not measured; `busy` adds
    BUSY_MARK (a seed of it was measured under contention)."""
    mean = summary_row[f"{metric.key}_mean"]
    if mean is None or not np.isfinite(mean):
        return Cell("–")
    out = metric.format(mean)
    half = (summary_row[f"{metric.key}_ci_high"] - summary_row[f"{metric.key}_ci_low"]) / 2
    if np.isfinite(half) and half > 0:
        out += f" ± {Metric(metric.key, '', metric.fmt, metric.scale).format(half).lstrip('+')}"
    return Cell(out + (f" {BUSY_MARK}" if busy else ""), float(mean), best)


def busy_note(n_contended: int, n_runs: int) -> str:
    """The footnote under a table with BUSY_MARK cells."""
    return (f"{BUSY_MARK} memory or time taken while processes outside the sweep competed for the run's CPU or GPU "
            f"(env.contended: {n_contended} of {n_runs} runs; `ftbench show RUN` gives the evidence), so it may be "
            f"distorted and is never a column's best. Quality figures are unaffected; these runs are left out of the "
            f"speed and memory findings.")


def number_cell(value, fmt: str = "{:.3f}", best: bool = False) -> Cell:
    """One number formatted with `fmt`; "–" when missing or not finite."""
    if missing(value) or not np.isfinite(value):
        return Cell("–")
    return Cell(fmt.format(value), float(value), best)


def sortable(value):
    """What a cell sorts by: the value as a float when it is a number, else its text (None when missing)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None if missing(value) else str(value)


def mean_of(row, metric: Metric) -> float:
    """The seed mean of `metric` in a `summarize` row; NaN when absent."""
    value = row.get(f"{metric.key}_mean")
    return math.nan if missing(value) else float(value)


def best_positions(values, lower: bool = True) -> set[int]:
    """Positions of the best finite value(s) of a list."""
    x = np.asarray([v if v is not None else math.nan for v in values], dtype=float)
    if not np.isfinite(x).any():
        return set()
    top = np.nanmin(x) if lower else np.nanmax(x)
    return {i for i, v in enumerate(x) if np.isfinite(v) and np.isclose(v, top, rtol=1e-12, atol=0)}


def frame_table(df: pd.DataFrame, caption: str, fmt: dict[str, str] | None = None) -> Table:
    """Every row and column of `df`; `fmt` formats named columns (any value), "–" for a missing one."""
    fmt = fmt or {}
    rows = [[Cell(fmt.get(c, "{}").format(v) if not missing(v) else "–", sortable(v)) for c, v in row.items()]
            for _, row in df.iterrows()]
    return Table(caption, list(df.columns), rows)


def number_table(frame: pd.DataFrame, caption: str, fmt: dict[str, str]) -> Table:
    """Like `frame_table`, but the `fmt` columns hold numbers: a non-finite one shows "–" and does not sort."""
    rows = []
    for _, row in frame.iterrows():
        rows.append([number_cell(v, fmt[c]) if c in fmt
                     else Cell("–" if missing(v) else str(v), None if missing(v) else v) for c, v in row.items()])
    return Table(caption, list(frame.columns), rows)
