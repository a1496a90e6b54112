"""The one executor loop: claim → start → skip → watch → record, for every executor.

An executor (`LocalExecutor`: child processes here; `RayExecutor`: actors on a cluster) supplies
only where a claimed run starts and how it is watched to its end (`Executor._start`,
`Executor._watch`); claims, skipping finished runs, `force`/`retry_failed`, the per-run status
lines, Ctrl-C and the returned results are this module's, so both keep the same guarantees."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from harness import store
from harness.grid import RunSpec

__all__ = ["UNRECORDED", "Executor", "Job", "Monitor", "claim_run", "last_progress", "note_waiting", "oom_evidence",
           "oom_kill_counts", "record", "record_without_result", "status_line", "store_error_message"]

FINISHED = store.STATUSES
#: set (in memory only) on a result the sweep could not write: the message; the run stays unfinished on disk
UNRECORDED = "unrecorded"
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
    #: the kernel's OOM-kill counters when the run started: a SIGKILL is `oom` only if one rose
    oom_counts: dict = field(default_factory=lambda: oom_kill_counts(), kw_only=True)
    #: the largest resident set size (MiB) seen while watching the run: the evidence when no counter can be read
    rss_peak_mb: float | None = field(default=None, kw_only=True)


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
        #: why this sweep stopped starting runs: a record it could not write (a full disk)
        self.store_error: str | None = None

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

    def _fits(self, spec: RunSpec) -> bool:
        """Whether `spec` can start now besides the live runs (a multi-GPU run waits for its GPUs)."""
        return True

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
                    if self.store_error and pending:  # the store cannot take records: start nothing more
                        self.console.print(f"[red]not starting {len(pending)} run(s): {escape(self.store_error)}[/]")
                        pending.clear()
                    progressed = False
                    for spec in list(pending):
                        if len(jobs) >= self.capacity() or not self._fits(spec):
                            break
                        try:
                            claim, directory = claim_run(spec, self.root, force=self.force,
                                                         retry_failed=self.retry_failed, log=self.console.print)
                        except OSError as exc:  # the store cannot take the claim or the archive: stop cleanly
                            self._store_failed(exc)
                            break
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
                        except OSError as exc:  # no room for its directory (a full disk): stop cleanly
                            claim.release()
                            self._store_failed(exc)
                            break
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
                        if result.get(UNRECORDED):
                            self.store_error = result[UNRECORDED]
                            self.console.print(status_line(job.spec, result["status"], f"NOT RECORDED: "
                                                           f"{escape(result[UNRECORDED])}; left unfinished", done, len(specs)))
                            continue
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
        if self.store_error:
            self.console.print(f"[red]the sweep stopped early: {escape(self.store_error)}. Runs without a result.json are "
                               f"unfinished: free space (or fix the folder) and run the sweep again to finish them.[/]")
        return [store.read_result(store.run_dir(s.experiment, s.run_id, self.root)) for s in specs]

    def _store_failed(self, exc: OSError) -> None:
        """A write to the results store failed: remember why (the path, and the disk when it is full)."""
        self.store_error = store_error_message(exc, self.root)
        self.console.print(f"[red]{escape(self.store_error)}[/]")


def store_error_message(exc: OSError, root: Path) -> str:
    """`could not write results/x/result.json: No space left on device (the disk holding results/ is full)`."""
    where = exc.filename or root
    text = f"could not write {where}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += f" (the disk holding {root} is full)"
    elif exc.errno == errno.EROFS:
        text += f" ({root} is on a read-only file system)"
    return text


def claim_run(spec: RunSpec, root: Path, *, force: bool, retry_failed: bool,
              log: Callable[[str], None] | None = None) -> tuple[store.Claim | str, Path]:
    """Claim a run for this sweep: (`"locked"`, dir) when another sweep holds it, (`"skipped"`, dir)
    when it is finished and not to be rerun, else (claim, dir). What is in the way of the rerun — a
    finished run to rerun, an unfinished or damaged one — is archived to `.archive/` first (never deleted);
    `log` hears of each archived unfinished or damaged directory."""
    directory = store.run_dir(spec.experiment, spec.run_id, root)
    claim = store.try_claim(spec.experiment, spec.run_id, root)
    if claim is None:
        return "locked", directory
    try:
        result, damage = store.inspect(directory)
        status = result["status"] if result else store.DAMAGED if damage else (
            store.UNFINISHED if directory.exists() else store.NEW)
        rerun = force or (retry_failed and status in ("failed", "oom", "diverged"))
        if status in FINISHED and not rerun:
            claim.release()
            return "skipped", directory
        if status != store.NEW:
            moved = store.archive(directory)
            if log is not None and status in (store.DAMAGED, store.UNFINISHED):
                log(f"[yellow]{spec.slug}: {status} run directory ({escape(damage or 'no result.json')}) archived "
                    f"to {escape(str(moved))}; running it again[/]")
    except BaseException:
        claim.release()
        raise
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
                          reason: str | None = None, extra_env: dict | None = None, oom: str | None = None) -> dict:
    """Write (and return) the result.json of a run whose process ended without one: pruned by a
    monitor (`stopped`), killed by the kernel's OOM killer (`oom`: the evidence, see `oom_evidence`),
    or died otherwise (`failed`; a signal from outside is error type `Killed`). A record that cannot be
    written is returned with `UNRECORDED` set (see `record`)."""
    killed = returncode is not None and (returncode < 0 or returncode == 128 + signal.SIGTERM)
    status = "pruned" if stopped else "oom" if oom and returncode == -signal.SIGKILL else "failed"
    if stopped or reason:
        message = stopped or reason
    elif status == "oom":
        message = f"killed by SIGKILL from the kernel's out-of-memory killer: {oom}"
    elif killed:
        name = _signal_name(-returncode if returncode < 0 else signal.SIGTERM)
        message = f"killed by {name} from outside the run" + (
            " (no sign of the kernel's out-of-memory killer: its OOM-kill counters did not rise)"
            if returncode == -signal.SIGKILL else "")
    else:
        message = f"run process exited with code {returncode} without writing a result"
    kind = "Pruned" if stopped else "Killed" if killed and status != "oom" and not reason else "ProcessDied"
    error = {"type": kind, "message": message, "traceback_tail": _tail(Path(directory) / "run.log", 25)}
    result = store.make_result(spec.as_dict(), status=status, started_at=None, finished_at=None, metrics={},
                               env=dict(extra_env or {}), error=error)
    return record(Path(directory), result)


def record(directory: Path, result: dict) -> dict:
    """Write a run's result.json for it and return the result; when the store cannot take it (a full disk),
    the run stays unfinished and the result comes back with `UNRECORDED` saying why (the sweep goes on)."""
    try:
        store.write_json_atomic(Path(directory) / "result.json", result)
    except OSError as exc:
        root = Path(directory).parent.parent
        return {**result, UNRECORDED: store_error_message(exc, root)}
    return result


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def oom_kill_counts() -> dict[str, int]:
    """The kernel's OOM-kill counters this process can read: the machine's (`/proc/vmstat` oom_kill) and its
    memory cgroup's (v2 `memory.events`, v1 `memory.oom_control`); empty when none can be read."""
    counts = {}
    try:
        cgroups = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        cgroups = []
    files = [("machine", Path("/proc/vmstat"))]
    for line in cgroups:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2
            files += [("cgroup", Path("/sys/fs/cgroup") / rel / "memory.events")]
        elif "memory" in controllers.split(","):  # cgroup v1 (the namespace's root when the path is not visible)
            files += [("cgroup", Path("/sys/fs/cgroup/memory") / rel / "memory.oom_control"),
                      ("cgroup", Path("/sys/fs/cgroup/memory/memory.oom_control"))]
    for source, path in files:
        if source in counts:
            continue
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    counts[source] = int(value)
        except (OSError, ValueError):
            continue
    return counts


