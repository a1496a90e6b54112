"""Objective `route`: one finished adapter run per domain, and a router that picks the adapter per input.

The router is a linear classifier on the base model's mean-pooled last hidden state, trained on the
domains' training prompts. Each domain's validation split is then scored three ways: routed (each
example with the adapter the router picked), oracle (the domain's own adapter) and, with `shared`,
one adapter for everything.
"""

from __future__ import annotations

from pathlib import Path

from harness.objectives.domains import source_cfg, source_splits, source_train


def _load_adapters(base, refs: dict[str, str], root: Path, experiment: str):
    """The base model with each run's adapter loaded under its key."""
    from peft import PeftModel

    from harness.objectives.runs import finished_run

    model = None
    for name, ref in refs.items():
        _, directory, _, why = finished_run(ref, root, experiment)
        if directory is None:
            raise ValueError(why)
        path = str(directory / "adapter")
        if model is None:
            model = PeftModel.from_pretrained(base, path, adapter_name=name)
        else:
            model.load_adapter(path, adapter_name=name)
    model.eval()
    return model


def _loss(model, adapter: str, examples: list[dict], collator, spec, device) -> tuple[float, int]:
    from harness.evaluate import token_loss

    model.set_adapter(adapter)
    return token_loss(model, examples, collator, spec.eval.batch_size, device)


def _weighted(parts: list[tuple[float, int]]) -> tuple[float, int]:
    tokens = sum(n for _, n in parts)
    return sum(loss * n for loss, n in parts) / tokens, tokens


def run(spec, run_dir: Path, metrics: dict, device: str) -> None:
    """Train the router, score routed / oracle / shared inference; fill `metrics`."""
    from harness import models
    from harness.data.tokenize import encode_all, make_collator, prompt_text
    from harness.evaluate import perplexity
    from harness.objectives.router import pooled_features, train_router

    objective, root, experiment = spec.objective, run_dir.parent.parent, run_dir.parent.name
    domains = list(objective.adapters)
    base, tokenizer = models.load(spec.model, device)
    texts = {d: [prompt_text(tokenizer, r["prompt"], source_cfg(spec.data, d))
                 for r in source_train(spec.data, d, spec.data.n_train, spec.seed)] for d in domains}
    router = train_router(base, tokenizer, texts, spec.eval.batch_size, device, seed=spec.seed)
    metrics["router_acc_train"] = router.train_accuracy

    refs = dict(objective.adapters) | ({"__shared__": objective.shared} if objective.shared else {})
    model = _load_adapters(base, refs, root, experiment)
    collator = make_collator(tokenizer, spec.train.packing)
    right = total = 0
    totals: dict[str, list] = {"routed": [], "oracle": [], "shared": []}
    for domain in domains:
        cfg = source_cfg(spec.data, domain)
        val = source_splits(spec.data, domain).val
        encoded = [(r, e) for r in val if (e := encode_all(tokenizer, [r], cfg, spec.train.seq_len))]
        # the peft model with its adapters disabled: the base's features, as in training the router
        features = pooled_features(model, tokenizer, [prompt_text(tokenizer, r["prompt"], cfg) for r, _ in encoded],
                                   spec.eval.batch_size, device)
        picked = router.predict(features)
        right += sum(p == domain for p in picked)
        total += len(picked)
        metrics[f"router_acc.{domain}"] = sum(p == domain for p in picked) / len(picked)
        examples = [e[0] for _, e in encoded]
        routed = _weighted([_loss(model, adapter, [x for x, p in zip(examples, picked) if p == adapter],
                                  collator, spec, device) for adapter in sorted(set(picked))])
        oracle = _loss(model, domain, examples, collator, spec, device)
        rows = {"routed": routed, "oracle": oracle}
        if objective.shared:
            rows["shared"] = _loss(model, "__shared__", examples, collator, spec, device)
        for kind, (loss, tokens) in rows.items():
            prefix = "task_eval" if kind == "routed" else f"{kind}_eval"
            metrics[f"{prefix}.{domain}.eval_loss"] = loss
            metrics[f"{prefix}.{domain}.eval_tokens"] = tokens
            totals[kind].append((loss, tokens))
    metrics["router_acc"] = right / total
    for kind, parts in totals.items():
        if parts:
            metrics[f"route.{kind}.eval_loss"] = _weighted(parts)[0]
    loss, tokens = _weighted(totals["routed"])
    metrics.update(eval_loss=loss, eval_ppl=perplexity(loss), eval_tokens=tokens, trainable_params=0)

