"""Routing between per-domain adapters: router accuracy, and routed vs oracle vs shared eval loss."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report import figures
from harness.report.context import ReportContext
from harness.report.document import Cell, Section, Table, mean_of, metric_cell, number_cell
from harness.report.domains import evaluated_sources, loss_metric
from harness.report.frame import ROUTE, Metric, ok_runs, summarize
from harness.report.kinds import runs_for
from harness.report.sections.base import register

__all__ = ["routing_section"]

ROUTER_ACC, ROUTER_ACC_TRAIN = ROUTE
ROUTES = {kind: Metric(f"route.{kind}.eval_loss", f"{kind} loss", "{:.3f}")
          for kind in ("routed", "oracle", "shared")}


def routing_section(df: pd.DataFrame) -> Section | None:
    """Router accuracy and routed vs oracle vs shared eval loss, overall and per domain; None without route runs."""
    runs = runs_for(ok_runs(df), "routing")
    if runs.empty:
        return None
    domains = sorted({s for prefix in ("task_eval", "oracle_eval", "shared_eval") for s in evaluated_sources(runs, prefix)})
    per = {kind: [loss_metric(d, prefix) for d in domains]
           for kind, prefix in (("routed", "task_eval"), ("oracle", "oracle_eval"), ("shared", "shared_eval"))}
    summary = summarize(runs, [ROUTER_ACC, ROUTER_ACC_TRAIN, *ROUTES.values(), *sum(per.values(), [])], ["method.name"])
    section = Section("Routing", paragraphs=[
        "A router sends each prompt to one domain's adapter. Router accuracy: the share of held-out validation prompts "
        "(and of training prompts) sent to their own domain's adapter. Losses are token-weighted over every domain's "
        "validation set: routed (the router's choice), oracle (always the right adapter), shared (one adapter trained "
        "on all domains; – when none)."])
    overall = [[Cell(r["config"], r["config"]), Cell(str(r["n_seeds"]), r["n_seeds"]),
                *(metric_cell(r, m, False) for m in (ROUTER_ACC, ROUTER_ACC_TRAIN, *ROUTES.values())),
                number_cell(mean_of(r, ROUTES["routed"]) - mean_of(r, ROUTES["oracle"]), "{:+.3f}")]
               for _, r in summary.iterrows()]
    section.tables.append(Table("One row per route configuration: mean ± 95% CI half-width over seeds",
                                ["configuration", "n", ROUTER_ACC.label, ROUTER_ACC_TRAIN.label,
                                 *(m.label for m in ROUTES.values()), "routed − oracle"], overall))
    detail = []
    for _, r in summary.iterrows():
        for k, domain in enumerate(domains):
            values = [mean_of(r, per[kind][k]) for kind in ("routed", "oracle", "shared")]
            detail.append([Cell(r["config"], r["config"]), Cell(domain, domain), *(number_cell(v) for v in values),
                           number_cell(values[0] - values[1], "{:+.3f}")])
    section.tables.append(Table("Eval loss per domain", ["configuration", "domain", "routed", "oracle", "shared",
                                                         "routed − oracle"], detail))
    bullets = []
    for _, r in summary.iterrows():
        routed, oracle, shared = (mean_of(r, ROUTES[k]) for k in ("routed", "oracle", "shared"))
        text = (f"{r['config']}: the router chose the right adapter for {ROUTER_ACC.format(mean_of(r, ROUTER_ACC))}% of "
                f"held-out prompts ({ROUTER_ACC_TRAIN.format(mean_of(r, ROUTER_ACC_TRAIN))}% of training prompts); "
                f"routed loss {routed:.3f} against {oracle:.3f} with the oracle ({routed - oracle:+.3f})")
        text += f" and {shared:.3f} with the shared adapter." if np.isfinite(shared) else "."
        bullets.append(text)
    section.bullets = bullets
    for n, (_, r) in enumerate(summary.head(3).iterrows()):
        bars = pd.DataFrame({kind: [mean_of(r, per[kind][k]) for k in range(len(domains))] + [mean_of(r, ROUTES[kind])]
                             for kind in ("routed", "oracle", "shared")}, index=[*domains, "all"])
        section.figures.append((f"routing{'' if n == 0 else f'_{n}'}.png",
                                figures.grouped_bars(bars, "eval loss", f"{r['config']}: routed vs oracle vs shared"),
                                "eval loss per domain and overall: routed, oracle adapter, shared adapter"))
    return section


@register("routing", order=90)
def _build(ctx: ReportContext) -> list[Section]:
    section = routing_section(ctx.df)
    return [] if section is None else [section]
