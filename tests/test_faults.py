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
from harness.report.frame import config_label
from harness.errors import ConfigError

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
    assert config_label(tiny_sweep.by_method("full").slug) in text.split("## Failures and caveats")[0]


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


# === Input (issue 19, second half): names, bounded YAML, every mistake at once, flags, divergence ==========
# Each test gives the input a hostile or careless user would and asserts the exit code (2: refused, with a
# message naming the file, the field and what is allowed), that no traceback is printed, and that nothing is
# written where it should not be.

def refused(res, *needles: str) -> str:
    """The one `error:` message of a refused command (exit 2, no traceback), holding every needle."""
    assert res.code == 2, res.out + res.err
    assert res.err.startswith("error: ") and "Traceback" not in res.out + res.err, res.err
    for needle in needles:
        assert needle in flat(res.err), f"{needle!r} not in {res.err}"
    return res.err


def billion_laughs(under: str = "description") -> str:
    """The issue's ~430-byte YAML alias bomb: nine levels of nine aliases (9**9 = 387,420,489 strings), as nested
    keys under `description` or as the values of one grid axis."""
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
        f"&{level} [" + ",".join([f"*{prev}"] * 9) + "]" for prev, level in zip("abcdefgh", "bcdefghi")]
    if under == "grid":
        body = "grid:\n  method.r: [" + ", ".join(levels) + "]\n"
    else:
        body = "description:\n" + "".join(f"  {key}: {value}\n" for key, value in zip("abcdefghi", levels))
    return "name: bomb\n" + body + "base: {model: tiny-smollm2, tracking: none}\n"


# --- 9. names are names: one safe folder name, every derived path inside its root -------------------------

@pytest.mark.parametrize("name", ["../escaped", "../../escaped", "/tmp/ftbench-escaped-abs", "a/b", "..",
                                  "sp ace", "-flag", ""])
def test_experiment_name_must_be_one_safe_folder_name(tmp_path, name):
    path = write_experiment(tmp_path / "exp", "named", base=tiny_base(), name=name)
    results = tmp_path / "results"
    before = {p for p in tmp_path.rglob("*")}
    for args in (("run", str(path), "--results", str(results)), ("run", str(path), "--dry-run", "--results", str(results))):
        refused(run_cli(*args), f"{path}: `name`: must be letters, digits, `.`, `_` and `-`", repr(name))
    assert {p for p in tmp_path.rglob("*")} == before  # no run directory, lock or report anywhere
    assert not os.path.exists("/tmp/ftbench-escaped-abs")


def test_experiment_named_after_an_unsafe_file_name_is_refused(tmp_path):
    path = write_experiment(tmp_path, "my experiment", base=tiny_base())
    refused(run_cli("run", str(path), "--dry-run", "--results", str(tmp_path / "r")),
            "named after its file, `my experiment`", "rename the file or set `name:`")


def test_commands_refuse_a_name_that_leaves_the_results_root(tiny_sweep, tmp_path):
    results, _, _ = copy_store(tiny_sweep, tmp_path / "in")
    (tmp_path / "outside").mkdir()
    for args in (("ls", "../outside"), ("report", "../outside", "--out", str(tmp_path / "reports")),
                 ("show", "../outside/x"), ("eval", "../outside")):
        refused(run_cli(*args, "--results", str(results)), "`experiment`: must be letters, digits")
    assert not (tmp_path / "reports").exists()
    with pytest.raises(ConfigError):
        store.run_dir("tiny", "../../escaped", results)
    with pytest.raises(ConfigError):
        store.try_claim("tiny", "../escaped", results)
    assert store.run_dir("tiny", "lora-s0-1a2b3c4d", results) == results / "tiny" / "lora-s0-1a2b3c4d"


def test_sweep_named_after_an_unsafe_file_name_is_refused(tmp_path):
    experiment = write_experiment(tmp_path, "s_exp", base=tiny_base())
    sweep = tmp_path / "lora hpo.yaml"
    sweep.write_text(yaml.safe_dump({"experiment": str(experiment), "objectives": ["eval_loss"], "space": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}}))
    refused(run_cli("search", str(sweep), "--results", str(tmp_path / "results")),
            "named after its file, `lora hpo`", "rename the file")
    assert not (tmp_path / "results").exists()


