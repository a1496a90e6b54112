"""Build the trade-off report of one experiment from the results store alone: load the runs once, then every
registered section (`harness.report.sections`) in order."""

from __future__ import annotations

from pathlib import Path

from harness.report.context import ReportContext
from harness.report.document import Report
from harness.report.frame import load_runs
from harness.report.sections import build_sections
from harness.report.sections.summary import superseded_note

# superseded_note: the CLI's transfer command prints it beside its matrix
__all__ = ["build", "superseded_note"]


def build(experiment: str, root: Path | None = None, price_per_hour: float = 2.0,
          target_loss: float | None = None, storage: str | None = None) -> Report:
    """Read the store and build every section of the report (no file is written here).

    Args:
        price_per_hour: dollars per GPU-hour, for the cost section.
        target_loss: the eval loss the data-size curves read "n to reach" at (None: the worst series' last).
        storage: the full URL of a search's Optuna storage when the one in search.json lacks a password.

    Raises:
        ValueError: the experiment has no finished runs.
    """
    df = load_runs(experiment, root, price_per_hour)
    if df.empty:
        raise ValueError(f"no finished runs for experiment `{experiment}`")
    ctx = ReportContext(experiment, df, root, price_per_hour, target_loss, storage)
    sections = build_sections(ctx)
    fits = ctx.data_size.fits if ctx.data_size is not None else {}
    return Report(experiment, ctx.generated_at, ctx.axes, ctx.summary, sections, fits)
