"""harness.train.LabelLogitsTrainer: the vocabulary projection only at label positions gives the
plain Trainer's loss and gradients, for every built-in method, packed and padded."""

import math

import pytest

from harness import models
from harness.config import build_run_config
from harness.context import RunContext
from harness.data.tokenize import make_collator
from harness.methods import METHODS

from test_methods import BUILT_IN, TABLE

TRAINING = [n for n in BUILT_IN if METHODS.get(n).trains and METHODS.get(n).logits_at_labels]


def _examples(tok):
    """Chat-like examples: a prompt the loss ignores, then an answer it scores."""
    out = []
    for prompt, answer in [("What is two plus two? Answer briefly, please.", "Four."),
                           ("Name a colour of the sky on a clear day.", "Blue, mostly."),
                           ("Say hello.", "Hello there, friend!")]:
        p, a = tok(prompt)["input_ids"], tok(answer)["input_ids"]
        out.append({"input_ids": p + a, "labels": [-100] * len(p) + a})
    return out


def tiny_with_method(tmp_path, name: str = "lora"):
    """The tiny model with method `name` applied, and its tokenizer."""
    spec = build_run_config({"model": "tiny-smollm2", "method": name, "tracking": "none"}, file="test")
    model, tok = models.load(spec.model, "cpu")
    return spec.method.build().apply(model, RunContext(spec=spec, run_dir=tmp_path, device="cpu", total_steps=10)), tok


def _loss_and_grads(trainer_cls, model, batch, num_items):
    from transformers import TrainingArguments

    trainer = trainer_cls(model=model, args=TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none"))
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("name", TRAINING)
def test_label_positions_give_the_plain_trainers_loss_and_gradients(name, packing, tmp_path):
    import torch
    from transformers import Trainer

    from harness.train import LabelLogitsTrainer

    cls = METHODS.get(name)
    spec = build_run_config({"model": {"name": "tiny-smollm2", "load_in_4bit": cls.requires_4bit},
                             "method": {"name": name, **TABLE[name][0]}, "tracking": "none"}, file="test")
    model, tok = models.load(spec.model, "cpu")
    method = spec.method.build()
    model = method.apply(model, RunContext(spec=spec, run_dir=tmp_path, device="cpu", total_steps=10))
    model.train()
    packing = packing and method.supports_packing  # the recipe pads prompt-family batches
    batch = make_collator(tok, packing)(_examples(tok))
    targets = batch["labels"][..., 1:]
    num_items = targets.ne(-100).sum()
    torch.manual_seed(0)
    plain, plain_grads = _loss_and_grads(Trainer, model, batch, num_items)
    torch.manual_seed(0)
    kept, kept_grads = _loss_and_grads(LabelLogitsTrainer, model, batch, num_items)
    assert math.isfinite(plain) and kept == pytest.approx(plain, rel=1e-5, abs=1e-6)
    assert kept_grads.keys() == plain_grads.keys() and plain_grads
    for key, grad in plain_grads.items():
        torch.testing.assert_close(kept_grads[key], grad, rtol=1e-4, atol=1e-6)


def test_only_label_positions_are_projected(tmp_path):
    """The saving is real: the logits the model returns cover the label positions only."""
    from transformers import TrainingArguments

    from harness.train import LabelLogitsTrainer

    model, tok = tiny_with_method(tmp_path, "lora")
    batch = make_collator(tok, True)(_examples(tok))
    trainer = LabelLogitsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                     report_to="none"))
    _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    scored = int(batch["labels"][..., 1:].ne(-100).sum())
    assert outputs.logits.shape[1] == scored < batch["input_ids"].shape[1] // 2


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("name", ["none", "lora", "ia3"])
def test_evaluation_at_label_positions_equals_the_full_projection(name, packing, tmp_path, monkeypatch):
    from harness import evaluate

    model, tok = tiny_with_method(tmp_path, name)
    examples, collator = _examples(tok), make_collator(tok, packing)
    assert evaluate.keeps_logits(model)
    kept = evaluate.token_loss(model, examples, collator, 2, "cpu")
    monkeypatch.setattr(evaluate, "keeps_logits", lambda m: False)
    full = evaluate.token_loss(model, examples, collator, 2, "cpu")
    assert kept[1] == full[1] > 0 and kept[0] == pytest.approx(full[0], rel=1e-6)


@pytest.mark.parametrize("name", ["none", "prompt_tuning"])
def test_per_example_losses_are_the_same_packed_padded_and_one_at_a_time(name, tmp_path):
    """Each example's NLL sum and token count do not depend on how examples were batched, and they
    add up to the token-weighted loss."""
    from harness import evaluate

    model, tok = tiny_with_method(tmp_path, name)
    examples = _examples(tok)
    alone = [evaluate.example_losses(model, [e], make_collator(tok, False), 1, "cpu") for e in examples]
    expected_tokens = [sum(v != -100 for v in e["labels"][1:]) for e in examples]
    assert [a.tokens[0] for a in alone] == expected_tokens
    packings = [False] if name == "prompt_tuning" else [True, False]  # prompt methods pad their batches
    for packing in packings:
        scored = evaluate.example_losses(model, examples, make_collator(tok, packing), 2, "cpu")
        assert scored.tokens == expected_tokens
        assert scored.nll == pytest.approx([a.nll[0] for a in alone], rel=1e-4)
        assert scored.loss == pytest.approx(sum(scored.nll) / sum(scored.tokens), rel=1e-6)
        assert evaluate.token_loss(model, examples, make_collator(tok, packing), 2, "cpu") == (
            pytest.approx(scored.loss, rel=1e-9), sum(expected_tokens))
