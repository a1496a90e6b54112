"""Report sections for runs across data sources: transfer between domains, multi-task training and domain
adaptation, with the selection helpers the continual and routing sections share."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report import figures
from harness.report.build import Cell, Section, Table, _missing
from harness.report.frame import FORGETTING, REFERENCE_METHOD, Metric, ok_runs, summarize

__all__ = ["TransferMatrix", "transfer_matrix", "transfer_section", "multitask_comparison", "multitask_section",
           "adaptation_frame", "adaptation_section", "domain_sections", "nominal_examples"]

#: spec columns a section's rows carry from their first run (summarize keeps them beside the means)
SPEC_COLUMNS = ["data.name", "data.system_prompt", "method.name", "objective.architecture", "objective.sampling",
                "objective.tasks", "objective.extend", "train.max_steps", "train.epochs", "train.micro_batch", "train.grad_accum",
                "data.n_train"]
PROMPT_DESIGN = "prompt design"


def loss_metric(source: str, prefix: str = "task_eval") -> Metric:
    return Metric(f"{prefix}.{source}.eval_loss", source, "{:.3f}")


def _examples_metric(source: str) -> Metric:
    return Metric(f"task_eval.{source}.examples_seen", f"{source} examples", "{:,.0f}")


def _sources(df: pd.DataFrame, prefix: str = "task_eval") -> list[str]:
    """Sources with a `<prefix>.<source>.eval_loss` value in `df`, sorted."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(.+)\.eval_loss$")
    return sorted(m.group(1) for c in df.columns if (m := pattern.match(c))
                  and pd.to_numeric(df[c], errors="coerce").notna().any())


def _as_list(value) -> list:
    """A spec list, also when load_runs stored it as JSON text."""
    if isinstance(value, str) and value.startswith("["):
        value = json.loads(value)
    return list(value) if isinstance(value, (list, tuple)) else []


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series(None, index=df.index, dtype=object)


def _objective(df: pd.DataFrame) -> pd.Series:
    """Each run's objective name; sft runs have none in their spec."""
    return _column(df, "objective.name").map(lambda v: "sft" if _missing(v) else str(v))


def _prompted(df: pd.DataFrame) -> pd.Series:
    return _column(df, "data.system_prompt").map(lambda v: not _missing(v) and bool(str(v).strip()))


def _labels(rows: pd.DataFrame, parts) -> list[str]:
    """The shortest label per row from the callables `parts` (tried cumulatively) that tells the rows apart;
    the configuration name when none does."""
    labels = [""] * len(rows)
    for k in range(1, len(parts) + 1):
        labels = [" ".join(p for p in (str(f(row)) for f in parts[:k]) if p) for _, row in rows.iterrows()]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({row['config']})" for label, (_, row) in zip(labels, rows.iterrows())]


def _mean(row, metric: Metric) -> float:
    value = row.get(f"{metric.key}_mean")
    return math.nan if _missing(value) else float(value)


def _num(value, fmt: str = "{:.3f}", best: bool = False) -> Cell:
    if _missing(value) or not np.isfinite(value):
        return Cell("–")
    return Cell(fmt.format(value), float(value), best)


def _best(values, lower: bool = True) -> set[int]:
    """Positions of the best finite value(s) of a list."""
    x = np.asarray([v if v is not None else math.nan for v in values], dtype=float)
    if not np.isfinite(x).any():
        return set()
    top = np.nanmin(x) if lower else np.nanmax(x)
    return {i for i, v in enumerate(x) if np.isfinite(v) and np.isclose(v, top, rtol=1e-12, atol=0)}


# -- selections -----------------------------------------------------------------------------------------------------

def _base_summary(df: pd.DataFrame, sources: list[str]) -> pd.DataFrame:
    """Seed means of the untouched-base rows (method `none`, no system prompt, sft) over `sources`."""
    runs = ok_runs(df)
    runs = runs[(_column(runs, "method.name") == REFERENCE_METHOD) & ~_prompted(runs) & (_objective(runs) == "sft")]
    return summarize(runs, [loss_metric(s) for s in sources], []) if len(runs) else pd.DataFrame()


