"""Domain adaptation: per source and method, the in-domain gain, the change on the other domains and general
forgetting."""

from __future__ import annotations

import pandas as pd

from harness.report.context import ReportContext
from harness.report.document import Section, best_positions, number_table
from harness.report.domains import adaptation_frame
from harness.report.sections.base import register

__all__ = ["adaptation_section"]


def adaptation_section(df: pd.DataFrame) -> Section | None:
    """Per source and method: in-domain gain, cross-domain transfer and general forgetting; None without such runs."""
    frame = adaptation_frame(df)
    if frame.empty:
        return None
    section = Section("Domain adaptation", paragraphs=[
        "Runs trained on one domain's source, by method; 'prompt design' is the untouched model with the run's system "
        "prompt (method none). In-domain Δ and other domains Δ are eval-loss changes against the untouched base "
        "(negative: better); forgetting is the rise in general-text perplexity, in % (lower: retained more)."])
    section.bullets = _adaptation_findings(frame)
    fmt = {"in-domain loss": "{:.3f}", "in-domain Δ vs base": "{:+.3f}", "other domains Δ (mean)": "{:+.3f}",
           "forgetting % (general ppl)": "{:+.1f}"}
    table = number_table(frame, "One row per configuration (bold: the best per source)", fmt)
    for column in fmt:  # best within each source: losses of different sources do not compare
        k = list(frame.columns).index(column)
        for _, group in frame.groupby("source"):
            for i in best_positions(group[column].tolist()):
                table.rows[group.index[i]][k].best = True
    section.tables.append(table)
    return section


def _adaptation_findings(frame: pd.DataFrame) -> list[str]:
    """The best in-domain method, the one that forgets least and the one that harms the other domains least: each
    method's mean over its configurations (raw losses only over the sources every method covers)."""
    out = []
    relative = frame["in-domain Δ vs base"].notna().any()
    for column, what, noun, fmt in (
            ("in-domain Δ vs base" if relative else "in-domain loss", "Best in-domain",
             "in-domain Δ vs base" if relative else "in-domain loss", "{:+.3f}" if relative else "{:.3f}"),
            ("forgetting % (general ppl)", "Forgets least", "general-ppl forgetting", "{:+.1f}%"),
            ("other domains Δ (mean)", "Least harm to the other domains", "Δ on the other domains", "{:+.3f}")):
        data = frame.dropna(subset=[column])
        if column == "in-domain loss" and len(data):  # raw losses of different sources do not compare
            shared = set.intersection(*(set(g["source"]) for _, g in data.groupby("method")))
            data = data[data["source"].isin(shared)]
        stats = data.groupby("method")[column].agg(["mean", "count"]).sort_values("mean", kind="stable")
        if stats.empty and column.startswith("forgetting"):
            out.append("No run measured general forgetting (forgetting_ppl_pct).")
        if len(stats) < 2:
            continue
        (first, a), (second, b) = stats.iloc[0:2].iterrows()
        out.append(f"{what}: {first}, mean {noun} {fmt.format(a['mean'])} over {int(a['count'])} configuration(s); "
                   f"next {second}, {fmt.format(b['mean'])} over {int(b['count'])}.")
    return out or ["Only one method: nothing to compare."]


@register("adaptation", order=60)
def _build(ctx: ReportContext) -> list[Section]:
    section = adaptation_section(ctx.df)
    return [] if section is None else [section]
