"""Objective `route`: one finished adapter run per domain, and a router that picks the adapter per input.

The router is a linear classifier on the base model's mean-pooled last hidden state, trained on the
domains' training prompts. Each domain's validation split is then scored three ways: routed (each
example with the adapter the router picked), oracle (the domain's own adapter) and, with `shared`,
one adapter for everything.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from harness.objectives.base import Objective, ObjectiveOptions, check_run_ref, register
from harness.objectives.parts.domains import source_cfg, source_splits, source_train


class RouteOptions(ObjectiveOptions):
    """A router over finished single-domain adapter runs (method `none`: nothing else trains)."""

    name: Literal["route"] = "route"
    adapters: dict[str, str] | None = Field(None, description="{source: run:<slug>} one adapter per domain")
    shared: str | None = Field(None, description="`run:<slug>`, a single adapter for every domain to compare")
    ref_fields: ClassVar[tuple[str, ...]] = ("adapters", "shared")

    @model_validator(mode="after")
    def _two_adapters(self):
        if not self.adapters or len(self.adapters) < 2:
            raise ValueError("objective `route` needs `adapters`: at least 2 {source: run:<slug>} entries")
        for field, ref in [("shared", self.shared), *((f"adapters.{k}", v) for k, v in self.adapters.items())]:
            check_run_ref(field, ref)
        return self


def _load_adapters(base, named: dict[str, str], refs):
    """The base model with each run's adapter loaded under its key."""
    from peft import PeftModel

    model = None
    for name, ref in named.items():
        _, directory, _, why = refs.finished(ref)
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


def run(spec, refs, metrics: dict, device: str) -> None:
    """Train the router, score routed / oracle / shared inference; fill `metrics`."""
    from harness import models
    from harness.data.tokenize import encode_all, make_collator, prompt_text
    from harness.evaluate import perplexity
    from harness.objectives.parts.router import pooled_features, train_router

    objective = spec.objective
    domains = list(objective.adapters)
    base, tokenizer = models.load(spec.model, device)
    texts = {d: [prompt_text(tokenizer, r["prompt"], source_cfg(spec.data, d))
                 for r in source_train(spec.data, d, spec.data.n_train, spec.seed)] for d in domains}
    router = train_router(base, tokenizer, texts, spec.eval.batch_size, device, seed=spec.seed)
    metrics["router_acc_train"] = router.train_accuracy

    named = dict(objective.adapters) | ({"__shared__": objective.shared} if objective.shared else {})
    model = _load_adapters(base, named, refs)
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



class Route(Objective):
    """Trains only a router that picks, per input, one of several finished adapter runs."""

    name = "route"
    Options = RouteOptions
    description = "routing: a classifier picks one finished adapter run per input (method `none`)"
    report_sections = ("routing",)
    metrics = ("router_acc", "router_acc_train", "eval_loss")
    fine_tunes = False

    def slug_prefix(self) -> str:
        return "route"

    def source_fields(self) -> list[tuple[str, str]]:
        return [(f"adapters.{name}", name) for name in self.options.adapters]

    def single_model(self, config) -> str | None:
        return "a route run picks other runs' adapters per input; score those runs"

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        """Method `none`; each adapter (and `shared`) is a single-adapter peft run on the route's base model."""
        from harness.methods.peft_base import PeftMethod

        problems = []
        if spec.config.method.name != "none":
            problems.append(plan.problem(spec, "method", "objective `route` trains only its router over finished "
                                         "runs' adapters: use method `none`"))
        for field, ref in self.options.run_refs():
            _, config, found = plan.resolve(spec, ref, field)
            where = f"objective.{field}"
            if config is None:
                problems.extend(found)
            elif not issubclass(config.method.cls, PeftMethod) or config.model != spec.config.model:
                problems.append(plan.problem(spec, where, f"`{ref}` must be a peft adapter run on model "
                                             f"`{spec.config.model.name}` (it trained `{config.method.name}` on "
                                             f"`{config.model.name}`)"))
            elif (why := config.objective.build().single_model(config)) is not None:
                problems.append(plan.problem(spec, where, f"`{ref}` is not one adapter ({why}); route between single "
                                             "adapters (a single-task run or a `shared` multitask run)"))
        return problems

    def run(self, ctx, metrics: dict) -> None:
        run(ctx.spec, ctx.refs, metrics, ctx.device)


register(Route)
