"""harness.measure and the recipe's cost figures: one memory definition (absolute phase peaks, a
periodic evaluation left out of training's), a deterministic memory accounting, steady-state speed,
and latency repeated and timed per token inside one generate. Timing values are never asserted (the
machine is shared): only counts, finiteness and relations."""

from __future__ import annotations

import math

import pytest

from conftest import expand_file, read_result, run_cli, tiny_base, write_experiment
from harness import models
from harness.config import build_run_config
from harness.context import RunContext
from harness.measure import (LATENCY_PROMPTS, PeakMemory, TokenStamps, latency, optimizer_bytes, train_flops_per_token,
                             weight_bytes)
from harness.train import TrainStats


def test_peak_memory_is_absolute_and_leaves_a_paused_stretch_out():
    """The CPU peak includes what was resident at the start; a big allocation inside `paused()` does
    not raise it, the same allocation outside does."""
    import torch

    big = 400 * 2**20  # bytes: far above the sampler's noise
    with PeakMemory("cpu", interval=0.005) as quiet:
        with quiet.paused():
            block = torch.ones(big // 4)
            block += 1  # touch every page
            del block
    with PeakMemory("cpu", interval=0.005) as loud:
        block = torch.ones(big // 4)
        block += 1
        import time

        time.sleep(0.05)  # let the sampler see it
        del block
    import psutil

    resident = psutil.Process().memory_info().rss / 2**20
    assert quiet.peak_mb > 0.5 * resident  # absolute: the process's memory, not growth from zero
    assert loud.peak_mb > quiet.peak_mb + 0.75 * big / 2**20, (loud.peak_mb, quiet.peak_mb)
    assert quiet.reserved_mb is None  # reserved memory is a CUDA figure


def test_steady_speed_leaves_the_warmup_steps_out():
    stats = TrainStats(step_ms=[900.0, 100.0, 120.0], step_tokens=[10, 10, 14])
    assert stats.steady(1) == (0.22, 24, [100.0, 120.0])
    assert stats.steady(0) == (1.12, 34, [900.0, 100.0, 120.0])
    assert stats.steady(5)[1] == 34  # fewer steps than the warm-up: all of them


def _adapted(name: str, tmp_path, **model):
    spec = build_run_config({"model": {"name": "smollm2-135m", **model}, "method": name, "tracking": "none"},
                            file="test")
    model_, _ = models.load(spec.model, "cpu")
    ctx = RunContext(spec=spec, run_dir=tmp_path, device="cpu", total_steps=10)
    return spec.method.build().apply(model_, ctx)


@pytest.mark.slow
def test_memory_accounting_orders_full_lora_qlora_on_the_real_model(tmp_path):
    """SmolLM2-135M: QLoRA stores its weights in under a third of LoRA's bytes (its linear layers 4-bit
    packed, under 1/7 of their fp32 bytes with the scales; the tied 49152×576 embedding table, 21% of
    the parameters, stays unquantized, so a quarter is out of reach), and LoRA's Adam state after
    one real step is under 5% of full fine-tuning's."""
    import torch

    sizes, optimizer_mb = {}, {}
    for name in ("full", "lora", "qlora"):
        model = _adapted(name, tmp_path, load_in_4bit=name == "qlora")
        sizes[name] = weight_bytes(model)
        if name != "qlora":
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-5)
            for p in params:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer_mb[name] = optimizer_bytes(optimizer) / 2**20
        del model
    (full_w, full_t), (lora_w, lora_t), (qlora_w, qlora_t) = sizes["full"], sizes["lora"], sizes["qlora"]
    assert 0 <= full_w - full_t < 2**20  # all but the rotary buffers train
    assert 0 < lora_t < 0.05 * full_t and qlora_t == lora_t
    assert qlora_w < lora_w / 3, (qlora_w / 2**20, lora_w / 2**20)  # measured: 169.9 vs 522.5 MiB
    assert optimizer_mb["lora"] < 0.05 * optimizer_mb["full"], optimizer_mb
    assert optimizer_mb["full"] == pytest.approx(2 * full_t / 2**20, rel=0.01)  # Adam: two moments per value


def test_train_flops_per_token_is_six_n_for_full_fine_tuning(tmp_path):
    model = _tiny(tmp_path, "full")
    _, total = __import__("harness.measure", fromlist=["count_params"]).count_params(model)
    assert model.config.tie_word_embeddings  # the tied head multiplies through the embedding table
    assert train_flops_per_token(model, total) == 6 * total
    assert train_flops_per_token(model, 0) == 4 * total


def _tiny(tmp_path, name: str):
    spec = build_run_config({"model": "tiny-smollm2", "method": name, "tracking": "none"}, file="test")
    model, _ = models.load(spec.model, "cpu")
    return spec.method.build().apply(model, RunContext(spec=spec, run_dir=tmp_path, device="cpu", total_steps=1))


def test_periodic_evaluation_does_not_raise_the_train_peak(tmp_path):
    """A periodic evaluation whose batch is eight times the training batch (padded, so logits at the
    label positions of any row span most of every row: hundreds of MiB on the tiny model's 49k
    vocabulary) leaves `peak_mem_train_mb` where a run without it has it."""
    base = tiny_base(data={"n_train": 16, "n_val": 32},
                     train={"max_steps": 3, "micro_batch": 4, "seq_len": 128, "packing": False},
                     eval={"batch_size": 32, "latency": False})
    path = write_experiment(tmp_path, "evalpeak", base=base, grid={"eval.every_steps": [None, 1]})
    results = tmp_path / "results"
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 0, res.out + res.err
    peaks = {}
    for spec in expand_file(path):
        metrics = read_result(results / "evalpeak" / spec.run_id)["metrics"]
        peaks[spec.config.eval.every_steps] = metrics["peak_mem_train_mb"]
        # the final evaluation, same batch, does reach it: the figure is not just missing
        assert metrics["peak_mem_eval_mb"] > metrics["peak_mem_train_mb"] + 300, metrics
        assert metrics["train_timed_steps"] == 2 and metrics["train_timed_s"] > 0
        assert metrics["mem_optimizer_mb"] == pytest.approx(2 * metrics["mem_trainable_mb"], abs=0.2)
        assert metrics["mfu"] is None  # no peak FLOP/s known for a CPU
    assert abs(peaks[1] - peaks[None]) < 150, peaks


# -- latency -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    spec = build_run_config({"model": "tiny-smollm2", "tracking": "none"}, file="test")
    model, tok = models.load(spec.model, "cpu")
    model.eval()
    return model, tok


def test_latency_repeats_give_medians_and_finite_iqrs(tiny):
    model, tok = tiny
    model.train()  # latency switches to eval mode and back
    out = latency(model, tok, LATENCY_PROMPTS[:3], 4, "cpu", repeats=2)
    assert model.training
    assert out["latency_samples"] == 3 * 2
    assert set(out) == {"infer_prefill_ms", "infer_prefill_ms_iqr", "infer_decode_ms_per_token",
                        "infer_decode_ms_per_token_iqr", "latency_samples"}
    for key in ("infer_prefill_ms", "infer_decode_ms_per_token"):
        assert math.isfinite(out[key]) and out[key] > 0, key
        assert math.isfinite(out[f"{key}_iqr"]) and out[f"{key}_iqr"] >= 0, key
    merged = latency(model, tok, LATENCY_PROMPTS[:1], 2, "cpu", repeats=1, suffix="_merged")
    assert set(merged) == {"infer_prefill_ms_merged", "infer_prefill_ms_merged_iqr", "infer_decode_ms_per_token_merged",
                           "infer_decode_ms_per_token_merged_iqr", "latency_samples"}
    assert merged["latency_samples"] == 1 and merged["infer_decode_ms_per_token_merged_iqr"] == 0


def test_the_stamping_processor_stamps_once_per_token_and_leaves_greedy_output_unchanged(tiny):
    import torch
    from transformers import LogitsProcessorList

    model, tok = tiny
    ids = tok(LATENCY_PROMPTS[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                  pad_token_id=tok.pad_token_id)
    stamps = TokenStamps("cpu")
    with torch.inference_mode():
        plain = model.generate(ids, **kwargs)
        stamped = model.generate(ids, logits_processor=LogitsProcessorList([stamps]), **kwargs)
    assert torch.equal(plain, stamped) and stamped.shape[-1] == ids.shape[-1] + 6
    assert len(stamps.stamps) == 6 and stamps.stamps == sorted(stamps.stamps)
