"""The metric vocabulary: every figure a run writes, declared once with its unit, direction, seed
aggregation and (for memory and time) what the device measured. Store, report, findings, Pareto
fronts, search objectives and trackers read directions here; nothing guesses them from a name.

A declaration's key is an exact result key (`eval_loss`) or a pattern whose `<placeholders>` stand
for one dotted part each (`task_eval.<source>.eval_loss`). lm-eval task scores
(`task.<task>.<metric>`) take their direction from the task: a built-in task's own declaration
(`harness.tasks` declares each task's primary metric on import), else lm-eval's metric registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from harness.errors import did_you_mean
from harness.registry import UnknownName

__all__ = ["AGGREGATIONS", "PRESENCE", "Metric", "Vocabulary", "METRICS", "declare", "UndeclaredMetric"]

#: how a configuration's seeds combine: `mean` (with a t-interval), or the worst/best single seed
AGGREGATIONS = ("mean", "max", "min")
#: "contract": the first result.json contract (always present); "always": a key added later, present
#: as null where it does not apply; "": present only when the run measured it
PRESENCE = ("contract", "always", "")
#: units that are memory or time: their declaration must say what the device measured
_DEVICE_UNITS = {"MiB", "ms", "ms/token", "s", "tokens/s"}
_PLACEHOLDER = re.compile(r"<(\w+)>")

# what each device figure means (memory and time are only comparable within one device kind)
PEAK_MEMORY = ("absolute peak of the phase, weights included: CUDA torch.cuda.max_memory_allocated (cache emptied "
               "and peak reset at the phase start); CPU the run process's resident set size (RSS), sampled every "
               "20 ms after returning freed heap to the OS; a periodic evaluation inside training is left out")
RESERVED_MEMORY = ("CUDA torch.cuda.max_memory_reserved over the phase (what meets the OOM limit; cache emptied and "
                   "peak reset at the phase start); null on CPU")
ACCOUNTING = ("bytes of the tensors as stored, summed the same way on every device (no allocator or RSS reading): "
              "4-bit weights packed with their scales, shared storage counted once")
ESTIMATED_MEMORY = ("an ESTIMATE made before the run (harness.memory), not a measurement: it predicts the PEAK_MEMORY "
                    "figure of its device (CUDA max_memory_allocated, no CUDA context; CPU the run process's RSS, the "
                    "runtime included)")
WALL_TIME = "wall-clock (time.perf_counter) on the run's device; CUDA synchronized at both ends"
STEP_TIME = ("the optimizer steps after the first eval.speed_warmup_steps (default 1; all steps when there are no "
             "more), each timed from the Trainer's on_step_begin to on_step_end: forward, backward and update of the "
             "step's micro-batches; batch fetch, logging and periodic evaluation fall outside; CUDA synchronized at "
             "both ends")
LATENCY = ("greedy generation on the run's device, batch 1, after one warm-up generate: median over the fixed latency "
           "prompts × eval.latency_repeats generates, each timed inside one generate call by a logits processor that "
           "stamps time.perf_counter() after each token's forward (prefill: call start → first stamp; decode: "
           "(last − first stamp) ÷ (new tokens − 1)); CUDA synchronized before every stamp")


class UndeclaredMetric(UnknownName):
    """A result metric that no declaration covers."""


@dataclass(frozen=True)
class Metric:
    """One declared metric.

    Args:
        key: the result key, or a pattern with `<placeholders>` (one dotted part each).
        unit: what the number counts ("nats/token", "MiB", "ms", "%", "fraction", "" for a pure number).
        higher_is_better: True/False, or None for figures that are budgets or sizes of the setting,
            not a better or worse outcome (tokens trained on, total parameters); `task.<task>.<metric>`
            patterns resolve it per task instead.
        definition: one sentence, for the docs and the report.
        aggregate: how seeds of one configuration combine (see AGGREGATIONS).
        device: for memory and time, what the device measured (see PEAK_MEMORY, WALL_TIME).
        presence: see PRESENCE.
        group: who writes it ("run", "distill", "preference", ...), for the docs table.
        stored: False for a figure the report derives (never in result.json, so no search reads it).
        task_score: an lm-eval task score. A `...<task>.<metric>` pattern takes its direction from the
            task: a built-in task's own declaration of `task.<task>.<metric>`, else lm-eval's registry.
    """

    key: str
    unit: str
    higher_is_better: bool | None
    definition: str
    aggregate: str = "mean"
    device: str = ""
    presence: str = ""
    group: str = "run"
    stored: bool = True
    task_score: bool = False

    def __post_init__(self):
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"metric `{self.key}`: aggregate must be one of {AGGREGATIONS}, "
                             f"but got {self.aggregate!r}")
        if self.presence not in PRESENCE:
            raise ValueError(f"metric `{self.key}`: presence must be one of {PRESENCE}, but got {self.presence!r}")
        if self.unit in _DEVICE_UNITS and not self.device:
            raise ValueError(f"metric `{self.key}` is memory or time ({self.unit}): declare its `device` semantics")
        if self.presence and self.is_pattern:
            raise ValueError(f"metric `{self.key}`: a pattern cannot be present in every result")
        if self.task_score and self.is_pattern and not {"task", "metric"} <= set(_PLACEHOLDER.findall(self.key)):
            raise ValueError(f"metric `{self.key}`: a task score's pattern names `<task>` and `<metric>`")
        if not self.definition:
            raise ValueError(f"metric `{self.key}`: a definition is required")

    @property
    def is_pattern(self) -> bool:
        return bool(_PLACEHOLDER.search(self.key))

    @property
    def direction(self) -> str | None:
        """Optuna's word for it: `minimize`, `maximize`, or None without a direction."""
        return None if self.higher_is_better is None else "maximize" if self.higher_is_better else "minimize"


