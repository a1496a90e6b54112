"""Multi-task, continual and routed runs end to end on the tiny model (issue 9), and their bad input.

One sweep (shared by the tests below) trains two single-task LoRA runs, a per-task-adapter multitask
run, an extension of it with a third task, a two-stage EWC chain and a router over the single-task
adapters; the tests read its store."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment
from harness.objectives.parts.mixing import batch_schedule, mixture_probabilities

SOURCES = ["chat_technical", "sentiment"]
TINY = dict(data={"n_train": 16, "n_val": 8, "n_test": 0}, train={"max_steps": 3, "micro_batch": 2, "seq_len": 96},
            eval={"latency": False, "sources": SOURCES})
SINGLE = {src: f"lora-r4-a8-n16-name{src}-s0" for src in SOURCES}
MT = {"name": "multitask", "tasks": SOURCES, "architecture": "per_task", "sampling": "temperature", "temperature": 2}


@pytest.mark.parametrize("order", ["random", "stratified"])
def test_temperature_sampling_draws_single_task_batches_in_the_stated_proportions(order):
    sizes = [900, 100]
    probs = mixture_probabilities(sizes, "temperature", 2.0)
    assert probs == pytest.approx([30 / 40, 10 / 40])  # p_i ∝ n_i^(1/2): √900 = 30, √100 = 10
    batches = batch_schedule(sizes, probs, 4000, batch=3, seed=0, order=order)
    share = Counter(task for task, _ in batches)[1] / len(batches)
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    assert all(len(picked) == 3 and all(i < sizes[task] for i in picked) for task, picked in batches)
    small = [i for task, picked in batches if task == 1 for i in picked]
    assert sorted(small[:100]) == list(range(100))  # the small task is seen whole before it repeats


@pytest.fixture(scope="module")
def domain_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("domains")
    route = {"name": "route", "adapters": {s: f"run:{SINGLE[s]}" for s in SOURCES}}
    grid = {"run": [
        {"data.name": "chat_technical"},
        {"data.name": "sentiment"},
        {"objective": MT},
        {"objective": {"name": "multitask", "tasks": ["chat_general"], "architecture": "per_task",
                       "extend": "run:mt_per_task-t2-lora-r4-a8-n16-s0"}},
        {"objective": {"name": "continual", "sequence": SOURCES, "strategy": "ewc", "ewc_lambda": 100.0}},
        {"method": "none", "objective": route},
    ]}
    path = write_experiment(tmp, "domains", base=tiny_base(**TINY), grid=grid)
    res = run_cli("run", str(path), "--results", str(tmp / "results"), "--workers", "2")
    assert res.code == 0, res.out + res.err
    runs = {read_result(d)["slug"]: read_result(d) for d in run_dirs(tmp / "results", "domains")}
    assert all(r["status"] == "ok" for r in runs.values()), {s: r.get("error") for s, r in runs.items()}
    return tmp, runs


def test_multitask_runs_score_every_task_with_its_own_adapter(domain_store):
    tmp, runs = domain_store
    mt = runs["mt_per_task-t2-lora-r4-a8-n16-s0"]["metrics"]
    single = runs[SINGLE["sentiment"]]["metrics"]
    for task in SOURCES:
        assert mt[f"task_eval.{task}.eval_loss"] > 0 and mt[f"task_eval.{task}.examples_seen"] >= 0
    assert sum(mt[f"task_eval.{t}.examples_seen"] for t in SOURCES) == 3 * 2  # steps × micro_batch
    assert mt["trainable_params"] == 2 * single["trainable_params"]  # one adapter per task
    # the extension trains only its new task's adapter and keeps the old tasks' scores exactly
    ext = runs["mt_per_task-extend-lora-r4-a8-n16-s0"]["metrics"]
    assert ext["trainable_params"] == single["trainable_params"]
    for task in SOURCES:
        assert ext[f"task_eval.{task}.eval_loss"] == pytest.approx(mt[f"task_eval.{task}.eval_loss"], abs=1e-6)
    assert ext["task_eval.chat_general.eval_loss"] > 0


def test_transfer_matrix_shape_and_its_diagonal_from_the_single_task_runs(domain_store):
    from harness.report.domains import transfer_matrix
    from harness.report.frame import load_runs

    tmp, runs = domain_store
    matrix = transfer_matrix(load_runs("domains", tmp / "results"))
    assert matrix.relative and list(matrix.values.columns) == SOURCES  # the extension's chat_general: no base score
    assert len(matrix.values) == len(SOURCES) + 2  # 2 single-task rows, the multitask run and its extension
    single_rows = [label for label, src in matrix.in_domain.items() if src is not None]
    assert len(single_rows) == len(SOURCES)
    base = next(r for s, r in runs.items() if s.startswith("base-"))["metrics"]
    for label in single_rows:
        src = matrix.in_domain[label]
        run = runs[SINGLE[src]]["metrics"]
        expected = run[f"task_eval.{src}.eval_loss"] - base[f"task_eval.{src}.eval_loss"]
        assert matrix.values.loc[label, src] == pytest.approx(expected)
    res = run_cli("transfer", "domains", "--results", str(tmp / "results"))
    assert res.code == 0 and "trained on" in res.out and "base (untrained)" in res.out, res.out + res.err


def test_continual_stages_are_linked_runs_that_continue_each_other(domain_store):
    _, runs = domain_store
    first, second = (runs[f"cl_ewc-lora-r4-a8-n16-s0-stage{k}"] for k in (0, 1))
    assert second["spec"]["objective"]["previous"] == "run:cl_ewc-lora-r4-a8-n16-s0-stage0"
    assert [r["spec"]["data"]["name"] for r in (first, second)] == SOURCES
    # stage 1 starts exactly where stage 0 ended (scored again on stage 0's domain); stage 0 starts at the base
    assert second["metrics"]["task_eval_before.chat_technical.eval_loss"] == pytest.approx(
        first["metrics"]["task_eval.chat_technical.eval_loss"], abs=1e-5)
    assert all(f"task_eval_before.{src}.eval_loss" in first["metrics"] for src in SOURCES)
    assert second["metrics"]["ewc_fisher_mean"] > 0 and second["metrics"]["ewc_penalty"] >= 0


def test_a_stage_reads_the_predecessor_of_its_own_sweep_not_an_older_run_with_its_slug(domain_store, tmp_path):
    import shutil

    tmp, runs = domain_store
    store = tmp_path / "results"
    shutil.copytree(tmp / "results", store)
    chain = {"objective": {"name": "continual", "sequence": SOURCES, "strategy": "ewc", "ewc_lambda": 100.0}}
    path = write_experiment(tmp_path, "domains", base=tiny_base(**TINY), grid={"run": [chain]})
    res = run_cli("run", str(path), "--results", str(store), "--set", "train.lr=0.02")
    assert res.code == 0, res.out + res.err
    slug = "cl_ewc-lora-r4-a8-n16-s0-stage"
    new = {read_result(d)["slug"]: read_result(d) for d in run_dirs(store, "domains")
           if read_result(d)["spec"]["train"]["lr"] == 0.02}
    old_first, first, second = runs[f"{slug}0"], new[f"{slug}0"], new[f"{slug}1"]
    assert first["run_id"] != old_first["run_id"]  # the store now holds two runs under the stage-0 slug
    assert second["spec"]["reads"] == {f"run:{slug}0": first["run_id"]}
    before = second["metrics"]["task_eval_before.chat_technical.eval_loss"]
    assert before == pytest.approx(first["metrics"]["task_eval.chat_technical.eval_loss"], abs=1e-5)
    assert before != pytest.approx(old_first["metrics"]["task_eval.chat_technical.eval_loss"], abs=1e-5)
    # from another experiment the bare slug is ambiguous: refused before any run, with the ids to pick from
    other = write_experiment(tmp_path, "other", base=tiny_base(**TINY), grid={"run": [
        {"method": "none", "objective": {"name": "route", "adapters": {
            "chat_technical": f"run:{slug}0", "sentiment": f"run:{SINGLE['sentiment']}"}}}]})
    res = run_cli("run", str(other), "--results", str(store))
    assert res.code == 2 and f"`{slug}0` names 2 runs of experiment `domains`" in res.err, res.err
    assert first["run_id"] in res.err and old_first["run_id"] in res.err


def test_route_run_reports_router_accuracy_and_routed_vs_oracle(domain_store):
    tmp, runs = domain_store
    m = runs["route-none-n16-s0"]["metrics"]
    assert 0 <= m["router_acc"] <= 1 and 0 <= m["router_acc_train"] <= 1
    for src in SOURCES:
        assert m[f"task_eval.{src}.eval_loss"] > 0 and m[f"oracle_eval.{src}.eval_loss"] > 0
    assert m["route.oracle.eval_loss"] > 0 and m["route.routed.eval_loss"] > 0
    res = run_cli("report", "domains", "--results", str(tmp / "results"), "--out", str(tmp / "reports"))
    assert res.code == 0, res.err
    text = (tmp / "reports" / "domains" / "report.md").read_text()
    for title in ("Transfer", "Continual", "Routing"):
        assert title in text


BAD = [
    ({"eval": {"sources": ["chat_tecnical"]}}, "unknown data source `chat_tecnical`. Did you mean `chat_technical`?"),
    ({"objective": {**MT, "temperature": 0}}, "objective.temperature"),
    ({"objective": {"name": "continual", "sequence": ["sentiment"]}}, "at least 2 data sources"),
    ({"objective": {"name": "continual", "sequence": SOURCES, "replay_fraction": 1.0}}, "objective.replay_fraction"),
    ({"method": "full", "objective": MT}, "architecture `per_task` switches adapters"),
    ({"objective": {**MT, "architecture": "shared", "extend": "run:x"}}, "`extend` adds task adapters"),
    ({"objective": {"name": "continual", "sequence": SOURCES, "strategy": "adapter_per_stage"}, "method": "prompt_tuning"},
     "needs a peft method that merges"),
    ({"objective": {"name": "multitask", "tasks": ["sentiment"], "sampling": "softmax"}}, "objective.sampling"),
]


@pytest.mark.parametrize("base, needle", BAD)
def test_bad_domain_input_is_one_clear_message_before_any_run(tmp_path, base, needle):
    path = write_experiment(tmp_path, "baddomain", base=tiny_base(**{**TINY, **base}), grid={})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "Traceback" not in res.err, res.err
    assert str(path) in res.err and needle in res.err, res.err
    assert not (tmp_path / "results").exists()


def test_a_training_file_that_holds_a_scored_validation_prompt_is_refused(tmp_path):
    from harness.config import DataCfg
    from harness.objectives.parts.domains import source_splits

    # both splits order prompts by the same seeded hash, so leaked prompts compete for the file's own
    # validation slots: leaking all 8 into a file that keeps 4 for validation puts at least 4 in training
    leaked = source_splits(DataCfg(name="sentiment", n_val=8, n_test=0), "sentiment").val
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(40)] + leaked
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows))
    path = write_experiment(tmp_path, "leak", grid={}, base=tiny_base(**{
        **TINY, "data": {"name": "file", "path": str(data), "n_train": 16, "n_val": 4, "n_test": 0}}))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "with the validation split of source `sentiment`" in res.err, res.err


def test_a_replay_stage_mixes_the_stated_fraction_drawn_only_from_earlier_stages():
    from harness.config import build_run_config
    from harness.objectives.continual import stage_records

    sequence = ["chat_technical", "sentiment", "chat_general"]
    raw = tiny_base(data={"name": "chat_general", "n_train": 30, "n_val": 8, "n_test": 0},
                    objective={"name": "continual", "sequence": sequence, "strategy": "replay",
                               "replay_fraction": 0.25, "stage": 2})
    spec = build_run_config(raw, file="test")
    records, replayed = stage_records(spec)
    sources = Counter(r["source"] for r in records)
    assert sources["chat_general"] == 30 and replayed == 10 == sources["chat_technical"] + sources["sentiment"]
    assert replayed / len(records) == pytest.approx(0.25)
    first = stage_records(build_run_config({**raw, "objective": {**raw["objective"], "stage": 0}}, file="test"))
    assert first[1] == 0 and {r["source"] for r in first[0]} == {"chat_technical"}  # nothing earlier to replay


def test_in_domain_tasks_adds_each_trained_sources_lm_eval_task():
    from harness.config import build_run_config

    raw = tiny_base(eval={"tasks": ["general_ppl"], "in_domain_tasks": True},
                    objective={"name": "multitask", "tasks": ["sentiment", "humaneval", "chat_technical"]})
    spec = build_run_config(raw, file="test")
    assert spec.eval.tasks == ["general_ppl", "polarity", "chatterbot_mc"]  # humaneval has none
    assert build_run_config(spec.as_dict() | {"method": raw["method"]}, file="again").eval.tasks == spec.eval.tasks
    assert "in_domain_tasks" not in build_run_config(tiny_base(), file="test").as_dict()["eval"]  # old run ids kept
