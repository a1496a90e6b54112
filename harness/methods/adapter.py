"""Bottleneck adapters (Houlsby, Pfeiffer, parallel) on the decoder layers, with AdapterDrop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from harness.methods.base import Method, MethodOptions, copy_saved, register

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterOptions(MethodOptions):
    placement: Literal["houlsby", "pfeiffer", "parallel"] = Field(
        "pfeiffer", description="houlsby: after attention and MLP; pfeiffer: after the MLP; parallel: beside the MLP")
    reduction_factor: int = Field(16, gt=0, description="bottleneck = hidden_size // reduction_factor; "
                                                         "higher: fewer parameters, less capacity")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    adapterdrop: int = Field(0, ge=0, description="no adapters in the lowest k decoder layers (AdapterDrop): "
                                                  "faster training and inference")
    init_scale: float = Field(1e-3, ge=0, description="std of the up projection at init; 0: the adapted model "
                                                      "starts exactly equal to the base model")


def decoder_layers(model) -> list:
    """The decoder layers of a model laid out as `model.model.layers[i].{self_attn, mlp}` (Llama,
    Mistral, Qwen2, Gemma, ...).

    Raises:
        ValueError: the model has no such layers.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    layout_ok = layers is not None and len(layers) > 0 and all(
        hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers)
    if not layout_ok:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"bottleneck adapters need decoder layers at `model.model.layers[i]` with `self_attn` and `mlp` "
            f"submodules (Llama-architecture models), but model_type `{model_type}` has none"
        )
    return list(layers)


def hidden_size(model) -> int:
    config = model.config
    return (config.get_text_config() if hasattr(config, "get_text_config") else config).hidden_size


def plan(options: AdapterOptions, hidden: int, n_layers: int) -> tuple[int, list[int]]:
    """(bottleneck size, indices of the layers that get adapters) for a model's shape.

    Raises:
        ValueError: the reduction factor leaves no bottleneck, or AdapterDrop drops every layer.
    """
    bottleneck = hidden // options.reduction_factor
    if bottleneck < 1:
        raise ValueError(
            f"`method.reduction_factor` must be at most hidden_size={hidden} (bottleneck = hidden_size // "
            f"reduction_factor), but got reduction_factor={options.reduction_factor}"
        )
    if options.adapterdrop >= n_layers:
        raise ValueError(
            f"`method.adapterdrop` must be less than the number of decoder layers ({n_layers}), so that at least "
            f"one layer keeps its adapter, but got adapterdrop={options.adapterdrop}"
        )
    return bottleneck, list(range(options.adapterdrop, n_layers))


def adapter_parameters(model) -> dict:
    """name → parameter of every adapter weight (a weight shared by several adapters appears once)."""
    from harness.methods._bottleneck import Bottleneck

    out, seen = {}, set()
    for module_name, module in model.named_modules():
        if isinstance(module, Bottleneck):
            for name, param in module.named_parameters(prefix=module_name):
                if id(param) not in seen:
                    seen.add(id(param))
                    out[name] = param
    return out


class Adapter(Method):
    name = "adapter"
    description = "bottleneck MLP (down, non-linearity, up) added to each decoder layer; base frozen"
    Options = AdapterOptions
    slug_fields = (("placement", ""), ("reduction_factor", "rf"))
    stack_role = "modules"

    def check_shape(self, hidden: int, bottleneck: int) -> None:
        """Extra shape checks of a variant (compacter); raise ValueError naming the option."""

    def shared_parameters(self, device, dtype):
        """Weights shared by every adapter of the model (compacter's A_i), or None."""
        return None

    def new_bottleneck(self, hidden: int, bottleneck: int, shared):
        from harness.methods._bottleneck import Bottleneck

        o = self.options
        return Bottleneck(hidden, bottleneck, o.non_linearity, o.init_scale)

    def apply(self, model, ctx):
        from harness.methods import _bottleneck

        layers = decoder_layers(model)
        if any(hasattr(layer.mlp, _bottleneck.ATTR) or hasattr(layer.self_attn, _bottleneck.ATTR) for layer in layers):
            raise ValueError("this model already has bottleneck adapters; apply them to an untouched base model")
        hidden = hidden_size(model)
        bottleneck, indices = plan(self.options, hidden, len(layers))
        self.check_shape(hidden, bottleneck)
        for param in model.parameters():
            param.requires_grad_(False)
        dtype = model.dtype
        shared = self.shared_parameters(next(layers[indices[0]].parameters()).device, dtype)
        parallel = self.options.placement == "parallel"
        for i in indices:
            layer = layers[i]
            device = next(layer.parameters()).device
            blocks = [layer.self_attn, layer.mlp] if self.options.placement == "houlsby" else [layer.mlp]
            for block in blocks:
                _bottleneck.attach(block, self.new_bottleneck(hidden, bottleneck, shared), parallel, device, dtype)
        return model

    def save(self, model, out_dir: Path) -> None:
        """Write only the adapter weights (safetensors) and `adapter_config.json`."""
        from safetensors.torch import save_file

        from harness.methods._bottleneck import ATTR

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        params = adapter_parameters(model)
        save_file({n: p.detach().contiguous().cpu() for n, p in params.items()}, out_dir / WEIGHTS_FILE,
                  metadata={"format": "pt"})
        hidden = hidden_size(model)
        config = {
            "method": self.name,
            "options": self.options.model_dump(),
            "hidden_size": hidden,
            "bottleneck_size": hidden // self.options.reduction_factor,
            "layers": [i for i, layer in enumerate(decoder_layers(model)) if hasattr(layer.mlp, ATTR)],
            "model_type": getattr(model.config, "model_type", None),
        }
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def unload(self, model):
        from harness.methods import _bottleneck

        for layer in decoder_layers(model):
            _bottleneck.detach(layer.self_attn)
            _bottleneck.detach(layer.mlp)
        return model

    def load(self, base_model, artifact_dir: Path, ctx):
        """Re-apply the saved options to `base_model` and copy the saved adapter weights in.

        Raises:
            ValueError: the folder was written by another method, for another model shape, or its
                weights do not match the adapters the options build.
        """
        artifact_dir = Path(artifact_dir)
        config = json.loads((artifact_dir / CONFIG_FILE).read_text())
        if config.get("method") != self.name:
            raise ValueError(f"`{artifact_dir}` holds a `{config.get('method')}` artifact, not `{self.name}`")
        if config["hidden_size"] != hidden_size(base_model):
            raise ValueError(f"`{artifact_dir}` was saved for hidden_size={config['hidden_size']}, "
                             f"but the base model has hidden_size={hidden_size(base_model)}")
        model = type(self)(self.Options.model_validate(config["options"])).apply(base_model, ctx)
        copy_saved(adapter_parameters(model), artifact_dir / WEIGHTS_FILE)
        return model


register(Adapter)
