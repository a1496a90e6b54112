"""`make bench-ray`: what Ray adds to a sweep, on this machine.

Runs experiments/smoke.yaml (tiny model: full, LoRA, QLoRA; 3 seeds: 9 runs) three ways into fresh
results roots — the local executor with 1 worker, with 2 workers, and the Ray executor on a local
Ray instance with 2 CPUs (2 runs at once, 1 CPU each) — and prints each sweep's wall time. Then the
overhead per run: the same single run, one at a time, through each executor; Ray's overhead is the
driver-observed time of a Ray run minus a local one (actor start, scratch folder, polling, files
back). `make bench-ray` runs it in a loopback-only network namespace when it can (as the tests do).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml"


def _specs(seeds: list[int]):
    from harness.config import load_experiment
    from harness.grid import expand

    experiment = load_experiment(EXPERIMENT)
    return expand(experiment.model_copy(update={"grid": {**experiment.grid, "seeds": seeds}}))


def _timed(executor, specs) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    results = executor.run(specs)
    return time.perf_counter() - t0, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the smoke grid (3 methods each)")
    parser.add_argument("--single", type=int, default=3, help="single runs timed one at a time per executor")
    args = parser.parse_args(argv)

    import ray
    from rich.console import Console

    from harness.executor import LocalExecutor
    from harness.ray_executor import RayExecutor

    quiet = Console(stderr=True, quiet=True)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    init_s = time.perf_counter() - t0
    specs = _specs(list(range(args.seeds)))
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        arms = {
            "local, 1 worker": LocalExecutor(workers=1, root=root / "local1", console=quiet),
            "local, 2 workers": LocalExecutor(workers=2, root=root / "local2", console=quiet),
            "ray, 2 workers": RayExecutor(resources={"cpus": 1}, root=root / "ray", console=quiet),
        }
        print(f"smoke sweep: {len(specs)} runs (experiments/smoke.yaml × {args.seeds} seeds), tiny model, CPU")
        print(f"  ray.init (local instance, 2 CPUs): {init_s:.1f}s")
        for name, executor in arms.items():
            wall, results = _timed(executor, specs)
            statuses = sorted({r["status"] for r in results})
            print(f"  {name:<17} {wall:6.1f}s  ({wall / len(specs):.1f}s per run; statuses {statuses})")

        single = _specs([100 + i for i in range(args.single)])
        single = [s for s in single if s.config.method.name == "lora"] or single
        local, ray_ex = (LocalExecutor(workers=1, root=root / "single_local", console=quiet),
                         RayExecutor(resources={"cpus": 2}, root=root / "single_ray", console=quiet))
        local_s = [_timed(local, [s])[0] for s in single]
        ray_s = [_timed(ray_ex, [s])[0] for s in single]
        print(f"one LoRA run at a time ({len(single)} each, both with 2 CPU threads):")
        print(f"  local: median {statistics.median(local_s):.2f}s  ray: median {statistics.median(ray_s):.2f}s"
              f"  → Ray adds {statistics.median(ray_s) - statistics.median(local_s):+.2f}s per run")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
