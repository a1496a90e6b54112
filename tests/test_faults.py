"""Faults around the store (issue 19): damaged records, archiving instead of deleting, missing grid points in
the report, a full disk, an unusable results root, ambiguous `show`, orphaned or terminated run processes,
and SIGKILL vs the OOM killer. Each test counts what matters: runs lost, run twice, left unfinished, the exit
code and the message. `make faults` runs this file alone."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from conftest import (PROJECT_ROOT, PYTHON, WIDE, expand_file, read_result, run_cli, run_dirs, tiny_base,
                      write_experiment)
from harness import store

#: test-only methods: one ends its process without a result, one SIGKILLs itself (as a person or the OOM
#: killer would); written once per module (a method name registers once per process)
PLUGIN = '''
import os
import signal

from harness.methods import Method, register


class Dies(Method):
    name = "dies"

    def apply(self, model, ctx):
        os._exit(3)


class Sigkilled(Method):
    name = "sigkilled"

    def apply(self, model, ctx):
        os.kill(os.getpid(), signal.SIGKILL)


register(Dies)
register(Sigkilled)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    from harness.plugins import import_plugins

    path = tmp_path_factory.mktemp("plugin") / "faulty.py"
    path.write_text(PLUGIN)
    import_plugins([str(path)])  # here too: the tests expand their grids before a sweep imports it
    return str(path)


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())

#: what a result.json can be found holding; each is read as `damaged`, with this in the reason
DAMAGE = {
    "random bytes": (bytes(range(256)) * 4, "not UTF-8"),
    "truncated": (b"", "empty file"),
    "torn": (b'{"run_id": "x", "status": "o', "not valid JSON"),
    "a list": (b"[1]", "not a JSON object"),
    "empty object": (b"{}", "has no `run_id`, `status`, `spec`"),
    "no status": (None, "has no `status`"),
    "no run_id": (None, "has no `run_id`"),
    "unknown status": (None, "unknown status 'exploded'"),
}


def damage(directory, kind: str) -> bytes:
    """Damage a finished run's result.json the way `kind` says; returns the bytes left there."""
    path = directory / "result.json"
    data, _ = DAMAGE[kind]
    if data is None:
        record = json.loads(path.read_text())
        if kind == "no status":
            del record["status"]
        elif kind == "no run_id":
            del record["run_id"]
        else:
            record["status"] = "exploded"
        data = json.dumps(record).encode()
    path.write_bytes(data)
    return data


def copy_store(tiny_sweep, tmp_path):
    """A copy of the shared tiny sweep's store (lora and full, both ok) to damage."""
    results = tmp_path / "results"
    shutil.copytree(tiny_sweep.results, results)
    return results, results / "tiny" / tiny_sweep.by_method("lora").run_id, results / "tiny" / tiny_sweep.by_method("full").run_id


def snapshot(directory):
    path = directory / "result.json"
    return path.read_bytes(), path.stat().st_mtime_ns


def temp_files(results):
    return [p for p in results.rglob("*") if ".tmp" in p.name]


# --- 1. damaged records are listed, never fatal ---------------------------------------------------------

@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_record_is_listed_by_ls_show_and_dry_run(tiny_sweep, tmp_path, kind):
    results, lora, full = copy_store(tiny_sweep, tmp_path)
    damage(lora, kind)
    reason = DAMAGE[kind][1]
    assert store.status_of(lora) == "damaged" and store.read_result(lora) is None
    assert [r["run_id"] for r in store.iter_results("tiny", results)] == [full.name]
    assert len(store.load("tiny", results)) == 1

    ls = run_cli("ls", "tiny", "--results", str(results))
    assert ls.code == 0, ls.err
    assert f"damaged {tiny_sweep.by_method('lora').slug} {lora.name}: result.json " in flat(ls.out)
    assert reason in flat(ls.out)
    assert tiny_sweep.by_method("full").slug in ls.out

    show = run_cli("show", f"tiny/{lora.name}", "--results", str(results))
    assert show.code == 1 and "damaged" in show.err and reason in show.err

    dry = run_cli("run", str(tiny_sweep.path), "--results", str(results), "--dry-run")
    assert dry.code == 0, dry.err
    assert "2 runs: 1 damaged, 1 ok" in flat(dry.out)
    assert f"damaged: {tiny_sweep.by_method('lora').slug} {lora.name}: " in flat(dry.out) and reason in flat(dry.out)
    assert "Traceback" not in ls.err + show.err + dry.err


