"""Objective `multitask`: several data sources trained at once, one task per micro-batch.

Architectures (peft adapters over one shared base):
- `shared`: the method's adapter learns every task;
- `per_task`: one adapter per task (`task_<name>`), the batch's task picks the active one
  (dynamic task switching), so tasks share only the frozen base;
- `shared_plus_task`: the method's adapter plus a small one per task (rank `task_r`), both active.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from harness.objectives.base import Objective, ObjectiveOptions, check_run_ref, register
from harness.objectives.parts.domains import source_cfg, source_splits, source_train
from harness.objectives.parts.mixing import batch_schedule, mixture_probabilities
from harness.schema import Section

class TaskCfg(Section):
    """One task of a multi-task mixture: a registered data source, its loss weight and size."""

    name: str
    weight: float = Field(1.0, gt=0, description="multiplies this task's loss")
    n_train: int | None = Field(None, gt=0, description="its training examples; None: `data.n_train`, else "
                                                        "the whole pool (capped at the pool)")


class MultitaskOptions(ObjectiveOptions):
    """Several data sources trained at once, one task per micro-batch."""

    name: Literal["multitask"] = "multitask"
    tasks: list[TaskCfg] | None = Field(None, description="the data sources trained together "
                                                          "(names, or {name, weight, n_train})")
    sampling: Literal["proportional", "equal", "temperature"] = Field(
        "proportional", description="which task each micro-batch comes from: p_i ∝ n_i, 1/K, or n_i^(1/τ)")
    task_order: Literal["stratified", "random"] = Field(
        "stratified", description="stratified: every prefix of the batches holds each task in its proportion "
                                  "(±1 batch); random: independent draws (short runs stray from it)")
    temperature: float = Field(2.0, gt=0, description="τ of `sampling: temperature`, p_i ∝ n_i^(1/τ)")
    architecture: Literal["shared", "per_task", "shared_plus_task"] = Field(
        "shared", description="one adapter for all tasks; one adapter per task, switched per batch; or a shared "
                              "adapter plus a small one per task")
    task_r: int = Field(4, gt=0, description="shared_plus_task: rank of each task's own adapter")
    extend: str | None = Field(None, description="`run:<slug>`, a finished per_task / shared_plus_task run whose "
                                                 "adapters are kept frozen; only the new `tasks` train")
    ref_fields: ClassVar[tuple[str, ...]] = ("extend",)

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names(cls, value):
        return [{"name": t} if isinstance(t, str) else t for t in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _a_mixture(self):
        if not self.tasks:
            raise ValueError("objective `multitask` needs `tasks`: at least one data source")
        if self.extend is not None and self.architecture == "shared":
            raise ValueError("`extend` adds task adapters to a per_task or shared_plus_task run; a `shared` adapter "
                             "has nothing per task to add (train a new run on all the tasks)")
        if len({t.name for t in self.tasks}) != len(self.tasks):
            raise ValueError(f"`tasks` names a source twice: {[t.name for t in self.tasks]}")
        check_run_ref("extend", self.extend)
        return self

    def sources(self) -> list[str]:
        return [t.name for t in self.tasks]


def task_records(spec) -> list[list[dict]]:
    """Each task's training records: its `n_train`, else `data.n_train`, capped at its pool."""
    return [source_train(spec.data, t.name, t.n_train or spec.data.n_train, spec.seed)
            for t in spec.objective.tasks]


def schedule(spec, encoded: list[list[dict]], n_batches: int) -> list[dict]:
    """The training stream: `n_batches` micro-batches, each from one task chosen by the sampling
    strategy and `task_order`, laid out in order; every example carries its `task_id`."""
    objective = spec.objective
    sizes = [len(e) for e in encoded]
    probs = mixture_probabilities(sizes, objective.sampling, objective.temperature)
    stream = []
    for task, picked in batch_schedule(sizes, probs, n_batches, spec.train.micro_batch, seed=spec.seed,
                                        order=objective.task_order):
        stream.extend({**encoded[task][i], "task_id": task} for i in picked)
    return stream


def examples_seen(spec, stream: list[dict]) -> dict:
    """`task_eval.<task>.examples_seen`: how many training examples each task contributed."""
    counts = [0] * len(spec.objective.tasks)
    for example in stream:
        counts[example["task_id"]] += 1
    return {f"task_eval.{t.name}.examples_seen": n for t, n in zip(spec.objective.tasks, counts)}


def validation(spec) -> list[dict]:
    """Every task's validation records (for the run's overall eval loss)."""
    return [r for t in spec.objective.tasks for r in source_splits(spec.data, t.name).val]


