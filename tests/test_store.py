"""harness.store: run directories, atomic results, claims, archive, and the DataFrame loader."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from harness import store


def spec(run_id="lora-r8-a16-s0-abcd1234", experiment="exp"):
    return {"run_id": run_id, "experiment": experiment, "slug": run_id.rsplit("-", 1)[0],
            "method": {"name": "lora", "r": 8}, "seed": 0}


def finish(tmp_path, run_id, status="ok", started="2026-01-01T00:00:00+00:00", **metrics):
    directory = store.run_dir("exp", run_id, tmp_path)
    store.prepare_run_dir(directory, spec(run_id))
    result = store.make_result(spec(run_id), status=status, error=None, metrics=metrics, env={},
                               started_at=started, finished_at=started)
    store.write_json_atomic(directory / "result.json", result)
    return directory


def test_results_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv(store.RESULTS_ENV, str(tmp_path / "r"))
    assert store.results_root() == tmp_path / "r"
    assert store.run_dir("e", "id") == tmp_path / "r" / "e" / "id"
    monkeypatch.delenv(store.RESULTS_ENV)
    assert store.results_root() == Path("results")


def test_make_result_has_every_contract_key():
    result = store.make_result(spec(), status="ok", error=None, metrics={"eval_loss": 1.5}, env={"python": "3"},
                               started_at="a", finished_at="b")
    assert list(result) == ["run_id", "experiment", "slug", "status", "error", "spec", "metrics", "env",
                            "started_at", "finished_at", "task_meta"]
    assert set(result["metrics"]) == set(store.METRIC_KEYS + store.OPTIONAL_METRIC_KEYS)
    assert result["metrics"]["eval_loss"] == 1.5
    assert result["metrics"]["train_loss"] is None
    with pytest.raises(ValueError, match="status"):
        store.make_result(spec(), status="done", error=None, metrics={}, env={}, started_at=None, finished_at=None)


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    path = tmp_path / "result.json"
    store.write_json_atomic(path, {"a": 1})
    store.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_status_of(tmp_path):
    directory = store.run_dir("exp", "x", tmp_path)
    assert store.status_of(directory) == "new"
    store.prepare_run_dir(directory, spec("x"))
    assert store.status_of(directory) == "unfinished"
    assert (directory / "spec.yaml").is_file()
    (directory / "result.json").write_text("{not json")
    assert store.status_of(directory) == "damaged"  # a torn file is not a result: read as damaged, rerun
    assert store.read_result(directory) is None
    finish(tmp_path, "y", status="diverged")
    assert store.status_of(store.run_dir("exp", "y", tmp_path)) == "diverged"


def test_prepare_run_dir_archives_what_is_there_never_deletes(tmp_path):
    directory = store.run_dir("exp", "x", tmp_path)
    assert store.prepare_run_dir(directory, spec("x")) is None
    (directory / "metrics.jsonl").write_text('{"step": 1}\n')
    moved = store.prepare_run_dir(directory, spec("x"))
    assert sorted(p.name for p in directory.iterdir()) == ["spec.yaml"]
    assert moved.parent == tmp_path / "exp" / ".archive" and (moved / "metrics.jsonl").is_file()
    finished = finish(tmp_path, "done")
    record = (finished / "result.json").read_bytes()
    kept = store.prepare_run_dir(finished, spec("done"))
    assert (kept / "result.json").read_bytes() == record


def test_archive_moves_and_never_overwrites(tmp_path):
    first = finish(tmp_path, "r1")
    a = store.archive(first)
    assert not first.exists()
    assert a.parent == tmp_path / "exp" / ".archive"
    assert (a / "result.json").is_file()
    again = finish(tmp_path, "r1")
    b = store.archive(again)
    assert a != b and a.exists() and b.exists()


def test_claim_is_exclusive_and_released(tmp_path):
    claim = store.try_claim("exp", "r1", tmp_path)
    assert claim is not None
    assert store.try_claim("exp", "r1", tmp_path) is None  # another open file description is refused
    assert store.try_claim("exp", "r2", tmp_path) is not None
    claim.release()
    again = store.try_claim("exp", "r1", tmp_path)
    assert again is not None
    again.release()


def test_claim_dies_with_its_process(tmp_path):
    """A killed holder never leaves a stale claim: the kernel drops the flock."""
    code = ("import sys, time; from pathlib import Path; from harness import store; "
            "c = store.try_claim('exp', 'r1', Path(sys.argv[1])); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=PROJECT_ROOT)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert store.try_claim("exp", "r1", tmp_path) is None
    finally:
        proc.kill()
        proc.wait()
    claim = store.try_claim("exp", "r1", tmp_path)
    assert claim is not None
    claim.release()


def test_iter_results_and_find_run(tmp_path):
    finish(tmp_path, "lora-s0-aaaa1111", started="2026-01-02T00:00:00+00:00")
    finish(tmp_path, "full-s0-bbbb2222", started="2026-01-01T00:00:00+00:00")
    store.prepare_run_dir(store.run_dir("exp", "lora-s1-cccc3333", tmp_path), spec("lora-s1-cccc3333"))  # unfinished
    store.archive(finish(tmp_path, "old-s0-dddd4444"))
    assert [r["run_id"] for r in store.iter_results("exp", tmp_path)] == ["full-s0-bbbb2222", "lora-s0-aaaa1111"]
    assert store.find_run("lora-s0", tmp_path).name == "lora-s0-aaaa1111"
    assert store.find_run("bbbb2222", tmp_path).name == "full-s0-bbbb2222"
    assert store.find_run("full-s0-bbbb2222", tmp_path).name == "full-s0-bbbb2222"
    assert store.find_run("dddd4444", tmp_path) is None  # archived runs are not found
    assert store.iter_results("nope", tmp_path) == []


def test_load_flattens_spec_and_metrics(tmp_path):
    finish(tmp_path, "a-s0-11111111", eval_loss=2.0, extra_metric=5)
    finish(tmp_path, "b-s0-22222222", status="failed")
    df = store.load("exp", tmp_path)
    assert len(df) == 2
    assert {"run_id", "slug", "status", "error_type", "method.name", "method.r", "seed", *store.METRIC_KEYS} <= set(df.columns)
    row = df.set_index("run_id").loc["a-s0-11111111"]
    assert row["eval_loss"] == 2.0 and row["extra_metric"] == 5 and row["method.r"] == 8


def test_load_of_a_real_sweep(tiny_sweep):
    df = store.load("tiny", tiny_sweep.results)
    assert len(df) == len(tiny_sweep.specs) == 2
    assert sorted(df["method.name"]) == ["full", "lora"]
    assert df["eval_loss"].notna().all()
    assert set(df["run_id"]) == {s.run_id for s in tiny_sweep.specs}
    assert (df["status"] == "ok").all()
    assert (df["data.n_train"] == 16).all()
