"""Several methods on one model: `method: [ia3, prompt_tuning]`, `[lora, prefix_tuning]`,
`[freeze, lora]` (SFT of chosen parts next to an adapter). Components are applied by role (see
STACK_ROLES): unfrozen weights, then peft layers, then added modules, then a prompt wrapper;
every component trains what it trains alone, and the artifact holds exactly those parameters."""

from __future__ import annotations

import warnings

from pydantic import field_serializer

from harness.methods.base import STACK_ROLES, Method, MethodCfg, MethodOptions, load_trained, register, save_trained


class StackOptions(MethodOptions):
    methods: tuple[MethodCfg, ...]

    @field_serializer("methods")
    def _as_dicts(self, methods):
        return [m.as_dict() for m in methods]


def stack_problems(components: list[MethodCfg]) -> list[tuple[str, str]]:
    """(index or "", reason) for every way these components cannot share one model."""
    problems: list[tuple[str, str]] = []
    if len(components) < 2:
        problems.append(("", "a stack needs at least two methods"))
    built = [c.build() for c in components]
    for i, (cfg, method) in enumerate(zip(components, built)):
        if method.stack_role is None:
            problems.append((f"[{i}]", f"`{cfg.name}` cannot be combined with other methods: {method.stack_note}"))
    keys = [m.stack_key for m in built]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        problems.append(("", f"`{key}` appears twice; each method may appear once in a stack"))
    wrappers = [c.name for c, m in zip(components, built) if m.stack_role == "wrapper"]
    if len(wrappers) > 1:
        problems.append(("", f"at most one prompt-learning method per stack (it wraps the model), got {wrappers}"))
    optimizers = [c.name for c in components if type(c.build()).optimizer is not Method.optimizer]
    if len(optimizers) > 1:
        problems.append(("", f"at most one method with its own optimizer per stack, got {optimizers}"))
    need = [c.name for c, m in zip(components, built) if m.requires_4bit]
    refuse = [c.name for c, m in zip(components, built) if m.forbids_4bit]
    if need and refuse:
        problems.append(("", f"{need} need a 4-bit base but {refuse} train base weights, which cannot be 4-bit"))
    return problems


class Stack(Method):
    name = "stack"
    description = "several compatible methods on one model, e.g. [ia3, prompt_tuning]; shorthand `method: [a, b]`"
    Options = StackOptions
    stack_note = "stacks do not nest; list every method in one stack"

    def __init__(self, options: StackOptions):
        super().__init__(options)
        built = [m.build() for m in options.methods]
        self.components = sorted(built, key=lambda m: STACK_ROLES.index(m.stack_role))
        self.requires_4bit = any(m.requires_4bit for m in built)
        self.forbids_4bit = any(m.forbids_4bit for m in built)
        self.supports_packing = all(m.supports_packing for m in built)
        self.logits_at_labels = all(m.logits_at_labels for m in built)

    def apply(self, model, ctx):
        from peft import prepare_model_for_kbit_training

        quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
        if quantized:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=ctx.spec.train.gradient_checkpointing)
        for param in model.parameters():
            param.requires_grad_(False)
        trained: set[int] = set()
        for method in self.components:
            with warnings.catch_warnings():
                # peft notes that the model already carries another method's adapters: that is the point
                warnings.filterwarnings("ignore", message=".*(peft_config|with PEFT for a second time).*")
                model = method.inject(model, ctx)
            # peft's injection freezes everything but its own adapter: collect each component's share
            trained |= {id(p) for p in model.parameters() if p.requires_grad}
        for param in model.parameters():
            param.requires_grad_(id(param) in trained)
        if quantized and all(m.stack_role != "wrapper" for m in self.components):
            # adapters sit on the 4-bit model without a peft wrapper; this is the flag transformers
            # sets itself when adapters are attached to a quantized model, and the Trainer checks it
            model._hf_peft_config_loaded = True
        return model

    def optimizer(self, model, train_cfg):
        for method in self.components:
            opt = method.optimizer(model, train_cfg)
            if opt is not None:
                return opt
        return None

    def callbacks(self, ctx):
        return [cb for method in self.components for cb in method.callbacks(ctx)]

    def _identity(self) -> dict:
        return {"method": self.name, "options": self.options.model_dump()}

    def save(self, model, out_dir):
        save_trained(model, out_dir, self._identity())

    def load(self, base_model, artifact_dir, ctx):
        return load_trained(type(self)(self.options).apply(base_model, ctx), artifact_dir, self._identity())

    def slug(self) -> str:
        return "+".join(m.slug() for m in self.components)


register(Stack)
