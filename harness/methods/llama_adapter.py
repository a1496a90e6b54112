"""LLaMA-Adapter through peft (AdaptionPrompt): gated adaption prompts in the top layers (Zhang et al. 2023)."""

from __future__ import annotations

from pydantic import Field

from harness.methods.base import MethodOptions, register
from harness.methods.peft_base import PeftMethod


class LlamaAdapterOptions(MethodOptions):
    adapter_len: int = Field(10, gt=0, description="adaption prompt length")
    adapter_layers: int = Field(2, gt=0, description="how many top layers get a prompt")


class LlamaAdapter(PeftMethod):
    name = "llama_adapter"
    preference_reference = None  # TRL's copy of the adapter as its reference is unverified for adaption prompts
    description = "zero-init gated adaption prompts in the top attention layers (llama-architecture models)"
    Options = LlamaAdapterOptions
    slug_fields = (("adapter_len", "len"), ("adapter_layers", "L"))
    supports_packing = False
    stack_role = None
    stack_note = "peft's AdaptionPrompt replaces attention modules through its own wrapper only"

    def peft_config(self, model, ctx):
        from peft import AdaptionPromptConfig, TaskType

        o = self.options
        layers = model.config.num_hidden_layers
        if o.adapter_layers > layers:
            raise ValueError(f"method.adapter_layers={o.adapter_layers} exceeds the model's {layers} layers")
        return AdaptionPromptConfig(task_type=TaskType.CAUSAL_LM, adapter_len=o.adapter_len,
                                    adapter_layers=o.adapter_layers)


register(LlamaAdapter)
