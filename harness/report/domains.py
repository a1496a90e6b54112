"""Runs across data sources: the selections (single-task, untouched base, multitask) and the tables the transfer,
multi-task and domain-adaptation sections are drawn from, with the helpers the continual and routing sections share."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report.columns import as_list, column, missing, text
from harness.report.document import mean_of
from harness.report.frame import FORGETTING, REFERENCE_METHOD, Metric, ok_runs, summarize
from harness.report.kinds import runs_for

__all__ = ["SPEC_COLUMNS", "PROMPT_DESIGN", "loss_metric", "evaluated_sources", "distinct_labels", "TransferMatrix",
           "transfer_matrix", "nominal_examples", "multitask_comparison", "adaptation_frame"]

#: spec columns a section's rows carry from their first run (summarize keeps them beside the means)
SPEC_COLUMNS = ["data.name", "data.system_prompt", "method.name", "objective.architecture", "objective.sampling",
                "objective.tasks", "objective.extend", "train.max_steps", "train.epochs", "train.micro_batch", "train.grad_accum",
                "data.n_train"]
PROMPT_DESIGN = "prompt design"


def loss_metric(source: str, prefix: str = "task_eval") -> Metric:
    """The eval loss on `source` that a run records under `prefix` (task_eval, oracle_eval, shared_eval, …)."""
    return Metric(f"{prefix}.{source}.eval_loss", source, "{:.3f}")


def _examples_metric(source: str) -> Metric:
    return Metric(f"task_eval.{source}.examples_seen", f"{source} examples", "{:,.0f}")


def evaluated_sources(df: pd.DataFrame, prefix: str = "task_eval") -> list[str]:
    """Sources with a `<prefix>.<source>.eval_loss` value in `df`, sorted."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(.+)\.eval_loss$")
    return sorted(m.group(1) for c in df.columns if (m := pattern.match(c))
                  and pd.to_numeric(df[c], errors="coerce").notna().any())


def _prompted(df: pd.DataFrame) -> pd.Series:
    """Runs whose spec sets a non-blank system prompt."""
    return column(df, "data.system_prompt").map(lambda v: not missing(v) and bool(str(v).strip()))


def distinct_labels(rows: pd.DataFrame, parts) -> list[str]:
    """The shortest label per row from the callables `parts` (tried cumulatively) that tells the rows apart;
    the configuration name when none does."""
    labels = [""] * len(rows)
    for k in range(1, len(parts) + 1):
        labels = [" ".join(p for p in (str(f(row)) for f in parts[:k]) if p) for _, row in rows.iterrows()]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({row['config']})" for label, (_, row) in zip(labels, rows.iterrows())]


# -- selections -----------------------------------------------------------------------------------------------------

def _base_summary(df: pd.DataFrame, sources: list[str]) -> pd.DataFrame:
    """Seed means of the untouched-base rows (method `none`, no system prompt, sft) over `sources`."""
    runs = runs_for(ok_runs(df), "single_task")
    runs = runs[(column(runs, "method.name") == REFERENCE_METHOD) & ~_prompted(runs)]
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
    runs = runs_for(ok_runs(df), "single_task")
    if runs.empty or "data.name" not in runs:
        return runs.iloc[0:0]
    none = column(runs, "method.name") == REFERENCE_METHOD
    pick = (none & _prompted(runs)) if prompt_design else ~none
    return runs[pick & runs["data.name"].isin(sources)]