@pytest.mark.parametrize("kind", ["random bytes", "unknown status"])
def test_report_lists_a_damaged_record_and_reports_the_rest(tiny_sweep, tmp_path, kind):
    results, lora, full = copy_store(tiny_sweep, tmp_path)
    damage(lora, kind)
    out = tmp_path / "reports"
    res = run_cli("report", "tiny", "--results", str(results), "--out", str(out))
    assert res.code == 0, res.err
    assert "1 damaged run(s) are not in this report" in flat(res.out)
    text = (out / "tiny" / "report.md").read_text()
    failures = text.split("## Failures and caveats")[1]
    assert "1 run(s) did not finish ok; not in the report's figures: 1 damaged" in failures
    [row] = [l for l in failures.splitlines() if lora.name in l]
    assert "damaged" in row and DAMAGE[kind][1] in row
    assert text.count("\n## ") >= 3  # the other sections are still there
    assert tiny_sweep.by_method("full").slug in text.split("## Failures and caveats")[0]


# --- 2. reruns archive unfinished and damaged directories -------------------------------------------------

def test_rerun_archives_unfinished_and_damaged_runs_and_loses_nothing(tiny_sweep, tmp_path):
    """Before: the unfinished directory (adapter, metrics) was deleted, and an unknown status stopped the sweep
    with `FileExistsError: … is finished; archive it before rerunning`."""
    results, lora, full = copy_store(tiny_sweep, tmp_path)
    (lora / "result.json").unlink()  # unfinished: its adapter and metrics are still there
    adapter = sorted(p.relative_to(lora) for p in (lora / "adapter").rglob("*"))
    damaged = damage(full, "unknown status")
    res = run_cli("run", str(tiny_sweep.path), "--results", str(results))
    assert res.code == 0, res.out + res.err
    assert "Traceback" not in res.err and "FileExistsError" not in res.err
    archive = sorted((results / "tiny" / ".archive").iterdir())
    assert len(archive) == 2  # both, and nothing else
    [old_lora] = [a for a in archive if a.name.startswith(lora.name + ".")]
    [old_full] = [a for a in archive if a.name.startswith(full.name + ".")]
    assert not (old_lora / "result.json").exists() and (old_lora / "metrics.jsonl").is_file()
    assert sorted(p.relative_to(old_lora) for p in (old_lora / "adapter").rglob("*")) == adapter
    assert (old_full / "result.json").read_bytes() == damaged  # the damaged record itself is kept as found
    assert run_dirs(results, "tiny") == sorted([lora, full])  # one directory per run id
    assert [read_result(d)["status"] for d in (lora, full)] == ["ok", "ok"]  # each run executed once more
    assert flat(res.err).count(" run directory (") == 2 and flat(res.err).count("; running it again") == 2


# --- 3. the report lists the grid points it expected and did not find -------------------------------------

def test_report_lists_unfinished_and_missing_grid_points(tiny_sweep, tmp_path):
    results, lora, full = copy_store(tiny_sweep, tmp_path)
    (lora / "result.json").unlink()  # a deleted record: the run is unfinished, not silently gone
    # the same experiment grown by a method that never ran: its point is missing from the store
    path = write_experiment(tmp_path / "exp", "tiny", base=tiny_base(), grid={"method": ["lora", "full", "ia3"]})
    ids = {s.config.method.name: s.run_id for s in expand_file(path)}
    assert ids["lora"] == lora.name and ids["full"] == full.name
    out = tmp_path / "reports"
    res = run_cli("report", str(path), "--results", str(results), "--out", str(out))
    assert res.code == 0, res.err
    assert "1 unfinished, 1 missing run(s) are not in this report" in flat(res.out)
    failures = (out / "tiny" / "report.md").read_text().split("## Failures and caveats")[1]
    assert "2 run(s) did not finish ok; not in the report's figures: 1 unfinished, 1 missing" in failures
    assert any(lora.name in l and "unfinished" in l and "no result.json" in l for l in failures.splitlines())
    assert any(ids["ia3"] in l and "missing" in l for l in failures.splitlines())

    # by name only, the grid is not known: the unfinished run is listed, nothing is called missing
    res = run_cli("report", "tiny", "--results", str(results), "--out", str(out))
    assert res.code == 0 and "1 unfinished run(s) are not in this report" in flat(res.out)
    assert "missing" not in res.out


