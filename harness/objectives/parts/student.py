"""Students for distillation that exist offline: a depth-pruned copy of the teacher, initialised
from the teacher's own layers (as DistilBERT was from BERT's)."""

from __future__ import annotations

import copy

from torch import nn

KEEP_SHORTHANDS = {"every_2nd": 2, "every_3rd": 3, "every_4th": 4}


def keep_layers(keep, n_layers: int) -> list[int]:
    """Resolve `keep_layers` (`every_2nd` | `every_3rd` | `every_4th` | a list of indices) against a
    teacher with `n_layers` layers.

    Raises:
        ValueError: an unknown shorthand, an index out of range, a repeated index or an empty list.
    """
    if isinstance(keep, str):
        if keep not in KEEP_SHORTHANDS:
            raise ValueError(f"keep_layers must be one of {', '.join(KEEP_SHORTHANDS)} or a list of layer indices, "
                             f"but got {keep!r}")
        return list(range(0, n_layers, KEEP_SHORTHANDS[keep]))
    indices = list(keep)
    if not indices:
        raise ValueError("keep_layers must keep at least one layer")
    bad = [i for i in indices if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"keep_layers indices must be in [0, {n_layers - 1}] (the teacher has {n_layers} layers), "
                         f"but got {bad}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"keep_layers repeats a layer: {indices}")
    return indices


def decoder_layers(model) -> nn.ModuleList:
    """The decoder's block list (`model.model.layers` for Llama-family models)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder `layers` list to prune")
    return layers


def depth_pruned_copy(teacher, keep: list[int]):
    """A new model with the teacher's embeddings, final norm and head and only the layers `keep`
    (in that order), each a copy of the teacher's; the teacher is left untouched."""
    student = copy.deepcopy(teacher)
    layers = decoder_layers(student)
    kept = nn.ModuleList(layers[i] for i in keep)
    decoder = student.get_decoder() if hasattr(student, "get_decoder") else student.model
    decoder.layers = kept
    for new_index, layer in enumerate(kept):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index  # the KV cache is indexed by it
    config = student.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return student


def layer_pairs(feature_layers, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices (0: embeddings, i: after layer i). `auto` maps each
    student layer to the teacher layer at the same relative depth."""
    if feature_layers == "auto":
        return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
    return [tuple(p) for p in feature_layers]
