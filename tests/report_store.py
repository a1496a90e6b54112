"""Synthetic results stores for report tests: result.json and metrics.jsonl written through the store's own API."""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness import store
from harness.report.objectives import loss_mix

ENV = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.23.0", "peft": "0.21.2", "cpu_count": 2,
       "gpu_count": 0, "device": "cpu", "device_name": "x86_64", "git_sha": "abc123", "git_dirty": False,
       "cost_semantics": 2}


def write_run(root: Path, experiment: str, *, method: str = "lora", seed: int = 0, r: int | None = None,
              alpha: float | None = None, n_train: int = 100, micro_batch: int = 4, status: str = "ok",
              eval_loss: float = 2.0, mem: float = 1000.0, params: int = 10_000, train_s: float = 60.0,
              tokens: int = 4000, env: dict | None = None, losses: list[float] | None = None,
              extra: dict | None = None, slug: str | None = None, reference: str | None = None,
              objective: dict | None = None, overrides: dict | None = None, finished_at: str | None = None,
              examples: dict | None = None) -> str:
    """One finished run; returns its run id. `reference`: the run id of its untouched-base row.

    `objective`: the spec's `objective` section (sft runs have none); its name, and a distillation's loss mix,
    lead the slug as in `grid.make_slug`. `overrides`: merged into the spec's sections
    (e.g. `{"data": {"name": "chat_health"}, "eval": {"sources": [...]}}`); the slug ignores them.
    `examples`: the run's per-example scores (examples.json), as the recipe writes them."""
    method_spec = {"name": method, **({"r": r} if r is not None else {}), **({"alpha": alpha} if alpha is not None else {})}
    name = slug
    slug = method + (f"-r{r}" if r is not None else "") + (f"-a{alpha:g}" if alpha is not None else "")
    slug += f"-n{n_train}-s{seed}" if method != "none" else ""
    if objective:
        mix = loss_mix(objective.get("losses") or {}) if objective["name"] == "distill" else None
        slug = "-".join(p for p in (objective["name"], mix, slug) if p)
    slug = name or slug
    run_id = f"{slug}-{abs(hash((slug, micro_batch))) % 10**8:08d}"
    spec = {"experiment": experiment, "run_id": run_id, "slug": slug, "varied": {},
            "model": {"name": "tiny"}, "data": {"name": "synthetic", "n_train": n_train},
            "method": method_spec, "train": {"max_steps": 5, "lr": 1e-3, "micro_batch": micro_batch},
            "eval": {"batch_size": 8}, "seed": seed, **({"reference": reference} if reference else {}),
            **({"objective": objective} if objective else {})}
    for section, values in (overrides or {}).items():
        spec[section] = {**spec[section], **values} if isinstance(values, dict) and isinstance(spec.get(section), dict) else values
    metrics = {}
    error = None
    if status == "ok":
        metrics = {"eval_loss": eval_loss, "eval_ppl": math.exp(eval_loss), "peak_mem_train_mb": mem,
                   "trainable_params": params, "trainable_pct": params / 1e6 * 100, "train_s": train_s,
                   "train_tokens": tokens, "train_tokens_per_s": tokens / train_s if train_s else None, "adapter_bytes": params * 4,
                   **(extra or {})}
    else:
        error = {"type": "RuntimeError", "message": f"{method} broke on purpose"}
    result = store.make_result(spec, status=status, error=error, metrics=metrics, env=env or ENV,
                               started_at=f"2026-11-23T10:{seed:02d}:00+00:00",
                               finished_at=finished_at or f"2026-11-23T10:{seed:02d}:30+00:00")
    directory = store.run_dir(experiment, run_id, root)
    directory.mkdir(parents=True)
    store.write_json_atomic(directory / "result.json", result)
    if examples is not None:
        store.write_json_atomic(directory / store.EXAMPLES_FILE, examples)
    with open(directory / "metrics.jsonl", "w") as fh:
        for step, loss in enumerate(losses or [eval_loss + 1, eval_loss + 0.5, eval_loss + 0.2], start=1):
            fh.write(json.dumps({"step": step, "loss": loss}) + "\n")
    return run_id
