"""AdaLoRA through peft: LoRA whose rank budget is reallocated during training (Zhang et al. 2023)."""

from __future__ import annotations

from pydantic import Field, model_validator

from harness.methods.base import register
from harness.methods.peft_base import PeftMethod, TargetedOptions, resolve_targets


class AdaLoraOptions(TargetedOptions):
    init_r: int = Field(12, gt=0, description="starting rank of every layer")
    target_r: int = Field(8, gt=0, description="average rank after pruning")
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    tinit: float = Field(0.1, ge=0, lt=1, description="fraction of steps before pruning starts")
    tfinal: float = Field(0.2, ge=0, lt=1, description="fraction of steps at the end with a fixed budget")
    delta_t: int = Field(1, gt=0, description="steps between budget reallocations")

    @model_validator(mode="after")
    def _ranks(self):
        if self.target_r > self.init_r:
            raise ValueError(f"`target_r` must be <= `init_r`, but got target_r={self.target_r}, init_r={self.init_r}")
        if self.tinit + self.tfinal >= 1:
            raise ValueError("`tinit` + `tfinal` must leave some steps for pruning (sum < 1)")
        return self


class AdaLora(PeftMethod):
    name = "adalora"
    preference_reference = None  # its rank allocator allows one trainable adapter; TRL adds a `ref` one
    description = "LoRA with SVD-style triplets whose rank budget is pruned on a schedule"
    Options = AdaLoraOptions
    slug_fields = (("init_r", "r"), ("target_r", "t"))
    merges = True
    logits_at_labels = False  # peft adds its orthogonality regulariser to the loss the model computes from labels
    stack_role = None
    stack_note = "its rank allocator runs on peft's own wrapper at every optimizer step"

    def peft_config(self, model, ctx):
        from peft import AdaLoraConfig, TaskType

        o = self.options
        steps = ctx.total_steps  # the budget schedule is defined over the whole run
        return AdaLoraConfig(
            task_type=TaskType.CAUSAL_LM, init_r=o.init_r, target_r=o.target_r, lora_alpha=o.alpha,
            lora_dropout=o.dropout, tinit=int(o.tinit * steps), tfinal=int(o.tfinal * steps),
            deltaT=o.delta_t, total_step=steps,
            target_modules=resolve_targets(o.target_modules, model.config.model_type),
        )

    def callbacks(self, ctx):
        from transformers import TrainerCallback

        class UpdateBudget(TrainerCallback):
            """peft: call update_and_allocate after each optimizer step, while gradients exist."""

            def on_optimizer_step(self, args, state, control, model=None, **kw):
                model.base_model.update_and_allocate(state.global_step)

        return [UpdateBudget()]


register(AdaLora)