# --- 4. a full disk never kills the sweep ----------------------------------------------------------------

def test_write_json_atomic_leaves_no_temp_file_when_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    store.write_json_atomic(path, {"a": 1})

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(store.os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        store.write_json_atomic(path, {"a": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"] and json.loads(path.read_text()) == {"a": 1}


def test_disk_full_while_the_sweep_records_a_run(tmp_path, monkeypatch, plugin):
    """The sweep cannot write the record of a run that died without one: it says so, names the file and
    the disk, starts nothing more, and exits 1 without a traceback; the next sweep finishes the work."""
    path = write_experiment(tmp_path / "exp", "full", base=tiny_base(), grid={"method": ["dies", "lora"]},
                            plugins=[plugin])
    vanish, lora = (tmp_path / "results" / "full" / s.run_id for s in expand_file(path))
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("result.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"), "--workers", "1")
    monkeypatch.setattr(os, "replace", real_replace)
    assert res.code == 1, res.out + res.err
    assert "Traceback" not in res.err
    err = flat(res.err)
    assert f"could not write {vanish / 'result.json'}: No space left on device" in err
    assert f"(the disk holding {tmp_path / 'results'} is full)" in err
    assert "NOT RECORDED" in err and "not starting 1 run(s)" in err and "the sweep stopped early" in err
    assert not (vanish / "result.json").exists() and (vanish / "spec.yaml").is_file()  # unfinished, kept
    assert not lora.exists()  # never started
    assert temp_files(tmp_path / "results") == []

    again = run_cli("run", str(path), "--results", str(tmp_path / "results"), "--workers", "1")
    assert again.code == 1, again.err  # vanish fails, as it always does; lora runs
    assert read_result(vanish)["error"]["type"] == "ProcessDied" and read_result(lora)["status"] == "ok"
    [archived] = list((tmp_path / "results" / "full" / ".archive").iterdir())  # the unfinished try, kept
    assert archived.name.startswith(vanish.name + ".")
    assert temp_files(tmp_path / "results") == []


# --- 5. an unusable results root: one message, exit 2, before the preflight -----------------------------

def _no_preflight(monkeypatch):
    import harness.plan

    def refuse(*args, **kwargs):
        raise AssertionError("the preflight ran before the results root was checked")

    monkeypatch.setattr(harness.plan, "plan_experiment", refuse)


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_unusable_results_root_is_one_message_and_exit_2(tmp_path, monkeypatch, where):
    path = write_experiment(tmp_path, "rootless", base=tiny_base())
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    results = {"a file": blocker, "under a file": blocker / "results", "read-only": tmp_path / "ro"}[where]
    expect = {"a file": f"{blocker} is a file, not a folder", "under a file": f"{blocker} is a file, not a folder",
              "read-only": "it cannot be written: Read-only file system"}[where]
    if where == "read-only":  # root may write anywhere: the file system's refusal, as the kernel gives it
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(store.tempfile, "mkstemp", read_only)
    _no_preflight(monkeypatch)
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 2, res.out + res.err
    [line] = res.err.strip().splitlines()
    assert line.startswith("error: `--results`: cannot keep results in ") and expect in line
    assert "Traceback" not in res.err


def test_unusable_results_root_stops_a_search_too(tmp_path, monkeypatch):
    experiment = write_experiment(tmp_path, "s_exp", base=tiny_base(), grid={})
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"experiment": str(experiment), "objectives": ["eval_loss"], "space": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}}))
    (tmp_path / "blocker").write_text("")
    res = run_cli("search", str(sweep), "--results", str(tmp_path / "blocker"))
    assert res.code == 2 and "is a file, not a folder" in res.err and "Traceback" not in res.err