def _base_value(base: pd.DataFrame, row, source: str) -> float:
    """The base loss on `source` a row is measured against: its own reference row's, else the mean of every base
    row's; NaN without one."""
    col = f"{loss_metric(source).key}_mean"
    if base.empty or col not in base:
        return math.nan
    own = base[base["config"] == row.get("reference_config")] if row is not None else base.iloc[0:0]
    if len(own) and np.isfinite(own[col].iloc[0]):
        return float(own[col].iloc[0])
    values = base[col].dropna()
    return float(values.mean()) if len(values) else math.nan


def _single_task(df: pd.DataFrame, sources: list[str], prompt_design: bool = False) -> pd.DataFrame:
    """Ok sft runs trained on one evaluated source (method `none` with a system prompt when `prompt_design`)."""
    runs = ok_runs(df)
    if runs.empty or "data.name" not in runs:
        return runs.iloc[0:0]
    none = _column(runs, "method.name") == REFERENCE_METHOD
    pick = (none & _prompted(runs)) if prompt_design else ~none
    return runs[pick & (_objective(runs) == "sft") & runs["data.name"].isin(sources)]


def _of(df: pd.DataFrame, objective: str) -> pd.DataFrame:
    runs = ok_runs(df)
    return runs[_objective(runs) == objective] if len(runs) else runs


def _multitask_summary(df: pd.DataFrame, sources: list[str]) -> pd.DataFrame:
    runs = _of(df, "multitask")
    if runs.empty:
        return pd.DataFrame()
    summary = summarize(runs, [loss_metric(s) for s in sources] + [_examples_metric(s) for s in sources], SPEC_COLUMNS)
    summary["label"] = _labels(summary, [lambda r: "multitask " + ("shared" if _missing(r.get("objective.architecture"))
                                                                   else str(r["objective.architecture"]))
                                         + ("" if _missing(r.get("objective.extend")) else " + extension"),
                                         lambda r: _text(r.get("objective.sampling")),
                                         lambda r: _text(r.get("method.name"))])
    summary["tasks"] = [[t["name"] if isinstance(t, dict) else str(t) for t in _as_list(r.get("objective.tasks"))]
                        or [s for s in sources if np.isfinite(r[f"task_eval.{s}.examples_seen_mean"])]
                        for _, r in summary.iterrows()]
    return summary.sort_values("label", kind="stable").reset_index(drop=True)


def _text(value) -> str:
    return "" if _missing(value) else str(value)


# -- transfer matrix ------------------------------------------------------------------------------------------------

@dataclass
class TransferMatrix:
    """Mean eval loss per (run, evaluated source): `values` relative to the base when `relative`, else raw."""

    values: pd.DataFrame  # rows: run labels; columns: evaluated sources
    raw: pd.DataFrame
    base: dict[str, float]
    relative: bool
    in_domain: dict[str, str | None]  # row label → the source it trained on (None: a multitask row)
    seeds: dict[str, int]
    configs: dict[str, str] = field(default_factory=dict)  # row label → configuration
    methods: dict[str, str] = field(default_factory=dict)  # row label → method name


