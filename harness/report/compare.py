"""Reports over several experiments of one store: `compare` (the same configurations side by side, paired
differences where the same examples were scored, and what differs between the experiments' specs and
environments) and `leaderboard` (every experiment's configurations on one model and data set, ranked).

A configuration is matched across experiments on what defines it: the method and its options, the
objective, the 4-bit flag, the training budget (`BUDGET`), and any other spec field that varies within
one method in some experiment (a learning-rate sweep's lr). Everything else (model, data set, sequence
length, learning-rate policy, ...) may differ, and is listed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness import store
from harness.errors import ConfigError, did_you_mean
from harness.report import interactive
from harness.report.columns import missing
from harness.report.context import ReportContext
from harness.report.document import BUSY_MARK, Cell, Report, Section, Table, metric_cell, number_cell
from harness.report.examples import ExampleScores
from harness.report.frame import COSTS, NOT_AXES, QUALITY, TEST, Metric, device_figure, load_runs

__all__ = ["BUDGET", "ENV_KEYS", "compare", "experiments_in", "leaderboard", "match_keys"]

#: the training budget: a configuration is only the same one at the same budget
BUDGET = ("data.n_train", "train.max_steps", "train.epochs", "train.micro_batch", "train.grad_accum")
#: environment fields whose difference between experiments is listed
ENV_KEYS = ("python", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "device",
            "device_name", "cpu_count", "gpu_count", "attn_implementation", "cost_semantics", "git_sha", "git_dirty")
#: spec sections compared for "what differs"
_SPEC_SECTIONS = ("model", "data", "method", "train", "eval", "objective")
#: the costs shown side by side
_COSTS = ("peak_mem_train_mb", "train_tokens_per_s", "train_s", "infer_decode_ms_per_token", "trainable_params",
          "adapter_bytes")
_SOURCE = "compare"


def experiments_in(root: Path | None = None) -> list[str]:
    """The experiments of a store with at least one finished run, by name."""
    base = Path(root or store.results_root())
    try:
        folders = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return []
    return [name for name in folders if store.iter_results(name, base)]


def _load(names: list[str], root: Path | None) -> dict[str, pd.DataFrame]:
    """Each named experiment's runs (`load_runs`).

    Raises:
        ConfigError: a name given twice, or an experiment without finished runs (naming the close ones).
    """
    known = experiments_in(root)
    problems, out = [], {}
    for name in names:
        if name in out:
            problems.append((_SOURCE, name, "is named twice"))
            continue
        df = load_runs(name, root) if name in known else pd.DataFrame()
        if df.empty:
            problems.append((_SOURCE, name, f"no finished runs under {root or store.results_root()}."
                             f"{did_you_mean(name, known)} Experiments there: {', '.join(known) or 'none'}"))
            continue
        df["experiment"] = name  # the folder it was read from (a copied store's records may name another)
        out[name] = df
    if problems:
        raise ConfigError(problems)
    return out


def _spec_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if "." in c and c.split(".")[0] in _SPEC_SECTIONS and not NOT_AXES.match(c)]


def _within_method(frames: list[pd.DataFrame]) -> list[str]:
    """Spec fields (besides the method's options) that take two values within one method in some experiment."""
    out = set()
    for df in frames:
        by = df.groupby(df["method.name"].astype(str)) if "method.name" in df else [("", df)]
        for col in _spec_columns(df):
            if col.startswith(("method.", "objective.")) or col in BUDGET:
                continue
            if any(group[col].dropna().astype(str).nunique() > 1 for _, group in by):
                out.add(col)
    return sorted(out)


def match_keys(df: pd.DataFrame, extra: list[str] = ()) -> pd.Series:
    """Per run: the text that matches its configuration across experiments (method and options, objective,
    4-bit flag, budget, and `extra` fields), seed left out."""
    cols = [c for c in df.columns if c.startswith(("method.", "objective.")) and not NOT_AXES.match(c)]
    cols += [c for c in ("model.load_in_4bit", *BUDGET, *extra) if c in df]

    def key(row) -> str:
        return json.dumps({c: str(row[c]) for c in sorted(set(cols)) if not missing(row[c])}, sort_keys=True)

    return df.apply(key, axis=1) if len(df) else pd.Series(dtype=object)


@dataclass
class _Experiment:
    name: str
    df: pd.DataFrame
    ctx: ReportContext

    @property
    def summary(self) -> pd.DataFrame:
        return self.ctx.summary


def _contexts(frames: dict[str, pd.DataFrame], root: Path | None) -> dict[str, _Experiment]:
    extra = _within_method(list(frames.values()))
    out = {}
    for name, df in frames.items():
        df["match"] = match_keys(df, extra)
        out[name] = _Experiment(name, df, ReportContext(name, df, root))
    return out


def _matched(exps: dict[str, _Experiment]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The match keys every experiment has (in the first one's summary order) and, per experiment,
    key → its configuration label."""
    labels = {name: dict(zip(e.df["match"], e.df["config"])) for name, e in exps.items()}
    first = next(iter(exps.values()))
    key_of = {lab: k for k, lab in labels[first.name].items()}
    order = [key_of[c] for c in first.summary["config"] if c in key_of] if not first.summary.empty else []
    keys = [k for k in dict.fromkeys(order) if all(k in labels[n] for n in exps)]
    return keys, labels


class _CrossExamples(ExampleScores):
    """`ExampleScores` over several experiments: one run id may be in two of them (the same spec run under
    two names, a copied store), so a run's scores are looked up by experiment and run id."""

    def _examples(self, run_id: str, experiment: str) -> dict | None:
        key = f"{experiment}/{run_id}"
        if key not in self._files:
            self._files[key] = store.read_examples(store.run_dir(experiment, run_id, self.root))
        return self._files[key]


def _combined_examples(exps: dict[str, _Experiment], root: Path | None) -> ExampleScores:
    """Every experiment's runs in one frame, each configuration named `experiment/config`, so that one
    `ExampleScores` pairs runs across experiments (by seed and example)."""
    parts = []
    for name, e in exps.items():
        df = e.df.copy()
        df["config"] = name + "/" + df["config"].astype(str)
        parts.append(df[["config", "status", "seed", "run_id", "experiment"]])
    return _CrossExamples(pd.concat(parts, ignore_index=True), root)


def _quality_metrics(exps: dict[str, _Experiment]) -> list[Metric]:
    """Quality figures every experiment measured: validation and test loss/ppl, then task scores."""
    shared = None
    for e in exps.values():
        keys = {m.key for m in e.ctx.metrics}
        shared = keys if shared is None else shared & keys
    first = next(iter(exps.values()))
    return [m for m in first.ctx.metrics if m.key in shared and (m in QUALITY + TEST or m.key.startswith("task."))]


def _busy(row, metric: Metric) -> bool:
    """A memory or time figure of a configuration with a seed measured under contention (marked BUSY_MARK)."""
    return bool(row is not None and device_figure(metric.key) and (row.get("n_contended") or 0) > 0)


def _row_of(e: _Experiment, config: str) -> pd.Series | None:
    rows = e.summary[e.summary["config"] == config]
    return rows.iloc[0] if len(rows) else None


def _relative(metric: Metric) -> bool:
    """Whether a difference is read as a % change (perplexities, compared on their log) or in the metric's units."""
    return metric.key.endswith(("_ppl", "perplexity"))


def _paired_cells(examples: ExampleScores, metric: Metric, a: str, b: str) -> list[Cell]:
    """B − A with its paired 95% interval and p, and what it was paired over; "–" where not paired."""
    key = metric.key.replace("_ppl", "_loss") if metric.key in ("eval_ppl", "test_ppl") else metric.key
    diff = examples.difference(b, a, key)
    if diff is None or not np.isfinite(diff.diff):
        return [Cell("–"), Cell("–"), Cell("–"), Cell("not paired: no per-example scores on the same examples")]
    if _relative(metric):
        t = lambda v: 100 * math.expm1(v)  # noqa: E731  (a log difference → % change of the perplexity)
        unit, decimals = "%", 1
    else:
        t = lambda v: v * metric.scale  # noqa: E731
        unit, decimals = "", 3 if metric.scale == 1 else 1
    d, lo, hi = t(diff.diff), t(diff.low), t(diff.high)
    # enough digits that an interval which excludes 0 does not print as "+0.0 to +0.0"
    span = max(abs(lo), abs(hi))
    if 0 < span < 10 ** -decimals:
        decimals = min(6, 1 - math.floor(math.log10(span)))
    fmt = f"{{:+.{decimals}f}}{unit}"
    verdict = "includes 0" if lo <= 0 <= hi else "excludes 0"
    return [Cell(fmt.format(d), d), Cell(f"{fmt.format(lo)} to {fmt.format(hi)} ({verdict})", lo),
            number_cell(diff.p, "{:.3g}"),
            Cell(f"{diff.n} examples" + (f" × {diff.seeds} seeds" if diff.seeds > 1 else ""), diff.n)]


def _quality_table(exps, keys, labels, examples: ExampleScores, metric: Metric) -> Table:
    names = list(exps)
    base = names[0]
    unit = "% change" if _relative(metric) else "difference"
    columns = ["configuration", *(f"{n}" for n in names)]
    for other in names[1:]:
        columns += [f"{other} − {base}: {unit}", "95% CI (paired bootstrap)", "p", "paired over"]
    rows = []
    for k in keys:
        row = [Cell(labels[base][k], labels[base][k])]
        for n in names:
            srow = _row_of(exps[n], labels[n][k])
            row.append(metric_cell(srow, metric, False) if srow is not None and f"{metric.key}_mean" in srow
                       else Cell("–"))
        for other in names[1:]:
            row += _paired_cells(examples, metric, f"{base}/{labels[base][k]}", f"{other}/{labels[other][k]}")
        rows.append(row)
    better = {True: "lower is better", False: "higher is better", None: ""}[metric.lower_is_better]
    table = Table(f"{metric.label} ({better}): each experiment ± its 95% interval, and the difference", columns, rows)
    table.notes.append("Paired: the same examples (and seeds) in both runs, resampled together, so the interval is "
                       "the difference's own; a perplexity is compared on its log (the loss) and shown as a % change. "
                       "Each interval and p stands alone (no correction over the rows): an interval that excludes 0 "
                       "says the runs differ on these examples, not by how much that matters.")
    return table


def _cost_table(exps, keys, labels) -> Table | None:
    names = list(exps)
    metrics = [m for m in COSTS if m.key in _COSTS and any(
        f"{m.key}_mean" in e.summary and e.summary[f"{m.key}_mean"].notna().any() for e in exps.values())]
    if not metrics:
        return None
    columns = ["configuration"] + [f"{m.label}: {n}" if i == 0 else f"{m.label}: {n} (vs {names[0]})"
                                   for m in metrics for i, n in enumerate(names)]
    rows = []
    for k in keys:
        row = [Cell(labels[names[0]][k], labels[names[0]][k])]
        for m in metrics:
            first = None
            for i, n in enumerate(names):
                srow = _row_of(exps[n], labels[n][k])
                value = srow.get(f"{m.key}_mean") if srow is not None else None
                cell = (metric_cell(srow, m, False, _busy(srow, m)) if srow is not None and f"{m.key}_mean" in srow
                        else Cell("–"))
                if i == 0:
                    first = value
                elif not missing(first) and not missing(value) and first:
                    cell = Cell(f"{cell.text} ({100 * (value / first - 1):+.0f}%)", cell.sort)
                row.append(cell)
        rows.append(row)
    table = Table("Costs side by side (seed means; % change against the first experiment)", columns, rows)
    table.notes.append(f"Memory and time are measured on each run's hardware: compare them only where the "
                       f"environments agree (see What differs). {BUSY_MARK}: measured while processes outside the "
                       f"sweep competed for the run's CPU or GPU (env.contended), so it may be distorted.")
    return table


def _modes(df: pd.DataFrame, col: str) -> str:
    values = df[col].dropna().astype(str) if col in df else pd.Series(dtype=str)
    if values.empty:
        return "–"
    counts = values.value_counts()
    return counts.index[0] + (f" (+{len(counts) - 1} other)" if len(counts) > 1 else "")


def _task_versions(name: str, root: Path | None) -> dict[str, str]:
    """task → "v<version>, limit <n>, <k>-shot" as most of the experiment's runs scored it."""
    seen: dict[str, list[str]] = {}
    for r in store.iter_results(name, root):
        for task, meta in (r.get("task_meta") or {}).items():
            meta = meta or {}
            seen.setdefault(task, []).append(f"v{meta.get('version')}, limit {meta.get('limit')}, "
                                             f"{meta.get('num_fewshot') or 0}-shot")
    return {t: pd.Series(v).mode().iloc[0] for t, v in seen.items()}


def _differences(exps: dict[str, _Experiment], keys: list[str], labels, root: Path | None) -> Section:
    """What is not the same between the experiments: spec fields over the matched configurations, data,
    environment and task versions."""
    names = list(exps)
    bullets = []
    # spec fields, per matched configuration: the value of its newest run in each experiment
    specs = {}
    for n, e in exps.items():
        first = e.df.sort_values("finished_at").drop_duplicates("match", keep="last").set_index("match")
        specs[n] = first
    cols = sorted({c for e in exps.values() for c in _spec_columns(e.df)})
    same_spec_other_id = []
    for col in cols:
        changed = {}
        for k in keys:
            values = tuple(str(specs[n].loc[k][col]) if col in specs[n] and not missing(specs[n].loc[k][col])
                           else "–" for n in names)
            if len(set(values)) > 1:
                changed.setdefault(values, []).append(labels[names[0]][k])
        for values, configs in changed.items():
            where = "every matched configuration" if len(configs) == len(keys) else ", ".join(configs)
            pairs = " → ".join(f"{v} ({n})" for v, n in zip(values, names))
            bullets.append(f"spec `{col}`: {pairs} — {where}")
    for k in keys:
        settings = {str(specs[n].loc[k].get("settings")) for n in names}
        ids = {str(specs[n].loc[k].get("run_id")).rsplit("-", 1)[-1] for n in names}
        if len(settings) == 1 and len(ids) > 1:
            same_spec_other_id.append(labels[names[0]][k])
    if same_spec_other_id:
        bullets.append(f"the same spec under another run id ({', '.join(same_spec_other_id)}): the data set's "
                       "version, a task's version or a run it read differed (run ids hash them, specs do not)")
    for key in ENV_KEYS:
        values = [_modes(e.df, f"env.{key}") for e in exps.values()]
        if len(set(values)) > 1:
            bullets.append(f"environment `{key}`: " + " → ".join(f"{v} ({n})" for v, n in zip(values, names)))
    tasks = {n: _task_versions(n, root) for n in names}
    for task in sorted({t for v in tasks.values() for t in v}):
        values = [tasks[n].get(task, "not scored") for n in names]
        if len(set(values)) > 1:
            bullets.append(f"task `{task}`: " + " → ".join(f"{v} ({n})" for v, n in zip(values, names)))
    for n, e in exps.items():
        missing_keys = [lab for k, lab in labels[n].items() if k not in keys]
        if missing_keys:
            bullets.append(f"only in {n} ({len(missing_keys)}): {', '.join(sorted(set(missing_keys)))}")
    rows = []
    for n, e in exps.items():
        rows.append([Cell(n, n), Cell(str(len(e.df)), len(e.df)), Cell(str(e.df["config"].nunique()),
                                                                     e.df["config"].nunique()),
                     Cell(_modes(e.df, "model.name")), Cell(_modes(e.df, "data.name")),
                     Cell(_modes(e.df, "env.git_sha")[:12]), Cell(_modes(e.df, "env.torch")),
                     Cell(str(e.df["started_at"].dropna().min())), Cell(str(e.df["finished_at"].dropna().max()))])
    table = Table("The experiments", ["experiment", "runs", "configurations", "model", "data", "git sha", "torch",
                                      "first run started", "last run finished"], rows)
    para = (f"{len(keys)} configuration{'s' * (len(keys) != 1)} matched in all {len(names)} experiments (on the "
            f"method and its options, the objective, the 4-bit flag and the budget: {', '.join(BUDGET)}). "
            + ("What differs between them:" if bullets else "Nothing differs in their specs, environments or task "
               "versions: a difference below is run-to-run noise or a change outside what the store records."))
    return Section("What differs", paragraphs=[para], bullets=bullets, tables=[table])


def compare(names: list[str], root: Path | None = None) -> Report:
    """The side-by-side report of experiments `names` (the first is the baseline differences are taken from).

    Raises:
        ConfigError: fewer than two names, an experiment without finished runs, or no configuration in all.
    """
    if len(names) < 2:
        raise ConfigError.one(_SOURCE, "experiments", f"name at least two experiments, but got {names}")
    exps = _contexts(_load(names, root), root)
    keys, labels = _matched(exps)
    if not keys:
        listed = "; ".join(f"{n}: {', '.join(sorted(set(labels[n].values()))[:6])}" for n in exps)
        raise ConfigError.one(_SOURCE, "experiments", "no configuration is in every experiment (matched on method "
                              f"and options, objective, 4-bit flag and budget {', '.join(BUDGET)}): {listed}")
    examples = _combined_examples(exps, root)
    title = " vs ".join(names)
    sections = [_differences(exps, keys, labels, root)]
    side = Section("Side by side", paragraphs=[
        f"One row per configuration matched in every experiment; {names[0]} is the baseline each difference is "
        "taken from. Quality differences are paired where both runs scored the same examples (validation and "
        "test splits, task documents): the interval is a paired bootstrap over examples (and seeds)."])
    for metric in _quality_metrics(exps):
        if metric.key in ("eval_loss", "test_loss"):
            continue  # shown as perplexities: the same comparison
        side.tables.append(_quality_table(exps, keys, labels, examples, metric))
    costs = _cost_table(exps, keys, labels)
    if costs is not None:
        side.tables.append(costs)
    sections.append(side)
    view = _explorer(exps)
    if view is not None:
        sections.append(Section("Explore", paragraphs=[
            "Every configuration of every experiment; toggle experiments, pick the axes. The front is over the "
            "points shown."], views=[view]))
    frame = _frame(exps, keys, labels)
    return Report(title, next(iter(exps.values())).ctx.generated_at, [], frame, sections)


def _explorer(exps: dict[str, _Experiment]):
    parts, metrics = [], {}
    for name, e in exps.items():
        s = e.summary.copy()
        s["experiment"] = name
        parts.append(s)
        metrics.update({m.key: m for m in e.ctx.metrics})
    summary = pd.concat(parts, ignore_index=True)
    names = summary["config"].astype(str) + " [" + summary["experiment"] + "]"
    axes = sorted({a for e in exps.values() for a in e.ctx.axes})
    return interactive.pareto_view(summary, list(metrics.values()), axes, group="experiment", names=names,
                                   caption="Pareto explorer over the experiments: one colour per state (red: front)")


def _frame(exps, keys, labels) -> pd.DataFrame:
    """summary.csv of a comparison: one row per matched configuration and experiment, its means."""
    rows = []
    for k in keys:
        for n, e in exps.items():
            srow = _row_of(e, labels[n][k])
            if srow is None:
                continue
            rows.append({"configuration": labels[next(iter(exps))][k], "experiment": n, **srow.to_dict()})
    return pd.DataFrame(rows)


def leaderboard(root: Path | None = None, model: str | None = None, data: str | None = None,
                metric: str = "eval_ppl", top: int | None = None) -> Report:
    """Every experiment's configurations trained on one model and data set, best first by `metric` (its
    declared direction).

    Raises:
        ConfigError: an empty store, an unknown metric, or a model/data choice that is missing or ambiguous.
    """
    names = experiments_in(root)
    if not names:
        raise ConfigError.one("leaderboard", "--results", f"no experiment with finished runs under "
                              f"{root or store.results_root()}")
    chosen = next((m for m in QUALITY + TEST + COSTS if m.key == metric), None)
    if chosen is None or chosen.lower_is_better is None:
        options = [m.key for m in QUALITY + TEST + COSTS if m.lower_is_better is not None]
        raise ConfigError.one("leaderboard", "--metric", f"must be one of {', '.join(options)}, but got "
                              f"{metric!r}.{did_you_mean(metric, options)}")
    parts = []
    for name in names:
        df = load_runs(name, root)
        if df.empty or "model.name" not in df or "data.name" not in df:
            continue
        ctx = ReportContext(name, df, root)
        summary = ctx.summary
        if summary.empty:
            continue
        first = df.drop_duplicates("config").set_index("config")
        summary = summary.assign(experiment=name,
                                 model=summary["config"].map(first["model.name"]).astype(str),
                                 data=summary["config"].map(first["data.name"]).astype(str),
                                 validation=summary["config"].map(
                                     lambda c: f"n_val={first.loc[c].get('data.n_val')}, "
                                               f"split_seed={first.loc[c].get('data.split_seed')}"))
        parts.append(summary)
    if not parts:
        raise ConfigError.one("leaderboard", "--results", "no experiment there records its model and data set")
    every = pd.concat(parts, ignore_index=True)
    every = every[~every["reference"].astype(bool)]
    combos = every.groupby(["model", "data"]).size()
    keep = pd.Series(True, index=every.index)
    if model:
        keep &= every["model"] == model
    if data:
        keep &= every["data"] == data
    wanted = every[keep]
    pairs = sorted({(m, d) for m, d in zip(wanted["model"], wanted["data"])})
    if len(pairs) != 1:
        listing = "; ".join(f"--model {m} --data {d} ({n} configurations)" for (m, d), n in combos.items())
        what = "nothing matches" if not pairs else "several model and data sets match"
        raise ConfigError.one("leaderboard", "--model/--data", f"{what}: pick one of {listing}")
    col = f"{chosen.key}_mean"
    if col not in wanted or wanted[col].notna().sum() == 0:
        raise ConfigError.one("leaderboard", "--metric", f"no run on {pairs[0][0]} / {pairs[0][1]} measured "
                              f"{chosen.key}")
    ranked = wanted.dropna(subset=[col]).sort_values(col, ascending=bool(chosen.lower_is_better), kind="stable")
    if top:
        ranked = ranked.head(top)
    shown = [m for m in QUALITY[1:] + TEST[1:] + COSTS if m.key in ("eval_ppl", "test_ppl", "peak_mem_train_mb",
                                                                    "trainable_params", "train_s")]
    shown = [chosen] + [m for m in shown if m.key != chosen.key]
    rows = []
    for rank, (_, row) in enumerate(ranked.iterrows(), start=1):
        rows.append([Cell(str(rank), rank), Cell(row["experiment"], row["experiment"]),
                     Cell(row["config"], row["config"]), Cell(str(row["n_seeds"]), row["n_seeds"]),
                     *[metric_cell(row, m, rank == 1 and m is chosen, _busy(row, m)) if f"{m.key}_mean" in row
                       else Cell("–") for m in shown], Cell(row["validation"], row["validation"])])
    better = "lower" if chosen.lower_is_better else "higher"
    table = Table(f"{pairs[0][0]} on {pairs[0][1]}: every configuration of every experiment, by {chosen.label} "
                  f"({better} is better)", ["rank", "experiment", "configuration", "n", *[m.label for m in shown],
                                            "validation set"], rows)
    section = Section("Leaderboard", paragraphs=[
        f"{len(ranked)} configurations from {ranked['experiment'].nunique()} experiments in the store, ranked by "
        f"{chosen.label} (direction from the metric vocabulary). Each figure ± the half-width of its 95% interval."],
        tables=[table])
    if (ranked["n_contended"] > 0).any():
        section.paragraphs.append(f"{BUSY_MARK}: memory or time measured while processes outside the sweep competed "
                                  f"for the run's hardware (env.contended): it may be distorted.")
    if ranked["validation"].nunique() > 1:
        section.paragraphs.append("Warning: these runs were scored on different validation sets (see the last "
                                  "column); their quality figures do not compare like for like.")
    title = f"leaderboard-{pairs[0][0]}-{pairs[0][1]}"
    frame = ranked.drop(columns=[c for c in ranked.columns if c.endswith("_ci_from")])
    return Report(title, ReportContext("", ranked).generated_at, [], frame, [section])
