"""Peak-memory estimate of a run before it starts: weights, gradients, optimizer state, activations, overhead.

`estimate(spec, model, device_kind)` reads the model after the method is applied — a real one (the
recipe: weights counted exactly from the tensors) or the weightless copy preflight builds on the
meta device (weights from each parameter's shape, the load dtype and 4-bit packing). Every term is
in MiB and follows the measurement's semantics (`harness.metrics.PEAK_MEMORY`): on CPU the process's
resident set, so the runtime itself (Python, torch, transformers) is a term; on CUDA
`max_memory_allocated`, which leaves the CUDA context out.
"""

from __future__ import annotations

import functools

import re
from dataclasses import asdict, dataclass

__all__ = ["BatchTokens", "MemoryEstimate", "batch_tokens", "choose_micro_batch", "estimate", "optimizer_state_bytes", "parse_size",
           "CPU_RUNTIME_MB", "OVER_BUDGET_FIXES"]

MIB = 2**20
#: RSS of a run process on CPU that is not the model: Python, torch, transformers, peft, the Trainer,
#: the tokenizer and the data, as a run process (forked from the warm launcher) holds it before loading the
#: model; measured on the 2-core box (2026-11). A run records its own reading instead
CPU_RUNTIME_MB = 420.0
#: what a CPU run process holds by its final evaluation beyond what it held before loading the model (the
#: Trainer, the tokenized splits, the tracker's buffers): 100-120 MiB on every peft_comparison run here
CPU_EVAL_GROWTH_MB = 100.0
#: activation values per token kept for backward by one Llama-style decoder layer, per hidden unit (two RMSNorms,
#: q and k with their RoPE halves, k and v repeated to every head, the attention output), per key/value unit and per
#: MLP unit (gate, SiLU, up, product), in the compute dtype; counted from the modules, checked on SmolLM2 (tiny, 135M)
_ACT_H, _ACT_KV, _ACT_I = 11, 3, 4
#: a 4-bit weight's quantization block (bitsandbytes) and the nested block of its scales (double quant)
_BLOCK, _NESTED_BLOCK = 64, 256
#: attention-matrix (heads × s × s) copies one layer keeps for backward: eager keeps the scores, the
#: probabilities and their dropout; torch's sdpa kernels keep none (flash/memory-efficient) except on a CPU
#: given a mask (padded rows, or transformers' `sdpa` over a packed row), whose kernel keeps part of one
_EAGER_COPIES, _CPU_MASKED_COPIES = 1, 0.5
#: how many logits-sized fp32 tensors the loss holds at its peak (logits, log-softmax, their gradient)
_LOGIT_COPIES_TRAIN, _LOGIT_COPIES_EVAL = 3, 4
OVER_BUDGET_FIXES = ("train.gradient_checkpointing=true", "a smaller train.micro_batch with a larger train.grad_accum "
                     "(same effective batch)", "a 4-bit base (qlora)")