def transfer_matrix(df: pd.DataFrame) -> TransferMatrix | None:
    """Single-task rows (one per configuration trained on one source) then multitask rows, over every source they
    were evaluated on; each cell the seed mean of `task_eval.<source>.eval_loss` minus the base's (method `none`)
    on that source, over the sources the base scored. Raw losses when no base scored any. None without
    single-task or multitask runs."""
    sources = _sources(ok_runs(df))
    single = _single_task(df, sources)
    single = summarize(single, [loss_metric(s) for s in sources], SPEC_COLUMNS) if len(single) else pd.DataFrame()
    multi = _multitask_summary(df, sources)
    if single.empty and multi.empty:
        return None
    trained = sorted(set(single["data.name"])) if len(single) else []
    used = [s for s in sources
            if any(np.isfinite(t[f"{loss_metric(s).key}_mean"]).any() for t in (single, multi) if len(t))]
    columns = trained + [s for s in used if s not in trained]  # a trained source stays, even unevaluated
    if len(single):
        single = single.assign(_order=single["data.name"].map(columns.index)).sort_values(
            ["_order", "method.name"], kind="stable").reset_index(drop=True)
        single["label"] = _labels(single, [lambda r: r["data.name"], lambda r: f"({r['method.name']})"])
    rows = pd.concat([t for t in (single, multi) if len(t)], ignore_index=True)
    base_rows = _base_summary(df, columns)
    base = {s: _base_value(base_rows, None, s) for s in columns}
    if any(np.isfinite(v) for v in base.values()):  # a source the base never scored has no column to compare in
        columns = [s for s in columns if np.isfinite(base[s])]
        base = {s: base[s] for s in columns}
    relative = bool(columns) and all(np.isfinite(base[s]) for s in columns)
    raw = pd.DataFrame([[_mean(r, loss_metric(s)) for s in columns] for _, r in rows.iterrows()],
                       index=rows["label"].tolist(), columns=columns)
    values = raw.copy()
    if relative:
        for i, (_, r) in enumerate(rows.iterrows()):
            values.iloc[i] = [raw.iloc[i][s] - _base_value(base_rows, r, s) for s in columns]
    in_domain = dict(zip(rows["label"], [*(single["data.name"] if len(single) else []), *[None] * len(multi)]))
    return TransferMatrix(values, raw, base, relative, in_domain, dict(zip(rows["label"], rows["n_seeds"])),
                          dict(zip(rows["label"], rows["config"])),
                          dict(zip(rows["label"], _column(rows, "method.name").map(_text))))


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
        best = _best(values.tolist())
        rows.append([Cell(label, label), Cell(str(matrix.seeds[label]), matrix.seeds[label]),
                     *(_num(v, fmt + (" (in-domain)" if matrix.in_domain.get(label) == s else ""), i in best)
                       for i, (s, v) in enumerate(values.items()))])
    section.tables.append(Table("Δ eval loss vs the base per evaluated source (bold: the row's best)" if matrix.relative
                                else "Eval loss per evaluated source (bold: the row's best)",
                                ["trained on", "n", *matrix.values.columns], rows))
    if matrix.relative:
        base = [Cell("untouched base (method none)"), Cell("–"), *(_num(matrix.base[s]) for s in matrix.values.columns)]
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


# -- single-task vs multitask ---------------------------------------------------------------------------------------

def nominal_examples(row) -> float:
    """Training examples a run drew from its spec: max_steps × micro_batch × grad_accum, else epochs × n_train.

    Nominal: with packing, one micro-batch row may hold several examples."""
    steps, micro, accum = row.get("train.max_steps"), row.get("train.micro_batch"), row.get("train.grad_accum")
    if not _missing(steps) and not _missing(micro):
        return float(steps) * float(micro) * (1.0 if _missing(accum) else float(accum))
    epochs, n = row.get("train.epochs"), row.get("data.n_train")
    return float(epochs) * float(n) if not _missing(epochs) and not _missing(n) else math.nan


