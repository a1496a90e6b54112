"""harness.contention: a run watched while processes outside its sweep keep the CPU busy is flagged
with the evidence; the sweep's own processes are not contention; the verdict and `--exclusive`'s
refusal are pure functions of what was measured (GPU processes faked: NVML is not the project's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import PROJECT_ROOT, PYTHON
from harness import contention
from harness.contention import (EXCLUSIVE_ENV, OTHERS_CPU_CORES_MAX, GpuBusy, Watch, busy_gpu_reason,
                                check_exclusive, sweep_token, verdict, visible_gpu)

WATCH_S = 3.0
#: a watched "run" in a process of its own (as `python -m harness.run` is): idle, so the CPU it
#: could lose is what others take; prints the evidence `Watch.stop` returns
WATCHED = ("import json, sys, time; from harness.contention import Watch; "
           "w = Watch(0.25, sweep=sys.argv[1] or None).start(); time.sleep(float(sys.argv[2])); "
           "print(json.dumps(w.stop('cpu')))")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != contention.SWEEP_ENV and k != contention.SWEEP_CORES_ENV}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return {**env, **extra}


def _hogs(n: int, **env) -> list[subprocess.Popen]:
    return [subprocess.Popen([PYTHON, "-c", "while True: pass"], env=_env(**env)) for _ in range(n)]


def _watch_in_child(sweep: str | None) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-c", WATCHED, sweep or "", str(WATCH_S)], env=_env(), stdout=subprocess.PIPE,
                            text=True)


def _evidence(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return json.loads(out)


def test_a_run_watched_beside_a_cpu_hog_is_flagged_and_the_sweeps_own_load_is_not_others():
    """Two busy processes: for a run of the hog's sweep they are the sweep's own CPU; for a run of
    another sweep they are contention. Both runs are watched over the same seconds, so whatever
    else the machine does (other test workers) is the same in both: the difference is the hog's."""
    token = sweep_token()  # this test process plays the sweep's driver
    hogs = _hogs(2, **{contention.SWEEP_ENV: token})
    try:
        time.sleep(0.3)
        same_sweep, other_sweep = _watch_in_child(token), _watch_in_child(None)
        own, outside = _evidence(same_sweep), _evidence(other_sweep)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"others_cpu_cores: hog in the sweep {own['others_cpu_cores']}, hog outside {outside['others_cpu_cores']}"
          f" (sweep {own['sweep_cpu_cores']} cores)")
    assert outside["contended"] is True
    assert outside["others_cpu_cores"] > OTHERS_CPU_CORES_MAX
    assert "other processes used" in outside["contention"] and "CPU cores on average" in outside["contention"]
    assert outside["load_avg_start"] is not None and outside["gpu_other_processes"] is None  # a CPU run
    assert outside["watched_s"] == pytest.approx(WATCH_S, abs=1.0) and outside["cpu_time_s"] < 1.0
    # the hog counts as the sweep's own load for the run of its sweep, and as others' for the other run
    hog_cores = own["sweep_cpu_cores"]
    assert hog_cores > 0.3
    assert outside["others_cpu_cores"] - own["others_cpu_cores"] == pytest.approx(hog_cores, abs=0.35)
    if os.environ.get("CI"):  # nothing else runs in CI: the sweep's own busy cores are no contention
        assert own["contended"] is False, own["contention"]
        assert own["others_cpu_cores"] < OTHERS_CPU_CORES_MAX


def test_a_quiet_watch_measures_far_less_than_a_hog():
    """The same watch with and without two outside busy processes, one after the other: the hog
    adds its cores to `others_cpu_cores` (whatever the rest of the machine does meanwhile)."""
    quiet = _evidence(_watch_in_child(None))
    hogs = _hogs(2)
    try:
        time.sleep(0.3)
        busy = _evidence(_watch_in_child(None))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"others_cpu_cores: quiet {quiet['others_cpu_cores']}, under the hog {busy['others_cpu_cores']}")
    assert busy["contended"] is True
    cores = len(os.sched_getaffinity(0))
    # a saturated machine cannot show more than all its cores busy: then the hog only replaces others
    if quiet["others_cpu_cores"] < cores - 1:
        assert busy["others_cpu_cores"] > quiet["others_cpu_cores"] + 0.5
    if os.environ.get("CI"):
        assert quiet["contended"] is False, quiet["contention"]