def _regex(pattern: str) -> re.Pattern:
    parts = _PLACEHOLDER.split(pattern)  # literal, name, literal, name, ...
    out = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^.]+)" for i, p in enumerate(parts))
    return re.compile(f"^{out}$")


class Vocabulary:
    """Declared metrics: exact keys, then patterns (the most specific first)."""

    def __init__(self):
        self._exact: dict[str, Metric] = {}
        self._patterns: list[tuple[Metric, re.Pattern]] = []

    def declare(self, metric: Metric) -> Metric:
        """Add a declaration; declaring one key twice (differently) is an error."""
        old = self._exact.get(metric.key) or next((m for m, _ in self._patterns if m.key == metric.key), None)
        if old is not None and old != metric:
            raise ValueError(f"metric `{metric.key}` is already declared")
        if old is None:
            if metric.is_pattern:
                self._patterns.append((metric, _regex(metric.key)))
                # a longer literal part is the more specific pattern: `task.<task>.n` before `task.<task>.<metric>`
                self._patterns.sort(key=lambda p: -len(_PLACEHOLDER.sub("", p[0].key)))
            else:
                self._exact[metric.key] = metric
        return metric

    def lookup(self, key: str) -> Metric | None:
        """The declaration covering `key`, or None."""
        if key in self._exact:
            return self._exact[key]
        return next((m for m, rx in self._patterns if rx.match(key)), None)

    def get(self, key: str) -> Metric:
        """The declaration covering `key`.

        Raises:
            UndeclaredMetric: no declaration covers it; the message suggests the closest key.
        """
        metric = self.lookup(key)
        if metric is None:
            raise UndeclaredMetric(f"undeclared metric `{key}`.{did_you_mean(key, self.keys())} Declare it in "
                                   "harness/metrics.py (or with `harness.metrics.declare` in its own module).")
        return metric

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.lookup(key) is not None

    def __iter__(self) -> Iterator[Metric]:
        return iter([*self._exact.values(), *(m for m, _ in self._patterns)])

    def keys(self, presence: str | None = None) -> list[str]:
        """Declared keys and patterns in declaration order (exact keys first); only those of one
        `presence` when given."""
        return [m.key for m in self if presence is None or m.presence == presence]

    def undeclared(self, keys: Iterable[str]) -> list[str]:
        """The keys no stored declaration covers, in their order."""
        return [k for k in keys if (m := self.lookup(k)) is None or not m.stored]

    def higher_is_better(self, key: str) -> bool | None:
        """Whether `key` is better higher; None for an undeclared key or one without a direction."""
        metric = self.lookup(key)
        if metric is None:
            return None
        if metric.task_score and metric.is_pattern:
            groups = _regex(metric.key).match(key).groupdict()
            own = self._exact.get(f"task.{groups['task']}.{groups['metric']}")
            return own.higher_is_better if own is not None else lm_eval_higher_is_better(groups["metric"])
        return metric.higher_is_better

    def direction(self, key: str) -> str | None:
        """`minimize`, `maximize`, or None (see `higher_is_better`)."""
        better = self.higher_is_better(key)
        return None if better is None else "maximize" if better else "minimize"

    def markdown(self) -> str:
        """The vocabulary as a Markdown table (for the docs), in a stable order."""
        rows = ["| metric | unit | better | seeds | device | definition |", "|---|---|---|---|---|---|"]
        # by group (the run's own figures first), then key: the same table whatever the import order
        for m in sorted(self, key=lambda m: (m.group != "run", m.group, m.key)):
            better = {True: "higher", False: "lower", None: "–"}[m.higher_is_better]
            if m.task_score and m.is_pattern:
                better = "the task's own"
            rows.append(f"| `{m.key}` | {m.unit or '–'} | {better} | {m.aggregate} | {m.device or '–'} | "
                        f"{m.definition} |")
        return "\n".join(rows) + "\n"