def multitask_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Per task of each multitask configuration: its loss and examples seen, and the single-task run's on the same
    task (same method when one exists, else the lowest in-domain loss). Empty without multitask runs."""
    sources = _sources(ok_runs(df))
    multi = _multitask_summary(df, sources)
    single = _single_task(df, sources)
    single = summarize(single, [loss_metric(s) for s in sources], SPEC_COLUMNS) if len(single) else pd.DataFrame()
    rows = []
    for _, m in multi.iterrows():
        for task in m["tasks"]:
            own = single[single["data.name"] == task] if len(single) else single
            same = own[own["method.name"] == m.get("method.name")] if len(own) else own
            pick = same if len(same) else own
            col = f"{loss_metric(task).key}_mean"
            ref = pick.loc[pick[col].idxmin()] if col in pick and pick[col].notna().any() else None
            loss = _mean(m, loss_metric(task))
            single_loss = math.nan if ref is None else _mean(ref, loss_metric(task))
            rows.append({"task": task, "multitask": m["label"], "multitask config": m["config"], "n": m["n_seeds"],
                         "multitask loss": loss, "multitask examples": _mean(m, _examples_metric(task)),
                         "single-task config": None if ref is None else ref["config"],
                         "single-task loss": single_loss,
                         "single-task examples": math.nan if ref is None else nominal_examples(ref),
                         "Δ loss (multi − single)": loss - single_loss})
    return pd.DataFrame(rows)


def multitask_section(df: pd.DataFrame) -> Section | None:
    """Each task's loss under multitask training against training on it alone; None without multitask runs."""
    table = multitask_comparison(df)
    if table.empty:
        return None
    section = Section("Single-task vs multi-task", paragraphs=[
        "Per task, the eval loss on its validation split of each multitask run against the run trained on that task "
        "alone (same method when there is one); negative Δ: the mixture helped. Examples seen: the multitask run's "
        "count per task; the single-task run's nominal max_steps × micro_batch × grad_accum."])
    out = []
    for label, group in table.groupby("multitask", sort=False):
        d = group["Δ loss (multi − single)"].dropna()
        if len(d):
            out.append(f"{label}: lower loss than single-task on {int((d < 0).sum())} of {len(d)} task(s), "
                       f"mean Δ {d.mean():+.3f}.")
    section.bullets = out or ["No single-task run to compare with."]
    bars = table.pivot_table(index="task", columns="multitask", values="multitask loss", aggfunc="first", sort=False)
    bars.insert(0, "single-task", table.groupby("task", sort=False)["single-task loss"].first())
    section.figures.append(("multitask.png", figures.grouped_bars(bars, "eval loss", "Eval loss per task: alone vs "
                                                                  "in the mixture"), "eval loss per task, single-task "
                            "run against each multitask run"))
    section.tables.append(_frame_cells(table.drop(columns=["multitask config"]), "One row per (task, multitask run)",
                                       {"multitask loss": "{:.3f}", "single-task loss": "{:.3f}",
                                        "multitask examples": "{:,.0f}", "single-task examples": "{:,.0f}",
                                        "Δ loss (multi − single)": "{:+.3f}"}))
    return section


def _frame_cells(frame: pd.DataFrame, caption: str, fmt: dict[str, str]) -> Table:
    rows = []
    for _, row in frame.iterrows():
        rows.append([_num(v, fmt[c]) if c in fmt else Cell("–" if _missing(v) else str(v), None if _missing(v) else v)
                     for c, v in row.items()])
    return Table(caption, list(frame.columns), rows)


# -- domain adaptation ----------------------------------------------------------------------------------------------

def adaptation_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration trained on one source (and per prompt-design baseline): in-domain loss, its change
    vs the base, the mean change on the other evaluated sources, and general forgetting. Empty without such runs."""
    sources = _sources(ok_runs(df))
    runs = pd.concat([_single_task(df, sources), _single_task(df, sources, prompt_design=True)])
    if runs.empty:
        return pd.DataFrame()
    summary = summarize(runs, [loss_metric(s) for s in sources] + [FORGETTING], SPEC_COLUMNS)
    base = _base_summary(df, sources)
    rows = []
    for _, r in summary.iterrows():
        own = r["data.name"]
        others = [s for s in sources if s != own and np.isfinite(_mean(r, loss_metric(s)))]
        delta = {s: _mean(r, loss_metric(s)) - _base_value(base, r, s) for s in [own, *others]}
        cross = [delta[s] for s in others if np.isfinite(delta[s])]
        method = PROMPT_DESIGN if r["method.name"] == REFERENCE_METHOD else str(r["method.name"])
        rows.append({"configuration": r["config"], "source": own, "method": method, "n": r["n_seeds"],
                     "in-domain loss": _mean(r, loss_metric(own)), "in-domain Δ vs base": delta[own],
                     "other domains Δ (mean)": float(np.mean(cross)) if cross else math.nan,
                     "forgetting % (general ppl)": _mean(r, FORGETTING)})
    return pd.DataFrame(rows).sort_values(["source", "in-domain loss"], kind="stable").reset_index(drop=True)


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
    table = _frame_cells(frame, "One row per configuration (bold: the best per source)", fmt)
    for column in fmt:  # best within each source: losses of different sources do not compare
        k = list(frame.columns).index(column)
        for _, group in frame.groupby("source"):
            for i in _best(group[column].tolist()):
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


def domain_sections(df: pd.DataFrame) -> list[Section]:
    """Every section on runs across data sources that has runs, in report order (continual learning and
    routing come from `harness.report.continual`)."""
    from harness.report.continual import continual_section, routing_section

    out = (transfer_section(df), adaptation_section(df), multitask_section(df), continual_section(df),
           routing_section(df))
    return [s for s in out if s is not None]
