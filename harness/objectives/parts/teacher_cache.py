"""`cache_teacher: true`: the teacher's top-k log-probabilities at temperature T, computed once per
(teacher, training data) and kept in the model cache as safetensors, so every student trained on
the same data reads them instead of running the teacher at each step.

Only the positions the KL uses are stored (each answer token's prediction): k·(4+4) bytes each.
The KL against a cache is over the top-k ids plus one bucket for the rest (`response_kl_topk`):
exact at k = vocabulary size, a lower bound on the full KL otherwise."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from harness.evaluate import eval_batches
from harness.objectives.parts.distill_losses import teacher_topk

INDEX, TENSORS = "index.json", "topk.safetensors"


def digest(ids) -> str:
    """A stable name for an example: the hash of its token ids."""
    return hashlib.sha1(torch.as_tensor(ids, dtype=torch.int64).cpu().numpy().tobytes()).hexdigest()


def cache_key(teacher_identity: list, temperature: float, k: int, examples: list[dict]) -> str:
    """What the cached figures depend on: the teachers (and their weights), T, k and the examples."""
    payload = json.dumps({"format": 2, "teachers": teacher_identity, "T": temperature, "k": k,
                          "examples": [digest(e["input_ids"]) for e in examples]}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class TopKCache:
    """Cached top-k (log-probability, token id) rows per example, looked up from a training batch."""

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        self.index = json.loads((folder / INDEX).read_text())
        tensors = load_file(str(folder / TENSORS))
        self.values, self.ids = tensors["values"], tensors["ids"]

    def lookup(self, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, ids), one row per KL position of the batch (labels[:, 1:] != -100), in the
        batch's row-major order: the order `student_logits[:, :-1][mask]` has."""
        rows = [self.index[digest(ids)] for ids in examples_in(inputs)]
        values = torch.cat([self.values[o:o + n] for o, n in rows])
        ids = torch.cat([self.ids[o:o + n] for o, n in rows])
        return values.to(labels.device), ids.to(labels.device)


def examples_in(inputs: dict) -> list[torch.Tensor]:
    """The token ids of each example of a batch, in row-major order: the examples of a packed row
    (position_ids restart at 0) or the unpadded rows of a padded batch."""
    input_ids = inputs["input_ids"]
    positions = inputs.get("position_ids")
    if positions is not None:
        out = []
        for row, pos in zip(input_ids, positions):
            starts = (pos == 0).nonzero().flatten().tolist() + [len(row)]
            out += [row[a:b] for a, b in zip(starts, starts[1:])]
        return out
    mask = inputs.get("attention_mask")
    return [row[m.bool()] if mask is not None else row for row, m in zip(input_ids, mask if mask is not None else input_ids)]


def build(teacher, examples: list[dict], collator, device: str, temperature: float, k: int, out: Path) -> None:
    """Run the teacher over `examples`, one forward each (so what is stored does not depend on the
    batch an example shares), and write the cache folder."""
    from safetensors.torch import save_file

    index, values, ids, offset = {}, [], [], 0
    for example in examples:
        for batch, labels in eval_batches(teacher, [example], collator, 1, device):
            logits = teacher(**batch, use_cache=False).logits
            v, i = teacher_topk(logits[:, :-1][labels[:, 1:] != -100], k, temperature)
            index[digest(example["input_ids"])] = (offset, len(v))
            offset += len(v)
            values.append(v.cpu())
            ids.append(i.cpu())
    out.mkdir(parents=True, exist_ok=True)
    save_file({"values": torch.cat(values).contiguous(), "ids": torch.cat(ids).contiguous()}, str(out / TENSORS))
    (out / INDEX).write_text(json.dumps(index))  # written last: its presence marks a complete cache


def load_or_build(teacher, teacher_identity: list, examples: list[dict], collator, device: str,
                  temperature: float, k: int) -> tuple[TopKCache, float]:
    """The cache for (teachers, T, k, examples), built on first use; and the seconds it took here
    (≈0 when another run built it)."""
    from harness import models

    t0 = time.perf_counter()
    key = cache_key(teacher_identity, temperature, k, examples)
    folder = models.build_cached(f"teacher-topk-{key}", lambda out: build(
        teacher, examples, collator, device, temperature, k, out), marker=INDEX)
    return TopKCache(folder), time.perf_counter() - t0
