"""Every shipped experiment and search file loads and expands (a file broken by a later change fails
here, not in a user's first `make sweep` or `make search`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import load_experiment
from harness.grid import expand, phases, with_reads, with_references

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_experiment_expands_into_ordered_runs(path):
    specs = with_reads(with_references(expand(load_experiment(path))), file=str(path))
    ordered = [s.run_id for phase in phases(specs, file=str(path)) for s in phase]
    assert specs and sorted(ordered) == sorted(s.run_id for s in specs)
    # a latency figure is a median with a spread: never one prompt timed once
    assert all(s.config.eval.latency_prompts * s.config.eval.latency_repeats >= 8 and s.config.eval.latency_prompts >= 4
               for s in specs if s.config.eval.latency)


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_loads(path, monkeypatch):
    from harness.search import load_sweep

    monkeypatch.chdir(ROOT)  # a sweep names its experiment as `experiments/NAME.yaml`
    sweep = load_sweep(path)
    assert sweep.objectives and all(o.direction in ("minimize", "maximize") for o in sweep.objectives)
