"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: figures render the same on a server and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.report.frame import Metric  # noqa: E402
from harness.report.stats import PowerLawFit, pareto_mask, power_law  # noqa: E402

plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "figure.dpi": 110})


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _errors(rows: pd.DataFrame, key: str) -> np.ndarray | None:
    mean, low, high = rows[f"{key}_mean"], rows[f"{key}_ci_low"], rows[f"{key}_ci_high"]
    if low.isna().all():
        return None
    return np.vstack([(mean - low).fillna(0).to_numpy(), (high - mean).fillna(0).to_numpy()])


def pareto(summary: pd.DataFrame, quality: Metric, costs: list[Metric]) -> bytes:
    """Quality against each cost, front members highlighted, named and joined; error bars from seeds."""
    rows = summary[~summary["reference"]]
    fig, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 4.2), squeeze=False)
    for ax, cost in zip(axes[0], costs):
        x, y = rows[f"{cost.key}_mean"].to_numpy(float), rows[f"{quality.key}_mean"].to_numpy(float)
        front = pareto_mask(x, y, quality.lower_is_better, minimize_cost=cost.lower_is_better)
        ax.errorbar(x[~front], y[~front], xerr=_sub(_errors(rows, cost.key), ~front),
                    yerr=_sub(_errors(rows, quality.key), ~front), fmt="o", color="0.6", ms=4, lw=0.8)
        ax.errorbar(x[front], y[front], xerr=_sub(_errors(rows, cost.key), front),
                    yerr=_sub(_errors(rows, quality.key), front), fmt="o", color="tab:red", ms=5, lw=0.8)
        order = np.argsort(x[front])
        ax.step(x[front][order], y[front][order], where="post", color="tab:red", lw=1, alpha=0.6)
        for k, (xi, yi, name) in enumerate(sorted(zip(x[front], y[front], rows["config"][front]))):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 5 if k % 2 == 0 else -11),
                        fontsize=7, color="tab:red")
        _clip_outliers(ax, x, y, rows["config"].to_numpy(), quality)
        if cost.key == "trainable_params" and np.nanmin(x) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(cost.label)
        ax.set_ylabel(quality.label)
        ax.set_title(f"{quality.label} vs {cost.label}")
        ax.grid(alpha=0.3)
    return _png(fig)


def _clip_outliers(ax, x, y, names, quality: Metric) -> None:
    """Keep a diverged run (perplexity in the thousands) from flattening every other point: cut the axis
    at a few times the median and draw the runs beyond it as named triangles on the edge."""
    finite = np.isfinite(x) & np.isfinite(y)
    if not quality.lower_is_better or finite.sum() < 3:
        return
    low, median = np.nanmin(y[finite]), np.nanmedian(y[finite])
    top = low + 3 * (median - low) if median > low else None
    if top is None or np.nanmax(y[finite]) <= top:
        return
    ax.set_ylim(low - 0.05 * (top - low), top * 1.04)
    off = [(xi, yi, name) for xi, yi, name in zip(x[finite], y[finite], names[finite]) if yi > top]
    ax.plot([o[0] for o in off], [top] * len(off), ls="", marker="^", color="0.4", ms=6)
    ax.text(0.99, 0.97, "off scale (▲):\n" + "\n".join(f"{n} {quality.format(v)}" for _, v, n in off),
            transform=ax.transAxes, ha="right", va="top", fontsize=6, color="0.3",
            bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9})


def _sub(err: np.ndarray | None, mask: np.ndarray):
    return None if err is None else err[:, mask]


