"""Full fine-tuning: every weight of the model is trained."""

from __future__ import annotations

from harness.methods.base import Method, register


class Full(Method):
    name = "full"
    description = "all weights trained; the checkpoint is the whole model"
    forbids_4bit = True
    saves_full_model = True
    preference_reference = "copy"
    stack_note = "it already trains every weight; for SFT of chosen parts next to an adapter use `freeze`"

    def apply(self, model, ctx):
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def load(self, base_model, artifact_dir, ctx):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(artifact_dir, dtype=base_model.dtype).to(base_model.device)


register(Full)
