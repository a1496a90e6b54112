"""The distillation machinery: teachers (a model, a finished run, an ensemble), depth-pruned
students, and the Trainer that adds the distillation losses to the labels' cross-entropy."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer
from transformers.modeling_outputs import CausalLMOutput

from harness import models
from harness.objectives.base import RUN_REF
from harness.objectives.parts.distill_losses import (distill_weight, feature_mse, projection_layers, relation_loss,
                                                     response_kl, response_kl_topk)
from harness.objectives.parts.student import decoder_layers, depth_pruned_copy, keep_layers, layer_pairs


def load_teacher(objective, model_cfg, device: str, refs=None):
    """The frozen teacher (in eval mode) and its tokenizer, in the run's dtype: a model, or the
    fine-tuned weights of a finished run of the store (`run:<run id>`, through `refs`), merged when
    they can be; several (`teachers:`) make one TeacherEnsemble."""
    loaded = [_load_one(t.model, model_cfg, device, refs) for t in objective.teacher_list()]
    if objective.teachers is None:
        return loaded[0]
    return TeacherEnsemble([m for m, _ in loaded], [t.weight for t in objective.teachers]), loaded[0][1]


def _load_one(name: str, model_cfg, device: str, refs):
    if not name.startswith(RUN_REF):
        teacher, tokenizer = models.load(type(model_cfg)(name=name, dtype=model_cfg.dtype,
                                                         trust_remote_code=model_cfg.trust_remote_code), device)
        return freeze(teacher), tokenizer
    try:
        teacher, tokenizer = refs.load_model(name, device)
    except ValueError as exc:
        raise ValueError(f"objective.teacher: {exc}") from None
    return freeze(teacher), tokenizer


def teacher_identity(objective, refs) -> list:
    """What a teacher cache depends on: each teacher's name (a run's: its id and finish time) and weight."""
    out = []
    for t in objective.teacher_list():
        result = refs.finished(t.model)[0] if t.model.startswith(RUN_REF) else None
        out.append([t.model if result is None else f"{result['run_id']}@{result['finished_at']}", t.weight])
    return out


class TeacherEnsemble(nn.Module):
    """Several frozen teachers as one: its logits, softened by `temperature`, give the weighted mixture
    of the teachers' softened distributions (T·log Σ wᵢ softmax(zᵢ/T)), so every loss and figure that
    reads a teacher's logits reads the ensemble's."""

    def __init__(self, members: list, weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        total = sum(weights)
        self.register_buffer("log_weights", torch.log(torch.tensor([w / total for w in weights])), persistent=False)
        self.config = members[0].config
        self.temperature = 1.0

    def forward(self, output_hidden_states: bool = False, **inputs):
        t = self.temperature
        logp = torch.stack([F.log_softmax(m(**inputs).logits.float() / t, dim=-1) for m in self.members])
        mixed = torch.logsumexp(logp + self.log_weights.to(logp.device).view(-1, *[1] * (logp.dim() - 1)), dim=0)
        return CausalLMOutput(logits=mixed * t)


@contextmanager
def softened(teacher, temperature: float):
    """An ensemble mixes its members' distributions softened at `temperature` (a single teacher's
    logits are softened by the loss itself)."""
    if not isinstance(teacher, TeacherEnsemble):
        yield
        return
    teacher.temperature = temperature
    try:
        yield
    finally:
        teacher.temperature = 1.0


def freeze(model):
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def pruned_student(objective, teacher):
    """A trainable depth-pruned copy of the teacher, or of an ensemble's first member (`student.keep_layers`)."""
    teacher = teacher.members[0] if isinstance(teacher, TeacherEnsemble) else teacher
    keep = keep_layers(objective.student.keep_layers, len(decoder_layers(teacher)))
    student = depth_pruned_copy(teacher, keep)
    for param in student.parameters():
        param.requires_grad_(True)
    student.train()
    return student


def segments(inputs: dict, shape: torch.Size) -> torch.Tensor:
    """An id per example for every token: rows of a padded batch, or the examples of a packed row
    (each starts where position_ids restarts at 0)."""
    positions = inputs.get("position_ids")
    if positions is None:
        return torch.arange(shape[0], device=inputs["input_ids"].device).unsqueeze(1).expand(shape)
    starts = (positions == 0).long().flatten()
    return (starts.cumsum(0) - 1).clamp_min(0).view(shape)


