"""Held-out evaluation: token-weighted loss and perplexity on the validation split."""

from __future__ import annotations

import math


def token_loss(model, examples: list[dict], collator, batch_size: int, device: str) -> tuple[float, int]:
    """Mean negative log-likelihood per response token over `examples`, and the token count.

    Token-weighted (sum of NLL / number of label tokens), unlike the Trainer's mean of batch means,
    so perplexities of runs with different batching compare.
    """
    import torch

    total, count = 0.0, 0
    at_labels = keeps_logits(model)
    for batch, labels in eval_batches(model, examples, collator, batch_size, device):
        target = labels[:, 1:]
        if at_labels:  # the vocabulary projection only where a label is predicted (same sum, less work)
            outputs, target = label_logits(model, {**batch, "use_cache": False}, target)
            logits = outputs.logits.float()
        else:
            logits = model(**batch, use_cache=False).logits  # a cache disables packed-sequence masks
            # prompt-tuning methods return logits for their virtual tokens too: keep the real positions
            logits = logits[:, -labels.size(1):][:, :-1].float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        count += int((target != -100).sum())
    return (total / count if count else float("nan")), count


def keeps_logits(model) -> bool:
    """Whether `model` (a peft model or a plain one) can compute logits at chosen positions of its
    own input (`logits_to_keep`): not with a prompt-learning peft config, whose virtual tokens
    shift the positions."""
    import inspect

    config = getattr(model, "active_peft_config", None)
    if config is not None and config.is_prompt_learning:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def label_logits(model, inputs: dict, targets):
    """`model(**inputs)` with logits only at the positions whose next token is a label in some row,
    and the targets at those positions. `targets`: the labels shifted left by one (-100: not scored);
    the model must take `logits_to_keep` (`keeps_logits`)."""
    keep = targets.ne(-100).any(dim=0).nonzero().flatten()
    return model(**inputs, logits_to_keep=keep), targets[:, keep]


def eval_batches(model, examples: list[dict], collator, batch_size: int, device: str):
    """Yield (inputs, labels) batches of `examples` on `device`, with `model` in eval mode and no
    autograd for the whole loop (its training mode is restored after)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(examples), batch_size):
                batch = {k: v.to(device) for k, v in collator(examples[start:start + batch_size]).items()}
                yield batch, batch.pop("labels")
    finally:
        model.train(was_training)


def perplexity(loss: float | None) -> float | None:
    """exp(loss), or None when the loss is missing or too large to exponentiate."""
    if loss is None or not math.isfinite(loss) or loss > 700:
        return None
    return math.exp(loss)