# --- 6. show EXP/RUN, and ambiguous ids ------------------------------------------------------------------

def test_show_names_ambiguous_runs_and_takes_exp_slash_run(tiny_sweep, tmp_path):
    results, lora, _ = copy_store(tiny_sweep, tmp_path)
    shutil.copytree(results / "tiny", results / "twin")  # another experiment holding the same run ids
    slug, short = tiny_sweep.by_method("lora").slug, lora.name.rsplit("-", 1)[1]
    for key in (lora.name, slug, short):
        res = run_cli("show", key, "--results", str(results))
        assert res.code == 2 and res.out == ""
        assert f"`{key}` is ambiguous: it names 2 runs" in res.err
        assert f"tiny/{lora.name}" in res.err and f"twin/{lora.name}" in res.err
    for exp in ("tiny", "twin"):
        for key in (lora.name, slug, short):
            res = run_cli("show", f"{exp}/{key}", "--results", str(results))
            assert res.code == 0, res.err
            assert json.loads(res.out)["run_id"] == lora.name
    assert run_cli("show", f"nope/{lora.name}", "--results", str(results)).code == 2
    shutil.rmtree(results / "twin")
    assert json.loads(run_cli("show", short, "--results", str(results)).out)["run_id"] == lora.name  # unique: as before


# --- 7. a run process never outlives its sweep, and cleans up on SIGTERM ----------------------------------

def _prepared_run(tmp_path, name: str, **train):
    """A run directory as the executor prepares it (spec.yaml), and the run's environment."""
    from harness.executor import child_env

    path = write_experiment(tmp_path / "exp", name, base=tiny_base(train=train))
    [spec] = expand_file(path)
    directory = tmp_path / "results" / name / spec.run_id
    store.prepare_run_dir(directory, {**spec.as_dict(), "plugins": [], "experiment_dir": str(path.parent)})
    return directory, child_env(threads=1)


