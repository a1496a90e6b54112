"""Held-out evaluation: token-weighted loss and perplexity on the validation split."""

from __future__ import annotations

import math
from dataclasses import dataclass


def token_loss(model, examples: list[dict], collator, batch_size: int, device: str) -> tuple[float, int]:
    """Mean negative log-likelihood per response token over `examples`, and the token count.

    Token-weighted (sum of NLL / number of label tokens), unlike the Trainer's mean of batch means,
    so perplexities of runs with different batching compare.
    """
    scored = example_losses(model, examples, collator, batch_size, device)
    return scored.loss, scored.total_tokens


@dataclass
class ExampleLosses:
    """Per-example NLL sums and label-token counts of one split, in the split's order; `loss` is the
    token-weighted mean over all of them (the batch sums added in order, as `token_loss` always did)."""

    nll: list[float]
    tokens: list[int]
    loss: float

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)

    def as_record(self) -> dict:
        """The compact form kept in a run's examples.json."""
        return {"nll": [round(v, 6) for v in self.nll], "tokens": self.tokens}


def example_losses(model, examples: list[dict], collator, batch_size: int, device: str) -> ExampleLosses:
    """Score `examples`: each example's NLL sum over its response tokens and its token count.

    A packed batch (one row, `position_ids` restarting at 0 per example) is split back into its
    examples by those restarts; a padded batch has one example per row. The first label of every
    packed example is masked, so no prediction crosses from one example into the next."""
    import torch

    total, nll, counts = 0.0, [], []
    at_labels = keeps_logits(model)
    for batch, labels in eval_batches(model, examples, collator, batch_size, device):
        target = labels[:, 1:]
        owner = _example_index(batch, labels)[:, 1:]  # the example the predicted token belongs to
        size = int(owner.max()) + 1
        if at_labels:  # the vocabulary projection only where a label is predicted (same sum, less work)
            keep = target.ne(-100).any(dim=0).nonzero().flatten()
            outputs, target = label_logits(model, {**batch, "use_cache": False}, target)
            owner = owner[:, keep]
            logits = outputs.logits.float()
        else:
            logits = model(**batch, use_cache=False).logits  # a cache disables packed-sequence masks
            # prompt-tuning methods return logits for their virtual tokens too: keep the real positions
            logits = logits[:, -labels.size(1):][:, :-1].float()
        token_nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="none")
        scored = target.reshape(-1) != -100
        total += token_nll[scored].sum().item()
        owner = owner.reshape(-1)[scored]
        nll += torch.zeros(size, dtype=torch.float64, device=owner.device).index_add_(
            0, owner, token_nll[scored].double()).tolist()
        counts += torch.bincount(owner, minlength=size).tolist()
    count = sum(counts)
    return ExampleLosses(nll, counts, total / count if count else float("nan"))


def _example_index(batch: dict, labels):
    """For every position of `labels`, the index (within the batch) of the example it belongs to."""
    import torch

    positions = batch.get("position_ids")
    if positions is not None and labels.size(0) == 1:
        return torch.cumsum(positions.eq(0).long(), dim=1) - 1
    return torch.arange(labels.size(0), device=labels.device).unsqueeze(1).expand_as(labels)


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
