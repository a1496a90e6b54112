"""harness.executor: failures are recorded and the sweep goes on; finished runs are skipped; --force
archives; unfinished runs are archived and rerun; a SIGKILLed sweep resumes; two sweeps share the work."""

import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from conftest import (PROJECT_ROOT, PYTHON, WIDE, expand_file, is_run_process, metric_lines, read_result, run_cli,
                      run_dirs, tiny_base, write_experiment)
from harness import store

PLUGIN = '''
"""Test-only methods: one raises in apply, one makes the loss NaN, two kill their own process."""
import os
import signal

import torch

from harness.methods import Method, register


class Boom(Method):
    name = "boom"

    def apply(self, model, ctx):
        raise RuntimeError("boom")


class NanFill(Method):
    name = "nanfill"

    def apply(self, model, ctx):
        for param in model.parameters():
            param.requires_grad_(True)
        torch.nn.init.constant_(model.get_input_embeddings().weight, float("nan"))
        return model


class Vanish(Method):
    name = "vanish"

    def apply(self, model, ctx):
        os._exit(3)  # dies without writing a result


class Killed(Method):
    name = "killed"

    def apply(self, model, ctx):
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does


register(Boom)
register(NanFill)
register(Vanish)
register(Killed)
'''


def snapshot(directory):
    path = directory / "result.json"
    return path.read_bytes(), path.stat().st_mtime_ns


# --- failure capture ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def failure_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("failures")
    (root / "exp").mkdir()
    (root / "exp" / "myplugin.py").write_text(PLUGIN)
    path = write_experiment(root / "exp", "failing", base=tiny_base(), grid={"method": ["boom", "nanfill", "vanish", "killed", "lora"]},
                            plugins=["myplugin.py"])
    results = root / "results"
    res = run_cli("run", str(path), "--results", str(results))
    by_method = {}
    for spec in expand_file(path):
        by_method[spec.config.method.name] = read_result(results / "failing" / spec.run_id)
    return res, by_method, path, results


def test_exception_in_a_method_is_recorded(failure_sweep):
    _, results, _, _ = failure_sweep
    boom = results["boom"]
    assert boom["status"] == "failed"
    assert boom["error"]["type"] == "RuntimeError"
    assert boom["error"]["message"] == "boom"
    assert "raise RuntimeError" in boom["error"]["traceback_tail"]
    assert boom["finished_at"] is not None
    assert boom["metrics"]["train_loss"] is None


def test_nan_loss_is_diverged(failure_sweep):
    _, results, _, _ = failure_sweep
    nan = results["nanfill"]
    assert nan["status"] == "diverged", nan["error"]
    assert nan["error"]["type"] == "Diverged"
    assert "nan" in nan["error"]["message"].lower()
    assert nan["metrics"]["trainable_params"] == nan["metrics"]["total_params"]  # measured before it diverged


def test_sweep_goes_on_and_exits_1(failure_sweep):
    res, results, _, _ = failure_sweep
    assert results["lora"]["status"] == "ok"
    assert res.code == 1
    assert "Traceback" not in res.err
    assert "4 of 5 runs did not finish ok" in res.out


def test_process_that_dies_without_a_result(failure_sweep):
    _, results, _, _ = failure_sweep
    vanish, killed = results["vanish"], results["killed"]
    assert vanish["status"] == "failed"
    assert vanish["error"]["type"] == "ProcessDied"
    assert "code 3" in vanish["error"]["message"]
    # a SIGKILL with no sign of the kernel's OOM killer (its counters did not rise) is not called `oom`
    assert killed["status"] == "failed" and killed["error"]["type"] == "Killed"
    assert "SIGKILL" in killed["error"]["message"]
    for result in (vanish, killed):
        assert set(result["metrics"]) == set(store.METRIC_KEYS + store.OPTIONAL_METRIC_KEYS)
        assert result["run_id"] and result["spec"]["method"]["name"] in ("vanish", "killed")


def test_failed_runs_are_kept_then_retried(failure_sweep):
    _, before, path, results = failure_sweep
    exp = results / "failing"
    snapshots = {d.name: snapshot(d) for d in run_dirs(results, "failing")}
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 1  # nothing rerun: the failures stand
    assert {d.name: snapshot(d) for d in run_dirs(results, "failing")} == snapshots

    res = run_cli("run", str(path), "--results", str(results), "--retry-failed")
    assert res.code == 1
    after = {r["spec"]["method"]["name"]: r for r in (read_result(d) for d in run_dirs(results, "failing"))}
    assert {m: r["status"] for m, r in after.items()} == {m: r["status"] for m, r in before.items()}
    for method, result in after.items():
        old, new = snapshots[result["run_id"]], snapshot(exp / result["run_id"])
        if method == "lora":
            assert new == old  # ok runs are not retried
        else:
            assert new[1] != old[1]  # rerun: a new result.json
    archived = sorted(p.name.split(".")[0] for p in (exp / ".archive").iterdir())
    assert archived == sorted(r["run_id"] for m, r in before.items() if m != "lora")




