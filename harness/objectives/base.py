"""The objective interface and its registry: each objective is one module that registers itself.

An objective decides what a run trains toward (SFT cross-entropy, distillation, DPO, …). The sweep
and the recipe never ask which objective they have: they call the hooks below, whose defaults are
plain supervised fine-tuning. A module `harness/objectives/<name>.py` holds an `Options` model (its
own YAML options, `extra="forbid"`) and an `Objective` subclass, and ends with `register(...)`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from harness.context import RunContext
from harness.registry import Registry
from harness.schema import Section

#: `teacher: run:<run id or slug>`, `start: run:<…>`: a finished run of the store (or of the grid)
RUN_REF = "run:"
#: the objective of a run that names none
DEFAULT = "sft"
#: the column of `harness.store.load`'s frame that holds a run's objective (missing: the default)
SPEC_COLUMN = "objective.name"


class ObjectiveOptions(Section):
    """The `objective:` section of a run; each objective subclasses it with its own options."""

    name: str = Field(DEFAULT, description="the registered objective")

    #: options added after runs were stored: left out of the run spec while at this default, so the
    #: runs stored before them keep their run ids
    late: ClassVar[dict[str, Any]] = {}
    #: the options that name a finished run (`run:<…>`), as (field, value) pairs by `run_refs`
    ref_fields: ClassVar[tuple[str, ...]] = ()

    def sources(self) -> list[str]:
        """The data sources the run trains on, beyond `data.name` (a multitask mixture, a sequence)."""
        return []

    def run_refs(self) -> list[tuple[str, str]]:
        """(field, `run:<name>`) for every finished run this objective reads (teachers, start point …)."""
        refs = []
        for field in self.ref_fields:
            value = getattr(self, field)
            if isinstance(value, dict):
                refs += [(f"{field}.{k}", v) for k, v in value.items()]
            elif value is not None:
                refs.append((field, value))
        return [(field, ref) for field, ref in refs if isinstance(ref, str) and ref.startswith(RUN_REF)]

    def as_dict(self) -> dict:
        """The run-spec form: the name and every option (late ones only when set)."""
        dumped = self.model_dump()
        return {"name": self.name, **{k: v for k, v in dumped.items()
                                      if k != "name" and not (k in self.late and v == self.late[k])}}

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT

    def build(self) -> "Objective":
        return OBJECTIVES.get(self.name)(self)


def check_run_ref(field: str, value: str | None) -> None:
    """A field that names a finished run must be `run:<run id or slug>`.

    Raises:
        ValueError: it is something else.
    """
    if value is not None and not value.startswith(RUN_REF):
        raise ValueError(f"`{field}` names a finished run of the store: `{RUN_REF}<run id or slug>`, not `{value}`")


class StartOptions(ObjectiveOptions):
    """Options of an objective that starts from a finished run's fine-tuned weights (`start: run:<…>`)."""

    start: str | None = Field(None, description="`run:<run id or slug>`, a finished SFT run whose fine-tuned "
                                                "weights this run starts from")
    ref_fields: ClassVar[tuple[str, ...]] = ("start",)

    @field_validator("start")
    @classmethod
    def _start_is_a_run(cls, value):
        check_run_ref("start", value)
        return value


