"""Training: the transformers Trainer plus callbacks for what it does not record."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import Trainer, TrainerCallback, TrainingArguments

from harness.evaluate import keeps_logits, label_logits
from harness.measure import clock, grad_bytes, optimizer_bytes


class Diverged(RuntimeError):
    """The training loss became NaN or infinite, or diverged by a `DivergenceRule`."""


@dataclass(frozen=True)
class DivergenceRule:
    """When a finite training loss counts as diverged (`train.diverge_factor`, `train.collapse_steps`).

    - blow-up: a logged loss above `factor` × the first logged loss and above ln(vocab) (the loss of
      guessing uniformly: a floor that keeps losses starting near zero, a distillation KL, from tripping
      on noise). A fine-tune's loss falls from its first value; 10× it is no noise of a small batch.
    - collapse: `collapse_steps` logged steps in a row whose loss sits at ln(vocab) (within
      `UNIFORM_TOL`) with a gradient norm below `FLAT_GRAD`: the model outputs the uniform
      distribution and no longer learns (after lr 1e3, the loss jumps to ~1e7, then stays there).

    Either one needs the vocabulary size for ln(vocab) (without it only the factor rule applies, with
    the factor as its floor).
    """

    factor: float | None = 10.0
    collapse_steps: int | None = 3
    vocab_size: int | None = None
    UNIFORM_TOL = 0.05
    FLAT_GRAD = 1e-6

    def verdict(self, history: list[tuple[int, float, float | None]]) -> str | None:
        """Why the logged (step, loss, grad norm) rows so far are a diverged run, or None."""
        if not history:
            return None
        uniform = math.log(self.vocab_size) if self.vocab_size and self.vocab_size > 1 else None
        (first_step, first, _), (step, loss, _) = history[0], history[-1]
        if self.factor is not None and len(history) > 1 and first > 0:
            floor = uniform if uniform is not None else self.factor
            if loss > self.factor * first and loss > floor:
                return (f"training loss {loss:.4g} at step {step} is above {self.factor:g} × its first value "
                        f"{first:.4g} (step {first_step})" + (f" and above ln(vocab) = {uniform:.2f}" if uniform else "")
                        + " (train.diverge_factor)")
        n = self.collapse_steps
        if n is not None and uniform is not None and len(history) >= n:
            tail = history[-n:]
            if all(g is not None and g < self.FLAT_GRAD and abs(v - uniform) < self.UNIFORM_TOL for _, v, g in tail):
                return (f"the model collapsed to uniform output: the training loss sat at ln(vocab) = {uniform:.2f} "
                        f"with a gradient norm below {self.FLAT_GRAD:g} for {n} logged steps (steps "
                        f"{tail[0][0]}–{tail[-1][0]}: losses {', '.join(f'{v:.4f}' for _, v, _ in tail)}; grad norms "
                        f"{', '.join(f'{g:.1e}' for _, _, g in tail)}) (train.collapse_steps)")
        return None


@dataclass
class TrainStats:
    step_ms: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grads_bytes: int | None = None
    optimizer_bytes: int | None = None
    #: time.time() at the first step's start (start-up is measured from the process's launch)
    first_step_at: float | None = None

    def steady(self, warmup: int) -> tuple[float, int, list[float]]:
        """(seconds, tokens, step ms) of the steps after the first `warmup` (all steps when there are
        no more than `warmup`)."""
        skip = warmup if len(self.step_ms) > warmup else 0
        ms, tokens = self.step_ms[skip:], self.step_tokens[skip:]
        return sum(ms) / 1000, sum(tokens), ms


class MetricsLog(TrainerCallback):
    """Writes each logged step to metrics.jsonl and the tracker; stops on a non-finite loss, or one that
    diverged by `rule` (the row that shows it is written first)."""

    def __init__(self, path: Path, tracker, stats: TrainStats, rule: DivergenceRule | None = None):
        self.path = Path(path)
        self.tracker = tracker
        self.stats = stats
        self.rule = rule or DivergenceRule(factor=None, collapse_steps=None)
        self._history: list[tuple[int, float, float | None]] = []
        self._last = (time.perf_counter(), 0)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        if "loss" not in logs:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        row = {
            "step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
            "loss": logs.get("loss"), "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
            "tokens": tokens, "tokens_per_s": (tokens - self._last[1]) / max(now - self._last[0], 1e-9),
        }
        self._last = (now, tokens)
        write_metric(self.path, row)
        self.tracker.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=state.global_step)
        loss = row["loss"]
        if loss is None or not math.isfinite(loss):
            raise Diverged(f"training loss became {loss} at step {state.global_step}")
        self.stats.losses.append(loss)
        grad = row["grad_norm"]
        self._history.append((state.global_step, loss, grad if isinstance(grad, (int, float)) else None))
        why = self.rule.verdict(self._history)
        if why:
            raise Diverged(why)


class StepClock(TrainerCallback):
    """Times each optimizer step and counts its tokens: forward, backward and update of the step's
    micro-batches, from `on_step_begin` to `on_step_end` (fetching the batch, logging and periodic
    evaluation fall outside; on CUDA synchronized at both ends). On the first step it also reads the
    gradients' bytes before the update and the optimizer state's bytes after it.

    Goes after the method's callbacks (their per-step work is training) and before PeriodicEval."""

    def __init__(self, stats: TrainStats, device: str):
        self.stats, self.device = stats, device

    def on_step_begin(self, args, state, control, **kw):
        if self.stats.first_step_at is None:
            self.stats.first_step_at = time.time()
        self._t0, self._tokens0 = clock(self.device), state.num_input_tokens_seen

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if self.stats.grads_bytes is None and model is not None:
            self.stats.grads_bytes = grad_bytes(model)

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        self.stats.step_ms.append((clock(self.device) - self._t0) * 1000)
        self.stats.step_tokens.append(state.num_input_tokens_seen - self._tokens0)
        if self.stats.optimizer_bytes is None and optimizer is not None:
            self.stats.optimizer_bytes = optimizer_bytes(optimizer)


