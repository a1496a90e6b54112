"""The fine-tuning recipe, top to bottom: load → adapt → data → train → evaluate → latency → save."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

from harness import models
from harness.data import DATASETS
from harness.data.base import split, train_subset
from harness.data.tokenize import encode_all, make_collator, prompt_text
from harness.evaluate import perplexity, token_loss
from harness.measure import LATENCY_PROMPTS, PeakMemory, count_params, dir_bytes, latency, percentile
from harness.objectives.domains import evaluate_sources, pooled
from harness.objectives.runs import start_ref


def train_and_measure(spec, run_dir: Path, metrics: dict, tracker, reference: Path | None = None) -> str:
    """Run one fine-tuning job, filling `metrics` as each figure is measured. Returns the device.

    `reference` is the result folder of the untouched-base row, for the forgetting figures.
    Metrics already filled survive an exception, so a failed run still reports what it got to.
    """
    import transformers

    from harness.run import RunContext

    transformers.set_seed(spec.seed)
    device = models.pick_device()
    if spec.objective.name == "route":  # no fine-tuning: a router over finished runs' adapters
        from harness.objectives import route

        route.run(spec, run_dir, metrics, device)
        return device
    t0 = time.perf_counter()
    teacher = None
    if spec.objective.name == "distill":
        from harness.objectives import distill

        teacher, teacher_tokenizer = distill.load_teacher(spec.objective, spec.model, device,
                                                          root=run_dir.parent.parent, experiment=run_dir.parent.name)
    if teacher is not None and spec.objective.student is not None:  # a depth-pruned copy of the teacher
        model, tokenizer = distill.pruned_student(spec.objective, teacher), teacher_tokenizer
    elif start_ref(spec):  # from a finished run's merged weights: an SFT run before DPO, an earlier stage
        from harness.objectives.runs import run_model_folder

        start = run_model_folder(start_ref(spec), run_dir.parent.parent, run_dir.parent.name)
        model, tokenizer = models.load(spec.model.model_copy(update={"name": str(start)}), device)
    else:
        model, tokenizer = models.load(spec.model, device)
    train_records, val_records = _records(spec, metrics)
    train_set, val_set = _encoded(spec, tokenizer, train_records, val_records)
    steps = spec.train.max_steps or math.ceil(
        len(train_set) / (spec.train.micro_batch * spec.train.grad_accum) * spec.train.epochs)
    ctx = RunContext(spec=spec, run_dir=run_dir, device=device, total_steps=steps)
    method = spec.method.build()
    model = method.apply(model, ctx)
    activate = _objective_weights(spec, model, tokenizer, run_dir)
    if spec.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # checkpointed blocks need a grad path from frozen embeddings
    metrics["load_s"] = round(time.perf_counter() - t0, 3)
    trainable, total = count_params(model)
    metrics.update(trainable_params=trainable, total_params=total, trainable_pct=100 * trainable / total,
                   trainable_params_peft=peft_trainable_params(model))

    collator = make_collator(tokenizer, spec.train.packing)
    prompts = [prompt_text(tokenizer, p, spec.data) for p in LATENCY_PROMPTS[: spec.eval.latency_prompts]]
    if teacher is not None:
        metrics.update(_teacher_figures(spec, teacher, model, tokenizer, val_set, collator, prompts, device),
                       student_params=metrics["total_params"])
    sources = _scored_sources(spec, run_dir)
    if spec.objective.name == "continual":  # where the stage starts: stage 0, the base on every domain (FWT's b);
        # a later stage, on the previous stage's domain only (the rest repeats that stage's own scores)
        objective = spec.objective
        before = sources if not objective.stage else [objective.sequence[objective.stage - 1]]
        metrics.update(evaluate_sources(model, tokenizer, spec, before, device, prefix="task_eval_before"))
    if method.trains:
        objective_data = train_records if spec.objective.is_preference else None
        trainer = _train(spec, model, method, ctx, train_set, val_set, collator, run_dir, metrics, tracker,
                         teacher=teacher, tokenizer=tokenizer, records=objective_data, activate=activate)
        if spec.objective.is_preference:
            from harness.objectives import preference

            metrics.update(preference.figures(trainer, tokenizer, train_records, val_records, spec, device))
            preference.drop_reference(model)
        del trainer  # a preference run's frozen reference copy goes with it
    if teacher is not None:
        metrics["distill_kl"] = distill.val_kl(model, teacher, val_set, collator, spec.eval.batch_size, device)

    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        eval_loss, eval_tokens = token_loss(model, val_set, collator, spec.eval.batch_size, device)
        metrics["eval_s"] = round(time.perf_counter() - t0, 3)
    metrics.update(eval_loss=eval_loss, eval_ppl=perplexity(eval_loss), eval_tokens=eval_tokens,
                   peak_mem_eval_mb=round(mem.peak_mb, 1))
    if sources:
        metrics.update(evaluate_sources(model, tokenizer, spec, sources, device,
                                        activate=activate if spec.objective.name == "multitask" else None))
    if activate is not None:  # with task adapters, the overall loss is each task's with its own adapters
        loss, tokens = pooled(metrics, _trained_sources(spec, run_dir))
        metrics.update(eval_loss=loss, eval_ppl=perplexity(loss), eval_tokens=tokens)

    if spec.eval.tasks:
        _score_tasks(spec, model, tokenizer, metrics, reference)

    if spec.eval.latency:
        prefill, decode = latency(model, tokenizer, prompts, spec.eval.latency_new_tokens, device)
        metrics.update(infer_prefill_ms=prefill, infer_decode_ms_per_token=decode)
    if teacher is not None:
        metrics.update(distill.comparison(metrics))

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
        if spec.eval.latency:
            prefill, decode = latency(model, tokenizer, prompts, spec.eval.latency_new_tokens, device)
            metrics.update(infer_prefill_ms_merged=prefill, infer_decode_ms_per_token_merged=decode)
    return device


def _train(spec, model, method, ctx, train_set, val_set, collator, run_dir: Path, metrics: dict, tracker,
           teacher=None, tokenizer=None, records=None, activate=None):
    """The Trainer part of the recipe: train with the run's callbacks, record the training figures
    and return the Trainer. The objective picks the Trainer: ours (sft), DistillTrainer (toward the
    teacher's outputs), or TRL's for a preference objective (on the `records` pairs)."""
    from harness.train import MetricsLog, PeriodicEval, TrainStats, build_trainer, training_args

    device = ctx.device
    metrics_path = run_dir / "metrics.jsonl"
    stats = TrainStats()
    callbacks = [MetricsLog(metrics_path, tracker, stats), *method.callbacks(ctx)]
    evaluate = lambda m: token_loss(m, val_set, collator, spec.eval.batch_size, device)[0]  # noqa: E731
    if spec.eval.every_steps:
        callbacks.append(PeriodicEval(spec.eval.every_steps, evaluate, metrics_path, tracker))
    with tempfile.TemporaryDirectory(prefix="trainer-", dir=run_dir) as trainer_dir:
        args_extra, extra = {}, {}
        if teacher is not None:
            from harness.objectives.distill import DistillTrainer

            extra = {"trainer_cls": DistillTrainer, "teacher": teacher, "objective": spec.objective,
                     "cache": _teacher_cache(spec, teacher, train_set, tokenizer, run_dir, metrics, device)}
        elif records is not None:
            from harness.objectives.preference import trainer_parts

            trainer_cls, args_cls, options, train_set = trainer_parts(spec.objective, tokenizer, records, spec.data,
                                                                      spec.train.seq_len)
            collator = None  # TRL pads its own (prompt, chosen, rejected) batches
            # TRL defaults to checkpointing and bf16 autocast; the run's settings and dtype decide here
            args_extra = {"args_cls": args_cls, "bf16": False, "gradient_checkpointing": spec.train.gradient_checkpointing,
                          **options}
            extra = {"trainer_cls": trainer_cls, "processing_class": tokenizer}
        elif spec.objective.name == "multitask":
            from harness.objectives.multitask import MultitaskTrainer, TaskCollator, examples_seen

            metrics.update(examples_seen(spec, train_set))
            collator = TaskCollator(collator)
            extra = {"trainer_cls": MultitaskTrainer, "tasks": spec.objective.sources(),
                     "weights": [t.weight for t in spec.objective.tasks], "activate": activate}
        elif spec.objective.name == "continual" and spec.objective.strategy == "ewc" and spec.objective.stage:
            from harness.objectives.continual import EwcTrainer, ewc_state

            fisher, anchors = ewc_state(model, spec, tokenizer, collator, device)
            extra = {"trainer_cls": EwcTrainer, "fisher": fisher, "anchors": anchors,
                     "strength": spec.objective.ewc_lambda}
        args = training_args(spec.train, out_dir=Path(trainer_dir), seed=spec.seed, device=device,
                             packing=spec.train.packing and records is None, **args_extra)
        trainer = build_trainer(model, args, train_set, collator, callbacks=callbacks,
                                optimizer=method.optimizer(model, spec.train), **extra)
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            trainer.train()
            metrics["train_s"] = round(time.perf_counter() - t0, 3)
    metrics["peak_mem_train_mb"] = round(mem.peak_mb, 1)
    metrics.update(getattr(trainer, "figures", {}))  # an objective trainer's own figures (EWC's penalty)
    tail = stats.losses[-max(1, len(stats.losses) // 10):]
    metrics["train_loss"] = sum(tail) / len(tail) if tail else None
    metrics["train_tokens"] = int(trainer.state.num_input_tokens_seen)
    metrics["train_tokens_per_s"] = metrics["train_tokens"] / metrics["train_s"] if metrics["train_s"] else None
    metrics["step_ms_p50"] = percentile(stats.step_ms, 50)
    metrics["step_ms_p90"] = percentile(stats.step_ms, 90)
    return trainer


def _teacher_cache(spec, teacher, train_set, tokenizer, run_dir: Path, metrics: dict, device: str):
    """`cache_teacher: true`: the teacher's top-k over the training examples, from the model cache or
    computed now (`teacher_cache_s`: the seconds it cost this run)."""
    if not spec.objective.cache_teacher:
        return None
    from harness.data.tokenize import make_collator
    from harness.objectives import teacher_cache
    from harness.objectives.distill import softened, teacher_identity

    identity = teacher_identity(spec.objective, run_dir.parent.parent, run_dir.parent.name)
    with softened(teacher, spec.objective.temperature):
        cache, seconds = teacher_cache.load_or_build(teacher, identity, train_set, make_collator(tokenizer, False), device,
                                                     spec.objective.temperature, spec.objective.cache_top_k)
    metrics["teacher_cache_s"] = round(seconds, 3)
    return cache


def _teacher_figures(spec, teacher, student, tokenizer, val_set, collator, prompts, device) -> dict:
    """The teacher's size, validation loss and decode speed, and the student's KL to it before training."""
    from harness.objectives.distill import val_kl

    loss, _ = token_loss(teacher, val_set, collator, spec.eval.batch_size, device)
    figures = {"teacher_params": count_params(teacher)[1], "teacher_eval_loss": loss, "teacher_eval_ppl": perplexity(loss),
               "distill_kl_before": val_kl(student, teacher, val_set, collator, spec.eval.batch_size, device)}
    if spec.eval.tasks and not hasattr(teacher, "members"):  # for quality_retention_task_pct
        from harness.lmeval import score
        from harness.objectives.distill import teacher_task_scores

        scores, _ = score(teacher, tokenizer, spec.eval.tasks, limit=spec.eval.limit, num_fewshot=spec.eval.num_fewshot,
                          batch_size=spec.eval.batch_size, seed=spec.seed)
        figures.update(teacher_task_scores(scores, spec.eval.tasks))
    if spec.eval.latency:  # an ensemble decodes with every member
        members = getattr(teacher, "members", [teacher])
        figures["teacher_decode_ms_per_token"] = sum(
            latency(m, tokenizer, prompts, spec.eval.latency_new_tokens, device)[1] for m in members)
    return figures


def _score_tasks(spec, model, tokenizer, metrics: dict, reference: Path | None) -> None:
    """lm-eval task scores, and forgetting against the reference row when it scored general_ppl."""
    from harness import store
    from harness.lmeval import score

    scores, seconds = score(model, tokenizer, spec.eval.tasks, limit=spec.eval.limit,
                            num_fewshot=spec.eval.num_fewshot, batch_size=spec.eval.batch_size, seed=spec.seed)
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


def _records(spec, metrics: dict | None = None) -> tuple[list, list[dict]]:
    """(train subset, validation set) records; the validation set depends only on the data config.
    A multitask run's training records are one list per task; a continual stage's include replay."""
    if spec.objective.name == "multitask":
        from harness.objectives import multitask

        return multitask.task_records(spec), multitask.validation(spec)
    splits = split(DATASETS.get(spec.data.name)().records(spec.data), spec.data)
    if spec.objective.name == "continual":
        from harness.objectives.continual import stage_records

        train, replayed = stage_records(spec)
        if metrics is not None:
            metrics["replay_examples"] = replayed
        return train, splits.val
    return train_subset(splits.train_pool, spec.data.n_train, spec.seed), splits.val


def _trained_sources(spec, run_dir: Path) -> list[str]:
    """A multitask run's tasks (an extension's include the extended run's) or a continual sequence."""
    from harness.objectives.multitask import extended_tasks

    old = extended_tasks(spec, run_dir.parent.parent, run_dir.parent.name)[0] if spec.objective.name == "multitask" else []
    return [*old, *spec.objective.sources()]


def _scored_sources(spec, run_dir: Path) -> list[str]:
    """The sources whose validation splits a run scores: `eval.sources`, then what it trained on."""
    return list(dict.fromkeys([*spec.eval.sources, *_trained_sources(spec, run_dir)]))


def _objective_weights(spec, model, tokenizer, run_dir: Path):
    """Objective-specific weights on the applied method: a multitask run's task adapters (returns the
    function that activates a task's), or a continual stage's copy of the previous stage's adapter."""
    from harness.objectives.continual import continues_weights

    if spec.objective.name == "multitask":
        from harness.objectives.multitask import add_task_adapters

        return add_task_adapters(model, spec, run_dir.parent.parent, run_dir.parent.name)
    if continues_weights(spec) and not spec.method.cls.saves_full_model:  # a full model came as the base
        from harness.objectives.continual import resume_adapter
        from harness.objectives.runs import finished_run

        _, previous, _, why = finished_run(spec.objective.previous, run_dir.parent.parent, run_dir.parent.name)
        if previous is None:
            raise ValueError(why)
        resume_adapter(model, previous)
    return None


def _encoded(spec, tokenizer, train_records: list, val_records: list[dict]) -> tuple[list[dict], list[dict]]:
    """The records tokenized with response-only labels (a preference run's: its chosen answers; a
    multitask run's: its tasks' examples laid out in single-task micro-batches)."""
    if spec.objective.name == "multitask":
        from harness.objectives.domains import source_cfg
        from harness.objectives.multitask import schedule

        per_task = [encode_all(tokenizer, records, source_cfg(spec.data, task.name), spec.train.seq_len)
                    for task, records in zip(spec.objective.tasks, train_records)]
        empty = [t.name for t, e in zip(spec.objective.tasks, per_task) if not e]
        if empty:
            raise ValueError(f"task `{empty[0]}` has no usable examples after truncation to seq_len={spec.train.seq_len}")
        batches = (spec.train.max_steps * spec.train.grad_accum if spec.train.max_steps else
                   math.ceil(sum(map(len, per_task)) * spec.train.epochs / spec.train.micro_batch))
        train = schedule(spec, per_task, batches)
    else:
        train = encode_all(tokenizer, train_records, spec.data, spec.train.seq_len)
    val = encode_all(tokenizer, val_records, spec.data, spec.train.seq_len)
    if not train or not val:
        raise ValueError(f"no usable examples after truncation to seq_len={spec.train.seq_len}")
    return train, val


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
