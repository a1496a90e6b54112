"""Per-example scores (each run's `examples.json`) → intervals for a configuration and paired differences
between two: the uncertainty a single seed still has, because its figures are means over examples.

A quality figure is a ratio over examples: validation/test loss Σnll ÷ Σtokens (perplexity its exp), a task's
accuracy the mean over documents, a word perplexity exp(Σnll ÷ Σwords). Resampling examples (with the same
indices for two runs scored on the same examples) gives its interval; with several seeds the seeds are
resampled too (`harness.report.stats.paired_difference_seeds`), so both sources of noise are in it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from harness import store
from harness.report.stats import (Interval, PairedDiff, bootstrap_ratio_ci_seeds, paired_difference,
                                  paired_difference_seeds)

__all__ = ["EXAMPLE_KEYS", "ExampleScores", "Scores", "scores_of"]

#: the bootstrap's replicates: a percentile interval's ends move by ~0.5% of its width between seeds of the RNG
N_BOOT = 2000
_SPLITS = {"eval_loss": "validation", "eval_ppl": "validation", "test_loss": "test", "test_ppl": "test"}
#: quality keys read from the splits (tasks are `task.<task>.<metric>`)
EXAMPLE_KEYS = tuple(_SPLITS)


def _identity(x):
    return x


# how a corpus metric reads the ratio Σnll ÷ Σcount (lm-eval's weighted_perplexity, bits_per_byte)
_RATIO_METRICS: dict[str, Callable] = {"word_perplexity": np.exp, "byte_perplexity": np.exp,
                                       "bits_per_byte": lambda r: r / math.log(2)}


@dataclass(frozen=True)
class Scores:
    """One metric of one run, per example: the metric is `transform(Σsums ÷ Σcounts)` (counts None: a mean)."""

    sums: np.ndarray
    counts: np.ndarray | None
    transform: Callable = _identity
    ids: tuple | None = None  # document ids where the task logged them: two runs pair only on the same ones

    def __len__(self) -> int:
        return len(self.sums)

    def pair(self) -> tuple:
        return self.sums, self.counts


def scores_of(examples: dict | None, key: str) -> Scores | None:
    """The per-example scores behind result key `key` in a run's examples.json, or None when it has none."""
    if not examples:
        return None
    if key in _SPLITS:
        split = (examples.get("splits") or {}).get(_SPLITS[key])
        if not split or not split.get("nll"):
            return None
        return Scores(np.asarray(split["nll"], float), np.asarray(split["tokens"], float),
                      np.exp if key.endswith("_ppl") else _identity)
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "task":
        return None
    task = (examples.get("tasks") or {}).get(parts[1]) or {}
    values = task.get(parts[2])
    ids = tuple(task["doc_id"]) if task.get("doc_id") else None
    if isinstance(values, list) and values:
        return Scores(np.asarray(values, float), None, ids=ids)
    if isinstance(values, dict) and values.get("nll"):
        return Scores(np.asarray(values["nll"], float), np.asarray(values["count"], float),
                      _RATIO_METRICS.get(parts[2], _identity), ids)
    return None


def _transformed(interval: Interval, transform: Callable) -> Interval:
    t = lambda v: float(transform(v)) if np.isfinite(v) else math.nan  # noqa: E731
    return Interval(t(interval.mean), t(interval.low), t(interval.high), interval.n)


class ExampleScores:
    """The per-example scores of an experiment's runs (`load_runs`'s frame), read on first use.

    `interval(config, key)` and `difference(a, b, key)` work on configurations: one run per seed.
    """

    def __init__(self, df: pd.DataFrame, root: Path | None = None, level: float = 0.95):
        self.df = df
        self.root = root
        self.level = level
        self._files: dict[str, dict | None] = {}

    @cached_property
    def _runs(self) -> dict[str, list[tuple[int, str, str]]]:
        """config → [(seed, run id, experiment)] of its ok runs, by seed."""
        out: dict[str, list] = {}
        if self.df.empty or "config" not in self.df:
            return out
        ok = self.df[self.df["status"] == "ok"]
        for _, run in ok.iterrows():
            seed = run.get("seed")
            out.setdefault(run["config"], []).append(
                (int(seed) if seed is not None and np.isfinite(seed) else 0, run["run_id"], run["experiment"]))
        return {c: sorted(v) for c, v in out.items()}

    def _examples(self, run_id: str, experiment: str) -> dict | None:
        if run_id not in self._files:
            self._files[run_id] = store.read_examples(store.run_dir(experiment, run_id, self.root))
        return self._files[run_id]

    def per_seed(self, config: str, key: str) -> dict[int, Scores]:
        """{seed: its run's scores of `key`} for the seeds that kept them."""
        out = {}
        for seed, run_id, experiment in self._runs.get(config, []):
            scores = scores_of(self._examples(run_id, experiment), key)
            if scores is not None and len(scores):
                out[seed] = scores
        return out

    def has(self, key: str) -> bool:
        """Whether any run kept the per-example scores of `key`."""
        return any(self.per_seed(config, key) for config in self._runs)

    def interval(self, config: str, key: str) -> Interval | None:
        """`key`'s value for `config` with its 95% interval over examples (and seeds, when several), or None
        when its runs kept no per-example scores (or a seed lacks them: an interval over some seeds would
        not be the mean the table shows)."""
        per_seed = self.per_seed(config, key)
        if not per_seed or len(per_seed) != len(self._runs.get(config, [])):
            return None
        scores = list(per_seed.values())
        ratio = bootstrap_ratio_ci_seeds([s.pair() for s in scores], level=self.level, n_boot=N_BOOT)
        return _transformed(ratio, scores[0].transform)

    def difference(self, a: str, b: str, key: str) -> PairedDiff | None:
        """A − B of `key` on the ratio scale (loss, accuracy: a perplexity is compared on its log) over the
        seeds both configurations ran, paired by seed and example; None when they share no scored seed or
        were not scored on the same examples."""
        sa, sb = self.per_seed(a, key), self.per_seed(b, key)
        seeds = sorted(set(sa) & set(sb))
        if not seeds or any(not _same_examples(sa[s], sb[s]) for s in seeds):
            return None
        pairs_a, pairs_b = [sa[s].pair() for s in seeds], [sb[s].pair() for s in seeds]
        if len(seeds) == 1:
            return paired_difference(*pairs_a[0], *pairs_b[0], level=self.level, n_boot=N_BOOT)
        return paired_difference_seeds(pairs_a, pairs_b, level=self.level, n_boot=N_BOOT)

    def examples_per_split(self) -> dict[str, str]:
        """How many examples (and tokens) each split's figures average over, as the runs recorded them."""
        out = {}
        for key, name in (("eval_loss", "validation"), ("test_loss", "test")):
            sizes = {(len(s), int(s.counts.sum())) for c in self._runs for s in self.per_seed(c, key).values()}
            if sizes:
                n, tokens = max(sizes)
                out[name] = f"{n} examples ({tokens} response tokens)" + (" in most runs" if len(sizes) > 1 else "")
        return out


def _same_examples(a: Scores, b: Scores) -> bool:
    if len(a) != len(b):
        return False
    if a.ids is not None and b.ids is not None:
        return a.ids == b.ids
    # splits: the same examples give the same token counts (the split is fixed by data.split_seed)
    return a.counts is None or b.counts is None or bool(np.array_equal(a.counts, b.counts))
