"""VeRA through peft: frozen shared random projections, trained scaling vectors (Kopiczko et al. 2024)."""

from __future__ import annotations

from pydantic import Field

from harness.methods.base import register
from harness.methods.peft_base import PeftMethod, TargetedOptions, resolve_targets


class VeraOptions(TargetedOptions):
    r: int = Field(256, gt=0, description="rank of the shared projections (peft default 256)")
    dropout: float = Field(0.0, ge=0, lt=1)
    d_initial: float = Field(0.1, gt=0)
    save_projection: bool = True  # keep the random matrices in the artifact so it reloads anywhere


class Vera(PeftMethod):
    name = "vera"
    description = "shared frozen random low-rank matrices with trained per-layer scaling vectors"
    Options = VeraOptions
    slug_fields = (("r", "r"),)
    merges = True
    stack_role = None
    stack_note = "peft keeps VeRA's shared projections on its wrapper and cannot inject them in place"

    def peft_config(self, model, ctx):
        from peft import TaskType, VeraConfig

        o = self.options
        return VeraConfig(task_type=TaskType.CAUSAL_LM, r=o.r, vera_dropout=o.dropout, d_initial=o.d_initial,
                          save_projection=o.save_projection,
                          target_modules=resolve_targets(o.target_modules, model.config.model_type))


register(Vera)