@lru_cache(maxsize=None)
def lm_eval_higher_is_better(metric: str) -> bool | None:
    """lm-eval's own direction for a metric name (its metric registry), None when it has none."""
    import logging

    try:
        from lm_eval.api import metrics as _registered  # noqa: F401  (importing it fills the registry)
        from lm_eval.api.registry import is_higher_better
    except ImportError:
        return None
    for name in ("lm-eval", "lm_eval"):  # it warns about a metric it has no direction for: None says so
        logging.getLogger(name).setLevel(logging.ERROR)
    return is_higher_better(metric)


METRICS = Vocabulary()


def declare(key: str, unit: str, higher_is_better: bool | None, definition: str, **options) -> Metric:
    """Declare a metric in the vocabulary (see `Metric` for the options); returns it."""
    return METRICS.declare(Metric(key, unit, higher_is_better, definition, **options))


# -- the first result.json contract, in its order --------------------------------------------------------------------
_C = {"presence": "contract"}
declare("train_loss", "nats/token", False, "mean training loss over the last 10% of logged steps", **_C)
declare("eval_loss", "nats/token", False, "token-weighted NLL of the response tokens of the validation split", **_C)
declare("eval_ppl", "", False, "exp(eval_loss)", **_C)
declare("train_tokens", "tokens", None, "input tokens the trainer saw (a budget, not an outcome)", **_C)
declare("train_tokens_per_s", "tokens/s", True, "steady-state training speed: tokens of the timed steps ÷ their "
        "time (train_timed_s)", device=STEP_TIME, **_C)
declare("step_ms_p50", "ms", False, "median time of the timed optimizer steps", device=STEP_TIME, **_C)
declare("step_ms_p90", "ms", False, "90th-percentile time of the timed optimizer steps", device=STEP_TIME, **_C)
declare("peak_mem_train_mb", "MiB", False, "peak memory of the training phase (trainer.train())", device=PEAK_MEMORY,
        **_C)
