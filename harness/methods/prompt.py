"""The prompt family through peft: prompt tuning, prefix tuning (with or without the
reparameterization MLP) and P-tuning. Virtual tokens are prepended per sequence, so these
methods train on padded batches rather than packed ones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harness.methods.base import MethodOptions, register
from harness.methods.peft_base import PeftMethod


class PromptOptions(MethodOptions):
    num_virtual_tokens: int = Field(20, gt=0)


class PromptTuningOptions(PromptOptions):
    init: Literal["text", "random"] = "text"
    init_text: str = "Answer the question helpfully and concisely."

    @model_validator(mode="after")
    def _text(self):
        if self.init == "text" and not self.init_text.strip():
            raise ValueError("`init_text` must not be empty when `init` is `text`")
        return self


class PromptTuning(PeftMethod):
    name = "prompt_tuning"
    preference_reference = None  # virtual tokens lengthen the logits TRL aligns with its completion mask
    description = "trained soft-prompt embeddings prepended to the input (Lester et al. 2021)"
    Options = PromptTuningOptions
    slug_fields = (("num_virtual_tokens", "v"), ("init", ""))
    supports_packing = False
    logits_at_labels = False
    stack_role = "wrapper"

    def peft_config(self, model, ctx):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        from harness.models import resolve

        o = self.options
        kwargs = {}
        if o.init == "text":
            kwargs = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=o.init_text,
                          tokenizer_name_or_path=resolve(ctx.spec.model.name))
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=o.num_virtual_tokens, **kwargs)


class PrefixTuningOptions(PromptOptions):
    projection: bool = Field(True, description="reparameterize the prefix through an MLP (Li & Liang 2021)")
    encoder_hidden_size: int = Field(512, gt=0, description="hidden size of that MLP")


class PrefixTuning(PeftMethod):
    name = "prefix_tuning"
    preference_reference = None  # virtual tokens lengthen the logits TRL aligns with its completion mask
    description = "trained key/value prefixes in every attention layer (Li & Liang 2021; P-Tuning v2)"
    Options = PrefixTuningOptions
    slug_fields = (("num_virtual_tokens", "v"),)
    supports_packing = False
    logits_at_labels = False
    stack_role = "wrapper"

    def peft_config(self, model, ctx):
        from peft import PrefixTuningConfig, TaskType

        o = self.options
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=o.num_virtual_tokens,
                                  prefix_projection=o.projection, encoder_hidden_size=o.encoder_hidden_size)

    def slug(self) -> str:
        return super().slug() + ("-proj" if self.options.projection else "")


class PTuningOptions(PromptOptions):
    encoder: Literal["mlp", "lstm"] = "mlp"
    encoder_hidden_size: int = Field(128, gt=0)


class PTuning(PeftMethod):
    name = "p_tuning"
    preference_reference = None  # virtual tokens lengthen the logits TRL aligns with its completion mask
    description = "virtual tokens produced by a trained prompt encoder (Liu et al. 2021, GPT Understands Too)"
    Options = PTuningOptions
    slug_fields = (("num_virtual_tokens", "v"), ("encoder", ""))
    supports_packing = False
    logits_at_labels = False
    stack_role = "wrapper"

    def peft_config(self, model, ctx):
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

        o = self.options
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=o.num_virtual_tokens,
            encoder_reparameterization_type=PromptEncoderReparameterizationType(o.encoder.upper()),
            encoder_hidden_size=o.encoder_hidden_size,
        )


for _cls in (PromptTuning, PrefixTuning, PTuning):
    register(_cls)
