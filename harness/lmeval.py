"""Task scores through EleutherAI's lm-evaluation-harness, on an in-memory (peft) model.

Our own tasks (harness.tasks) are built into YAML + jsonl and found through
`TaskManager(include_path=...)`; any other name is one of lm-eval's tasks."""

from __future__ import annotations

import logging
import math
import time

from harness.tasks import LOCAL_TASKS, build_all


def _lm_class():
    from lm_eval.models.huggingface import HFLM

    class InMemoryLM(HFLM):
        """HFLM over a model object. Prompt-learning peft models prepend virtual tokens and
        return logits for them too; keep the logits of the real input positions only."""

        def _model_call(self, inps, attn_mask=None, labels=None):
            logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            return logits[:, -inps.shape[1]:]

    return InMemoryLM


def task_manager(tasks: list[str]):
    """A TaskManager that knows our local tasks (and lm-eval's own, when a task needs them)."""
    from lm_eval.tasks import TaskManager

    local = build_all(tasks)
    return TaskManager(include_path=local or None, include_defaults=any(t not in LOCAL_TASKS for t in tasks))


def score(model, tokenizer, tasks: list[str], *, limit: int | float | None, num_fewshot: int | None,
          batch_size: int, seed: int = 0, samples: dict | None = None) -> tuple[dict[str, float], float]:
    """Evaluate `model` on `tasks`; returns ({`task.<task>.<metric>`: value, ...}, seconds).

    Each metric's standard error, where lm-eval computes one, is `task.<task>.<metric>_stderr`; a
    multiple-choice task's chance accuracy (mean over documents of 1 / its choices) is
    `task.<task>.chance`. With `samples` (a dict), it is filled with every document's scores by task
    (`per_document`).
    """
    import lm_eval

    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    lm = _lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                  task_manager=task_manager(tasks), log_samples=True, bootstrap_iters=1000,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    scores = flatten(out["results"])
    for task, docs in (out.get("samples") or {}).items():
        documents = per_document(docs)
        if samples is not None:
            samples[task] = documents
        if documents.get("choices"):
            scores[f"task.{task}.chance"] = sum(1 / k for k in documents["choices"]) / len(documents["choices"])
    return scores, elapsed


def per_document(docs: list[dict]) -> dict:
    """lm-eval's logged samples of one task → {"doc_id": [...], <metric>: [score per document], ...}.

    A metric lm-eval aggregates from (log-likelihood, count) pairs (word_perplexity, bits_per_byte)
    becomes {"nll": [−log-likelihood], "count": [words, bytes, …]}: the corpus figure is a function of
    Σnll ÷ Σcount, so it resamples by document. A multiple-choice task adds "choices" (per document)."""
    out: dict = {"doc_id": [d.get("doc_id") for d in docs]}
    if docs and all(isinstance(d.get("arguments"), (list, tuple)) and len(d["arguments"]) > 1
                    and isinstance(d.get("target"), int) for d in docs):
        out["choices"] = [len(d["arguments"]) for d in docs]
    for metric in docs[0].get("metrics", []) if docs else []:
        values = [d.get(metric) for d in docs]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[metric] = [float(v) for v in values]
        elif all(isinstance(v, (list, tuple)) and len(v) == 2 for v in values):
            out[metric] = {"nll": [-float(v[0]) for v in values], "count": [float(v[1]) for v in values]}
    return out


def flatten(results: dict) -> dict[str, float]:
    """lm-eval's {task: {"acc,none": x, "acc_stderr,none": s}} → {"task.<task>.acc": x, ...};
    `sample_len` (documents scored) becomes `task.<task>.n`."""
    metrics = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, _filter = key.partition(",")
            if metric == "alias" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # "N/A" stderrs, aliases
            if isinstance(value, float) and not math.isfinite(value):
                continue
            metrics[f"task.{task}.{'n' if metric == 'sample_len' else metric}"] = float(value)
    return metrics
