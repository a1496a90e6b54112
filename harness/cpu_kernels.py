"""ftbench's CPU kernels (`train.kernels: cpu`), patched into a model after its method wraps it.

1. **Counter-based dropout.** torch's CPU dropout draws one float per element from its Mersenne Twister,
   then multiplies and keeps a float mask for the backward pass: at ~4 ns per element it was 17-25% of a
   LoRA step on SmolLM2-135M (docs/performance.md), where every adapted linear layer drops its input. Here
   one pass draws the mask from SplitMix64 (four 16-bit draws per 64-bit number, in fixed chunks seeded by a
   counter, so the mask does not depend on the thread count), scales the kept elements and writes the
   output; the backward pass draws the same mask again from the same seed instead of storing it. Each
   element is dropped with probability round(p · 65536) / 65536 (p = 0.05: 0.0500030…), independently —
   the same Bernoulli distribution as torch's, another random stream. Only float32/float64 CPU tensors take
   this path; anything else (CUDA, bf16) falls back to torch's dropout.
2. **LoRA's up-projection, scaling and residual add as one `addmm`.** peft computes
   `result + lora_B(h) * scaling`: a matmul, then two passes over the output. `torch.addmm(result, h,
   B^T, alpha=scaling)` is the same sum in one BLAS call (peft's plain `Linear` with one active adapter, no
   variant such as DoRA, no bias on B; anything else runs peft's own forward).

3. **RMSNorm in one pass per row**, forward and backward (transformers' Llama-family `*RMSNorm`: five
   elementwise passes forward and more backward, ~2.3 ms for a 1024 × 576 activation on the 2-core CPU;
   here ~0.5 ms), float32 CPU inputs only; the weight's gradient, when it trains, is one torch reduction.

All three change the last bits (another random stream; another summation order), so a run with them is
not bit-identical to one without: `train.kernels` is a budget key the report lists.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FastDropout", "apply_cpu_kernels", "counter_dropout", "fuse_lora", "fuse_rms_norms", "rms_norm",
           "swap_dropouts"]

#: elements per independently seeded chunk (four per 64-bit draw)
CHUNK = 4096
#: numba's fast-math flags without `nnan`/`ninf`: NaN and inf pass through as in torch (a NaN input stays NaN
#: where the dropout keeps it and where it drops it, as under torch's mask)
_FAST = {"nsz", "contract", "arcp", "reassoc", "afn"}
_KERNEL = None


def _kernel():
    """The numba kernel, compiled on first use (cached beside this module when it can be written)."""
    global _KERNEL
    if _KERNEL is None:
        import numpy as np
        from numba import njit, prange

        golden, mix1, mix2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
        stride = np.uint64(0xD1B54A32D192ED03)

        @njit(parallel=True, cache=True, fastmath=_FAST)
        def drop(x, out, seed, threshold, scale):
            n = x.size
            for c in prange((n + CHUNK - 1) // CHUNK):
                state = np.uint64(seed) + np.uint64(c + 1) * stride
                start = c * CHUNK
                end = min(start + CHUNK, n)
                for i in range(start, end, 4):
                    state += golden  # SplitMix64
                    z = state
                    z = (z ^ (z >> np.uint64(30))) * mix1
                    z = (z ^ (z >> np.uint64(27))) * mix2
                    z ^= z >> np.uint64(31)
                    for k in range(4):  # four 16-bit draws; branch-free, so the loop vectorises
                        j = i + k
                        if j < end:
                            keep = ((z >> np.uint64(16 * k)) & np.uint64(0xFFFF)) >= threshold
                            out[j] = x[j] * (scale * keep)

        _KERNEL = drop
    return _KERNEL


def _fits(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _apply(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    import numpy as np

    x = x.contiguous()
    out = torch.empty_like(x)
    _kernel()(x.detach().numpy().reshape(-1), out.numpy().reshape(-1), np.uint64(seed),
              np.uint64(round(p * 65536)), x.new_tensor(1 / (1 - p)).item())
    return out


class _CounterDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        ctx.p, ctx.seed = p, seed
        return _apply(x, p, seed)

    @staticmethod
    def backward(ctx, grad):
        return _apply(grad, ctx.p, ctx.seed), None, None  # the same mask, drawn again from the same seed


def counter_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout of `x` with probability `p` (scaled by 1/(1 − p)), drawn as described above; torch's own
    dropout where this path does not fit. The seed comes from torch's generator: `torch.manual_seed`
    makes it reproducible."""
    if not training or p <= 0:
        return x
    if p >= 1 or not _fits(x):
        return nn.functional.dropout(x, p, training)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return _CounterDropout.apply(x, p, seed)


class FastDropout(nn.Dropout):
    """`nn.Dropout` whose training-time mask is `counter_dropout`'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return counter_dropout(x, self.p, self.training)


def swap_dropouts(model: nn.Module) -> int:
    """Make every `nn.Dropout` module of `model` (LoRA's `lora_dropout`, adapters' dropout …) a `FastDropout`
    with the same p, in place; returns how many there were."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout and module.p > 0:
            module.__class__ = FastDropout
            swapped += 1
    if swapped:
        _kernel()
    return swapped


