"""harness.measure.latency: repeated greedy generates, timed per token inside one call, on the tiny model.
Timing values are never asserted (the machine is shared): only counts, finiteness and relations."""

import math

import pytest
import torch

from harness import models
from harness.config import build_run_config
from harness.measure import LATENCY_PROMPTS, TokenStamps, latency


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
