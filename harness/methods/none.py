"""`none`: no fine-tuning. The run evaluates the model as loaded: the reference row that
forgetting and every gain are measured against (added automatically when `eval.tasks` is set)."""

from __future__ import annotations

from harness.methods.base import Method, register


class NoFineTuning(Method):
    name = "none"
    description = "no training: the base model as loaded, evaluated like every run (the reference row)"
    trains = False
    stack_note = "it trains nothing"

    def apply(self, model, ctx):
        for param in model.parameters():
            param.requires_grad_(False)
        return model

    def save(self, model, out_dir):
        """Nothing was trained, so nothing is saved."""

    def load(self, base_model, artifact_dir, ctx):
        return base_model

    def unload(self, model):
        return model


register(NoFineTuning)
