"""Objective `continual`: data sources trained one after another, one run per stage.

Stage k trains on `sequence[k]` starting from stage k−1 (`previous`):
- `naive`: keeps training the previous stage's weights (its adapter, or its full model);
- `replay`: the same, with a reservoir sample of the earlier stages' training examples making up
  `replay_fraction` of this stage's examples;
- `ewc`: the same, plus λ/2 · Σ F (θ − θ*)², F the Fisher diagonal of the previous stage's data at
  the previous stage's weights θ*;
- `adapter_per_stage`: the earlier stages' adapters are merged into (frozen in) the base and a fresh
  adapter learns this stage.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

from harness.objectives.domains import source_train
from harness.objectives.mixing import with_replay


def stage_records(spec) -> tuple[list[dict], int]:
    """(this stage's training records with any replayed ones, how many were replayed). Every record
    keeps its `source`."""
    objective, k = spec.objective, spec.objective.stage

    def train(j):
        return [{**r, "source": objective.sequence[j]}
                for r in source_train(spec.data, objective.sequence[j], spec.data.n_train, spec.seed)]

    current = train(k)
    if objective.strategy != "replay" or k == 0:
        return current, 0
    earlier = [r for j in range(k) for r in train(j)]
    mixed = with_replay(current, earlier, objective.replay_fraction, seed=spec.seed + k)
    return mixed, len(mixed) - len(current)


def continues_weights(spec) -> bool:
    """A stage after the first that keeps training the previous stage's own trainable weights."""
    return spec.objective.name == "continual" and spec.objective.stage and spec.objective.strategy != "adapter_per_stage"


def resume_adapter(model, previous_dir: Path) -> None:
    """Load the previous stage's adapter weights into the freshly applied (same-config) adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(previous_dir) / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise ValueError(f"the previous stage's adapter does not fit this one: {unexpected[:3]} …")


def ewc_state(model, spec, tokenizer, collator, device: str) -> tuple[dict, dict]:
    """(Fisher diagonal, anchors) of the trainable weights, now at the previous stage's optimum, from
    `ewc_batches` micro-batches of the previous stage's training data."""
    from harness.data.tokenize import encode_all
    from harness.objectives.domains import source_cfg
    from harness.objectives.ewc import anchor, fisher_diagonal

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
        from harness.objectives.ewc import ewc_penalty

        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        penalty = ewc_penalty(model, self.fisher, self.anchors, self.strength)
        self.figures["ewc_penalty"] = float(penalty.detach())
        loss = loss + penalty
        return (loss, outputs) if return_outputs else loss
