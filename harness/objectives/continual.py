"""Objective `continual`: data sources trained one after another, one run per stage.

Stage k trains on `sequence[k]` starting from stage k−1 (`previous`):
- `naive`: keeps training the previous stage's weights (its adapter, or its full model);
- `replay`: the same, with a reservoir sample of the earlier stages' training examples making up
  `replay_fraction` of this stage's examples;
- `ewc`: the same, plus λ/2 · Σ F (θ − θ*)², F the Fisher diagonal of the previous stage's data at
  the previous stage's weights θ*;
- `adapter_per_stage`: the earlier stages' adapters are merged into (frozen in) the base and a fresh
  adapter learns this stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from harness.objectives.base import Objective, ObjectiveOptions, check_run_ref, register
from harness.objectives.parts.domains import evaluate_sources, source_train
from harness.objectives.parts.mixing import with_replay

class ContinualOptions(ObjectiveOptions):
    """Data sources trained one after another, one run per stage (the grid expands the stages)."""

    name: Literal["continual"] = "continual"
    sequence: list[str] | None = Field(None, description="data sources trained one after another")
    strategy: Literal["naive", "replay", "ewc", "adapter_per_stage"] = Field(
        "naive", description="how earlier stages are protected")
    replay_fraction: float = Field(0.2, ge=0, lt=1, description="replay: share of each later stage's examples "
                                                                 "drawn from earlier stages")
    ewc_lambda: float = Field(1000.0, ge=0, description="ewc: λ of λ/2 · Σ F (θ − θ*)²")
    ewc_batches: int = Field(8, gt=0, description="ewc: batches of the previous stage's data for the Fisher")
    stage: int | None = Field(None, ge=0, description="set by the grid (one run per stage)")
    chain: str | None = Field(None, description="set by the grid (the slug shared by a chain's stages)")
    previous: str | None = Field(None, description="set by the grid (`run:<slug>` of the stage before)")
    ref_fields: ClassVar[tuple[str, ...]] = ("previous",)

    @model_validator(mode="after")
    def _a_sequence(self):
        if not self.sequence or len(self.sequence) < 2:
            raise ValueError(f"objective `continual` needs a `sequence` of at least 2 data sources, not {self.sequence}")
        if len(set(self.sequence)) != len(self.sequence):
            raise ValueError(f"`sequence` names a source twice: {self.sequence}")
        check_run_ref("previous", self.previous)
        return self

    def sources(self) -> list[str]:
        return list(self.sequence)


def stage_records(spec) -> tuple[list[dict], int]:
    """(this stage's training records with any replayed ones, how many were replayed). Every record
    keeps its `source`."""
    objective, k = spec.objective, spec.objective.stage

    def train(j):
        return [{**r, "source": objective.sequence[j]}
                for r in source_train(spec.data, objective.sequence[j], spec.data.n_train, spec.seed)]

    current = train(k)
    if objective.strategy != "replay" or k == 0:
        return current, 0
    earlier = [r for j in range(k) for r in train(j)]
    mixed = with_replay(current, earlier, objective.replay_fraction, seed=spec.seed + k)
    return mixed, len(mixed) - len(current)


def continues_weights(spec) -> bool:
    """A stage after the first that keeps training the previous stage's own trainable weights."""
    objective = spec.objective
    return isinstance(objective, ContinualOptions) and bool(objective.stage) and objective.strategy != "adapter_per_stage"


def resume_adapter(model, previous_dir: Path) -> None:
    """Load the previous stage's adapter weights into the freshly applied (same-config) adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(previous_dir) / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise ValueError(f"the previous stage's adapter does not fit this one: {unexpected[:3]} …")


class Continual(Objective):
    """One run per stage of `sequence`; each stage starts from the one before."""

    name = "continual"
    Options = ContinualOptions
    description = "continual learning: sources in sequence, one run per stage (naive, replay, EWC, adapter per stage)"
    report_sections = ("continual",)
    metrics = ("eval_loss",)
    slug_options = ("strategy",)

    def slug_prefix(self) -> str:  # `cl_replay-lora-…`; the grid appends `-stage<k>`
        return f"cl_{self.options.strategy}"

    def stages(self, config, slug: str):
        """Stage k trains on the k-th source, starts from stage k−1 (`previous: run:<its slug>`) and
        shares the chain's slug."""
        if self.options.stage is not None:
            return None
        stages, previous = [], None
        for k, source in enumerate(self.options.sequence):
            stage = self.options.model_copy(update={"stage": k, "chain": slug, "previous": previous})
            staged = config.model_copy(update={"objective": stage, "data": config.data.model_copy(update={"name": source})})
            stages.append((f"{slug}-stage{k}", staged))
            previous = f"run:{slug}-stage{k}"
        return stages

    def source_fields(self) -> list[tuple[str, str]]:
        return [(f"sequence[{i}]", name) for i, name in enumerate(self.options.sequence)]

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        """What the strategy needs of the method."""
        from harness.methods.peft_base import PeftMethod

        cfg, kind = spec.config, spec.config.method.cls
        if self.options.strategy == "adapter_per_stage" and not (issubclass(kind, PeftMethod) and kind.merges):
            return [plan.problem(spec, "method", "strategy `adapter_per_stage` freezes each stage's adapter into the "
                                 f"base: it needs a peft method that merges (lora, dora, …), not `{cfg.method.name}`")]
        if not issubclass(kind, PeftMethod) and not kind.saves_full_model:
            return [plan.problem(spec, "method", "a continual stage continues the previous stage's weights: use a "
                                 f"peft adapter method or one that trains the whole model, not `{cfg.method.name}`")]
        if kind.saves_full_model and cfg.train.save_weights != "all":
            return [plan.problem(spec, "train.save_weights", f"method `{cfg.method.name}` hands each stage's whole "
                                 "model to the next only when it is kept: set `train.save_weights: all`")]
        return []

    def start_ref(self, config) -> str | None:
        """The previous stage, when its update is frozen in (`adapter_per_stage`) or the method trains
        the whole model."""
        o = self.options
        if o.previous and (o.strategy == "adapter_per_stage" or config.method.cls.saves_full_model):
            return o.previous
        return None

    def records(self, ctx, metrics):
        train, replayed = stage_records(ctx.spec)
        metrics["replay_examples"] = replayed
        return train, super().records(ctx, metrics)[1]

    def after_method(self, model, tokenizer, ctx):
        """A later stage of an adapter method continues the previous stage's adapter (a full model
        came as the base already)."""
        if continues_weights(ctx.spec) and not ctx.spec.method.cls.saves_full_model:
            _, previous, _, why = ctx.refs.finished(self.options.previous)
            if previous is None:
                raise ValueError(why)
            resume_adapter(model, previous)
        return None

    def before_training(self, model, tokenizer, ctx, val_set, collator, prompts, metrics) -> None:
        """Where the stage starts: stage 0, the base on every scored source (FWT's b); a later stage, on
        the previous stage's domain only (the rest repeats that stage's own scores)."""
        o = self.options
        before = self.scored_sources(ctx) if not o.stage else [o.sequence[o.stage - 1]]
        metrics.update(evaluate_sources(model, tokenizer, ctx.spec, before, ctx.device, prefix="task_eval_before"))

    def trainer_parts(self, model, tokenizer, ctx, train_set, train_records, collator, metrics) -> dict:
        o = self.options
        if o.strategy != "ewc" or not o.stage:
            return {}
        from harness.objectives.parts.ewc import EwcTrainer, ewc_state

        fisher, anchors = ewc_state(model, ctx.spec, tokenizer, collator, ctx.device)
        return {"trainer_cls": EwcTrainer, "fisher": fisher, "anchors": anchors, "strength": o.ewc_lambda}


register(Continual)
