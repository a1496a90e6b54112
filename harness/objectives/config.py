"""The `objective:` section of a run: what the run trains toward (pure pydantic, no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.schema import Section

#: `teacher: run:<run id or slug>` names a run of the store (or of the same grid) as the teacher
TEACHER_RUN = "run:"
#: objectives that learn from (prompt, chosen, rejected) pairs through TRL's trainers
PREFERENCE = ("dpo", "kto")


class LossWeights(Section):
    """Weights of the distillation losses; each ≥ 0, combinable."""

    ce: float = Field(1.0, ge=0, description="cross-entropy on the labels (the SFT loss)")
    kl: float = Field(1.0, ge=0, description="response-based: KL to the teacher's softened tokens, × T²")
    feature: float = Field(0.0, ge=0, description="feature-based: MSE between mapped hidden layers")
    relation: float = Field(0.0, ge=0, description="relation-based: in-batch similarity matrices")


class StudentCfg(Section):
    """A student built from the teacher: its layers `keep_layers` (every_2nd | every_3rd | every_4th | [i, …])."""

    keep_layers: str | list[int] = "every_2nd"


class TeacherCfg(Section):
    """One teacher of an ensemble: a model or `run:<id>`, and its weight in the mixture."""

    model: str
    weight: float = Field(1.0, gt=0)


class TaskCfg(Section):
    """One task of a multi-task mixture: a registered data source, its loss weight and size."""

    name: str
    weight: float = Field(1.0, gt=0, description="multiplies this task's loss")
    n_train: int | None = Field(None, gt=0, description="its training examples; None: `data.n_train`, else "
                                                        "the whole pool (capped at the pool)")


_DISTILL = {"teacher", "teachers", "student", "temperature", "losses", "feature_layers", "schedule",
            "cache_teacher", "cache_top_k"}
_PREFERENCE = {"beta", "loss_type", "start"}
_MULTITASK = {"tasks", "sampling", "task_order", "temperature", "architecture", "task_r", "extend"}
_CONTINUAL = {"sequence", "strategy", "replay_fraction", "ewc_lambda", "ewc_batches", "stage", "chain", "previous"}
_ROUTE = {"adapters", "shared"}
#: the options each objective accepts
OWN = {"sft": set(), "distill": _DISTILL, "dpo": _PREFERENCE, "kto": _PREFERENCE - {"loss_type"},
       "multitask": _MULTITASK, "continual": _CONTINUAL, "route": _ROUTE}
#: continual strategies
STRATEGIES = ("naive", "replay", "ewc", "adapter_per_stage")
#: options added after runs were stored: left out of a run's spec while at their default, so the
#: runs stored before them keep their run ids
_LATE = {"teachers": None, "cache_teacher": False, "cache_top_k": 64}


class ObjectiveCfg(Section):
    """`sft` (the default: cross-entropy on the responses), `distill` (teacher → student), or a
    preference objective, `dpo` or `kto` (chosen over rejected answers, against a frozen reference)."""

    name: Literal["sft", "distill", "dpo", "kto", "multitask", "continual", "route"] = "sft"
    teacher: str | None = Field(None, description="distill: the teacher: a model (alias, folder or hub id), or "
                                                  "`run:<run id>`, the fine-tuned weights of a finished run of the store")
    teachers: list[TeacherCfg] | None = Field(None, description="distill: an ensemble instead of one `teacher`: "
                                                               "their softened distributions mixed by weight")
    student: StudentCfg | None = Field(None, description="distill: a depth-pruned copy of the teacher (of an "
                                                         "ensemble's first); None: the run's `model` is the student")
    temperature: float = Field(2.0, gt=0, description="distill: softening of both distributions (KL × T²); "
                                                      "multitask with `sampling: temperature`: τ in p_i ∝ n_i^(1/τ)")
    losses: LossWeights = LossWeights()
    feature_layers: Literal["auto"] | list[tuple[int, int]] = Field(
        "auto", description="distill: (student layer, teacher layer) pairs of hidden states (0: embeddings); "
                            "auto: each student layer to the teacher layer at the same relative depth")
    schedule: Literal["constant", "linear"] = Field("constant", description="distill: weight of the distillation "
                                                                            "losses over training (linear: to 0)")
    cache_teacher: bool = Field(False, description="distill: compute the teacher's top-k logits once per "
                                                   "(teacher, data) and reuse them from disk")
    cache_top_k: int = Field(64, gt=0, le=4096, description="distill: logits kept per token in the cache")
    beta: float = Field(0.1, gt=0, description="dpo/kto: strength of the pull toward the reference model")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "sppo_hard"] = Field(
        "sigmoid", description="dpo: TRL's loss (sigmoid: the DPO paper's)")
    start: str | None = Field(None, description="dpo/kto: `run:<run id or slug>`, a finished SFT run whose "
                                                "fine-tuned weights are the starting point and the reference")

    tasks: list[TaskCfg] | None = Field(None, description="multitask: the data sources trained together "
                                                          "(names, or {name, weight, n_train})")
    sampling: Literal["proportional", "equal", "temperature"] = Field(
        "proportional", description="multitask: which task each micro-batch comes from: p_i ∝ n_i, 1/K, or n_i^(1/τ)")
    task_order: Literal["stratified", "random"] = Field(
        "stratified", description="multitask: stratified: every prefix of the batches holds each task in its "
                                  "proportion (±1 batch); random: independent draws (short runs stray from it)")
    architecture: Literal["shared", "per_task", "shared_plus_task"] = Field(
        "shared", description="multitask: one adapter for all tasks; one adapter per task, switched per batch; "
                              "or a shared adapter plus a small one per task")
    task_r: int = Field(4, gt=0, description="multitask shared_plus_task: rank of each task's own adapter")
    extend: str | None = Field(None, description="multitask: `run:<slug>`, a finished per_task / shared_plus_task "
                                                 "run whose adapters are kept frozen; only the new `tasks` train")
    sequence: list[str] | None = Field(None, description="continual: data sources trained one after another")
    strategy: Literal["naive", "replay", "ewc", "adapter_per_stage"] = Field(
        "naive", description="continual: how earlier stages are protected")
    replay_fraction: float = Field(0.2, ge=0, lt=1, description="continual replay: share of each later stage's "
                                                                 "examples drawn from earlier stages")
    ewc_lambda: float = Field(1000.0, ge=0, description="continual ewc: λ of λ/2 · Σ F (θ − θ*)²")
    ewc_batches: int = Field(8, gt=0, description="continual ewc: batches of the previous stage's data for the Fisher")
    stage: int | None = Field(None, ge=0, description="continual: set by the grid (one run per stage)")
    chain: str | None = Field(None, description="continual: set by the grid (the slug shared by a chain's stages)")
    previous: str | None = Field(None, description="continual: set by the grid (`run:<slug>` of the stage before)")
    adapters: dict[str, str] | None = Field(None, description="route: {source: run:<slug>} one adapter per domain")
    shared: str | None = Field(None, description="route: `run:<slug>`, a single adapter for every domain to compare")

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names(cls, value):
        return [{"name": t} if isinstance(t, str) else t for t in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _options_belong_to_the_objective(self):
        own = OWN[self.name]
        extra = sorted(self.model_fields_set - own - {"name"})
        if extra:
            users = [n for n, opts in OWN.items() if extra[0] in opts]
            raise ValueError(f"`{extra[0]}` applies to objective `{users[0] if users else '?'}`, not `{self.name}`")
        if self.name == "distill":
            if (self.teacher is None) == (self.teachers is None):
                raise ValueError("objective `distill` needs a `teacher` (a model alias, folder, hub id or run:<id>) "
                                 "or `teachers` (a list of {model, weight}), not both")
            if self.teachers is not None and not self.teachers:
                raise ValueError("`teachers` must name at least one teacher")
            hidden = [name for name in ("feature", "relation") if getattr(self.losses, name) > 0]
            if hidden and self.teachers is not None:
                raise ValueError(f"an ensemble teaches through its mixed token distribution: `losses.{hidden[0]}` "
                                 "needs one `teacher`'s hidden states")
            if hidden and self.cache_teacher:
                raise ValueError(f"`cache_teacher` keeps the teacher's top-k logits, not its hidden states: "
                                 f"`losses.{hidden[0]}` needs the teacher on the fly (cache_teacher: false)")
        if self.name == "multitask" and not self.tasks:
            raise ValueError("objective `multitask` needs `tasks`: at least one data source")
        if self.extend is not None and self.architecture == "shared":
            raise ValueError("`extend` adds task adapters to a per_task or shared_plus_task run; a `shared` adapter "
                             "has nothing per task to add (train a new run on all the tasks)")
        if self.tasks and len({t.name for t in self.tasks}) != len(self.tasks):
            raise ValueError(f"`tasks` names a source twice: {[t.name for t in self.tasks]}")
        if self.name == "continual":
            if not self.sequence or len(self.sequence) < 2:
                raise ValueError(f"objective `continual` needs a `sequence` of at least 2 data sources, "
                                 f"not {self.sequence}")
            if len(set(self.sequence)) != len(self.sequence):
                raise ValueError(f"`sequence` names a source twice: {self.sequence}")
        if self.name == "route" and not self.adapters or self.adapters is not None and len(self.adapters) < 2:
            raise ValueError("objective `route` needs `adapters`: at least 2 {source: run:<slug>} entries")
        refs = [("shared", self.shared), ("previous", self.previous), ("extend", self.extend),
                *((f"adapters.{k}", v) for k, v in (self.adapters or {}).items())]
        for field, ref in refs:
            if ref is not None and not ref.startswith(TEACHER_RUN):
                raise ValueError(f"`{field}` names a finished run of the store: `{TEACHER_RUN}<run id or slug>`, "
                                 f"not `{ref}`")
        if self.start is not None and not self.start.startswith(TEACHER_RUN):
            raise ValueError(f"`start` names a finished run of the store: `{TEACHER_RUN}<run id or slug>`, "
                             f"not `{self.start}`")
        return self

    @property
    def is_default(self) -> bool:
        return self.name == "sft"

    @property
    def is_preference(self) -> bool:
        return self.name in PREFERENCE

    def sources(self) -> list[str]:
        """The data sources a multitask or continual run trains on, in order."""
        return [t.name for t in self.tasks] if self.name == "multitask" else list(self.sequence or [])

    def teacher_list(self) -> list[TeacherCfg]:
        """The teachers as one list (a single `teacher` has weight 1)."""
        return list(self.teachers) if self.teachers is not None else [TeacherCfg(model=self.teacher)]

    def run_refs(self) -> list[tuple[str, str]]:
        """(field, `run:<name>`) for each run of the store this objective reads: teachers, start point."""
        refs = [("teacher" if self.teachers is None else f"teachers[{i}].model", t.model)
                for i, t in enumerate(self.teacher_list())] if self.name == "distill" else []
        refs += [("start", self.start)] if self.start else []
        refs += [("previous", self.previous)] if self.previous else []
        refs += [("extend", self.extend)] if self.extend else []
        refs += [(f"adapters.{k}", v) for k, v in (self.adapters or {}).items()]
        refs += [("shared", self.shared)] if self.shared else []
        return [(field, ref) for field, ref in refs if ref.startswith(TEACHER_RUN)]

    def as_dict(self) -> dict:
        """The run-spec form: only this objective's own options (late ones only when set)."""
        own = OWN[self.name]
        dumped = self.model_dump()
        return {"name": self.name, **{k: v for k, v in dumped.items()
                                      if k in own and not (k in _LATE and v == _LATE[k])}}
