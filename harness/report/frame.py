"""From the results store to report tables: runs, configurations (grid point minus seed), seed statistics.
The repeats of one spec and seed (grid `repeats: N`) are pooled into one row (`harness.report.repeats`)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness import store
from harness.objectives import SPEC_COLUMN
from harness import tasks as _tasks  # noqa: F401  (built-in tasks declare their primary scores' directions)
from harness.metrics import ACCOUNTING, METRICS
from harness.report.repeats import REPEAT, pool_repeats
from harness.report.stats import Interval, mean_ci


@dataclass(frozen=True)
class Metric:
    """How the report shows a declared metric: label, number format, scale. Its direction is the
    vocabulary's (harness/metrics.py), never given here."""

    key: str
    label: str
    fmt: str = "{:.3g}"
    scale: float = 1.0
    noun: str = ""  # how a sentence names it ("peak training memory"); the label otherwise

    def __post_init__(self):
        if not isinstance(self.fmt, str):  # the direction is no longer an argument: catch an old call
            raise TypeError(f"Metric `{self.key}`: fmt must be a format string, but got fmt={self.fmt!r}")
        METRICS.get(self.key)  # an undeclared metric has no direction to rank by

    @property
    def lower_is_better(self) -> bool | None:
        """From the vocabulary; None for a figure without a direction (nothing is ranked by it)."""
        return lower_is_better(self.key)

    @property
    def phrase(self) -> str:
        return self.noun or self.label

    def format(self, value) -> str:
        if value is None or not np.isfinite(value):
            return "–"
        return self.fmt.format(value * self.scale)


#: on the validation split: what every choice of a best is made on
QUALITY = [
    Metric("eval_loss", "eval loss", "{:.3f}"),
    Metric("eval_ppl", "eval ppl", "{:.2f}"),
]
#: on the test split: reported beside the validation figures, never used to choose
TEST = [
    Metric("test_loss", "test loss", "{:.3f}"),
    Metric("test_ppl", "test ppl", "{:.2f}"),
]
COSTS = [
    Metric("peak_mem_train_mb", "peak train MiB", "{:.0f}", noun="peak training memory"),
    Metric("peak_mem_eval_mb", "peak eval MiB", "{:.0f}"),
    Metric("mem_weights_mb", "weights MiB", "{:.0f}", noun="weight memory"),
    Metric("mem_optimizer_mb", "optimizer MiB", "{:.1f}", noun="optimizer state"),
    Metric("train_tokens_per_s", "train tokens/s", "{:.0f}"),
    Metric("step_ms_p50", "step ms p50", "{:.0f}"),
    Metric("infer_decode_ms_per_token", "decode ms/token", "{:.1f}"),
    Metric("infer_decode_ms_per_token_iqr", "decode IQR", "{:.1f}"),
    Metric("infer_decode_ms_per_token_merged", "merged decode ms/token", "{:.1f}"),
    Metric("infer_decode_ms_per_token_merged_iqr", "merged decode IQR", "{:.1f}"),
    Metric("trainable_params", "trainable params", "{:,.0f}", noun="trainable parameters"),
    Metric("trainable_pct", "trainable %", "{:.3g}"),
    Metric("adapter_bytes", "artifact MB", "{:.2f}", 1e-6),
    Metric("train_s", "train s", "{:.1f}", noun="training time"),
    Metric("cost_usd", "$ per run", "{:.4f}"),
]
FORGETTING = Metric("forgetting_ppl_pct", "forgetting % (general ppl)", "{:+.1f}")
#: objective `distill`: the student against its teacher
DISTILL = [
    Metric("compression_ratio", "compression ×", "{:.2f}"),
    Metric("quality_retention_pct", "quality retention %", "{:.1f}", noun="quality retention"),
    Metric("infer_speedup", "speed-up ×", "{:.2f}", noun="decode speed-up"),
    Metric("distill_kl_before", "KL before", "{:.3f}"),
    Metric("distill_kl", "KL to teacher", "{:.3f}"),
    Metric("teacher_eval_ppl", "teacher ppl", "{:.2f}"),
    Metric("teacher_cache_s", "teacher cache s", "{:.1f}"),
]
#: objectives `dpo`, `orpo`, `kto`: accuracies are stored as fractions and shown in %
PREFERENCE = [
    Metric("pref_accuracy", "pref accuracy %", "{:.1f}", 100, noun="preference accuracy"),
    Metric("pref_accuracy_train", "pref accuracy % (train)", "{:.1f}", 100),
    Metric("reward_margin", "reward margin", "{:.3f}"),
    Metric("kl_to_ref", "KL to ref", "{:.3f}", noun="KL to the reference"),
]
#: objective `route`: the router's share of held-out prompts sent to their own domain's adapter
ROUTE = [
    Metric("router_acc", "router accuracy %", "{:.1f}", 100, noun="router accuracy"),
    Metric("router_acc_train", "router accuracy % (train)", "{:.1f}", 100),
]
#: a run's flag that something outside its sweep competed for its hardware (`harness.contention`)
CONTENDED = "env.contended"
#: spec columns that never define a configuration
NOT_AXES = re.compile(r"^(seed|experiment_dir|plugins|tracking\..*|env\..*|trial\..*)$")
REFERENCE_METHOD = "none"