class Objective:
    """What a run trains toward. Hooks default to supervised fine-tuning on `data`.

    Subclasses set `name`, `Options`, `description`, and override the hooks they need. An instance
    lives for one run (or one preflight check) and may keep state between hooks (a teacher model).
    """

    name: ClassVar[str]
    Options: ClassVar[type[ObjectiveOptions]] = ObjectiveOptions
    description: ClassVar[str] = ""
    #: report sections (`harness/report/sections`) that show this objective's runs
    report_sections: ClassVar[tuple[str, ...]] = ()
    #: metric keys (declared in `harness.metrics`) every `ok` run of this objective records, non-null
    metrics: ClassVar[tuple[str, ...]] = ()
    #: options its `slug_prefix` already shows (a grid axis over them adds nothing to the slug)
    slug_options: ClassVar[tuple[str, ...]] = ()
    #: False: the run trains nothing itself (a router over finished runs): `run` replaces the recipe
    fine_tunes: ClassVar[bool] = True
    #: False: the trained model writes no text (a reward model's scalar head): no generation latency
    generates: ClassVar[bool] = True

    def __init__(self, options: ObjectiveOptions):
        self.options = options

    # --- the plan (pure: no torch, no model) -----------------------------------------------------

    def slug_prefix(self) -> str | None:
        """What a run's readable name starts with (`dpo`, `distill-kl`, …); None: the method's name."""
        return None

    def stages(self, config, slug: str) -> list[tuple[str, Any]] | None:
        """One run per stage (continual learning): [(stage slug, its RunConfig)], or None for one run."""
        return None

    def source_fields(self) -> list[tuple[str, str]]:
        """(field under `objective.`, source name) for every data source this objective names."""
        return []

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        """Problems only the plan shows (models, runs read, method fit), as (file, field, message).

        Args:
            spec: the grid point (`RunSpec`).
            plan: a `harness.preflight.PlanChecks` (resolves `run:` references, reads model configs).
        """
        return []

    def start_ref(self, config) -> str | None:
        """The `run:` whose merged weights are this run's base model (None: `model` as loaded)."""
        return None

    def held_models(self, config) -> list[str]:
        """Models this objective holds frozen beside the trained one while it trains (a teacher, a full
        reference copy, a reward model): model names or `run:` references. The memory estimate adds their
        weights. [] by default."""
        return []

    def held_model_names(self, config, resolve) -> list[str]:
        """`held_models` as model names: each `run:` reference through `resolve(ref)` (its run's model name, or
        None where it cannot be known: left out)."""
        names = []
        for ref in self.held_models(config):
            name = resolve(ref) if ref.startswith(RUN_REF) else ref
            if name is not None:
                names.append(name)
        return names

    def single_model(self, config) -> str | None:
        """Why a run of this objective cannot be rebuilt as one model from `model` + its saved
        weights (for rescoring and as a teacher), or None when it can."""
        return None

    # --- the run (in its own process) ---------------------------------------------------------------

    def run(self, ctx: RunContext, metrics: dict) -> None:
        """The whole run, when `fine_tunes` is False."""
        raise NotImplementedError

    def load(self, ctx: RunContext):
        """(model, tokenizer) to apply the method to: the run's `model`, or the merged weights of the
        run it starts from."""
        from harness import models

        start = self.start_ref(ctx.spec)
        if start:
            folder = ctx.refs.model_folder(start)
            return models.load(ctx.spec.model.model_copy(update={"name": str(folder)}), ctx.device, ctx.spec.train)
        return models.load(ctx.spec.model, ctx.device, ctx.spec.train)

    def records(self, ctx: RunContext, metrics: dict) -> tuple[list, list[dict]]:
        """(training records, validation records) of the run's data."""
        from harness.data import DATASETS
        from harness.data.base import split, train_subset

        spec = ctx.spec
        splits = split(DATASETS.get(spec.data.name)().records(spec.data), spec.data)
        return train_subset(splits.train_pool, spec.data.n_train, spec.seed), splits.val

    def test_set(self, ctx: RunContext, tokenizer) -> list[dict]:
        """The test split of `data`, tokenized as the validation split is: scored once, after everything
        else, and never used to choose anything. [] when `data.n_test` is 0."""
        from harness.data import DATASETS
        from harness.data.base import split
        from harness.data.tokenize import encode_all

        spec = ctx.spec
        if not spec.data.n_test:
            return []
        splits = split(DATASETS.get(spec.data.name)().records(spec.data), spec.data)
        return encode_all(tokenizer, splits.test, spec.data, spec.train.seq_len)

    def encode(self, ctx: RunContext, tokenizer, train_records: list, val_records: list[dict]):
        """(train set, validation set) tokenized with response-only labels."""
        from harness.data.tokenize import encode_all

        spec = ctx.spec
        return (encode_all(tokenizer, train_records, spec.data, spec.train.seq_len),
                encode_all(tokenizer, val_records, spec.data, spec.train.seq_len))

    def after_method(self, model, tokenizer, ctx: RunContext):
        """Objective weights on the applied method (task adapters, a previous stage's adapter).
        Returns `activate(task)` when the model switches adapters per task, else None."""
        return None

    def before_training(self, model, tokenizer, ctx: RunContext, val_set: list[dict], collator,
                        prompts: list[str], metrics: dict) -> None:
        """Figures taken before training (a teacher's, a stage's starting scores)."""

    def trainer_parts(self, model, tokenizer, ctx: RunContext, train_set: list[dict], train_records: list,
                      collator, metrics: dict) -> dict:
        """What `_train` passes on: `trainer_cls` and its keyword arguments, and optionally
        `args_cls`/`args` (TrainingArguments class and extra arguments), `train_set` and `collator`
        replacing the recipe's, `packing` False for trainers that pad their own batches."""
        return {}

    def after_training(self, trainer, model, tokenizer, ctx: RunContext, train_records: list,
                       val_records: list[dict], val_set: list[dict], collator, metrics: dict) -> None:
        """Figures of the trained model that only this objective measures (before the common evaluation)."""

    def validation(self, model, ctx: RunContext, val_set: list[dict], collator, metrics: dict):
        """The common evaluation's pass over the validation split: per-example response-token losses
        (`harness.evaluate.ExampleLosses`), or None where the model scores no tokens (a reward model,
        whose own held-out figures go into `metrics` here, inside the timed evaluation)."""
        from harness.evaluate import example_losses

        return example_losses(model, val_set, collator, ctx.spec.eval.batch_size, ctx.device)

    def trained_sources(self, ctx: RunContext) -> list[str]:
        """The sources whose validation splits are scored as trained-on (a mixture's tasks, a sequence)."""
        return self.options.sources()

    def scored_sources(self, ctx: RunContext) -> list[str]:
        """The sources whose validation splits the run scores: `eval.sources`, then what it trained on."""
        return list(dict.fromkeys([*ctx.spec.eval.sources, *self.trained_sources(ctx)]))

    def finish(self, metrics: dict) -> None:
        """Figures derived from the others once every figure is in (a student's share of its teacher)."""


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def register(cls: type[Objective]) -> type[Objective]:
    """Register an objective class under its `name`; its Options' `name` defaults to the same.

    Raises:
        ValueError: the name is taken, or the Options name another objective.
    """
    if cls.Options.model_fields["name"].default != cls.name:
        raise ValueError(f"objective `{cls.name}`: its Options must declare `name: Literal[{cls.name!r}] = {cls.name!r}`")
    OBJECTIVES.register(cls.name, cls)
    return cls


def default_options() -> ObjectiveOptions:
    """The options of a run that names no objective."""
    return OBJECTIVES.get(DEFAULT).Options()


def sections_of(section: str) -> list[str]:
    """The objectives whose runs a report section shows."""
    return [n for n in OBJECTIVES.names() if section in OBJECTIVES.get(n).report_sections]
