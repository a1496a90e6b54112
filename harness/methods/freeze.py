"""Partial fine-tuning: train the top k decoder layers and/or chosen parameters, freeze the rest."""

from __future__ import annotations

import fnmatch

from pydantic import Field, model_validator

from harness.methods.base import Method, MethodOptions, load_trained, register, save_trained


class FreezeOptions(MethodOptions):
    layers: int = Field(0, ge=0, description="train the top k decoder layers")
    modules: list[str] = Field([], description="also train parameters whose names match these glob patterns, "
                                               "e.g. '*embed_tokens*', 'model.norm.*', '*.mlp.*'")

    @model_validator(mode="after")
    def _something(self):
        if self.layers == 0 and not self.modules:
            raise ValueError("set `layers` (top k decoder layers) and/or `modules` (name patterns): "
                             "otherwise nothing trains")
        return self


class Freeze(Method):
    name = "freeze"
    description = "the top k decoder layers and/or parameters matching name patterns; the rest frozen"
    Options = FreezeOptions
    forbids_4bit = True
    stack_role = "weights"
    preference_reference = "copy"

    def apply(self, model, ctx):
        from harness.methods.adapter import decoder_layers

        o = self.options
        chosen = set()
        if o.layers:
            layers = decoder_layers(model)
            if o.layers > len(layers):
                raise ValueError(f"`method.layers`={o.layers} exceeds the model's {len(layers)} decoder layers")
            chosen |= {id(p) for layer in layers[-o.layers:] for p in layer.parameters()}
        names = [n for n, _ in model.named_parameters()]
        for pattern in o.modules:
            matched = {id(p) for n, p in model.named_parameters() if fnmatch.fnmatchcase(n, pattern)}
            if not matched:
                raise ValueError(f"`method.modules` pattern `{pattern}` matches no parameter; names look like "
                                 f"{', '.join(names[:3])}, …, {names[-1]}")
            chosen |= matched
        for param in model.parameters():
            param.requires_grad_(id(param) in chosen)
        return model

    def save(self, model, out_dir):
        save_trained(model, out_dir, {"method": self.name, "options": self.options.model_dump()})

    def load(self, base_model, artifact_dir, ctx):
        model = type(self)(self.options).apply(base_model, ctx)
        # the trained values overwrite base weights: keep the originals so `unload` can restore them
        self._originals = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return load_trained(model, artifact_dir, {"method": self.name, "options": self.options.model_dump()})

    def unload(self, model):
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in getattr(self, "_originals", {}).items():
                params[name].copy_(value)
        self._originals = {}
        return model

    def slug(self) -> str:
        o = self.options
        return "freeze" + (f"-top{o.layers}" if o.layers else "") + (f"-m{len(o.modules)}" if o.modules else "")


register(Freeze)
