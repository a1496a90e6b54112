"""Compacter: bottleneck adapters whose projections are sums of Kronecker products (PHM layers)."""

from __future__ import annotations

from pydantic import Field

from harness.methods.adapter import Adapter, AdapterOptions
from harness.methods.base import register


class CompacterOptions(AdapterOptions):
    phm_dim: int = Field(4, gt=0, description="n: number of Kronecker terms and size of the shared A_i (n×n); "
                                              "must divide hidden_size and the bottleneck size")
    phm_rank: int = Field(1, gt=0, description="rank of each layer's B_i = s_i t_i; higher: more parameters")


class Compacter(Adapter):
    """A bottleneck adapter whose down and up projections are W = Σ_i A_i ⊗ B_i: the A_i are shared
    by every adapter of the model, each B_i is low-rank and belongs to one projection
    (Mahabadi et al. 2021)."""

    name = "compacter"
    description = "bottleneck adapter with PHM projections Σ A_i ⊗ B_i (A_i shared, B_i low-rank); base frozen"
    Options = CompacterOptions
    slug_fields = (("placement", ""), ("reduction_factor", "rf"), ("phm_dim", "phm"))

    def check_shape(self, hidden: int, bottleneck: int) -> None:
        """Raises: ValueError if `phm_dim` does not divide hidden_size and the bottleneck size."""
        n = self.options.phm_dim
        if hidden % n or bottleneck % n:
            raise ValueError(
                f"`method.phm_dim` must divide hidden_size={hidden} and the bottleneck size={bottleneck} "
                f"(hidden_size // reduction_factor), but got phm_dim={n}"
            )

    def shared_parameters(self, device, dtype):
        from harness.methods._bottleneck import new_rule

        return new_rule(self.options.phm_dim, device=device, dtype=dtype)

    def new_bottleneck(self, hidden: int, bottleneck: int, shared):
        from harness.methods._bottleneck import Bottleneck

        o = self.options
        return Bottleneck(hidden, bottleneck, o.non_linearity, o.init_scale, rule=shared, phm_rank=o.phm_rank)


register(Compacter)
