"""A/B of the attention over a packed row on SmolLM2-135M: transformers' `sdpa` (a mask over the whole row)
against `sdpa_varlen` (harness/attention.py: sdpa once per example). One forward and backward over a packed
row of four chatterbot-sized examples (315 tokens), median of 5 after a warm-up, each kind twice.

    .venv/bin/python -m benchmarks.attention_ab
"""
import torch, time, statistics
from transformers import AutoModelForCausalLM
from harness import attention, models
attention.register()
src = models.resolve("smollm2-135m")
lens = [60, 90, 45, 120]  # a LoRA-sized packed micro-batch of chatterbot examples
ids = torch.randint(0, 1000, (1, sum(lens)))
pos = torch.cat([torch.arange(l) for l in lens]).unsqueeze(0)
for impl in ("sdpa", "sdpa_varlen", "sdpa", "sdpa_varlen"):
    m = AutoModelForCausalLM.from_pretrained(src, attn_implementation=impl, dtype=torch.float32); m.train()
    ts = []
    for i in range(6):
        t = time.perf_counter(); m(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss.backward(); ts.append(time.perf_counter() - t)
    print(impl, "median s of fwd+bwd (5 after warm-up):", round(statistics.median(ts[1:]), 3))
