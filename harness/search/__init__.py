"""Optuna hyper-parameter searches over the ordinary run machinery (`sweeps/NAME.yaml` → `ftbench search`)."""

from harness.search.driver import BEST_FILE, SEARCH_FILE, Search, TrialOutcome
from harness.search.space import Dimension, Sweep, suggest, sweep_path
from harness.search.study import load_sweep

__all__ = ["BEST_FILE", "SEARCH_FILE", "Dimension", "Search", "Sweep", "TrialOutcome", "load_sweep", "suggest",
           "sweep_path"]
