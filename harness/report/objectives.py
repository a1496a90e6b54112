"""Report sections for runs trained toward another objective than SFT: distillation and preference tuning."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from harness.objectives import sections_of
from harness.objectives.distill import LossWeights
from harness.report import figures
from harness.report.build import Cell, Section, Table, _cell, _missing
from harness.report.findings import _seeds, significance
from harness.report.frame import COSTS, DISTILL, PREFERENCE, QUALITY, Metric, best_rows, ok_runs, summarize

PREFERENCE_OBJECTIVES = tuple(sections_of("preference"))
#: spec columns a section's rows carry from their first run (summarize keeps them beside the means)
SPEC_COLUMNS = ["method.name", "objective.name", "objective.teacher", "objective.teachers", "objective.beta",
                "objective.loss_type", "objective.start", "objective.cache_teacher", *(f"objective.losses.{k}" for k in LossWeights.model_fields)]
#: (weight, short name) in the order the slug writes them (grid.make_slug)
MIX = [("kl", "kl"), ("feature", "feat"), ("relation", "rel")]

PPL = QUALITY[1]
COMPRESSION, RETENTION, SPEEDUP, KL_BEFORE, KL_AFTER, TEACHER_PPL, CACHE = DISTILL
ACCURACY, ACCURACY_TRAIN, MARGIN, KL_REF = PREFERENCE


def _flag(value) -> bool:
    return not _missing(value) and bool(value)


def _missing_text(value) -> str:
    return "" if _missing(value) else str(value)


def loss_mix(weights: dict) -> str:
    """The losses a distillation used, named as its slug names them ("kl+feat+rel"; "ce" for none).

    A weight the spec lacks takes its `LossWeights` default, as the run itself did."""
    defaults = LossWeights()
    used = [short for key, short in MIX
            if (getattr(defaults, key) if _missing(weights.get(key)) else float(weights[key])) > 0]
    return "+".join(used) or "ce"


def teacher_label(row) -> str:
    """The teacher's name, or "ensemble of N" when the spec lists several."""
    teachers = row.get("objective.teachers")
    if isinstance(teachers, str) and teachers.startswith("["):  # load_runs stores lists as JSON text
        teachers = json.loads(teachers)
    if isinstance(teachers, list) and len(teachers) > 1:
        return f"ensemble of {len(teachers)}"
    if isinstance(teachers, list) and teachers:  # entries are {model, weight}
        only = teachers[0]
        return str(only.get("model", json.dumps(only))) if isinstance(only, dict) else str(only)
    teacher = row.get("objective.teacher")
    return "–" if _missing(teacher) else str(teacher)