def test_run_process_exits_at_once_when_its_launcher_is_gone(tmp_path):
    from harness.lifeline import ORPHANED_EXIT, PARENT_ENV

    directory, env = _prepared_run(tmp_path, "orphan")
    stranger = subprocess.Popen(["sleep", "60"])  # alive, and not the run's parent
    try:
        env[PARENT_ENV] = str(stranger.pid)
        t0 = time.monotonic()
        proc = subprocess.run([PYTHON, "-m", "harness.run", str(directory)], env=env, cwd=PROJECT_ROOT,
                              capture_output=True, timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        stranger.kill()
        stranger.wait()
    assert proc.returncode == ORPHANED_EXIT, proc.stderr.decode()[-2000:]
    assert elapsed < 5  # before torch/transformers are imported (a run takes ~10 s or more)
    assert sorted(p.name for p in directory.iterdir()) == ["spec.yaml"]  # nothing trained, nothing written


def test_forked_run_exits_at_once_when_its_sweep_is_gone(tmp_path):
    from harness.launch import start_fork
    from harness.lifeline import ORPHANED_EXIT, PARENT_ENV

    directory, env = _prepared_run(tmp_path, "forked_orphan")
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        env[PARENT_ENV] = str(stranger.pid)  # the fork server's parent is this process, not that one
        run = start_fork(directory, env)
        code = run.wait(timeout=120)
    finally:
        stranger.kill()
        stranger.wait()
    assert code == ORPHANED_EXIT
    assert not (directory / "result.json").exists() and not (directory / "metrics.jsonl").exists()


def test_sweep_killed_as_a_run_starts_leaves_no_run_behind(tmp_path):
    """SIGKILL the sweep process alone (not its group) the moment a run's directory appears: the run dies
    with it, whether it had armed PDEATHSIG yet or not, and never writes a result."""
    path = write_experiment(tmp_path, "abrupt", base=tiny_base(train={"max_steps": 30}))
    [spec] = expand_file(path)
    directory = tmp_path / "results" / "abrupt" / spec.run_id
    sweep = subprocess.Popen([PYTHON, "-m", "harness", "run", str(path), "--results", str(tmp_path / "results")],
                             cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, env={**os.environ, **WIDE})
    try:
        deadline = time.monotonic() + 300
        while not (directory / "spec.yaml").exists() and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (directory / "spec.yaml").exists()
        sweep.kill()
        sweep.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _session(sweep.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _session(sweep.pid)
    finally:
        for pid in _session(sweep.pid):
            os.kill(pid, signal.SIGKILL)
    assert left == []  # no run process (nor fork server) keeps going on its own
    assert not (directory / "result.json").exists()


def _session(sid: int) -> list[int]:
    """Live processes of the session `sid` (the sweep started one of its own)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def test_sigterm_removes_the_run_temp_folders(tmp_path):
    directory, env = _prepared_run(tmp_path, "term", max_steps=400)
    proc = subprocess.Popen([PYTHON, "-m", "harness.run", str(directory)], env=env, cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(directory.glob("trainer-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(directory.glob("trainer-*")), "the run never started training"
        proc.terminate()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGTERM  # exited through SystemExit: `finally` blocks ran
    assert list(directory.glob("trainer-*")) == [] and list(directory.glob("weights-*")) == []
    assert not (directory / "result.json").exists()  # unfinished: the next sweep archives and reruns it


# --- 8. a SIGKILL is `oom` only with the OOM killer's evidence ---------------------------------------------

def test_sigkill_is_oom_only_when_the_oom_killer_counted_it(tmp_path, monkeypatch, plugin):
    import harness.executor_loop as loop

    path = write_experiment(tmp_path / "exp", "sigkill", base=tiny_base(), grid={"method": ["sigkilled"]},
                            plugins=[plugin])
    [spec] = expand_file(path)
    directory, results = tmp_path / "results" / "sigkill" / spec.run_id, tmp_path / "results"
    monkeypatch.setattr(loop, "oom_kill_counts", lambda: {"machine": 7})  # readable, and it does not move
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 1
    killed = read_result(directory)
    assert killed["status"] == "failed" and killed["error"]["type"] == "Killed"
    assert "SIGKILL" in killed["error"]["message"] and "did not rise" in killed["error"]["message"]

    counts = iter([{"machine": 7}, {"machine": 8}])  # the run's start, then its end: the OOM killer struck
    monkeypatch.setattr(loop, "oom_kill_counts", lambda: next(counts))
    res = run_cli("run", str(path), "--results", str(results), "--retry-failed")
    assert res.code == 1
    oom = read_result(directory)
    assert oom["status"] == "oom" and "machine oom_kill 7 → 8" in oom["error"]["message"]
    assert len(list((results / "sigkill" / ".archive").iterdir())) == 1  # the first record, kept


def test_oom_evidence_without_counters_falls_back_to_memory_near_the_limit(monkeypatch):
    import harness.executor_loop as loop

    monkeypatch.setattr(loop, "oom_kill_counts", lambda: {})
    assert loop.oom_evidence({}, rss_peak_mb=950, limit_mb=1000).startswith("no OOM-kill counter readable")
    assert loop.oom_evidence({}, rss_peak_mb=300, limit_mb=1000) is None
    assert loop.oom_evidence({}, rss_peak_mb=None, limit_mb=1000) is None
    monkeypatch.setattr(loop, "oom_kill_counts", lambda: {"cgroup": 2})
    assert loop.oom_evidence({"cgroup": 2}, rss_peak_mb=999, limit_mb=1000) is None  # counted, unchanged: not OOM
    assert "cgroup oom_kill 1 → 2" in loop.oom_evidence({"cgroup": 1})


def test_oom_kill_counters_are_read_here():
    from harness.executor_loop import oom_kill_counts

    counts = oom_kill_counts()
    if not os.path.exists("/proc/vmstat"):
        pytest.skip("no /proc/vmstat")
    assert isinstance(counts.get("machine"), int)  # Linux ≥ 4.13 counts OOM kills machine-wide
