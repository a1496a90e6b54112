"""The local executor: every run in a fresh child process, N at a time, one GPU per job on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness import store
from harness.grid import RunSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FINISHED = store.STATUSES


@dataclass
class Running:
    spec: RunSpec
    directory: Path
    claim: store.Claim
    proc: subprocess.Popen
    gpu: int | None
    started: float = field(default_factory=time.monotonic)
    task: int | None = None
    #: why a monitor stopped this run early (it is then recorded `pruned`)
    stopped: str | None = None


def gpu_count() -> int:
    """GPUs visible to this process (0 without CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


class LocalExecutor:
    """Runs RunSpecs on this machine.

    Args:
        workers: runs at once; default one per GPU, or 1 on CPU.
        force: rerun finished runs (the old directory is archived, never deleted).
        retry_failed: rerun runs whose status is failed/oom/diverged (archived first).
        root: results root (default $FTBENCH_RESULTS or ./results).
    """

    def __init__(self, *, workers: int | None = None, force: bool = False, retry_failed: bool = False,
                 root: Path | None = None, console: Console | None = None, poll_s: float = 0.5):
        self.gpus = gpu_count()
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, but got workers={workers}")
        self.workers = workers or max(1, self.gpus)
        self.force, self.retry_failed = force, retry_failed
        self.root = root or store.results_root()
        self.console = console or Console(stderr=True)
        self.poll_s = poll_s

    def run(self, specs: list[RunSpec], *, plugins: list[str] = (), experiment_dir: str | None = None,
            monitor: Callable[[RunSpec, Path], str | None] | None = None) -> list[dict]:
        """Run every spec not yet finished; wait for runs another sweep holds. Returns all results.

        `monitor(spec, run_dir)` is asked about each live run at every poll; a returned reason stops
        the run (SIGTERM) and records it `pruned` with that reason. Searches prune through it.
        """
        pending = list(specs)
        running: list[Running] = []
        free_gpus = list(range(self.gpus))
        start = time.monotonic()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True) as progress:
            overall = progress.add_task("runs", total=len(specs))
            done_ids: set[str] = set()
            executed = 0
            waiting_logged: set[str] = set()
            while pending or running:
                progressed = False
                for spec in list(pending):
                    if len(running) >= self.workers:
                        break
                    outcome = self._try_start(spec, plugins, experiment_dir, free_gpus)
                    if outcome == "locked":
                        note_waiting(self.console, spec, waiting_logged)
                        continue
                    pending.remove(spec)
                    progressed = True
                    if isinstance(outcome, Running):
                        outcome.task = progress.add_task(f"  {spec.slug}", total=None)
                        running.append(outcome)
                    else:
                        done_ids.add(spec.run_id)
                        progress.advance(overall)
                        self._print_line(spec, self._status(spec), "skipped (finished)", len(done_ids), len(specs))
                for job in list(running):
                    self._update(progress, job)
                    if job.proc.poll() is None:
                        if monitor is not None and job.stopped is None:
                            job.stopped = monitor(job.spec, job.directory)
                            if job.stopped:
                                job.proc.terminate()
                        continue
                    running.remove(job)
                    progressed = True
                    result = self._finish(job)
                    if job.gpu is not None:
                        free_gpus.append(job.gpu)
                    progress.remove_task(job.task)
                    progress.advance(overall)
                    done_ids.add(job.spec.run_id)
                    executed += 1
                    left = len(specs) - len(done_ids)
                    eta = (time.monotonic() - start) / executed * left  # wall time per run already reflects workers
                    self._print_line(job.spec, result["status"],
                                     f"{time.monotonic() - job.started:.1f}s" + (f", ETA {eta / 60:.1f} min" if left else ""),
                                     len(done_ids), len(specs))
                if not progressed:
                    time.sleep(self.poll_s)
        self.console.print(f"[dim]sweep finished in {time.monotonic() - start:.1f}s[/]")
        return [store.read_result(store.run_dir(s.experiment, s.run_id, self.root)) for s in specs]

    # -- one run ------------------------------------------------------------------------------------

    def _status(self, spec: RunSpec) -> str:
        return store.status_of(store.run_dir(spec.experiment, spec.run_id, self.root))

    def _try_start(self, spec, plugins, experiment_dir, free_gpus):
        claim, directory = claim_run(spec, self.root, force=self.force, retry_failed=self.retry_failed)
        if claim in ("locked", "skipped"):
            return claim
        store.prepare_run_dir(directory, {**spec.as_dict(), "plugins": list(plugins), "experiment_dir": experiment_dir})
        gpu = free_gpus.pop(0) if free_gpus else None
        threads = max(1, (os.cpu_count() or 1) // self.workers) if gpu is None and self.gpus == 0 and self.workers > 1 else None
        # the child holds the claim as long as it lives
        proc = start_run_process(directory, child_env(gpu=gpu, threads=threads), pass_fds=(claim.fd,))
        return Running(spec=spec, directory=directory, claim=claim, proc=proc, gpu=gpu)

    def _finish(self, job: Running) -> dict:
        """Record a result for a child that died without writing one (killed, segfault, OOM killer)."""
        try:
            result = store.read_result(job.directory)
            if result is None:
                result = record_without_result(job.spec, job.directory, job.proc.returncode, job.stopped)
            return result
        finally:
            job.claim.release()

    def _update(self, progress: Progress, job: Running) -> None:
        last = _last_json_line(job.directory / "metrics.jsonl")
        if last and "max_steps" in last:
            progress.update(job.task, total=last["max_steps"], completed=last["step"],
                            description=f"  {job.spec.slug} loss {last.get('loss') or float('nan'):.3f}")

    def _print_line(self, spec: RunSpec, status: str, note: str, done: int, total: int) -> None:
        self.console.print(status_line(spec, status, note, done, total))


def claim_run(spec: RunSpec, root: Path, *, force: bool, retry_failed: bool) -> tuple[store.Claim | str, Path]:
    """Claim a run for this sweep: (`"locked"`, dir) when another sweep holds it, (`"skipped"`, dir)
    when it is finished and not to be rerun, else (claim, dir), a finished run archived first."""
    directory = store.run_dir(spec.experiment, spec.run_id, root)
    claim = store.try_claim(spec.experiment, spec.run_id, root)
    if claim is None:
        return "locked", directory
    status = store.status_of(directory)
    rerun = force or (retry_failed and status in ("failed", "oom", "diverged"))
    if status in FINISHED and not rerun:
        claim.release()
        return "skipped", directory
    if status in FINISHED:
        store.archive(directory)
    return claim, directory


def note_waiting(console: Console, spec: RunSpec, logged: set[str]) -> None:
    """Say once per run that another sweep holds it."""
    if spec.run_id not in logged:
        logged.add(spec.run_id)
        console.print(f"[dim]… {spec.slug}: another sweep is running it; waiting[/]")


def status_line(spec: RunSpec, status: str, note: str, done: int, total: int) -> str:
    """`[3/25]       ok lora-r8-…  <run id>  12.3s, ETA 4.1 min` (rich markup): one line per finished run."""
    colour = {"ok": "green", "failed": "red", "oom": "red", "diverged": "yellow", "pruned": "blue"}.get(status, "white")
    return f"[{done}/{total}] [{colour}]{status:>8}[/] {spec.slug}  [dim]{spec.run_id}  {note}[/]"


def child_env(*, gpu: int | None = None, threads: int | None = None, project_root: Path = PROJECT_ROOT) -> dict:
    """The environment of a run process: this one's, quiet, pinned to `gpu` and/or `threads` CPU threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root), env.get("PYTHONPATH")]))
    env.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env["TQDM_DISABLE"] = "1"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def start_run_process(directory: Path, env: dict, pass_fds: tuple = ()) -> subprocess.Popen:
    """`python -m harness.run DIRECTORY`, its output appended to DIRECTORY/run.log."""
    with open(Path(directory) / "run.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "harness.run", str(directory)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, pass_fds=pass_fds)


def record_without_result(spec: RunSpec, directory: Path, returncode: int | None, stopped: str | None = None,
                          reason: str | None = None, extra_env: dict | None = None) -> dict:
    """Write (and return) the result.json of a run whose process ended without one: pruned by a
    monitor (`stopped`), SIGKILLed (`oom`, the kernel's OOM killer), or died otherwise (`failed`)."""
    status = "pruned" if stopped else "oom" if returncode == -9 else "failed"
    reason = stopped or reason or ("killed by SIGKILL (likely the kernel's out-of-memory killer)" if returncode == -9
                                   else f"run process exited with code {returncode} without writing a result")
    error = {"type": "Pruned" if stopped else "ProcessDied", "message": reason,
             "traceback_tail": _tail(Path(directory) / "run.log", 25)}
    result = store.make_result(spec.as_dict(), status=status, started_at=None, finished_at=None, metrics={},
                               env=dict(extra_env or {}), error=error)
    store.write_json_atomic(Path(directory) / "result.json", result)
    return result


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_json_line(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().decode(errors="replace").strip().splitlines()
        for line in reversed(lines):
            try:
                row = json.loads(line)
                if "max_steps" in row:
                    return row
            except json.JSONDecodeError:
                continue
    except OSError:
        pass
    return None
