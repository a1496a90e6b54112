"""Contention: whether something outside the sweep competed for a run's CPU or GPU while it was timed.

A run process starts a `Watch` first thing and stops it last; the watch samples, in a daemon
thread, the busy CPU time of the cores the run may use and the CPU time of the sweep's own
processes, so "others' CPU" is what the rest of the machine took from those cores. The sweep's
own processes are found by a token the executor puts in each run's environment (`FTBENCH_SWEEP`):
other runs of the same sweep (and their children), and the sweep process's descendants (its fork
server and the runs forked from it, whose /proc environ is the server's), are the sweep's own load,
not contention. On CUDA it also lists the other compute processes on the run's GPU (pynvml, else `nvidia-smi`).
`check_exclusive` refuses to start a run on a GPU another process uses (`--exclusive`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import psutil

__all__ = ["EVIDENCE_KEYS", "EXCLUSIVE_ENV", "GPU_SAMPLE_S", "GpuBusy", "LAUNCHED_ENV", "OTHERS_CPU_CORES_MAX",
           "SWEEP_CORES_ENV",
           "SWEEP_ENV", "Watch", "busy_gpu_reason", "check_exclusive", "gpu_processes", "sweep_token", "verdict",
           "visible_gpu"]

#: the sweep's token in a run's environment: processes that carry the same one are the sweep's own
SWEEP_ENV = "FTBENCH_SWEEP"
#: time.time() when the executor started the run's process (the run's `startup_s` counts from it)
LAUNCHED_ENV = "FTBENCH_LAUNCHED_AT"
#: cores the sweep means to keep busy (default: every core the run may use); the rest are spare
SWEEP_CORES_ENV = "FTBENCH_SWEEP_CORES"
#: "1": refuse to start a run on a GPU another process uses (`ftbench run --exclusive`)
EXCLUSIVE_ENV = "FTBENCH_EXCLUSIVE"
#: Mean cores that processes outside the sweep may keep busy, beyond the spare cores, before a run
#: is flagged contended. A CPU sweep sizes its runs' threads to fill the cores (the local executor
#: gives each of N workers cpu_count // N threads), so any core another process holds is taken from
#: one of the run's threads, and an OpenMP step waits for its slowest thread: half a core, kept busy
#: on average over the whole run, already stretches steps by a measurable amount. It is well above
#: what a quiet machine's daemons and kernel threads keep busy (a small fraction of a core) and below
#: one busy process (1 core), the smallest competitor that matters. The run's own CPU time against
#: threads × wall is recorded (`cpu_time_s`) but is not the rule: loading, evaluation and a GPU run's
#: waits lower it with no competitor at all.
OTHERS_CPU_CORES_MAX = 0.5
#: the `env` keys a watch writes (docs/results.md defines each): per-run evidence, not the environment
EVIDENCE_KEYS = ("cpu_time_s", "watched_s", "load_avg_start", "load_avg_end", "others_cpu_cores", "sweep_cpu_cores",
                 "spare_cores", "gpu_other_processes", "contended", "contention")
#: seconds between two listings of the GPU's processes (nvidia-smi costs ~0.1 s of CPU a call)
GPU_SAMPLE_S = 10.0


def sweep_token(pid: int | None = None) -> str:
    """`<pid>-<creation time in ms>` of a process (default: this one): unique to it on this machine."""
    proc = psutil.Process(pid)
    return f"{proc.pid}-{int(proc.create_time() * 1000)}"


def _token_pid(token: str | None) -> int | None:
    """The process that made `token`, when it is still that process (a pid is reused, its creation time not)."""
    try:
        pid, _ = token.split("-", 1)
        return int(pid) if sweep_token(int(pid)) == token else None
    except (AttributeError, ValueError, psutil.Error):
        return None


def _usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


# -- GPU processes ------------------------------------------------------------------------------------

class GpuBusy(RuntimeError):
    """Another process uses the run's GPU and the sweep runs with `--exclusive`."""


