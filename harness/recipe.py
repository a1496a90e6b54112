"""The fine-tuning recipe, top to bottom: load → adapt → data → train → evaluate → latency → save."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

from harness import distributed, models, store
from harness.context import RunContext
from harness.data.tokenize import make_collator, prompt_text
from harness.evaluate import example_losses, perplexity, token_loss
from harness.measure import (LATENCY_PROMPTS, PeakMemory, count_params, dir_bytes, latency, peak_tflops, percentile,
                             train_flops_per_token, weight_bytes)
from harness.objectives.parts.domains import evaluate_sources, pooled
from harness.runrefs import RunRefs


def train_and_measure(spec, run_dir: Path, metrics: dict, tracker, reference: Path | None = None,
                      reads: dict[str, str] | None = None) -> str:
    """Run one fine-tuning job, filling `metrics` as each figure is measured. Returns the device.

    Args:
        reference: the result folder of the untouched-base row, for the forgetting figures.
        reads: {`run:<slug>`: run id} of the sweep's own runs this run reads (its spec's `reads`).

    Metrics already filled survive an exception, so a failed run still reports what it got to.
    """
    import transformers

    transformers.set_seed(spec.seed)
    device = models.pick_device()
    distributed.setup(device)  # under torchrun: this rank's GPU, the process group with its timeout
    refs = RunRefs(run_dir.parent.parent, run_dir.parent.name, reads)
    ctx = RunContext(spec=spec, run_dir=run_dir, device=device, total_steps=0, refs=refs)
    objective = spec.objective.build()
    if not objective.fine_tunes:  # e.g. a router over finished runs' adapters
        objective.run(ctx, metrics)
        return device

    # setup: the model, the data, the method on the model
    runtime_mb = _runtime_mb(device)  # what the process holds before the model: the estimate's CPU overhead
    t0 = time.perf_counter()
    model, tokenizer = objective.load(ctx)
    train_records, val_records = objective.records(ctx, metrics)
    train_set, val_set = objective.encode(ctx, tokenizer, train_records, val_records)
    if not train_set or not val_set:
        raise ValueError(f"no usable examples after truncation to seq_len={spec.train.seq_len}")
    ctx.total_steps = spec.train.max_steps or math.ceil(
        len(train_set) / (spec.train.micro_batch * spec.train.grad_accum * distributed.processes(spec.train))
        * spec.train.epochs)
    method = spec.method.build()
    model = method.apply(model, ctx)
    if spec.train.kernels == "cpu":
        from harness.cpu_kernels import apply_cpu_kernels

        metrics.update(apply_cpu_kernels(model))
    activate = objective.after_method(model, tokenizer, ctx)
    if spec.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # checkpointed blocks need a grad path from frozen embeddings
    metrics["load_s"] = round(time.perf_counter() - t0, 3)
    trainable, total = count_params(model)
    metrics.update(trainable_params=trainable, total_params=total, trainable_pct=100 * trainable / total,
                   trainable_params_peft=peft_trainable_params(model))
    weights, trainable_bytes = weight_bytes(model)
    metrics.update(mem_weights_mb=_mib(weights), mem_trainable_mb=_mib(trainable_bytes))
    metrics.update(_memory_estimate(spec, model, device, train_set, val_set, runtime_mb,
                                    lambda: _held_names(objective, ctx)))

    # train
    collator = make_collator(tokenizer, spec.train.packing)
    prompts = [prompt_text(tokenizer, p, spec.data) for p in LATENCY_PROMPTS[: spec.eval.latency_prompts]]
    t0 = time.perf_counter()
    objective.before_training(model, tokenizer, ctx, val_set, collator, prompts, metrics)
    objective_s = time.perf_counter() - t0
    if method.trains:
        parts = objective.trainer_parts(model, tokenizer, ctx, train_set, train_records, collator, metrics)
        trainer = _train(spec, model, method, ctx, train_set, val_set, collator, metrics, tracker, parts)
        t0 = time.perf_counter()
        objective.after_training(trainer, model, tokenizer, ctx, train_records, val_records, val_set, collator,
                                 metrics)
        objective_s += time.perf_counter() - t0
        del trainer  # a preference run's frozen reference copy goes with it
    metrics["objective_s"] = round(objective_s, 3)

    # evaluate: validation (what choices are made on), then the test split (what is reported beside it)
    examples: dict = {"splits": {}, "tasks": {}}  # per-example scores: intervals and paired comparisons
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        val = objective.validation(model, ctx, val_set, collator, metrics)  # None: no token loss (reward model)
        metrics["eval_s"] = round(time.perf_counter() - t0, 3)
    metrics.update(peak_mem_eval_mb=_round(mem.peak_mb), peak_mem_eval_reserved_mb=_round(mem.reserved_mb))
    if val is not None:
        metrics.update(eval_loss=val.loss, eval_ppl=perplexity(val.loss), eval_tokens=val.total_tokens)
        examples["splits"]["validation"] = val.as_record()
    sources = objective.scored_sources(ctx)
    if sources:
        metrics.update(evaluate_sources(model, tokenizer, spec, sources, device, activate=activate))
    if activate is not None:  # with task adapters, the overall loss is each task's with its own adapters
        loss, tokens = pooled(metrics, objective.trained_sources(ctx))
        metrics.update(eval_loss=loss, eval_ppl=perplexity(loss), eval_tokens=tokens)
        del examples["splits"]["validation"]  # not the examples eval_loss pools
    test_set = objective.test_set(ctx, tokenizer)
    if test_set:
        t0 = time.perf_counter()
        test = example_losses(model, test_set, collator, spec.eval.batch_size, device)
        metrics.update(test_loss=test.loss, test_ppl=perplexity(test.loss), test_tokens=test.total_tokens,
                       test_s=round(time.perf_counter() - t0, 3))
        examples["splits"]["test"] = test.as_record()
    if spec.eval.tasks:
        _score_tasks(spec, model, tokenizer, metrics, reference, examples["tasks"])
    store.write_json_atomic(run_dir / store.EXAMPLES_FILE, examples)

    def timed_latency(suffix: str = "") -> None:
        """Latency of `model` as it is when called (merged, the second time); latency_s sums both."""
        t0 = time.perf_counter()
        metrics.update(latency(model, tokenizer, prompts, spec.eval.latency_new_tokens, device,
                               spec.eval.latency_repeats, suffix=suffix))
        metrics["latency_s"] = round((metrics.get("latency_s") or 0) + time.perf_counter() - t0, 3)

    if spec.eval.latency and objective.generates:
        timed_latency()
    objective.finish(metrics)

    # save, then merge and time the merged model
    metrics["adapter_bytes"] = _save(method, model, run_dir, spec.train.save_weights)
    if method.merges and hasattr(model, "merge_and_unload") and activate is None:  # task adapters don't merge into one
        # "no extra inference latency once merged" is a claim users check: measure it
        t0 = time.perf_counter()
        try:
            model = model.merge_and_unload()
        except (ValueError, NotImplementedError, RuntimeError) as exc:  # an extra figure must not cost the run
            logging.getLogger("ftbench").warning("could not merge %s: %s", spec.method.name, exc)
            return device
        metrics["merge_s"] = round(time.perf_counter() - t0, 3)
        if spec.eval.latency and objective.generates:
            timed_latency("_merged")
    return device


def _train(spec, model, method, ctx: RunContext, train_set, val_set, collator, metrics: dict, tracker,
           parts: dict):
    """The Trainer part of the recipe: train with the run's callbacks, record the training figures
    and return the Trainer. `parts` are the objective's (`Objective.trainer_parts`): its Trainer
    class and arguments, and the training set or collator it replaces."""
    from harness.train import (DivergenceRule, LabelLogitsTrainer, MetricsLog, PeriodicEval, StepClock, TrainStats,
                               build_trainer, training_args)

    parts = dict(parts)
    if method.logits_at_labels:  # an objective's own Trainer computes its own loss
        parts.setdefault("trainer_cls", LabelLogitsTrainer)
    device, run_dir = ctx.device, ctx.run_dir
    metrics_path = run_dir / "metrics.jsonl"
    stats = TrainStats()
    mem = PeakMemory(device)
    rule = DivergenceRule(factor=spec.train.diverge_factor, collapse_steps=spec.train.collapse_steps,
                          vocab_size=getattr(getattr(model, "config", None), "vocab_size", None))
    callbacks = [MetricsLog(metrics_path, tracker, stats, rule), *method.callbacks(ctx), StepClock(stats, device)]
    if spec.eval.every_steps:
        eval_collator = collator  # the recipe's, even where the objective's Trainer batches its own way

        def evaluate(m):
            with mem.paused():  # a periodic evaluation is not training: out of the train peak
                return token_loss(m, val_set, eval_collator, spec.eval.batch_size, device)[0]

        callbacks.append(PeriodicEval(spec.eval.every_steps, evaluate, metrics_path, tracker))
    train_set = parts.pop("train_set", train_set)
    collator = parts.pop("collator", collator)
    packing = spec.train.packing and parts.pop("packing", True)
    args_extra = {"args_cls": parts.pop("args_cls")} if "args_cls" in parts else {}
    args_extra.update(parts.pop("args", {}))
    args_extra.update(distributed.trainer_args(spec.train, device))
    with tempfile.TemporaryDirectory(prefix="trainer-", dir=run_dir) as trainer_dir:
        args = training_args(spec.train, out_dir=Path(trainer_dir), seed=spec.seed, device=device, packing=packing,
                             **args_extra)
        trainer = build_trainer(model, args, train_set, collator, callbacks=callbacks,
                                optimizer=method.optimizer(model, spec.train), **parts)
        with mem:
            t0 = time.perf_counter()
            trainer.train()
            metrics["train_s"] = round(time.perf_counter() - t0, 3)
    launched = _launched_at()
    if launched is not None and stats.first_step_at is not None:
        metrics["startup_s"] = round(stats.first_step_at - launched, 3)
    metrics.update(peak_mem_train_mb=_round(mem.peak_mb), peak_mem_train_reserved_mb=_round(mem.reserved_mb),
                   mem_grads_mb=_mib(stats.grads_bytes), mem_optimizer_mb=_mib(stats.optimizer_bytes))
    if distributed.world_size() > 1:  # every rank's training peak; the run's is the largest
        peaks = distributed.gather(metrics["peak_mem_train_mb"])
        metrics.update(peak_mem_train_mb=max((p for p in peaks if p is not None), default=None),
                       peak_mem_train_mb_per_rank=peaks)
    metrics.update(getattr(trainer, "figures", {}))  # an objective trainer's own figures (EWC's penalty)
    tail = stats.losses[-max(1, len(stats.losses) // 10):]
    metrics["train_loss"] = sum(tail) / len(tail) if tail else None
    metrics["train_tokens"] = int(trainer.state.num_input_tokens_seen)
    seconds, tokens, step_ms = stats.steady(spec.eval.speed_warmup_steps)
    metrics.update(train_timed_s=round(seconds, 3), train_timed_steps=len(step_ms),
                   train_tokens_per_s=tokens / seconds if seconds > 0 else None,
                   step_ms_p50=percentile(step_ms, 50), step_ms_p90=percentile(step_ms, 90))
    peak = peak_tflops(device, str(models.pick_dtype(spec.model.dtype, device)).removeprefix("torch."))
    if peak and metrics["train_tokens_per_s"]:
        flops = train_flops_per_token(model, metrics["trainable_params"]) * metrics["train_tokens_per_s"]
        metrics["mfu"] = flops / (peak * 1e12)
    return trainer


def _runtime_mb(device: str) -> float | None:
    """The process's resident memory now (CPU), in MiB; None on CUDA."""
    if device != "cpu":
        return None
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _held_names(objective, ctx) -> list[str]:
    """Model names of what the objective holds frozen while training; a `run:` reference is that run's model."""

    def finished_model(ref: str) -> str | None:
        config = ctx.refs.finished(ref)[2]
        return None if config is None else config.model.name

    return objective.held_model_names(ctx.spec, finished_model)


