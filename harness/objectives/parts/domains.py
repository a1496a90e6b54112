"""Data sources as tasks and domains: their splits under a run's data settings, and each source's
validation loss (`task_eval.<source>.eval_loss`), the cells of transfer and forgetting matrices."""

from __future__ import annotations

from functools import lru_cache

from harness.data import DATASETS
from harness.data.base import Splits, split, train_subset


def source_cfg(data_cfg, name: str):
    """The run's data settings (n_val, n_test, split_seed, template, system prompt) for source `name`."""
    return data_cfg.model_copy(update={"name": name, "n_train": None, "path": None})


@lru_cache(maxsize=32)
def _records(name: str, cfg_json: str, cfg_type: type) -> tuple:
    return tuple(DATASETS.get(name)().records(cfg_type.model_validate_json(cfg_json)))


def source_splits(data_cfg, name: str) -> Splits:
    """Source `name` split exactly as a run with `data.name: <name>` and these settings splits it.

    Raises:
        DataError: too few records for the split.
    """
    cfg = source_cfg(data_cfg, name)
    return split(list(_records(name, cfg.model_dump_json(), type(cfg))), cfg)


def source_train(data_cfg, name: str, n_train: int | None, seed: int) -> list[dict]:
    """The first `n_train` of the source's shuffled training pool (the whole pool when it is smaller)."""
    pool = source_splits(data_cfg, name).train_pool
    return train_subset(pool, min(n_train or len(pool), len(pool)), seed)


def evaluate_sources(model, tokenizer, spec, sources: list[str], device: str, *, prefix: str = "task_eval",
                     activate=None) -> dict:
    """`<prefix>.<source>.eval_loss|eval_ppl|eval_tokens` on each source's validation split.

    `activate(source)`, when given, prepares the model for that source first (its task adapters)."""
    from harness.data.tokenize import encode_all, make_collator
    from harness.evaluate import perplexity, token_loss

    collator = make_collator(tokenizer, spec.train.packing)
    out = {}
    for name in sources:
        if activate is not None:
            activate(name)
        val = encode_all(tokenizer, source_splits(spec.data, name).val, source_cfg(spec.data, name), spec.train.seq_len)
        loss, tokens = token_loss(model, val, collator, spec.eval.batch_size, device)
        out.update({f"{prefix}.{name}.eval_loss": loss, f"{prefix}.{name}.eval_ppl": perplexity(loss),
                    f"{prefix}.{name}.eval_tokens": tokens})
    return out


def pooled(metrics: dict, sources: list[str], prefix: str = "task_eval") -> tuple[float, int]:
    """(token-weighted mean loss, tokens) over the sources' figures in `metrics`."""
    tokens = sum(metrics[f"{prefix}.{s}.eval_tokens"] for s in sources)
    loss = sum(metrics[f"{prefix}.{s}.eval_loss"] * metrics[f"{prefix}.{s}.eval_tokens"] for s in sources) / tokens
    return loss, tokens


def collisions(train: list[dict], held_out: list[dict]) -> set[str]:
    """Prompts that a training set shares with a held-out set (whitespace and case ignored)."""
    from harness.data.base import prompt_key

    return {prompt_key(r["prompt"]) for r in train} & {prompt_key(r["prompt"]) for r in held_out}