# --- resume -------------------------------------------------------------------------------------

def test_second_sweep_runs_nothing(tiny_sweep):
    dirs = [tiny_sweep.dir_of(s) for s in tiny_sweep.specs]
    before = {d: snapshot(d) for d in dirs}
    t0 = time.monotonic()
    res = run_cli("run", str(tiny_sweep.path), "--results", str(tiny_sweep.results))
    elapsed = time.monotonic() - t0
    assert res.code == 0, res.err
    assert elapsed < 15  # no run process was started (each takes ~8 s or more)
    for spec in tiny_sweep.specs:
        [line] = [l for l in res.err.splitlines() if spec.run_id in l]
        assert "skipped" in line
    assert {d: snapshot(d) for d in dirs} == before
    assert run_dirs(tiny_sweep.results, "tiny") == sorted(dirs)
    assert not (tiny_sweep.results / "tiny" / ".archive").exists()


def test_repeats_add_only_the_twins_and_the_report_gives_the_noise_floor(tiny_sweep, tmp_path):
    import shutil

    results = tmp_path / "results"
    shutil.copytree(tiny_sweep.results, results)  # the shared sweep stays as it is
    dirs = [results / "tiny" / s.run_id for s in tiny_sweep.specs]
    before = {d: snapshot(d) for d in dirs}
    res = run_cli("run", str(tiny_sweep.path), "--results", str(results), "--set", "repeats=2")
    assert res.code == 0, res.out + res.err
    assert {d: snapshot(d) for d in dirs} == before  # repeat 0 is the finished run: skipped, same id
    twins = [d for d in run_dirs(results, "tiny") if d not in dirs]
    assert sorted(read_result(d)["slug"] for d in twins) == ["full-n16-s0-rep1", "lora-r4-a8-n16-s0-rep1"]
    assert all(read_result(d)["status"] == "ok" and read_result(d)["spec"]["repeat"] == 1 for d in twins)
    out = tmp_path / "report"
    assert run_cli("report", "tiny", "--results", str(results), "--out", str(out)).code == 0
    text = (out / "tiny" / "report.md").read_text()
    assert "## Noise floor" in text and "2 configuration/seed pair(s) ran 2 times" in text
    assert "| train s |" in text.split("## Noise floor")[1]
    summary = pd.read_csv(out / "tiny" / "summary.csv")
    assert sorted(summary["config"]) == ["full-n16", "lora-r4-a8-n16"] and set(summary["n_seeds"]) == {1}


def test_force_archives_and_unfinished_is_archived(tmp_path):
    results = tmp_path / "results"
    path = write_experiment(tmp_path, "again", base=tiny_base())
    [spec] = expand_file(path)
    directory = results / "again" / spec.run_id

    assert run_cli("run", str(path), "--results", str(results)).code == 0
    first, _ = snapshot(directory)

    # --force: rerun, the old directory is archived whole
    res = run_cli("run", str(path), "--results", str(results), "--force")
    assert res.code == 0, res.err
    [archived] = list((results / "again" / ".archive").iterdir())
    assert archived.name.startswith(spec.run_id + ".")
    assert (archived / "result.json").read_bytes() == first
    assert (archived / "metrics.jsonl").is_file() and (archived / "adapter").is_dir()
    assert read_result(directory)["status"] == "ok"
    assert run_dirs(results, "again") == [directory]

    # an unfinished directory (spec.yaml, no result.json) is archived whole and rerun
    (directory / "result.json").unlink()
    (directory / "leftover.txt").write_text("from a dead run")
    with open(directory / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 99, "loss": 1.0}\n')
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 0, res.err
    assert not (directory / "leftover.txt").exists()
    assert read_result(directory)["status"] == "ok"
    assert [r["step"] for r in metric_lines(directory)] == [1, 2, 3]
    archived = sorted((results / "again" / ".archive").iterdir())
    assert len(archived) == 2  # the --force one, and the unfinished one with what its run left
    assert sum((a / "leftover.txt").is_file() and not (a / "result.json").exists() for a in archived) == 1


