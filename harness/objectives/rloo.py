"""Objective `rloo` (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
Learning from Human Feedback") through TRL's RLOOTrainer: REINFORCE with a leave-one-out baseline — each
completion's reward minus the mean of the other completions of its prompt — and the KL to the start model
(strength `beta`) folded into the reward. PPO's successor in TRL; no value model."""

from __future__ import annotations

from typing import Literal

from harness.objectives.base import register
from harness.objectives.parts.rl import RlObjective, RlOptions


class RlooOptions(RlOptions):
    name: Literal["rloo"] = "rloo"


class Rloo(RlObjective):
    name = "rloo"
    Options = RlooOptions
    description = "online RL (TRL RLOOTrainer): leave-one-out REINFORCE baseline, KL to the start model"

    def trl_classes(self):
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer, RLOOConfig


register(Rloo)