declare("peak_mem_eval_mb", "MiB", False, "peak memory of the final validation-loss pass", device=PEAK_MEMORY, **_C)
declare("infer_prefill_ms", "ms", False, "time to the first generated token", device=LATENCY, **_C)
declare("infer_decode_ms_per_token", "ms/token", False, "time per generated token after the first",
        device=LATENCY, **_C)
declare("trainable_params", "params", False, "parameters the optimizer updates (4-bit weights unpacked)", **_C)
declare("total_params", "params", False, "all parameters of the trained model (4-bit weights unpacked)", **_C)
declare("trainable_pct", "%", False, "100 × trainable_params ÷ total_params", **_C)
declare("adapter_bytes", "bytes", False, "bytes on disk of what the method saves (adapter or full weights)", **_C)
declare("load_s", "s", False, "loading and preparing the model (method applied)", device=WALL_TIME, **_C)
declare("train_s", "s", False, "the whole training phase, trainer.train(): set-up, warm-up, callbacks and periodic "
        "evaluation included", device=WALL_TIME, **_C)
declare("eval_s", "s", False, "the validation-loss pass", device=WALL_TIME, **_C)
declare("wall_s", "s", False, "the whole run process, from spec read to result", device=WALL_TIME, **_C)

# -- added later: present in every result, null where they do not apply ---------------------------------------------
_A = {"presence": "always"}
declare("eval_tokens", "tokens", None, "response tokens eval_loss is averaged over", **_A)
declare("trainable_params_peft", "params", False, "trainable parameters as peft reports them (null outside peft)",
        **_A)
declare("merge_s", "s", False, "merging the adapter into the base weights", device=WALL_TIME, **_A)
declare("infer_prefill_ms_merged", "ms", False, "infer_prefill_ms after merging", device=LATENCY, **_A)
declare("infer_decode_ms_per_token_merged", "ms/token", False, "infer_decode_ms_per_token after merging",
        device=LATENCY, **_A)
declare("task_eval_s", "s", False, "scoring the lm-eval tasks", device=WALL_TIME, **_A)
declare("forgetting_ppl_delta", "", False, "general_ppl word perplexity: run − its untouched base", **_A)
declare("forgetting_ppl_pct", "%", False, "forgetting_ppl_delta as % of the base's word perplexity", **_A)
_D = {"presence": "always", "group": "distill"}
declare("teacher_params", "params", None, "the teacher's parameters (an ensemble: its first member's)", **_D)
declare("student_params", "params", None, "the student's parameters", **_D)
declare("compression_ratio", "×", True, "teacher_params ÷ student_params", **_D)
declare("teacher_eval_loss", "nats/token", False, "the teacher's eval_loss on the run's validation split", **_D)
declare("teacher_eval_ppl", "", False, "exp(teacher_eval_loss)", **_D)
declare("teacher_decode_ms_per_token", "ms/token", False, "the teacher's infer_decode_ms_per_token (summed over "
        "an ensemble's members)", device=LATENCY, **_D)
declare("quality_retention_pct", "%", True, "100 × teacher_eval_ppl ÷ eval_ppl (100: as good as the teacher)", **_D)
declare("infer_speedup", "×", True, "teacher_decode_ms_per_token ÷ infer_decode_ms_per_token", **_D)
declare("distill_kl_before", "nats/token", False, "KL(teacher ‖ student) on validation responses before training",
        **_D)
declare("distill_kl", "nats/token", False, "KL(teacher ‖ student) on validation responses after training", **_D)
declare("teacher_cache_s", "s", False, "computing the teacher's top-k cache in this run (0 when read from disk)",
        device=WALL_TIME, **_D)
declare("quality_retention_task_pct", "%", True, "mean over scored tasks of the student's share of the teacher's "
        "primary score, in %: (S − chance) ÷ (T − chance) for a multiple-choice accuracy (chance: "
        "task.<task>.chance), S ÷ T otherwise (T ÷ S for a lower-is-better score)", **_D)