# --- 10. bounded input: size, binary, aliases, depth, grid points ---------------------------------------------

@pytest.mark.parametrize("under", ["description", "grid"])
def test_alias_bomb_is_refused_in_under_a_second(tmp_path, under):
    import tracemalloc

    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs(under))
    assert len(path.read_bytes()) < 600
    tracemalloc.start()
    t0 = time.perf_counter()
    res = run_cli("run", str(path), "--dry-run", "--results", str(tmp_path / "r"))
    seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    where = {"description": "line 11, column 3: `description.i`", "grid": "line 3, column 3: `grid.method.r`"}[under]
    refused(res, f"{path}: {where} stands for", "values once its aliases (`*name`) are expanded", "at most 100,000")
    assert seconds < 1.0 and peak < 50 * 2**20, (seconds, peak)


def test_alias_bomb_process_stays_under_200_mb(tmp_path):
    """The whole `ftbench run BOMB --dry-run` process, imports included (its own peak RSS, as /usr/bin/time -v
    reports it)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    # VmHWM: this process's own peak (ru_maxrss would carry over the forking pytest's peak through exec)
    code = ("import sys\nfrom harness.cli import main\ncode = main(sys.argv[1:])\n"
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print('maxrss_kib', hwm, file=sys.stderr)\nsys.exit(code)")
    t0 = time.perf_counter()
    proc = subprocess.run([PYTHON, "-c", code, "run", str(path), "--dry-run"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "FTBENCH_RESULTS": str(tmp_path)})
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2 and "stands for" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    peak_kib = int(proc.stderr.split("maxrss_kib ")[1].split()[0])
    assert peak_kib < 200 * 1024 and seconds < 10, (peak_kib, seconds)  # (the interpreter's start-up included)


@pytest.mark.parametrize("content, needle", [
    ("base: &r\n  x: *r\n", "refers to a list or mapping that contains it"),
    ("base: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 64 levels"),
    ("base:\n  train:\n" + "".join(f"    {'  ' * i}k{i}:\n" for i in range(80)) + "\n", "nested deeper than 64 levels"),
    ("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, *{'a' if i == 0 else f'b{i - 1}'}]\n"
                                                          for i in range(70)), "nested deeper than 64 levels"),
])
def test_recursive_and_deep_yaml_is_refused_without_a_traceback(tmp_path, content, needle):
    path = tmp_path / "deep.yaml"
    path.write_text(content)
    t0 = time.perf_counter()
    refused(run_cli("run", str(path), "--dry-run", "--results", str(tmp_path / "r")), str(path), needle)
    assert time.perf_counter() - t0 < 2.0


def test_binary_and_oversized_files_are_refused(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    refused(run_cli("run", str(binary), "--dry-run"), f"{binary}: is not UTF-8 text (a binary file?)")
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"base: {}\n\x00\n")
    refused(run_cli("run", str(nul), "--dry-run"), f"{nul}: malformed YAML", "#x0000")
    big = tmp_path / "seeds.yaml"  # the issue's 10**6 seeds: 6.9 MB of YAML
    big.write_text("base: {model: tiny-smollm2}\ngrid:\n  seeds: [" + ", ".join(map(str, range(10**6))) + "]\n")
    t0 = time.perf_counter()
    refused(run_cli("run", str(big), "--dry-run"), f"{big}: is {big.stat().st_size:,} bytes",
            "may hold at most 1,048,576 bytes (1 MiB)")
    assert time.perf_counter() - t0 < 1.0


def test_grid_points_are_capped_before_the_grid_is_built(tmp_path):
    from harness.config import load_experiment
    from harness.grid import expand

    path = write_experiment(tmp_path, "huge", base=tiny_base(), grid={
        "seeds": list(range(100)), "method.r": list(range(1, 101)), "train.lr": [1e-3 * k for k in range(1, 101)]})
    t0 = time.perf_counter()
    refused(run_cli("run", str(path), "--dry-run"), f"{path}: `grid`: expands to 1,000,000 runs",
            "more than the 5,000 allowed; pass `--max-runs 1000000`")
    assert time.perf_counter() - t0 < 1.0
    seeds = load_experiment(write_experiment(tmp_path, "seeds", base=tiny_base())).model_copy(
        update={"grid": {"seeds": list(range(10**6))}})  # 10**6 values, as the issue's file held them
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="`grid.seeds`: 1,000,000 values: the grid expands to at least 1,000,000 "
                                          "runs, more than the 5,000 allowed; pass `--max-runs 1000000`"):
        expand(seeds)
    assert time.perf_counter() - t0 < 1.0
    repeats = write_experiment(tmp_path, "repeats", base=tiny_base(), grid={"repeats": 10**9})
    refused(run_cli("run", str(repeats), "--dry-run"), "`grid.repeats`: 1,000,000,000 repeats are more than the "
            "5,000 runs allowed; pass `--max-runs 1000000000`")
    four = write_experiment(tmp_path, "four", base=tiny_base(), grid={"seeds": [0, 1], "method": ["lora", "full"]})
    refused(run_cli("run", str(four), "--dry-run", "--max-runs", "3"), "expands to 4 runs (2 (seeds) × 2 (method))",
            "more than the 3 allowed")
    assert run_cli("run", str(four), "--dry-run", "--max-runs", "4").code == 0
    refused(run_cli("run", str(four), "--dry-run", "--max-runs", "0"), "`--max-runs`: must be a positive integer")


def test_search_trials_are_capped_by_max_runs(tmp_path):
    experiment = write_experiment(tmp_path, "s_exp", base=tiny_base())
    sweep = tmp_path / "capped.yaml"
    sweep.write_text(yaml.safe_dump({"experiment": str(experiment), "objectives": ["eval_loss"], "n_trials": 100000,
                                     "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2}}}))
    results = tmp_path / "results"
    refused(run_cli("search", str(sweep), "--results", str(results)), f"{sweep}: `n_trials`: 100,000 trials are more "
            "than the 5,000 runs allowed; pass `--max-runs 100000`")
    refused(run_cli("search", str(sweep), "--trials", "7", "--max-runs", "6", "--results", str(results)),
            "`--trials`: 7 trials are more than the 6 runs allowed")
    assert not results.exists()


# --- 11. every mistake of a file in one message, in file order -------------------------------------------------

NINE_MISTAKES = """\
name: nine
descriptoin: a typo
base:
  model: ./no/such/model
  data: {name: file, path: ./no/such/data.jsonl}
  method: {name: lora, r: -4, alfa: 8}
  train: {micro_batch: four, lr: -1, lr_rate: 3}
