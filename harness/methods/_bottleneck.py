"""Torch side of the bottleneck adapters (imported lazily by adapter.py / compacter.py): the
bottleneck and PHM modules and the forward hooks that splice them into a decoder layer."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
#: attribute under which an adapter is attached to the block it adapts (`layers.3.mlp.adapter`)
ATTR = "adapter"


class PHMLinear(nn.Module):
    """y = x @ W + b with W = Σ_i A_i ⊗ (s_i t_i): the n×n matrices A (`rule`) are shared with
    other PHM layers, the low-rank factors s_i (in/n × k) and t_i (k × out/n) are this layer's."""

    def __init__(self, in_features: int, out_features: int, rule: nn.Parameter, rank: int, out_std: float | None):
        super().__init__()
        n = rule.shape[0]
        self.in_features, self.out_features = in_features, out_features
        self.rule = rule  # the same Parameter object in every PHMLinear of the model
        self.s = nn.Parameter(torch.randn(n, in_features // n, rank))
        self.t = nn.Parameter(torch.randn(n, rank, out_features // n))
        self.bias = nn.Parameter(torch.zeros(out_features))
        # down (out_std None): std(W) = 1/√(3·in), like nn.Linear; up: std(W) = out_std (0: W = 0).
        # W is a product of few random factors (heavy-tailed for small n and rank), so t is rescaled
        # to the realised std rather than drawn at a nominal one: every adapter starts at the same scale.
        target = math.sqrt(1 / (3 * in_features)) if out_std is None else out_std
        with torch.no_grad():
            self.t.mul_(target / self.weight().std().clamp_min(1e-12))

    def weight(self) -> torch.Tensor:
        """The (in, out) matrix Σ_i kron(A_i, s_i t_i)."""
        b = self.s @ self.t  # (n, in/n, out/n)
        return torch.einsum("nij,nkl->ikjl", self.rule, b).reshape(self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.bias


def new_rule(phm_dim: int, device=None, dtype=None) -> nn.Parameter:
    """The shared A_i (phm_dim × phm_dim × phm_dim), std 1/√n so Σ_i keeps unit scale."""
    rule = torch.randn(phm_dim, phm_dim, phm_dim) / math.sqrt(phm_dim)
    return nn.Parameter(rule.to(device=device, dtype=dtype))


class Bottleneck(nn.Module):
    """up(act(down(x))); `hook` adds it to a block's output (serial) or to the block's input's
    image next to the output (parallel)."""

    def __init__(self, hidden: int, bottleneck: int, non_linearity: str, init_scale: float,
                 rule: nn.Parameter | None = None, phm_rank: int = 1):
        super().__init__()
        if rule is None:
            self.down = nn.Linear(hidden, bottleneck)
            self.up = nn.Linear(bottleneck, hidden)
            nn.init.zeros_(self.down.bias)
            if init_scale > 0:
                nn.init.normal_(self.up.weight, std=init_scale)
            else:
                nn.init.zeros_(self.up.weight)  # the adapted model starts exactly as the base model
            nn.init.zeros_(self.up.bias)
        else:
            self.down = PHMLinear(hidden, bottleneck, rule, phm_rank, out_std=None)
            self.up = PHMLinear(bottleneck, hidden, rule, phm_rank, out_std=init_scale)
        self.act = ACTIVATIONS[non_linearity]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x.to(self.up.bias.dtype)))).to(x.dtype)

    def serial_hook(self, module, args, kwargs, output):
        """h → h + f(h) on the block's output (a tensor, or a tuple whose first item is it)."""
        if isinstance(output, tuple):
            return (output[0] + self(output[0]), *output[1:])
        return output + self(output)

    def parallel_hook(self, module, args, kwargs, output):
        """mlp(x) → mlp(x) + f(x), x the block's input."""
        x = args[0] if args else next(iter(kwargs.values()))
        return output + self(x)


def attach(block: nn.Module, adapter: Bottleneck, parallel: bool, device, dtype) -> None:
    """Register `adapter` as `block.adapter` (so its weights are the model's parameters) and hook it in."""
    adapter.to(device=device, dtype=dtype)
    setattr(block, ATTR, adapter)
    # kept outside the module's attributes so it is not a submodule; `detach` removes the hook
    object.__setattr__(adapter, "hook_handle",
                       block.register_forward_hook(adapter.parallel_hook if parallel else adapter.serial_hook,
                                                   with_kwargs=True))


def detach(block: nn.Module) -> None:
    """Undo `attach`: the block computes exactly what it did before."""
    adapter = getattr(block, ATTR, None)
    if adapter is not None:
        adapter.hook_handle.remove()
        delattr(block, ATTR)
