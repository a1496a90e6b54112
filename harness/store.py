"""The results store: one directory per run, claimed by a lock, finished by an atomic result.json."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError
from harness.inputs import check_name, inside
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
#: how the store reads a run directory besides a recorded status (never written into a result.json): `new` (no
#: directory), `unfinished` (no result.json) and `damaged` (a result.json that cannot be read or validated:
#: treated as unfinished, archived and rerun by the next sweep)
NEW, UNFINISHED, DAMAGED = "new", "unfinished", "damaged"


#: beside a search's runs: its study name and storage URL (no password), for reports
SEARCH_FILE = "search.json"
#: in a run's folder: each scored example's figures, for intervals and paired comparisons in reports
#: ({"splits": {"validation"|"test": {"nll": [...], "tokens": [...]}}, "tasks": {task: per-document scores}})
EXAMPLES_FILE = "examples.json"


def results_root() -> Path:
    """Where results live: $FTBENCH_RESULTS or ./results."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def experiment_dir(experiment: str, root: Path | None = None) -> Path:
    """`root/<experiment>`.

    Raises:
        ConfigError: `experiment` is not one safe folder name (`harness.inputs.check_name`), or the path
            would leave the root.
    """
    check_name(experiment, field="experiment")
    return inside(root or results_root(), experiment, field="experiment")


def run_dir(experiment: str, run_id: str, root: Path | None = None) -> Path:
    """`root/<experiment>/<run_id>`, both checked to be one folder name inside the root.

    Raises:
        ConfigError: a name that is not one folder name, or a path that would leave the root.
    """
    return inside(experiment_dir(experiment, root), run_id, field="run id")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over `path`.

    Raises:
        OSError: the file could not be written (a full disk, a read-only folder); the temp file is removed
            and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def result_problem(data: Any) -> str | None:
    """Why a parsed result.json is not a record the store can use (None: it is one)."""
    if not isinstance(data, dict):
        return f"is not a JSON object but {type(data).__name__} ({json.dumps(data, default=str)[:40]})"
    missing = [f"`{key}`" for key in ("run_id", "status", "spec") if key not in data]
    if missing:
        return f"has no {', '.join(missing)}"
    if data["status"] not in STATUSES:
        return f"has an unknown status {str(data['status'])[:40]!r} (known: {', '.join(STATUSES)})"
    if not isinstance(data["run_id"], str):
        return f"has a `run_id` that is not a string ({str(data['run_id'])[:40]})"
    for key in ("spec", "metrics", "env", "error"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"has a `{key}` that is not a JSON object"
    if data["spec"] is None:
        return "has no `spec`"
    return None


def inspect(directory: Path) -> tuple[dict | None, str | None]:
    """Read a run directory's result.json: (the record, None) for a finished run, (None, why) for a damaged
    one, (None, None) when it has none (an unfinished run). Never raises."""
    path = Path(directory) / "result.json"
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as exc:
        return None, f"result.json cannot be read: {exc.strerror or exc}"
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, f"result.json is not UTF-8 text ({len(raw)} bytes)"
    except ValueError as exc:  # json.JSONDecodeError
        return None, f"result.json is not valid JSON ({'empty file' if not raw.strip() else exc})"
    except RecursionError:
        return None, "result.json is nested too deeply"
    problem = result_problem(data)
    return (None, f"result.json {problem}") if problem else (data, None)


def read_result(directory: Path) -> dict | None:
    """The run's result.json, or None for an unfinished or damaged run (`inspect` says which)."""
    return inspect(directory)[0]


def status_of(directory: Path) -> str:
    """`new` (no directory), `unfinished`, `damaged`, or the recorded status."""
    directory = Path(directory)
    if not directory.exists():
        return NEW
    result, damage = inspect(directory)
    return result["status"] if result else DAMAGED if damage else UNFINISHED


@dataclass(frozen=True)
class Incomplete:
    """A run directory without a usable record: `state` is `unfinished` or `damaged`, `reason` says why."""

    directory: Path
    state: str
    reason: str

    @property
    def run_id(self) -> str:
        return self.directory.name

    @property
    def slug(self) -> str:
        return self.directory.name.rsplit("-", 1)[0]


def incomplete(experiment: str, root: Path | None = None) -> list[Incomplete]:
    """Every run directory of an experiment that `iter_results` leaves out: damaged or unfinished (a run in
    progress, or one whose process or sweep died), by run id."""
    out = []
    for directory in _run_dirs(experiment_dir(experiment, root)):
        result, damage = inspect(directory)
        if result is None:
            out.append(Incomplete(directory, DAMAGED if damage else UNFINISHED, damage or "no result.json"))
    return out


def check_writable(directory: Path, flag: str = "--results") -> None:
    """Make sure results can be written under `directory` before anything starts, creating nothing: a probe
    file is made (and removed at once) in it or, when it does not exist yet, in the nearest folder above.

    Raises:
        ConfigError: it (or a folder above it) is a file, or it cannot be written (a read-only file
            system, permissions).
    """
    directory = Path(directory)
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".ftbench-write-check-", dir=existing)
            os.close(fd)
            os.unlink(probe)
            return
        except OSError as exc:
            problem = f"it cannot be written: {exc.strerror or exc}"
    raise ConfigError.one("", flag, f"cannot keep results in {directory}: {problem}; pass another folder with "
                          f"`--results DIR` (or $FTBENCH_RESULTS)")


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
    path = inside(lock_dir, f"{run_id}.lock", field="run id")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Claim(path=path, fd=fd)


