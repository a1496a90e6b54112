"""Objective `orpo` (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
Model"): the SFT loss on the chosen answer plus λ · −log σ(log-odds(chosen) − log-odds(rejected)),
where log-odds(y|x) = log P − log(1 − P) and P = exp(mean token log-probability of y). No reference
model: one model in memory, one forward per pair batch (chosen and rejected rows together), through the
Trainer's `compute_loss_func`.

Figures on the held-out pairs, in log-odds: `pref_accuracy` (share of pairs whose chosen answer has
the higher log-odds), `reward_margin` (mean log-odds difference), `pref_accuracy_train` on up to 64
training pairs; `eval_loss` is the loss on the chosen answers, as for DPO. `kl_to_ref` (per-token KL to the
start model on the held-out chosen answers, as DPO's) when the method is a peft adapter: the start is the
model with its adapter off; a fully trained model keeps no copy of its start (one model in memory is
ORPO's point), so it has none.
"""

from __future__ import annotations

from typing import Literal

from harness.metrics import declare
from harness.objectives.base import register
from harness.objectives.parts.held_out_reward import ScoredUnderReward
from harness.objectives.parts.preference import (TRAIN_PAIRS_SCORED, PreferenceObjective, PreferenceOptions,
                                           answer_scores, encode_pairs, mean_kl, pair_figures)


declare("orpo_sft_loss", "nats/token", False, "ORPO: the SFT part (chosen answers' NLL) of the last step's loss",
        group="orpo")
declare("orpo_odds_ratio_loss", "nats", False, "ORPO: the odds-ratio part, −log σ(Δ log-odds), of the last step's loss",
        group="orpo")


class OrpoOptions(PreferenceOptions):
    name: Literal["orpo"] = "orpo"


def log_odds(mean_logp):
    """log(P / (1 − P)) for P = exp(mean_logp) (a tensor), stable as P → 1."""
    import torch

    return mean_logp - torch.log1p(-torch.exp(mean_logp).clamp(max=1 - 1e-6))


def orpo_loss(logits, labels, strength: float) -> tuple:
    """(loss, figures) of a pair batch whose first half of rows are the chosen answers and second half
    the rejected ones, in the same order. The SFT part is the token-mean NLL of the chosen answers."""
    import torch.nn.functional as F

    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target, ignore_index=-100, reduction="none")
    mask = target != -100
    sums, counts = (nll * mask).sum(-1), mask.sum(-1)
    half = len(sums) // 2
    mean_logp = -sums / counts.clamp_min(1)
    ratio = log_odds(mean_logp[:half]) - log_odds(mean_logp[half:])
    sft = sums[:half].sum() / counts[:half].sum().clamp_min(1)
    odds_ratio = -F.logsigmoid(ratio).mean()
    return sft + strength * odds_ratio, {"orpo_sft_loss": float(sft.detach()),
                                         "orpo_odds_ratio_loss": float(odds_ratio.detach())}


class PairCollator:
    """Pads a micro-batch of pairs as one batch: every chosen answer, then every rejected one."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, pairs: list[dict]) -> dict:
        return self.inner([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])


class OrpoLoss:
    """The Trainer's `compute_loss_func`: ORPO's loss on a pair batch's logits (see `orpo_loss`); it
    keeps the last step's two parts in `figures`.

    Args:
        strength: λ, the odds-ratio term's weight.
        grad_accum: micro-batches per optimizer step (the Trainer leaves dividing by it to this function).
    """

    def __init__(self, strength: float, grad_accum: int):
        self.strength, self.grad_accum = strength, grad_accum
        self.figures: dict = {}

    def __call__(self, outputs, labels, num_items_in_batch=None):
        # prompt-learning methods prepend virtual tokens: the answer positions are the last ones
        loss, self.figures = orpo_loss(outputs.logits[:, -labels.size(1):], labels, self.strength)
        return loss / self.grad_accum


def answer_log_odds(sums, examples: list[dict]):
    """Log-odds of each answer from its summed log-probability (`answer_scores`) and its label count."""
    import torch

    counts = torch.tensor([max(1, sum(1 for label in e["labels"][1:] if label != -100)) for e in examples])
    return log_odds(sums / counts)


def pair_log_odds(model, chosen: list[dict], rejected: list[dict], collator, batch_size: int, device: str):
    """Log-odds of each chosen and each rejected answer under `model`."""
    return tuple(answer_log_odds(answer_scores(model, side, collator, batch_size, device)[0], side)
                 for side in (chosen, rejected))


class Orpo(ScoredUnderReward, PreferenceObjective):
    name = "orpo"
    Options = OrpoOptions
    description = "odds-ratio preference optimisation: SFT on chosen + λ·odds-ratio term, no reference model"
    holds_reference = False

    def trainer_parts(self, model, tokenizer, ctx, train_set, train_records, collator, metrics) -> dict:
        from harness.data.tokenize import make_collator

        spec = ctx.spec
        chosen, rejected = encode_pairs(tokenizer, train_records, spec.data, spec.train.seq_len)
        if not chosen:
            raise ValueError(f"no preference pair keeps both answers after truncation to seq_len={spec.train.seq_len}")
        self.loss = OrpoLoss(self.options.beta, spec.train.grad_accum)
        return {"compute_loss_func": self.loss, "packing": False,
                "train_set": [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected)],
                "collator": PairCollator(make_collator(tokenizer, packing=False))}

    def score_pairs(self, trainer, model, tokenizer, ctx, train_records, val_records, metrics) -> None:
        """ORPO has no reference model: its pair figures are the policy's own log-odds."""
        from harness.data.tokenize import make_collator

        import torch

        spec, padded = ctx.spec, make_collator(tokenizer, packing=False)  # one row per answer
        size = spec.eval.batch_size
        chosen, rejected = encode_pairs(tokenizer, val_records, spec.data, spec.train.seq_len)
        to_start = hasattr(model, "disable_adapter") and bool(getattr(model, "peft_config", None))
        model.eval()
        with torch.no_grad():
            # one pass over the chosen answers gives their log-odds and, for the KL, the policy's distributions
            sums, policy = answer_scores(model, chosen, padded, size, ctx.device, distributions=to_start)
            rejected_sums, _ = answer_scores(model, rejected, padded, size, ctx.device)
            held_out = answer_log_odds(sums, chosen), answer_log_odds(rejected_sums, rejected)
            train = pair_log_odds(model, *encode_pairs(tokenizer, train_records[:TRAIN_PAIRS_SCORED], spec.data,
                                                       spec.train.seq_len), padded, size, ctx.device)
            kl = None
            if to_start:
                with model.disable_adapter():  # the start run's model
                    _, start = answer_scores(model, chosen, padded, size, ctx.device, distributions=True)
                kl = mean_kl(policy, start)
        metrics.update(pair_figures(*held_out), pref_accuracy_train=pair_figures(*train)["pref_accuracy"],
                       kl_to_ref=kl, **self.loss.figures)


register(Orpo)
