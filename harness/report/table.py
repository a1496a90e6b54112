"""Compact terminal tables of runs: the sweep's closing summary and `ftbench ls`."""

from __future__ import annotations

import math

from rich.table import Table

#: (column, metric key, format)
COLUMNS = [
    ("train loss", "train_loss", "{:.3f}"),
    ("eval loss", "eval_loss", "{:.3f}"),
    ("eval ppl", "eval_ppl", "{:.2f}"),
    ("tok/s", "train_tokens_per_s", "{:.0f}"),
    ("step ms p50", "step_ms_p50", "{:.0f}"),
    ("train MiB", "peak_mem_train_mb", "{:.0f}"),
    ("decode ms/tok", "infer_decode_ms_per_token", "{:.1f}"),
    ("trainable %", "trainable_pct", "{:.3g}"),
    ("weights MB", "adapter_bytes", "{:.2f}"),
    ("wall s", "wall_s", "{:.0f}"),
]


def _fmt(value, fmt: str, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "adapter_bytes":
        value = value / 1e6
    return fmt.format(value)


def runs_table(results: list[dict], title: str = "") -> Table:
    """One row per run result: slug, status and the key metrics."""
    table = Table(title=title or None, show_lines=False, header_style="bold")
    table.add_column("run")
    table.add_column("status")
    for name, _, _ in COLUMNS:
        table.add_column(name, justify="right")
    colours = {"ok": "green", "diverged": "yellow"}
    for r in results:
        if r is None:
            continue
        m = r.get("metrics") or {}
        status = f"[{colours.get(r['status'], 'red')}]{r['status']}[/]"
        table.add_row(r["slug"], status, *[_fmt(m.get(key), fmt, key) for _, key, fmt in COLUMNS])
    return table
