"""Report sections for continual learning (a forgetting matrix per strategy, ACC/BWT/FWT/forgetting) and
for routing between per-domain adapters (router accuracy, routed vs oracle vs shared loss)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.objectives import continual_metrics
from harness.report import figures
from harness.report.build import Cell, Section, Table, _cell
from harness.report.domains import (_as_list, _best, _column, _labels, _mean, _num, _objective, _of, _sources, _text,
                                    loss_metric)
from harness.report.frame import ROUTE, Metric, ok_runs, summarize

__all__ = ["Chain", "continual_chains", "continual_section", "routing_section"]

ROUTER_ACC, ROUTER_ACC_TRAIN = ROUTE
ROUTES = {kind: Metric(f"route.{kind}.eval_loss", f"{kind} loss", "{:.3f}")
          for kind in ("routed", "oracle", "shared")}


# -- continual learning ---------------------------------------------------------------------------------------------

@dataclass
class Chain:
    """The stages of one continual chain: R[i][j] = loss on sequence[j] after stage i, b[j] = before stage 0."""

    name: str
    strategy: str
    method: str
    sequence: list[str]
    r: np.ndarray
    b: np.ndarray | None
    missing: list[int]  # stages without an ok run

    @property
    def complete(self) -> bool:
        return not self.missing and len(self.sequence) >= 2 and bool(np.isfinite(self.r).all())

    def summary(self) -> dict[str, float] | None:
        """ACC (mean final loss), BWT, FWT and average forgetting, losses oriented (None when incomplete)."""
        if not self.complete:
            return None
        baseline = self.b if self.b is not None and np.isfinite(self.b).all() else None
        return continual_metrics.summary(self.r, baseline, higher_is_better=False)


def continual_chains(df: pd.DataFrame) -> list[Chain]:
    """Every chain of continual stage runs (by `objective.chain`), stages ordered by `objective.stage`."""
    if df.empty:
        return []
    runs = df[_objective(df) == "continual"]
    chains = []
    for name, group in runs.groupby(_column(runs, "objective.chain").astype(str), sort=True):
        sequence = [str(s) for s in _as_list(_column(group, "objective.sequence").iloc[0])]
        ok = ok_runs(group)
        stage = pd.to_numeric(_column(ok, "objective.stage"), errors="coerce")
        r = np.full((len(sequence), len(sequence)), math.nan)
        for i in range(len(sequence)):
            at = ok[stage == i]
            for j, domain in enumerate(sequence):
                col = loss_metric(domain).key
                if len(at) and col in at:
                    r[i, j] = pd.to_numeric(at[col], errors="coerce").mean()
        first = ok[stage == 0]
        b = None
        before = [loss_metric(d, "task_eval_before").key for d in sequence]
        if len(first) and all(c in first for c in before):
            b = np.array([pd.to_numeric(first[c], errors="coerce").mean() for c in before], dtype=float)
            b = b if np.isfinite(b).all() else None
        chains.append(Chain(name, _text(_column(group, "objective.strategy").iloc[0]) or "?",
                            _text(_column(group, "method.name").iloc[0]) or "?", sequence, r, b,
                            [i for i in range(len(sequence)) if not (stage == i).any()]))
    return chains


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
    labels = _labels(keys, [lambda r: r["strategy"], lambda r: r["method"], lambda r: f"({r['sequence']})"]) \
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
    rows = [[Cell("before stage 0 (base)"), *(_num(v) for v in b)]] if b is not None else []
    for i, domain in enumerate(sequence):
        rows.append([Cell(f"after stage {i}: {domain}"), *(_num(v) for v in r[i])])
    return Table(f"{label}: eval loss per domain after each stage (mean over {n} chain(s))", ["", *sequence], rows)


def _continual_summary_table(summary: pd.DataFrame) -> Table:
    best = {"avg_accuracy": _best(summary["avg_accuracy"]), "bwt": _best(summary["bwt"], lower=False),
            "fwt": _best(summary["fwt"], lower=False) if "fwt" in summary else set(),
            "avg_forgetting": _best(summary["avg_forgetting"])}
    rows = []
    for i, row in summary.iterrows():
        rows.append([Cell(row["strategy"], row["strategy"]), Cell(row["method"]), Cell(row["sequence"]),
                     Cell(str(row["chains"]), row["chains"]), _num(row["avg_accuracy"], "{:.3f}", i in best["avg_accuracy"]),
                     _num(row["bwt"], "{:+.3f}", i in best["bwt"]), _num(row.get("fwt"), "{:+.3f}", i in best["fwt"]),
                     _num(row["avg_forgetting"], "{:.3f}", i in best["avg_forgetting"])])
    return Table("Across strategies (losses; bold: the best)", ["strategy", "method", "sequence", "chains",
                                                               "ACC (mean final loss)", "BWT", "FWT", "forgetting"], rows)


# -- routing --------------------------------------------------------------------------------------------------------

def routing_section(df: pd.DataFrame) -> Section | None:
    """Router accuracy and routed vs oracle vs shared eval loss, overall and per domain; None without route runs."""
    runs = _of(df, "route")
    if runs.empty:
        return None
    domains = sorted(set(_sources(runs)) | set(_sources(runs, "oracle_eval")) | set(_sources(runs, "shared_eval")))
    per = {kind: [loss_metric(d, prefix) for d in domains]
           for kind, prefix in (("routed", "task_eval"), ("oracle", "oracle_eval"), ("shared", "shared_eval"))}
    summary = summarize(runs, [ROUTER_ACC, ROUTER_ACC_TRAIN, *ROUTES.values(), *sum(per.values(), [])], ["method.name"])
    section = Section("Routing", paragraphs=[
        "A router sends each prompt to one domain's adapter. Router accuracy: the share of held-out validation prompts "
        "(and of training prompts) sent to their own domain's adapter. Losses are token-weighted over every domain's "
        "validation set: routed (the router's choice), oracle (always the right adapter), shared (one adapter trained "
        "on all domains; – when none)."])
    overall = [[Cell(r["config"], r["config"]), Cell(str(r["n_seeds"]), r["n_seeds"]),
                *(_cell(r, m, False) for m in (ROUTER_ACC, ROUTER_ACC_TRAIN, *ROUTES.values())),
                _num(_mean(r, ROUTES["routed"]) - _mean(r, ROUTES["oracle"]), "{:+.3f}")]
               for _, r in summary.iterrows()]
    section.tables.append(Table("One row per route configuration: mean ± 95% CI half-width over seeds",
                                ["configuration", "n", ROUTER_ACC.label, ROUTER_ACC_TRAIN.label,
                                 *(m.label for m in ROUTES.values()), "routed − oracle"], overall))
    detail = []
    for _, r in summary.iterrows():
        for k, domain in enumerate(domains):
            values = [_mean(r, per[kind][k]) for kind in ("routed", "oracle", "shared")]
            detail.append([Cell(r["config"], r["config"]), Cell(domain, domain), *(_num(v) for v in values),
                           _num(values[0] - values[1], "{:+.3f}")])
    section.tables.append(Table("Eval loss per domain", ["configuration", "domain", "routed", "oracle", "shared",
                                                         "routed − oracle"], detail))
    bullets = []
    for _, r in summary.iterrows():
        routed, oracle, shared = (_mean(r, ROUTES[k]) for k in ("routed", "oracle", "shared"))
        text = (f"{r['config']}: the router chose the right adapter for {ROUTER_ACC.format(_mean(r, ROUTER_ACC))}% of "
                f"held-out prompts ({ROUTER_ACC_TRAIN.format(_mean(r, ROUTER_ACC_TRAIN))}% of training prompts); "
                f"routed loss {routed:.3f} against {oracle:.3f} with the oracle ({routed - oracle:+.3f})")
        text += f" and {shared:.3f} with the shared adapter." if np.isfinite(shared) else "."
        bullets.append(text)
    section.bullets = bullets
    for n, (_, r) in enumerate(summary.head(3).iterrows()):
        bars = pd.DataFrame({kind: [_mean(r, per[kind][k]) for k in range(len(domains))] + [_mean(r, ROUTES[kind])]
                             for kind in ("routed", "oracle", "shared")}, index=[*domains, "all"])
        section.figures.append((f"routing{'' if n == 0 else f'_{n}'}.png",
                                figures.grouped_bars(bars, "eval loss", f"{r['config']}: routed vs oracle vs shared"),
                                "eval loss per domain and overall: routed, oracle adapter, shared adapter"))
    return section