def data_size(points: pd.DataFrame, fits: dict[str, PowerLawFit | None], target: float | None) -> bytes:
    """Mean loss (± CI) against n_train per series on a log x axis, with each fitted power law."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = plt.get_cmap("tab10")
    for i, (series, rows) in enumerate(points.groupby("series", sort=False)):
        colour = colours(i % 10)
        err = _errors(rows, "eval_loss")
        ax.errorbar(rows["n"], rows["eval_loss_mean"], yerr=err, fmt="o", color=colour, ms=4, label=series)
        fit = fits.get(series)
        if fit:
            n = np.geomspace(rows["n"].min(), rows["n"].max(), 100)
            ax.plot(n, power_law(n, fit.a, fit.b, fit.c), color=colour, lw=1)
    if target is not None:
        ax.axhline(target, color="0.4", ls="--", lw=0.8, label=f"target {target:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("training examples (n_train)")
    ax.set_ylabel("eval loss")
    ax.set_title("Data-size curves: L(n) = a·n^(-b) + c")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _png(fig)


def rank_alpha(summary: pd.DataFrame, quality: Metric) -> bytes:
    """A heatmap of mean quality over r × alpha for each method."""
    rows = summary[~summary["reference"]].dropna(subset=["method.r", "method.alpha"])
    methods = rows["method.name"].unique() if "method.name" in rows else ["all"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        sub = rows[rows["method.name"] == method] if "method.name" in rows else rows
        grid = sub.pivot_table(index="method.r", columns="method.alpha", values=f"{quality.key}_mean", aggfunc="mean")
        image = ax.imshow(grid.to_numpy(float), cmap="viridis_r" if quality.lower_is_better else "viridis",
                          aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [f"{c:g}" for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{r:g}" for r in grid.index])
        for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
            if np.isfinite(value):
                ax.text(j, i, quality.format(value), ha="center", va="center", fontsize=7, color="white")
        ax.set_xlabel("alpha")
        ax.set_ylabel("r")
        ax.set_title(f"{method}: {quality.label}")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _png(fig)


def training_curves(curves: pd.DataFrame) -> bytes:
    """Training loss against step per configuration: the seed mean, the seed range shaded, eval loss dashed."""
    configs = list(dict.fromkeys(curves["config"]))
    fig, ax = plt.subplots(figsize=(8, 4.6))
    colours = plt.get_cmap("tab20")
    for i, config in enumerate(configs):
        colour = colours(i % 20)
        rows = curves[curves["config"] == config]
        train = rows.dropna(subset=["loss"]).groupby("step")["loss"].agg(["mean", "min", "max"])
        if len(train):
            ax.plot(train.index, train["mean"], color=colour, lw=1, label=config)
            ax.fill_between(train.index, train["min"], train["max"], color=colour, alpha=0.15, lw=0)
        evals = rows.dropna(subset=["eval_loss"]).groupby("step")["eval_loss"].mean()
        if len(evals):
            ax.plot(evals.index, evals.to_numpy(), color=colour, lw=1, ls="--", marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (dashed: eval loss)")
    ax.set_title("Training curves (line: seed mean, band: seed range)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=1 + len(configs) // 14, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _png(fig)


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _by_group(ax, rows: pd.DataFrame, groups: pd.Series, x: Metric, y: Metric) -> None:
    """`y` against `x`, one marker and colour per group (a method or loss mix), seed intervals as bars."""
    finite = np.isfinite(rows[f"{x.key}_mean"].to_numpy(float)) & np.isfinite(rows[f"{y.key}_mean"].to_numpy(float))
    if not finite.any():
        ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="0.5")
    colours = plt.get_cmap("tab10")
    for i, group in enumerate(dict.fromkeys(groups[finite])):
        mask = finite & (groups == group).to_numpy()
        sub = rows[mask]
        ax.errorbar(sub[f"{x.key}_mean"], sub[f"{y.key}_mean"], xerr=_errors(sub, x.key), yerr=_errors(sub, y.key),
                    fmt=MARKERS[i % len(MARKERS)], color=colours(i % 10), ms=6, lw=0.8, label=group)
    ax.set_xlabel(x.label)
    ax.set_ylabel(y.label)
    ax.set_title(f"{y.label} vs {x.label}")
    ax.grid(alpha=0.3)
    if finite.any():
        ax.legend(fontsize=7)


def distillation(summary: pd.DataFrame, groups: pd.Series, retention: Metric, against: list[Metric]) -> bytes:
    """Quality retention against compression and against decode speed-up; the dashed line is the teacher."""
    fig, axes = plt.subplots(1, len(against), figsize=(5.2 * len(against), 4.2), squeeze=False)
    top = summary[f"{retention.key}_mean"].max()
    for ax, x in zip(axes[0], against):
        _by_group(ax, summary, groups, x, retention)
        if np.isfinite(top) and top >= 50:
            ax.axhline(100, color="0.4", ls="--", lw=0.8)
        else:  # far below the teacher: a line at 100 would flatten the students into one row
            ax.set_title(ax.get_title() + " (teacher: 100, off the scale)", fontsize=9)
    return _png(fig)


def preference(summary: pd.DataFrame, groups: pd.Series, accuracy: Metric, kl: Metric) -> bytes:
    """Held-out preference accuracy against KL to the reference; the dashed line is chance (50%)."""
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.axhline(50, color="0.4", ls="--", lw=0.8)
    scaled = summary.copy()  # the accuracy is a fraction in the store and a percentage on the axis
    for suffix in ("_mean", "_ci_low", "_ci_high"):
        scaled[accuracy.key + suffix] = scaled[accuracy.key + suffix] * accuracy.scale
    _by_group(ax, scaled, groups, kl, accuracy)
    return _png(fig)


def transfer_heatmap(values: pd.DataFrame, in_domain: dict[str, str | None], relative: bool) -> bytes:
    """Rows (runs) × columns (evaluated sources), annotated; in-domain cells outlined. Relative values use a
    diverging map centred at 0 (blue: loss below the base); raw losses a sequential one."""
    grid = values.to_numpy(float)
    fig, ax = plt.subplots(figsize=(1.3 + 1.05 * grid.shape[1], 1.0 + 0.45 * grid.shape[0]))
    finite = grid[np.isfinite(grid)]
    if relative:
        span = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto")
    else:
        image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), list(values.columns), rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), list(values.index))
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            ax.text(j, i, f"{value:+.3f}" if relative else f"{value:.3f}", ha="center", va="center", fontsize=7,
                    color="black" if relative else "white")
        if in_domain.get(values.index[i]) == values.columns[j]:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.6))
    ax.set_xlabel("evaluated on (validation split)")
    ax.set_ylabel("trained on")
    ax.set_title("Eval loss change vs the untouched base (outlined: in-domain)" if relative
                 else "Eval loss (no base row; outlined: in-domain)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Δ eval loss" if relative else "eval loss")
    return _png(fig)


def grouped_bars(values: pd.DataFrame, ylabel: str, title: str) -> bytes:
    """One group of bars per row of `values` (x labels), one bar per column (series), NaN bars left out."""
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 0.9 * len(values) * max(1, len(values.columns)) / 2), 3.8))
    width = 0.8 / max(1, len(values.columns))
    colours = plt.get_cmap("tab10")
    x = np.arange(len(values))
    for k, column in enumerate(values.columns):
        bars = ax.bar(x + (k - (len(values.columns) - 1) / 2) * width, values[column].to_numpy(float), width,
                      color=colours(k % 10), label=str(column))
        ax.bar_label(bars, [f"{v:.3g}" if np.isfinite(v) else "" for v in values[column].to_numpy(float)],
                     fontsize=6, padding=1)
    tilt = len(values) > 4
    ax.set_xticks(x, [str(i) for i in values.index], rotation=20 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _png(fig)


def continual_lines(chains: list[tuple[str, list[str], np.ndarray, np.ndarray | None]]) -> bytes:
    """Per strategy, each domain's eval loss before the first stage (the base) and after every stage."""
    fig, axes = plt.subplots(1, len(chains), figsize=(4.4 * len(chains), 3.6), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, (label, sequence, r, b) in zip(axes[0], chains):
        stages = np.arange(1, len(sequence) + 1)
        for j, domain in enumerate(sequence):
            ys = r[:, j] if b is None else np.concatenate([[b[j]], r[:, j]])
            xs = stages if b is None else np.concatenate([[0], stages])
            ax.plot(xs, ys, marker="o", ms=3, lw=1, color=colours(j % 10), label=domain)
            ax.plot([j + 1], [r[j, j]], marker="s", ms=6, mfc="none", color=colours(j % 10))  # just trained
        ax.set_xticks(range(len(sequence) + 1), ["base", *(f"{i + 1}: {d}" for i, d in enumerate(sequence))],
                      rotation=20, ha="right")
        ax.set_title(label)
        ax.set_xlabel("after stage")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("eval loss (square: the stage's own domain)")
    axes[0][-1].legend(fontsize=7)
    return _png(fig)
