"""The method interface and its registry: each method is one small module that registers itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.context import RunContext
from harness.registry import Registry
from harness.schema import Section

if TYPE_CHECKING:
    import torch


class MethodOptions(Section):
    """Options of a method; each method subclasses this with its own fields."""


#: stack roles in the order a stack applies them: "weights" unfreezes existing weights (matched by
#: their original names), "layers" injects peft layers in place, "modules" adds new modules (which an
#: earlier `all-linear` must not target), "wrapper" wraps the whole model (peft prompt learning; at most one)
STACK_ROLES = ("weights", "layers", "modules", "wrapper")


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
    #: the training loss is plain cross-entropy at the input's own positions, so logits are computed
    #: at label positions only (`train.LabelLogitsTrainer`); False where virtual tokens shift the
    #: positions or the model adds a term of its own to the labels' loss (AdaLoRA's regulariser)
    logits_at_labels: ClassVar[bool] = True
    #: False for `none`: the run only evaluates the model as loaded (a reference row)
    trains: ClassVar[bool] = True
    #: (option, slug prefix) pairs that name a run, e.g. (("r", "r"), ("alpha", "a"))
    slug_fields: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: how the method combines with others in `method: [a, b]`, one of STACK_ROLES (applied in that
    #: order) or None (cannot be stacked; `stack_note` says why)
    stack_role: ClassVar[str | None] = None
    stack_note: ClassVar[str] = "it has not been made stackable"
    #: how a preference objective (dpo, kto) gets its frozen reference model: "copy" (TRL keeps a
    #: frozen copy of the starting model), "adapter" (the same model with its fresh adapter off: no
    #: second copy), or None (TRL cannot wrap the method)
    preference_reference: ClassVar[str | None] = None

    def __init__(self, options: MethodOptions):
        self.options = options

    def apply(self, model: "torch.nn.Module", ctx: RunContext) -> "torch.nn.Module":
        """Return the model to train (trainable parameters marked)."""
        raise NotImplementedError

    @property
    def stack_key(self) -> str:
        """What may appear only once in a stack (also the peft adapter name there)."""
        return self.name

    def inject(self, model: "torch.nn.Module", ctx: RunContext) -> "torch.nn.Module":
        """Apply as one component of a stack (see `stack_role`); the stack re-marks what trains."""
        return self.apply(model, ctx)

    def optimizer(self, model: "torch.nn.Module", train_cfg: Any) -> "torch.optim.Optimizer | None":
        """A custom optimizer, or None to let the Trainer build its default."""
        return None

    def callbacks(self, ctx: RunContext) -> list:
        """Extra transformers TrainerCallbacks this method needs."""
        return []

    def save(self, model: "torch.nn.Module", out_dir: Path) -> None:
        """Save the trained weights (safetensors) into `out_dir`."""
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, base_model: "torch.nn.Module", artifact_dir: Path, ctx: RunContext) -> "torch.nn.Module":
        """Rebuild the trained model from an untouched base model and what `save` wrote.

        The default reads a peft adapter folder.
        """
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(artifact_dir))

    def unload(self, model: "torch.nn.Module") -> "torch.nn.Module | None":
        """Undo `load` on the shared base model (for scoring many runs on one base load); None when
        this method cannot, and the caller reloads the base."""
        return None

    def slug(self) -> str:
        parts = [self.name]
        for option, prefix in self.slug_fields:
            value = getattr(self.options, option)
            parts.append(f"{prefix}{value:g}" if isinstance(value, (int, float)) else f"{prefix}{value}")
        return "-".join(parts)


class MethodCfg(BaseModel):
    """A method name plus that method's validated options."""

    model_config = ConfigDict(frozen=True)
    name: str
    options: MethodOptions

    @property
    def cls(self) -> type[Method]:
        return METHODS.get(self.name)

    def build(self) -> Method:
        return self.cls(self.options)

    def as_dict(self) -> dict:
        return {"name": self.name, **self.options.model_dump()}


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Register a Method subclass under its `name` (call at the end of its module)."""
    return METHODS.register(cls.name, cls)


# --- methods that save the parameters they train, by name (freeze, stack) -------------------------

TRAINED_WEIGHTS = "trained.safetensors"
TRAINED_CONFIG = "trained_config.json"


def save_trained(model: "torch.nn.Module", out_dir: Path, config: dict) -> None:
    """Write every trainable parameter under its name in `model` (safetensors) plus `config` as JSON.

    Only what trains is written, so the artifact's bytes are the method's honest cost.
    """
    import json

    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, out_dir / TRAINED_WEIGHTS, metadata={"format": "pt"})
    (out_dir / TRAINED_CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")


def load_trained(model: "torch.nn.Module", artifact_dir: Path, config: dict) -> "torch.nn.Module":
    """Copy what `save_trained` wrote into `model`, which the same method was just applied to.

    Raises:
        ValueError: the folder was written by another method configuration, or its tensors are
            not exactly the parameters this model trains.
    """
    import json

    artifact_dir = Path(artifact_dir)
    saved = json.loads((artifact_dir / TRAINED_CONFIG).read_text())
    if saved != json.loads(json.dumps(config, default=str)):
        raise ValueError(f"`{artifact_dir}` was saved by {saved}, not by {config}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    copy_saved(params, artifact_dir / TRAINED_WEIGHTS)
    return model


def copy_saved(params: dict, weights_file: Path) -> None:
    """Copy the tensors of a safetensors file into the parameters of the same names.

    Raises:
        ValueError: the file's names are not exactly the parameters'.
    """
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(weights_file))
    if set(weights) != set(params):
        raise ValueError(f"`{weights_file}` does not match the parameters this method trains: missing "
                         f"{sorted(set(params) - set(weights))[:5]}, unexpected {sorted(set(weights) - set(params))[:5]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
