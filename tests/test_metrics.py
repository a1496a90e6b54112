"""The metric vocabulary (harness/metrics.py): declarations, directions, and the readers that use them."""

from __future__ import annotations

import numpy as np
import pytest

import harness.tasks  # noqa: F401  (built-in tasks declare their primary scores)
from harness import store
from harness.metrics import METRICS, Metric, UndeclaredMetric, Vocabulary, lm_eval_higher_is_better
from harness.report.stats import pareto_mask
from harness.search.space import _unknown_metric

#: the result.json contract as it was first written: the vocabulary must keep these keys in this order
CONTRACT = ["train_loss", "eval_loss", "eval_ppl", "train_tokens", "train_tokens_per_s", "step_ms_p50", "step_ms_p90",
            "peak_mem_train_mb", "peak_mem_eval_mb", "infer_prefill_ms", "infer_decode_ms_per_token",
            "trainable_params", "total_params", "trainable_pct", "adapter_bytes", "load_s", "train_s", "eval_s", "wall_s"]
LATER = ["eval_tokens", "trainable_params_peft", "merge_s", "infer_prefill_ms_merged", "infer_decode_ms_per_token_merged",
         "task_eval_s", "forgetting_ppl_delta", "forgetting_ppl_pct", "teacher_params", "student_params",
         "compression_ratio", "teacher_eval_loss", "teacher_eval_ppl", "teacher_decode_ms_per_token",
         "quality_retention_pct", "infer_speedup", "distill_kl_before", "distill_kl", "teacher_cache_s",
         "quality_retention_task_pct", "pref_accuracy", "reward_margin", "kl_to_ref", "pref_accuracy_train",
         "peak_mem_train_reserved_mb", "peak_mem_eval_reserved_mb", "mem_weights_mb", "mem_trainable_mb",
         "mem_grads_mb", "mem_optimizer_mb", "train_timed_s", "train_timed_steps", "mfu",
         "infer_prefill_ms_iqr", "infer_decode_ms_per_token_iqr", "infer_prefill_ms_merged_iqr",
         "infer_decode_ms_per_token_merged_iqr", "latency_samples", "latency_s", "overhead_s", "startup_s",
         "test_loss", "test_ppl", "test_tokens", "test_s", "mem_est_weights_mb", "mem_est_grads_mb",
         "mem_est_optimizer_mb", "mem_est_activations_mb", "mem_est_overhead_mb", "peak_mem_train_est_mb",
         "peak_mem_eval_est_mb", "mem_est_held_mb", "objective_s"]


def test_the_store_keys_are_the_contract_in_its_order():
    assert store.METRIC_KEYS == CONTRACT
    assert store.OPTIONAL_METRIC_KEYS == LATER


def test_every_memory_and_time_metric_says_what_the_device_measured():
    for metric in METRICS:
        assert metric.definition and metric.aggregate in ("mean", "max", "min"), metric.key
        if metric.unit in ("MiB", "ms", "ms/token", "s", "tokens/s"):
            assert metric.device, metric.key


@pytest.mark.parametrize("key, higher", [
    ("quality_retention_task_pct", True),  # `_pct` in its name once made it lower-is-better: a search minimized it
    ("quality_retention_pct", True), ("forgetting_ppl_pct", False), ("trainable_pct", False),
    ("train_tokens_per_s", True), ("pref_accuracy", True), ("kl_to_ref", False), ("router_acc", True),
    ("router_acc.chat_health", True), ("task_eval.chat_health.eval_loss", False), ("route.oracle.eval_loss", False),
    ("train_tokens", None), ("eval_tokens", None), ("task.polarity.acc_stderr", None), ("task.polarity.n", None),
])
def test_directions_are_declared_not_guessed(key, higher):
    assert METRICS.higher_is_better(key) is higher


def test_task_scores_take_the_tasks_own_direction():
    # built-in tasks declare their primary score; the rest come from lm-eval's own metric registry
    assert METRICS.higher_is_better("task.general_ppl.word_perplexity") is False
    assert METRICS.higher_is_better("task.aclsum_sum.rougeL") is True  # lm-eval's registry has no rougeL
    assert lm_eval_higher_is_better("rougeL") is None
    assert METRICS.higher_is_better("task.general_ppl.bits_per_byte") is False
    assert METRICS.higher_is_better("task.hellaswag.acc_norm") is True
    assert METRICS.higher_is_better("teacher_task.general_ppl.word_perplexity") is False
    assert METRICS.direction("task.polarity.acc") == "maximize"


def test_an_undeclared_metric_is_named_with_a_suggestion():
    assert METRICS.undeclared(["eval_loss", "task.polarity.acc", "eval_los", "cost_usd"]) == ["eval_los", "cost_usd"]
    with pytest.raises(UndeclaredMetric, match=r"undeclared metric `eval_los`\. Did you mean `eval_loss`\?"):
        METRICS.get("eval_los")