_P = {"presence": "always", "group": "preference"}
declare("pref_accuracy", "fraction", True, "held-out pairs whose chosen answer scores higher: the implicit reward "
        "(dpo, kto) or the log-odds (orpo); a tie is not a win", **_P)
declare("reward_margin", "reward", True, "mean margin chosen − rejected on held-out pairs, in implicit reward "
        "(dpo, kto), log-odds (orpo) or the reward model's score (reward)", **_P)
declare("kl_to_ref", "nats/token", False, "the policy's per-token KL to the reference (the start model): on "
        "held-out chosen answers (dpo, kto; orpo with a peft adapter), on its own sampled held-out completions "
        "(grpo, rloo)", **_P)
declare("pref_accuracy_train", "fraction", True, "pref_accuracy on the training pairs", **_P)
# issue 17's cost figures: added after every earlier key, so stored results keep their order
declare("peak_mem_train_reserved_mb", "MiB", False, "reserved-memory peak of the training phase",
        device=RESERVED_MEMORY, **_A)
declare("peak_mem_eval_reserved_mb", "MiB", False, "reserved-memory peak of the final validation-loss pass",
        device=RESERVED_MEMORY, **_A)
declare("mem_weights_mb", "MiB", False, "the model's parameters and buffers as stored, after the method is applied",
        device=ACCOUNTING, **_A)
declare("mem_trainable_mb", "MiB", False, "the parameters the optimizer updates", device=ACCOUNTING, **_A)
declare("mem_grads_mb", "MiB", False, "the gradients the parameters hold before the first optimizer update (null "
        "without training)", device=ACCOUNTING, **_A)
declare("mem_optimizer_mb", "MiB", False, "the optimizer's state after its first step (Adam: two moments per "
        "trainable value; null without training)", device=ACCOUNTING, **_A)
declare("train_timed_s", "s", False, "time of the timed optimizer steps (train_tokens_per_s's denominator)",
        device=STEP_TIME, **_A)
declare("train_timed_steps", "steps", None, "optimizer steps train_tokens_per_s and the step times are taken over",
        **_A)
declare("mfu", "fraction", True, "model FLOPs utilization: train_tokens_per_s × (4·N + 2·N_trainable) ÷ the device's "
        "peak FLOP/s, N the parameters a token multiplies through (the input embedding left out unless tied to the "
        "output head), attention scores left out; peak from a table of GPUs for bf16/fp16 runs or "
        "$FTBENCH_PEAK_TFLOPS; null on CPU unless a peak is given", **_A)
# repeated latency (after the keys above, so results keep their key order): the spread of each latency
# median's samples says how far to trust it; it is not an outcome (no direction)
declare("infer_prefill_ms_iqr", "ms", None, "interquartile range (p75 − p25) of the infer_prefill_ms samples",
        device=LATENCY, **_A)
declare("infer_decode_ms_per_token_iqr", "ms/token", None, "interquartile range (p75 − p25) of the "
        "infer_decode_ms_per_token samples", device=LATENCY, **_A)
declare("infer_prefill_ms_merged_iqr", "ms", None, "infer_prefill_ms_iqr after merging", device=LATENCY, **_A)
declare("infer_decode_ms_per_token_merged_iqr", "ms/token", None, "infer_decode_ms_per_token_iqr after merging",
        device=LATENCY, **_A)
declare("latency_samples", "generates", None, "timed generates behind each latency median: latency prompts × "
        "eval.latency_repeats (the warm-up not counted)", **_A)
# issue 21's per-run overheads: where a run's time goes besides its measured phases
declare("latency_s", "s", False, "timing generation latency, before and after merging (warm-ups included)",
        device=WALL_TIME, **_A)
declare("overhead_s", "s", False, "the run's fixed cost: wall_s less load_s, train_s, eval_s, test_s, task_eval_s, "
        "merge_s, latency_s and objective_s (tracker, data, saving, measurement set-up)", device=WALL_TIME, **_A)
