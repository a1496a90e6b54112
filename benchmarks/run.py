"""`make bench`: figures for the speed claims ftbench makes.

1. grid expansion: points per second for a 1,200-point grid (pure Python, no model);
2. padding-free packing vs padding: real tokens per second of LoRA training steps on the model
   given by --model (default smollm2-135m) with chatterbot batches.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    bench_grid()
    bench_packing(args.model, args.steps, args.batch)


if __name__ == "__main__":
    main()
