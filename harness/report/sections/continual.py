"""Continual learning: a forgetting matrix per strategy, and ACC/BWT/FWT/forgetting across strategies."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report import figures
from harness.report.context import ReportContext
from harness.report.continual import Chain, continual_chains
from harness.report.document import Cell, Section, Table, best_positions, number_cell
from harness.report.domains import distinct_labels
from harness.report.sections.base import register

__all__ = ["continual_section"]


def continual_section(df: pd.DataFrame) -> Section | None:
    """Forgetting matrix per strategy and ACC/BWT/FWT/forgetting across strategies; None without continual runs."""
    chains = continual_chains(df)
    if not chains:
        return None
    section = Section("Continual learning", paragraphs=[
        "Domains trained one after another. R[i][j] is the eval loss on domain j after stage i; the base row is the "
        "model before stage 0. ACC: mean loss on every domain after the last stage (lower is better). BWT: mean "
        "(loss right after training a domain − loss at the end): negative means later stages undid earlier ones. "
        "FWT: mean (base loss − loss just before the domain's own stage): positive means earlier stages helped. "
        "Forgetting: mean rise of each domain's loss from its best to the end. Seeds of a chain are averaged."])
    groups: dict[tuple, list[Chain]] = {}
    for chain in chains:
        if chain.complete:
            groups.setdefault((chain.strategy, chain.method, tuple(chain.sequence)), []).append(chain)
    keys = pd.DataFrame([{"strategy": k[0], "method": k[1], "sequence": " → ".join(k[2]), "config": str(k)}
                         for k in groups])
    labels = distinct_labels(keys, [lambda r: r["strategy"], lambda r: r["method"], lambda r: f"({r['sequence']})"]) \
        if len(keys) else []
    rows, lines = [], []
    for label, (key, members) in zip(labels, groups.items()):
        r = np.mean([c.r for c in members], axis=0)
        bs = [c.b for c in members if c.b is not None]
        b = np.mean(bs, axis=0) if len(bs) == len(members) else None
        stats = [c.summary() for c in members]  # FWT only where the chain has its base losses
        mean = {k: float(np.mean([s[k] for s in stats if k in s])) for k in dict.fromkeys(k for s in stats for k in s)}
        rows.append({"strategy": label, "method": key[1], "sequence": " → ".join(key[2]), "chains": len(members), **mean})
        lines.append((label, list(key[2]), r, b))
        section.tables.append(_forgetting_table(label, list(key[2]), r, b, len(members)))
    incomplete = [c for c in chains if not c.complete]
    bullets = []
    if rows:
        summary = pd.DataFrame(rows)
        section.tables.insert(0, _continual_summary_table(summary))
        section.figures.append(("continual.png", figures.continual_lines(lines[:6]),
                                "each domain's eval loss over the stages, per strategy (square: the stage that "
                                "trained it)"))
        if len(summary) > 1:
            low = summary.loc[summary["avg_forgetting"].idxmin()]
            bullets.append(f"Least forgetting: {low['strategy']} (average forgetting {low['avg_forgetting']:.3f}, "
                           f"BWT {low['bwt']:+.3f}).")
            top = summary.loc[summary["avg_accuracy"].idxmin()]
            bullets.append(f"Lowest mean final loss (ACC): {top['strategy']} ({top['avg_accuracy']:.3f}).")
    for chain in incomplete:
        why = (f"stage(s) {', '.join(str(i) for i in chain.missing)} have no ok run" if chain.missing
               else "some stage lacks a domain's eval loss" if len(chain.sequence) >= 2 else "fewer than 2 stages")
        bullets.append(f"Chain {chain.name} ({chain.strategy}) is incomplete: {why}; left out of the metrics.")
    section.bullets = bullets or ["One strategy only: nothing to compare."]
    return section


def _forgetting_table(label: str, sequence: list[str], r: np.ndarray, b: np.ndarray | None, n: int) -> Table:
    rows = [[Cell("before stage 0 (base)"), *(number_cell(v) for v in b)]] if b is not None else []
    for i, domain in enumerate(sequence):
        rows.append([Cell(f"after stage {i}: {domain}"), *(number_cell(v) for v in r[i])])
    return Table(f"{label}: eval loss per domain after each stage (mean over {n} chain(s))", ["", *sequence], rows)


def _continual_summary_table(summary: pd.DataFrame) -> Table:
    best = {"avg_accuracy": best_positions(summary["avg_accuracy"]), "bwt": best_positions(summary["bwt"], lower=False),
            "fwt": best_positions(summary["fwt"], lower=False) if "fwt" in summary else set(),
            "avg_forgetting": best_positions(summary["avg_forgetting"])}
    rows = []
    for i, row in summary.iterrows():
        rows.append([Cell(row["strategy"], row["strategy"]), Cell(row["method"]), Cell(row["sequence"]),
                     Cell(str(row["chains"]), row["chains"]), number_cell(row["avg_accuracy"], "{:.3f}", i in best["avg_accuracy"]),
                     number_cell(row["bwt"], "{:+.3f}", i in best["bwt"]), number_cell(row.get("fwt"), "{:+.3f}", i in best["fwt"]),
                     number_cell(row["avg_forgetting"], "{:.3f}", i in best["avg_forgetting"])])
    return Table("Across strategies (losses; bold: the best)", ["strategy", "method", "sequence", "chains",
                                                               "ACC (mean final loss)", "BWT", "FWT", "forgetting"], rows)


@register("continual", order=80)
def _build(ctx: ReportContext) -> list[Section]:
    section = continual_section(ctx.df)
    return [] if section is None else [section]