@dataclass(frozen=True)
class BatchTokens:
    """Tokens one step holds: `train` positions per micro-batch (padding included), `labels` positions
    whose logits the loss computes, `eval` positions per evaluation batch and `eval_labels` likewise.
    `measured`: read from the tokenized data (else upper bounds from `seq_len`). `example`: mean
    positions of one training example (for a time forecast; `seq_len` without data)."""

    train: int
    labels: int
    eval: int
    eval_labels: int
    measured: bool = False
    example: float = 0.0


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimate's components and totals, in MiB."""

    weights_mb: float
    trainable_mb: float
    grads_mb: float
    optimizer_mb: float
    activations_mb: float
    logits_mb: float
    overhead_mb: float
    eval_activations_mb: float
    tokens: BatchTokens
    #: gradients that exist while all activations still do: the output head's (made first in backward)
    head_grads_mb: float = 0.0
    #: weights of the models the objective holds frozen while training (a teacher, a reference, a reward model)
    held_mb: float = 0.0
    #: parameter counts (unpacked values; a time forecast's FLOPs per token)
    params: int = 0
    trainable_params: int = 0

    @property
    def train_mb(self) -> float:
        """Weights + optimizer state + overhead + the larger of (saved activations + the loss's logits +
        the head's gradient: the start of backward) and all gradients (its end: each layer's activations
        are freed as its gradients are made)."""
        return (self.weights_mb + self.held_mb + self.optimizer_mb + self.overhead_mb
                + max(self.activations_mb + self.logits_mb + self.head_grads_mb, self.grads_mb))

    @property
    def eval_mb(self) -> float:
        """Weights + one evaluation batch's activations and logits (no gradients) + overhead."""
        return self.weights_mb + self.eval_activations_mb + self.overhead_mb

    def metrics(self) -> dict[str, float]:
        """The result keys (`mem_est_*_mb`, `peak_mem_*_est_mb`), to 0.1 MiB; activations include the logits."""
        r = lambda x: round(x, 1)  # noqa: E731
        return {"mem_est_weights_mb": r(self.weights_mb), "mem_est_grads_mb": r(self.grads_mb),
                "mem_est_optimizer_mb": r(self.optimizer_mb),
                "mem_est_activations_mb": r(self.activations_mb + self.logits_mb),
                "mem_est_overhead_mb": r(self.overhead_mb), "mem_est_held_mb": r(self.held_mb),
                "peak_mem_train_est_mb": r(self.train_mb),
                "peak_mem_eval_est_mb": r(self.eval_mb)}

    def as_dict(self) -> dict:
        return {**asdict(self), "train_mb": self.train_mb, "eval_mb": self.eval_mb}


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)\s*$")
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "TB": 10**12}


def parse_size(text: str) -> float:
    """A memory size such as `1.5GiB`, `800MiB` or `2GB`, in MiB.

    Raises:
        ValueError: not a positive number followed by one of B, KiB, MiB, GiB, TiB, KB, MB, GB, TB.
    """
    match = _SIZE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"must be a positive size with a unit (e.g. 1.5GiB, 800MiB, 2GB), but got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)] / MIB


def batch_tokens(train_set: list[dict] | None, val_set: list[dict] | None, spec) -> BatchTokens:
    """Positions per micro-batch and per evaluation batch.

    From the tokenized sets when given, the batch that holds the longest example (a peak is a maximum
    over steps, and an epoch sees every example): packed, the longest plus `micro_batch − 1` examples
    of mean length; padded, `micro_batch` rows of the longest. Without data: `micro_batch × seq_len`,
    an upper bound.
    """
    t, batch = spec.train, spec.eval.batch_size

    def count(examples, rows: int) -> tuple[int, int]:
        if not examples:
            return rows * t.seq_len, rows * t.seq_len
        lengths = [len(e["input_ids"]) for e in examples]
        labels = [sum(1 for x in e["labels"] if x != -100) for e in examples]
        if t.packing:  # the micro-batch that holds the longest example: the peak is a maximum over steps
            mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
            return (round((rows - 1) * mean(lengths) + max(lengths)),
                    round((rows - 1) * mean(labels) + max(labels)))
        return rows * max(lengths), rows * max(lengths)  # logits at the union of label positions of the rows

    train, labels = count(train_set, t.micro_batch)
    evals, eval_labels = count(val_set, batch)
    example = (sum(len(e["input_ids"]) for e in train_set) / len(train_set)) if train_set else float(t.seq_len)
    return BatchTokens(train, labels, evals, eval_labels, measured=bool(train_set), example=example)


