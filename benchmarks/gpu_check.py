"""One-shot GPU check of ftbench's training path (issue 21 item 3), run once on a CUDA machine.

    python -m benchmarks.gpu_check --out DIR [--budget-s 420]        # on the GPU
    python -m benchmarks.gpu_check --out DIR --device cpu --tiny       # its CPU path, a tiny model, 2 steps

Measures, in one call and each case in a fresh process (no state shared between cases: Liger patches
transformers' Llama module for the whole process, accelerate keeps one state per process):

(a) the plain Trainer + peft script (`benchmarks/plain_trainer.py`: padded batches, the model's own
    loss, bf16 weights under bf16 autocast) against ftbench's training path (`harness.models.load` with
    the run's `train` options, the method, `harness.train.training_args`, `LabelLogitsTrainer`,
    `StepClock`; packed batches) on the same examples in the same order from the same weights, for
    LoRA (r 8, alpha 16, all linear layers) and full fine-tuning of a 1.7B Llama (SmolLM2-1.7B's
    dimensions): real tokens/s, the ratio, MFU against the device's spec-sheet peak
    (`harness.measure.peak_tflops`) and against a bf16 matmul measured here, peak memory;
(b) ftbench with `train.kernels: liger`, `train.attn_implementation: sdpa` (transformers' mask over the
    whole packed row, against the default `sdpa_varlen`), `train.compile: true`, `train.attn_implementation:
    flash_attention_2` (only when `flash_attn` is installed there), unpacked batches, and SmolLM2-135M's
    dimensions; and a probe of transformers' `flex_attention` (not a `train` option: block-sparse
    attention per packed example without the flash_attn package).

The models are random-init from their configs (the real weights cannot travel): speed and memory do not
depend on the weights' values, losses do (they only show both sides compute the same thing). The data
are synthetic token ids shaped like chat SFT: a prompt the loss ignores, then a response, lengths drawn
at random up to `--seq-len`. A time guard skips the cases that no longer fit in `--budget-s` and
stops a case's training early; every case's result (or error) goes to OUT/gpu_check.json as it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: SmolLM2's tokenizer files, carried next to the wheels to the GPU machine (benchmarks/gpu_check.sh)
CARRIED_TOKENIZER = ROOT / ".whl" / "smollm2-tokenizer"
COMMON = dict(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5,
              bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu", attention_bias=False,
              mlp_bias=False)
MODELS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}),
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, head_dim=64, rope_parameters={"rope_theta": 130000.0, "rope_type": "default"}),
}
LORA = {"name": "lora", "r": 8, "alpha": 16}


def cases(big: str, small: str | None, flash_attn: bool) -> list[dict]:
    """The cases in the order they run (what matters most first; the guard drops the tail)."""
    out = []
    for method in ("lora", "full"):
        out += [dict(name=f"plain-{method}-{big}", kind="plain", model=big, method=method),
                dict(name=f"ftbench-{method}-{big}", kind="ftbench", model=big, method=method)]
    out += [dict(name=f"ftbench-{m}-{big}-liger", kind="ftbench", model=big, method=m, kernels="liger")
            for m in ("lora", "full")]
    # transformers' sdpa over the whole packed row (the default before sdpa_varlen): what per-example attention buys
    out.append(dict(name=f"ftbench-lora-{big}-sdpa-rowmask", kind="ftbench", model=big, method="lora", attn="sdpa"))
    out.append(dict(name=f"ftbench-lora-{big}-fa2", kind="ftbench", model=big, method="lora",
                    attn="flash_attention_2", skip=None if flash_attn else "flash_attn is not installed there"))
    out.append(dict(name=f"ftbench-lora-{big}-unpacked", kind="ftbench", model=big, method="lora", packing=False))
    out.append(dict(name=f"ftbench-lora-{big}-compile", kind="ftbench", model=big, method="lora", compile=True,
                    warmup=5, max_seconds=200, min_s=120))
    out.append(dict(name=f"ftbench-lora-{big}-flex", kind="ftbench", model=big, method="lora", attn="flex_attention",
                    probe=True, warmup=5, max_seconds=100, min_s=70))
    if small:
        out += [dict(name=f"plain-lora-{small}", kind="plain", model=small, method="lora"),
                dict(name=f"ftbench-lora-{small}", kind="ftbench", model=small, method="lora"),
                dict(name=f"ftbench-lora-{small}-liger", kind="ftbench", model=small, method="lora", kernels="liger")]
    return out


# --- the parent ------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="gpu_check.json goes here")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, 2 steps: the script's own test")
    parser.add_argument("--budget-s", type=float, default=420, help="the whole check's time, preparation included")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per case (default 33; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of tokens/s (default 3; tiny 1)")
    parser.add_argument("--micro-batch", type=int, default=None, help="examples per step (default 16; tiny 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="longest example (default 1024; tiny 64)")
    parser.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", choices=["prepare", "ftbench"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.spec)
        {"prepare": child_prepare, "ftbench": child_ftbench}[args.child](spec)
        return
    start = time.perf_counter()
    deadline = start + args.budget_s
    tiny = args.tiny
    settings = dict(steps=args.steps or (2 if tiny else 33), warmup=args.warmup if args.warmup is not None else
                    (1 if tiny else 3), micro_batch=args.micro_batch or (2 if tiny else 16),
                    seq_len=args.seq_len or (64 if tiny else 1024), device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="ftbench-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"settings": settings, "budget_s": args.budget_s, "prepare": None, "cases": []}
    big, small = ("tiny", None) if tiny else ("1.7b", "135m")
    prep = _child(work, "prepare", {**settings, "work": str(work), "models": [m for m in (big, small) if m]},
                  timeout=max(30.0, min(240.0, deadline - time.perf_counter() - 30)))
    report["prepare"] = prep
    _save(args.out, report)
    if prep.get("error"):
        print(f"preparation failed: {prep['error']}\n{prep.get('log_tail', '')}")
        return
    print(_env_line(prep))
    wanted = set(args.only.split(",")) if args.only else None
    for case in cases(big, small, prep["env"].get("flash_attn") is not None):
        if wanted is not None and case["name"] not in wanted:
            continue
        case = {**settings, **case, "model_dir": prep["model_dirs"][case["model"]], "data_dir": prep["data_dir"],
                "peak_measured_tflops": prep.get("matmul_tflops"), "work": str(work)}
        left = deadline - time.perf_counter()
        if case.get("skip"):
            result = {"skipped": case["skip"]}
        elif left < case.get("min_s", 5 if tiny else 45):
            result = {"skipped": f"time: {left:.0f} s left of the budget"}
        else:
            runner = _plain if case["kind"] == "plain" else _ftbench
            result = runner(work, case, timeout=left - 5)
        row = {"name": case["name"], "kind": case["kind"], "model": case["model"], "method": case["method"],
               "kernels": case.get("kernels", "none"), "attn": case.get("attn", "auto"),
               "compile": case.get("compile", False), "packing": case.get("packing", case["kind"] == "ftbench"),
               **result}
        report["cases"].append(row)
        _derive(report)
        _save(args.out, report)
        print(_line(row), flush=True)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    _save(args.out, report)
    print(_table(report))
    print(f"wrote {args.out / 'gpu_check.json'} ({report['wall_s']} s)")


def _child(work: Path, kind: str, spec: dict, timeout: float, name: str | None = None) -> dict:
    """Run `--child kind` in a fresh interpreter; its JSON result, or {error, log_tail}."""
    name = name or kind
    out = work / f"{name}.json"
    spec = {**spec, "out": str(out)}
    return _run([sys.executable, "-m", "benchmarks.gpu_check", "--child", kind, "--spec", json.dumps(spec)],
                out, work / f"{name}.log", timeout)


def _run(command: list[str], out: Path, log: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        with open(log, "w") as fh:
            proc = subprocess.run(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=max(timeout, 1))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
    if code == 0 and out.exists():
        result = json.loads(out.read_text())
    else:
        result = {"error": f"exit {code}" if code != "timeout" else f"killed after {timeout:.0f} s (time guard)",
                  "log_tail": tail}
    result["process_s"] = round(time.perf_counter() - t0, 1)
    return result


def _plain(work: Path, case: dict, timeout: float) -> dict:
    out = work / f"{case['name']}.json"
    command = [sys.executable, str(HERE / "plain_trainer.py"), case["model_dir"], case["data_dir"], str(out),
               "--steps", str(case["steps"]), "--micro-batch", str(case["micro_batch"]), "--lr", "2e-4",
               "--method", case["method"], "--dtype", "bfloat16" if case["device"] == "cuda" else "float32",
               "--warmup", str(case.get("warmup", 1)), "--max-seconds", str(case.get("max_seconds", 60)), "--no-eval"]
    return _run(command, out, work / f"{case['name']}.log", timeout)


def _ftbench(work: Path, case: dict, timeout: float) -> dict:
    return _child(work, "ftbench", case, timeout, name=case["name"])


def _derive(report: dict) -> None:
    """ftbench ÷ plain tokens/s on the same model and method; the plain side's MFU from ftbench's FLOPs
    per token for that model and method (same model, same count; padding is not counted as work)."""
    rows = {r["name"]: r for r in report["cases"]}
    for row in report["cases"]:
        if row["kind"] != "plain" or not row.get("train_tokens_per_s"):
            continue
        ours = rows.get(row["name"].replace("plain-", "ftbench-", 1))
        if ours and ours.get("flops_per_token"):
            for key, peak in (("mfu", ours.get("peak_tflops")), ("mfu_measured_peak", ours.get("peak_measured_tflops"))):
                row[key] = ours["flops_per_token"] * row["train_tokens_per_s"] / (peak * 1e12) if peak else None
    for row in report["cases"]:
        base = rows.get(f"plain-{row['method']}-{row['model']}")
        if row["kind"] == "ftbench" and base and base.get("train_tokens_per_s") and row.get("train_tokens_per_s"):
            row["vs_plain"] = row["train_tokens_per_s"] / base["train_tokens_per_s"]


def _save(out: Path, report: dict) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, out / "gpu_check.json")


def _env_line(prep: dict) -> str:
    env = prep["env"]
    return ("env: " + ", ".join(f"{k} {v}" for k, v in env.items()) +
            (f"; bf16 matmul measured {prep['matmul_tflops']:.0f} TFLOP/s" if prep.get("matmul_tflops") else ""))


def _fmt(value, spec: str = ".0f", scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def _line(row: dict) -> str:
    if row.get("skipped") or row.get("refused"):
        return f"{row['name']}: " + (f"skipped ({row['skipped']})" if row.get("skipped") else f"refused by {row['refused']}")
    if row.get("error"):
        return f"{row['name']}: FAILED {row['error']}\n    " + row.get("log_tail", "").replace("\n", "\n    ")
    return (f"{row['name']}: {_fmt(row.get('train_tokens_per_s'))} tokens/s, step p50 {_fmt(row.get('step_ms_p50'))} ms, "
            f"peak {_fmt(row.get('peak_mem_allocated_mb'), '.1f', 1 / 1024)} GiB, loss {_fmt(row.get('train_loss_last'), '.3f')}"
            f" ({row.get('process_s')} s)")


def _table(report: dict) -> str:
    head = ["case", "tokens/s", "x plain", "step ms", "MFU spec", "MFU meas.", "alloc GiB", "resv GiB", "loss",
            "attn", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["cases"]:
        status = (f"skipped: {r['skipped']}" if r.get("skipped") else f"refused by {r['refused']}" if r.get("refused")
                  else f"FAILED: {r['error']}" if r.get("error") else "ok")
        lines.append("| " + " | ".join([
            r["name"], _fmt(r.get("train_tokens_per_s")), _fmt(r.get("vs_plain"), ".2f"), _fmt(r.get("step_ms_p50")),
            _fmt(r.get("mfu"), ".1%"), _fmt(r.get("mfu_measured_peak"), ".1%"),
            _fmt(r.get("peak_mem_allocated_mb"), ".1f", 1 / 1024), _fmt(r.get("peak_mem_reserved_mb"), ".1f", 1 / 1024),
            _fmt(r.get("train_loss_last"), ".3f"), str(r.get("attn_used") or ("(plain) sdpa" if r["kind"] == "plain"
                                                                                else "–")), status]) + " |")
    return "\n".join(lines)


# --- the children --------------------------------------------------------------------------------------------

def child_prepare(spec: dict) -> None:
    """Random-init model folders (with SmolLM2's tokenizer), the synthetic data, the environment, a
    measured bf16 matmul rate."""
    import importlib.metadata as md
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    device, work = spec["device"], Path(spec["work"])
    tokenizer_dir = CARRIED_TOKENIZER if CARRIED_TOKENIZER.is_dir() else None
    if tokenizer_dir is None:
        from harness import models

        tokenizer_dir = Path(models.resolve("tiny-smollm2"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model_dirs = {}
    for name in spec["models"]:
        torch.manual_seed(0)
        config = LlamaConfig(**COMMON, **MODELS[name], architectures=["LlamaForCausalLM"])
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        folder = work / f"model-{name}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model_dirs[name] = str(folder)
        del model
    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    n = spec["steps"] * spec["micro_batch"]
    for split, count, seed in (("train", n, 0), ("val", 8, 1)):
        rows = synthetic_examples(count, spec["seq_len"], COMMON["vocab_size"], seed)
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "cuda": torch.version.cuda}
    for package in ("torch", "transformers", "peft", "accelerate", "triton", "liger_kernel", "flash_attn", "pydantic"):
        try:
            env[package] = md.version(package)
        except md.PackageNotFoundError:
            env[package] = "(no version)" if importlib.util.find_spec(package) else None
    result = {"model_dirs": model_dirs, "data_dir": str(data_dir), "env": env, "matmul_tflops": None}
    if device == "cuda":
        result["matmul_tflops"] = matmul_tflops()
    Path(spec["out"]).write_text(json.dumps(result))


def synthetic_examples(count: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    """Chat-SFT-shaped examples: a prompt (not scored) then a response (scored), random token ids."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = rng.randint(max(2, seq_len // 16), seq_len // 2)
        response = rng.randint(max(2, seq_len // 32), seq_len - prompt)
        ids = [rng.randrange(3, vocab) for _ in range(prompt + response)]
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    """bf16 matmul rate on this GPU (mean of `repeats` products after 3 warm-ups, CUDA events)."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1000) / 1e12


def child_ftbench(case: dict) -> None:
    """ftbench's training path on one case: the run's config → models.load (attention, kernels) → the
    method → training_args → LabelLogitsTrainer with StepClock (what harness.recipe does around them)."""
    t_import = time.perf_counter()
    from types import SimpleNamespace

    import torch
    from transformers import Trainer, TrainerCallback

    from harness import models
    from harness.config import build_run_config
    from harness.context import RunContext
    from harness.data.tokenize import make_collator
    from harness.measure import count_params, peak_tflops, train_flops_per_token
    from harness.preflight import check_gpu_options
    from harness.train import LabelLogitsTrainer, StepClock, TrainStats, build_trainer, fuses_loss, training_args

    device = case["device"]
    imported = time.perf_counter()
    train = {"max_steps": case["steps"], "micro_batch": case["micro_batch"], "seq_len": case["seq_len"], "lr": 2e-4,
             "packing": case.get("packing", True), "kernels": case.get("kernels", "none"),
             "compile": case.get("compile", False)}
    if not case.get("probe"):
        train["attn_implementation"] = case.get("attn", "auto")
    method = LORA if case["method"] == "lora" else {"name": "full"}
    spec = build_run_config({"model": {"name": case["model_dir"]}, "method": method, "train": train,
                             "tracking": "none"}, file="gpu_check")
    if case.get("probe"):  # not a `train` option: the value goes to from_pretrained as it is
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"attn_implementation": case["attn"]})})
    problems = check_gpu_options([SimpleNamespace(config=spec, slug=case["name"])], file="gpu_check")
    if problems:
        Path(case["out"]).write_text(json.dumps({"refused": "preflight: " + "; ".join(p[2] for p in problems)}))
        return
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, tokenizer = models.load(spec.model, device, spec.train)
    attn_used = model.config._attn_implementation
    built = spec.method.build()
    work = Path(case["work"]) / case["name"]
    work.mkdir(parents=True, exist_ok=True)
    model = built.apply(model, RunContext(spec=spec, run_dir=work, device=device, total_steps=case["steps"]))
    load_s = time.perf_counter() - t0
    trainable, total = count_params(model)
    examples = [json.loads(line) for line in (Path(case["data_dir"]) / "train.jsonl").read_text().splitlines()]
    stats = TrainStats()

    class Deadline(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if stats.first_step_at is not None and time.time() - stats.first_step_at > case.get("max_seconds", 60):
                control.should_training_stop = True

    args = training_args(spec.train, out_dir=work, seed=0, device=device, packing=spec.train.packing)
    trainer = build_trainer(model, args, examples, make_collator(tokenizer, spec.train.packing),
                            callbacks=[StepClock(stats, device), Deadline()], optimizer=built.optimizer(model, spec.train),
                            trainer_cls=LabelLogitsTrainer if built.logits_at_labels else Trainer)
    trainer.train()
    seconds, tokens, step_ms = stats.steady(case.get("warmup", 1))
    tokens_per_s = tokens / seconds if seconds > 0 else None
    flops = train_flops_per_token(model, trainable)
    peak = peak_tflops(device, "bfloat16" if device == "cuda" else "float32")
    measured = case.get("peak_measured_tflops")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    skip = len(stats.step_ms) - len(step_ms)
    result = {
        "train_tokens_per_s": tokens_per_s, "step_ms_p50": sorted(step_ms)[len(step_ms) // 2] if step_ms else None,
        "train_timed_steps": len(step_ms), "real_tokens_per_step": tokens / len(step_ms) if step_ms else None,
        "first_steps_ms": stats.step_ms[:skip], "flops_per_token": flops, "trainable_params": trainable,
        "total_params": total, "peak_tflops": peak, "peak_measured_tflops": measured,
        "mfu": flops * tokens_per_s / (peak * 1e12) if peak and tokens_per_s else None,
        "mfu_measured_peak": flops * tokens_per_s / (measured * 1e12) if measured and tokens_per_s else None,
        "attn_used": attn_used, "fuses_loss": fuses_loss(model), "torch_compile": args.torch_compile,
        "train_loss_last": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
        "import_s": imported - t_import, "load_s": load_s,
    }
    if device == "cuda":
        result.update(peak_mem_allocated_mb=torch.cuda.max_memory_allocated() / 2**20,
                      peak_mem_reserved_mb=torch.cuda.max_memory_reserved() / 2**20)
    Path(case["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
