"""`peft`: any peft config class by name, e.g. `{name: peft, config: LilyConfig, r: 16}`, so every
peft method (Lily, HiRA, SHiRA, MiSS, ...) runs without new code. Options are checked against the
config class's fields."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import ConfigDict, model_validator

from harness.errors import allowed, did_you_mean
from harness.methods.base import MethodOptions, register
from harness.methods.peft_base import PeftMethod, resolve_targets

# set by ftbench or meaningless in a config file
_INTERNAL = {"peft_type", "task_type", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "peft_version"}


def peft_config_classes() -> dict[str, type]:
    """Every PeftConfig subclass the installed peft exports, by class name."""
    import peft

    base = {"PeftConfig", "PromptLearningConfig", "PeftConfigMixin"}
    return {name: obj for name in dir(peft) if name.endswith("Config") and name not in base
            for obj in [getattr(peft, name)] if isinstance(obj, type) and issubclass(obj, peft.PeftConfig)}


def config_fields(cls: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.name not in _INTERNAL)


class GenericPeftOptions(MethodOptions):
    model_config = ConfigDict(extra="allow", frozen=True)
    config: str

    @model_validator(mode="after")
    def _check_against_peft(self):
        classes = peft_config_classes()
        if self.config not in classes:
            raise ValueError(f"`config`: unknown peft config class `{self.config}`.{did_you_mean(self.config, classes)} "
                             f"{allowed(classes)}")
        fields = config_fields(classes[self.config])
        for key in self.peft_kwargs():
            if key not in fields:
                raise ValueError(f"`{key}` is not a field of peft's {self.config}.{did_you_mean(key, fields)} {allowed(fields)}")
        return self

    def peft_kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class GenericPeft(PeftMethod):
    name = "peft"
    preference_reference = None  # any peft config: whether TRL can copy it as a reference is unknown
    description = "any peft config class by name; its fields are the options"
    Options = GenericPeftOptions

    @property
    def stack_role(self):  # depends on the config class
        import peft
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

        cls = peft_config_classes()[self.options.config]
        if issubclass(cls, peft.PromptLearningConfig):
            return "wrapper"
        peft_type = next((t for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items() if c is cls), None)
        tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
        return "layers" if tuner is not None and not tuner.uses_shared_state else None

    @property
    def stack_key(self):
        return f"peft_{self.options.config.removesuffix('Config').lower()}"

    @property
    def stack_note(self):
        return f"peft cannot inject {self.options.config} in place next to other methods"

    def peft_config(self, model, ctx):
        from peft import TaskType

        cls = peft_config_classes()[self.options.config]
        kwargs = self.options.peft_kwargs()
        if isinstance(kwargs.get("target_modules"), str):
            kwargs["target_modules"] = resolve_targets(kwargs["target_modules"], model.config.model_type)
        return cls(task_type=TaskType.CAUSAL_LM, **kwargs)

    def slug(self) -> str:
        kind = self.options.config.removesuffix("Config").lower()
        r = self.options.peft_kwargs().get("r")
        return f"peft-{kind}" + (f"-r{r}" if r is not None else "")


register(GenericPeft)
