"""The Ray executor on a local two-CPU Ray cluster (two runs at once): the same run ids and statuses
as the local executor, nothing executed twice, a killed worker retried once then recorded, Ctrl-C
leaving no partial record, and a 4-trial search through Ray.

Ray registers its node on the machine's non-loopback address unless none exists, and tests may
only talk to 127.0.0.1: `make test` runs this module inside a network namespace that has only
`lo` (scripts/netns-run.sh). Anywhere else it is skipped."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import expand_file, is_run_process, metric_lines, read_result, run_cli, run_dirs, tiny_base, write_experiment

from harness import store

pytestmark = pytest.mark.ray



def _interfaces() -> list[str]:
    """This process's network namespace's interfaces (/proc/net/dev is per namespace; /sys may not be)."""
    try:
        return sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])
    except OSError:
        return []


LOOPBACK_ONLY = _interfaces() == ["lo"]
ray = pytest.importorskip("ray") if LOOPBACK_ONLY else None
if not LOOPBACK_ONLY:
    pytest.skip("Ray tests run inside a loopback-only network namespace: `make test` (scripts/netns-run.sh)",
                allow_module_level=True)

PLUGIN = '''
from harness.methods import Method, register


class Boom(Method):
    name = "boom"

    def apply(self, model, ctx):
        raise RuntimeError("boom on a Ray worker")


register(Boom)
'''
#: long enough (25 steps, a few seconds of training on the tiny model) for a kill to land mid-run
LONG = tiny_base(train={"max_steps": 25, "micro_batch": 4, "lr": 1.0e-3, "seq_len": 64}, eval={"latency": False})


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A local Ray instance with two CPUs: two single-CPU runs at once, each in its own worker process."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def executor(root: Path, **kw):
    from harness.ray_executor import RayExecutor

    return RayExecutor(root=root, resources={"cpus": 1}, poll_s=0.2, **kw)


def worker_pids() -> list[int]:
    """Ray's RunWorker actor processes (Ray titles them `ray::RunWorker…`)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::RunWorker"):
            pids.append(proc.info["pid"])
    return pids


def run_processes() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter() if is_run_process(p)]


def training(directory: Path) -> bool:
    """The run has logged a step (its driver-side metrics.jsonl mirror has a line)."""
    path = directory / "metrics.jsonl"
    return path.is_file() and bool(path.read_text().strip())


def statuses(results: Path, name: str) -> dict[str, str]:
    return {d.name: read_result(d)["status"] for d in run_dirs(results, name)}


# --- a sweep: the same records as locally, nothing twice --------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("raysweep")
    (root / "exp" / "boomplugin.py").parent.mkdir(parents=True)
    (root / "exp" / "boomplugin.py").write_text(PLUGIN)
    path = write_experiment(root / "exp", "smoke", base=tiny_base(), grid={"method": ["lora", "boom"]},
                            plugins=["boomplugin.py"], resources={"cpus": 1})
    t0 = time.monotonic()
    ray_cli = run_cli("run", str(path), "--results", str(root / "ray"), "--executor", "ray")
    ray_s = time.monotonic() - t0
    t0 = time.monotonic()
    local_cli = run_cli("run", str(path), "--results", str(root / "local"))
    local_s = time.monotonic() - t0
    print(f"smoke sweep (2 runs): Ray with 2 workers {ray_s:.1f}s, local executor {local_s:.1f}s")
    return path, root, ray_cli, local_cli


def test_a_sweep_through_ray_records_what_the_local_executor_records(sweep):
    path, root, ray_cli, local_cli = sweep
    assert ray_cli.code == local_cli.code == 1, ray_cli.err  # the failing method: exit 1, the sweep went on
    expected = {s.run_id for s in expand_file(path)}
    assert set(statuses(root / "ray", "smoke")) == expected
    assert statuses(root / "ray", "smoke") == statuses(root / "local", "smoke")
    assert sorted(set(statuses(root / "ray", "smoke").values())) == ["failed", "ok"]
    for directory in run_dirs(root / "ray", "smoke"):
        result = read_result(directory)
        assert result["env"]["executor"] == {"name": "ray", "attempts": 1, "lost": [], "artifacts_uri": None}
        assert (directory / "spec.yaml").is_file() and (directory / "run.log").is_file()
        if result["status"] == "failed":
            assert "boom on a Ray worker" in result["error"]["message"]  # the plugin travelled to the worker
        else:
            assert [r["step"] for r in metric_lines(directory)] == [1, 2, 3]
            assert (directory / "adapter" / "adapter_model.safetensors").is_file()  # artifacts came back
            local = read_result(root / "local" / "smoke" / directory.name)
            assert result["metrics"]["train_loss"] == pytest.approx(local["metrics"]["train_loss"], rel=1e-4)
    assert "127.0.0.1" in ray_cli.err  # the node each run ran on


def test_a_second_sweep_through_ray_executes_nothing(sweep):
    path, root, _, _ = sweep
    before = {d.name: (d / "result.json").stat().st_mtime_ns for d in run_dirs(root / "ray", "smoke")}
    again = run_cli("run", str(path), "--results", str(root / "ray"), "--executor", "ray")
    assert again.code == 1
    assert again.err.count("skipped (finished)") == 2
    assert {d.name: (d / "result.json").stat().st_mtime_ns for d in run_dirs(root / "ray", "smoke")} == before
    assert not worker_pids()


# --- a lost worker, Ctrl-C -------------------------------------------------------------------------

