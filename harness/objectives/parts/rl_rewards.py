"""Rule rewards for the RL objectives (`reward: <name>` instead of `reward: run:<reward run>`): small
verifiable functions of a completion and its record's expected answer (the record's `response`), in a
registry like every other named thing.

- `exact_answer`: 1 when the completion's first word is the expected answer (case and punctuation aside),
  else 0 — the `sentiment` source's label (negative/positive) checked exactly.
- `answer_chars`: the share of the completion's letters that occur in the expected answer — a shaped,
  always-informative cousin of `exact_answer` that a policy far from the answer can still climb (the
  tests use it on a random-init model, whose samples never hit the exact answer).
"""

from __future__ import annotations

import re
from typing import Callable

from harness.registry import Registry

#: name → fn(completion text, expected answer) -> float
RULE_REWARDS: Registry[Callable[[str, str], float]] = Registry("rule reward")
_WORD = re.compile(r"[a-z0-9]+")


def exact_answer(completion: str, answer: str) -> float:
    """1.0 when the completion's first word equals the answer's (lower-cased, punctuation dropped)."""
    got, want = _WORD.findall(completion.lower()), _WORD.findall(answer.lower())
    return float(bool(got) and bool(want) and got[0] == want[0])


def answer_chars(completion: str, answer: str) -> float:
    """Share of the completion's letters that occur in the answer (0 for a completion without letters)."""
    letters = [ch for ch in completion.lower() if ch.isalpha()]
    wanted = set(answer.lower())
    return sum(ch in wanted for ch in letters) / len(letters) if letters else 0.0


RULE_REWARDS.register("exact_answer", exact_answer)
RULE_REWARDS.register("answer_chars", answer_chars)


class RuleReward:
    """A rule reward as TRL's reward function: `fn(prompts, completions, answer=[...]) -> [float]` (`answer` is
    the dataset column of the expected answers, repeated per generation by TRL)."""

    def __init__(self, name: str):
        self.__name__ = name
        self.rule = RULE_REWARDS.get(name)

    def __call__(self, prompts: list[str], completions: list[str], answer: list[str] | None = None, **_) -> list[float]:
        answers = answer if answer is not None else [""] * len(completions)
        return [self.rule(c if isinstance(c, str) else str(c), a) for c, a in zip(completions, answers)]


def check_reward(value: str | None) -> str | None:
    """A `reward` option is `run:<slug of a finished reward run>` or a registered rule reward."""
    from harness.objectives.base import RUN_REF

    if value is not None and not value.startswith(RUN_REF) and value not in RULE_REWARDS:
        raise ValueError(f"`reward` is `{RUN_REF}<slug of a finished reward run>` or a rule reward "
                         f"({', '.join(RULE_REWARDS.names())}), not `{value}`")
    return value
