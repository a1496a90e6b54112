"""Build the trade-off report of one experiment from the results store alone: load the runs once, then every
registered section (`harness.report.sections`) in order."""

from __future__ import annotations

from pathlib import Path

from harness import store
from harness.report.context import ReportContext
from harness.report.document import Report
from harness.report.frame import load_runs
from harness.report.sections import build_sections
from harness.report.sections.summary import superseded_note

# superseded_note: the CLI's transfer command prints it beside its matrix
__all__ = ["absent_runs", "build", "superseded_note"]


def build(experiment: str, root: Path | None = None, price_per_hour: float = 2.0,
          target_loss: float | None = None, storage: str | None = None, expected: list | None = None) -> Report:
    """Read the store and build every section of the report (no file is written here).

    Args:
        price_per_hour: dollars per GPU-hour, for the cost section.
        target_loss: the eval loss the data-size curves read "n to reach" at (None: the worst series' last).
        storage: the full URL of a search's Optuna storage when the one in search.json lacks a password.
        expected: the runs the experiment file plans (RunSpecs); those the store lacks are listed as
            missing (None: not known, nothing said).

    Raises:
        ValueError: the experiment has no finished runs.
    """
    df = load_runs(experiment, root, price_per_hour)
    if df.empty:
        raise ValueError(f"no finished runs for experiment `{experiment}`")
    absent = absent_runs(experiment, root, expected)
    ctx = ReportContext(experiment, df, root, price_per_hour, target_loss, storage, absent=absent)
    sections = build_sections(ctx)
    fits = ctx.data_size.fits if ctx.data_size is not None else {}
    return Report(experiment, ctx.generated_at, ctx.axes, ctx.summary, sections, fits, absent=absent)


def absent_runs(experiment: str, root: Path | None = None, expected: list | None = None) -> list[dict]:
    """The runs a report cannot show, as failure rows ({slug, status, error_type, error}): each damaged or
    unfinished run directory, then each `expected` run (a RunSpec) with neither its run id nor its slug in
    the store (a run made with `--set` overrides has another id, the same slug: it counts as found)."""
    rows = [{"slug": r.slug, "status": r.state, "error_type": None, "error": f"{r.run_id}: {r.reason}"}
            for r in store.incomplete(experiment, root)]
    if expected:
        found = store.iter_results(experiment, root)
        ids = {r["run_id"] for r in found} | {r.run_id for r in store.incomplete(experiment, root)}
        slugs = {r.get("slug") for r in found} | {row["slug"] for row in rows}
        rows += [{"slug": s.slug, "status": "missing", "error_type": None,
                  "error": f"{s.run_id}: planned by the experiment file, not in the store (never run, or its "
                           f"directory was removed)"}
                 for s in expected if s.run_id not in ids and s.slug not in slugs]
    return rows
