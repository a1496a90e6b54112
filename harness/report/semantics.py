"""What the report's cost columns measured, in one paragraph, from the runs' devices."""

from __future__ import annotations

import pandas as pd

from harness.measure import COST_SEMANTICS

__all__ = ["measurement_note"]

_MEMORY = {
    "cpu": "the run process's resident set size (RSS), sampled every 20 ms",
    "cuda": "torch.cuda.max_memory_allocated (max_memory_reserved, what meets the OOM limit, in the *_reserved_mb "
            "figures)",
}


def measurement_note(df: pd.DataFrame) -> str:
    """One paragraph naming, per device the runs used, what the memory and speed columns measure."""
    devices = df.get("env.device", pd.Series(dtype=object)).dropna().astype(str)
    counts = devices.value_counts()
    if counts.empty:
        return ""
    where = "; ".join(f"on {device} ({n} run{'s' * (n != 1)}) {_MEMORY.get(device, 'the device allocator')}"
                      for device, n in counts.items())
    mixed = " Runs on different devices are not comparable on these columns." if len(counts) > 1 else ""
    version = pd.to_numeric(df.get("env.cost_semantics", pd.Series(index=df.index, dtype=float)), errors="coerce")
    older = int((version.fillna(1) < COST_SEMANTICS).sum())
    if older:
        mixed += (f" {older} run{'s were' if older != 1 else ' was'} measured under the earlier definitions (CPU memory "
                  "as RSS growth, speed over all of train(), one latency timing per prompt): rerun with --force to "
                  "compare like for like.")
    return (f"Memory columns are the absolute peak of each phase with the weights included — {where}; a periodic "
            "evaluation inside training is left out of the training peak. 'weights MiB' and 'optimizer MiB' count "
            "tensor bytes as stored (4-bit weights packed; Adam state read after the first step), the same on every "
            "device. 'train tokens/s' and 'step ms' are steady-state: the optimizer steps after the warm-up steps "
            "(eval.speed_warmup_steps), set-up, logging and periodic evaluation excluded; 'train s' is the whole "
            f"training phase. Exact definitions: docs/results.md.{mixed}")