class Multitask(Objective):
    """A mixture of data sources; one adapter for all, one per task, or shared plus per task."""

    name = "multitask"
    Options = MultitaskOptions
    description = "multi-task learning: several sources at once, shared or per-task adapters, task sampling"
    report_sections = ("multitask",)
    metrics = ("eval_loss",)
    slug_options = ("architecture",)

    def slug_prefix(self) -> str:  # `mt_per_task-lora-…`, `mt_shared-equal-…`, `mt_shared-t2-…`
        o = self.options
        sampling = {"proportional": "", "equal": "-equal"}.get(o.sampling, f"-t{o.temperature:g}")
        return f"mt_{o.architecture}{sampling}" + ("-extend" if o.extend else "")

    def source_fields(self) -> list[tuple[str, str]]:
        return [(f"tasks[{i}].name", t.name) for i, t in enumerate(self.options.tasks)]

    def single_model(self, config) -> str | None:
        if self.options.architecture != "shared":
            return "its task adapters are chosen per task; one model cannot stand for the run"
        return None

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        """The architecture fits the method; an `extend` run matches this one."""
        from harness.methods.peft_base import PeftMethod

        cfg, o = spec.config, self.options
        if o.architecture != "shared" and (not issubclass(cfg.method.cls, PeftMethod) or (
                o.architecture == "shared_plus_task" and not hasattr(cfg.method.options, "alpha"))):
            need = "a peft adapter method" if o.architecture == "per_task" else "a LoRA-family method (r, alpha)"
            return [plan.problem(spec, "method", f"architecture `{o.architecture}` switches adapters per task: it "
                                 f"needs {need}, not `{cfg.method.name}`")]
        return self._check_extend(spec, plan) if o.extend else []

    def _check_extend(self, spec, plan) -> list[tuple[str, str, str]]:
        """`extend`: a multitask run of the same architecture, method and model, without the new tasks."""
        o = self.options
        _, old, found = plan.resolve(spec, o.extend, "extend")
        if old is None:
            return found
        before = old.objective
        if not isinstance(before, MultitaskOptions) or before.architecture != o.architecture:
            kind = before.architecture if isinstance(before, MultitaskOptions) else f"objective `{before.name}`"
            return [plan.problem(spec, "objective.extend", f"`{o.extend}` must be a multitask run with architecture "
                                 f"`{o.architecture}`, not {kind}")]
        if old.method != spec.config.method or old.model != spec.config.model:
            return [plan.problem(spec, "objective.extend", f"`{o.extend}` trained `{old.method.name}` on "
                                 f"`{old.model.name}`: an extension needs the same method options and model")]
        again = sorted(set(before.sources()) & set(o.sources()))
        if again:
            return [plan.problem(spec, "objective.tasks", f"`{again[0]}` is already a task of `{o.extend}`: "
                                 "list only the new tasks")]
        return []

    def records(self, ctx, metrics):
        return task_records(ctx.spec), validation(ctx.spec)

    def test_set(self, ctx, tokenizer):
        """None: a mixture's loss is each task's with its own adapters (a test split per task is not scored yet)."""
        return []

    def encode(self, ctx, tokenizer, train_records, val_records):
        """Each task's examples, laid out in single-task micro-batches by the sampling schedule."""
        from harness.data.tokenize import encode_all

        spec = ctx.spec
        per_task = [encode_all(tokenizer, records, source_cfg(spec.data, task.name), spec.train.seq_len)
                    for task, records in zip(self.options.tasks, train_records)]
        empty = [t.name for t, e in zip(self.options.tasks, per_task) if not e]
        if empty:
            raise ValueError(f"task `{empty[0]}` has no usable examples after truncation to seq_len={spec.train.seq_len}")
        batches = (spec.train.max_steps * spec.train.grad_accum if spec.train.max_steps else
                   math.ceil(sum(map(len, per_task)) * spec.train.epochs / spec.train.micro_batch))
        return schedule(spec, per_task, batches), encode_all(tokenizer, val_records, spec.data, spec.train.seq_len)

    def after_method(self, model, tokenizer, ctx):
        from harness.objectives.parts.task_adapters import add_task_adapters

        self.activate = add_task_adapters(model, ctx.spec, ctx.refs)
        return self.activate

    def trainer_parts(self, model, tokenizer, ctx, train_set, train_records, collator, metrics) -> dict:
        from harness.objectives.parts.task_adapters import MultitaskTrainer, TaskCollator

        metrics.update(examples_seen(ctx.spec, train_set))
        return {"trainer_cls": MultitaskTrainer, "collator": TaskCollator(collator), "tasks": self.options.sources(),
                "weights": [t.weight for t in self.options.tasks], "activate": self.activate}

    def trained_sources(self, ctx) -> list[str]:
        from harness.objectives.parts.task_adapters import extended_tasks

        return [*extended_tasks(ctx.spec, ctx.refs)[0], *self.options.sources()]


register(Multitask)
