"""Repeats (grid `repeats: N`): the runs of one spec and seed pooled into one row, and their run-to-run spread.

A repeat is the same computation again, so it is not a seed: every other part of the report sees one row
per (configuration, seed) whose figures are the mean over its repeats, and `n seeds` counts seeds. What the
repeats add is the noise floor: for each figure, how far apart the repeats of one spec land on this machine.
"""

from __future__ import annotations

import pandas as pd

from harness.metrics import METRICS

__all__ = ["REPEAT", "REPEATS", "SPREAD", "noise_floor", "pool_repeats", "relative_spread"]

#: the run-spec column numbering the repeats of one spec (absent, or NaN, for repeat 0)
REPEAT = "repeat"
#: on a pooled row: how many ok repeats it averages (1 for a run without repeats)
REPEATS = "repeats"
#: on a pooled row: `spread.<metric>` is the relative spread of that metric over the row's repeats, in %
SPREAD = "spread."


def relative_spread(values: pd.DataFrame | pd.Series, groups) -> pd.DataFrame | pd.Series:
    """(max − min) ÷ |mean| of each group's finite values, in %, broadcast to the group's rows; NaN for a
    group with fewer than two values (or a zero mean that moved).

    Args:
        values: numbers (NaN is skipped), one row per run.
        groups: what `values.groupby` takes to form the groups of repeats.
    """
    by = values.groupby(groups, sort=False, dropna=False)
    width, mean, count = by.transform("max") - by.transform("min"), by.transform("mean").abs(), by.transform("count")
    out = (100 * width / mean.where(mean != 0)).where(count >= 2)
    return out.mask((count >= 2) & (mean == 0) & (width == 0), 0.0)


def _metric_columns(df: pd.DataFrame) -> list[str]:
    """The declared, stored metric columns of a frame that hold numbers (what repeats are averaged over)."""
    out = []
    for col in df.columns:
        declared = METRICS.lookup(col)
        if declared is not None and declared.stored and pd.to_numeric(df[col], errors="coerce").notna().any():
            out.append(col)
    return out


def pool_repeats(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, seed, settings) of the ok runs: the repeats of a spec averaged.

    The pooled row is repeat 0's (its run id, slug, spec, env) with every declared metric replaced by the
    mean over the ok repeats, `repeats` = how many there were and `spread.<metric>` = their relative spread
    in % (NaN for a single run). Runs that did not finish ok stay as they are. A frame without repeats is
    returned unchanged (no new columns).

    Args:
        df: runs as `load_runs` reads them, with `config` (slug without seed and repeat) and `seed`.
    """
    if df.empty or REPEAT not in df or pd.to_numeric(df[REPEAT], errors="coerce").fillna(0).max() < 1:
        return df
    df = df.copy()
    df[REPEAT] = pd.to_numeric(df[REPEAT], errors="coerce").fillna(0).astype(int)
    ok = df[df["status"] == "ok"].sort_values(REPEAT, kind="stable")
    groups = [ok[c] for c in ("config", "seed", "settings") if c in ok]
    numeric = ok[_metric_columns(ok)].apply(pd.to_numeric, errors="coerce")
    by = numeric.groupby(groups, sort=False, dropna=False)
    first = ok.groupby(groups, sort=False, dropna=False).head(1).index  # repeat 0 stands for its twins
    pooled = ok.loc[first].copy()
    pooled[REPEATS] = ok.groupby(groups, sort=False, dropna=False)["status"].transform("size").loc[first]
    means, spreads = by.transform("mean"), relative_spread(numeric, groups)
    for col in numeric.columns:
        pooled[col] = means.loc[first, col]
        pooled[SPREAD + col] = spreads.loc[first, col]
    others = df[df["status"] != "ok"]
    out = pd.concat([pooled, others]) if len(others) else pooled
    out = out.loc[[i for i in df.index if i in out.index]]  # the store's order
    out.attrs = df.attrs
    return out


def noise_floor(df: pd.DataFrame, figures: list[str]) -> pd.DataFrame:
    """Per figure, the median and largest relative spread (%) over the groups of repeats that measured it.

    Args:
        df: pooled runs (`pool_repeats`); rows with `repeats` ≥ 2 are the groups.
        figures: the metric keys to report, in order; those no group measured are left out.

    Returns:
        columns `figure`, `median`, `largest`, `groups`; empty when no run was repeated.
    """
    if REPEATS not in df:
        return pd.DataFrame(columns=["figure", "median", "largest", "groups"])
    groups = df[pd.to_numeric(df[REPEATS], errors="coerce").fillna(1) >= 2]
    rows = []
    for key in figures:
        col = SPREAD + key
        spreads = pd.to_numeric(groups[col], errors="coerce").dropna() if col in groups else pd.Series(dtype=float)
        if len(spreads):
            rows.append({"figure": key, "median": float(spreads.median()), "largest": float(spreads.max()),
                         "groups": len(spreads)})
    return pd.DataFrame(rows, columns=["figure", "median", "largest", "groups"])
