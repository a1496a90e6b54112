"""harness.methods: every registered built-in method adapts the tiny model and trains one step."""

import math

import pytest

from harness import models
from harness.config import build_run_config
from harness.measure import count_params
from harness.methods import METHODS, Method, register
from harness.registry import UnknownName
from harness.run import RunContext

BUILT_IN = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("harness.methods.")]


def test_built_in_methods():
    assert {"full", "lora", "qlora"} <= set(BUILT_IN)


@pytest.mark.parametrize("name", BUILT_IN)
def test_method_applies_and_trains(name, tmp_path):

    cls = METHODS.get(name)
    spec = build_run_config({"model": {"name": "tiny-smollm2", "load_in_4bit": cls.requires_4bit},
                             "method": name, "tracking": "none"}, file="test")
    assert spec.model.load_in_4bit == cls.requires_4bit
    model, tok = models.load(spec.model, "cpu")
    _, total_before = count_params(model)
    ctx = RunContext(spec=spec, run_dir=tmp_path, device="cpu", total_steps=1)
    model = spec.method.build().apply(model, ctx)
    trainable, total = count_params(model)
    assert trainable > 0
    if cls.saves_full_model:
        assert trainable == total == total_before
    else:
        assert trainable < total
        assert trainable / total < 0.5

    model.train()
    batch = tok(["Hello there, how are you?", "What is two plus two?"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = model(**batch, labels=labels).loss
    assert math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

    out = tmp_path / "saved"
    spec.method.build().save(model, out)
    assert any(f.suffix == ".safetensors" for f in out.iterdir())


def test_lora_targets_and_rank(tmp_path):
    spec = build_run_config({"model": "tiny-smollm2", "method": {"name": "lora", "r": 2, "target_modules": "attention"},
                             "tracking": "none"}, file="test")
    model, _ = models.load(spec.model, "cpu")
    model = spec.method.build().apply(model, RunContext(spec=spec, run_dir=tmp_path, device="cpu", total_steps=1))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".lora_")[0].split(".")[-1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    assert a.shape[0] == 2  # rank 2


def test_unknown_method_message():
    with pytest.raises(UnknownName, match="Did you mean `lora`"):
        METHODS.get("lorra")


def test_register_twice_is_an_error():
    class Another(Method):
        name = "lora"

    with pytest.raises(ValueError, match="already registered"):
        register(Another)


def test_slug():
    spec = build_run_config({"method": {"name": "lora", "r": 16, "alpha": 32}}, file="t")
    assert spec.method.build().slug() == "lora-r16-a32"
    assert build_run_config({"method": "full"}, file="t").method.build().slug() == "full"
