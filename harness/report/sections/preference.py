"""Preference: held-out preference accuracy, reward margin and KL to the reference per preference-tuned
configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report import figures
from harness.report.columns import column, missing, text
from harness.report.context import ReportContext
from harness.report.document import Cell, Section, Table, metric_cell
from harness.report.findings import seed_significance
from harness.report.frame import COSTS, PREFERENCE, QUALITY, best_rows, ok_runs
from harness.report.kinds import objective_of, runs_for
from harness.report.objectives import objective_summary, spec_cell
from harness.report.sections.base import register

__all__ = ["PREFERENCE_COLUMNS", "objective_labels", "preference_table", "preference_findings", "preference_section"]

PPL = QUALITY[1]
ACCURACY, ACCURACY_TRAIN, MARGIN, KL_REF = PREFERENCE
PREFERENCE_COLUMNS = [ACCURACY, ACCURACY_TRAIN, MARGIN, KL_REF, PPL,
                      *(m for m in COSTS if m.key in ("trainable_params", "peak_mem_train_mb"))]


def preference_table(summary: pd.DataFrame) -> Table:
    """One row per configuration of `preference_section`'s summary (with its `objective` labels)."""
    best = {m.key: best_rows(summary, m) for m in PREFERENCE_COLUMNS}
    start = "objective.start" in summary and summary["objective.start"].notna().any()
    columns = ["configuration", "objective", "method", "β", *(["started from"] if start else []), "n",
               *(m.label for m in PREFERENCE_COLUMNS)]
    rows = []
    for i, row in summary.iterrows():
        rows.append([Cell(row["config"], row["config"]), Cell(row["objective"], row["objective"]),
                     spec_cell(row, "method.name"), spec_cell(row, "objective.beta"), *([spec_cell(row, "objective.start")] if start else []),
                     Cell(str(row["n_seeds"]), row["n_seeds"]),
                     *(metric_cell(row, m, i in best[m.key]) for m in PREFERENCE_COLUMNS)])
    return Table("One row per preference-tuned configuration: mean ± 95% CI half-width over seeds", columns, rows)


def objective_labels(summary: pd.DataFrame) -> list[str]:
    """Per row: "dpo", or "dpo (ipo)" for another of TRL's losses than the paper's sigmoid."""
    return [name + ("" if missing(loss) or loss == "sigmoid" else f" ({loss})")
            for name, loss in zip(objective_of(summary), column(summary, "objective.loss_type"))]


def preference_findings(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The best held-out accuracy and what it cost in distance from the reference."""
    rows = summary[np.isfinite(summary[f"{ACCURACY.key}_mean"])]
    if rows.empty:
        return ["No preference run measured its held-out accuracy."]
    top = rows.iloc[0]  # sorted by accuracy, best first
    line = (f"Highest preference accuracy: {top['group']} ({top['config']}), {_accuracy(top)} of held-out pairs "
            f"ranked right (chance: 50%) at a KL to the reference of {KL_REF.format(top[f'{KL_REF.key}_mean'])}")
    if len(rows) > 1:
        other = rows.iloc[1]
        seeds = seed_significance(runs, top["config"], other["config"], ACCURACY.key)
        line += f"; next {other['group']} ({other['config']}) at {_accuracy(other)}, {seeds}"
    out = [line + "."]
    kl = rows[np.isfinite(rows[f"{KL_REF.key}_mean"])]
    if len(kl) > 1:
        near = kl.loc[kl[f"{KL_REF.key}_mean"].idxmin()]
        if near["config"] != top["config"]:
            out.append(f"{near['group']} ({near['config']}) stayed closest to its reference (KL "
                       f"{KL_REF.format(near[f'{KL_REF.key}_mean'])}) at {_accuracy(near)} accuracy.")
    return out


def _accuracy(row) -> str:
    return f"{ACCURACY.format(row[f'{ACCURACY.key}_mean'])}%"


def preference_section(df: pd.DataFrame) -> Section | None:
    """Held-out preference accuracy, reward margin and KL to the reference per configuration; None without such runs."""
    runs = runs_for(ok_runs(df), "preference")
    if runs.empty:
        return None
    summary = objective_summary(runs, PREFERENCE_COLUMNS, ACCURACY)
    summary["objective"] = objective_labels(summary)
    summary["group"] = [f"{row['objective']} {text(row.get('method.name'))}".strip()
                        for _, row in summary.iterrows()]
    section = Section("Preference", paragraphs=[(
        "Policies tuned on chosen/rejected pairs. Preference accuracy is the share of pairs whose chosen answer gets "
        "the higher implicit reward (held out, and on the training pairs); the reward margin is its mean lead; KL to "
        "ref is the policy's per-token KL to its reference model. ORPO has no reference model: its accuracy and "
        "margin compare the answers' log-odds, and its KL to ref is empty.")])
    section.bullets = preference_findings(runs, summary)
    section.figures.append(("preference.png", figures.preference(summary, summary["group"], ACCURACY, KL_REF),
                            ("held-out preference accuracy against KL to the reference, per objective and method "
                             "(dashed: chance)")))
    section.tables.append(preference_table(summary))
    return section


@register("preference", order=40)
def _build(ctx: ReportContext) -> list[Section]:
    section = preference_section(ctx.df)
    return [] if section is None else [section]
