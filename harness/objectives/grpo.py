"""Objective `grpo` (Shao et al. 2024, DeepSeekMath) through TRL's GRPOTrainer: RLHF's online step with
group-relative advantages — each completion's reward minus its prompt group's mean, over the group's
standard deviation — clipped like PPO, and a KL pull of strength `beta` toward the start model. No value
model: one policy (plus, for full fine-tuning with beta > 0, a frozen reference copy) in memory."""

from __future__ import annotations

from typing import Literal

from harness.objectives.base import register
from harness.objectives.parts.rl import RlObjective, RlOptions


class GrpoOptions(RlOptions):
    name: Literal["grpo"] = "grpo"


class Grpo(RlObjective):
    name = "grpo"
    Options = GrpoOptions
    description = "online RL (TRL GRPOTrainer): group-normalised advantages, KL to the start model"

    def trl_classes(self):
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer, GRPOConfig


register(Grpo)
