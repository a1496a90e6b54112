"""`make bench`: figures for the speed claims ftbench makes.

1. grid expansion: points per second for a 1,200-point grid (pure Python, no model);
2. padding-free packing vs padding: real tokens per second of LoRA training steps on the model
   given by --model (default smollm2-135m) with chatterbot batches;
3. AdapterDrop: forward (inference) and forward+backward (training) time of Houlsby adapters
   with the lowest k layers' adapters dropped, against the base model and k = 0.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--drops", default="0,10,20", help="AdapterDrop k values (comma-separated)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["grid", "packing", "adapterdrop"], help="run one benchmark")
    args = parser.parse_args()
    if args.only in (None, "grid"):
        bench_grid()
    if args.only in (None, "packing"):
        bench_packing(args.model, args.steps, args.batch)
    if args.only in (None, "adapterdrop"):
        bench_adapterdrop(args.model, [int(k) for k in args.drops.split(",")], args.repeats)


if __name__ == "__main__":
    main()
