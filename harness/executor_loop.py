"""The one executor loop: claim → start → skip → watch → record, for every executor.

An executor (`LocalExecutor`: child processes here; `RayExecutor`: actors on a cluster) supplies
only where a claimed run starts and how it is watched to its end (`Executor._start`,
`Executor._watch`); claims, skipping finished runs, `force`/`retry_failed`, the per-run status
lines, Ctrl-C and the returned results are this module's, so both keep the same guarantees."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from harness import store
from harness.grid import RunSpec

__all__ = ["Executor", "Job", "Monitor", "claim_run", "last_progress", "note_waiting", "record_without_result",
           "status_line"]

FINISHED = store.STATUSES
#: asked about each live run at every poll; a returned reason stops the run, recorded `pruned`
Monitor = Callable[[RunSpec, Path], "str | None"]


@dataclass
class Job:
    """A claimed run, started somewhere; executors subclass it with their handle on the run."""

    spec: RunSpec
    directory: Path
    claim: store.Claim
    started: float = field(default_factory=time.monotonic, kw_only=True)
    #: the live view's bar for this run
    task: int | None = field(default=None, kw_only=True)
    #: why a monitor stopped this run early (it is then recorded `pruned`)
    stopped: str | None = field(default=None, kw_only=True)


class Executor:
    """Runs RunSpecs: claims each, skips the finished, starts the rest, watches and records them.

    Subclasses implement `_start` (start a claimed run), `_watch` (one round of watching the live
    runs; the ended ones come back with their recorded result) and `_view` (the live progress view),
    and may override `capacity`, `_abandon` and `_note`.

    Args:
        force: rerun finished runs (the old directory is archived, never deleted).
        retry_failed: rerun runs whose status is failed/oom/diverged (archived first).
        root: results root (default $FTBENCH_RESULTS or ./results).
        poll_s: seconds between watching rounds when nothing happened.
    """

    def __init__(self, *, force: bool = False, retry_failed: bool = False, root: Path | None = None,
                 console: Console | None = None, poll_s: float = 0.5):
        self.force, self.retry_failed = force, retry_failed
        self.root = root or store.results_root()
        self.console = console or Console(stderr=True)
        self.poll_s = poll_s
        self._cancelled = threading.Event()

    # -- what an executor supplies --------------------------------------------------------------------

    def capacity(self) -> int:
        """Runs at once."""
        raise NotImplementedError

    def _start(self, spec: RunSpec, directory: Path, claim: store.Claim, plugins: list[str],
               experiment_dir: str | None) -> Job:
        """Start a claimed run (its directory not prepared yet) and return its job."""
        raise NotImplementedError

    def _watch(self, jobs: list[Job], monitor: Monitor | None) -> Iterator[tuple[Job, dict]]:
        """One round: ask `monitor` about live runs, and record the ended ones (result.json written,
        claim released), yielding each with its result as it is recorded (the loop then drops it
        from `jobs`, so an error later in the round never abandons a recorded run)."""
        raise NotImplementedError

    def _view(self, total: int):
        """The live view of one `run` call: a context manager with `add_run(spec) -> task`,
        `ended(job)` and `update(done, queued, jobs)`."""
        raise NotImplementedError

    def _abandon(self, jobs: list[Job]) -> None:
        """Ctrl-C (or any error) in the loop: stop the live runs and let go of their claims."""
        for job in jobs:
            job.claim.release()

    def _note(self, job: Job, eta_s: float | None) -> str:
        """What a run's status line says after its id: time taken, and the sweep's ETA."""
        return f"{time.monotonic() - job.started:.1f}s" + (f", ETA {eta_s / 60:.1f} min" if eta_s is not None else "")

    def _closing(self, view, elapsed_s: float) -> str | None:
        """The line printed when a `run` call is over (None: nothing)."""
        return f"[dim]sweep finished in {elapsed_s:.1f}s[/]"

    # -- the loop --------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Make every `run` in progress (on any thread) stop its runs and raise KeyboardInterrupt."""
        self._cancelled.set()

    def run(self, specs: list[RunSpec], *, plugins: list[str] = (), experiment_dir: str | None = None,
            monitor: Monitor | None = None) -> list[dict]:
        """Run every spec not yet finished; wait for runs another sweep holds. Returns all results.

        `monitor(spec, run_dir)` is asked about each live run at every poll; a returned reason stops
        the run (SIGTERM) and records it `pruned` with that reason. Searches prune through it.
        """
        pending, jobs = list(specs), []
        start, done, executed, waiting_logged = time.monotonic(), 0, 0, set()
        view = self._view(len(specs))
        with view:
            try:
                while pending or jobs:
                    if self._cancelled.is_set():
                        raise KeyboardInterrupt
                    progressed = False
                    for spec in list(pending):
                        if len(jobs) >= self.capacity():
                            break
                        claim, directory = claim_run(spec, self.root, force=self.force, retry_failed=self.retry_failed)
                        if claim == "locked":
                            note_waiting(self.console, spec, waiting_logged)
                            continue
                        pending.remove(spec)
                        progressed = True
                        if claim == "skipped":
                            done += 1
                            self.console.print(status_line(spec, store.status_of(directory), "skipped (finished)",
                                                           done, len(specs)))
                            continue
                        try:
                            job = self._start(spec, directory, claim, list(plugins), experiment_dir)
                        except BaseException:
                            claim.release()
                            raise
                        job.task = view.add_run(spec)
                        jobs.append(job)
                    for job, result in self._watch(jobs, monitor):
                        jobs.remove(job)
                        progressed = True
                        view.ended(job)
                        done += 1
                        executed += 1
                        left = len(specs) - done
                        # wall time per run already reflects the runs at once
                        eta = (time.monotonic() - start) / executed * left if left else None
                        self.console.print(status_line(job.spec, result["status"], self._note(job, eta), done, len(specs)))
                    view.update(done, len(pending), jobs)
                    if not progressed:
                        time.sleep(self.poll_s)
            except BaseException:
                self._abandon(jobs)
                raise
        closing = self._closing(view, time.monotonic() - start)
        if closing:
            self.console.print(closing)
        return [store.read_result(store.run_dir(s.experiment, s.run_id, self.root)) for s in specs]


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


def last_progress(path: Path) -> dict | None:
    """The last metrics.jsonl row that carries `max_steps` (a training step), read from the file's tail."""
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


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
