"""Knowledge-distillation losses (teacher → student), each a pure function of tensors.

- response-based: KL between temperature-softened token distributions, × T² (Hinton et al. 2015),
  from full teacher logits or from a cached top-k of them;
- feature-based: MSE between chosen hidden layers, through a learned projection when widths differ;
- relation-based: distance between the in-batch similarity matrices of pooled hidden states.

Masks are (batch, seq) with 1 on the tokens that count (the response tokens, in ftbench's runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def response_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                temperature: float = 2.0) -> torch.Tensor:
    """Mean over masked tokens of KL(teacher_T ‖ student_T), scaled by T² so its gradients keep the
    size of the CE loss's as T changes. Logits: (batch, seq, vocab)."""
    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per_token = (teacher.exp() * (teacher - student)).sum(-1)
    return _masked_mean(per_token, mask) * t * t


def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """What a teacher cache stores per token: the top-k token ids and their log-probabilities at
    temperature T (over the whole vocabulary) — k·(4+4) bytes a token instead of 4·vocab."""
    logp = F.log_softmax(teacher_logits.float() / float(temperature), dim=-1)
    values, indices = logp.topk(k, dim=-1)
    return values, indices.int()


def response_kl_topk(student_logits: torch.Tensor, topk_logp: torch.Tensor, topk_ids: torch.Tensor,
                     mask: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """`response_kl` against a cached top-k teacher: the KL between teacher and student with the
    vocabulary coarsened to the teacher's top-k tokens plus one bucket for all the others (the
    teacher's tail mass 1 − Σ top-k against the student's). Equals `response_kl` when k is the
    vocabulary size, is a lower bound on it otherwise, and — unlike renormalising the top k — does
    not ask the student to be sharper than the teacher."""
    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, topk_ids.long())
    teacher = topk_logp.float()
    head = (teacher.exp() * (teacher - student)).sum(-1)
    eps = 1e-6  # the tail's mass can round to 0 (or below) when the top k hold nearly everything
    p_tail = (1 - teacher.exp().sum(-1)).clamp_min(eps)
    q_tail = (1 - student.exp().sum(-1)).clamp_min(eps)
    tail = p_tail * (p_tail.log() - q_tail.log())
    return _masked_mean(head + tail, mask) * t * t


def feature_mse(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor],
                pairs: list[tuple[int, int]], mask: torch.Tensor,
                projections: nn.ModuleList | None = None, relative: bool = False) -> torch.Tensor:
    """Mean over `pairs` (student layer, teacher layer) of the masked per-token MSE between hidden
    states; `projections[i]` maps the student's width to the teacher's for pair i (None: same width).
    Hidden-state lists are as transformers returns them: index 0 is the embeddings.

    `relative`: each pair's MSE divided by the teacher layer's mean square (masked), so every pair
    weighs alike and the loss is on the scale of the others (a decoder's late hidden states reach
    norms in the hundreds: raw MSE would drown KL and CE)."""
    losses = []
    for i, (s_layer, t_layer) in enumerate(pairs):
        student = student_hidden[s_layer].float()
        if projections is not None:
            student = projections[i](student)
        teacher = teacher_hidden[t_layer].float()
        loss = _masked_mean((student - teacher).pow(2).mean(-1), mask)
        if relative:
            loss = loss / _masked_mean(teacher.pow(2).mean(-1), mask).clamp_min(1e-12)
        losses.append(loss)
    return torch.stack(losses).mean()


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of a (batch, seq, width) hidden state over each sequence's masked tokens: (batch, width)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)


def relation_loss(student_pooled: torch.Tensor, teacher_pooled: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius distance between the in-batch cosine-similarity matrices (batch × batch) of
    student and teacher, divided by batch²: zero when the two see the same relations between
    examples, whatever their widths."""
    s = F.normalize(student_pooled.float(), dim=-1)
    t = F.normalize(teacher_pooled.float(), dim=-1)
    n = s.shape[0]
    return (s @ s.T - t @ t.T).pow(2).sum() / (n * n)


def projection_layers(student_width: int, teacher_width: int, n: int) -> nn.ModuleList | None:
    """One learned linear map per feature pair when widths differ (trained with the student)."""
    if student_width == teacher_width:
        return None
    return nn.ModuleList(nn.Linear(student_width, teacher_width, bias=False) for _ in range(n))


def distill_weight(step: int, total_steps: int, weight: float, schedule: str = "constant") -> float:
    """The distillation losses' weight at `step`: constant, or decaying linearly to 0 at the last step."""
    if schedule == "constant" or total_steps <= 1:
        return weight
    if schedule == "linear":
        return weight * max(0.0, 1 - step / (total_steps - 1))
    raise ValueError(f"schedule must be constant or linear, but got {schedule!r}")