declare("startup_s", "s", False, "from the executor starting the run's process to the first training step's start "
        "(null without training, or when the executor gives no start time)", device=WALL_TIME, **_A)
# issue 18: the test split reports what the validation split chose
declare("test_loss", "nats/token", False, "token-weighted NLL of the response tokens of the test split (never used "
        "to choose anything; null when data.n_test is 0)", **_A)
declare("test_ppl", "", False, "exp(test_loss)", **_A)
declare("test_tokens", "tokens", None, "response tokens test_loss is averaged over", **_A)
declare("test_s", "s", False, "the test-loss pass", device=WALL_TIME, **_A)
# issue 20: the peak-memory estimate made before the run, kept beside what was measured (predictions: no direction)
_E = dict(unit="MiB", higher_is_better=None, device=ESTIMATED_MEMORY, **_A)
declare("mem_est_weights_mb", definition="estimated weights as loaded (4-bit packed with their scales), after the "
        "method is applied", **_E)
declare("mem_est_grads_mb", definition="estimated gradients: the trainable values in their dtype", **_E)
declare("mem_est_optimizer_mb", definition="estimated optimizer state for train.optimizer (AdamW: two moments per "
        "trainable value; 8-bit: one byte each; SGD: none)", **_E)
declare("mem_est_activations_mb", definition="estimated activations kept for backward over one micro-batch (layers "
        "with a gradient path, checkpointing, the method's extra activations) plus the loss's logits", **_E)
declare("mem_est_overhead_mb", definition="estimated device overhead: on CPU the runtime's resident memory before "
        "the model is loaded; 0 on CUDA", **_E)
declare("peak_mem_train_est_mb", definition="estimated peak_mem_train_mb: weights + grads + optimizer + activations "
        "+ overhead (gradients and activations are counted where they coexist, see docs/results.md)", **_E)
declare("peak_mem_eval_est_mb", definition="estimated peak_mem_eval_mb: weights + one evaluation batch's "
        "activations and logits without gradients + overhead", **_E)
declare("mem_est_held_mb", definition="estimated weights of the frozen models the objective holds while training "
        "(a distillation teacher, a full reference copy for DPO/KTO/RL, a reward model)", **_E)
declare("objective_s", "s", False, "the objective's own figures around training: its before- and after-training "
        "scoring (preference pairs with the reference, RL's held-out samples under the reward, a teacher's or a "
        "stage's starting scores); 0 for sft", device=WALL_TIME, **_A)

# -- written only where they apply ------------------------------------------------------------------------------------
declare("peak_mem_train_mb_per_rank", "MiB", False, "peak_mem_train_mb of each rank of a distributed run, in rank "
        "order (a list; peak_mem_train_mb is its largest)", aggregate="max", device=PEAK_MEMORY,
        group="distributed")
declare("task.<task>.<metric>", "", None, "an lm-eval task score", group="tasks", task_score=True)
declare("task.<task>.<metric>_stderr", "", None, "lm-eval's standard error of the score", group="tasks")
declare("task.<task>.n", "documents", None, "documents lm-eval scored", aggregate="max", group="tasks")
declare("task.<task>.chance", "fraction", None, "a multiple-choice task's accuracy by guessing: the mean over its "
        "documents of 1 ÷ the document's choices", group="tasks")
declare("teacher_task.<task>.<metric>", "", None, "the teacher's primary score on a task", group="distill",
        task_score=True)
for _prefix, _what in (("task_eval", "the run (a routed run: routed to the router's pick)"),
                       ("task_eval_before", "the model before this continual stage trained"),
                       ("oracle_eval", "each domain's own adapter"), ("shared_eval", "the shared adapter")):
    _g = {"group": "sources"}
    declare(f"{_prefix}.<source>.eval_loss", "nats/token", False, f"eval_loss on a source's validation split: {_what}",
            **_g)
    declare(f"{_prefix}.<source>.eval_ppl", "", False, f"exp of {_prefix}.<source>.eval_loss", **_g)
    declare(f"{_prefix}.<source>.eval_tokens", "tokens", None, f"tokens {_prefix}.<source>.eval_loss averages over",
            **_g)
