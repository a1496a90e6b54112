"""Shared pieces of the methods built on peft: target-module shorthands and `get_peft_model`."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from harness.context import RunContext
from harness.methods.base import Method, MethodOptions

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
    if isinstance(targets, list) or targets == "all-linear":
        return targets
    table = TARGET_SHORTHANDS.get(model_type)
    if table is None:
        raise ValueError(
            f"target_modules `{targets}` has no meaning for model_type `{model_type}`; "
            "list module names or use `all-linear`"
        )
    return table[targets]


class TargetedOptions(MethodOptions):
    """Options of methods that adapt chosen linear layers."""

    target_modules: Literal["all-linear", "attention", "mlp"] | list[str] = "all-linear"

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("`target_modules` must name at least one module")
        return value


class PeftMethod(Method):
    """A method whose trainable model is `peft.get_peft_model(model, self.peft_config(model, ctx))`."""

    stack_role = "layers"
    #: TRL's DPOTrainer adds a frozen `ref` copy of the fresh adapter, which equals the base
    preference_reference = "adapter"

    def peft_config(self, model, ctx: RunContext):
        """The peft config for this run (task type CAUSAL_LM)."""
        raise NotImplementedError

    def apply(self, model, ctx):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=ctx.spec.train.gradient_checkpointing
            )
        config = self.peft_config(model, ctx)
        head = getattr(model, "scalar_head", None)  # a reward model (objective `reward`): its head trains and saves
        if head and not config.is_prompt_learning:
            config.task_type, config.modules_to_save = "SEQ_CLS", sorted({*(config.modules_to_save or []), head})
        return get_peft_model(model, config)

    def inject(self, model, ctx):
        """In a stack: peft layers injected in place under the method's name (so several peft
        methods share one model), or, for prompt learning, the usual peft wrapper."""
        from peft import get_peft_model, inject_adapter_in_model

        config = self.peft_config(model, ctx)
        if config.is_prompt_learning:
            return get_peft_model(model, config)
        return inject_adapter_in_model(config, model, adapter_name=self.stack_key)
