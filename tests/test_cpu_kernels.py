"""`train.kernels: cpu` (harness/cpu_kernels.py): the counter-based dropout draws the same Bernoulli(p) as
torch's, its backward uses the forward's mask, it is reproducible and thread-count independent; the fused
LoRA forward computes what peft's does; a run with them records them and keeps other runs' ids."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment
from harness.cpu_kernels import FastDropout, counter_dropout, fuse_lora, fuse_rms_norms, rms_norm, swap_dropouts


def test_dropout_drops_each_element_with_probability_p_and_scales_the_rest():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    for p in (0.05, 0.3):
        y = counter_dropout(x, p)
        dropped = float((y == 0).float().mean())
        n, q = x.numel(), round(p * 65536) / 65536
        assert abs(dropped - q) < 5 * math.sqrt(q * (1 - q) / n), (p, dropped)
        kept = y != 0
        assert torch.equal(y[kept], x[kept] * torch.tensor(1 / (1 - p)))
    # neighbours are independent: a dropped element says nothing about the next one
    y = counter_dropout(x, 0.3).flatten() == 0
    both = float((y[:-1] & y[1:]).float().mean())
    assert abs(both - 0.3 ** 2) < 0.005


def test_backward_uses_the_forward_mask_and_the_same_scale():
    torch.manual_seed(1)
    x = torch.randn(37, 129, requires_grad=True)  # sizes that end mid-draw and mid-chunk
    y = counter_dropout(x, 0.2)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    kept = y.detach() != 0
    assert torch.allclose(x.grad, upstream * kept / 0.8)
    # through a non-contiguous view too
    z = torch.randn(64, 48, requires_grad=True)
    out = counter_dropout(z.t(), 0.5)
    out.sum().backward()
    assert z.grad.shape == z.shape and torch.equal((z.grad != 0), (out.t() != 0))


def test_masks_follow_torchs_seed_and_not_the_thread_count():
    from numba import get_num_threads, set_num_threads

    x = torch.randn(300, 700)
    torch.manual_seed(7)
    first, second = counter_dropout(x, 0.1), counter_dropout(x, 0.1)
    assert not torch.equal(first, second)  # each call draws a fresh seed
    before = get_num_threads()
    try:
        set_num_threads(1)
        torch.manual_seed(7)
        again = counter_dropout(x, 0.1)
    finally:
        set_num_threads(before)
    assert torch.equal(first, again)


def test_eval_mode_zero_p_and_other_dtypes_keep_torchs_behaviour():
    x = torch.randn(8, 16)
    assert counter_dropout(x, 0.5, training=False) is x and counter_dropout(x, 0.0) is x
    half = torch.ones(200, 200, dtype=torch.bfloat16)
    dropped = float((counter_dropout(half, 0.5) == 0).float().mean())  # torch's own dropout
    assert 0.45 < dropped < 0.55
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1), torch.nn.Dropout(0.0))
    assert swap_dropouts(module) == 1 and isinstance(module[1], FastDropout) and module[1].p == 0.1
    assert type(module[2]) is torch.nn.Dropout  # p = 0: nothing to draw
    # a NaN stays NaN, kept or dropped, as under torch's mask (a diverging run must still show it)
    assert torch.isnan(counter_dropout(torch.full((4096,), float("nan")), 0.5)).all()


@pytest.mark.parametrize("variant", [{}, {"use_dora": True}, {"use_rslora": True}])
def test_fused_lora_forward_computes_what_peft_does(variant):
    from peft import LoraConfig, get_peft_model

    from harness import models
    from harness.config import ModelCfg

    model, _ = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                             **variant))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter something to add
            param.data.normal_(0, 0.1)
    ids = torch.randint(0, 1000, (2, 12))
    model.train()
    expected = model(input_ids=ids).logits
    assert fuse_lora(model) == sum(1 for m in model.modules() if type(m).__name__ == "Linear"
                                   and hasattr(m, "lora_A"))
    fused = model(input_ids=ids).logits
    assert torch.allclose(fused, expected, atol=1e-5, rtol=1e-5)
    fused.sum().backward()  # gradients flow to both LoRA matrices
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)
    with model.disable_adapter():  # peft's own path: the base model
        base = model(input_ids=ids).logits
    assert not torch.allclose(base, expected, atol=1e-3)


@pytest.mark.parametrize("trains_weight", [False, True])
def test_one_pass_rms_norm_matches_llamas_forward_and_backward(trains_weight):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(96, eps=1e-5)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.weight.requires_grad_(trains_weight)
    x = torch.randn(3, 17, 96, requires_grad=True)
    upstream = torch.randn(3, 17, 96)
    expected = norm(x)
    expected.backward(upstream)
    want = (x.grad.clone(), norm.weight.grad.clone() if trains_weight else None)
    x.grad, norm.weight.grad = None, None
    assert fuse_rms_norms(torch.nn.Sequential(norm)) == 1
    got = norm(x)
    got.backward(upstream)
    assert torch.allclose(got, expected, atol=1e-5) and torch.allclose(x.grad, want[0], atol=1e-5)
    if trains_weight:
        assert torch.allclose(norm.weight.grad, want[1], rtol=1e-4, atol=1e-4)
    assert rms_norm(x.double(), norm.weight.double(), 1e-5) is None  # float32 only: Llama's own path
    assert torch.equal(norm(x.detach().double()), LlamaRMSNorm.forward(norm, x.detach().double()))


def test_a_run_with_cpu_kernels_records_them_and_matches_the_plain_run(tmp_path):
    path = write_experiment(tmp_path, "kern", base=tiny_base(eval={"latency": False}),
                            grid={"train.kernels": ["none", "cpu"]})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 0, res.out + res.err
    runs = {r["spec"]["train"].get("kernels", "none"): r for r in map(read_result, run_dirs(tmp_path / "results",
                                                                                              "kern"))}
    assert runs["cpu"]["status"] == runs["none"]["status"] == "ok"
    m, plain = runs["cpu"]["metrics"], runs["none"]["metrics"]
    assert m["kernels_dropout_modules"] == m["kernels_lora_modules"] == 14  # 2 layers × 7 adapted linears
    assert m["kernels_norm_modules"] == 5  # 2 per layer and the final one
    assert "kernels_dropout_modules" not in plain or plain["kernels_dropout_modules"] is None
    # another random stream, the same distribution: after 3 steps the losses agree closely, not bitwise
    assert m["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-3)
