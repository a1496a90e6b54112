"""Objective `kto` (Ethayarajh et al. 2024) through TRL's KTOTrainer: the pairs unpaired into
desirable and undesirable answers, against a frozen reference model."""

from __future__ import annotations

from typing import Literal

from harness.objectives.base import register
from harness.objectives.parts.held_out_reward import ScoredUnderReward
from harness.objectives.parts.preference import PreferenceObjective, PreferenceOptions, trl_rows


class KtoOptions(PreferenceOptions):
    name: Literal["kto"] = "kto"


class Kto(ScoredUnderReward, PreferenceObjective):
    name = "kto"
    Options = KtoOptions
    description = "Kahneman-Tversky optimisation (TRL KTOTrainer): desirable/undesirable answers, frozen reference"
    metrics = (*PreferenceObjective.metrics, "kl_to_ref")

    def check(self, spec, plan):
        problems = super().check(spec, plan)
        if spec.config.train.micro_batch < 2:
            problems.append(plan.problem(spec, "train.micro_batch", "objective `kto` estimates its KL term from "
                                         "mismatched pairs of a batch: use micro_batch >= 2"))
        return problems

    def trl_parts(self, tokenizer, records, data_cfg, seq_len):
        from datasets import Dataset
        from trl import KTOConfig, KTOTrainer

        rows = [{"prompt": row["prompt"], "completion": row[side], "label": side == "chosen"}
                for row in trl_rows(tokenizer, records, data_cfg) for side in ("chosen", "rejected")]
        return KTOTrainer, KTOConfig, {"beta": self.options.beta, "max_length": seq_len}, Dataset.from_list(rows)


register(Kto)
