"""The preference objectives through TRL: `dpo` (DPOTrainer) and `kto` (KTOTrainer, the pairs
unpaired into desirable and undesirable answers). The reference model is TRL's: for a peft method,
a frozen copy of the fresh adapter (so the base itself: no second model in memory); for full or
partial fine-tuning, a frozen copy of the starting model.

Figures on held-out pairs, with the implicit reward r(y) = β·(log π(y|x) − log π_ref(y|x)):
`pref_accuracy` (share of pairs with r(chosen) > r(rejected)), `reward_margin` (mean of the
difference) and `kl_to_ref` (per-token KL(π ‖ π_ref) on the chosen answers)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from harness.data.tokenize import answer_text, encode, make_collator, prompt_text
from harness.evaluate import eval_batches

#: training pairs scored for `pref_accuracy_train` (enough for a stable share, cheap on a CPU)
TRAIN_PAIRS_SCORED = 64


def completion_text(tokenizer, prompt: str, response: str, cfg) -> str:
    """The answer as the model must write it after `prompt_text`: the chat template's assistant turn
    up to its end-of-turn token, or the response and EOS."""
    answer = answer_text(tokenizer, prompt, response, cfg)
    # TRL appends EOS to an answer that does not end with it: stop at the end-of-turn token instead
    eos = tokenizer.eos_token or ""
    return answer.rstrip() if eos and answer.rstrip().endswith(eos) else answer


def trainer_parts(objective, tokenizer, records: list[dict], data_cfg, seq_len: int):
    """(Trainer class, its args class, the args' objective options, the training Dataset) for TRL."""
    from datasets import Dataset

    def text(rec, answer):
        return completion_text(tokenizer, rec["prompt"], answer, data_cfg)

    if objective.name == "dpo":
        from trl import DPOConfig, DPOTrainer

        rows = [{"prompt": prompt_text(tokenizer, r["prompt"], data_cfg), "chosen": text(r, r["response"]),
                 "rejected": text(r, r["rejected"])} for r in records]
        options = {"beta": objective.beta, "loss_type": [objective.loss_type], "max_length": seq_len}
        return DPOTrainer, DPOConfig, options, Dataset.from_list(rows)
    from trl import KTOConfig, KTOTrainer

    rows = [{"prompt": prompt_text(tokenizer, r["prompt"], data_cfg), "completion": text(r, answer), "label": good}
            for r in records for answer, good in ((r["response"], True), (r["rejected"], False))]
    return KTOTrainer, KTOConfig, {"beta": objective.beta, "max_length": seq_len}, Dataset.from_list(rows)


@contextmanager
def reference(trainer):
    """The reference model TRL trains against: its frozen copy, or the policy with its `ref`
    adapter (or none) active."""
    if getattr(trainer, "ref_model", None) is not None:
        yield trainer.ref_model
        return
    from trl.trainer.utils import use_adapter

    model = trainer.model
    with use_adapter(model, "ref" if "ref" in getattr(model, "peft_config", {}) else None):
        yield model


def drop_reference(model) -> None:
    """Remove TRL's `ref` adapter so only the trained one is saved, merged and measured."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def answer_scores(model, examples: list[dict], collator, batch_size: int, device: str,
                  distributions: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per example, the summed log-probability of its answer tokens (its labels); with
    `distributions`, also per batch the log-probabilities over the vocabulary at each answer token,
    (tokens, vocab), from the same forward."""
    sums, dists = [], []
    for batch, labels in eval_batches(model, examples, collator, batch_size, device):
        logp = torch.log_softmax(model(**batch, use_cache=False).logits[:, -labels.size(1):][:, :-1].float(), -1)
        target = labels[:, 1:]
        mask = target != -100
        token = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        sums.append((token * mask).sum(-1).cpu())
        if distributions:
            dists.append(logp[mask].cpu())
    return (torch.cat(sums) if sums else torch.zeros(0)), dists


def encode_pairs(tokenizer, records: list[dict], data_cfg, seq_len: int) -> tuple[list[dict], list[dict]]:
    """(chosen, rejected) encodings of the pairs whose both answers survive truncation."""
    chosen, rejected = [], []
    for rec in records:
        c = encode(tokenizer, rec, data_cfg, seq_len)
        r = encode(tokenizer, {**rec, "response": rec["rejected"]}, data_cfg, seq_len)
        if c is not None and r is not None:
            chosen.append(c)
            rejected.append(r)
    return chosen, rejected


def pair_figures(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict:
    """pref_accuracy (strict: a tie is not a win) and reward_margin."""
    if not len(r_chosen):
        return {"pref_accuracy": None, "reward_margin": None}
    return {"pref_accuracy": (r_chosen > r_rejected).float().mean().item(),
            "reward_margin": (r_chosen - r_rejected).mean().item()}


def figures(trainer, tokenizer, train_records: list[dict], val_records: list[dict], spec, device: str) -> dict:
    """pref_accuracy, reward_margin, kl_to_ref on the held-out pairs; pref_accuracy_train on up to
    TRAIN_PAIRS_SCORED training pairs."""
    collator = make_collator(tokenizer, packing=False)  # one row per answer: sums per example
    size, seq_len = spec.eval.batch_size, spec.train.seq_len
    sets = [*encode_pairs(tokenizer, val_records, spec.data, seq_len),
            *encode_pairs(tokenizer, train_records[:TRAIN_PAIRS_SCORED], spec.data, seq_len)]

    def scores(model):
        first, dists = answer_scores(model, sets[0], collator, size, device, distributions=True)
        return [first, *(answer_scores(model, x, collator, size, device)[0] for x in sets[1:])], dists

    # the reference may be the policy with another adapter active: score each side in its own pass
    with reference(trainer) as ref_model:
        ref_scores, ref_logp = scores(ref_model)
    pol_scores, pol_logp = scores(trainer.model)
    r = [spec.objective.beta * (p - q) for p, q in zip(pol_scores, ref_scores)]
    kl = [(p.exp() * (p - q)).sum() for p, q in zip(pol_logp, ref_logp)]
    tokens = sum(len(q) for q in ref_logp)
    return {**pair_figures(r[0], r[1]), "pref_accuracy_train": pair_figures(r[2], r[3])["pref_accuracy"],
            "kl_to_ref": float(sum(kl)) / tokens if tokens else None}
