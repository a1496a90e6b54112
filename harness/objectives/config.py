"""The `objective:` section of a run: what the run trains toward (pure pydantic, no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harness.schema import Section

#: `teacher: run:<run id or slug>` names a run of the store (or of the same grid) as the teacher
TEACHER_RUN = "run:"


class LossWeights(Section):
    """Weights of the distillation losses; each ≥ 0, combinable."""

    ce: float = Field(1.0, ge=0, description="cross-entropy on the labels (the SFT loss)")
    kl: float = Field(1.0, ge=0, description="response-based: KL to the teacher's softened tokens, × T²")
    feature: float = Field(0.0, ge=0, description="feature-based: MSE between mapped hidden layers")
    relation: float = Field(0.0, ge=0, description="relation-based: in-batch similarity matrices")


class StudentCfg(Section):
    """A student built from the teacher: its layers `keep_layers` (every_2nd | every_3rd | every_4th | [i, …])."""

    keep_layers: str | list[int] = "every_2nd"


class ObjectiveCfg(Section):
    """`sft` (the default: cross-entropy on the responses) or `distill` (teacher → student)."""

    name: Literal["sft", "distill"] = "sft"
    teacher: str | None = Field(None, description="distill: the teacher: a model (alias, folder or hub id), or "
                                                  "`run:<run id>`, the fine-tuned weights of a finished run of the store")
    student: StudentCfg | None = Field(None, description="distill: a depth-pruned copy of the teacher; "
                                                         "None: the run's `model` is the student")
    temperature: float = Field(2.0, gt=0, description="distill: softening of both distributions (KL × T²)")
    losses: LossWeights = LossWeights()
    feature_layers: Literal["auto"] | list[tuple[int, int]] = Field(
        "auto", description="distill: (student layer, teacher layer) pairs of hidden states (0: embeddings); "
                            "auto: each student layer to the teacher layer at the same relative depth")
    schedule: Literal["constant", "linear"] = Field("constant", description="distill: weight of the distillation "
                                                                            "losses over training (linear: to 0)")

    @model_validator(mode="after")
    def _options_belong_to_the_objective(self):
        distill_only = {"teacher", "student", "temperature", "losses", "feature_layers", "schedule"}
        if self.name == "sft":
            extra = sorted(distill_only & self.model_fields_set)
            if extra:
                raise ValueError(f"`{extra[0]}` applies to objective `distill`, not `sft`")
        elif self.teacher is None:
            raise ValueError("objective `distill` needs a `teacher` (a model alias, folder or hub id)")
        return self

    @property
    def is_default(self) -> bool:
        return self.name == "sft"
