"""harness.launch: runs forked from a warm interpreter behave as fresh processes do."""

import json

import pytest

from conftest import expand_file, read_result, run_cli, tiny_base, write_experiment
from harness.launch import LAUNCHER_ENV, launcher_for


def test_the_launcher_is_fork_on_cpu_and_a_fresh_process_with_gpus_or_on_request(monkeypatch):
    from harness.errors import ConfigError

    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    assert launcher_for(0) == "fork"
    assert launcher_for(1) == "process"  # CUDA must not be initialised before a fork
    monkeypatch.setenv(LAUNCHER_ENV, "process")
    assert launcher_for(0) == "process"
    monkeypatch.setenv(LAUNCHER_ENV, "Fork")
    assert launcher_for(0) == "fork"
    monkeypatch.setenv(LAUNCHER_ENV, "spawn")
    with pytest.raises(ConfigError, match=r"FTBENCH_LAUNCHER.*`fork` or `process`"):
        launcher_for(0)


def test_a_bad_launcher_is_one_message_and_exit_2(tmp_path, monkeypatch):
    path = write_experiment(tmp_path, "launch", base=tiny_base())
    monkeypatch.setenv(LAUNCHER_ENV, "threads")
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "Traceback" not in res.err
    assert "$FTBENCH_LAUNCHER" in res.err and "`fork` or `process`" in res.err


def test_a_forked_run_records_what_a_fresh_process_records(tmp_path, monkeypatch):
    """The same tiny run through both launchers: the same losses (to 1e-6 relative: once in ~30 full-suite
    runs the two differed in the last bits, as a BLAS call may split its sums otherwise under load; any
    real difference in what the fork inherits is orders larger), its output in run.log, its claim held
    while it runs and let go when it ends."""
    from harness import store
    from harness.executor import LocalExecutor

    path = write_experiment(tmp_path, "launch", base=tiny_base())
    [spec] = expand_file(path)
    results = {}
    for launcher in ("process", "fork"):
        monkeypatch.setenv(LAUNCHER_ENV, launcher)
        root = tmp_path / launcher
        held = []

        def monitor(spec, directory):
            if not held:  # while the run lives, its claim is taken
                held.append(store.try_claim("launch", spec.run_id, root) is None)

        executor = LocalExecutor(workers=1, root=root, poll_s=0.1)
        assert executor.launcher == launcher
        [result] = executor.run([spec], monitor=monitor)
        assert result["status"] == "ok", result.get("error")
        assert held == [True]
        assert store.try_claim("launch", spec.run_id, root) is not None  # let go once it ended
        directory = root / "launch" / spec.run_id
        assert "Traceback" not in (directory / "run.log").read_text()
        results[launcher] = read_result(directory)
    fresh, forked = results["process"]["metrics"], results["fork"]["metrics"]
    for key in ("eval_loss", "train_loss"):
        assert forked[key] == pytest.approx(fresh[key], rel=1e-6, abs=0), key
    for key in ("train_tokens", "trainable_params", "adapter_bytes"):
        assert forked[key] == fresh[key], key
    assert results["fork"]["env"]["torch_threads"] == results["process"]["env"]["torch_threads"]
    assert results["fork"]["run_id"] == results["process"]["run_id"]
    json.dumps(results)  # plain JSON either way
