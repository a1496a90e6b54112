"""LoRA and its quantized variant QLoRA, through peft."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from harness.methods.base import Method, MethodOptions, register

# Module-name shorthands per architecture (model_type); other architectures use peft's "all-linear".
TARGET_SHORTHANDS: dict[str, dict[str, list[str]]] = {
    "llama": {
        "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "mlp": ["gate_proj", "up_proj", "down_proj"],
    },
}
TARGET_SHORTHANDS["mistral"] = TARGET_SHORTHANDS["qwen2"] = TARGET_SHORTHANDS["llama"]


def resolve_targets(targets: str | list[str], model_type: str) -> str | list[str]:
    """Turn `all-linear`, `attention`, `mlp` or a name list into peft's `target_modules`.

    Raises:
        ValueError: a shorthand is used on an architecture that has no table for it.
    """
    if isinstance(targets, list):
        return targets
    if targets == "all-linear":
        return "all-linear"
    table = TARGET_SHORTHANDS.get(model_type)
    if table is None:
        raise ValueError(
            f"target_modules `{targets}` has no meaning for model_type `{model_type}`; "
            "list module names or use `all-linear`"
        )
    return table[targets]


class LoraOptions(MethodOptions):
    r: int = Field(8, gt=0, description="rank; higher: more capacity, more memory")
    alpha: float = Field(16, gt=0, description="scale numerator (scale = alpha / r); may be an expression of r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["all-linear", "attention", "mlp"] | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("`target_modules` must name at least one module")
        return value


class Lora(Method):
    name = "lora"
    description = "low-rank update B·A added to each target linear layer"
    Options = LoraOptions
    slug_fields = (("r", "r"), ("alpha", "a"))
    #: extra LoraConfig arguments a variant sets (DoRA, rsLoRA, ...)
    variant_kwargs: dict = {}

    def peft_config(self, model_type: str):
        from peft import LoraConfig, TaskType

        o = self.options
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=o.r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout,
            target_modules=resolve_targets(o.target_modules, model_type),
            bias=o.bias,
            **self.variant_kwargs,
        )

    def apply(self, model, ctx):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=ctx.spec.train.gradient_checkpointing
            )
        return get_peft_model(model, self.peft_config(model.config.model_type))


class QLora(Lora):
    name = "qlora"
    description = "LoRA on a 4-bit NF4 base (double quantization), bitsandbytes"
    requires_4bit = True


register(Lora)
register(QLora)