grid:
  seeds: []
  method: [lora, nosuch]
"""


def test_every_mistake_of_a_file_comes_in_one_message_in_file_order(tmp_path):
    path = tmp_path / "nine.yaml"
    path.write_text(NINE_MISTAKES)
    err = refused(run_cli("run", str(path), "--dry-run", "--results", str(tmp_path / "r")))
    expected = [  # (field, message) in the order the file gives them
        ("`descriptoin`", "unknown top-level key `descriptoin`. Did you mean `description`?"),
        ("`model.name`", "local model folder `./no/such/model` does not exist"),
        ("`data.path`", "data file `./no/such/data.jsonl` does not exist"),
        ("`[method=lora] method.r`", "greater than 0, but got -4"),
        ("`[method=lora] method.alfa`", "option `alfa` does not belong to method `lora`. Did you mean `alpha`?"),
        ("`[method=lora] train.micro_batch`", "must be an integer or `auto` (or arithmetic over this section's "
                                              "numbers, such as `2*r`), but got 'four'"),
        ("`[method=lora] train.lr`", "greater than 0, but got -1"),
        ("`[method=lora] train.lr_rate`", "unknown key `lr_rate`"),
        ("`grid.seeds`", "empty axis: give at least one value"),
        ("`[method=nosuch] method.name`", "unknown method `nosuch`"),
    ]
    lines = [line.removeprefix("error: ") for line in err.strip().splitlines()]
    assert all(line.startswith(f"{path}: `") for line in lines), lines
    positions = [next(i for i, line in enumerate(lines) if field in line and message in line)
                 for field, message in expected]
    assert positions == sorted(positions), lines
    assert "unknown name `four`" not in err  # the evaluator's words are not a type error's


def test_a_word_in_a_numeric_field_reads_as_a_type_error(tmp_path):
    path = write_experiment(tmp_path, "words", base=tiny_base(train={"micro_batch": "four", "lr": "fast",
                                                                     "grad_accum": "2*micro_batchh"}))
    refused(run_cli("run", str(path), "--dry-run"),
            "`train.micro_batch`: must be an integer or `auto` (or arithmetic over this section's numbers, such as "
            "`2*r`), but got 'four'", "`train.lr`: must be a number (or arithmetic", "but got 'fast'",
            "`train.grad_accum`: must be an integer: unknown name `micro_batchh`")


# --- 12. flags, empty axes by --set, empty files, JSONL lines ---------------------------------------------------

@pytest.mark.parametrize("workers", ["0", "-3"])
def test_workers_must_be_positive(tmp_path, workers):
    path = write_experiment(tmp_path, "w", base=tiny_base())
    refused(run_cli("run", str(path), "--workers", workers, "--results", str(tmp_path / "r")),
            f"`--workers`: must be a positive integer, but got {workers}")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override", ["seeds=[]", "method.r=[]"])
def test_an_empty_axis_by_set_is_refused_like_one_in_the_file(tmp_path, override):
    path = write_experiment(tmp_path, "axes", base=tiny_base(), grid={"seeds": [0, 1], "method.r": [2, 4]})
    key = override.split("=")[0]
    refused(run_cli("run", str(path), "--dry-run", "--set", override), f"SET: `{key}`: empty axis: give at least one value")


@pytest.mark.parametrize("content", ["", "# only a comment\n\n# and another\n", "{}\n", "---\n"])
def test_an_empty_experiment_file_is_refused(tmp_path, content):
    path = tmp_path / "empty.yaml"
    path.write_text(content)
    refused(run_cli("run", str(path), "--results", str(tmp_path / "r")), f"{path}: the experiment file is empty")
    assert not (tmp_path / "r").exists()


def test_a_bad_jsonl_line_is_named_by_its_number(tmp_path):
    data = tmp_path / "qa.jsonl"
    good = json.dumps({"prompt": "p", "response": "r"})
    cases = {"not json": (f"{good}\n{good}\n{{\"prompt\": \"x\",\n", "line 3 is not valid JSON"),
             "a list": (f"{good}\n\n[1, 2]\n", "line 3 must be a JSON object, but holds a list"),
             "no field": (f"{good}\n{json.dumps({'prompt': 'p'})}\n", "line 2 has no field `response`"),
             "binary": (f"{good}\n".encode() + b"\xff\xfe\n", "line 2 is not UTF-8 text")}
    for content, needle in cases.values():
        data.write_bytes(content if isinstance(content, bytes) else content.encode())
        path = write_experiment(tmp_path, "jsonl", base=tiny_base(data={"name": "file", "path": str(data), "n_train": 1,
                                                                        "n_val": 1}))
        refused(run_cli("run", str(path), "--dry-run"), f"{path}: `data.", needle)


# --- 13. divergence beyond NaN: a loss that blows up, a model collapsed to uniform output ----------------------

def test_divergence_rule_blow_up_and_collapse():
    from harness.train import DivergenceRule

    rule = DivergenceRule(vocab_size=49152)  # ln V = 10.80
    assert rule.verdict([(1, 10.82, 2.1), (2, 19.9, 3.0)]) is None  # noisy, but not 10x
    blown = rule.verdict([(1, 10.82, 2.1), (2, 1.996e7, 2.3e11)])
    assert blown.startswith("training loss 1.996e+07 at step 2 is above 10 × its first value 10.82 (step 1) and "
                            "above ln(vocab) = 10.80")
    assert rule.verdict([(1, 0.01, 1.0), (2, 5.0, 1.0)]) is None  # a KL starting near 0: ln V is the floor
    flat = [(1, 10.82, 2.1), (2, 1e3, 1e9), (3, 10.8027, 0.0), (4, 10.8027, 0.0)]
    assert DivergenceRule(factor=None, vocab_size=49152).verdict(flat) is None  # 2 flat steps of 3
    collapsed = DivergenceRule(factor=None, vocab_size=49152).verdict([*flat, (5, 10.8027, 0.0)])
    assert collapsed.startswith("the model collapsed to uniform output: the training loss sat at ln(vocab) = 10.80 "
                                "with a gradient norm below 1e-06 for 3 logged steps (steps 3–5")
    assert DivergenceRule(factor=None, vocab_size=49152).verdict([(3, 10.8027, 0.01)] * 3) is None  # still learning
    assert DivergenceRule(factor=None, collapse_steps=None, vocab_size=49152).verdict([*flat, (5, 10.80, 0.0)]) is None


def test_divergence_options_keep_run_ids_at_their_defaults():
    from harness.config import build_run_config

    plain = build_run_config(tiny_base(), file="f")
    assert build_run_config(tiny_base(train={"diverge_factor": 10, "collapse_steps": 3}), file="f") == plain
    assert not {"diverge_factor", "collapse_steps"} & set(plain.as_dict()["train"])  # same spec, same run id
    assert build_run_config(tiny_base(train={"diverge_factor": None}), file="f").as_dict()["train"]["diverge_factor"] is None


def test_lr_1e3_is_recorded_diverged_with_its_evidence(tmp_path):
    """The issue's run: lr 1e3 on the tiny model (loss 10.8 → ~2e7 → ln(vocab) with zero gradient) finished `ok`."""
    path = write_experiment(tmp_path, "blowup", base=tiny_base(method="full", train={"lr": 1.0e3, "max_steps": 6}),
                            grid={"train.diverge_factor": [10, None]})
    results = tmp_path / "results"
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 1, res.out + res.err
    blown, collapsed = (read_result(d) for d in sorted(run_dirs(results, "blowup"), key=lambda d: "None" in d.name))
    assert [blown["status"], collapsed["status"]] == ["diverged", "diverged"]
    assert "is above 10 × its first value" in blown["error"]["message"]
    assert "collapsed to uniform output" in collapsed["error"]["message"]
    assert "(train.collapse_steps)" in collapsed["error"]["message"]


