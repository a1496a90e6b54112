"""Scoring a policy under a reward on held-out prompts: what the online-RL objectives (`grpo`, `rloo`) report
as their outcome, and what the preference objectives (`dpo`, `kto`, `orpo`) report when given the same reward
(`objective.reward`), so that RL and offline preference tuning from one start compare on one scale.

One sample per held-out prompt at the given temperature, reproducible by the run's seed (the same draws before
and after training), scored by a finished `reward` run (loaded once, frozen) or a rule reward.
"""

from __future__ import annotations

import math

from harness.objectives.base import RUN_REF


def reward_problems(spec, plan, options) -> list[tuple[str, str, str]]:
    """The reward options of `options`: a `reward: run:<…>` names a finished (or planned) `reward` run; a
    `held_out_reward` checks `reward` — it needs one, must differ from it, and as a run is a reward run."""
    problems = _reward_run_problems(spec, plan, options.reward, "reward")
    held, field = options.held_out_reward, "objective.held_out_reward"
    if held is None:
        return problems
    if options.reward is None:
        return [*problems, plan.problem(spec, field, "scores the held-out samples that `objective.reward` draws: "
                                        "set `reward` too (the reward this one checks)")]
    if held == options.reward:
        return [*problems, plan.problem(spec, field, f"is the training reward `{held}` itself: name a second reward "
                                        "model the policy never trains against (another seed's reward run: other "
                                        "pairs, another head)")]
    return [*problems, *_reward_run_problems(spec, plan, held, "held_out_reward")]


def _reward_run_problems(spec, plan, reward: str | None, field: str) -> list[tuple[str, str, str]]:
    """A `run:<…>` reward option names a finished (or planned) run of objective `reward`."""
    if reward is None or not reward.startswith(RUN_REF):
        return []
    _, reward_run, found = plan.resolve(spec, reward, field)
    if reward_run is not None and reward_run.objective.name != "reward":
        found = [*found, plan.problem(spec, f"objective.{field}", f"`{reward}` is a `{reward_run.objective.name}` "
                                      "run, not a `reward` run (objective: reward); name a reward model's run or "
                                      "a rule reward")]
    return found


def reward_function(reward: str, ctx):
    """The reward as TRL's reward function: a finished `reward` run loaded frozen, or a rule reward."""
    from harness.objectives.parts.reward_model import RewardScorer, load_reward_run
    from harness.objectives.parts.rl_rewards import RuleReward

    if reward.startswith(RUN_REF):
        model, tokenizer = load_reward_run(ctx.refs, reward, ctx.device)
        return RewardScorer(model, tokenizer, ctx.device, ctx.spec.eval.batch_size)
    return RuleReward(reward)


def held_out_samples(model, tokenizer, ctx, records: list[dict], reward_fn, max_new_tokens: int,
                     temperature: float) -> dict:
    """One sample per held-out prompt (the run's seed: the same draws before and after training) and its
    reward: the prompts, their token ids, the completions' ids and the rewards."""
    from harness.data.tokenize import prompt_text

    spec = ctx.spec
    prompts = [prompt_text(tokenizer, r["prompt"], spec.data) for r in records]
    ids = sample(model, tokenizer, prompts, max_new_tokens, temperature, spec.seed, spec.eval.batch_size, ctx.device)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    answers = [r.get("response", "") for r in records]
    rewards = reward_fn(prompts, texts, answer=answers)
    return {"prompts": prompts, "ids": ids, "texts": texts, "answers": answers, "rewards": [float(r) for r in rewards],
            "prompt_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]}


def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, seed: int,
           batch_size: int, device: str) -> list[list[int]]:
    """One sampled completion (token ids, up to and including EOS) per prompt, reproducible by `seed`."""
    import torch

    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[list[int]] = []
    try:
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                ids = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                     max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            for row in ids[:, enc["input_ids"].size(1):].tolist():
                out.append(_cut(row, tokenizer))
    finally:
        tokenizer.padding_side = side
    return out