def lower_is_better(key: str) -> bool | None:
    """Whether a result metric is better when lower, as declared (None: undeclared, or no direction)."""
    higher = METRICS.higher_is_better(key)
    return None if higher is None else not higher


def device_figure(key: str) -> bool:
    """Whether a metric is memory or time measured on the run's hardware (its declaration states the
    device semantics): a figure another process on that hardware can distort. The memory accounting
    (tensor bytes as stored) is the same whatever else runs, so it is not one."""
    declared = METRICS.lookup(key)
    return bool(declared and declared.device and declared.device != ACCOUNTING)


def contended(df: pd.DataFrame) -> pd.Series:
    """Per run: True when something outside its sweep competed for its hardware (`env.contended`);
    False for runs recorded before it was measured."""
    if CONTENDED not in df:
        return pd.Series(False, index=df.index)
    return df[CONTENDED].map(lambda v: v is True or v == 1 or str(v).lower() == "true")


def task_metrics(df: pd.DataFrame) -> list[Metric]:
    """`task.<task>.<metric>` scores with at least one value (not their stderr or sample count)."""
    out = []
    for col in df.columns:
        declared = METRICS.lookup(col) if col.startswith("task.") else None
        if declared is not None and declared.task_score and df[col].notna().any():
            out.append(Metric(col, col.removeprefix("task."), "{:.3f}"))
    return out


def config_label(slug: str) -> str:
    """A run's slug without its seed (and repeat, `-rep<k>`): the configuration's name."""
    return re.sub(r"-s\d+(-rep\d+)?$", "", slug)


#: the stored spec's 4-bit flag: a quantized run and its quantized base row
QUANTIZED = "model.load_in_4bit"


def load_runs(experiment: str, root: Path | None = None, price_per_hour: float = 2.0) -> pd.DataFrame:
    """Every finished run, with `config` (label), `reference` (untouched base row) and `cost_usd`."""
    df = store.load(experiment, root)
    if df.empty:
        return df
    df["config"] = df["slug"].map(config_label)
    # each run's own untouched base (a 4-bit run has a 4-bit one): the spec's `reference` run id, as a config
    ref_ids = df["reference"] if "reference" in df else pd.Series(None, index=df.index, dtype=object)
    df["reference_config"] = ref_ids.map(dict(zip(df["run_id"], df["config"])))
    # a `none` run that routes adapters, or prompts with a system prompt, is a row of its own, not the base
    plain = (df[SPEC_COLUMN].isna() if SPEC_COLUMN in df else True) & (
        df["data.system_prompt"].isna() if "data.system_prompt" in df else True)
    df["reference"] = (df.get("method.name", pd.Series(index=df.index, dtype=object)) == REFERENCE_METHOD) & plain
    df = pool_repeats(latest_settings(df))  # the repeats of one spec and seed: one row, their mean
    df["cost_usd"] = pd.to_numeric(df["train_s"], errors="coerce") / 3600 * price_per_hour
    for col in df.columns:  # json-like spec values (lists of tasks, target modules) compare as text
        if df[col].map(lambda v: isinstance(v, (list, dict))).any():
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return df


