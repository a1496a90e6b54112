"""Objective `reward`: RLHF's second step — a reward model (the run's model with a scalar head) trained on
preference pairs with TRL's RewardTrainer, loss −log σ(r_chosen − r_rejected) (Bradley–Terry, as in
Ouyang et al. 2022). Any method that can train the head with the model (full, freeze, the LoRA family,
IA3 …): the head is trainable and saved with the adapter (peft `modules_to_save`, task type SEQ_CLS).

Figures: `reward_accuracy` (held-out pairs whose chosen answer scores higher), `reward_margin` (mean
r_chosen − r_rejected on them), `reward_accuracy_train` (up to 64 training pairs). A reward model writes
no text: it has no token loss (`eval_loss` null) and no generation latency. `grpo` and `rloo` runs read a
finished reward run as `reward: run:<slug>`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.objectives.base import Objective, StartOptions, register

#: training pairs scored for `reward_accuracy_train`
TRAIN_PAIRS_SCORED = 64


class RewardOptions(StartOptions):
    name: Literal["reward"] = "reward"
    start: str | None = Field(None, description="`run:<run id or slug>`, a finished SFT run whose fine-tuned weights "
                                                "the reward model starts from (its backbone; the head is new)")
    center: float | None = Field(None, ge=0, description="TRL's center_rewards_coefficient: pulls the mean reward "
                                                        "toward 0 (None: off)")



def head_trainable(method_cls) -> bool:
    """Whether a method can train the scalar head with the model and save it with its weights: a peft method
    that adapts layers (not prompt learning's virtual tokens, not the causal-LM-only adaption prompts), full
    fine-tuning, or freeze (the head saved among its trained weights). Bottleneck adapters save only their
    own modules, so the head would not come back."""
    from harness.methods.peft_base import PeftMethod

    if not method_cls.trains or method_cls.stack_role == "wrapper":
        return False
    if issubclass(method_cls, PeftMethod):
        return method_cls.name != "llama_adapter"
    return method_cls.saves_full_model or method_cls.stack_role == "weights"


class Reward(Objective):
    name = "reward"
    Options = RewardOptions
    description = "reward model: a scalar head trained on preference pairs, −log σ(r_chosen − r_rejected) (TRL)"
    report_sections = ("preference",)
    metrics = ("reward_accuracy", "reward_accuracy_train", "reward_margin")
    generates = False

    def slug_prefix(self) -> str:
        return "rm"

    def start_ref(self, config) -> str | None:
        return self.options.start

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        """Pairs to learn from, a method that trains the head, no token-level evaluation, a usable start."""
        from harness.errors import allowed
        from harness.methods import METHODS
        from harness.objectives.parts.preference import PreferenceObjective, pairs_problems

        cfg, problems = spec.config, []
        if not head_trainable(cfg.method.cls):
            fit = [n for n in METHODS.names() if head_trainable(METHODS.get(n))]
            problems.append(plan.problem(spec, "method", f"objective `reward` trains a scalar head on the model; "
                                         f"method `{cfg.method.name}` cannot train and save it (prompt learning "
                                         f"prepends virtual tokens, bottleneck adapters save only their modules, "
                                         f"`none` trains nothing). {allowed(fit)}"))
        problems.extend(pairs_problems("reward", spec, plan))
        for field, value in (("eval.tasks", cfg.eval.tasks), ("eval.sources", cfg.eval.sources)):
            if value:
                problems.append(plan.problem(spec, field, f"a reward model writes no text: objective `reward` "
                                             f"cannot score `{field}`; leave it empty"))
        if self.options.start:
            problems.extend(PreferenceObjective._check_start(self, spec, plan))
        return problems

    def load(self, ctx):
        from harness.objectives.parts.reward_model import as_reward_model

        lm, tokenizer = super().load(ctx)
        return as_reward_model(lm, tokenizer), tokenizer

    def test_set(self, ctx, tokenizer) -> list[dict]:
        return []  # no token loss: the test pairs are not scored

    def after_method(self, model, tokenizer, ctx):
        from harness.objectives.parts.reward_model import train_head

        train_head(model)
        return None

    def trainer_parts(self, model, tokenizer, ctx, train_set, train_records, collator, metrics) -> dict:
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        from harness.objectives.parts.reward_model import pair_rows

        spec = ctx.spec
        rows = pair_rows(tokenizer, train_records, spec.data, spec.train.seq_len)
        if not rows:
            raise ValueError(f"no preference pair fits seq_len={spec.train.seq_len} with both answers")
        self.train_rows = rows
        return {"trainer_cls": RewardTrainer, "processing_class": tokenizer, "args_cls": RewardConfig,
                "args": {"bf16": False, "gradient_checkpointing": spec.train.gradient_checkpointing,
                         "max_length": spec.train.seq_len, "center_rewards_coefficient": self.options.center},
                "train_set": Dataset.from_list(rows), "collator": None, "packing": False}

    def validation(self, model, ctx, val_set, collator, metrics):
        """The held-out pairs' figures (and up to 64 training pairs'); no token loss."""
        from harness.objectives.parts.reward_model import pair_figures, pair_rows, score_pairs

        spec, tokenizer = ctx.spec, self.tokenizer
        records = self.records(ctx, metrics)
        model.eval()
        pad, size = tokenizer.pad_token_id, spec.eval.batch_size
        held_out = pair_rows(tokenizer, records[1], spec.data, spec.train.seq_len)
        train = pair_rows(tokenizer, records[0][:TRAIN_PAIRS_SCORED], spec.data, spec.train.seq_len)
        metrics.update(pair_figures(*score_pairs(model, held_out, pad, size, ctx.device)),
                       reward_accuracy_train=pair_figures(*score_pairs(model, train, pad, size, ctx.device))[
                           "reward_accuracy"], reward_pairs=len(held_out))
        return None

    def before_training(self, model, tokenizer, ctx, val_set, collator, prompts, metrics) -> None:
        self.tokenizer = tokenizer


register(Reward)