def archive(directory: Path) -> Path:
    """Move a run directory aside (never delete it) before a rerun: a finished run (`--force`,
    `--retry-failed`), or an unfinished or damaged one; returns the new path."""
    directory = Path(directory)
    target = directory.parent / ".archive" / f"{directory.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name}.{n}")
    shutil.move(str(directory), str(target))
    return target


def prepare_run_dir(directory: Path, spec: dict) -> Path | None:
    """Create a clean run directory holding spec.yaml. Whatever is there already (an unfinished or damaged
    run; a finished one the caller chose to rerun) is archived first, never deleted: returns where it went."""
    directory = Path(directory)
    moved = archive(directory) if directory.exists() else None
    directory.mkdir(parents=True)
    (directory / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return moved


def _run_dirs(base: Path) -> list[Path]:
    """The run directories under an experiment folder (not .locks/.archive); none when it is not a folder."""
    try:
        return [d for d in sorted(base.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return []


def iter_results(experiment: str, root: Path | None = None) -> list[dict]:
    """Every finished run of an experiment with a readable record, ordered by start time (`incomplete`
    lists the others)."""
    results = [r for d in _run_dirs(experiment_dir(experiment, root)) for r in [read_result(d)] if r is not None]
    return sorted(results, key=lambda r: str(r.get("started_at") or ""))


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


def match_runs(run: str, root: Path | None = None, experiment: str | None = None) -> list[Path]:
    """Every run directory that a run id, slug or hash names, in `experiment` or across all experiments
    (ids leave the experiment out: two experiments may hold the same one). Exact ids win over slugs/hashes."""
    base = root or results_root()
    experiments = [experiment_dir(experiment, base)] if experiment is not None else _dirs(base)
    found = [d for exp in experiments for d in _run_dirs(exp)
             if d.name == run or d.name.rsplit("-", 1)[0] == run or d.name.endswith(f"-{run}")]
    return [d for d in found if d.name == run] or found


def _dirs(base: Path) -> list[Path]:
    try:
        return [d for d in sorted(base.iterdir()) if d.is_dir()]
    except OSError:
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
            "run_id": r["run_id"], "experiment": r.get("experiment") or experiment,
            "slug": r.get("slug") or r["run_id"].rsplit("-", 1)[0], "status": r["status"],
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