def visible_gpu(environ: Mapping[str, str] = os.environ) -> str | None:
    """The run's GPU as NVML names it: the first entry of CUDA_VISIBLE_DEVICES (an index in NVML's
    PCI-bus order, or a `GPU-…` UUID), "0" when unset; None when no GPU is visible or it is a MIG
    slice (whose processes NVML does not list per slice)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return "0"
    first = value.split(",")[0].strip()
    if not first or first.startswith(("-", "MIG")):
        return None
    return first


def gpu_processes(gpu: str | None = None) -> list[dict] | None:
    """Compute processes on GPU `gpu` (default: the run's, `visible_gpu()`), as [{pid, used_mb}];
    None when that cannot be known (no GPU, no driver, neither pynvml nor nvidia-smi)."""
    gpu = visible_gpu() if gpu is None else gpu
    if gpu is None:
        return None
    listed = _nvml_processes(gpu)
    return listed if listed is not None else _smi_processes(gpu)


def _nvml_processes(gpu: str) -> list[dict] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = (pynvml.nvmlDeviceGetHandleByUUID(gpu) if gpu.startswith("GPU-")
                      else pynvml.nvmlDeviceGetHandleByIndex(int(gpu)))
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # pynvml raises NVMLError subclasses, or OSError without a driver
        return None
    return [{"pid": int(p.pid), "used_mb": _mib(getattr(p, "usedGpuMemory", None))} for p in procs]


def _mib(used_bytes) -> float | None:
    # NVML reports "not available" (e.g. without the right to see another user's process) as None or a huge value
    return round(used_bytes / 2**20, 1) if isinstance(used_bytes, int) and 0 <= used_bytes < 2**60 else None


def _smi_processes(gpu: str) -> list[dict] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits", "-i", gpu],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    procs = []
    for line in out.splitlines():
        pid, _, used = (part.strip() for part in line.partition(","))
        if pid.isdigit():
            try:
                procs.append({"pid": int(pid), "used_mb": float(used)})
            except ValueError:  # "[N/A]"
                procs.append({"pid": int(pid), "used_mb": None})
    return procs


def _others(procs: Iterable[dict], own: set[int]) -> list[dict]:
    """`procs` less the `own` pids, the largest memory first."""
    return sorted((p for p in procs if p["pid"] not in own), key=lambda p: (-(p.get("used_mb") or 0), p["pid"]))


def _describe(procs: list[dict]) -> str:
    return ", ".join(f"pid {p['pid']} uses " + (f"{p['used_mb']:.0f} MiB" if p.get("used_mb") is not None
                                                  else "an unknown amount of memory") for p in procs)


def busy_gpu_reason(procs: list[dict] | None, own: set[int], gpu: str = "0") -> str | None:
    """Why a run must not start on GPU `gpu` whose compute processes are `procs` (own pids left
    out): None when no other process is on it, or when its processes cannot be listed."""
    others = _others(procs or [], own)
    if not others:
        return None
    return f"GPU {gpu} busy: {_describe(others)}; rerun with --retry-failed when it is idle, or pass --no-exclusive"


def check_exclusive(own: set[int], environ: Mapping[str, str] = os.environ,
                    list_processes: Callable[[str], list[dict] | None] | None = None) -> None:
    """With `FTBENCH_EXCLUSIVE=1`, refuse to go on when another process uses the run's GPU.

    Args:
        own: pids of the sweep's own processes (`Watch.members()`).
        list_processes: GPU → its compute processes (default `gpu_processes`).

    Raises:
        GpuBusy: another process is on the GPU; the message names each with its memory.
    """
    if environ.get(EXCLUSIVE_ENV) != "1":
        return
    gpu = visible_gpu(environ)
    if gpu is None:
        return
    reason = busy_gpu_reason((list_processes or gpu_processes)(gpu), own, gpu)
    if reason:
        raise GpuBusy(reason)


# -- the verdict --------------------------------------------------------------------------------------

def verdict(others_cpu_cores: float | None, gpu_others: list[dict] | None, *, spare_cores: float = 0.0,
            load: tuple[float | None, float | None] = (None, None)) -> str | None:
    """The evidence that something outside the sweep competed for the run's hardware, as a sentence;
    None when nothing did.

    Args:
        others_cpu_cores: mean cores, of those the run may use, kept busy by processes outside the sweep.
        gpu_others: other compute processes seen on the run's GPU (None: not a CUDA run, or unknown).
        spare_cores: cores the sweep does not mean to use (others may take them freely).
        load: the 1-minute load average at the run's start and end, quoted as evidence.
    """
    said = []
    if others_cpu_cores is not None and others_cpu_cores > OTHERS_CPU_CORES_MAX + spare_cores:
        start, end = load
        said.append(f"other processes used {others_cpu_cores:.1f} CPU cores on average"
                    + (f" beyond {spare_cores:g} spare" if spare_cores > 0 else "")
                    + (f" (load {start:.1f} → {end:.1f})" if start is not None and end is not None else ""))
    if gpu_others:
        said.append(f"other processes on its GPU ({_describe(gpu_others)})")
    return "; ".join(said) if said else None


# -- the watch ----------------------------------------------------------------------------------------

class Watch:
    """Samples the machine while a run is timed; `stop()` returns the evidence for `result.json`'s `env`.

    Args:
        interval: seconds between CPU samples (each costs well under a millisecond).
        sweep: the sweep's token (default $FTBENCH_SWEEP); processes carrying it, the process
            that made it and that one's descendants are the sweep's own, as are this process and
            its descendants.
        sweep_cores: cores the sweep means to use (default $FTBENCH_SWEEP_CORES, else all usable).
        gpu: list the run's GPU's processes (default: when a GPU is visible to this process).
    """

    def __init__(self, interval: float = 1.0, *, sweep: str | None = None, sweep_cores: float | None = None,
                 gpu: bool | None = None):
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, but got interval={interval}")
        self.interval = interval
        self.sweep = sweep if sweep is not None else os.environ.get(SWEEP_ENV) or None
        self.cores = _usable_cores()
        if sweep_cores is None:
            try:
                sweep_cores = float(os.environ[SWEEP_CORES_ENV])
            except (KeyError, ValueError):
                sweep_cores = len(self.cores)
        self.spare_cores = max(0.0, len(self.cores) - sweep_cores)
        self._gpu = gpu
        self._proc = psutil.Process()
        self._driver = _token_pid(self.sweep)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._carries: dict[int, bool] = {}  # pid → carries the sweep's token (read once per pid)
        self._totals: dict[int, float] = {}  # member pid → its CPU seconds at the last sample
        self._sweep_s = 0.0
        self._gpu_seen: dict[int, dict] = {}
        self._gpu_at = 0.0

    # -- what the sweep owns

    def _carries_token(self, pid: int) -> bool:
        if pid not in self._carries:
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    self._carries[pid] = f"{SWEEP_ENV}={self.sweep}".encode() in fh.read().split(b"\0")
            except OSError:  # gone, or another user's
                self._carries[pid] = False
        return self._carries[pid]

    def members(self) -> set[int]:
        """Pids of the sweep's own processes now: this one, its descendants, the sweep's other runs."""
        own = {self._proc.pid}
        try:
            own |= {p.pid for p in self._proc.children(recursive=True)}
        except psutil.Error:
            pass
        if self.sweep:
            pids = psutil.pids()
            alive = set(pids)
            self._carries = {pid: v for pid, v in self._carries.items() if pid in alive}
            own |= {pid for pid in pids if self._carries_token(pid)}
            if self._driver is not None:
                own.add(self._driver)
                try:  # its fork server and the runs forked from it, whose /proc environ is the server's
                    own |= {p.pid for p in psutil.Process(self._driver).children(recursive=True)}
                except psutil.Error:
                    pass
        return own

    # -- sampling

    def _busy_s(self) -> float:
        """Busy CPU seconds of the usable cores since boot (steal counts: another guest took it)."""
        per_cpu = psutil.cpu_times(percpu=True)
        total = 0.0
        for i in self.cores:
            if i < len(per_cpu):
                t = per_cpu[i]
                total += t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
        return total

    def _sample(self, first: bool = False) -> None:
        """Add the CPU seconds the sweep's processes used since the last sample (a process that
        appeared since then counts whole, as it was born in the interval)."""
        now = time.time()
        totals = {}
        for pid in self.members():
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    t, born = proc.cpu_times(), proc.create_time()
            except psutil.Error:
                continue
            totals[pid] = t.user + t.system
            if not first:
                before = self._totals.get(pid)
                if before is not None:
                    self._sweep_s += max(0.0, totals[pid] - before)
                elif born >= self._last:
                    self._sweep_s += totals[pid]
        self._totals, self._last = totals, now
        if self._gpu and (first or now - self._gpu_at >= GPU_SAMPLE_S):
            self._sample_gpu(set(totals))

    def _sample_gpu(self, own: set[int]) -> None:
        self._gpu_at = time.time()
        procs = gpu_processes()
        if procs is None:
            return
        for p in _others(procs, own):
            seen = self._gpu_seen.get(p["pid"])
            if seen is None or (p["used_mb"] or 0) > (seen["used_mb"] or 0):
                self._gpu_seen[p["pid"]] = p

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                try:
                    self._sample()
                except Exception:  # a sample lost is no reason to lose the run
                    pass

    def start(self) -> "Watch":
        """Take the first sample (before the run touches its GPU) and start sampling in the background."""
        if self._gpu is None:
            self._gpu = visible_gpu() is not None and gpu_processes() is not None
        self._load0 = _loadavg()
        self._wall0 = time.monotonic()
        self._busy0 = self._busy_s()
        self._cpu0 = _own_cpu_s(self._proc)
        with self._lock:
            self._last = time.time()
            self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, name="ftbench-contention", daemon=True)
        self._thread.start()
        return self

    def stop(self, device: str | None = None) -> dict:
        """End the watch; the evidence as `env` keys (see docs/results.md).

        Args:
            device: where the run ran (`cuda`, `cpu`, …): GPU processes are reported for `cuda` only.
        """
        if self._thread is None:
            raise RuntimeError("Watch.stop() before start()")
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._sample()
            if self._gpu and device == "cuda":
                self._sample_gpu(self.members())
        wall = max(time.monotonic() - self._wall0, 1e-9)
        busy = self._busy_s() - self._busy0
        others = max(0.0, busy - self._sweep_s) / wall
        gpu_others = _others(self._gpu_seen.values(), set()) if self._gpu and device == "cuda" else None
        load = (self._load0, _loadavg())
        said = verdict(others, gpu_others, spare_cores=self.spare_cores, load=load)
        return {"cpu_time_s": round(_own_cpu_s(self._proc) - self._cpu0, 2), "watched_s": round(wall, 2),
                "load_avg_start": load[0], "load_avg_end": load[1], "others_cpu_cores": round(others, 2),
                "sweep_cpu_cores": round(self._sweep_s / wall, 2), "spare_cores": self.spare_cores,
                "gpu_other_processes": gpu_others, "contended": said is not None, "contention": said}


def _own_cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of this process and its finished (waited-for) children."""
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
