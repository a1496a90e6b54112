"""Build the trade-off report of one experiment from the results store alone."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report import figures
from harness.report.findings import caveats, environment, failures, findings
from harness.report.frame import (COSTS, FORGETTING, QUALITY, Metric, best_rows, load_runs, ok_runs, reference_value,
                                  summarize, task_metrics, training_curves, varied_axes)
from harness.report.stats import PowerLawFit, fit_power_law, mean_ci

#: the costs a quality is plotted against
FRONT_COSTS = ["peak_mem_train_mb", "trainable_params", "train_s"]


@dataclass
class Cell:
    text: str
    sort: float | str | None = None
    best: bool = False


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[Cell]]


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, bytes, str]] = field(default_factory=list)  # (file name, png, caption)


@dataclass
class Report:
    experiment: str
    generated_at: str
    axes: list[str]
    summary: pd.DataFrame
    sections: list[Section]
    fits: dict[str, PowerLawFit | None] = field(default_factory=dict)


def _cell(summary_row, metric: Metric, best: bool) -> Cell:
    mean = summary_row[f"{metric.key}_mean"]
    if mean is None or not np.isfinite(mean):
        return Cell("–")
    text = metric.format(mean)
    half = (summary_row[f"{metric.key}_ci_high"] - summary_row[f"{metric.key}_ci_low"]) / 2
    if np.isfinite(half) and half > 0:
        text += f" ± {Metric(metric.key, '', metric.fmt, metric.scale).format(half).lstrip('+')}"
    return Cell(text, float(mean), best)


def metrics_table(summary: pd.DataFrame, metrics: list[Metric], caption: str, axes: list[str]) -> Table:
    """Configuration, its axis values and seeds, then `mean ± CI half-width` per metric, best marked."""
    best = {m.key: best_rows(summary, m) for m in metrics}
    axis_cols = [a for a in axes if a != "method.name"][:4]
    columns = ["configuration", *axis_cols, "n"] + [m.label for m in metrics]
    rows = []
    for i, row in summary.iterrows():
        name = row["config"] + (" (reference)" if row["reference"] else "")
        axis_cells = [Cell("–" if _missing(row.get(a)) else str(row.get(a)), _sortable(row.get(a))) for a in axis_cols]
        rows.append([Cell(name, row["config"]), *axis_cells, Cell(str(row["n_seeds"]), row["n_seeds"])]
                    + [_cell(row, m, i in best[m.key]) for m in metrics])
    return Table(caption, columns, rows)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sortable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None if _missing(value) else str(value)


def frame_table(df: pd.DataFrame, caption: str, fmt: dict[str, str] | None = None) -> Table:
    fmt = fmt or {}
    rows = [[Cell(fmt.get(c, "{}").format(v) if not _missing(v) else "–", _sortable(v)) for c, v in row.items()]
            for _, row in df.iterrows()]
    return Table(caption, list(df.columns), rows)


def data_size_analysis(df: pd.DataFrame, target: float | None):
    """Per series (a configuration without its n_train): mean loss per n, the power-law fit, and the n to reach
    `target` (default: the worst series' mean loss at its largest n, a level every series reaches)."""
    runs = ok_runs(df)
    runs = runs[~runs["reference"]].copy()
    runs["series"] = runs["config"].str.replace(r"-n\d+(?=-|$)", "", regex=True)
    runs["n"] = pd.to_numeric(runs["data.n_train"], errors="coerce")
    points, fits = [], {}
    for series, group in runs.groupby("series", sort=False):
        for n, at_n in group.groupby("n"):
            ci = mean_ci(pd.to_numeric(at_n["eval_loss"], errors="coerce").tolist())
            points.append({"series": series, "n": n, "eval_loss_mean": ci.mean, "eval_loss_ci_low": ci.low,
                           "eval_loss_ci_high": ci.high, "seeds": ci.n})
        fits[series] = fit_power_law(group["n"], pd.to_numeric(group["eval_loss"], errors="coerce"))
    points = pd.DataFrame(points)
    if target is None and len(points):
        target = float(points.loc[points.groupby("series")["n"].idxmax(), "eval_loss_mean"].max())
    rows = []
    for series, fit in fits.items():
        if fit is None:
            rows.append({"series": series, "a": None, "b": None, "c": None, "R²": None, "RMSE": None,
                         "points": None, "n to reach target": None})
        else:
            rows.append({"series": series, "a": fit.a, "b": fit.b, "c": fit.c, "R²": fit.r2, "RMSE": fit.rmse,
                         "points": fit.points, "n to reach target": fit.n_for(target)})
    return points, fits, pd.DataFrame(rows), target


def cost_table(summary: pd.DataFrame, price: float) -> pd.DataFrame:
    """Money per run and per perplexity point gained over its own untouched base (when a reference row exists)."""
    rows = []
    for _, row in summary[~summary["reference"]].iterrows():
        gain = reference_value(summary, row, "eval_ppl_mean") - row.get("eval_ppl_mean", math.nan)
        cost = row["cost_usd_mean"]
        rows.append({"configuration": row["config"], "train s": row["train_s_mean"], "$ per run": cost,
                     "ppl gained vs base": gain if np.isfinite(gain) else None,
                     "$ per ppl point": cost / gain if np.isfinite(gain) and gain > 0 else None})
    return pd.DataFrame(rows)


def search_section(experiment: str, root: Path | None, storage: str | None) -> Section | None:
    """The Optuna study behind a search's runs; None for an experiment that is not a search."""
    from harness.report import search

    study, info = search.load_study(experiment, root, storage)
    if info is None:
        return None
    names = ", ".join(f"{o['metric']} ({o['direction']})" for o in info["objectives"])
    section = Section("Search", paragraphs=[
        f"Study `{info['study_name']}` in {info['storage']}: {names}; sampler {info['sampler']}, pruner {info['pruner']}. "
        "Every trial is one of the runs above; pruned trials stopped early on their periodic eval loss."])
    if study is None:
        section.paragraphs.append(f"The study could not be opened ({info.get('error')}); pass its full URL with "
                                  "--storage or $FTBENCH_STORAGE.")
        return section
    trials = search.trials_frame(study, info)
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    section.paragraphs.append(f"{len(trials)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) + ".")
    section.figures.extend(search.figures(study, info))
    section.tables.append(frame_table(trials, "Every trial of the study", {o["metric"]: "{:.4g}" for o in info["objectives"]}))
    return section


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


def build(experiment: str, root: Path | None = None, price_per_hour: float = 2.0,
          target_loss: float | None = None, storage: str | None = None) -> Report:
    """Read the store and build every section of the report (no file is written here).

    `storage`: the full URL of a search's Optuna storage when the one in search.json lacks a password.
    """
    df = load_runs(experiment, root, price_per_hour)
    if df.empty:
        raise ValueError(f"no finished runs for experiment `{experiment}`")
    axes = varied_axes(df)
    tasks = task_metrics(df)
    forgetting = [FORGETTING] if FORGETTING.key in df and df[FORGETTING.key].notna().any() else []
    metrics = QUALITY + tasks + forgetting + COSTS
    summary = summarize(df, metrics, axes)
    quality = QUALITY[1]
    costs = [m for m in COSTS if m.key in FRONT_COSTS]
    sections = []

    intro = Section("Summary", paragraphs=[
        f"{len(df)} runs ({(df['status'] == 'ok').sum()} ok) in {df['config'].nunique()} configurations. "
        f"Varied: {', '.join(axes) or 'nothing'}. Each cell is the mean over seeds ± the half-width of its 95% "
        f"Student-t interval (no interval with one seed); the best value of each column is in bold."])
    if df.attrs.get("superseded"):
        intro.paragraphs.append(superseded_note(df.attrs["superseded"]))
    if not summary.empty:
        intro.tables.append(metrics_table(summary, metrics, "One row per configuration (grid point minus seed)", axes))
    sections.append(intro)

    if not summary.empty and summary[f"{quality.key}_mean"].notna().any():
        fronts = Section("Pareto fronts", paragraphs=[
            "A configuration is on a front when no other is at least as good on both axes and better on one. "
            "Front members are red and named; bars are 95% intervals over seeds."])
        fronts.figures.append(("pareto_eval_ppl.png", figures.pareto(summary, quality, costs),
                               f"{quality.label} against peak train memory, trainable parameters and train time"))
        for task in [t for t in tasks if t.key.endswith((".acc", ".acc_norm", ".rougeL"))][:2]:
            name = task.key.replace(".", "_")
            fronts.figures.append((f"pareto_{name}.png", figures.pareto(summary, task, costs),
                                   f"{task.label} against the same costs"))
        sections.append(fronts)

    # imported here: the module builds its tables from this one's cells
    from harness.report.domains import domain_sections
    from harness.report.objectives import distill_section, preference_section

    sections.extend(s for s in (distill_section(df), preference_section(df)) if s is not None)
    sections.extend(domain_sections(df))

    fits: dict = {}
    if "data.n_train" in axes and pd.to_numeric(df["data.n_train"], errors="coerce").nunique() >= 2:
        points, fits, fit_table, target = data_size_analysis(df, target_loss)
        section = Section("Data-size curves", paragraphs=[
            f"Eval loss against the number of training examples, with L(n) = a·n^(-b) + c fitted per series "
            f"(least squares over every seed). Target loss: {target:.3f}; 'n to reach target' reads it off the fit "
            f"(inf: the fitted floor c is above the target)."])
        loose = [name for name, fit in fits.items() if fit is not None and not fit.identified]
        if loose:
            section.paragraphs.append(
                f"Caveat: {', '.join(loose)} {'has' if len(loose) == 1 else 'have'} fewer than 4 distinct n, so the "
                "three parameters pass through the points rather than being estimated from them: read the curve "
                "between the measured sizes, not a, b, c or an 'n to reach target' outside them. Add a fourth size.")
        section.figures.append(("data_size.png", figures.data_size(points, fits, target), "quality against n_train"))
        section.tables.append(frame_table(fit_table, "Power-law fit per series",
                                          {"a": "{:.3g}", "b": "{:.3f}", "c": "{:.3f}", "R²": "{:.3f}",
                                           "RMSE": "{:.4f}", "n to reach target": "{:.0f}"}))
        sections.append(section)

    if {"method.r", "method.alpha"} <= set(axes) and not summary.empty:
        sections.append(Section("Rank and alpha", paragraphs=["Mean eval perplexity over r × alpha per method."],
                                figures=[("rank_alpha.png", figures.rank_alpha(summary, quality),
                                          "eval perplexity heatmap")]))

    curves = training_curves(df, root)
    if len(curves):
        sections.append(Section("Training curves", figures=[("training_curves.png", figures.training_curves(curves),
                                                             "loss per step")]))

    sections.append(Section("Findings", bullets=findings(df, summary, quality, costs, tasks)))

    search = search_section(experiment, root, storage)
    if search is not None:
        sections.append(search)

    if not summary.empty:
        cost = Section("Cost", paragraphs=[
            f"At ${price_per_hour:.2f} per GPU-hour (change with --price-per-hour), train time becomes money. "
            f"'$ per ppl point' divides it by the perplexity the run gained over the untouched base."])
        cost.tables.append(frame_table(cost_table(summary, price_per_hour), "Cost per configuration",
                                       {"train s": "{:.1f}", "$ per run": "{:.5f}", "ppl gained vs base": "{:.2f}",
                                        "$ per ppl point": "{:.6f}"}))
        sections.append(cost)

    failed = failures(df)
    warn = caveats(df)
    problems = Section("Failures and caveats", bullets=warn or ["No budget or version differences between runs."])
    if len(failed):
        pruned = int((failed["status"] == "pruned").sum())
        note = f"; {pruned} of them pruned on purpose by the search" if pruned else ""
        problems.tables.append(frame_table(failed, f"{len(failed)} run(s) did not finish ok{note}"))
    else:
        problems.paragraphs.append("Every run finished ok.")
    sections.append(problems)

    env = environment(df)
    env["report generated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    sections.append(Section("Environment", tables=[frame_table(pd.DataFrame({"key": list(env), "value": list(env.values())}),
                                                               "Most common value over the runs")]))
    return Report(experiment, env["report generated"], axes, summary, sections, fits)