def _multitask_summary(df: pd.DataFrame, sources: list[str]) -> pd.DataFrame:
    runs = runs_for(ok_runs(df), "multitask")
    if runs.empty:
        return pd.DataFrame()
    summary = summarize(runs, [loss_metric(s) for s in sources] + [_examples_metric(s) for s in sources], SPEC_COLUMNS)
    summary["label"] = distinct_labels(summary, [
        lambda r: "multitask " + ("shared" if missing(r.get("objective.architecture"))
                                  else str(r["objective.architecture"]))
        + ("" if missing(r.get("objective.extend")) else " + extension"),
        lambda r: text(r.get("objective.sampling")),
        lambda r: text(r.get("method.name"))])
    summary["tasks"] = [[t["name"] if isinstance(t, dict) else str(t) for t in as_list(r.get("objective.tasks"))]
                        or [s for s in sources if np.isfinite(r[f"task_eval.{s}.examples_seen_mean"])]
                        for _, r in summary.iterrows()]
    return summary.sort_values("label", kind="stable").reset_index(drop=True)


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
    sources = evaluated_sources(ok_runs(df))
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
        single["label"] = distinct_labels(single, [lambda r: r["data.name"], lambda r: f"({r['method.name']})"])
    rows = pd.concat([t for t in (single, multi) if len(t)], ignore_index=True)
    base_rows = _base_summary(df, columns)
    base = {s: _base_value(base_rows, None, s) for s in columns}
    if any(np.isfinite(v) for v in base.values()):  # a source the base never scored has no column to compare in
        columns = [s for s in columns if np.isfinite(base[s])]
        base = {s: base[s] for s in columns}
    relative = bool(columns) and all(np.isfinite(base[s]) for s in columns)
    raw = pd.DataFrame([[mean_of(r, loss_metric(s)) for s in columns] for _, r in rows.iterrows()],
                       index=rows["label"].tolist(), columns=columns)
    values = raw.copy()
    if relative:
        for i, (_, r) in enumerate(rows.iterrows()):
            values.iloc[i] = [raw.iloc[i][s] - _base_value(base_rows, r, s) for s in columns]
    in_domain = dict(zip(rows["label"], [*(single["data.name"] if len(single) else []), *[None] * len(multi)]))
    return TransferMatrix(values, raw, base, relative, in_domain, dict(zip(rows["label"], rows["n_seeds"])),
                          dict(zip(rows["label"], rows["config"])),
                          dict(zip(rows["label"], column(rows, "method.name").map(text))))


# -- single-task vs multitask ---------------------------------------------------------------------------------------

def nominal_examples(row) -> float:
    """Training examples a run drew from its spec: max_steps × micro_batch × grad_accum, else epochs × n_train.

    Nominal: with packing, one micro-batch row may hold several examples."""
    steps, micro, accum = row.get("train.max_steps"), row.get("train.micro_batch"), row.get("train.grad_accum")
    if not missing(steps) and not missing(micro):
        return float(steps) * float(micro) * (1.0 if missing(accum) else float(accum))
    epochs, n = row.get("train.epochs"), row.get("data.n_train")
    return float(epochs) * float(n) if not missing(epochs) and not missing(n) else math.nan


def multitask_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Per task of each multitask configuration: its loss and examples seen, and the single-task run's on the same
    task (same method when one exists, else the lowest in-domain loss). Empty without multitask runs."""
    sources = evaluated_sources(ok_runs(df))
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
            loss = mean_of(m, loss_metric(task))
            single_loss = math.nan if ref is None else mean_of(ref, loss_metric(task))
            rows.append({"task": task, "multitask": m["label"], "multitask config": m["config"], "n": m["n_seeds"],
                         "multitask loss": loss, "multitask examples": mean_of(m, _examples_metric(task)),
                         "single-task config": None if ref is None else ref["config"],
                         "single-task loss": single_loss,
                         "single-task examples": math.nan if ref is None else nominal_examples(ref),
                         "Δ loss (multi − single)": loss - single_loss})
    return pd.DataFrame(rows)


# -- domain adaptation ----------------------------------------------------------------------------------------------

def adaptation_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration trained on one source (and per prompt-design baseline): in-domain loss, its change
    vs the base, the mean change on the other evaluated sources, and general forgetting. Empty without such runs."""
    sources = evaluated_sources(ok_runs(df))
    runs = pd.concat([_single_task(df, sources), _single_task(df, sources, prompt_design=True)])
    if runs.empty:
        return pd.DataFrame()
    summary = summarize(runs, [loss_metric(s) for s in sources] + [FORGETTING], SPEC_COLUMNS)
    base = _base_summary(df, sources)
    rows = []
    for _, r in summary.iterrows():
        own = r["data.name"]
        others = [s for s in sources if s != own and np.isfinite(mean_of(r, loss_metric(s)))]
        delta = {s: mean_of(r, loss_metric(s)) - _base_value(base, r, s) for s in [own, *others]}
        cross = [delta[s] for s in others if np.isfinite(delta[s])]
        method = PROMPT_DESIGN if r["method.name"] == REFERENCE_METHOD else str(r["method.name"])
        rows.append({"configuration": r["config"], "source": own, "method": method, "n": r["n_seeds"],
                     "in-domain loss": mean_of(r, loss_metric(own)), "in-domain Δ vs base": delta[own],
                     "other domains Δ (mean)": float(np.mean(cross)) if cross else math.nan,
                     "forgetting % (general ppl)": mean_of(r, FORGETTING)})
    return pd.DataFrame(rows).sort_values(["source", "in-domain loss"], kind="stable").reset_index(drop=True)
