"""Elastic weight consolidation (Kirkpatrick et al. 2017): after a stage, the diagonal of the Fisher
information of the trainable parameters, estimated from that stage's data, anchors them; the next
stage adds λ/2 · Σ F_i (θ_i − θ*_i)² to its loss."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import Trainer


def fisher_diagonal(model, batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """Mean over `batches` of the squared gradient of the loss for every trainable parameter (the
    empirical Fisher's diagonal). Each batch holds the model's inputs and `labels`."""
    was_training = model.training
    model.eval()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    n = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch, use_cache=False).loss.backward()  # a cache disables packed-sequence masks
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float().pow(2)
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if not n:
        raise ValueError("the Fisher information needs at least one batch")
    return {name: f / n for name, f in fisher.items()}


def anchor(model) -> dict[str, torch.Tensor]:
    """A copy of the trainable parameters: the previous stage's optimum θ*."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def ewc_penalty(model, fisher: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], strength: float) -> torch.Tensor:
    """λ/2 · Σ F (θ − θ*)² over the anchored parameters the model still has (zero at θ = θ*)."""
    total = None
    for name, p in model.named_parameters():
        if name in fisher and name in anchors:
            term = (fisher[name].to(p.device) * (p.float() - anchors[name].to(p.device).float()).pow(2)).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=next(model.parameters()).device)
    return 0.5 * strength * total


def ewc_state(model, spec, tokenizer, collator, device: str) -> tuple[dict, dict]:
    """(Fisher diagonal, anchors) of the trainable weights, now at the previous stage's optimum, from
    `ewc_batches` micro-batches of the previous stage's training data."""
    from harness.data.tokenize import encode_all
    from harness.objectives.parts.domains import source_cfg, source_train

    objective = spec.objective
    source = objective.sequence[objective.stage - 1]
    records = source_train(spec.data, source, spec.data.n_train, spec.seed)
    encoded = encode_all(tokenizer, records, source_cfg(spec.data, source), spec.train.seq_len)
    size = spec.train.micro_batch
    chunks = [encoded[i:i + size] for i in range(0, min(len(encoded), size * objective.ewc_batches), size)]
    batches = ({k: v.to(device) for k, v in collator(chunk).items()} for chunk in chunks)
    return fisher_diagonal(model, batches), anchor(model)


class EwcTrainer(Trainer):
    """The SFT loss plus the EWC penalty toward the previous stage's weights."""

    def __init__(self, *args, fisher: dict, anchors: dict, strength: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.fisher, self.anchors, self.strength = fisher, anchors, strength
        total = sum(f.numel() for f in fisher.values())
        #: recorded in the result: how large F is, and what the penalty added at the last step
        self.figures = {"ewc_fisher_mean": float(sum(f.sum() for f in fisher.values()) / total), "ewc_penalty": 0.0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        penalty = ewc_penalty(model, self.fisher, self.anchors, self.strength)
        self.figures["ewc_penalty"] = float(penalty.detach())
        loss = loss + penalty
        return (loss, outputs) if return_outputs else loss
