"""Transfer between domains: each single-task or multitask run's eval loss on every evaluated source,
against the untouched base."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report import figures
from harness.report.context import ReportContext
from harness.report.document import Cell, Section, Table, best_positions, number_cell
from harness.report.domains import TransferMatrix, transfer_matrix
from harness.report.sections.base import register

__all__ = ["transfer_section"]


def transfer_section(df: pd.DataFrame) -> Section | None:
    """Heatmap and table of the transfer matrix; None without single-task or multitask runs."""
    matrix = transfer_matrix(df)
    if matrix is None or matrix.values.empty:
        return None
    what = ("the change in eval loss against the untouched base (method none) on the same validation split: negative "
            "is better than the base" if matrix.relative else
            "the raw eval loss: no untouched-base row (method none) evaluated every source, so no change can be shown")
    section = Section("Transfer between domains", paragraphs=[
        f"Rows: runs trained on one source, then multitask runs (by architecture); columns: the sources they were "
        f"evaluated on. Each cell is {what}; mean over seeds. The diagonal (outlined) is in-domain, the rest is "
        f"transfer to the other domains."])
    section.bullets = _transfer_findings(matrix)
    section.figures.append(("transfer_matrix.png", figures.transfer_heatmap(matrix.values, matrix.in_domain,
                                                                            matrix.relative),
                            ("eval loss change vs the base" if matrix.relative else "eval loss") + " per trained run × "
                            "evaluated source (outlined: in-domain)"))
    fmt = "{:+.3f}" if matrix.relative else "{:.3f}"
    rows = []
    for label, values in matrix.values.iterrows():
        best = best_positions(values.tolist())
        rows.append([Cell(label, label), Cell(str(matrix.seeds[label]), matrix.seeds[label]),
                     *(number_cell(v, fmt + (" (in-domain)" if matrix.in_domain.get(label) == s else ""), i in best)
                       for i, (s, v) in enumerate(values.items()))])
    section.tables.append(Table("Δ eval loss vs the base per evaluated source (bold: the row's best)" if matrix.relative
                                else "Eval loss per evaluated source (bold: the row's best)",
                                ["trained on", "n", *matrix.values.columns], rows))
    if matrix.relative:
        base = [Cell("untouched base (method none)"), Cell("–"), *(number_cell(matrix.base[s]) for s in matrix.values.columns)]
        section.tables.append(Table("The base's own eval loss per source (what the cells above are measured against)",
                                    ["row", "n", *matrix.values.columns], [base]))
    return section


def _transfer_findings(matrix: TransferMatrix) -> list[str]:
    out, word = [], "Δ" if matrix.relative else "loss"
    off = [(label, s, v) for label, row in matrix.values.iterrows() for s, v in row.items()
           if matrix.in_domain.get(label) is not None and matrix.in_domain[label] != s and np.isfinite(v)]
    if off and matrix.relative:
        label, s, v = min(off, key=lambda t: t[2])
        out.append(f"Most helpful transfer: training on {label} changed {s}'s eval loss by {v:+.3f}.")
        label, s, v = max(off, key=lambda t: t[2])
        if v > 0:
            out.append(f"Most interference: training on {label} raised {s}'s eval loss by {v:+.3f}.")
    diag: dict[str, dict[str, float]] = {}  # source → method → in-domain value of the single-task row
    for label, row in matrix.values.iterrows():
        source = matrix.in_domain.get(label)
        if source is not None and np.isfinite(row[source]):
            diag.setdefault(source, {})[matrix.methods.get(label, "")] = row[source]
    for label, row in matrix.values.iterrows():
        if matrix.in_domain.get(label) is None:
            shared = [s for s in row.index if np.isfinite(row[s]) and s in diag]
            if shared:  # against the single-task run of its own method, else the best one
                alone = [diag[s].get(matrix.methods.get(label, ""), min(diag[s].values())) for s in shared]
                out.append(f"{label}: mean {word} {np.mean([row[s] for s in shared]):+.3f} over {len(shared)} "
                           f"source(s) against {np.mean(alone):+.3f} for the single-task runs in-domain.")
    return out or ["Too few runs to compare transfer."]


@register("transfer", order=50)
def _build(ctx: ReportContext) -> list[Section]:
    section = transfer_section(ctx.df)
    return [] if section is None else [section]
