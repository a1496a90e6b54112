"""Domain router (issue 9): pooled base-model features and the logistic-regression classifier on them,
on the tiny random-init model and three toy domains that differ in their characters."""

from __future__ import annotations

import random
import string

import pytest
import torch

from harness import models
from harness.config import ModelCfg
from harness.objectives.parts.router import Router, pooled_features, train_router


WORDS = ("the cat sat on a warm mat while rain fell over quiet green hills and old town roads near "
         "river where children play with dogs under tall trees every summer morning").split()


def _prompts(kind: str, n: int, seed: int) -> list[str]:
    """`n` random prompts of one toy domain: digit groups, lowercase prose, or upper-case code.

    8+ words each: the random-init model's pooled features are noisy, and short prompts (4-10 words)
    let a few held-out ones fall on the wrong side."""
    rng = random.Random(f"{kind}-{seed}")
    if kind == "numbers":
        return [" ".join(str(rng.randint(0, 9999)) for _ in range(rng.randint(8, 16))) for _ in range(n)]
    if kind == "words":
        return [" ".join(rng.choices(WORDS, k=rng.randint(8, 16))) for _ in range(n)]
    return [" ".join(f"{rng.choice(string.ascii_uppercase)}{rng.choice(string.ascii_uppercase)}"
                     f"({rng.choice(string.ascii_uppercase)}){rng.choice('{};[]<>=+*&|!#')}"
                     for _ in range(rng.randint(5, 9))) for _ in range(n)]


DOMAINS = ("numbers", "words", "code")
TRAIN = {d: _prompts(d, 20, seed=0) for d in DOMAINS}
HELD_OUT = {d: _prompts(d, 10, seed=1) for d in DOMAINS}


@pytest.fixture(scope="module")
def tiny():
    return models.load(ModelCfg(name="tiny-smollm2"), "cpu")


def test_router_separates_toy_domains_on_held_out_prompts(tiny):
    model, tokenizer = tiny
    router = train_router(model, tokenizer, TRAIN, batch_size=8, device="cpu", seed=0)
    assert router.domains == list(DOMAINS)
    texts = [p for d in DOMAINS for p in HELD_OUT[d]]
    labels = [d for d in DOMAINS for _ in HELD_OUT[d]]
    features = pooled_features(model, tokenizer, texts, batch_size=8, device="cpu")
    assert features.shape == (30, model.config.hidden_size) and features.dtype == torch.float32
    assert router.accuracy(features, labels) >= 0.9
    predicted = router.predict(features)
    assert set(predicted) <= set(DOMAINS) and sum(p == t for p, t in zip(predicted, labels)) >= 27
    # same seed, same router
    again = train_router(model, tokenizer, TRAIN, batch_size=8, device="cpu", seed=0)
    assert torch.equal(again.logits(features), router.logits(features))


def test_pooling_ignores_padding_and_restores_the_tokenizer(tiny):
    model, tokenizer = tiny
    model.eval()
    texts = ["short", "a much longer text that forces padding on the first one " * 3]
    alone = torch.cat([pooled_features(model, tokenizer, [t], batch_size=1, device="cpu") for t in texts])
    batched = pooled_features(model, tokenizer, texts, batch_size=2, device="cpu")
    assert torch.allclose(alone, batched, atol=1e-5)
    pad, side = tokenizer.pad_token, tokenizer.padding_side
    tokenizer.pad_token, tokenizer.padding_side = None, "left"
    try:
        assert torch.allclose(pooled_features(model, tokenizer, texts, batch_size=2, device="cpu"), batched,
                              atol=1e-5)
        assert tokenizer.pad_token is None and tokenizer.padding_side == "left"
    finally:
        tokenizer.pad_token, tokenizer.padding_side = pad, side
    assert pooled_features(model, tokenizer, [], batch_size=2, device="cpu").shape == (0, model.config.hidden_size)


def test_features_of_a_peft_model_are_the_base_models():
    from peft import LoraConfig, get_peft_model

    model, tokenizer = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    texts = TRAIN["words"][:4] + TRAIN["code"][:4]
    bare = pooled_features(model, tokenizer, texts, batch_size=4, device="cpu")
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    wrapped = get_peft_model(model, config)
    wrapped.train()
    assert torch.allclose(pooled_features(wrapped, tokenizer, texts, batch_size=4, device="cpu"), bare, atol=1e-6)
    assert wrapped.training  # training mode restored
    # the adapter does change the model when enabled: the equality above is not vacuous
    batch = tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        adapted = wrapped(**batch, output_hidden_states=True).hidden_states[-1].mean(1)
    assert not torch.allclose(adapted, bare[:1], atol=1e-3)


def test_bad_inputs_are_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        pooled_features(model, tokenizer, ["x"], batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="max_length must be ≥ 1"):
        pooled_features(model, tokenizer, ["x"], batch_size=1, device="cpu", max_length=0)
    with pytest.raises(ValueError, match="distinct"):
        Router(["a", "a"])
    features = torch.randn(4, 3)
    with pytest.raises(ValueError, match="among domains"):
        Router(["a", "b"]).fit(features, ["a", "b", "a", "c"])
    with pytest.raises(ValueError, match="one entry per feature row"):
        Router(["a", "b"]).fit(features, ["a", "b"])
    with pytest.raises(RuntimeError, match="call fit first"):
        Router(["a", "b"]).predict(features)
    with pytest.raises(ValueError, match="needs prompts"):
        train_router(model, tokenizer, {"a": ["x"], "b": []}, batch_size=1, device="cpu")
