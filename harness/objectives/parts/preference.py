"""What the preference objectives share (`dpo`, `kto`, `orpo`, each in its own module): their options
(`beta`, `start`), their checks, the pairs as TRL rows, and their figures. For DPO and KTO the
reference model is TRL's: for a peft method,
a frozen copy of the fresh adapter (so the base itself: no second model in memory); for full or
partial fine-tuning, a frozen copy of the starting model.

Figures on held-out pairs, with the implicit reward r(y) = β·(log π(y|x) − log π_ref(y|x)):
`pref_accuracy` (share of pairs with r(chosen) > r(rejected)), `reward_margin` (mean of the
difference) and `kl_to_ref` (per-token KL(π ‖ π_ref) on the chosen answers)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

from pydantic import Field, field_validator

from harness.data.tokenize import answer_text, encode, make_collator, prompt_text
from harness.evaluate import eval_batches
from harness.objectives.base import Objective, StartOptions

#: training pairs scored for `pref_accuracy_train` (enough for a stable share, cheap on a CPU)
TRAIN_PAIRS_SCORED = 64


def completion_text(tokenizer, prompt: str, response: str, cfg) -> str:
    """The answer as the model must write it after `prompt_text`: the chat template's assistant turn
    up to its end-of-turn token, or the response and EOS."""
    answer = answer_text(tokenizer, prompt, response, cfg)
    # TRL appends EOS to an answer that does not end with it: stop at the end-of-turn token instead
    eos = tokenizer.eos_token or ""
    return answer.rstrip() if eos and answer.rstrip().endswith(eos) else answer


class PreferenceOptions(StartOptions):
    """Options every preference objective has."""

    beta: float = Field(0.1, gt=0, description="strength of the preference term (dpo/kto: the pull toward the "
                                               "reference model; orpo: λ, the odds-ratio term's weight)")
    start: str | None = Field(None, description="`run:<run id or slug>`, a finished SFT run whose fine-tuned "
                                                "weights are the starting point (and, for dpo/kto, the reference)")
    reward: str | None = Field(None, description="also score the policy under this reward, as the RL objectives "
                               "score theirs: `run:<slug>` of a finished `reward` run, or a rule reward. One sample "
                               "per held-out prompt before and after training gives rl_reward_mean_before and "
                               "rl_reward_mean (RL and offline tuning from one start, side by side)")
    max_new_tokens: int = Field(16, gt=0, description="with `reward`: longest held-out sample, in tokens")
    temperature: float = Field(1.0, gt=0, description="with `reward`: sampling temperature of the held-out samples")
    held_out_reward: str | None = Field(None, description="with `reward`: a second reward scoring the same held-out "
                                        "samples (as the RL objectives' option of that name)")
    ref_fields: ClassVar[tuple[str, ...]] = ("start", "reward", "held_out_reward")
    #: added after runs were recorded: left out of the spec at their defaults (run ids unchanged)
    late: ClassVar[dict] = {"reward": None, "max_new_tokens": 16, "temperature": 1.0, "held_out_reward": None}

    @field_validator("reward", "held_out_reward")
    @classmethod
    def _reward_is_known(cls, value):
        from harness.objectives.parts.rl_rewards import check_reward

        return check_reward(value)


def pairs_problems(objective: str, spec, plan) -> list[tuple[str, str, str]]:
    """A run's `data.name` must be a source of preference pairs (prompt, chosen, rejected)."""
    from harness.data import DATASETS
    from harness.errors import allowed

    name = spec.config.data.name
    dataset = DATASETS.get(name) if name in DATASETS else None
    if dataset is None or dataset.pairs:
        return []
    pairs = [n for n in DATASETS.names() if DATASETS.get(n).pairs]
    return [plan.problem(spec, "data.name", f"objective `{objective}` learns from preference pairs "
                         f"(prompt, chosen, rejected); `{name}` has none. {allowed(pairs)}")]


