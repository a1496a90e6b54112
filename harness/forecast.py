"""How long a grid will take before it runs, and how much memory × time it holds.

A run's training time is its planned tokens (steps × examples per step × the mean example's length,
read from the tokenized data) divided by a speed learnt from the store: the tokens/s of earlier `ok`
runs of the same model, method and device when there are some, else the FLOP rate those runs of the
same model reached with any method, at 4·N + 2·N_trainable FLOPs per token (a forward and the input
gradients through every weight, weight gradients only where something trains). Everything around the
training (loading, evaluation, task scoring, latency) is the median of the same runs' `wall_s −
train_s`. Nothing learnt → no figure: the dry run says so instead of guessing from a spec sheet.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Forecast", "History", "flops_per_token", "forecast", "summary"]


def flops_per_token(params: int, trainable: int) -> float:
    """Training FLOPs per token: 2·N forward, 2·N for the input gradients, 2·N_trainable for the weights'."""
    return 4.0 * params + 2.0 * trainable


@dataclass(frozen=True)
class Forecast:
    """One run's forecast: planned training tokens, seconds of training and around it (None: unknown),
    and what the speed was learnt from."""

    train_tokens: float
    train_s: float | None
    rest_s: float | None
    basis: str

    @property
    def total_s(self) -> float | None:
        return None if self.train_s is None or self.rest_s is None else self.train_s + self.rest_s


@dataclass
class History:
    """Earlier `ok` runs of the store on this device, as (model, method, tokens/s, FLOP/s, rest s,
    contended): runs that shared the machine are used only where no other run is known."""

    rows: list[tuple[str, str, float, float, float, bool]]
    device: str

    def matching(self, model: str, method: str | None = None) -> tuple[list, bool]:
        """(the runs of `model` (and `method`), whether they are contended ones for want of others)."""
        found = [r for r in self.rows if r[0] == model and (method is None or r[1] == method)]
        idle = [r for r in found if not r[5]]
        return (idle, False) if idle else (found, bool(found))

    @classmethod
    def read(cls, root: Path, device_name: str) -> "History":
        """Every `ok` run under `root` that trained on a device called `device_name`."""
        from harness import store

        rows = []
        root = Path(root)
        for experiment in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            for result in store.iter_results(experiment, root):
                m, env, spec = result.get("metrics") or {}, result.get("env") or {}, result.get("spec") or {}
                tps, params = m.get("train_tokens_per_s"), m.get("total_params")
                if (result.get("status") != "ok" or env.get("device_name") != device_name or not tps or not params or m.get("wall_s") is None or m.get("train_s") is None):
                    continue
                model = (spec.get("model") or {}).get("name")
                method = (spec.get("method") or {}).get("name")
                rate = tps * flops_per_token(params, m.get("trainable_params") or 0)
                rows.append((model, method, float(tps), rate, float(m["wall_s"]) - float(m["train_s"]),
                             bool(env.get("contended"))))
        return cls(rows, device_name)


def forecast(config, tokens, estimate, history: History) -> Forecast:
    """A run's forecast from its config, its `harness.memory.BatchTokens` and estimate (parameter counts).

    Args:
        config: the run's RunConfig.
        tokens: positions per batch and per example (`harness.memory.batch_tokens`).
        estimate: its `harness.memory.MemoryEstimate` (None: no parameter counts, no FLOP-based speed).
    """
    t = config.train
    per_step = t.micro_batch * t.grad_accum
    steps = t.max_steps or math.ceil((t.epochs or 1) * config.data.n_train / per_step)
    planned = steps * per_step * tokens.example
    model, method = config.model.name, config.method.name
    same, same_busy = history.matching(model, method)
    near, near_busy = history.matching(model)
    if same:
        tps, rest, busy = statistics.median(r[2] for r in same), same, same_busy
        basis = f"{len(same)} earlier {method} runs"
    elif near and estimate is not None and estimate.params:
        rate = statistics.median(r[3] for r in near)
        tps, rest, busy = rate / flops_per_token(estimate.params, estimate.trainable_params), near, near_busy
        basis = f"the FLOP rate of {len(near)} earlier runs of {model}"
    else:
        return Forecast(planned, None, None, "no earlier run of this model on this device")
    basis += " (contended: they shared the machine, so an idle one is faster)" if busy else ""
    return Forecast(planned, planned / tps, statistics.median(r[4] for r in rest), basis)


def summary(specs, estimates: dict, forecasts: dict, device_name: str, workers: int = 1) -> list[str]:
    """The dry run's closing lines: time and memory × time of the runs not finished yet."""
    known = [(s, forecasts[s.run_id]) for s in specs if forecasts.get(s.run_id) and forecasts[s.run_id].total_s]
    unknown = [s for s in specs if s.run_id in forecasts and not (forecasts[s.run_id] and forecasts[s.run_id].total_s)]
    if not known and not unknown:
        return []
    lines = []
    if known:
        train = sum(f.train_s for _, f in known) / 60
        rest = sum(f.rest_s for _, f in known) / 60
        gib_h = sum(((estimates.get(s.run_id).train_mb * f.train_s + estimates.get(s.run_id).eval_mb * f.rest_s)
                     if estimates.get(s.run_id) else 0.0) for s, f in known) / 1024 / 3600
        per_worker = (train + rest) / max(1, workers)
        lines.append(f"forecast for {len(known)} runs on {device_name}: ~{train + rest:.0f} device-minutes "
                     f"(training ~{train:.1f}, around it ~{rest:.1f}: loading, evaluation, scoring, latency)"
                     + (f", ~{per_worker:.0f} min with {workers} workers" if workers > 1 else "")
                     + f"; ~{gib_h:.2f} GiB·h of memory × time (estimated peaks × time); speeds learnt from "
                     + "earlier runs of the same model in the store"
                     + (" — some of them contended (the machine was shared), so an idle sweep is faster"
                        if any("contended" in f.basis for _, f in known) else ""))
    if unknown:
        lines.append(f"no forecast for {len(unknown)} runs: no earlier ok run of their model on {device_name} "
                     "in the store (run one point first; its speed then forecasts the rest)")
    return lines