# --- 14. plugins: imported for `run` (on --dry-run too), never for ls/show/report ------------------------------

def test_plugins_are_imported_for_run_and_dry_run_only(tiny_sweep, tmp_path, monkeypatch):
    import sys

    results, lora, _ = copy_store(tiny_sweep, tmp_path)
    marker = tmp_path / "imported"
    plugin = tmp_path / "marker_plugin.py"
    plugin.write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    doc = yaml.safe_load(tiny_sweep.path.read_text())
    path = write_experiment(tmp_path / "exp", "tiny", plugins=[str(plugin)], **doc)
    for args in (("ls", "tiny"), ("ls", str(path)), ("show", f"tiny/{lora.name}"),
                 ("report", str(path), "--out", str(tmp_path / "reports"))):
        res = run_cli(*args, "--results", str(results))
        assert res.code in (0, 2) and "Traceback" not in res.err, res.out + res.err
    assert not marker.exists()
    # --dry-run loads no model weights either: only configs and a weightless (meta) copy for the method check
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("a dry run loaded model weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    res = run_cli("run", str(path), "--dry-run", "--results", str(results))
    assert res.code == 0 and "2 runs: 2 ok" in flat(res.out), res.out + res.err
    assert marker.read_text() == "x"
    assert any(name.startswith("ftbench_plugin_") for name in sys.modules)
