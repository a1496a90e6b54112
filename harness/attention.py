"""`sdpa_varlen`: torch's scaled-dot-product attention run once per example of a packed row.

A packed micro-batch is one row whose position ids restart at 0 for every example. Transformers'
`sdpa` attends over such a row with a block-diagonal mask: it computes every pair of the row (a cost
that grows with the square of the row, not of each example) and, with a mask, torch falls back to
kernels that keep the whole score matrix for backward. FlashAttention-2's varlen kernel runs each
example on its own, but needs the `flash_attn` package and a CUDA GPU. `sdpa_varlen` does what the
varlen kernel does with torch alone: it cuts the row at its position-id restarts and calls sdpa with
`is_causal` and no mask on each example, so torch picks its flash kernel (CPU or CUDA), which keeps no
score matrix. The same pairs are summed as under the block mask (a masked pair weighs exactly 0), in
another order: losses agree to float precision, not bitwise.

Anything that is not a packed training row (padded batches, generation with a cache, prefix
tuning's past keys) goes to transformers' own sdpa unchanged.
"""

from __future__ import annotations

__all__ = ["NAME", "register", "segments"]

#: the `attn_implementation` name this module registers with transformers
NAME = "sdpa_varlen"

_last: tuple = (None, None)  # (position ids, their segments): every layer of one forward gets the same tensor


def segments(position_ids) -> list[list[tuple[int, int]]] | None:
    """[(start, end) of each example] per row, from position ids that restart per example; None when
    no row restarts (one sequence per row: plain causal attention)."""
    global _last
    if _last[0] is position_ids:
        return _last[1]
    ids = position_ids.tolist()  # one device sync per forward, as FlashAttention-2's varlen path makes
    out, restarts = [], False
    for row in ids:
        starts = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1] + 1]
        restarts |= len(starts) > 1
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    result = out if restarts else None
    _last = (position_ids, result)
    return result


def _forward(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    import torch

    position_ids = kwargs.get("position_ids")
    packed = (attention_mask is None and position_ids is not None and query.shape[2] == key.shape[2]
              and position_ids.shape[-1] == query.shape[2])
    bounds = segments(position_ids.expand(query.shape[0], -1)) if packed else None
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows = []
    for b, row in enumerate(bounds):
        parts = [sdpa_attention_forward(module, query[b:b + 1, :, s:e], key[b:b + 1, :, s:e],
                                        value[b:b + 1, :, s:e], None, **kwargs)[0] for s, e in row]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)), None


def _mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
          **kwargs):
    """No mask where `_forward` cuts the row itself (no padding, no cache offset); transformers' sdpa
    mask everywhere else."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    plain = (q_length == kv_length and isinstance(q_offset, int) and q_offset == 0
             and (attention_mask is None or bool(attention_mask.all())))
    if plain:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function or causal_mask_function, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Register `sdpa_varlen` with transformers' attention and mask interfaces (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _forward)
    AttentionMaskInterface.register(NAME, _mask)
    return NAME