declare("task_eval.<source>.examples_seen", "examples", None, "training examples of a task a multitask run drew",
        group="multitask")
declare("replay_examples", "examples", None, "earlier stages' examples replayed in a continual stage",
        group="continual")
declare("ewc_fisher_mean", "", None, "mean diagonal Fisher information of the EWC anchor", group="continual")
declare("ewc_penalty", "", False, "the EWC penalty at the last training step", group="continual")
declare("router_acc", "fraction", True, "held-out prompts the router sent to their own domain's adapter",
        group="route")
declare("router_acc_train", "fraction", True, "router_acc on the router's training prompts", group="route")
declare("router_acc.<source>", "fraction", True, "router_acc on one domain's prompts", group="route")
declare("route.<kind>.eval_loss", "nats/token", False, "token-weighted eval_loss over all domains, adapters picked "
        "by `kind` (routed, oracle, shared)", group="route")
# issue 22: RLHF — the reward model (objective reward) and online RL (grpo, rloo)
_R = {"group": "rlhf"}
declare("reward_accuracy", "fraction", True, "held-out pairs the reward model scores chosen above rejected (a tie "
        "is not a win)", **_R)
declare("reward_accuracy_train", "fraction", True, "reward_accuracy on up to 64 training pairs", **_R)
declare("reward_pairs", "pairs", None, "held-out pairs reward_accuracy is taken over (both answers within seq_len)",
        **_R)
declare("rl_reward_mean", "reward", True, "mean training reward (reward model score or rule) of the policy's "
        "samples on the held-out prompts, one each at the training temperature", **_R)
declare("rl_reward_se", "reward", None, "standard error of rl_reward_mean over the held-out prompts", **_R)
declare("rl_reward_mean_before", "reward", True, "rl_reward_mean of the start model (same prompts, same seed)",
        **_R)
declare("rl_reward_before_se", "reward", None, "standard error of rl_reward_mean_before", **_R)
declare("heldout_reward_mean", "reward", True, "the same held-out samples' mean under `objective.held_out_reward`, a "
        "second reward never trained against (over-optimisation: rl_reward_mean rises, this does not)", **_R)
declare("heldout_reward_se", "reward", None, "standard error of heldout_reward_mean over the held-out prompts", **_R)
declare("heldout_reward_mean_before", "reward", True, "heldout_reward_mean of the start model (same samples as "
        "rl_reward_mean_before)", **_R)
declare("heldout_reward_before_se", "reward", None, "standard error of heldout_reward_mean_before", **_R)
declare("gen_len_mean", "tokens", None, "mean length of the held-out completions (EOS included)", **_R)
declare("gen_s", "s", False, "time spent writing rollouts during training (TRL's generate)", device=WALL_TIME, **_R)
declare("gen_tokens_per_s", "tokens/s", True, "completion tokens written during training ÷ gen_s",
        device=WALL_TIME, **_R)
declare("gen_time_share", "fraction", None, "gen_s ÷ train_s: the share of the training phase spent generating",
        **_R)
# issue 21: train.kernels: cpu (harness/cpu_kernels.py)
declare("kernels_dropout_modules", "modules", None, "train.kernels cpu: dropout modules drawn by the counter-based "
        "kernel")
declare("kernels_lora_modules", "modules", None, "train.kernels cpu: LoRA layers whose up-projection, scaling and "
        "add run as one addmm")
declare("kernels_norm_modules", "modules", None, "train.kernels cpu: RMSNorm modules computed in one pass per row")
# derived by the report, never stored
declare("cost_usd", "USD", False, "train_s × the report's price per hour (`--price-per-hour`)", group="report",
        stored=False, device=WALL_TIME)  # train_s's timing: contention inflates it too
