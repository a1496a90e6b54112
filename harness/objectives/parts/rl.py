"""What the online-RL objectives share (`grpo`, `rloo`, each in its own module): RLHF's third step. The
policy — a finished SFT run's merged weights (`start: run:<slug>`) with the run's method on top — writes
`num_generations` completions per prompt; a reward scores them, either a finished `reward` run (`reward:
run:<slug>`, loaded once, frozen) or a rule reward (`reward: exact_answer`, see `rl_rewards`); TRL's
trainer turns the rewards into advantages (GRPO: group-normalised; RLOO: leave-one-out baseline) with a
KL pull of strength `beta` toward the start model (TRL's reference: the policy with its fresh adapter
off, or a frozen copy for full fine-tuning).

Figures on the held-out prompts (one sample each at the training temperature, the same seed before and
after): `rl_reward_mean` and `rl_reward_mean_before` (the start model) with their standard errors,
`kl_to_ref` (per-token KL(π ‖ π_ref) over the vocabulary, on the policy's own held-out completions),
`gen_len_mean`; and the cost of rollouts in training: `gen_s`, `gen_tokens_per_s`, `gen_time_share`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from harness.objectives.base import RUN_REF, Objective, StartOptions
from harness.objectives.parts.held_out_reward import HeldOutScoring, reward_problems, reward_runs


class RlOptions(StartOptions):
    """Options every online-RL objective has."""

    reward: str | None = Field(None, description="`run:<slug>` of a finished `reward` run (frozen), or a rule reward "
                                         "(exact_answer, answer_chars)")
    start: str | None = Field(None, description="`run:<run id or slug>`, a finished SFT run whose fine-tuned "
                                                "weights are the policy's start and the KL reference")
    beta: float = Field(0.05, ge=0, description="KL coefficient toward the start model (0: no reference loaded)")
    num_generations: int = Field(4, ge=2, description="completions per prompt (the group the advantage compares)")
    max_new_tokens: int = Field(16, gt=0, description="longest completion, in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts and held-out samples")
    held_out_reward: str | None = Field(None, description="a second reward (`run:<slug>` of another reward run, or "
                                        "a rule) scoring the same held-out samples, never trained against: "
                                        "over-optimisation shows as the training reward rising while it does not")
    ref_fields: ClassVar[tuple[str, ...]] = ("start", "reward", "held_out_reward")
    #: added after runs were recorded: left out of the spec at their defaults (run ids unchanged)
    late: ClassVar[dict] = {"held_out_reward": None}

    @field_validator("reward", "held_out_reward")
    @classmethod
    def _reward_is_known(cls, value):
        from harness.objectives.parts.rl_rewards import check_reward

        return check_reward(value)


def timed(trainer_cls):
    """`trainer_cls` with its rollouts timed: `gen_s` (seconds in `_generate`) and `gen_tokens` (tokens written)."""

    class Timed(trainer_cls):
        gen_s, gen_tokens = 0.0, 0

        def __init__(self, *args, data_collator=None, **kwargs):  # TRL batches its own rollouts
            super().__init__(*args, **kwargs)

        def _generate(self, prompts):
            from harness.measure import clock

            device = str(self.accelerator.device).split(":")[0]
            t0 = clock(device)
            out = super()._generate(prompts)
            self.gen_s += clock(device) - t0
            self.gen_tokens += sum(len(ids) for ids in out[1])
            return out

        @property
        def figures(self) -> dict:  # the recipe adds these to the run's metrics
            return {"gen_s": round(self.gen_s, 3),
                    "gen_tokens_per_s": self.gen_tokens / self.gen_s if self.gen_s > 0 else None}

    Timed.__name__ = Timed.__qualname__ = f"Timed{trainer_cls.__name__}"
    return Timed


def kl_per_token(policy, reference, prompt_ids: list[list[int]], completions: list[list[int]], device: str):
    """Mean per-token KL(π ‖ π_ref) = Σ_v π(v) (log π(v) − log π_ref(v)) over the positions that predict the
    completion tokens (0 for identical models), or None without completion tokens.

    Args:
        reference: a context manager factory giving the reference model (it may be `policy` with its adapter off).
    """
    import torch

    total, count = 0.0, 0
    for prompt, completion in zip(prompt_ids, completions):
        if not completion:
            continue
        ids = torch.tensor([prompt + completion], device=device)
        cut = slice(len(prompt) - 1, ids.size(1) - 1)  # positions whose next token is a completion token
        with torch.no_grad():
            with reference() as ref:
                q = torch.log_softmax(ref(input_ids=ids, use_cache=False).logits[0, cut].float(), -1)
            p = torch.log_softmax(policy(input_ids=ids, use_cache=False).logits[0, cut].float(), -1)
        total += float((p.exp() * (p - q)).sum())
        count += len(completion)
    return total / count if count else None


class RlObjective(HeldOutScoring, Objective):
    """Online RL from a start run against a reward. Subclasses set `trl_classes` (trainer, config)."""

    report_sections = ("preference",)
    metrics = ("rl_reward_mean", "rl_reward_mean_before", "gen_len_mean", "gen_tokens_per_s", "gen_time_share",
               "eval_loss")

    def trl_classes(self):
        """(TRL trainer class, its config class)."""
        raise NotImplementedError

    def slug_prefix(self) -> str:
        reward = self.options.reward
        return f"{self.name}-{'rm' if (reward or '').startswith(RUN_REF) else reward}"

    def start_ref(self, config) -> str | None:
        return self.options.start

    def held_models(self, config) -> list[str]:
        """A reward run's model, and a full reference copy where the KL term needs one (beta > 0, no adapter
        to switch off)."""
        o = self.options
        held = reward_runs(o.reward, o.held_out_reward)
        if o.beta > 0 and config.method.build().saves_full_model:
            held.append(o.start or config.model.name)
        return held

    # --- the plan ----------------------------------------------------------------------------------------

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        """A method TRL can wrap, whole prompt groups per optimizer step, a `reward` run that is a finished
        (or planned) `reward` run, and a usable start run."""
        from harness.errors import allowed
        from harness.methods import METHODS
        from harness.objectives.parts.preference import PreferenceObjective

        cfg, o, problems = spec.config, self.options, []
        if cfg.method.cls.preference_reference is None:
            wrappable = [n for n in METHODS.names() if METHODS.get(n).preference_reference is not None]
            problems.append(plan.problem(spec, "method", f"objective `{self.name}` cannot wrap method "
                                         f"`{cfg.method.name}` (TRL's trainer and its reference need it); "
                                         f"{allowed(wrappable)}"))
        batch = cfg.train.micro_batch * cfg.train.grad_accum
        if batch % o.num_generations:
            problems.append(plan.problem(spec, "objective.num_generations", f"TRL fills each optimizer step with "
                                         f"whole groups: train.micro_batch × train.grad_accum = {batch} must be a "
                                         f"multiple of num_generations = {o.num_generations}"))
        if o.reward is None:
            from harness.objectives.parts.rl_rewards import RULE_REWARDS

            problems.append(plan.problem(spec, "objective.reward", f"objective `{self.name}` needs a reward: "
                                         f"`{RUN_REF}<slug of a reward run>` or a rule reward "
                                         f"({', '.join(RULE_REWARDS.names())})"))
        problems.extend(reward_problems(spec, plan, o))
        if o.start:
            problems.extend(PreferenceObjective._check_start(self, spec, plan))
        return problems

    # --- the run -----------------------------------------------------------------------------------------

    def before_training(self, model, tokenizer, ctx, val_set, collator, prompts, metrics) -> None:
        _, self.held_out_records = self.records(ctx, metrics)
        self.record(self._held_out(model, tokenizer, ctx), metrics, "_before")

    def trainer_parts(self, model, tokenizer, ctx, train_set, train_records, collator, metrics) -> dict:
        from datasets import Dataset

        from harness.data.tokenize import prompt_text

        spec, o = ctx.spec, self.options
        trainer_cls, config_cls = self.trl_classes()
        rows = [{"prompt": prompt_text(tokenizer, r["prompt"], spec.data), "answer": r.get("response", "")}
                for r in train_records]
        return {"trainer_cls": timed(trainer_cls), "processing_class": tokenizer, "args_cls": config_cls,
                "reward_funcs": [self._reward_fn(ctx)],
                "args": {"bf16": False, "gradient_checkpointing": spec.train.gradient_checkpointing, "beta": o.beta,
                         "num_generations": o.num_generations, "max_completion_length": o.max_new_tokens,
                         "temperature": o.temperature, "log_completions": False},
                "train_set": Dataset.from_list(rows), "collator": None, "packing": False}

    def after_training(self, trainer, model, tokenizer, ctx, train_records, val_records, val_set, collator,
                       metrics) -> None:
        from harness.objectives.parts.preference import drop_reference, reference

        after = self._held_out(model, tokenizer, ctx)
        self.record(after, metrics)
        lengths = [len(ids) for ids in after["ids"]]
        metrics["gen_len_mean"] = sum(lengths) / len(lengths) if lengths else None
        has_reference = hasattr(model, "peft_config") or getattr(trainer, "ref_model", None) is not None
        metrics["kl_to_ref"] = kl_per_token(model, lambda: reference(trainer), after["prompt_ids"], after["ids"],
                                            ctx.device) if has_reference else None
        drop_reference(model)
        self.drop_rewards()

    def finish(self, metrics: dict) -> None:
        gen_s, train_s = metrics.get("gen_s"), metrics.get("train_s")
        metrics["gen_time_share"] = gen_s / train_s if gen_s is not None and train_s else None