def _memory_estimate(spec, model, device: str, train_set, val_set, runtime_mb: float | None, held) -> dict:
    """The peak-memory estimate's result keys (harness.memory), from the model as the method left it."""
    from harness import memory

    try:
        tokens = memory.batch_tokens(train_set, val_set, spec)
        names = held()  # the frozen models the objective holds (resolving a `run:` reads the store)
        held_mb = memory.held_weights_mb(names, spec, device) if names else 0.0
        return memory.estimate(spec, model, device, tokens=tokens, runtime_mb=runtime_mb, held_mb=held_mb).metrics()
    except Exception as exc:  # noqa: BLE001  (a prediction must not cost the run its measurements)
        logging.getLogger("ftbench").warning("no memory estimate for %s: %s: %s", spec.method.name,
                                             type(exc).__name__, exc)
        return {}


def _launched_at() -> float | None:
    """When the executor started this run's process (time.time(), from $FTBENCH_LAUNCHED_AT)."""
    import os

    from harness.contention import LAUNCHED_ENV

    try:
        return float(os.environ[LAUNCHED_ENV])
    except (KeyError, ValueError):
        return None


def _round(mib: float | None) -> float | None:
    return None if mib is None else round(mib, 1)


def _mib(n_bytes: int | None) -> float | None:
    """Bytes in MiB, to 0.1 (None stays None)."""
    return _round(None if n_bytes is None else n_bytes / 2**20)


