"""Distributed runs (`train.distributed`, `train.world_size`): gloo DDP over two CPU processes through torchrun,
the same losses as one process with the same effective batch, one record, a killed rank failing the whole run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness import distributed
from harness.config import build_run_config
from harness.errors import ConfigError
from tests.conftest import expand_file, metric_lines, read_result, run_cli, run_dirs, tiny_base, write_experiment

#: one optimizer step sees 4 examples either way: 2 ranks × 2, or 1 process × 2 × 2 accumulated
DDP = {"distributed": "ddp", "world_size": 2, "micro_batch": 2, "grad_accum": 1}
SINGLE = {"micro_batch": 2, "grad_accum": 2}


def _config(**train):
    return build_run_config(tiny_base(train=train), file="t.yaml")


# -- configuration -----------------------------------------------------------------------------------------

def test_default_leaves_the_run_spec_and_id_as_they_were():
    spec = _config().as_dict()["train"]
    assert "distributed" not in spec and "world_size" not in spec
    assert _config(distributed="none", world_size=1).as_dict() == _config().as_dict()
    assert _config(distributed="ddp", world_size=2).as_dict()["train"]["world_size"] == 2


def test_ranks_without_a_distributed_mode_are_refused():
    with pytest.raises(ConfigError, match="needs `distributed: ddp`"):
        _config(world_size=2)
    with pytest.raises(ConfigError, match="distributed"):
        _config(distributed="pipeline")


def test_processes_and_launch_command():
    assert distributed.processes(_config().train) == 1
    assert distributed.processes(_config(distributed="ddp", world_size=4).train) == 4
    argv = distributed.command(Path("/r/x"), 2)
    assert argv[1:4] == ["-m", "harness.distributed", "--standalone"] and "--nproc_per_node=2" in argv
    assert argv[-3:] == ["-m", "harness.run", "/r/x"]


def test_trainer_arguments_per_mode():
    """The arguments handed to the Trainer (FSDP cannot run on this CPU: its configuration path is checked)."""
    assert distributed.trainer_args(_config().train, "cpu") == {}
    ddp = distributed.trainer_args(_config(distributed="ddp", world_size=2).train, "cpu")
    assert ddp["ddp_backend"] == "gloo" and ddp["ddp_timeout"] == distributed.DEFAULT_TIMEOUT_S
    fsdp = distributed.trainer_args(_config(distributed="fsdp", world_size=2, gradient_checkpointing=True).train,
                                    "cuda")
    assert fsdp["ddp_backend"] == "nccl" and fsdp["fsdp"] == "full_shard auto_wrap"
    assert fsdp["fsdp_config"]["use_orig_params"] is False and fsdp["fsdp_config"]["activation_checkpointing"]
    from dataclasses import fields

    from transformers import TrainingArguments

    assert set(fsdp) <= {f.name for f in fields(TrainingArguments)}  # each one a TrainingArguments field
    assert fsdp["fsdp_config"]["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_failure_reason_names_the_rank(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("""torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