def _runs(df: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """The ok runs whose objective is one of `names` (sft runs have no objective column at all)."""
    if "objective.name" not in df:
        return df.iloc[0:0]
    runs = ok_runs(df)
    return runs[runs["objective.name"].isin(names)]


def _summary(runs: pd.DataFrame, metrics: list[Metric], order: Metric) -> pd.DataFrame:
    """Seed statistics per configuration, best `order` first."""
    summary = summarize(runs, metrics, SPEC_COLUMNS)
    return summary.sort_values(f"{order.key}_mean", ascending=order.lower_is_better, na_position="last",
                               kind="stable").reset_index(drop=True)


def _text(row, column: str) -> Cell:
    value = row.get(column)
    return Cell("–", None) if _missing(value) else Cell(f"{value:g}" if isinstance(value, float) else str(value), value)


def _pair(row, left: Metric, right: Metric, joint: str, by: Metric, best: bool) -> Cell:
    """Two means in one cell ("0.81 → 0.32"), sorted and marked by metric `by` (one of the two)."""
    a, b, key = row[f"{left.key}_mean"], row[f"{right.key}_mean"], row[f"{by.key}_mean"]
    if not (np.isfinite(a) or np.isfinite(b)):
        return Cell("–")
    return Cell(f"{left.format(a)} {joint} {right.format(b)}", float(key) if np.isfinite(key) else None, best)


# -- distillation -------------------------------------------------------------------------------------------------

def distill_table(summary: pd.DataFrame) -> Table:
    best = {m.key: best_rows(summary, m) for m in (COMPRESSION, RETENTION, SPEEDUP, KL_AFTER, PPL)}
    cache = f"{CACHE.key}_mean" in summary and summary[f"{CACHE.key}_mean"].notna().any()
    columns = ["configuration", "method", "loss mix", "teacher", "n", COMPRESSION.label, RETENTION.label,
               SPEEDUP.label, "KL before → after", "student ppl vs teacher", *([CACHE.label] if cache else [])]
    rows = []
    for i, row in summary.iterrows():
        rows.append([Cell(row["config"], row["config"]), _text(row, "method.name"), Cell(row["mix"], row["mix"]),
                     Cell(teacher_label(row), teacher_label(row)), Cell(str(row["n_seeds"]), row["n_seeds"]),
                     *(_cell(row, m, i in best[m.key]) for m in (COMPRESSION, RETENTION, SPEEDUP)),
                     _pair(row, KL_BEFORE, KL_AFTER, "→", KL_AFTER, i in best[KL_AFTER.key]),
                     _pair(row, PPL, TEACHER_PPL, "vs", PPL, i in best[PPL.key]),
                     *([_cell(row, CACHE, False)] if cache else [])])
    return Table("One row per distilled configuration: mean ± 95% CI half-width over seeds", columns, rows)


def distill_findings(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Which loss mix (or method) kept most of the teacher's quality at the same compression."""
    rows = summary[np.isfinite(summary[f"{RETENTION.key}_mean"])]
    if rows.empty:
        return ["No distilled run measured its quality retention."]
    out = []
    # "the same compression" to 3 significant digits: parameter counts of one student shape agree to that
    level = rows[f"{COMPRESSION.key}_mean"].map(lambda v: float(f"{v:.3g}") if np.isfinite(v) else None)
    for ratio, group in rows.groupby(level, sort=True):
        if group["group"].nunique() < 2:
            continue
        top = group.iloc[0]  # rows are sorted by retention, best first
        other = group[group["group"] != top["group"]].iloc[0]
        seeds = significance(_seeds(runs, top["config"], RETENTION.key), _seeds(runs, other["config"], RETENTION.key))
        out.append(f"At {ratio:g}× compression, {top['group']} ({top['config']}) kept the most of the teacher's quality: "
                   f"{_retention(top)}, against {RETENTION.format(other[f'{RETENTION.key}_mean'])}% for "
                   f"{other['group']} ({other['config']}); {seeds}.")
    if not out:  # nothing to compare at one compression: name the best overall
        top = rows.iloc[0]
        out.append(f"Best quality retention: {top['group']} ({top['config']}), {_retention(top)} at "
                   f"{COMPRESSION.format(top[f'{COMPRESSION.key}_mean'])}× compression and "
                   f"{SPEEDUP.format(top[f'{SPEEDUP.key}_mean'])}× the teacher's decode speed.")
    kl = rows[np.isfinite(rows[f"{KL_AFTER.key}_mean"]) & np.isfinite(rows[f"{KL_BEFORE.key}_mean"])]
    if len(kl) > 1:
        low = kl.loc[kl[f"{KL_AFTER.key}_mean"].idxmin()]
        out.append(f"Closest to the teacher after training: {low['group']} ({low['config']}), KL "
                   f"{KL_BEFORE.format(low[f'{KL_BEFORE.key}_mean'])} → {KL_AFTER.format(low[f'{KL_AFTER.key}_mean'])}.")
    return out


def _retention(row) -> str:
    return (f"{RETENTION.format(row[f'{RETENTION.key}_mean'])}% (student ppl {PPL.format(row[f'{PPL.key}_mean'])} "
            f"vs teacher {TEACHER_PPL.format(row[f'{TEACHER_PPL.key}_mean'])})")


def distill_section(df: pd.DataFrame) -> Section | None:
    """Compression, retained quality, speed-up and KL per distilled configuration; None without such runs."""
    runs = _runs(df, ("distill",))
    if runs.empty:
        return None
    summary = _summary(runs, [PPL, *DISTILL], RETENTION)
    summary["mix"] = [loss_mix({k: row.get(f"objective.losses.{k}") for k, _ in MIX}) for _, row in summary.iterrows()]
    summary["group"] = [" ".join(p for p in (_missing_text(row.get("method.name")), row["mix"]) if p)
                        + (f" ({teacher_label(row)})" if teacher_label(row).startswith("ensemble") else "")
                        + (" (cached teacher)" if _flag(row.get("objective.cache_teacher")) else "")
                        for _, row in summary.iterrows()]
    section = Section("Distillation", paragraphs=[(
        "Students trained toward a teacher. Quality retention is teacher ppl ÷ student ppl × 100 (100: as good "
        "as the teacher); compression is teacher ÷ student parameters; speed-up is teacher ÷ student decode time "
        "per token; KL is the student's token KL to the teacher (T = 1) before and after training.")])
    section.bullets = distill_findings(runs, summary)
    section.figures.append(("distillation.png", figures.distillation(summary, summary["group"], RETENTION,
                                                                      [COMPRESSION, SPEEDUP]),
                            ("quality retention against compression and against decode speed-up, per method and "
                             "loss mix (dashed: the teacher)")))
    section.tables.append(distill_table(summary))
    return section


# -- preference ---------------------------------------------------------------------------------------------------

PREFERENCE_COLUMNS = [ACCURACY, ACCURACY_TRAIN, MARGIN, KL_REF, PPL,
                      *(m for m in COSTS if m.key in ("trainable_params", "peak_mem_train_mb"))]


def preference_table(summary: pd.DataFrame) -> Table:
    best = {m.key: best_rows(summary, m) for m in PREFERENCE_COLUMNS}
    start = "objective.start" in summary and summary["objective.start"].notna().any()
    columns = ["configuration", "objective", "method", "β", *(["started from"] if start else []), "n",
               *(m.label for m in PREFERENCE_COLUMNS)]
    rows = []
    for i, row in summary.iterrows():
        rows.append([Cell(row["config"], row["config"]), Cell(_objective(row), _objective(row)),
                     _text(row, "method.name"), _text(row, "objective.beta"), *([_text(row, "objective.start")] if start else []),
                     Cell(str(row["n_seeds"]), row["n_seeds"]),
                     *(_cell(row, m, i in best[m.key]) for m in PREFERENCE_COLUMNS)])
    return Table("One row per preference-tuned configuration: mean ± 95% CI half-width over seeds", columns, rows)


def _objective(row) -> str:
    """"dpo", or "dpo (ipo)" for another of TRL's losses than the paper's sigmoid."""
    loss = row.get("objective.loss_type")
    return row["objective.name"] + ("" if _missing(loss) or loss == "sigmoid" else f" ({loss})")


def preference_findings(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The best held-out accuracy and what it cost in distance from the reference."""
    rows = summary[np.isfinite(summary[f"{ACCURACY.key}_mean"])]
    if rows.empty:
        return ["No preference run measured its held-out accuracy."]
    top = rows.iloc[0]  # sorted by accuracy, best first
    text = (f"Highest preference accuracy: {top['group']} ({top['config']}), {_accuracy(top)} of held-out pairs "
            f"ranked right (chance: 50%) at a KL to the reference of {KL_REF.format(top[f'{KL_REF.key}_mean'])}")
    if len(rows) > 1:
        other = rows.iloc[1]
        seeds = significance(_seeds(runs, top["config"], ACCURACY.key), _seeds(runs, other["config"], ACCURACY.key))
        text += f"; next {other['group']} ({other['config']}) at {_accuracy(other)}, {seeds}"
    out = [text + "."]
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
    runs = _runs(df, PREFERENCE_OBJECTIVES)
    if runs.empty:
        return None
    summary = _summary(runs, PREFERENCE_COLUMNS, ACCURACY)
    summary["group"] = [f"{_objective(row)} {_missing_text(row.get('method.name'))}".strip()
                        for _, row in summary.iterrows()]
    section = Section("Preference", paragraphs=[(
        "Policies tuned on chosen/rejected pairs. Preference accuracy is the share of pairs whose chosen answer gets "
        "the higher implicit reward (held out, and on the training pairs); the reward margin is its mean lead; KL to "
        "ref is the policy's per-token KL to its reference model.")])
    section.bullets = preference_findings(runs, summary)
    section.figures.append(("preference.png", figures.preference(summary, summary["group"], ACCURACY, KL_REF),
                            ("held-out preference accuracy against KL to the reference, per objective and method "
                             "(dashed: chance)")))
    section.tables.append(preference_table(summary))
    return section