class PreferenceObjective(Objective):
    """Learning from (prompt, chosen, rejected) pairs, optionally from a finished SFT run's weights.
    Subclasses supply `trl_parts` (or override `trainer_parts`)."""

    #: whether TRL keeps a frozen reference model (ORPO has none)
    holds_reference: bool = True

    report_sections = ("preference",)
    metrics = ("pref_accuracy", "pref_accuracy_train", "reward_margin", "eval_loss")

    def slug_prefix(self) -> str | None:
        return self.name

    def start_ref(self, config) -> str | None:
        return self.options.start

    def held_models(self, config) -> list[str]:
        """TRL's frozen reference: the adapter switched off for a peft method, a full copy otherwise."""
        full = config.method.build().saves_full_model
        return [self.options.start or config.model.name] if full and self.holds_reference else []

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        """A method TRL can wrap (with a frozen reference), preference pairs to learn from, and a
        `start` run that exists (in the grid, or finished `ok` with weights on a full-precision base)."""
        from harness.errors import allowed
        from harness.methods import METHODS

        cfg, problems = spec.config, []
        if cfg.method.cls.preference_reference is None:  # the methods that score pairs as TRL's trainers do
            wrappable = [name for name in METHODS.names() if METHODS.get(name).preference_reference is not None]
            problems.append(plan.problem(spec, "method", f"objective `{self.name}` cannot wrap method "
                                         f"`{cfg.method.name}` for pair training (TRL's trainers and the "
                                         f"reference models need it); {allowed(wrappable)}"))
        problems.extend(pairs_problems(self.name, spec, plan))
        if self.options.start:
            problems.extend(self._check_start(spec, plan))
        return problems

    def _check_start(self, spec, plan) -> list[tuple[str, str, str]]:
        """The `start` run can become a plain model: a full, freeze or mergeable-adapter run on a
        full-precision base (a full-model method's only with save_weights: all)."""
        ref = self.options.start
        _, start, found = plan.resolve(spec, ref, "start")
        if start is None:
            return found
        kind = start.method.cls  # a plain model comes back from a merge, a full copy or trained weights in place
        if start.model.load_in_4bit or not (kind.merges or kind.saves_full_model or kind.stack_role == "weights"):
            return [plan.problem(spec, "objective.start", f"`{ref}` trained `{start.method.name}`"
                                 f"{' on a 4-bit base' if start.model.load_in_4bit else ''}, whose weights cannot "
                                 "become a plain model to start from; start from a full, freeze or mergeable-adapter "
                                 "run (lora, dora, …) on a full-precision base")]
        if kind.saves_full_model and start.train.save_weights != "all":
            return [plan.problem(spec, "objective.start", f"`{ref}` keeps no full model: give it train.save_weights: all")]
        return []

    def trl_parts(self, tokenizer, records: list[dict], data_cfg, seq_len: int):
        """(TRL Trainer class, its args class, the args' objective options, the training Dataset)."""
        raise NotImplementedError

    def trainer_parts(self, model, tokenizer, ctx, train_set, train_records, collator, metrics) -> dict:
        spec = ctx.spec
        trainer_cls, args_cls, options, rows = self.trl_parts(tokenizer, train_records, spec.data, spec.train.seq_len)
        # TRL defaults to checkpointing and bf16 autocast; the run's settings and dtype decide here
        return {"trainer_cls": trainer_cls, "processing_class": tokenizer, "args_cls": args_cls,
                "args": {"bf16": False, "gradient_checkpointing": spec.train.gradient_checkpointing, **options},
                "train_set": rows, "collator": None, "packing": False}  # TRL pads its own pair batches

    def score_pairs(self, trainer, model, tokenizer, ctx, train_records, val_records, metrics) -> None:
        """The trained policy's figures on the pairs (pref_accuracy, reward_margin, …)."""
        metrics.update(figures(trainer, tokenizer, train_records, val_records, ctx.spec, ctx.device))

    def after_training(self, trainer, model, tokenizer, ctx, train_records, val_records, val_set, collator,
                       metrics) -> None:
        self.score_pairs(trainer, model, tokenizer, ctx, train_records, val_records, metrics)
        drop_reference(model)


def trl_rows(tokenizer, records: list[dict], data_cfg) -> list[dict]:
    """The pairs as TRL's (prompt, chosen, rejected) rows, each answer as the model must write it."""
    return [{"prompt": prompt_text(tokenizer, r["prompt"], data_cfg),
             "chosen": completion_text(tokenizer, r["prompt"], r["response"], data_cfg),
             "rejected": completion_text(tokenizer, r["prompt"], r["rejected"], data_cfg)} for r in records]


@contextmanager
def reference(trainer):
    """The reference model TRL trains against: its frozen copy, or the policy with its `ref`
    adapter (or none) active."""
    if getattr(trainer, "ref_model", None) is not None:
        yield trainer.ref_model
        return
    from trl.trainer.utils import use_adapter

    model = trainer.model
    with use_adapter(model, "ref" if "ref" in getattr(model, "peft_config", {}) else None):
        yield model