def _cut(row: list[int], tokenizer) -> list[int]:
    """A generated row up to its first EOS (kept) and without trailing padding."""
    for j, tok in enumerate(row):
        if tok == tokenizer.eos_token_id:
            return row[:j + 1]
    return row


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean) of `values`; the error is None for fewer than two values."""
    n = len(values)
    if not n:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


class HeldOutScoring:
    """The reward of an objective whose options have `reward`, `held_out_reward`, `max_new_tokens` and
    `temperature` (each built once per run, dropped by `drop_rewards`), and its held-out samples scored under
    them: what the RL objectives and `ScoredUnderReward` share. `held_out_records` are the prompts' records
    (set before training).

    `held_out_reward` is a second reward that training never sees, scoring the same samples: over-optimisation
    (Gao et al. 2022) shows as the training reward rising while this one does not."""

    reward_fn = None
    held_out_fn = None
    held_out_records: list[dict] | tuple = ()

    def _reward_fn(self, ctx):
        if self.reward_fn is None:
            self.reward_fn = reward_function(self.options.reward, ctx)
        return self.reward_fn

    def _held_out(self, model, tokenizer, ctx) -> dict:
        o = self.options
        samples = held_out_samples(model, tokenizer, ctx, self.held_out_records, self._reward_fn(ctx),
                                   o.max_new_tokens, o.temperature)
        if o.held_out_reward:
            if self.held_out_fn is None:
                self.held_out_fn = reward_function(o.held_out_reward, ctx)
            scores = self.held_out_fn(samples["prompts"], samples["texts"], answer=samples["answers"])
            samples["held_out_rewards"] = [float(r) for r in scores]
        return samples

    @staticmethod
    def record(samples: dict, metrics: dict, when: str = "") -> None:
        """The samples' mean rewards and standard errors into `metrics`; `when` is "" (after training) or
        "_before" (the start model)."""
        metrics[f"rl_reward_mean{when}"], metrics[f"rl_reward{when}_se"] = mean_se(samples["rewards"])
        if "held_out_rewards" in samples:
            metrics[f"heldout_reward_mean{when}"], metrics[f"heldout_reward{when}_se"] = \
                mean_se(samples["held_out_rewards"])

    def drop_rewards(self) -> None:
        """Let the frozen reward models go (before the common evaluation)."""
        self.reward_fn = self.held_out_fn = None


class ScoredUnderReward(HeldOutScoring):
    """Mixin for an objective whose options have `reward`, `max_new_tokens` and `temperature` (the preference
    objectives): with a `reward`, the start model's and the trained policy's held-out samples are scored under
    it (`rl_reward_mean_before`, `rl_reward_mean` and their standard errors), as the RL objectives score theirs."""

    def held_models(self, config) -> list[str]:
        o = self.options
        return [*super().held_models(config), *reward_runs(o.reward, o.held_out_reward)]

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        return [*super().check(spec, plan), *reward_problems(spec, plan, self.options)]

    def before_training(self, model, tokenizer, ctx, val_set, collator, prompts, metrics) -> None:
        super().before_training(model, tokenizer, ctx, val_set, collator, prompts, metrics)
        if self.options.reward:
            _, self.held_out_records = self.records(ctx, metrics)
            self.record(self._held_out(model, tokenizer, ctx), metrics, "_before")

    def after_training(self, trainer, model, tokenizer, ctx, train_records, val_records, val_set, collator,
                       metrics) -> None:
        super().after_training(trainer, model, tokenizer, ctx, train_records, val_records, val_set, collator, metrics)
        if self.options.reward:
            self.record(self._held_out(model, tokenizer, ctx), metrics)
            self.drop_rewards()


def reward_runs(*rewards: str | None) -> list[str]:
    """The `run:` references among the reward options (the models a run holds besides its own)."""
    return [r for r in rewards if r and r.startswith(RUN_REF)]
