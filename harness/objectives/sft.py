"""Objective `sft` (the default): cross-entropy on the responses of `data`, nothing else."""

from __future__ import annotations

from typing import Literal

from harness.objectives.base import Objective, ObjectiveOptions, register


class SftOptions(ObjectiveOptions):
    name: Literal["sft"] = "sft"


class Sft(Objective):
    name = "sft"
    Options = SftOptions
    description = "supervised fine-tuning: cross-entropy on the responses (the recipe's defaults)"
    report_sections = ("single_task",)
    metrics = ("train_loss", "eval_loss", "eval_ppl", "train_tokens_per_s", "peak_mem_train_mb")


register(Sft)
