"""`make bench-search`: TPE + median pruning against the full `rank_alpha` grid, on one budget of training steps.

The grid arm runs experiments/rank_alpha.yaml as shipped (LoRA r ∈ {4, 8, 16, 32} × alpha ∈ {r, 2r},
20 steps each: 160 training steps). The search arm searches the same two dimensions (any r in
[4, 32], alpha ∈ {r, 2r}) on the same base with TPE and a median pruner fed every 5 steps, and
stops asking for trials once its runs have trained as many steps as the grid's (a pruned run counts
the steps it reached; a repeated point costs nothing, its run is reused). It prints the best eval
loss each arm found and the steps and wall time each used. Both arms write to a fresh results root.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

SPACE = {"method.r": {"type": "int", "low": 4, "high": 32, "log": True},
         "method.alpha": {"type": "categorical", "choices": ["r", "2*r"]}}


def _steps_of(record: dict, run_dir: Path) -> int:
    """Training steps a run actually took: all of them when finished, the last logged step when pruned."""
    if record["status"] == "ok":
        return int(record["spec"]["train"]["max_steps"])
    steps = [json.loads(line).get("step", 0) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if line.strip()] if (run_dir / "metrics.jsonl").is_file() else []
    return max(steps, default=0)


def _used(root: Path, experiment: str) -> tuple[int, float | None, int]:
    """(steps trained, best eval loss, runs) over an experiment's run records."""
    from harness import store

    steps, best, runs = 0, None, 0
    for record in store.iter_results(experiment, root):
        runs += 1
        steps += _steps_of(record, store.run_dir(experiment, record["run_id"], root))
        loss = (record.get("metrics") or {}).get("eval_loss")
        if record["status"] == "ok" and loss is not None and (best is None or loss < best):
            best = loss
    return steps, best, runs


def grid_arm(root: Path, experiment: Path) -> dict:
    from harness.cli import main as cli

    start = time.perf_counter()
    code = cli(["run", str(experiment), "--results", str(root)])
    wall = time.perf_counter() - start
    steps, best, runs = _used(root, "rank_alpha")
    return {"arm": "grid (8 points)", "code": code, "runs": runs, "steps": steps, "best_eval_loss": best, "wall_s": wall}


def search_arm(root: Path, experiment: Path, budget: int, work: Path, seed: int) -> dict:
    from harness.search import Search, load_sweep
    from harness.search.study import default_storage

    sweep_file = work / "bench_search.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "experiment": str(experiment), "set": ["eval.every_steps=5"], "space": SPACE, "objectives": ["eval_loss"],
        "sampler": {"name": "tpe", "seed": seed, "n_startup_trials": 4},
        "pruner": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 5}, "n_trials": 1000,
    }, sort_keys=False))
    sweep = load_sweep(sweep_file)
    search = Search(sweep, storage_url=default_storage(root, sweep.name), root=root)
    start, trials = time.perf_counter(), 0
    while _used(root, sweep.name)[0] < budget and trials < 60:
        trials += 1
        search.run(n_trials=trials, log=lambda line: print("  search", line, flush=True))
    wall = time.perf_counter() - start
    steps, best, runs = _used(root, sweep.name)
    pruned = sum(1 for t in search.study.trials if t.state.name == "PRUNED")
    return {"arm": f"TPE + median pruning ({trials} trials, {pruned} pruned)", "code": 0, "runs": runs, "steps": steps,
            "best_eval_loss": best, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", default="experiments/rank_alpha.yaml")
    parser.add_argument("--budget-ratio", type=float, default=1.0, help="search budget as a fraction of the grid's steps")
    parser.add_argument("--seed", type=int, default=0, help="TPE seed")
    parser.add_argument("--results", default=None, help="results root (default: a fresh temporary folder)")
    args = parser.parse_args()
    experiment = Path(args.experiment).resolve()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = Path(args.results or tmp)
        grid = grid_arm(root, experiment)
        print(f"grid done: {grid}", flush=True)
        budget = int(grid["steps"] * args.budget_ratio)
        search = search_arm(root, experiment, budget, Path(tmp), args.seed)
    print(f"\nsearch vs grid on {experiment.name}, budget {budget} training steps:")
    for arm in (grid, search):
        loss = "–" if arm["best_eval_loss"] is None else f"{arm['best_eval_loss']:.4f}"
        print(f"  {arm['arm']:<42} best eval loss {loss}   runs {arm['runs']:>3}   steps {arm['steps']:>4}   "
              f"wall {arm['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
