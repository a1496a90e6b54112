"""(IA)^3 through peft: learned vectors rescale keys, values and feed-forward activations (Liu et al. 2022)."""

from __future__ import annotations

from pydantic import model_validator

from harness.methods.base import MethodOptions, register
from harness.methods.peft_base import PeftMethod


class IA3Options(MethodOptions):
    target_modules: list[str] | None = None  # None: peft's per-architecture default (k, v, down_proj for llama)
    feedforward_modules: list[str] | None = None

    @model_validator(mode="after")
    def _subset(self):
        if self.feedforward_modules is not None and not set(self.feedforward_modules) <= set(self.target_modules or []):
            raise ValueError("`feedforward_modules` must be a subset of `target_modules` (set both)")
        return self


class IA3(PeftMethod):
    name = "ia3"
    description = "trained rescaling vectors on attention keys/values and the feed-forward input"
    Options = IA3Options
    merges = True

    def peft_config(self, model, ctx):
        from peft import IA3Config, TaskType

        o = self.options
        return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=o.target_modules,
                         feedforward_modules=o.feedforward_modules)


class QIA3(IA3):
    name = "qia3"
    description = "(IA)^3 on a 4-bit NF4 base"
    requires_4bit = True
    merges = False  # peft cannot merge IA3 vectors into 4-bit weights


register(IA3)
register(QIA3)
