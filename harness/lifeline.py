"""A run process's tie to the sweep that started it: die with it, never outlive it, clean up on SIGTERM.

Standard library only: `python -m harness.run` calls `hold` before its heavy imports, so a sweep killed
a moment after starting a run never leaves that run training on its own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["ORPHANED_EXIT", "PARENT_ENV", "die_with_parent", "hold", "orphaned", "terminate_as_exit"]

#: set by the executors (`harness.executor.child_env`): the pid of the process that launches the run
PARENT_ENV = "FTBENCH_PARENT_PID"
#: the exit code of a run process that found its sweep gone before it started (nobody is left to read it)
ORPHANED_EXIT = 75
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def orphaned(expected: int, via_server: bool = False) -> bool:
    """True when the launching process `expected` is no longer this one's parent (or, `via_server`, the
    parent of the fork server this one was forked from): it died and this process was re-parented."""
    parent = os.getppid()
    if not via_server:
        return parent != expected
    return _ppid_of(parent) != expected


def hold(env: dict | None = None, via_server: bool = False) -> None:
    """Arm "die with my parent", then exit at once (`ORPHANED_EXIT`) when the launcher named by
    `$FTBENCH_PARENT_PID` in `env` is already gone. Armed first, checked second: no moment is left in which
    the parent can die unnoticed. Without the variable (a run started by hand) only the first is done."""
    die_with_parent()
    expected = (os.environ if env is None else env).get(PARENT_ENV, "")
    if expected.isdigit() and orphaned(int(expected), via_server=via_server):
        os._exit(ORPHANED_EXIT)


def terminate_as_exit() -> None:
    """Make SIGTERM raise SystemExit(143), so `finally` blocks and context managers (temporary folders)
    run before the process ends, as they do for Ctrl-C."""
    def _exit(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