def latest_settings(df: pd.DataFrame) -> pd.DataFrame:
    """Keep, per configuration, the runs of its newest settings. A slug rerun under other settings
    (a changed `base`, a new option of the code) is a new run beside the old one, not a seed of it:
    averaging the two would be a lie. What was left out is in `df.attrs["superseded"]` as
    {config: (runs left out, the spec columns that differ)}."""
    if "settings" not in df or "finished_at" not in df:
        return df
    keep = pd.Series(True, index=df.index)
    superseded = {}
    spec_cols = [c for c in df.columns if "." in c and c.split(".")[0] in ("model", "data", "method", "train", "eval",
                                                                          "objective")]
    for config, group in df[~df["reference"]].groupby("config", sort=False):
        newest = group.groupby("settings")["finished_at"].max().sort_values().index[-1]
        current = group[group["settings"] == newest].sort_values("finished_at", kind="stable")
        # one spec, one seed, two runs: the data's version or a run it read changed (not in the spec)
        twins = [c for c in ("seed", REPEAT) if c in current]  # a repeat is not a rerun
        current = current.drop_duplicates(twins, keep="last") if twins else current
        old = group.drop(current.index)
        if old.empty:
            continue
        differ = [c for c in spec_cols
                  if group.groupby("settings")[c].agg(lambda v: str(v.iloc[0])).nunique() > 1]
        keep[old.index] = False
        superseded[config] = (len(old), differ)
    # an experiment may need several untouched-base rows (one per data set); the same one twice is a rerun
    refs = df[df["reference"]].sort_values("finished_at", kind="stable")
    for config, group in refs.groupby("config", sort=False):
        old = group[group.duplicated([c for c in ("settings", REPEAT) if c in group], keep="last")]
        if not old.empty:
            keep[old.index] = False
            superseded[config] = (len(old), [])
    out = df[keep].copy()
    out.attrs["superseded"] = superseded
    return out


def varied_axes(df: pd.DataFrame) -> list[str]:
    """Spec columns whose value differs between the (non-reference) runs: what the experiment varied."""
    runs = df[~df["reference"]] if "reference" in df else df
    spec_cols = [c for c in runs.columns if "." in c and not c.startswith(("task.", "env."))
                 and c.split(".")[0] in ("model", "data", "method", "train", "eval") and not NOT_AXES.match(c)]
    by_method = runs.groupby(runs["method.name"].astype(str)) if "method.name" in runs else None

    def varies(col: str) -> bool:
        # a method option varies when it takes two values within one method, not because
        # another method lacks it (LoRA's r next to prompt tuning's missing r is no axis)
        if col.startswith("method.") and col != "method.name" and by_method is not None:
            return any(group.dropna().astype(str).nunique() > 1 for _, group in by_method[col])
        return runs[col].astype(str).nunique(dropna=False) > 1

    axes = [c for c in spec_cols if varies(c)]
    # the method name leads: reports read "by method" first
    return sorted(axes, key=lambda c: (c != "method.name", c))