def test_the_verdict_on_measured_numbers():
    assert verdict(0.05, None) is None  # a quiet machine's daemons
    assert verdict(OTHERS_CPU_CORES_MAX, None) is None
    said = verdict(1.83, None, load=(3.14, 2.9))
    assert said == "other processes used 1.8 CPU cores on average (load 3.1 → 2.9)"
    # cores the sweep does not use are others' to take
    assert verdict(1.8, None, spare_cores=14) is None
    assert "beyond 14 spare" in verdict(15.0, None, spare_cores=14)
    assert verdict(0.0, []) is None  # a CUDA run alone on its GPU
    both = verdict(2.0, [{"pid": 41, "used_mb": 5120.0}])
    assert both.startswith("other processes used 2.0 CPU cores") and "pid 41 uses 5120 MiB" in both


def test_watch_stop_reports_every_key_and_gpu_processes_only_for_cuda(monkeypatch):
    monkeypatch.setattr(contention, "gpu_processes", lambda gpu=None: [{"pid": os.getpid(), "used_mb": 900.0},
                                                                       {"pid": 123456, "used_mb": 5120.0}])
    watch = Watch(0.05, sweep=None, gpu=True).start()
    time.sleep(0.2)
    env = watch.stop("cuda")
    assert tuple(env) == contention.EVIDENCE_KEYS
    assert env["gpu_other_processes"] == [{"pid": 123456, "used_mb": 5120.0}]  # its own process left out
    assert env["contended"] is True and "pid 123456 uses 5120 MiB" in env["contention"]
    cpu_run = Watch(0.05, sweep=None, gpu=True).start().stop("cpu")
    assert cpu_run["gpu_other_processes"] is None


def test_watch_without_a_gpu_or_nvml_lists_nothing(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu() is None and contention.gpu_processes() is None
    env = Watch(0.05).start().stop("cuda")
    assert env["gpu_other_processes"] is None


def test_visible_gpu_reads_cuda_visible_devices():
    assert visible_gpu({}) == "0"
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "2,3"}) == "2"
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "GPU-8f2c"}) == "GPU-8f2c"
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "-1"}) is None
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "MIG-1/2/3"}) is None


def test_nvml_processes_are_read_from_the_visible_device(monkeypatch):
    """pynvml faked: handle by index or UUID, memory in MiB, NVML's 'not available' as None."""
    calls = []

    class Proc:
        def __init__(self, pid, used):
            self.pid, self.usedGpuMemory = pid, used

    fake = type(sys)("pynvml")
    fake.nvmlInit = lambda: calls.append("init")
    fake.nvmlShutdown = lambda: calls.append("shutdown")
    fake.nvmlDeviceGetHandleByIndex = lambda i: ("index", i)
    fake.nvmlDeviceGetHandleByUUID = lambda u: ("uuid", u)
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: [Proc(7, 5 * 2**30), Proc(8, None)] if h == ("index", 1) else []
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert contention.gpu_processes("1") == [{"pid": 7, "used_mb": 5120.0}, {"pid": 8, "used_mb": None}]
    assert contention.gpu_processes("GPU-x") == []
    assert calls == ["init", "shutdown"] * 2


def test_exclusive_refuses_a_gpu_another_process_uses():
    procs = [{"pid": 1234, "used_mb": 5120.0}, {"pid": 99, "used_mb": 300.0}]
    assert busy_gpu_reason(procs, own={99}) == ("GPU 0 busy: pid 1234 uses 5120 MiB; rerun with --retry-failed when "
                                                 "it is idle, or pass --no-exclusive")
    assert busy_gpu_reason(procs, own={99, 1234}) is None  # the sweep's own processes
    assert busy_gpu_reason([], own=set()) is None
    assert busy_gpu_reason(None, own=set()) is None  # cannot be listed: no refusal on a guess
    listed = []

    def fake(gpu):
        listed.append(gpu)
        return procs

    with pytest.raises(GpuBusy, match=r"GPU 3 busy: pid 1234 uses 5120 MiB, pid 99 uses 300 MiB"):
        check_exclusive(set(), {EXCLUSIVE_ENV: "1", "CUDA_VISIBLE_DEVICES": "3"}, fake)
    check_exclusive(set(), {EXCLUSIVE_ENV: "0", "CUDA_VISIBLE_DEVICES": "3"}, fake)  # --no-exclusive
    check_exclusive(set(), {EXCLUSIVE_ENV: "1", "CUDA_VISIBLE_DEVICES": ""}, fake)  # no GPU
    assert listed == ["3"]