# --- a sweep killed with SIGKILL ------------------------------------------------------------------

def start_sweep(path, results, *extra, threads=None):
    env = {**os.environ, **WIDE}
    if threads:  # two sweeps at once on 2 cores: one thread per run, or OpenMP threads spin against each other
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return subprocess.Popen([PYTHON, "-m", "harness", "run", str(path), "--results", str(results), *extra],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)


def wait_for(predicate, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.05)
    return False


def test_sigkill_mid_run_then_resume(tmp_path):
    results = tmp_path / "results"
    path = write_experiment(tmp_path, "killed", base=tiny_base(train={"max_steps": 15}), grid={"seeds": [0, 1]})
    specs = expand_file(path)
    dirs = [results / "killed" / s.run_id for s in specs]

    proc = start_sweep(path, results)
    try:
        # the first run has finished and the second is training: kill the whole sweep
        started = wait_for(lambda: (dirs[1] / "metrics.jsonl").is_file(), timeout=180, proc=proc)
        assert started, proc.communicate(timeout=30)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert read_result(dirs[0])["status"] == "ok"
    assert not (dirs[1] / "result.json").exists()  # killed mid-run: unfinished
    finished_before = snapshot(dirs[0])
    # the run process died with its sweep (no orphan keeps training and writes a result later)
    time.sleep(1.0)
    assert not (dirs[1] / "result.json").exists()

    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 0, res.out + res.err
    assert run_dirs(results, "killed") == sorted(dirs)  # one directory per run id, no duplicates
    for directory in dirs:
        assert read_result(directory)["status"] == "ok"
        assert [r["step"] for r in metric_lines(directory)] == list(range(1, 16))
    assert snapshot(dirs[0]) == finished_before  # finished before the kill: not rerun
    [line] = [l for l in res.err.splitlines() if specs[0].run_id in l and "archived" not in l]
    assert "skipped" in line
    # the killed run's partial directory was archived (never deleted), nothing else
    [archived] = list((results / "killed" / ".archive").iterdir())
    assert archived.name.startswith(dirs[1].name + ".") and (archived / "metrics.jsonl").is_file()


# --- Ctrl-C in the loop ---------------------------------------------------------------------------

def test_ctrl_c_stops_the_children_and_lets_go_of_the_claims(tmp_path):
    from harness.executor import LocalExecutor

    path = write_experiment(tmp_path, "cancel", base=tiny_base(train={"max_steps": 25}), grid={"seeds": [0, 1]})
    specs = expand_file(path)
    results = tmp_path / "results"
    children = []

    def interrupt(spec, directory):
        children.extend(p for p in _run_children() if p not in children)
        if (directory / "metrics.jsonl").is_file():
            raise KeyboardInterrupt  # what Ctrl-C raises in the sweep's loop

    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(workers=2, root=results, poll_s=0.1).run(specs, monitor=interrupt)
    assert children and not any(p.is_running() and p.status() != "zombie" for p in children)  # no run left training
    for spec in specs:
        assert not (results / "cancel" / spec.run_id / "result.json").exists()  # unfinished: the next sweep reruns it
        claim = store.try_claim("cancel", spec.run_id, results)
        assert claim is not None  # no claim left held
        claim.release()


def _run_children():
    import psutil

    return [proc for proc in psutil.Process().children(recursive=True) if is_run_process(proc)]


# --- two sweeps at once ---------------------------------------------------------------------------

def test_concurrent_sweeps_share_the_work(tmp_path):
    results = tmp_path / "results"
    path = write_experiment(tmp_path, "shared", base=tiny_base(), grid={"seeds": [0, 1, 2]})
    specs = expand_file(path)
    procs = [start_sweep(path, results, threads=max(1, (os.cpu_count() or 2) // 2)) for _ in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=400)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for code, out, err in outputs:
        assert code == 0, out + err
        assert "Traceback" not in err
    assert run_dirs(results, "shared") == sorted(results / "shared" / s.run_id for s in specs)
    for spec in specs:
        directory = results / "shared" / spec.run_id
        assert read_result(directory)["status"] == "ok"
        assert len(metric_lines(directory)) == 3  # trained by one process, not appended twice
        lines = [l for _, _, err in outputs for l in err.splitlines() if spec.run_id in l]
        ran = [l for l in lines if "skipped" not in l]
        skipped = [l for l in lines if "skipped" in l]
        assert len(ran) == 1 and " ok " in f" {ran[0]} ", lines
        assert len(skipped) == 1, lines