def optimizer_state_bytes(optimizer: str, trainable: list[tuple[int, int]]) -> int:
    """Bytes of the optimizer state after its first step, for (number of values, bytes per value) of
    each trainable tensor.

    AdamW (torch, fused or not): two moments in the parameter's dtype and a 4-byte step per tensor.
    8-bit optimizers (bitsandbytes): one byte per moment and an fp32 scale per 256 values for tensors
    of 4,096 values or more, fp32 moments below. SGD: none (transformers' default has no momentum).
    Lion/Adagrad/RMSprop: one moment. Adafactor: factored second moments (rows + columns). An
    unknown name is counted as AdamW.
    """
    name = optimizer.lower()
    moments = 1 if any(k in name for k in ("lion", "adagrad", "rmsprop")) else 2
    total = 0
    for numel, itemsize in trainable:
        if name.startswith("sgd"):
            continue
        if "adafactor" in name:
            total += 4 * max(1, int(numel ** 0.5)) * 2  # row and column statistics of a square-ish matrix
        elif "8bit" in name:
            total += moments * (numel + 4 * -(-numel // 256)) if numel >= 4096 else moments * 4 * numel
            total += 4
        else:
            total += moments * numel * (4 if "32bit" in name else itemsize) + 4
    return total


def _load_itemsize(spec, device_kind: str) -> int:
    from harness import models

    dtype = str(models.pick_dtype(spec.model.dtype, "cuda" if device_kind == "cuda" else "cpu"))
    return {"torch.float32": 4, "torch.bfloat16": 2, "torch.float16": 2}.get(dtype, 4)


def _quantized(name: str, param, spec) -> bool:
    """Whether a 4-bit load packs this weight: a 2-D weight of a Linear inside the decoder (the output
    head, embeddings and norms stay in the compute dtype; adapter weights are not the base's)."""
    return (spec.model.load_in_4bit and param.dim() == 2 and ".layers." in name and name.endswith("weight")
            and not any(k in name for k in ("lora_", "adapter", "embed", "norm", "prompt", "vera_", "hada_",
                                           "lokr_", "ia3_")))


def _quantized_values(model, spec) -> int:
    """Values of the weights a 4-bit load packs (unpacked count)."""
    if not any(p.device.type == "meta" for p in model.parameters()):  # a real 4-bit model: its Params4bit
        # each packed weight once (peft's LoRA wrapper is also called Linear4bit and holds the base layer:
        # counting modules counted every weight twice, with the adapters)
        return sum(p.numel() * 2 * getattr(getattr(p, "quant_storage", None), "itemsize", 1)
                   for p in model.parameters() if type(p).__name__ == "Params4bit")
    return sum(p.numel() for name, p in model.named_parameters() if _quantized(name, p, spec))


def _quant_bytes(numel: int, double_quant: bool) -> int:
    """A 4-bit weight's bytes: packed values plus its block scales (nested ones with double quant)."""
    blocks = -(-numel // _BLOCK)
    if not double_quant:
        return numel // 2 + 4 * blocks
    return numel // 2 + blocks + 4 * -(-blocks // _NESTED_BLOCK) + 4 * 256 + 4


def _weights(model, spec, device_kind: str) -> tuple[int, list[tuple[int, int]]]:
    """(all weights' bytes, [(values, bytes per value) of each trainable tensor]) as the run stores them."""
    from harness.measure import weight_bytes

    params = list(model.named_parameters())
    on_meta = any(p.device.type == "meta" for _, p in params)
    is_peft = hasattr(model, "peft_config")
    if not on_meta:
        total, _ = weight_bytes(model)
        trainable = [(p.numel(), p.element_size()) for _, p in params if p.requires_grad]
        return total, trainable
    load = _load_itemsize(spec, device_kind)
    total, trainable, seen = 0, [], set()
    for name, p in params:
        key = id(p)
        if key in seen:
            continue
        seen.add(key)
        # peft keeps its adapters in fp32 even on a bf16 base (autocast_adapter_dtype)
        itemsize = 4 if is_peft and p.requires_grad else load
        if _quantized(name, p, spec):
            total += _quant_bytes(p.numel(), spec.model.double_quant)
        else:
            total += p.numel() * itemsize
        if p.requires_grad:
            trainable.append((p.numel(), itemsize))
    total += sum(b.numel() * load for b in model.buffers())
    return total, trainable


def _param_count(model) -> int:
    """Values of every parameter, tied ones once, 4-bit ones unpacked."""
    from harness.measure import count_params

    if not any(p.device.type == "meta" for p in model.parameters()):
        return count_params(model)[1]
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _layers_with_grad_path(model, n_layers: int) -> int:
    """Decoder layers whose activations backward needs: all layers from the lowest one holding a
    trainable parameter up (all of them when something below the layers trains: embeddings, prompts)."""
    lowest = None
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        match = re.search(r"\.layers\.(\d+)\.", name)
        if match is None:
            if any(k in name for k in ("norm.weight", "lm_head")) and "layers" not in name:
                continue  # the top of the network: no layer below needs its input's gradient
            return n_layers
        lowest = int(match.group(1)) if lowest is None else min(lowest, int(match.group(1)))
    return 0 if lowest is None else n_layers - lowest


#: the projections that read each input a trained projection would keep: the attention's normed input,
#: the attention output, the MLP's normed input (hidden-sized) and the MLP product (intermediate-sized)
_INPUTS = {"attn_in": ("q_proj", "k_proj", "v_proj"), "attn_out": ("o_proj",), "mlp_in": ("gate_proj", "up_proj"),
           "mlp_mid": ("down_proj",)}


def _frozen_inputs(model) -> tuple[int, int]:
    """(hidden-sized, intermediate-sized) projection inputs per layer that nothing keeps for backward: an
    input is kept when a projection reading it trains its own weight or carries an adapter (LoRA's A,
    LoKr, VeRA, IA3 … multiply that input by trained values and keep it)."""
    kept = dict.fromkeys(_INPUTS, False)
    for name, p in model.named_parameters():
        if not p.requires_grad or ".layers." not in name:
            continue
        for key, projections in _INPUTS.items():
            if any(f".{proj}." in name for proj in projections):
                kept[key] = True
    hidden = sum(not kept[k] for k in ("attn_in", "attn_out", "mlp_in"))
    return hidden, int(not kept["mlp_mid"])


def _method_extras_per_token(model, act: int) -> int:
    """Bytes per token a method adds to the saved activations: LoRA dropout's copy of each adapted
    layer's input and its mask, and each adapter's low-rank output."""
    extra = 0
    for module in model.modules():
        dropout = getattr(module, "lora_dropout", None)
        if dropout is None or not hasattr(module, "in_features"):
            continue
        for name, drop in dropout.items():
            p = getattr(drop, "p", 0.0)
            rank = getattr(module, "r", {}).get(name, 0)
            extra += (module.in_features * (act + 1) if p else 0) + rank * act
    return extra


#: weight-sized tensors one adapted layer materialises each forward and keeps for backward: DoRA (W + B·A and
#: its column norm), LoHA (the two low-rank products whose Hadamard product is the update), LoKr (the
#: Kronecker product); fitted on SmolLM2-135M here (LoHA's gap to its estimate without them: 1.9 weight copies,
#: LoKr's 0.9)
_MATERIALISED = (("lora_magnitude_vector", 2), ("hada_w1_a", 2), ("lokr_w1", 1), ("lokr_w1_a", 1))


def _materialised_bytes(model, act: int) -> int:
    """Bytes of the full-size update tensors that DoRA, LoHA and LoKr layers build each forward."""
    total = 0
    for module in model.modules():
        width = (getattr(module, "in_features", None) or 0) * (getattr(module, "out_features", None) or 0)
        if not width:
            continue
        copies = next((n for attr, n in _MATERIALISED if getattr(module, attr, None)), 0)
        total += copies * width * act
    return total


def _attention_copies(device_kind: str, spec) -> float:
    """Score matrices (rows × heads × s × s) one layer keeps for backward, by the attention the run uses
    (`train.attn_implementation`; `auto` is a varlen kernel on both devices)."""
    attn = spec.train.attn_implementation
    if attn == "eager":
        return _EAGER_COPIES
    varlen = attn in ("auto", "sdpa_varlen", "flash_attention_2") and spec.train.packing
    return 0 if device_kind == "cuda" or varlen else _CPU_MASKED_COPIES


def held_weights_mb(names: list[str], spec, device_kind: str) -> float:
    """MiB of the frozen models an objective holds (`Objective.held_models`, `run:` references already
    resolved to model names), in the run's load dtype, from their configs (0 for one whose config
    cannot be read here)."""
    m = spec.model
    total = sum(_model_values(name, m.trust_remote_code, m.revision) for name in names)
    return total * _load_itemsize(spec, device_kind) / MIB


@functools.lru_cache(maxsize=None)
def _model_values(name: str, trust_remote_code: bool, revision: str | None) -> int:
    """Parameter values of model `name` (tied weights once), from its config on the meta device; 0 when
    its config cannot be read here. Cached: every run of a grid that holds the same model asks."""
    from types import SimpleNamespace

    from harness import models

    skeleton = models.meta_model(SimpleNamespace(name=name, trust_remote_code=trust_remote_code, revision=revision))
    if skeleton is None:
        return 0
    return sum(p.numel() for p in {id(p): p for p in skeleton.parameters()}.values())


def estimate(spec, model, device_kind: str, *, tokens: BatchTokens | None = None,
             runtime_mb: float | None = None, held_mb: float = 0.0) -> MemoryEstimate:
    """The run's peak-memory estimate from its model after the method is applied.

    Args:
        spec: the run's RunConfig.
        model: the model with the method applied: real tensors, or on the meta device (preflight).
        device_kind: "cpu" or "cuda": the semantics of the measured peak it predicts.
        tokens: positions per batch (`batch_tokens`); None: upper bounds from `seq_len`.
        runtime_mb: CPU only, the runtime's RSS (None: CPU_RUNTIME_MB).
        held_mb: weights of the frozen models the objective holds while training (`held_weights_mb`).
    """
    tokens = tokens or batch_tokens(None, None, spec)
    config = getattr(model, "config", None)
    h = getattr(config, "hidden_size", 0) or 0
    n_layers = getattr(config, "num_hidden_layers", 0) or 0
    inter = getattr(config, "intermediate_size", 4 * h) or 4 * h
    heads = getattr(config, "num_attention_heads", 1) or 1
    kv = (getattr(config, "num_key_value_heads", heads) or heads) * (h // heads)
    vocab = getattr(config, "vocab_size", 0) or 0
    act = _load_itemsize(spec, device_kind)

    weights, trainable = _weights(model, spec, device_kind)
    trainable_bytes = sum(n * size for n, size in trainable)
    trains = bool(trainable)
    grads = trainable_bytes
    optimizer = optimizer_state_bytes(spec.train.optimizer, trainable)

    # prompt-learning methods prepend virtual tokens to every row and compute logits everywhere
    peft_cfg = getattr(model, "active_peft_config", None)
    virtual = getattr(peft_cfg, "num_virtual_tokens", 0) if getattr(peft_cfg, "is_prompt_learning", False) else 0
    rows = 1 if spec.train.packing else spec.train.micro_batch
    train_positions = tokens.train + rows * virtual
    per_layer = ((_ACT_H * h + _ACT_KV * kv + _ACT_I * inter) * act
                 + _method_extras_per_token(model, act) // max(1, n_layers))
    frozen_h, frozen_i = _frozen_inputs(model)  # a frozen projection keeps no input for its weight's gradient
    per_layer -= (frozen_h * h + frozen_i * inter) * act
    attn_matrix = _attention_copies(device_kind, spec) * rows * heads * (train_positions // rows) ** 2 * act
    saved_layers = _layers_with_grad_path(model, n_layers) if trains else 0
    if spec.train.gradient_checkpointing and saved_layers:  # layer inputs + one layer recomputed at a time
        activations = train_positions * (saved_layers * h * act + per_layer) + attn_matrix
    else:
        activations = (train_positions * per_layer + attn_matrix) * saved_layers
    activations += _materialised_bytes(model, act) if trains else 0
    if trains and spec.model.load_in_4bit and device_kind == "cpu" and saved_layers:
        # bitsandbytes' CPU path keeps a dequantized (compute-dtype) copy of each 4-bit weight it multiplies
        # by for backward: the 135M's QLoRA peaked ~330 MiB above LoRA's less the weights 4 bits save
        activations += _quantized_values(model, spec) * act * saved_layers // max(1, n_layers)
    at_labels = virtual == 0 and getattr(spec.train, "kernels", "none") != "liger"
    logit_positions = tokens.labels if at_labels else train_positions
    logits = _LOGIT_COPIES_TRAIN * logit_positions * vocab * 4 if trains else 0
    eval_positions = tokens.eval + (1 if spec.train.packing else spec.eval.batch_size) * virtual
    eval_logit_positions = tokens.eval_labels if virtual == 0 else eval_positions
    eval_rows = 1 if spec.train.packing else spec.eval.batch_size
    eval_act = (eval_positions * (4 * h + 2 * inter) * act + _LOGIT_COPIES_EVAL * eval_logit_positions * vocab * 4
                + _attention_copies(device_kind, spec) * heads * eval_positions * (eval_positions // eval_rows) * act)
    if device_kind == "cuda":
        overhead = 0.0  # the CUDA context is not in max_memory_allocated
    else:
        overhead = CPU_RUNTIME_MB if runtime_mb is None else runtime_mb
    if device_kind == "cpu":  # the vocabulary matmul packs a copy of the output head's weight
        eval_act += vocab * h * act + CPU_EVAL_GROWTH_MB * MIB
    head_grads = sum(p.numel() * (4 if hasattr(model, "peft_config") else act) for name, p in model.named_parameters()
                     if p.requires_grad and any(k in name for k in ("lm_head", "embed_tokens")))
    return MemoryEstimate(weights_mb=weights / MIB, trainable_mb=trainable_bytes / MIB, grads_mb=grads / MIB,
                          optimizer_mb=optimizer / MIB, activations_mb=activations / MIB, logits_mb=logits / MIB,
                          overhead_mb=overhead, eval_activations_mb=eval_act / MIB, tokens=tokens,
                          head_grads_mb=head_grads / MIB, held_mb=held_mb if trains else 0.0,
                          params=_param_count(model),
                          trainable_params=sum(n for n, _ in trainable))


def choose_micro_batch(effective: int, fits) -> int | None:
    """The largest divisor of `effective` (examples per optimizer step) for which `fits(micro_batch)`
    holds, or None when not even 1 does."""
    for micro in sorted((d for d in range(1, effective + 1) if effective % d == 0), reverse=True):
        if fits(micro):
            return micro
    return None


def fixes(spec) -> list[str]:
    """What would lower a run's train peak, among OVER_BUDGET_FIXES: those it does not use already."""
    t = spec.train
    out = [] if t.gradient_checkpointing else ["train.gradient_checkpointing=true"]
    if t.micro_batch > 1:
        smaller = max(1, t.micro_batch // 2)
        accum = t.grad_accum * t.micro_batch // smaller
        out.append(f"train.micro_batch={smaller} with train.grad_accum={accum} (same effective batch)"
                   if t.micro_batch % smaller == 0 else OVER_BUDGET_FIXES[1])
    if not spec.model.load_in_4bit:
        out.append("a 4-bit base (model.load_in_4bit=true with an adapter method: qlora)")
    return out


def over_budget_line(slug: str, spec, est: MemoryEstimate, budget_mb: float) -> str:
    """One line: the point, its train estimate, the budget and what would make it fit."""
    return (f"{slug}: estimated train peak {est.train_mb:,.0f} MiB > budget {budget_mb:,.0f} MiB "
            f"(weights {est.weights_mb:,.0f}, grads {est.grads_mb:,.0f}, optimizer {est.optimizer_mb:,.0f}, "
            f"activations {est.activations_mb + est.logits_mb:,.0f}, overhead {est.overhead_mb:,.0f}); "
            f"to fit: {'; or '.join(fixes(spec)) or 'a device with more memory'}")
