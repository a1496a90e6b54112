"""One run, in its own process: model → method → data → train → measure → result.json.

Usage (by the executor): `python -m harness.run RUN_DIR`.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m harness.run`: tied to the sweep before the heavy imports below
    import os as _os

    from harness.lifeline import hold

    hold(via_server="LOCAL_RANK" in _os.environ)  # a torchrun rank: the sweep is its agent's parent

import logging
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import yaml

from harness import distributed, store
from harness.config import RUN_KEYS, build_run_config
from harness.contention import Watch, check_exclusive
from harness.lifeline import die_with_parent, hold, terminate_as_exit
from harness.plugins import import_plugins


#: the timed phases of a run; what its wall time holds besides them is `overhead_s`
PHASES = ("load_s", "train_s", "eval_s", "test_s", "task_eval_s", "merge_s", "latency_s", "objective_s")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the sweep that started us dies, so no orphan run keeps going."""
    die_with_parent()


def classify(exc: BaseException) -> str:
    """Map an exception to a result status."""
    from harness.train import Diverged

    if isinstance(exc, Diverged):
        return "diverged"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "oom"
    return "failed"


def error_record(exc: BaseException) -> dict:
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()[-25:]
    return {"type": type(exc).__name__, "message": str(exc), "traceback_tail": "\n".join(tail)}


def execute(run_dir: Path) -> dict:
    """Run the spec in `run_dir` and write result.json, whatever the run raised. Returns it.

    Only an interrupt (Ctrl-C, SystemExit) leaves the run without a result, so the next sweep
    reruns it instead of skipping it as finished.
    """
    run_dir = Path(run_dir)
    raw = yaml.safe_load((run_dir / "spec.yaml").read_text())
    watch = Watch().start()  # before the run touches its GPU: what is on it then is someone else's
    wall0 = time.perf_counter()
    started = now()
    metrics: dict = {key: None for key in store.METRIC_KEYS}
    status, error, device, tracker = "ok", None, None, None
    try:
        check_exclusive(watch.members())  # --exclusive: a busy GPU fails the run here, before the model loads
        import_plugins(raw.get("plugins") or [], base=raw.get("experiment_dir"))
        spec = build_run_config({k: raw[k] for k in RUN_KEYS if k in raw},
                                file=str(run_dir / "spec.yaml"))
        if raw.get("batch"):  # `micro_batch: auto`, as the plan settled it for this machine
            spec = spec.model_copy(update={"train": spec.train.with_batch(int(raw["batch"]["micro_batch"]))})
        from harness import tracking

        # a distributed run: rank 0 alone tracks and writes the run directory, the others a scratch folder
        tracker = tracking.start(spec.tracking, experiment=raw["experiment"], slug=raw["slug"],
                                 method=spec.method.name, spec=raw, run_dir=run_dir) if distributed.is_main() \
            else tracking.Tracker()
        from harness.recipe import train_and_measure

        reference = run_dir.parent / raw["reference"] if raw.get("reference") else None
        device = train_and_measure(spec, distributed.scratch_dir(run_dir), metrics, tracker, reference=reference,
                                   reads=raw.get("reads"))
    except Exception as exc:  # every failure is recorded and the sweep goes on
        status, error = classify(exc), error_record(exc)
        logging.getLogger("ftbench").error("run %s: %s", status, error["traceback_tail"])
    metrics["wall_s"] = round(time.perf_counter() - wall0, 3)
    if not distributed.is_main():  # rank 0 records the run; this rank's output is in run.log
        distributed.discard_scratch(run_dir)
        return {"status": status, "error": error, "metrics": metrics}
    if status == "ok":
        metrics["overhead_s"] = round(metrics["wall_s"] - sum(metrics.get(k) or 0.0 for k in PHASES), 3)
    contention = watch.stop(device)
    task_meta = {}
    if status == "ok":
        from harness.tasks.base import task_key

        task_meta = {t: task_key(t, spec.eval.limit, spec.eval.num_fewshot) for t in spec.eval.tasks
                     if any(k.startswith(f"task.{t}.") for k in metrics)}
    env = {**_env(device, raw), **contention}
    result = store.make_result(raw, status=status, error=error, metrics=metrics, env=env,
                               started_at=started, finished_at=now(), task_meta=task_meta)
    if status == "ok":  # the kept weights' README.md (a Hub model card), before the tracker uploads the folder
        from harness.modelcard import write_card

        write_card(run_dir, result)
    if tracker is not None:
        try:
            tracker.summary(metrics)
            tracker.finish(status)
        except Exception as exc:  # the tracker must never cost us the result
            logging.getLogger("ftbench").warning("tracker failed: %s", exc)
    store.write_json_atomic(run_dir / "result.json", result)
    return result


def _env(device, raw: dict) -> dict:
    from harness.measure import env_info
    from harness.models import runtime_env

    return {**env_info(device), **runtime_env(raw, device), **distributed.env(device)}


def forked_main(directory: str, env: dict, inherited: list[int]) -> None:
    """`main` in a child of the launcher's fork server (`harness.launch`): take this run's
    environment and thread count, write to DIRECTORY/run.log like a fresh process, then run.
    `inherited` are the descriptors it holds while it lives (the run's claim)."""
    hold(env, via_server=True)  # first: a sweep that died while the server forked us leaves nobody to run for
    import gc

    gc.freeze()  # the server's imported objects: never collected, so each collection skips them
    os.environ.clear()
    os.environ.update(env)
    with open(Path(directory) / "run.log", "ab") as log, open(os.devnull, "rb") as null:
        os.dup2(null.fileno(), 0)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    threads = env.get("OMP_NUM_THREADS")
    if threads:  # the server's OpenMP read its environment at import; this run's count is set here
        import torch

        torch.set_num_threads(int(threads))
    import transformers

    level = logging.getLevelName(env.get("TRANSFORMERS_VERBOSITY", "warning").upper())
    transformers.logging.set_verbosity(level if isinstance(level, int) else logging.WARNING)
    sys.exit(main([directory]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    terminate_as_exit()  # SIGTERM (a pruned run, a stopped sweep) runs `finally` blocks: temp folders go
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = execute(Path(argv[0]))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