def _score_tasks(spec, model, tokenizer, metrics: dict, reference: Path | None, samples: dict) -> None:
    """lm-eval task scores (each document's into `samples`), and forgetting against the reference row
    when it scored general_ppl."""
    from harness.lmeval import score

    scores, seconds = score(model, tokenizer, spec.eval.tasks, limit=spec.eval.limit,
                            num_fewshot=spec.eval.num_fewshot, batch_size=spec.eval.batch_size, seed=spec.seed,
                            samples=samples)
    metrics.update(scores)
    metrics["task_eval_s"] = round(seconds, 3)
    base = store.read_result(reference) if reference is not None else None
    if base is not None:
        metrics.update(forgetting(metrics, base.get("metrics") or {}))


def forgetting(metrics: dict, base: dict) -> dict:
    """`forgetting_ppl_delta` (run − base word perplexity on general_ppl) and the same in %."""
    key = "task.general_ppl.word_perplexity"
    run_ppl, base_ppl = metrics.get(key), base.get(key)
    if run_ppl is None or base_ppl is None:
        return {}
    return {"forgetting_ppl_delta": run_ppl - base_ppl, "forgetting_ppl_pct": 100 * (run_ppl - base_ppl) / base_ppl}


def peft_trainable_params(model) -> int | None:
    """Trainable parameters as peft itself reports them (None for models peft did not build)."""
    counter = getattr(model, "get_nb_trainable_parameters", None)
    return int(counter()[0]) if callable(counter) else None


def _save(method, model, run_dir: Path, policy: str) -> int:
    """Save the trained weights and return their size; full-model copies are kept only on `all`."""
    keep = policy == "all" or (policy == "adapter" and not method.saves_full_model)
    target = run_dir / "adapter" if keep else Path(tempfile.mkdtemp(prefix="weights-", dir=run_dir))
    try:
        method.save(model, target)
        return dir_bytes(target)
    finally:
        if not keep:
            shutil.rmtree(target, ignore_errors=True)