def oom_evidence(before: dict[str, int] | None, rss_peak_mb: float | None = None,
                 limit_mb: float | None = None) -> str | None:
    """Why a SIGKILL of a run is the kernel's OOM killer's, or None when nothing says so: an OOM-kill counter
    rose since `before` (the run's start); with no counter readable, the run's memory was near the limit."""
    after = oom_kill_counts()
    rose = [f"{source} oom_kill {before[source]} → {n}" for source, n in after.items()
            if before and source in before and n > before[source]]
    if rose:
        return "the OOM-kill counter rose during the run (" + ", ".join(rose) + ")"
    if before and set(before) & set(after):
        return None  # counters read before and after, unchanged: someone else's SIGKILL
    limit_mb = limit_mb or _memory_limit_mb()
    if rss_peak_mb and limit_mb and rss_peak_mb >= 0.9 * limit_mb:
        return (f"no OOM-kill counter readable; the run's memory reached {rss_peak_mb:.0f} MiB of the "
                f"{limit_mb:.0f} MiB limit")
    return None


def _memory_limit_mb() -> float | None:
    """The memory this machine (or its cgroup, when lower) lets processes use, in MiB."""
    limits = []
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            limits.append(int(path.read_text().strip()) / 2**20)
        except (OSError, ValueError):
            continue
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


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