def drop_reference(model) -> None:
    """Remove TRL's `ref` adapter so only the trained one is saved, merged and measured."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def answer_scores(model, examples: list[dict], collator, batch_size: int, device: str,
                  distributions: bool = False) -> tuple:
    """Per example, the summed log-probability of its answer tokens (its labels); with
    `distributions`, also per batch the log-probabilities over the vocabulary at each answer token,
    (tokens, vocab), from the same forward."""
    import torch
    import torch.nn.functional as F

    from harness.evaluate import keeps_logits, label_logits

    sums, dists = [], []
    at_labels = keeps_logits(model)
    for batch, labels in eval_batches(model, examples, collator, batch_size, device):
        target = F.pad(labels, (0, 1), value=-100)[:, 1:]  # what each position predicts
        if at_labels:  # the vocabulary projection and its softmax only where an answer token is predicted
            outputs, target = label_logits(model, {**batch, "use_cache": False}, target)
            logits = outputs.logits
        else:  # prompt learning: virtual tokens come first, the labels' positions are the last ones
            logits = model(**batch, use_cache=False).logits[:, -labels.size(1):]
        logp = torch.log_softmax(logits.float(), -1)
        mask = target != -100
        token = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        sums.append((token * mask).sum(-1).cpu())
        if distributions:
            dists.append(logp[mask].cpu())
    return (torch.cat(sums) if sums else torch.zeros(0)), dists


def encode_pairs(tokenizer, records: list[dict], data_cfg, seq_len: int) -> tuple[list[dict], list[dict]]:
    """(chosen, rejected) encodings of the pairs whose both answers survive truncation."""
    chosen, rejected = [], []
    for rec in records:
        c = encode(tokenizer, rec, data_cfg, seq_len)
        r = encode(tokenizer, {**rec, "response": rec["rejected"]}, data_cfg, seq_len)
        if c is not None and r is not None:
            chosen.append(c)
            rejected.append(r)
    return chosen, rejected


def pair_figures(r_chosen, r_rejected) -> dict:
    """pref_accuracy (strict: a tie is not a win) and reward_margin."""
    if not len(r_chosen):
        return {"pref_accuracy": None, "reward_margin": None}
    return {"pref_accuracy": (r_chosen > r_rejected).float().mean().item(),
            "reward_margin": (r_chosen - r_rejected).mean().item()}


def figures(trainer, tokenizer, train_records: list[dict], val_records: list[dict], spec, device: str) -> dict:
    """pref_accuracy, reward_margin, kl_to_ref on the held-out pairs; pref_accuracy_train on up to
    TRAIN_PAIRS_SCORED training pairs."""
    collator = make_collator(tokenizer, packing=False)  # one row per answer: sums per example
    size, seq_len = spec.eval.batch_size, spec.train.seq_len
    sets = [*encode_pairs(tokenizer, val_records, spec.data, seq_len),
            *encode_pairs(tokenizer, train_records[:TRAIN_PAIRS_SCORED], spec.data, seq_len)]

    def scores(model):
        first, dists = answer_scores(model, sets[0], collator, size, device, distributions=True)
        return [first, *(answer_scores(model, x, collator, size, device)[0] for x in sets[1:])], dists

    # the reference may be the policy with another adapter active: score each side in its own pass
    with reference(trainer) as ref_model:
        ref_scores, ref_logp = scores(ref_model)
    pol_scores, pol_logp = scores(trainer.model)
    r = [spec.objective.beta * (p - q) for p, q in zip(pol_scores, ref_scores)]
    return {**pair_figures(r[0], r[1]), "pref_accuracy_train": pair_figures(r[2], r[3])["pref_accuracy"],
            "kl_to_ref": mean_kl(pol_logp, ref_logp)}


def mean_kl(policy_logp: list, ref_logp: list) -> float | None:
    """Mean per-token KL(π ‖ π_ref) = Σ_v π(v) (log π(v) − log π_ref(v)) from `answer_scores`' per-batch
    distributions of the same examples under each model; None without answer tokens."""
    tokens = sum(len(q) for q in ref_logp)
    kl = sum(float((p.exp() * (p - q)).sum()) for p, q in zip(policy_logp, ref_logp))
    return kl / tokens if tokens else None