def ok_runs(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if not df.empty else df


def summarize(df: pd.DataFrame, metrics: list[Metric], axes: list[str]) -> pd.DataFrame:
    """One row per configuration of the `ok` runs: axis values, n seeds, n contended (`contended`),
    mean/ci_low/ci_high per metric.

    Sorted by mean eval ppl (references last among equals); configurations keep their first-seen order otherwise.
    """
    rows = []
    for config, group in ok_runs(df).groupby("config", sort=False):
        row = {"config": config, "reference": bool(group["reference"].iloc[0]), "n_seeds": len(group),
               # == True: a numpy bool compares, a missing value (NaN) is not 4-bit
               "quantized": QUANTIZED in group and bool(group[QUANTIZED].iloc[0] == True),  # noqa: E712
               "n_contended": int(contended(group).sum()),
               "reference_config": group["reference_config"].iloc[0] if "reference_config" in group else None}
        for axis in axes:
            row[axis] = group[axis].iloc[0] if axis in group else None
        for m in metrics:
            values = pd.to_numeric(group[m.key], errors="coerce") if m.key in group else pd.Series(dtype=float)
            ci = aggregate(m.key, values.tolist())
            row[f"{m.key}_mean"], row[f"{m.key}_ci_low"], row[f"{m.key}_ci_high"] = ci.mean, ci.low, ci.high
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    if "eval_ppl_mean" in out:
        out = out.sort_values(["eval_ppl_mean"], na_position="last", kind="stable").reset_index(drop=True)
    return out


def aggregate(key: str, values: list) -> Interval:
    """A configuration's seeds of metric `key` as its declaration says: a mean with its t-interval, or
    the largest or smallest seed (no interval)."""
    how = METRICS.get(key).aggregate
    if how == "mean":
        return mean_ci(values)
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return Interval(math.nan, math.nan, math.nan, 0)
    value = max(finite) if how == "max" else min(finite)
    return Interval(value, math.nan, math.nan, len(finite))


def reference_row(summary: pd.DataFrame, row, full_precision: bool = False) -> pd.Series | None:
    """The untouched-base row a configuration is measured against: its own (4-bit runs have a 4-bit base),
    else the first reference row; None without one. `full_precision`: the base as it ships, not quantized,
    whatever the run loaded (a gain over it is not the run's own quantization loss recovered)."""
    refs = summary[summary["reference"]] if "reference" in summary else summary.iloc[0:0]
    if full_precision and "quantized" in refs:
        refs = own = refs[~refs["quantized"].astype(bool)]
    else:
        own = refs[refs["config"] == row.get("reference_config")]
    chosen = own if len(own) else refs
    return chosen.iloc[0] if len(chosen) else None


def reference_value(summary: pd.DataFrame, row, col: str, full_precision: bool = False) -> float:
    """`col` of `reference_row`; NaN without a reference row or that column."""
    base = reference_row(summary, row, full_precision)
    if base is None or col not in base:
        return math.nan
    value = base[col]
    return float(value) if value is not None else math.nan


def best_rows(summary: pd.DataFrame, metric: Metric) -> set[int]:
    """Index of the best non-reference mean(s) in a column."""
    runs = summary[~summary["reference"]]
    col = f"{metric.key}_mean"
    if col not in runs or runs[col].notna().sum() == 0 or metric.lower_is_better is None:
        return set()
    best = runs[col].min() if metric.lower_is_better else runs[col].max()
    return set(runs.index[np.isclose(runs[col], best, rtol=1e-12, atol=0)])


def training_curves(df: pd.DataFrame, root: Path | None = None) -> pd.DataFrame:
    """Long table of `metrics.jsonl`: config, seed, step, loss and/or eval_loss, for the ok runs."""
    rows = []
    for _, run in ok_runs(df).iterrows():
        path = store.run_dir(run["experiment"], run["run_id"], root) / "metrics.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "step" in rec and ("loss" in rec or "eval_loss" in rec):
                rows.append({"config": run["config"], "seed": run.get("seed"), "step": rec["step"],
                             "loss": rec.get("loss"), "eval_loss": rec.get("eval_loss")})
    return pd.DataFrame(rows, columns=["config", "seed", "step", "loss", "eval_loss"])