def test_a_busy_gpu_fails_the_run_before_the_model_loads(tmp_path, monkeypatch):
    """`harness.run.execute` under --exclusive on a GPU another process holds: recorded failed with
    the reason, and the evidence in env."""
    import yaml

    from harness import run

    monkeypatch.setenv(EXCLUSIVE_ENV, "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(contention, "gpu_processes", lambda gpu=None: [{"pid": 4242, "used_mb": 2048.0}])
    def reached(*args, **kwargs):
        raise AssertionError("the run went on to load plugins and the model")

    monkeypatch.setattr(run, "import_plugins", reached)
    # versions and the Diverged check import torch and transformers (slow): not what this test is about
    monkeypatch.setattr(run, "_env", lambda device, raw=None: {"device": device})
    monkeypatch.setattr(run, "classify", lambda exc: "failed")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"experiment": "x", "run_id": "r", "slug": "s"}))
    result = run.execute(tmp_path)
    assert result["status"] == "failed" and result["error"]["type"] == "GpuBusy"
    assert result["error"]["message"].startswith("GPU 0 busy: pid 4242 uses 2048 MiB")
    assert result["env"]["contended"] in (True, False) and "others_cpu_cores" in result["env"]


def test_the_executor_tells_its_runs_their_sweep():
    from harness.executor import child_env

    env = child_env(sweep="12-34", sweep_cores=2, exclusive=True)
    assert env[contention.SWEEP_ENV] == "12-34" and env[contention.SWEEP_CORES_ENV] == "2"
    assert env[EXCLUSIVE_ENV] == "1"
    assert child_env()[EXCLUSIVE_ENV] == "0"
    assert sweep_token().startswith(f"{os.getpid()}-")
    assert contention._token_pid(sweep_token()) == os.getpid()
    assert contention._token_pid(f"{os.getpid()}-1") is None  # the pid, but not the process that made it


def test_exclusive_is_on_by_default_with_gpus_only(tmp_path, monkeypatch):
    from harness import executor
    from harness.cli import build_parser

    assert build_parser().parse_args(["run", "x"]).exclusive is None
    assert build_parser().parse_args(["run", "x", "--no-exclusive"]).exclusive is False
    assert build_parser().parse_args(["search", "x", "--exclusive"]).exclusive is True
    monkeypatch.setattr(executor, "gpu_count", lambda: 0)
    cpu = executor.LocalExecutor(root=tmp_path)
    assert cpu.exclusive is False and cpu.sweep_cores is None  # a CPU sweep fills every core
    monkeypatch.setattr(executor, "gpu_count", lambda: 2)
    gpus = executor.LocalExecutor(root=tmp_path)
    assert gpus.exclusive is True and gpus.sweep_cores == min(os.cpu_count(), 2)
    assert executor.LocalExecutor(root=tmp_path, exclusive=False).exclusive is False


def test_the_sweep_drivers_descendants_are_its_own_without_the_token(tmp_path):
    """A run forked from the launcher's fork server shows the server's /proc environ (no token):
    it is still the sweep's, as a descendant of the process that made the token. Here the driver
    is not a descendant of the watching process (it is detached), so only that rule can find it."""
    import psutil

    script = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
              "print(child.pid, flush=True); time.sleep(60)")
    out = tmp_path / "pids"
    detached = subprocess.run(["sh", "-c", f"{sys.executable} -c \"{script}\" > {out} 2>/dev/null < /dev/null & echo $!"],
                              capture_output=True, text=True, check=True)
    driver, grandchild = int(detached.stdout.strip()), None
    try:
        deadline = time.monotonic() + 30
        while not out.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        grandchild = int(out.read_text().strip())
        assert grandchild not in Watch(sweep=None).members()
        assert {driver, grandchild} <= Watch(sweep=sweep_token(driver)).members()
        assert grandchild not in Watch(sweep=sweep_token()).members()  # another sweep's
    finally:
        for pid in (driver, grandchild):
            try:
                psutil.Process(pid).kill()
            except (psutil.Error, TypeError):
                pass
