"""Runs bigger than one process: `train.distributed` (ddp, fsdp) over `train.world_size` ranks, launched by torchrun.

A distributed run is still one run: the executor starts `python -m torch.distributed.run --standalone
--nproc_per_node N -m harness.run RUN_DIR` in place of `python -m harness.run RUN_DIR` and every rank
runs the same recipe (the transformers Trainer does DDP/FSDP when launched so). Rank 0 alone writes into
the run directory (result.json, metrics.jsonl, adapter, tracker run); the other ranks work in a scratch
folder beside it that goes when they end. torchrun's agent ties the ranks together: one rank that dies
makes it stop the others and exit non-zero, so the run fails whole; SIGTERM to the agent stops every rank.

Standard library only at import time (the executors import it before torch).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from datetime import timedelta
from pathlib import Path

__all__ = ["MODES", "TIMEOUT_ENV", "backend", "command", "discard_scratch", "env", "failure_reason", "gather", "is_main", "processes", "remove_scratch",
           "rank", "scratch_dir", "setup", "trainer_args", "world_size"]

MODES = ("none", "ddp", "fsdp")
#: seconds a collective may wait for a peer before the process group fails the run (no hung run)
TIMEOUT_ENV = "FTBENCH_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600


def processes(train) -> int:
    """Processes (ranks, one GPU each on CUDA) a run with TrainCfg `train` takes: 1 unless distributed."""
    return int(getattr(train, "world_size", 1)) if getattr(train, "distributed", "none") != "none" else 1


def command(directory: Path, nproc: int) -> list[str]:
    """The argv that starts a distributed run: torchrun (`python -m harness.distributed` runs it after tying
    itself to the sweep), one node, `nproc` ranks of `harness.run`."""
    return [sys.executable, "-m", "harness.distributed", "--standalone", f"--nproc_per_node={nproc}",
            "--monitor_interval=0.2", "-m", "harness.run", str(directory)]


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Ranks of this run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def backend(device: str) -> str:
    """gloo on CPU, nccl on CUDA."""
    return "nccl" if device == "cuda" else "gloo"


def timeout_s() -> int:
    return int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def setup(device: str) -> None:
    """Under torchrun: pin this rank to its GPU (`cuda` then means cuda:LOCAL_RANK) and start the process
    group with a timeout, before the Trainer would start one without ours. A no-op outside torchrun."""
    if "LOCAL_RANK" not in os.environ:
        return
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        dist.init_process_group(backend(device), timeout=timedelta(seconds=timeout_s()))


def gather(value):
    """`value` from every rank, in rank order ([value] outside a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def scratch_dir(run_dir: Path) -> Path:
    """Where a rank other than 0 writes what the recipe writes (beside the run directory, so the
    run's neighbours resolve the same; a dot folder, so the store never lists it)."""
    run_dir = Path(run_dir)
    if is_main():
        return run_dir
    scratch = _scratch(run_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


def discard_scratch(run_dir: Path) -> None:
    """Remove this rank's scratch folder (nothing on rank 0)."""
    if not is_main():
        shutil.rmtree(_scratch(Path(run_dir)), ignore_errors=True)


def remove_scratch(run_dir: Path) -> None:
    """Remove every rank's scratch folder of a run (the executor, once the run ended: a killed rank's too)."""
    for scratch in Path(run_dir).parent.glob(f".{Path(run_dir).name}.rank*"):
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.rank{rank()}"


def env(device: str | None) -> dict:
    """What a distributed run's `env` records: world size and backend ({} outside torchrun)."""
    if "LOCAL_RANK" not in os.environ:
        return {}
    return {"world_size": world_size(), "distributed_backend": backend(device or "cpu")}


def trainer_args(train, device: str) -> dict:
    """The TrainingArguments a distributed TrainCfg adds ({} for `none`).

    ddp: the backend and our process-group timeout. fsdp: full shard with transformer-block auto-wrap, as
    peft documents for FSDP + LoRA/QLoRA (accelerate's `fsdp_config`): `use_orig_params: false` (peft's
    frozen and trainable parameters in one flat group would otherwise keep full-size gradients),
    `cpu_ram_efficient_loading` with `sync_module_states` (rank 0 loads, the others receive), activation
    checkpointing through FSDP when `gradient_checkpointing` is on. The Trainer wraps a peft model with
    peft's own auto-wrap policy (LoRA layers in their own units).
    """
    mode = getattr(train, "distributed", "none")
    if mode == "none":
        return {}
    out = {"ddp_backend": backend(device), "ddp_timeout": timeout_s()}
    if mode == "ddp":
        out["ddp_find_unused_parameters"] = False
    else:
        out["fsdp"] = "full_shard auto_wrap"
        out["fsdp_config"] = {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "use_orig_params": False,
                              "cpu_ram_efficient_loading": True, "sync_module_states": True,
                              "activation_checkpointing": bool(train.gradient_checkpointing)}
    return out


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+).*?error_file\s*:\s*(\S+)"
                         r".*?(?:traceback\s*:\s*(.+?))?\n\s*={5,}", re.S)


def failure_reason(run_log: Path, nproc: int) -> str | None:
    """Why torchrun's agent ended a run, from its summary in `run_log`: which rank failed first and how
    (None when the log has no summary)."""
    try:
        text = Path(run_log).read_text(errors="replace")[-20000:]
    except OSError:
        return None
    found = _ROOT_CAUSE.search(text)
    if not found:
        return None
    who, code, how = found.group(1), int(found.group(2)), (found.group(4) or "").strip()
    if not how or how.startswith("To enable traceback"):
        how = f"exit code {code}"
    return (f"rank {who} of {nproc} failed ({how}); torchrun stopped the other ranks, so the whole run failed "
            "(each rank's output is in run.log)")


if __name__ == "__main__":  # torchrun itself, tied to the sweep first like a run process (harness.lifeline)
    from harness.lifeline import hold

    hold()
    import runpy

    sys.argv = ["torchrun", *sys.argv[1:]]
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