harness.run FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-01_10:00:00
  host      : h
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 123)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 123
============================================================
""")
    reason = distributed.failure_reason(log, 2)
    assert "rank 1 of 2" in reason and "SIGKILL" in reason
    (tmp_path / "empty.log").write_text("nothing")
    assert distributed.failure_reason(tmp_path / "empty.log", 2) is None


def test_local_executor_hands_a_run_all_its_gpus_at_once(monkeypatch, tmp_path):
    from harness import executor as executor_mod
    from harness.grid import RunSpec  # noqa: F401  (specs come from the file)

    monkeypatch.setattr(executor_mod, "gpu_count", lambda: 3)
    ex = executor_mod.LocalExecutor(root=tmp_path, exclusive=False)
    path = write_experiment(tmp_path, "g", base=tiny_base(train=DDP))
    spec = expand_file(path)[0]
    assert ex._fits(spec)
    ex._free_gpus = [2]
    assert not ex._fits(spec)  # never split: waits for two free GPUs
    ex._free_gpus = [0, 2]
    assert ex._fits(spec)


# -- gloo DDP over two CPU processes -------------------------------------------------------------------------

def _experiment(tmp_path: Path, steps: int) -> Path:
    # a grid entry of `train` is the whole section: the base's options go in each
    common = {**tiny_base()["train"], "max_steps": steps}
    return write_experiment(tmp_path / "exp", "ddp", base=tiny_base(), grid={"train": [{**common, **DDP},
                                                                                      {**common, **SINGLE}]})


def test_two_ranks_match_one_process_and_record_once(tmp_path):
    path = _experiment(tmp_path, 3)
    results = tmp_path / "results"
    os.environ["FTBENCH_RESULTS"] = str(results)
    try:
        out = run_cli("run", str(path))
        assert out.code == 0, out.err
        dirs = run_dirs(results, "ddp")
        assert len(dirs) == 2 and not [p for p in (results / "ddp").iterdir() if ".rank" in p.name]
        by_ranks = {read_result(d)["env"].get("world_size"): d for d in dirs}
        two, one = read_result(by_ranks[2]), read_result(by_ranks[None])
        assert two["status"] == one["status"] == "ok"
        assert two["env"]["distributed_backend"] == "gloo" and two["spec"]["train"]["distributed"] == "ddp"
        per_rank = two["metrics"]["peak_mem_train_mb_per_rank"]
        assert len(per_rank) == 2 and two["metrics"]["peak_mem_train_mb"] == max(per_rank)
        assert two["metrics"]["train_tokens"] == one["metrics"]["train_tokens"]  # every rank's tokens
        curve2 = [r["loss"] for r in metric_lines(by_ranks[2]) if "loss" in r]
        curve1 = [r["loss"] for r in metric_lines(by_ranks[None]) if "loss" in r]
        assert len(curve2) == len(curve1) == 3 and curve2 == pytest.approx(curve1, abs=2e-3)
        assert two["metrics"]["eval_loss"] == pytest.approx(one["metrics"]["eval_loss"], abs=2e-3)
        assert (by_ranks[2] / "adapter").is_dir()
        again = run_cli("run", str(path))  # claims and skips per run, not per rank
        assert again.code == 0 and again.err.count("skipped (finished)") == 2
    finally:
        os.environ.pop("FTBENCH_RESULTS", None)


def _rank_processes() -> list[psutil.Process]:
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "harness.run" in " ".join(proc.cmdline()) and "LOCAL_RANK" in proc.environ():
                out.append(proc)
        except psutil.Error:
            pass
    return out


def test_a_killed_rank_fails_the_whole_run_and_leaves_nothing(tmp_path):
    from harness.executor import LocalExecutor

    path = write_experiment(tmp_path / "exp", "kill", base=tiny_base(train={**DDP, "max_steps": 400}))
    specs = expand_file(path)
    results = tmp_path / "results"
    ex = LocalExecutor(root=results, poll_s=0.2)
    done: list = []
    thread = threading.Thread(target=lambda: done.append(ex.run(specs)))
    thread.start()
    victim, deadline = None, time.monotonic() + 240
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        lines = list((results / "kill").glob("*/metrics.jsonl"))
        if lines and lines[0].read_text().count("\n") >= 2:
            victim = next((p for p in _rank_processes() if p.environ().get("RANK") == "1"), None)
    assert victim is not None, "no rank 1 training"
    victim.send_signal(signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    result = done[0][0]
    assert result["status"] == "failed", result["error"]
    print(result["error"]["message"])
    message = result["error"]["message"]
    assert "rank" in message.lower() or "peer" in message.lower() or "closed" in message.lower(), message
    time.sleep(1)
    assert not _rank_processes() and not [p for p in psutil.Process().children(recursive=True)
                                          if "torch.distributed" in " ".join(p.cmdline()) or
                                          "harness.distributed" in " ".join(p.cmdline())]
    assert read_result(store_dir := Path(result["spec"] and results / "kill" / result["run_id"]))["status"] == "failed"
    assert not [p for p in store_dir.parent.iterdir() if ".rank" in p.name]