def kill_worker_when_training(times: int):
    """A monitor (called by the driver at every poll of a live run) that SIGKILLs the run's Ray worker
    process once the run has logged a step, on its first `times` attempts."""
    killed: list[int] = []

    def monitor(spec, directory):
        if len(killed) < times and training(directory):
            (pid,) = worker_pids()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return None

    return monitor, killed


def test_a_worker_killed_mid_run_is_retried_once_then_recorded(tmp_path):
    path = write_experiment(tmp_path, "lost", base=LONG, grid={"seeds": [0, 1]})
    first, second = expand_file(path)
    ex = executor(tmp_path / "results")

    monitor, killed = kill_worker_when_training(times=1)
    (result,) = ex.run([first], monitor=monitor)
    assert len(killed) == 1
    assert result["status"] == "ok"
    assert result["env"]["executor"]["attempts"] == 2
    (reason,) = result["env"]["executor"]["lost"]
    assert "attempt 1" in reason and "127.0.0.1" in reason
    assert [r["step"] for r in metric_lines(store.run_dir("lost", first.run_id, tmp_path / "results"))] == list(range(1, 26))

    monitor, killed = kill_worker_when_training(times=2)
    (result,) = ex.run([second], monitor=monitor)
    assert len(killed) == 2
    assert result["status"] == "failed"
    assert result["error"]["message"].startswith("lost its Ray worker 2 times")
    assert len(result["env"]["executor"]["lost"]) == 2
    time.sleep(1.0)
    assert not worker_pids() and not run_processes()  # the run processes died with their workers


def test_ctrl_c_cancels_the_runs_and_leaves_no_partial_record(tmp_path):
    path = write_experiment(tmp_path, "cancel", base=LONG, grid={"seeds": [0, 1]})
    specs = expand_file(path)
    ex = executor(tmp_path / "results")

    def interrupt(spec, directory):
        if training(directory):
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver's loop

    with pytest.raises(KeyboardInterrupt):
        ex.run(specs, monitor=interrupt)
    for spec in specs:
        assert not store.run_dir("cancel", spec.run_id, tmp_path / "results").exists()
        claim = store.try_claim("cancel", spec.run_id, tmp_path / "results")
        assert claim is not None  # the driver let go of every claim
        claim.release()
    deadline = time.monotonic() + 10
    while (worker_pids() or run_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker_pids() and not run_processes()


# --- a search -------------------------------------------------------------------------------------

def test_a_four_trial_search_through_ray(tmp_path):
    import optuna

    base = tiny_base(train={"max_steps": 12, "micro_batch": 4, "lr": 1.0e-3, "seq_len": 64, "warmup_ratio": 0.0},
                     eval={"latency": False, "every_steps": 4})
    experiment = write_experiment(tmp_path, "raysearch_exp", base=base, grid={}, resources={"cpus": 1})
    sweep = tmp_path / "raysearch.yaml"
    sweep.write_text(yaml.safe_dump({
        "experiment": str(experiment), "objectives": ["eval_loss"], "n_trials": 4,
        "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
        "sampler": {"name": "random", "seed": 3}, "pruner": {"name": "median", "n_startup_trials": 2}}))
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    cli = run_cli("search", str(sweep), "--results", str(results), "--executor", "ray",
                  "--artifacts-uri", f"file://{artifacts}")
    assert cli.code == 0, cli.out + cli.err
    assert "2 at once on Ray" in cli.out
    study = optuna.load_study(study_name="raysearch", storage=f"sqlite:///{results / 'raysearch' / 'study.db'}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({t.params["train.lr"] for t in trials}) == 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    # the pruner saw each run's periodic eval losses, mirrored from the worker while it trained
    assert all(t.intermediate_values for t in trials)
    run_ids = {t.user_attrs["run_id"] for t in trials}
    assert {d.name for d in run_dirs(results, "raysearch")} == run_ids
    for run_id in run_ids:
        result = read_result(results / "raysearch" / run_id)
        uri = result["env"]["executor"]["artifacts_uri"]
        if result["status"] == "ok":  # adapters went to the artifacts URI, not back to the driver
            assert uri == f"file://{artifacts}/raysearch/{run_id}"
            assert (artifacts / "raysearch" / run_id / "adapter" / "adapter_model.safetensors").is_file()
            assert not (results / "raysearch" / run_id / "adapter").exists()
    assert json.loads((results / "raysearch" / store.SEARCH_FILE).read_text())["study_name"] == "raysearch"


# --- a run bigger than one worker ----------------------------------------------------------------

def test_a_two_rank_ddp_run_is_placed_whole_and_recorded_once(tmp_path):
    """A `world_size: 2` run asks Ray for both ranks' CPUs in one actor (the whole 2-CPU cluster, so
    it runs alone), launches torchrun inside it and records one result, as the local executor does."""
    base = tiny_base(train={"distributed": "ddp", "world_size": 2, "micro_batch": 2, "max_steps": 3,
                            "seq_len": 64}, eval={"latency": False})
    path = write_experiment(tmp_path, "rayddp", base=base, resources={"cpus": 1})
    (spec,) = expand_file(path)
    (result,) = executor(tmp_path / "results").run([spec])
    assert result["status"] == "ok", result.get("error")
    (directory,) = run_dirs(tmp_path / "results", "rayddp")
    record = read_result(directory)
    assert record["env"]["world_size"] == 2 and record["env"]["distributed_backend"] == "gloo"
    assert len(record["metrics"]["peak_mem_train_mb_per_rank"]) == 2
    assert not [p for p in directory.parent.iterdir() if ".rank" in p.name]
    time.sleep(1.0)
    assert not worker_pids() and not run_processes()
