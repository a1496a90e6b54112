"""`make bench`: figures for the speed claims ftbench makes.

1. grid expansion: points per second for a 1,200-point grid (pure Python, no model);
2. padding-free packing vs padding: real tokens per second of LoRA training steps on the model
   given by --model (default smollm2-135m) with chatterbot batches;
3. AdapterDrop: forward (inference) and forward+backward (training) time of Houlsby adapters
   with the lowest k layers' adapters dropped, against the base model and k = 0;
4. head to head: a plain Trainer + peft script (`benchmarks/plain_trainer.py`, no ftbench code)
   against ftbench on the same job and the same tokens — LoRA, full fine-tuning and QLoRA on
   SmolLM2-135M, chatterbot, micro-batch 4, seq_len 256, 20 steps — printing the ratio of real
   tokens/s, both eval losses, the share of this machine's measured fp32 matmul peak, ftbench's
   per-run fixed cost by phase and its start-up to the first step; with `--sweep RESULTS_DIR`
   (a finished peft_comparison), that sweep's time split into training and everything else.

Timing figures need an idle machine: run nothing else beside `make bench`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

GRID = """
base:
  model: tiny-smollm2
  tracking: none
grid:
  method: [lora, qlora]
  method.r: [2, 4, 8, 16, 32]
  method.alpha: [r, 2*r]
  train.lr: [1.0e-4, 3.0e-4, 1.0e-3]
  data.n_train: [64, 128, 256, 512]
  seeds: [0, 1, 2, 3, 4]
