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
        "summary", "fronts", "distillation", "preference", "transfer", "adaptation", "multitask", "continual",
        "routing", "data_size", "rank_alpha", "training_curves", "findings", "search", "cost", "noise_floor",
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
