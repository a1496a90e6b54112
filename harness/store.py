"""The results store: one directory per run, claimed by a lock, finished by an atomic result.json."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.metrics import METRICS
from harness.schema import RUN_KEYS

RESULTS_ENV = "FTBENCH_RESULTS"

#: the first contract's metric keys, then keys added later (null where they do not apply): both always
#: present in result.json, in this order; what each means is declared in harness/metrics.py
METRIC_KEYS = METRICS.keys("contract")
OPTIONAL_METRIC_KEYS = METRICS.keys("always")
#: set (to anything but "" or "0") in tests: a result with a metric no declaration covers is recorded as failed
STRICT_METRICS_ENV = "FTBENCH_STRICT_METRICS"
#: `pruned`: a search stopped the run early because its eval loss was not promising (a decision, not a failure)
STATUSES = ("ok", "failed", "oom", "diverged", "pruned")


#: beside a search's runs: its study name and storage URL (no password), for reports
SEARCH_FILE = "search.json"
#: in a run's folder: each scored example's figures, for intervals and paired comparisons in reports
#: ({"splits": {"validation"|"test": {"nll": [...], "tokens": [...]}}, "tasks": {task: per-document scores}})
EXAMPLES_FILE = "examples.json"


def results_root() -> Path:
    """Where results live: $FTBENCH_RESULTS or ./results."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def experiment_dir(experiment: str, root: Path | None = None) -> Path:
    return (root or results_root()) / experiment


def run_dir(experiment: str, run_id: str, root: Path | None = None) -> Path:
    return experiment_dir(experiment, root) / run_id


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_result(directory: Path) -> dict | None:
    """The run's result.json, or None for an unfinished run."""
    path = Path(directory) / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def status_of(directory: Path) -> str:
    """`new` (no directory), `unfinished`, or the recorded status."""
    directory = Path(directory)
    if not directory.exists():
        return "new"
    result = read_result(directory)
    return result["status"] if result else "unfinished"


@dataclass
class Claim:
    """An exclusive claim on one run, held through an flock on results/<exp>/.locks/<run_id>.lock.

    The kernel drops the lock when every process holding the file dies, so a SIGKILLed sweep
    never leaves a stale claim behind.
    """

    path: Path
    fd: int

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def try_claim(experiment: str, run_id: str, root: Path | None = None) -> Claim | None:
    """Take the run's lock without waiting; None when another sweep holds it."""
    lock_dir = experiment_dir(experiment, root) / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{run_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Claim(path=path, fd=fd)


def archive(directory: Path) -> Path:
    """Move a finished run aside (never delete it) before a forced rerun; returns the new path."""
    directory = Path(directory)
    target = directory.parent / ".archive" / f"{directory.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name}.{n}")
    shutil.move(str(directory), str(target))
    return target


def prepare_run_dir(directory: Path, spec: dict) -> None:
    """Create a clean run directory holding spec.yaml (an unfinished one is wiped first)."""
    directory = Path(directory)
    if directory.exists():
        if read_result(directory) is not None:
            raise FileExistsError(f"{directory} is finished; archive it before rerunning")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def iter_results(experiment: str, root: Path | None = None) -> list[dict]:
    """Every finished run of an experiment, ordered by start time."""
    base = experiment_dir(experiment, root)
    if not base.is_dir():
        return []
    results = [r for d in sorted(base.iterdir()) if d.is_dir() and not d.name.startswith(".")
               for r in [read_result(d)] if r is not None]
    return sorted(results, key=lambda r: r.get("started_at") or "")


def find_run(run: str, root: Path | None = None, prefer: str | None = None) -> Path | None:
    """Find a run directory by full run id, slug or hash, in experiment `prefer` first, then across
    experiments (the first match when a slug names several runs)."""
    found = find_runs(run, root, prefer)
    return found[0] if found else None


def find_runs(run: str, root: Path | None = None, prefer: str | None = None) -> list[Path]:
    """The run directories that a run id, slug or hash names in the first experiment holding any
    (`prefer` first): several when a slug was run under different settings."""
    base = root or results_root()
    if not base.is_dir():
        return []
    experiments = sorted(base.iterdir())
    if prefer is not None and (base / prefer).is_dir():
        experiments.insert(0, base / prefer)
    for exp in experiments:
        if not exp.is_dir():
            continue
        found = [d for d in sorted(exp.iterdir()) if d.is_dir() and not d.name.startswith(".") and (
            d.name == run or d.name.rsplit("-", 1)[0] == run or d.name.endswith(f"-{run}"))]
        exact = [d for d in found if d.name == run]
        if found:
            return exact or found
    return []


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def read_examples(directory: Path) -> dict | None:
    """A run's per-example scores (`EXAMPLES_FILE`), or None when it has none (or an unreadable one)."""
    path = Path(directory) / EXAMPLES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def load(experiment: str, root: Path | None = None):
    """All finished runs of `experiment` as a pandas DataFrame, one row per run.

    Columns: run_id, slug, status, error_type, error, started_at, finished_at, the spec flattened
    (`method.name`, `method.r`, `train.lr`, ...), the environment as `env.*` (`env.torch`,
    `env.git_sha`, ...), and each metric under its own name.
    """
    import pandas as pd

    rows = []
    for r in iter_results(experiment, root):
        row: dict[str, Any] = {
            "run_id": r["run_id"], "experiment": r["experiment"], "slug": r["slug"], "status": r["status"],
            "error_type": (r.get("error") or {}).get("type"), "error": (r.get("error") or {}).get("message"),
            "started_at": r.get("started_at"), "finished_at": r.get("finished_at"),
        }
        spec = r.get("spec") or {}
        row["settings"] = settings_key(spec)
        _flatten("", {k: v for k, v in spec.items() if k not in ("experiment", "run_id", "slug", "varied")}, row)
        _flatten("env", r.get("env") or {}, row)
        for key in METRIC_KEYS + OPTIONAL_METRIC_KEYS:
            row[key] = (r.get("metrics") or {}).get(key)
        for key, value in (r.get("metrics") or {}).items():
            row.setdefault(key, value)
        rows.append(row)
    return pd.DataFrame(rows)


def settings_key(spec: dict) -> str:
    """A short hash of what a run's spec sets apart from its seed, repeat (and tracking): runs of one slug
    with different keys were run under different settings, not as seeds of one configuration."""
    kept = {k: spec[k] for k in RUN_KEYS if k in spec and k not in ("seed", "repeat", "tracking")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def make_result(spec: dict, *, status: str, error: dict | None, metrics: dict, env: dict,
                started_at: str | None, finished_at: str | None, task_meta: dict | None = None) -> dict:
    """A result.json record with every contract key present (metrics missing → null)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, but got status={status!r}")
    strict = status == "ok" and os.environ.get(STRICT_METRICS_ENV, "") not in ("", "0")
    undeclared = METRICS.undeclared(metrics) if strict else []
    if undeclared:  # the run's figures are kept; the result says which keys need a declaration
        status, error = "failed", {"type": "UndeclaredMetric", "traceback_tail": "", "message": (
            f"metrics without a declaration in harness/metrics.py: {', '.join(undeclared)}")}
    return {
        "run_id": spec.get("run_id"), "experiment": spec.get("experiment"), "slug": spec.get("slug"),
        "status": status, "error": error, "spec": spec,
        "metrics": {**{key: None for key in METRIC_KEYS + OPTIONAL_METRIC_KEYS}, **metrics},
        "env": env, "started_at": started_at, "finished_at": finished_at,
        # task → {version, limit, num_fewshot} its `task.<task>.*` scores were computed with
        "task_meta": task_meta or {},
    }
