"""Every registered method and every registered objective, through the CLI on the tiny model.

One sweep per registry (a session fixture, so the runs share processes' start-up with `--workers 2`),
one test case per registry entry. An entry without a row here fails, it is not skipped: a new method
or objective is tested the day it registers.
"""

from __future__ import annotations

import pytest
from conftest import expand_file, read_result, run_cli, run_dirs, tiny_base, write_experiment
from test_methods import BUILT_IN, TABLE

from harness.methods import METHODS
from harness.objectives import OBJECTIVES

PREFS = "chatterbot_prefs"  # the tiny base's data sizes, as preference pairs
SOURCES = ["chat_technical", "chat_general"]
CHAIN = {"name": "continual", "sequence": SOURCES}

#: objective → the grid rows that exercise it (its own run last; earlier rows are runs it reads)
OBJECTIVE_ROWS = {
    "sft": [{"objective": "sft"}],
    "distill": [{"method": "full", "objective": {"name": "distill", "teacher": "tiny-smollm2",
                                                 "student": {"keep_layers": [1]}}}],
    "dpo": [{"data.name": PREFS, "objective": "dpo"}],
    "kto": [{"data.name": PREFS, "objective": "kto"}],
    "orpo": [{"data.name": PREFS, "objective": "orpo"}],
    # RLHF: a reward model (pairs that fit seq_len whole), online RL with a rule reward on labelled data
    "reward": [{"data.name": PREFS, "train.seq_len": 128, "objective": "reward"}],
    "grpo": [{"data.name": "sentiment", "objective": {"name": "grpo", "reward": "exact_answer", "max_new_tokens": 2}}],
    "rloo": [{"data.name": "sentiment", "objective": {"name": "rloo", "reward": "exact_answer", "max_new_tokens": 2}}],
    "multitask": [{"objective": {"name": "multitask", "tasks": SOURCES, "architecture": "per_task"}}],
    "continual": [{"objective": CHAIN}],
    # a router between the two stages of the continual chain (each a single LoRA adapter)
    "route": [{"method": "none", "objective": {"name": "route", "adapters": {
        SOURCES[0]: "run:cl_naive-lora-r4-a8-n16-s0-stage0", SOURCES[1]: "run:cl_naive-lora-r4-a8-n16-s0-stage1"}}}],
}


def test_every_registered_objective_and_method_has_a_row():
    assert sorted(OBJECTIVE_ROWS) == OBJECTIVES.names()
    assert sorted(TABLE) == sorted(BUILT_IN)


@pytest.fixture(scope="module")
def objective_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objectives")
    rows = [row for name in OBJECTIVES.names() for row in OBJECTIVE_ROWS.get(name, [])]
    path = write_experiment(tmp, "every_objective", base=tiny_base(train={"max_steps": 2}), grid={"stage": rows})
    res = run_cli("run", str(path), "--results", str(tmp / "results"), "--workers", "2")
    results = [read_result(d) for d in run_dirs(tmp / "results", "every_objective")]
    return res, {r["slug"]: r for r in results}, expand_file(path)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_runs_through_the_cli_and_records_its_metrics(name, objective_sweep):
    res, results, specs = objective_sweep
    assert res.code == 0, res.out + res.err
    cls = OBJECTIVES.get(name)
    mine = [s.slug for s in specs if s.config.objective.build().name == name]
    assert mine, f"no run of objective `{name}` in the grid"
    for slug in mine:
        result = results[slug]
        assert result["status"] == "ok", (slug, result["error"])
        missing = [key for key in cls.metrics if result["metrics"].get(key) is None]
        assert not missing, f"objective `{name}` declares {missing}, which run `{slug}` did not record"


@pytest.fixture(scope="module")
def method_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods")
    rows = [{"method": {"name": name, **TABLE[name][0]}} for name in BUILT_IN if name in TABLE]
    path = write_experiment(tmp, "every_method", base=tiny_base(method="lora", train={"max_steps": 1},
                                                                eval={"latency": False}), grid={"stage": rows})
    res = run_cli("run", str(path), "--results", str(tmp / "results"), "--workers", "2")
    results = {read_result(d)["spec"]["method"]["name"]: read_result(d) for d in run_dirs(tmp / "results", "every_method")}
    return res, results


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_runs_through_the_cli(name, method_sweep):
    res, results = method_sweep
    assert name in TABLE, f"method `{name}` has no row in tests/test_methods.py TABLE"
    assert res.code == 0, res.out + res.err
    result = results[name]
    assert result["status"] == "ok", result["error"]
    m = result["metrics"]
    assert m["eval_loss"] is not None
    if METHODS.get(name).trains:
        assert m["trainable_params"] > 0 and m["train_loss"] is not None
    else:  # evaluates the model as loaded
        assert m["trainable_params"] == 0 and m["train_loss"] is None
