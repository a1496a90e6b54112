"""Start a run's process: `python -m harness.run DIR` (a fresh interpreter), or a fork of a warm one.

A fresh interpreter spends ~13 s on this 2-core CPU importing torch, transformers, peft, wandb
and lm-eval before its run can start, on every run. `fork` launches instead ask a fork server
(`multiprocessing`'s "forkserver": one process started per sweep that imports those modules once)
for a child per run. The child is still a process of its own — own memory, own exit code, killed
with the sweep (the server exits when the sweep dies and the child is PDEATHSIG-ed with it) — and
it sees this run's environment; only what modules read from the environment at import time is
the server's (`child_env` without the per-run keys, set when the server starts).

CUDA is never touched by the server, but a GPU sweep still launches fresh interpreters: forking
after the CUDA driver is initialised is undefined, and a run's `CUDA_VISIBLE_DEVICES` must be in
place before it is. `FTBENCH_LAUNCHER=process` forces fresh interpreters everywhere.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from multiprocessing import reduction
from pathlib import Path
from unittest.mock import patch

from harness import distributed
from harness.errors import ConfigError

__all__ = ["LAUNCHER_ENV", "PRELOAD", "ForkedRun", "launcher_for", "start_fork", "start_process"]

LAUNCHER_ENV = "FTBENCH_LAUNCHER"
#: what every fine-tuning run imports; the server imports it once (lm-eval and trl only for the
#: runs that score tasks or train preferences, ~40 MB of RSS, a few seconds)
PRELOAD = ["torch", "transformers", "peft", "bitsandbytes", "wandb", "trl", "lm_eval.evaluator",
           "lm_eval.models.huggingface", "harness.run", "harness.recipe", "harness.train", "harness.tracking",
           "harness.lmeval"]
#: read by the preloaded modules at import time (tqdm, huggingface_hub): the server must start with them
_IMPORT_TIME_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")


def launcher_for(gpus: int) -> str:
    """`fork` on a CPU-only machine, `process` with GPUs or when `$FTBENCH_LAUNCHER=process`."""
    choice = os.environ.get(LAUNCHER_ENV, "").strip().lower()
    if choice not in ("", "fork", "process"):
        raise ConfigError.one("", f"${LAUNCHER_ENV}", f"must be `fork` or `process` (or unset), but got {choice!r}")
    if choice == "process" or gpus > 0 or sys.platform != "linux":
        return "process"
    return "fork"


def start_process(directory: Path, env: dict, pass_fds: tuple = (), processes: int | None = None) -> subprocess.Popen:
    """`python -m harness.run DIRECTORY`, its output appended to DIRECTORY/run.log; with `processes`, a
    distributed run: torchrun starting that many ranks of it (`harness.distributed.command`)."""
    argv = [sys.executable, "-m", "harness.run", str(directory)] if processes is None \
        else distributed.command(Path(directory), processes)
    with open(Path(directory) / "run.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, pass_fds=pass_fds)


class ForkedRun:
    """A run forked from the fork server, with the part of `subprocess.Popen`'s interface the
    executors use (`pid`, `poll`, `wait`, `terminate`, `kill`, `returncode`)."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self.process = process

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(f"run {self.pid}", timeout)
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


def start_fork(directory: Path, env: dict, pass_fds: tuple = ()) -> ForkedRun:
    """Fork the run from the warm server; `pass_fds` stay open in it (the run's claim)."""
    from harness.run import forked_main

    context = _server_context(env)
    process = context.Process(target=forked_main, args=(str(directory), env, [_Inherited(fd) for fd in pass_fds]),
                              name=f"ftbench-run:{Path(directory).name}", daemon=False)
    process.start()
    return ForkedRun(process)


class _Inherited:
    """A file descriptor that travels to the forked child (sent to the server over its socket)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _inherited_fd, (reduction.DupFd(self.fd),)


def _inherited_fd(dup) -> int:
    return dup.detach()


_context: multiprocessing.context.BaseContext | None = None


def _server_context(env: dict) -> multiprocessing.context.BaseContext:
    """The forkserver context, its server started (once per process) with the import-time keys of `env`."""
    global _context
    if _context is None:
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        # the server inherits this process's environment when it starts: these keys only for that moment
        with patch.dict(os.environ, {key: env[key] for key in _IMPORT_TIME_ENV if key in env}):
            forkserver.ensure_running()
        _context = context
    return _context


def warm_up(env: dict) -> None:
    """Start the fork server now (it imports while the sweep plans and claims)."""
    _server_context(env)