def _fused_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's `lora.Linear.forward` with the up-projection, scaling and add in one addmm, where that is the
    same computation; peft's own forward everywhere else."""
    active = self.active_adapters
    name = active[0] if len(active) == 1 else None
    if (args or kwargs or self.disable_adapters or self.merged or name not in self.lora_A
            or name in self.lora_variant or self.lora_B[name].bias is not None
            or torch.is_autocast_enabled(x.device.type)
            or not x.dtype == self.lora_A[name].weight.dtype == self.lora_B[name].weight.dtype
            == self.get_base_layer().weight.dtype):  # one dtype throughout: the base's output is in it too
        return type(self).forward(self, x, *args, **kwargs)
    lora_A, lora_B = self.lora_A[name], self.lora_B[name]
    result = self.base_layer(x)
    h = lora_A(self.lora_dropout[name](x))
    shape = result.shape
    return torch.addmm(result.reshape(-1, shape[-1]), h.reshape(-1, h.shape[-1]), lora_B.weight.t(),
                       alpha=self.scaling[name]).view(shape)


def fuse_lora(model: nn.Module) -> int:
    """Give every peft `lora.Linear` of `model` (not its quantized or variant subclasses) the fused forward,
    per instance (other models in the process keep peft's); returns how many."""
    import types

    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = types.MethodType(_fused_lora_forward, module)
            fused += 1
    return fused


_NORM_KERNELS = None


def _norm_kernels():
    """(forward, backward) RMSNorm kernels over rows, compiled on first use."""
    global _NORM_KERNELS
    if _NORM_KERNELS is None:
        import numpy as np
        from numba import njit, prange

        @njit(parallel=True, cache=True, fastmath=_FAST)
        def forward(x, w, eps, y, r):
            rows, n = x.shape
            for i in prange(rows):
                acc = 0.0
                for j in range(n):
                    acc += x[i, j] * x[i, j]
                ri = 1.0 / np.sqrt(acc / n + eps)
                r[i] = ri
                for j in range(n):
                    y[i, j] = w[j] * (x[i, j] * ri)

        @njit(parallel=True, cache=True, fastmath=_FAST)
        def backward(x, w, r, g, dx):  # d/dx of w·x·r(x), r = (mean x² + eps)^-½
            rows, n = x.shape
            for i in prange(rows):
                dot = 0.0
                for j in range(n):
                    dot += g[i, j] * w[j] * x[i, j]
                ri = r[i]
                c = ri * ri * ri * dot / n
                for j in range(n):
                    dx[i, j] = ri * g[i, j] * w[j] - c * x[i, j]

        _NORM_KERNELS = forward, backward
    return _NORM_KERNELS


class _RmsNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y, r = torch.empty_like(rows), rows.new_empty(rows.shape[0])
        _norm_kernels()[0](rows.detach().numpy(), weight.detach().numpy(), eps, y.numpy(), r.numpy())
        ctx.save_for_backward(rows, weight, r)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        rows, weight, r = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()
        dx = torch.empty_like(g)
        _norm_kernels()[1](rows.numpy(), weight.detach().numpy(), r.numpy(), g.numpy(), dx.numpy())
        dw = (g * rows * r[:, None]).sum(0) if ctx.needs_input_grad[1] else None
        return dx.view(grad.shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · x / √(mean(x²) + eps) over the last dimension, as transformers' Llama RMSNorm computes it in
    float32, in one pass per row; None where this path does not fit (not float32 on the CPU)."""
    if not (x.device.type == weight.device.type == "cpu" and x.dtype == weight.dtype == torch.float32):
        return None
    return _RmsNorm.apply(x, weight, float(eps))


def _fused_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    out = rms_norm(hidden_states, self.weight, self.variance_epsilon)
    return type(self).forward(self, hidden_states) if out is None else out


def fuse_rms_norms(model: nn.Module) -> int:
    """Give every Llama-style RMSNorm of `model` (a `*RMSNorm` with a 1-D `weight` and `variance_epsilon`,
    computing weight · x · rsqrt(mean(x²) + eps)) the one-pass forward, per instance; returns how many."""
    import types

    fused = 0
    for module in model.modules():
        cls = type(module)
        if (cls.__name__ in _LLAMA_NORMS and getattr(module, "weight", None) is not None
                and module.weight.dim() == 1 and hasattr(module, "variance_epsilon")):
            module.forward = types.MethodType(_fused_norm_forward, module)
            fused += 1
    if fused:
        _norm_kernels()
    return fused


#: RMSNorm classes whose forward is exactly weight · (x · rsqrt(mean(x²) + eps)) in float32 (Gemma's adds 1 to
#: its weight, so it is not here)
_LLAMA_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def apply_cpu_kernels(model: nn.Module) -> dict:
    """The three kernels on `model`, in place; the counts, as run metrics. numba's parallel kernels take as
    many threads as torch has (fewer when a sweep runs several workers), not every core."""
    from numba import config, set_num_threads

    set_num_threads(max(1, min(torch.get_num_threads(), config.NUMBA_NUM_THREADS)))
    return {"kernels_dropout_modules": swap_dropouts(model), "kernels_lora_modules": fuse_lora(model),
            "kernels_norm_modules": fuse_rms_norms(model)}