class PeriodicEval(TrainerCallback):
    """Every `every` steps, the token-weighted validation loss goes to metrics.jsonl and the tracker."""

    def __init__(self, every: int, evaluate: Callable[[Any], float], path: Path, tracker):
        self.every, self.evaluate, self.path, self.tracker = every, evaluate, Path(path), tracker

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step % self.every == 0 and state.global_step < state.max_steps:
            loss = self.evaluate(model)
            write_metric(self.path, {"step": state.global_step, "eval_loss": loss})
            self.tracker.log({"eval/loss": loss}, step=state.global_step)


def write_metric(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def training_args(cfg, *, out_dir: Path, seed: int, device: str, packing: bool,
                  args_cls: type[TrainingArguments] = TrainingArguments, **extra) -> TrainingArguments:
    """TrainingArguments (or a TRL subclass, `args_cls`, with its `extra` options) from a TrainCfg;
    checkpoints are ours to save, so the Trainer saves none. `compile` hands the model to
    torch.compile through the Trainer (`torch_compile`)."""
    t = cfg
    return args_cls(
        output_dir=str(out_dir),
        max_steps=t.max_steps if t.max_steps is not None else -1,
        num_train_epochs=t.epochs or 1,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.grad_accum,
        activation_checkpointing=t.gradient_checkpointing,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=_fused(t.optimizer, device),
        logging_steps=t.log_every,
        logging_nan_inf_filter=False,  # a NaN must reach our callback, not be averaged away
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        # packed batches have no padding: every token is real; padded ones count attention_mask
        include_num_input_tokens_seen="all" if packing else "non_padding",
        torch_compile=t.compile,
        **extra,
    )


class LabelLogitsTrainer(Trainer):
    """The Trainer, with the vocabulary projection and cross-entropy computed only at the positions
    whose next token is a label (`logits_to_keep`), not at every position of the batch.

    The loss is the same sum over label tokens divided by the same `num_items_in_batch` as
    transformers' `ForCausalLMLoss`; what is skipped is the `hidden × vocab` matmul (49,152 wide
    for SmolLM2) and its logits at prompt tokens — the chat template's system prompt and the user
    turn, most of a chatterbot example. The recipe uses it where the method allows
    (`Method.logits_at_labels`); a prompt-learning peft config (virtual tokens shift the positions)
    or a model without `logits_to_keep` still gets the plain Trainer's loss.

    A model that can compute the loss itself from the hidden states (`train.kernels: liger`: fused
    linear cross-entropy, `fuses_loss`) gets the label positions, their targets and `skip_logits` and
    returns that loss: the same sum ÷ count, accumulated in fp32 chunks without materialising logits.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch.nn.functional as F

        labels = inputs.get("labels")
        own_loss = self.compute_loss_func is not None or self.label_smoother is not None  # an objective's (ORPO)
        inner = getattr(model, "_orig_mod", model)  # under `train.compile` the model is torch.compile's wrapper
        if labels is None or own_loss or not keeps_logits(inner):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = inputs.get("shift_labels")
        if targets is None:
            targets = F.pad(labels, (0, 1), value=-100)[..., 1:]
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
        if fuses_loss(inner):
            keep = targets.ne(-100).any(dim=0).nonzero().flatten()
            count = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
            outputs = model(**model_inputs, logits_to_keep=keep, shift_labels=targets[:, keep], skip_logits=True,
                            **count)
            loss = outputs.loss * self._rank_scale(num_items_in_batch)
            return (loss, outputs) if return_outputs else loss
        outputs, targets = label_logits(model, model_inputs, targets)
        logits = outputs.logits.float()
        targets = targets.to(logits.device)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                               reduction="sum")
        # ÷ the batch's label count (the Trainer's across accumulated micro-batches, else this one's): a mean
        count = targets.ne(-100).sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss / (count.to(loss.device) if hasattr(count, "to") else count) * self._rank_scale(num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _rank_scale(self, num_items_in_batch) -> int:
        """Ranks of a data-parallel run when the label count is every rank's (as `Trainer.compute_loss`
        scales): DDP averages the ranks' gradients, so each rank's sum ÷ the global count is × ranks."""
        if num_items_in_batch is None or not self.args.average_tokens_across_devices:
            return 1
        return self.accelerator.num_processes


def fuses_loss(model) -> bool:
    """Whether `model` (a peft model's base) computes the loss from the hidden states when called with
    targets and `skip_logits=True`, with no logits: Liger's fused linear cross-entropy
    (`train.kernels: liger`, `harness.models.apply_kernels`)."""
    from harness.models import FUSED_LOSS

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, FUSED_LOSS, False) is True


def _fused(optimizer: str, device: str) -> str:
    """`adamw_torch` as torch's fused AdamW kernel on CPU and CUDA: the same update, one kernel over
    all parameters instead of a Python loop per tensor (0.73 → 0.11 s a step for 161M fp32 values on
    the 2-core CPU). transformers' own default is the fused kernel; a spec keeps saying `adamw_torch`,
    so run ids do not change."""
    return "adamw_torch_fused" if optimizer == "adamw_torch" and device in ("cpu", "cuda") else optimizer


def build_trainer(model, args: TrainingArguments, train_set, collator, *,
                  callbacks: list, optimizer=None, trainer_cls: type[Trainer] = Trainer, **extra) -> Trainer:
    """The run's Trainer (`trainer_cls` and its `extra` arguments: an objective's own loss)."""
    return trainer_cls(
        model=model, args=args, train_dataset=train_set, data_collator=collator,
        callbacks=callbacks, optimizers=(optimizer, None), **extra,
    )
