"""The report-section registry and the one place the report maps objectives to sections."""

from __future__ import annotations

import pkgutil

import pandas as pd
import pytest

from harness.report import sections
from harness.objectives import OBJECTIVES
from harness.report.kinds import objective_of, runs_for
from harness.report.sections import REPORT_SECTIONS, ordered, register


def test_every_section_module_registers_one_section_at_its_own_position():
    modules = sorted(m.name for m in pkgutil.iter_modules(sections.__path__) if m.name != "base")
    owners = sorted(REPORT_SECTIONS.get(n).build.__module__.rsplit(".", 1)[1] for n in REPORT_SECTIONS)
    assert owners == modules
    orders = [s.order for s in ordered()]
    assert orders == sorted(set(orders))


def test_report_order_is_the_registered_order():
    assert [s.name for s in ordered()] == [
        "trust", "summary", "fronts", "distillation", "preference", "transfer", "adaptation", "multitask", "continual",
        "routing", "data_size", "rank_alpha", "training_curves", "findings", "search", "cost", "memory_estimate", "noise_floor",
        "failures", "environment"]


def test_a_taken_order_is_refused_and_nothing_is_registered():
    with pytest.raises(ValueError, match="order must be unique"):
        register("another_summary", order=10)(lambda ctx: [])
    assert "another_summary" not in REPORT_SECTIONS


def test_runs_for_selects_by_objective_and_sft_is_the_default():
    df = pd.DataFrame({"objective.name": [None, "distill", "dpo", "kto", "route"], "x": range(5)})
    assert objective_of(df).tolist() == ["sft", "distill", "dpo", "kto", "route"]
    assert runs_for(df, "single_task")["x"].tolist() == [0]
    assert runs_for(df, "preference")["x"].tolist() == [2, 3]
    df = pd.DataFrame({"objective.name": ["orpo", "multitask"], "x": range(2)})
    assert runs_for(df, "preference")["x"].tolist() == [0]  # a new objective's rows, by its own declaration
    assert runs_for(pd.DataFrame({"x": [1, 2]}), "single_task")["x"].tolist() == [1, 2]
    assert runs_for(pd.DataFrame({"x": [1, 2]}), "routing").empty
    with pytest.raises(KeyError):
        runs_for(df, "no_such_section")
    assert {s for n in OBJECTIVES for s in OBJECTIVES.get(n).report_sections} == {"single_task", "distillation", "preference", "multitask", "continual", "routing"}


def test_a_4bit_runs_gain_is_measured_from_the_full_precision_base():
    """QLoRA does not earn credit for recovering its own quantization loss (issue 18's example:
    4-bit base 19.98, fp32 base 15.00, LoRA 9.88, QLoRA 13.63)."""
    import pandas as pd

    from harness.report.sections.cost import cost_table

    summary = pd.DataFrame([
        {"config": "base", "reference": True, "quantized": False, "reference_config": None,
         "eval_ppl_mean": 15.00, "train_s_mean": None, "cost_usd_mean": None},
        {"config": "base-4bit", "reference": True, "quantized": True, "reference_config": None,
         "eval_ppl_mean": 19.98, "train_s_mean": None, "cost_usd_mean": None},
        {"config": "lora", "reference": False, "quantized": False, "reference_config": "base",
         "eval_ppl_mean": 9.88, "train_s_mean": 10.0, "cost_usd_mean": 0.01},
        {"config": "qlora", "reference": False, "quantized": True, "reference_config": "base-4bit",
         "eval_ppl_mean": 13.63, "train_s_mean": 12.0, "cost_usd_mean": 0.012},
        {"config": "worse", "reference": False, "quantized": True, "reference_config": "base-4bit",
         "eval_ppl_mean": 16.0, "train_s_mean": 12.0, "cost_usd_mean": 0.012},
    ])
    table = cost_table(summary, 2.0).set_index("configuration")
    assert table.loc["lora", "ppl gained vs base"] == pytest.approx(5.12)
    assert table.loc["qlora", "ppl gained vs base"] == pytest.approx(1.37)  # not 6.35 from its own 4-bit base
    assert table.loc["qlora", "4-bit base ppl loss"] == pytest.approx(4.98)
    assert pd.isna(table.loc["lora", "4-bit base ppl loss"])
    assert table.loc["qlora", "$ per ppl point"] == pytest.approx(0.012 / 1.37)
    assert pd.isna(table.loc["worse", "$ per ppl point"])  # worse than the base: no price per point
