"""LyCORIS-style low-rank methods through peft: LoHa (Hadamard product) and LoKr (Kronecker product)."""

from __future__ import annotations

from pydantic import Field

from harness.methods.base import register
from harness.methods.peft_base import PeftMethod, TargetedOptions, resolve_targets


class LycorisOptions(TargetedOptions):
    r: int = Field(8, gt=0)
    alpha: float = Field(8, gt=0, description="may be an expression of r")
    rank_dropout: float = Field(0.0, ge=0, lt=1)
    module_dropout: float = Field(0.0, ge=0, lt=1)


class LoHa(PeftMethod):
    name = "loha"
    description = "low-rank Hadamard product update (Hyeon-Woo et al. 2022, FedPara)"
    Options = LycorisOptions
    slug_fields = (("r", "r"), ("alpha", "a"))
    merges = True
    config_class = "LoHaConfig"

    def peft_config(self, model, ctx):
        import peft

        o = self.options
        return getattr(peft, self.config_class)(
            task_type=peft.TaskType.CAUSAL_LM, r=o.r, alpha=o.alpha, rank_dropout=o.rank_dropout,
            module_dropout=o.module_dropout, target_modules=resolve_targets(o.target_modules, model.config.model_type),
        )


class LoKr(LoHa):
    name = "lokr"
    description = "low-rank Kronecker product update (Yeh et al. 2023, LyCORIS)"
    config_class = "LoKrConfig"


register(LoHa)
register(LoKr)