def pooled_examples(hidden: torch.Tensor, mask: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Mean hidden state over each example's masked tokens: (examples, width)."""
    flat_h, flat_m, flat_s = hidden.reshape(-1, hidden.size(-1)).float(), mask.flatten().float(), seg.flatten()
    n = int(flat_s.max()) + 1
    sums = torch.zeros(n, flat_h.size(-1), device=hidden.device).index_add_(0, flat_s, flat_h * flat_m[:, None])
    counts = torch.zeros(n, device=hidden.device).index_add_(0, flat_s, flat_m)
    keep = counts > 0
    return sums[keep] / counts[keep, None]


class DistillTrainer(Trainer):
    """Trainer whose loss is w_ce·CE + s(step)·(w_kl·KL + w_feature·MSE + w_relation·relation)."""

    def __init__(self, *args, teacher, objective, cache=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.objective, self.cache = teacher, objective, cache
        weights = objective.losses
        self.needs_hidden = weights.feature > 0 or weights.relation > 0
        n_student = self.model.config.num_hidden_layers
        self.pairs = layer_pairs(objective.feature_layers, n_student, teacher.config.num_hidden_layers)
        width = self.model.config.hidden_size
        self.projections = projection_layers(width, teacher.config.hidden_size, len(self.pairs)) \
            if weights.feature > 0 else None
        if self.projections is not None:
            self.projections.to(next(self.model.parameters()).device)

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.projections is not None and not getattr(self, "_projections_added", False):
            optimizer.add_param_group({"params": list(self.projections.parameters()), "weight_decay": 0.0})
            self._projections_added = True
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self.objective.losses
        labels = inputs["labels"]
        student_inputs = {**inputs, "output_hidden_states": True} if self.needs_hidden else inputs
        ce, outputs = super().compute_loss(model, student_inputs, return_outputs=True,
                                           num_items_in_batch=num_items_in_batch)
        length = labels.size(1)  # prompt-tuning students have virtual positions first: keep the real ones
        temperature, kl_mask = self.objective.temperature, labels[:, 1:] != -100
        student_logits = outputs.logits[:, -length:][:, :-1]
        kd = torch.zeros((), device=ce.device)
        if self.cache is not None:  # the teacher's top-k, read from disk: no teacher forward
            values, ids = self.cache.lookup(inputs, labels)
            kd = kd + w.kl * response_kl_topk(student_logits[kl_mask][None], values[None], ids[None],
                                              torch.ones(1, len(values), device=ce.device), temperature)
            teacher_out = None
        else:
            teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            with torch.no_grad(), softened(self.teacher, temperature):
                teacher_out = self.teacher(**teacher_inputs, output_hidden_states=self.needs_hidden, use_cache=False)
            if w.kl > 0:
                kd = kd + w.kl * response_kl(student_logits, teacher_out.logits[:, :-1], kl_mask, temperature)
        if self.needs_hidden:
            mask = labels != -100
            student_hidden = [h[:, -length:] for h in outputs.hidden_states]
            if w.feature > 0:
                kd = kd + w.feature * feature_mse(student_hidden, teacher_out.hidden_states, self.pairs, mask,
                                                  self.projections, relative=True)
            if w.relation > 0:
                seg = segments(inputs, labels.shape)
                kd = kd + w.relation * relation_loss(pooled_examples(student_hidden[-1], mask, seg),
                                                     pooled_examples(teacher_out.hidden_states[-1], mask, seg))
        scale = distill_weight(self.state.global_step, self.state.max_steps, 1.0, self.objective.schedule)
        loss = w.ce * ce + scale * kd
        return (loss, outputs) if return_outputs else loss


def val_kl(student, teacher, examples: list[dict], collator, batch_size: int, device: str) -> float | None:
    """Token-weighted KL(teacher ‖ student) at T = 1 over the validation responses."""
    from harness.evaluate import eval_batches

    total, count = 0.0, 0
    for batch, labels in eval_batches(student, examples, collator, batch_size, device):
        s_logits = student(**batch, use_cache=False).logits[:, -labels.size(1):]
        t_logits = teacher(**batch, use_cache=False).logits
        mask = labels[:, 1:] != -100
        n = int(mask.sum())
        if n:
            total += response_kl(s_logits[:, :-1], t_logits[:, :-1], mask, 1.0).item() * n
            count += n
    return total / count if count else None