"""


def bench_grid() -> None:
    from harness.config import load_experiment
    from harness.grid import expand

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(GRID)
        start = time.perf_counter()
        specs = expand(load_experiment(path))
        elapsed = time.perf_counter() - start
    print(f"grid expansion: {len(specs)} points in {elapsed:.2f} s ({len(specs) / elapsed:.0f} points/s)")


def bench_packing(model_name: str, steps: int, batch: int) -> None:
    import torch

    from harness import models
    from harness.config import DataCfg, ModelCfg
    from harness.data import DATASETS
    from harness.data.base import split
    from harness.data.tokenize import encode_all, make_collator
    from harness.methods import METHODS

    torch.manual_seed(0)
    model, tok = models.load(ModelCfg(name=model_name), "cpu")
    model = METHODS.get("lora")(METHODS.get("lora").Options()).apply(model, None)
    data = DataCfg()
    examples = encode_all(tok, split(DATASETS.get("chatterbot")().records(data), data).train_pool[: steps * batch], data, 256)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for packing in (False, True):
        collate = make_collator(tok, packing)
        batches = [collate(examples[i:i + batch]) for i in range(0, steps * batch, batch)]
        real = sum(len(e["input_ids"]) for e in examples[: steps * batch])
        computed = sum(b["input_ids"].numel() for b in batches)
        model(**batches[0]).loss.backward()  # warm-up
        opt.zero_grad()
        start = time.perf_counter()
        for b in batches:
            model(**b).loss.backward()
            opt.step()
            opt.zero_grad()
        elapsed = time.perf_counter() - start
        print(f"{'packed ' if packing else 'padded '} {model_name}: {real / elapsed:7.1f} real tokens/s "
              f"({computed} tokens computed for {real} real, {steps} steps of {batch}, {elapsed:.1f} s)")


def _median_ms(fn, repeats: int) -> float:
    import statistics

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_adapterdrop(model_name: str, drops: list[int], repeats: int) -> None:
    import copy

    import torch

    from harness import models
    from harness.config import ModelCfg
    from harness.methods import METHODS

    torch.manual_seed(0)
    base, tok = models.load(ModelCfg(name=model_name), "cpu")
    n_layers = base.config.num_hidden_layers
    ids = torch.randint(0, base.config.vocab_size, (4, 128))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    adapter = METHODS.get("adapter")

    def infer(model):
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=batch["attention_mask"])

    def train_step(model):
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    print(f"AdapterDrop on {model_name} ({n_layers} layers), Houlsby adapters, batch 4 x 128 tokens, "
          f"median of {repeats}:")
    for _ in range(3):  # the first forwards of a process are slow (allocator, thread pool): not the base's fault
        infer(base)
    rows = [("base model, full FT step", base)]
    for k in drops:
        rows.append((f"adapterdrop={k:<3d}", adapter(adapter.Options(placement="houlsby", adapterdrop=k)).apply(
            copy.deepcopy(base), None)))
    reference = None
    for label, model in rows:
        model.train()
        fwd, step = _median_ms(lambda: infer(model), repeats), None
        if any(p.requires_grad for p in model.parameters()):
            step = _median_ms(lambda: train_step(model), repeats)
        if label.startswith("adapterdrop=0 "):
            reference = (fwd, step)
        speedup = f"  ({reference[0] / fwd:.2f}x forward, {reference[1] / step:.2f}x step vs k=0)" if (
            reference and step and not label.startswith("adapterdrop=0 ")) else ""
        print(f"  {label:26s} forward {fwd:7.1f} ms" + (f"   train step {step:7.1f} ms" if step else "") + speedup)


H2H_METHODS = {"lora": {"name": "lora", "r": 8, "alpha": 16}, "full": {"name": "full"},
               "qlora": {"name": "qlora", "r": 8, "alpha": 16}}
#: ftbench options a head-to-head job may add after `+` (`lora+cpu_kernels`); the plain script runs the method
H2H_OPTIONS = {"cpu_kernels": {"train.kernels": "cpu"}}


def h2h_job(name: str) -> dict:
    """A head-to-head job (`lora`, `lora+cpu_kernels`) as a grid row: its method and ftbench options."""
    method, *options = name.split("+")
    return {"method": H2H_METHODS[method], **{k: v for o in options for k, v in H2H_OPTIONS[o].items()}}


def h2h_name(config) -> str:
    return config.method.name + "".join(f"+{o}" for o, keys in H2H_OPTIONS.items()
                                        if all(_get(config, k) == v for k, v in keys.items()))


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """This machine's fp32 matmul rate with torch (the best of `repeats` square products)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def bench_head_to_head(model_name: str, steps: int, batch: int, methods: list[str], sweep: Path | None,
                       rounds: int = 2) -> None:
    """ftbench against the plain script, interleaved: per method and round, one ftbench run and one plain
    run back to back, in ABBA order (ftbench first in even rounds, plain first in odd ones), so a drift of
    the machine's speed during the benchmark hits both sides alike. The figure is the median of the
    per-round ratios, with their range."""
    import json
    import os
    import statistics
    import subprocess
    import sys

    import yaml
    from rich.console import Console
    from transformers import AutoTokenizer

    from harness import models
    from harness.config import load_experiment
    from harness.context import RunContext
    from harness.executor import LocalExecutor
    from harness.grid import expand
    from harness.run import PHASES

    peak = matmul_gflops()
    # ftbench's own `mfu` (its FLOPs-per-token count) against this measured peak; the plain script's share
    # follows from the tokens/s ratio on the same model
    os.environ["FTBENCH_PEAK_TFLOPS"] = f"{peak / 1000:.4f}"
    print(f"head to head on {model_name}: chatterbot, micro-batch {batch}, seq_len 256, {steps} steps, lr 2e-4; "
          f"{rounds} interleaved rounds (ABBA); fp32 matmul peak measured here {peak:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory(prefix="ftbench-h2h-") as tmp:
        tmp = Path(tmp)
        doc = {"base": {"model": model_name, "tracking": "none",
                        "data": {"name": "chatterbot", "n_train": steps * batch, "n_val": 32, "n_test": 0},
                        "train": {"max_steps": steps, "micro_batch": batch, "seq_len": 256, "lr": 2.0e-4},
                        "eval": {"latency": False}},
               "grid": {"stage": [h2h_job(m) for m in methods]}}
        (tmp / "h2h.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        specs = expand(load_experiment(tmp / "h2h.yaml"))
        # the examples every method trains on (one data section, seed and seq_len for all), for the plain script
        config = specs[0].config
        model_dir, data = models.resolve(config.model.name), tmp / "data"
        ctx = RunContext(spec=config, run_dir=tmp, device="cpu", total_steps=steps)
        objective = config.objective.build()
        train_records, val_records = objective.records(ctx, {})
        encoded = objective.encode(ctx, AutoTokenizer.from_pretrained(model_dir), train_records, val_records)
        data.mkdir()
        for name, rows in zip(("train", "val"), encoded):
            (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

        def ours(spec, r: int) -> dict:
            # a results folder per round: the same run id would otherwise be skipped as finished
            executor = LocalExecutor(workers=1, root=tmp / f"results-{r}", console=Console(stderr=True, quiet=True))
            return executor.run([spec])[0]

        def theirs(method: str, r: int) -> dict:
            out = tmp / f"plain-{method}-{r}.json"
            subprocess.run([sys.executable, str(Path(__file__).with_name("plain_trainer.py")), str(model_dir),
                            str(data), str(out), "--steps", str(steps), "--micro-batch", str(batch), "--lr", "2e-4",
                            "--method", method], check=True, capture_output=True)
            return json.loads(out.read_text())

        for spec in specs:
            method, job = spec.config.method.name, h2h_name(spec.config)
            pairs = []
            for r in range(rounds):
                if r % 2 == 0:
                    result = ours(spec, r)
                    plain = theirs(method, r) if result["status"] == "ok" else None
                else:
                    plain = theirs(method, r)
                    result = ours(spec, r)
                if result["status"] != "ok":
                    print(f"  {job}: ftbench run {result['status']}: {(result.get('error') or {}).get('message')}")
                    break
                pairs.append((result["metrics"], plain))
            if len(pairs) < rounds:
                continue
            ratios = [m["train_tokens_per_s"] / p["train_tokens_per_s"] for m, p in pairs]
            ratio = statistics.median(ratios)
            mine = statistics.median(m["train_tokens_per_s"] for m, _ in pairs)
            plains = statistics.median(p["train_tokens_per_s"] for _, p in pairs)
            m, plain = pairs[0]
            print(f"  {job:5s}: ftbench {mine:6.1f} real tokens/s, plain Trainer+peft {plains:6.1f} (medians) → "
                  f"{ratio:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)}); eval loss {m['eval_loss']:.4f} vs "
                  f"{plain['eval_loss']:.4f}; {100 * m['mfu']:.0f}% of the matmul peak "
                  f"(plain {100 * m['mfu'] / ratios[0]:.0f}%)")
            print(f"         ftbench per run: wall {m['wall_s']:.1f} s = " + " + ".join(
                f"{k.removesuffix('_s')} {m[k]:.1f}" for k in PHASES if m.get(k))
                + f" + fixed {m['overhead_s']:.1f} s; "
                f"start-up to first step {_fmt(m.get('startup_s'))} s (plain script: "
                f"{plain['startup_to_first_step_s']:.1f} s, of which imports {plain['import_s']:.1f} s)")
    if sweep is not None:
        bench_sweep_split(sweep)


def bench_sweep_split(root: Path) -> None:
    """A finished sweep's run time: training (train_s) against everything else in each run's wall_s."""
    from harness import store
    from harness.run import PHASES

    results = [store.read_result(p.parent) for p in sorted(Path(root).glob("*/result.json"))]
    results = [r for r in results if r and r.get("status") == "ok"]
    if not results:
        print(f"sweep split: no finished runs under {root}")
        return
    wall = sum(r["metrics"]["wall_s"] for r in results)
    parts = {k: sum(r["metrics"].get(k) or 0.0 for r in results) for k in PHASES}
    # computed, not read from overhead_s: a sweep recorded before that key existed splits the same way
    other = wall - sum(parts.values())
    print(f"sweep {Path(root).name}: {len(results)} runs, {wall / 60:.1f} min of run wall time; training "
          f"{parts['train_s'] / 60:.1f} min ({100 * parts['train_s'] / wall:.0f}%), everything else "
          f"{(wall - parts['train_s']) / 60:.1f} min: " + ", ".join(
              f"{k.removesuffix('_s')} {v / 60:.1f}" for k, v in parts.items() if k != "train_s")
          + f", fixed {other / 60:.1f} min ({other / len(results):.1f} s per run)")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--drops", default="0,10,20", help="AdapterDrop k values (comma-separated)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["grid", "packing", "adapterdrop", "h2h"], help="run one benchmark")
    parser.add_argument("--h2h-methods", default="lora,lora+cpu_kernels,full,qlora,qlora+cpu_kernels",
                        help="head-to-head jobs (comma-separated): a method, `+cpu_kernels` for ftbench's "
                             "train.kernels: cpu (the plain script runs the method as peft ships it)")
    parser.add_argument("--h2h-steps", type=int, default=20)
    parser.add_argument("--h2h-rounds", type=int, default=2,
                        help="interleaved ftbench/plain pairs per method (ABBA order); the ratio is their median")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="a finished sweep's results folder (e.g. results/peft_comparison): its time split")
    args = parser.parse_args()
    if args.only in (None, "grid"):
        bench_grid()
    if args.only in (None, "packing"):
        bench_packing(args.model, args.steps, args.batch)
    if args.only in (None, "adapterdrop"):
        bench_adapterdrop(args.model, [int(k) for k in args.drops.split(",")], args.repeats)
    if args.only in (None, "h2h"):
        bench_head_to_head(args.model, args.h2h_steps, 4, args.h2h_methods.split(","), args.sweep,
                           args.h2h_rounds)


if __name__ == "__main__":
    main()
