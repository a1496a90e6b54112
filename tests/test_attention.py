"""`sdpa_varlen` (harness/attention.py): each example of a packed row attends only to itself, as it
would alone, and everything that is not a packed row is transformers' sdpa unchanged."""

from __future__ import annotations

import pytest
import torch

from harness import attention, models
from harness.config import build_run_config

LENGTHS = [7, 12, 3, 9]


@pytest.fixture(scope="module")
def pair():
    """The tiny model twice, same weights: transformers' sdpa and sdpa_varlen."""
    spec = build_run_config({"model": "tiny-smollm2"}, file="x.yaml")
    varlen, tokenizer = models.load(spec.model, "cpu", spec.train)
    plain = build_run_config({"model": "tiny-smollm2", "train": {"attn_implementation": "sdpa"}}, file="x.yaml")
    sdpa, _ = models.load(plain.model, "cpu", plain.train)
    sdpa.load_state_dict(varlen.state_dict())
    assert varlen.config._attn_implementation == "sdpa_varlen" and sdpa.config._attn_implementation == "sdpa"
    return sdpa, varlen, tokenizer


def _packed(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (1, sum(LENGTHS)), generator=g)
    pos = torch.cat([torch.arange(n) for n in LENGTHS]).unsqueeze(0)
    return ids, pos


def test_segments_cut_a_row_at_its_position_restarts():
    _, pos = _packed()
    assert attention.segments(pos) == [[(0, 7), (7, 19), (19, 22), (22, 31)]]
    assert attention.segments(torch.arange(10).unsqueeze(0)) is None  # one sequence: plain causal attention
    two_rows = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    assert attention.segments(two_rows) == [[(0, 3), (3, 5)], [(0, 5)]]


def test_each_packed_example_scores_as_it_would_alone(pair):
    sdpa, varlen, _ = pair
    ids, pos = _packed()
    with torch.no_grad():
        packed = varlen(input_ids=ids, position_ids=pos, use_cache=False).logits
        start = 0
        for n in LENGTHS:
            alone = sdpa(input_ids=ids[:, start:start + n], use_cache=False).logits
            torch.testing.assert_close(packed[:, start:start + n], alone, atol=1e-4, rtol=1e-4)
            start += n
        # a cache is made when use_cache is on: sdpa then loses the packed mask, sdpa_varlen does not
        cached = varlen(input_ids=ids, position_ids=pos).logits
    torch.testing.assert_close(cached, packed, atol=1e-5, rtol=1e-5)


def test_loss_and_gradients_equal_sdpa_under_its_block_mask(pair):
    sdpa, varlen, _ = pair
    ids, pos = _packed(1)
    grads = []
    for model in (sdpa, varlen):
        model.zero_grad()
        loss = model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss
        loss.backward()
        grads.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-4)
    assert grads[0][1].abs().sum() > 0


def test_padded_batches_and_generation_are_sdpa_unchanged(pair):
    sdpa, varlen, tokenizer = pair
    ids = torch.randint(5, 1000, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as generation batches are padded
    with torch.no_grad():
        torch.testing.assert_close(varlen(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
        kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert torch.equal(varlen.generate(ids, **kwargs), sdpa.generate(ids, **kwargs))