def test_patterns_match_one_dotted_part_the_most_specific_first():
    vocab = Vocabulary()
    vocab.declare(Metric("task.<task>.<metric>", "", None, "a score", task_score=True))
    vocab.declare(Metric("task.<task>.<metric>_stderr", "", None, "its error"))
    assert vocab.lookup("task.polarity.acc_stderr").key == "task.<task>.<metric>_stderr"
    assert vocab.lookup("task.polarity.acc").key == "task.<task>.<metric>"
    assert vocab.lookup("task.polarity") is None and vocab.lookup("task.a.b.c") is None


def test_a_declaration_is_checked_when_made():
    vocab = Vocabulary()
    vocab.declare(Metric("x_s", "s", False, "a time", device="wall-clock"))
    vocab.declare(Metric("x_s", "s", False, "a time", device="wall-clock"))  # the same twice is harmless
    with pytest.raises(ValueError, match="already declared"):
        vocab.declare(Metric("x_s", "s", True, "a time", device="wall-clock"))
    with pytest.raises(ValueError, match="declare its `device` semantics"):
        Metric("y_mb", "MiB", False, "a peak")
    with pytest.raises(ValueError, match="aggregate must be one of"):
        Metric("y", "", False, "y", aggregate="median")
    with pytest.raises(ValueError, match="a definition is required"):
        Metric("y", "", False, "")
    with pytest.raises(ValueError, match="cannot be present in every result"):
        Metric("a.<b>", "", False, "a", presence="always")
    with pytest.raises(ValueError, match="names `<task>` and `<metric>`"):
        Metric("a.<b>", "", False, "a", task_score=True)


def test_strict_mode_records_an_undeclared_metric_as_a_failed_run(monkeypatch):
    monkeypatch.setenv(store.STRICT_METRICS_ENV, "1")
    spec = {"run_id": "r-1", "experiment": "e", "slug": "r"}
    result = store.make_result(spec, status="ok", error=None, metrics={"eval_loss": 1.0, "my_score": 2.0}, env={},
                               started_at=None, finished_at=None)
    assert result["status"] == "failed" and result["error"]["type"] == "UndeclaredMetric"
    assert "my_score" in result["error"]["message"] and result["metrics"]["my_score"] == 2.0
    monkeypatch.setenv(store.STRICT_METRICS_ENV, "0")  # outside tests a plugin's own figure is kept as is
    assert store.make_result(spec, status="ok", error=None, metrics={"my_score": 2.0}, env={}, started_at=None,
                             finished_at=None)["status"] == "ok"


def test_search_metrics_are_stored_ones():
    assert _unknown_metric("task.polarity.acc") is None and _unknown_metric("router_acc.chat_health") is None
    assert "unknown metric `cost_usd`" in _unknown_metric("cost_usd")  # the report derives it; no run stores it
    assert "Did you mean `eval_loss`" in _unknown_metric("eval_los")


def test_a_pareto_front_takes_each_axis_in_its_own_direction():
    throughput, loss = [100, 200, 300], [1.0, 1.5, 1.2]
    # tokens/s is better higher: (300, 1.2) beats (200, 1.5); (100, 1.0) stays for its loss
    assert pareto_mask(throughput, loss, True, minimize_cost=False).tolist() == [True, False, True]
    assert pareto_mask(throughput, loss, True).tolist() == [True, False, False]


def test_report_metrics_read_the_vocabulary():
    from harness.report.frame import DISTILL, Metric as Shown, lower_is_better

    assert lower_is_better("quality_retention_task_pct") is False
    assert all(m.lower_is_better == (not METRICS.higher_is_better(m.key)) for m in DISTILL)
    with pytest.raises(UndeclaredMetric):
        Shown("my_score", "mine")
    with pytest.raises(TypeError, match="fmt must be a format string"):
        Shown("eval_loss", "eval loss", True, "{:.3f}")  # an old call that still passes a direction


def test_seeds_aggregate_as_declared():
    from harness.report.frame import aggregate

    assert aggregate("task.polarity.n", [50, 50, 48]).mean == 50  # documents scored: the largest
    ci = aggregate("eval_loss", [1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.low < 2.0 < ci.high


def test_the_docs_table_has_a_row_per_declaration():
    table = METRICS.markdown().splitlines()
    assert len(table) == 2 + len(list(METRICS))
    assert any(row.startswith("| `quality_retention_task_pct` | % | higher |") for row in table)
    assert any(row.startswith("| `task.<task>.<metric>` |") and "the task's own" in row for row in table)


def test_the_wandb_summary_carries_each_declared_goal(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from harness.config import TrackingCfg
    from harness.tracking import WandbTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracker = WandbTracker(TrackingCfg(backend="wandb"), experiment="e", slug="s", method="lora", spec={})
    tracker.summary({"eval_loss": 1.5, "pref_accuracy": 0.75, "train_tokens": 100, "kl_to_ref": None})
    summary, goals = dict(tracker._run.summary), dict(tracker._run.config)["metric_goals"]
    tracker.finish("ok")
    assert summary["eval_loss"] == 1.5 and summary["pref_accuracy"] == 0.75 and "kl_to_ref" not in summary
    assert np.isfinite(summary["train_tokens"])
    assert goals == {"eval_loss": "minimize", "pref_accuracy": "maximize"}  # train_tokens has no direction
