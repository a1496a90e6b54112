"""Objective `dpo` (Rafailov et al. 2023) through TRL's DPOTrainer: chosen over rejected answers,
against a frozen reference model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.objectives.base import register
from harness.objectives.parts.held_out_reward import ScoredUnderReward
from harness.objectives.parts.preference import PreferenceObjective, PreferenceOptions, trl_rows


class DpoOptions(PreferenceOptions):
    name: Literal["dpo"] = "dpo"
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "sppo_hard"] = Field(
        "sigmoid", description="TRL's loss (sigmoid: the DPO paper's)")


class Dpo(ScoredUnderReward, PreferenceObjective):
    name = "dpo"
    Options = DpoOptions
    description = "direct preference optimisation (TRL DPOTrainer) against a frozen reference"
    metrics = (*PreferenceObjective.metrics, "kl_to_ref")

    def slug_prefix(self) -> str:  # `dpo-lora-…`, `dpo_ipo-lora-…`
        loss = self.options.loss_type
        return "dpo" if loss == "sigmoid" else f"dpo_{loss}"

    def trl_parts(self, tokenizer, records, data_cfg, seq_len):
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        options = {"beta": self.options.beta, "loss_type": [self.options.loss_type], "max_length": seq_len}
        return DPOTrainer, DPOConfig, options, Dataset.from_list(trl_rows(tokenizer, records, data_cfg))


register(Dpo)
