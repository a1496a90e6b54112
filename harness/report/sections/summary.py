"""The report's opening section: what was run, what varied, and one row of seed statistics per configuration."""

from __future__ import annotations

import pandas as pd

from harness.report.columns import missing
from harness.report.context import ReportContext
from harness.report.document import Cell, Section, Table, busy_note, metric_cell, sortable
from harness.report.frame import TEST, Metric, best_rows, device_figure
from harness.report.semantics import measurement_note
from harness.report.sections.base import register

__all__ = ["best_per_method", "metrics_table", "superseded_note"]


def metrics_table(summary: pd.DataFrame, metrics: list[Metric], caption: str, axes: list[str]) -> Table:
    """Configuration, its axis values and seeds, then `mean ± CI half-width` per metric, best marked.

    A memory or time figure of a configuration with a contended seed is marked (`busy_note` says
    what that means under the table) and is never the column's best."""
    busy = summary["n_contended"] > 0 if "n_contended" in summary else pd.Series(False, index=summary.index)
    best = {m.key: best_rows(summary[~busy] if device_figure(m.key) else summary, m) for m in metrics}
    axis_cols = [a for a in axes if a != "method.name"][:4]
    columns = ["configuration", *axis_cols, "n"] + [m.label for m in metrics]
    rows = []
    for i, row in summary.iterrows():
        name = row["config"] + (" (reference)" if row["reference"] else "")
        axis_cells = [Cell("–" if missing(row.get(a)) else str(row.get(a)), sortable(row.get(a))) for a in axis_cols]
        rows.append([Cell(name, row["config"]), *axis_cells, Cell(str(row["n_seeds"]), row["n_seeds"])]
                    + [metric_cell(row, m, i in best[m.key], busy[i] and device_figure(m.key)) for m in metrics])
    table = Table(caption, columns, rows)
    if busy.any():
        table.notes.append(busy_note(int(summary["n_contended"].sum()), int(summary["n_seeds"].sum())))
    return table


def best_per_method(summary: pd.DataFrame, quality: Metric, test: Metric) -> Table | None:
    """Each method's best configuration over its variants, chosen on the validation split, with its test
    figure beside it (an optimistic validation figure is what choosing among many variants gives); None when
    no method has more than one configuration."""
    rows = summary[~summary["reference"]] if "method.name" in summary else summary.iloc[0:0]
    col = f"{quality.key}_mean"
    if rows.empty or col not in rows or rows.groupby(rows["method.name"].astype(str)).size().max() < 2:
        return None
    out = []
    for method, group in rows.groupby(rows["method.name"].astype(str), sort=False):
        group = group.dropna(subset=[col]).sort_values(col, ascending=quality.lower_is_better)
        if group.empty:
            continue
        top = group.iloc[0]
        out.append([Cell(method, method), Cell(top["config"], top["config"]), Cell(str(len(group)), len(group)),
                    metric_cell(top, quality, False), metric_cell(top, test, False) if f"{test.key}_mean" in top
                    else Cell("–")])
    return Table("Each method's best variant: chosen on the validation split, reported on the test split",
                 ["method", "chosen configuration", "variants", f"{quality.label} (validation, chose)",
                  f"{test.label} (test, reported)"], out)


def superseded_note(superseded: dict) -> str:
    """One sentence on the runs of earlier settings that the report leaves out."""
    n = sum(count for count, _ in superseded.values())
    differ = sorted({c for _, cols in superseded.values() for c in cols})
    same = sorted(config for config, (_, cols) in superseded.items() if not cols)
    why = [f"differing in {', '.join(differ)}"] if differ else []
    why += [f"{'all' if len(same) == len(superseded) else ', '.join(same)}: the same spec, with an older version "
            "of its data or of a run it read"] if same else []
    return (f"Left out: {n} run{'s' * (n != 1)} of {len(superseded)} configuration{'s' * (len(superseded) != 1)} "
            f"({', '.join(sorted(superseded))}) made under earlier settings ({'; '.join(why)}); each "
            "configuration is reported at its newest settings. The older runs stay in the store (`ftbench ls`).")


@register("summary", order=10)
def summary_section(ctx: ReportContext) -> list[Section]:
    df, summary = ctx.df, ctx.summary
    intro = Section("Summary", paragraphs=[
        f"{len(df)} runs ({(df['status'] == 'ok').sum()} ok) in {df['config'].nunique()} configurations. "
        f"Varied: {', '.join(ctx.axes) or 'nothing'}. Each cell is the mean over seeds ± the half-width of its 95% "
        f"interval: for quality figures (loss, perplexity, task scores) a bootstrap over the examples they average, "
        f"and over seeds too when there are several, wherever the runs kept per-example scores; otherwise, and for "
        f"costs, a Student-t interval over seeds (none with one seed). 'eval' figures are on the validation split, "
        f"which every choice of a best is made on; 'test' figures on the test split, which chooses nothing. The "
        f"best value of each column is in bold."])
    if summary.get("infer_decode_ms_per_token_mean", pd.Series(dtype=float)).notna().any():
        intro.paragraphs[0] += (" A run's decode latency is the median over its latency prompts × repeats, the IQR "
                                "column the spread of those samples (p75 − p25); 'merged' is the same after merging "
                                "the adapter into the weights (– where the method does not merge).")
    if df.attrs.get("superseded"):
        intro.paragraphs.append(superseded_note(df.attrs["superseded"]))
    note = measurement_note(df[df["status"] == "ok"])
    if note:
        intro.paragraphs.append(note)
    if not summary.empty:
        intro.tables.append(metrics_table(summary, ctx.metrics, "One row per configuration (grid point minus seed)",
                                          ctx.axes))
        per_method = best_per_method(summary, ctx.quality, TEST[1])
        if per_method is not None:
            intro.tables.append(per_method)
    return [intro]
