"""The local executor: every run in a child process of its own, N at a time, one GPU per job on CUDA.

The claim → start → skip → watch → record loop is `harness.executor_loop.Executor`'s; this module
supplies only "start a claimed run as a child process here, and watch it"."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness import distributed, store
from harness.contention import EXCLUSIVE_ENV, LAUNCHED_ENV, SWEEP_CORES_ENV, SWEEP_ENV, sweep_token
from harness.errors import ConfigError
from harness.executor_loop import (FINISHED, Executor, Job, Monitor, claim_run, last_progress, note_waiting,
                                   oom_evidence, record_without_result, status_line)
from harness.grid import RunSpec
from harness.launch import ForkedRun, launcher_for, start_fork, start_process, warm_up
from harness.lifeline import PARENT_ENV

__all__ = ["FINISHED", "LocalExecutor", "Running", "child_env", "claim_run", "gpu_count", "note_waiting",
           "record_without_result", "status_line"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Running(Job):
    """A run in a child process of this one."""

    proc: subprocess.Popen | ForkedRun
    #: the GPUs handed to it (all of a distributed run's at once)
    gpus: tuple[int, ...] = ()
    #: ranks of a distributed run (torchrun), else None
    processes: int | None = None


def gpu_count() -> int:
    """GPUs visible to this process (0 without CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


class LocalExecutor(Executor):
    """Runs RunSpecs on this machine, each in a fresh `python -m harness.run` child process.

    Args:
        workers: runs at once; default one per GPU, or 1 on CPU.
        force: rerun finished runs (the old directory is archived, never deleted).
        retry_failed: rerun runs whose status is failed/oom/diverged (archived first).
        root: results root (default $FTBENCH_RESULTS or ./results).
        exclusive: refuse to start a run on a GPU another process uses (recorded failed, with the
            reason); default on when there are GPUs.
    """

    def __init__(self, *, workers: int | None = None, force: bool = False, retry_failed: bool = False,
                 root: Path | None = None, console: Console | None = None, poll_s: float = 0.5,
                 exclusive: bool | None = None):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, but got workers={workers}")
        super().__init__(force=force, retry_failed=retry_failed, root=root, console=console, poll_s=poll_s)
        self.gpus = gpu_count()
        self.workers = workers or max(1, self.gpus)
        self.exclusive = self.gpus > 0 if exclusive is None else exclusive
        # the runs of this sweep know each other by it: their CPU is the sweep's own, not contention
        self.sweep = sweep_token()
        # a CPU sweep fills every core; a GPU run keeps about one host thread busy
        self.sweep_cores = None if self.gpus == 0 else min(os.cpu_count() or 1, self.workers)
        # one job per GPU, shared by every `run` call on this executor
        self._free_gpus, self._gpu_lock = list(range(self.gpus)), threading.Lock()
        # CPU: each run a fork of one warm interpreter (no ~13 s of imports per run); GPU: fresh ones
        self.launcher = launcher_for(self.gpus)
        if self.launcher == "fork":
            warm_up(self._env())

    def capacity(self) -> int:
        return self.workers

    def _env(self, gpu: int | None = None, threads: int | None = None) -> dict:
        return child_env(gpu=gpu, threads=threads, sweep=self.sweep, sweep_cores=self.sweep_cores,
                         exclusive=self.exclusive)

    def _start(self, spec: RunSpec, directory: Path, claim: store.Claim, plugins: list[str],
               experiment_dir: str | None) -> Running:
        store.prepare_run_dir(directory, {**spec.as_dict(), "plugins": list(plugins), "experiment_dir": experiment_dir})
        ranks = distributed.processes(spec.config.train) if spec.config.train.distributed != "none" else None
        if ranks and self.gpus and ranks > self.gpus:
            raise ConfigError.one("", f"[{spec.slug}] train.world_size", f"needs {ranks} GPUs at once, but this "
                                  f"machine has {self.gpus}")
        with self._gpu_lock:
            gpus = tuple(self._free_gpus.pop(0) for _ in range(min(ranks or 1, len(self._free_gpus))))
        if self.gpus == 0 and (self.workers > 1 or ranks):  # CPU: the cores split between runs, then ranks
            threads = max(1, (os.cpu_count() or 1) // self.workers // (ranks or 1))
        else:
            threads = None
        try:
            # the child holds the claim as long as it lives (a distributed run's: torchrun's agent)
            env = self._env(gpu=",".join(map(str, gpus)) or None, threads=threads)
            if ranks:  # torchrun starts fresh interpreters: no fork server
                proc = start_process(directory, env, pass_fds=(claim.fd,), processes=ranks)
            else:
                start = start_fork if self.launcher == "fork" else start_process
                proc = start(directory, env, pass_fds=(claim.fd,))
        except BaseException:
            self._free(gpus)
            raise
        return Running(spec, directory, claim, proc=proc, gpus=gpus, processes=ranks)

    def _fits(self, spec: RunSpec) -> bool:
        """A run's GPUs are handed over all at once: it waits until that many are free."""
        need = distributed.processes(spec.config.train)
        return self.gpus == 0 or need > self.gpus or len(self._free_gpus) >= need

    def _watch(self, jobs: list[Running], monitor: Monitor | None) -> Iterator[tuple[Running, dict]]:
        for job in list(jobs):
            if job.proc.poll() is None:
                job.rss_peak_mb = max(job.rss_peak_mb or 0.0, _rss_mb(job.proc.pid) or 0.0) or None
                if monitor is not None and job.stopped is None:
                    job.stopped = monitor(job.spec, job.directory)
                    if job.stopped:
                        job.proc.terminate()
                continue
            yield job, self._finish(job)

    def _finish(self, job: Running) -> dict:
        """The run's result; one recorded for a child that died without writing one (killed,
        segfault, OOM killer: `oom` only when the kernel's counters say so)."""
        try:
            result = store.read_result(job.directory)
            if result is None:
                code = job.proc.returncode
                oom = oom_evidence(job.oom_counts, job.rss_peak_mb) if code == -9 else None
                reason = distributed.failure_reason(job.directory / "run.log", job.processes) \
                    if job.processes and not job.stopped else None
                result = record_without_result(job.spec, job.directory, code, job.stopped, reason=reason, oom=oom)
            return result
        finally:
            if job.processes:
                distributed.remove_scratch(job.directory)
            job.claim.release()
            self._free(job.gpus)

    def _abandon(self, jobs: list[Running]) -> None:
        """Ctrl-C: stop the children, then let go of the claims (the child shares the lock: release
        it first and another sweep could start a run still training); their unfinished directories
        are archived and rerun by the next sweep."""
        for job in jobs:
            if job.proc.poll() is None:
                job.proc.terminate()
        for job in jobs:
            try:
                job.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
            job.claim.release()
            self._free(job.gpus)

    def _free(self, gpus: tuple[int, ...]) -> None:
        with self._gpu_lock:
            self._free_gpus.extend(gpus)

    def _view(self, total: int) -> "_LocalView":
        return _LocalView(self.console, total)


class _LocalView:
    """A bar for the sweep (with its ETA) and one per live run, with its step and loss."""

    def __init__(self, console: Console, total: int):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True)
        self.overall = self.progress.add_task("runs", total=total)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def add_run(self, spec: RunSpec) -> int:
        return self.progress.add_task(f"  {spec.slug}", total=None)

    def ended(self, job: Job) -> None:
        self.progress.remove_task(job.task)

    def update(self, done: int, queued: int, jobs: list[Job]) -> None:
        self.progress.update(self.overall, completed=done)
        for job in jobs:
            last = last_progress(job.directory / "metrics.jsonl")
            if last and "max_steps" in last:
                self.progress.update(job.task, total=last["max_steps"], completed=last["step"],
                                     description=f"  {job.spec.slug} loss {last.get('loss') or float('nan'):.3f}")


def _rss_mb(pid: int | None) -> float | None:
    """A live process's resident set size in MiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def child_env(*, gpu: int | str | None = None, threads: int | None = None, sweep: str | None = None,
              sweep_cores: float | None = None, exclusive: bool = False, project_root: Path = PROJECT_ROOT) -> dict:
    """The environment of a run process: this one's, quiet, pinned to `gpu` and/or `threads` CPU threads;
    `sweep` (the sweep's token), `sweep_cores` (cores it means to use) and `exclusive` (refuse a busy
    GPU) tell the run what is contention (`harness.contention`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root), env.get("PYTHONPATH")]))
    env.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env["TQDM_DISABLE"] = "1"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if sweep is not None:
        env[SWEEP_ENV] = sweep
    if sweep_cores is not None:
        env[SWEEP_CORES_ENV] = f"{sweep_cores:g}"
    else:
        env.pop(SWEEP_CORES_ENV, None)
    env[EXCLUSIVE_ENV] = "1" if exclusive else "0"
    env[PARENT_ENV] = str(os.getpid())  # the run exits at once when this process is gone (`harness.lifeline`)
    env[LAUNCHED_ENV] = f"{time.time():.3f}"  # built right before the process starts: its start-up counts from here
    return env
