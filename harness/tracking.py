"""Experiment trackers: Weights & Biases (offline unless a key is set) or none."""

from __future__ import annotations

import os
from typing import Any

from harness.metrics import METRICS
from harness.registry import Registry


class Tracker:
    """Receives per-step metrics and a final summary. The base class records nothing."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class WandbTracker(Tracker):
    """One W&B run per ftbench run: group = experiment, job_type = method, name = slug.

    Offline (runs land in ./wandb, `wandb sync` uploads them) unless WANDB_API_KEY is set or
    WANDB_MODE says otherwise. The key is read by wandb from the environment, never passed on.
    """

    def __init__(self, cfg, *, experiment: str, slug: str, method: str, spec: dict):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self._run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=experiment, job_type=method, name=slug,
            config=spec, tags=list(cfg.tags), mode=mode, dir=os.environ.get("WANDB_DIR", "."),
            reinit="finish_previous", settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, metrics, step):
        self._run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def summary(self, metrics):
        measured = {key: value for key, value in metrics.items() if value is not None}
        for key, value in measured.items():
            self._run.summary[key] = value
        # W&B has no direction of its own (define_metric lost `goal`): the declared one travels in the config
        goals = {key: goal for key in measured if (goal := METRICS.direction(key)) is not None}
        self._run.config.update({"metric_goals": goals}, allow_val_change=True)

    def finish(self, status):
        self._run.summary["status"] = status
        self._run.finish(exit_code=0 if status == "ok" else 1)


TRACKERS: Registry[type] = Registry("tracker")
TRACKERS.register("wandb", WandbTracker)
TRACKERS.register("none", lambda cfg, **_: Tracker())


def start(cfg, **kwargs) -> Tracker:
    """Start the tracker named by `cfg.backend`."""
    return TRACKERS.get(cfg.backend)(cfg, **kwargs)
