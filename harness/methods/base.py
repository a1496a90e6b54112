"""The method interface and its registry: each method is one small module that registers itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from harness.registry import Registry
from harness.schema import Section

if TYPE_CHECKING:
    import torch


class MethodOptions(Section):
    """Options of a method; each method subclasses this with its own fields."""


class Method:
    """How a base model becomes a trainable model, and how its weights are saved.

    Subclasses set `name`, `Options`, `description`, and override `apply`.
    """

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    description: ClassVar[str] = ""
    #: the base model must be loaded in 4-bit (QLoRA-style methods)
    requires_4bit: ClassVar[bool] = False
    #: the method trains 4-bit weights directly, which is impossible
    forbids_4bit: ClassVar[bool] = False
    #: save() writes the whole model, not a small adapter
    saves_full_model: ClassVar[bool] = False
    #: the trained update can be merged into the base weights (no extra inference latency)
    merges: ClassVar[bool] = False
    #: works with padding-free packed batches (prompt-prepending methods do not)
    supports_packing: ClassVar[bool] = True
    #: (option, slug prefix) pairs that name a run, e.g. (("r", "r"), ("alpha", "a"))
    slug_fields: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, options: MethodOptions):
        self.options = options

    def apply(self, model: "torch.nn.Module", ctx: Any) -> "torch.nn.Module":
        """Return the model to train (trainable parameters marked)."""
        raise NotImplementedError

    def optimizer(self, model: "torch.nn.Module", train_cfg: Any) -> "torch.optim.Optimizer | None":
        """A custom optimizer, or None to let the Trainer build its default."""
        return None

    def callbacks(self, ctx: Any) -> list:
        """Extra transformers TrainerCallbacks this method needs."""
        return []

    def save(self, model: "torch.nn.Module", out_dir: Path) -> None:
        """Save the trained weights (safetensors) into `out_dir`."""
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, base_model: "torch.nn.Module", artifact_dir: Path, ctx: Any) -> "torch.nn.Module":
        """Rebuild the trained model from an untouched base model and what `save` wrote.

        The default reads a peft adapter folder.
        """
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(artifact_dir))

    def slug(self) -> str:
        parts = [self.name]
        for option, prefix in self.slug_fields:
            value = getattr(self.options, option)
            parts.append(f"{prefix}{value:g}" if isinstance(value, (int, float)) else f"{prefix}{value}")
        return "-".join(parts)


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Register a Method subclass under its `name` (call at the end of its module)."""
    return METHODS.register(cls.name, cls)
