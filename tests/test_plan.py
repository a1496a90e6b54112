"""harness.plan: one sweep plan for `ftbench run` and `ftbench search`. A grid and a search trial that
score tasks get the same untouched-base reference row, first; a trial without tasks keeps its run id;
a search trial scoring general_ppl records its forgetting against the base row, which runs once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment

from harness.config import load_experiment
from harness.plan import build_plan, plan_experiment

#: a short run that scores general news perplexity on 4 documents (the forgetting figures)
SCORED = tiny_base(train={"max_steps": 2, "micro_batch": 4, "lr": 1.0e-3, "seq_len": 64, "warmup_ratio": 0.0},
                   eval={"latency": False, "tasks": ["general_ppl"], "limit": 4})
LR_SPACE = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}


def write_sweep(directory: Path, name: str, base: dict, **doc) -> Path:
    experiment = write_experiment(directory, f"{name}_exp", base=base, grid={})
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"experiment": str(experiment), "objectives": ["eval_loss"], "space": LR_SPACE,
                                    **doc}, sort_keys=False))
    return path


def search_of(path: Path, results: Path):
    from harness.search import Search, load_sweep

    sweep = load_sweep(path)
    return Search(sweep, storage_url=f"sqlite:///{results / 'study.db'}", root=results)


def test_a_grid_puts_the_reference_row_first_and_points_its_runs_at_it(tmp_path):
    path = write_experiment(tmp_path, "planned", base=SCORED, grid={"method": ["lora", "ia3"]})
    plan = plan_experiment(load_experiment(path), file=str(path), root=tmp_path / "results")
    (ref,) = plan.references
    assert plan.phases[0] == [ref] and ref.config.method.name == "none"
    assert [s.run_id for s in plan.specs] == [ref.run_id] + [s.run_id for s in plan.phases[1]]
    assert all(s.reference == ref.run_id for s in plan.phases[1]) and len(plan.phases[1]) == 2
    assert plan.warnings == []


def test_a_budget_that_moves_with_the_method_is_a_warning(tmp_path):
    grid = {"variant": [{"method": "lora", "train.max_steps": 2}, {"method": "ia3", "train.max_steps": 3}]}
    path = write_experiment(tmp_path, "unfair", base=tiny_base(), grid=grid)
    plan = plan_experiment(load_experiment(path), file=str(path), root=tmp_path / "results")
    assert plan.warnings == ["`train.max_steps` differs between methods in this grid: their results are not like for like"]
    assert plan.references == [] and [len(p) for p in plan.phases] == [2]


def test_a_search_trial_that_scores_tasks_is_planned_like_a_grid_run(tmp_path):
    results = tmp_path / "results"
    search = search_of(write_sweep(tmp_path, "scored", SCORED, n_trials=1), results)
    trial = {"study": "scored", "number": 0, "params": {"train.lr": 1.0e-3}}
    plan = search.plan_for({"train.lr": 1.0e-3}, trial=trial)
    (ref,) = plan.references
    (run,) = [s for s in plan.specs if s is not ref]
    assert plan.phases == [[ref], [run]]
    assert run.reference == ref.run_id and run.trial == trial  # the trial's record survives the planning
    assert run.run_id == search.spec_for({"train.lr": 1.0e-3}).run_id  # the reference is not part of the id
    # the grid of the same base scores against the same untouched base
    grid = plan_experiment(search.experiment, file="grid", root=results)
    assert [r.run_id for r in grid.references] == [ref.run_id]


def test_a_search_trial_without_tasks_keeps_its_run_id_and_runs_alone(tmp_path):
    search = search_of(write_sweep(tmp_path, "plain", tiny_base(), n_trials=1), tmp_path / "results")
    spec = search.spec_for({"train.lr": 1.0e-3})
    plan = search.plan_for({"train.lr": 1.0e-3})
    assert plan.specs == [spec] and plan.phases == [[spec]] and plan.references == []
    assert build_plan([spec], file="x", check=False).specs == [spec]


def test_a_search_trial_scoring_general_ppl_records_forgetting_against_one_base_row(tmp_path):
    path = write_sweep(tmp_path, "forget", SCORED, n_trials=2, sampler={"name": "random", "seed": 0},
                       enqueue=[{"train.lr": 1.0e-3}, {"train.lr": 3.0e-3}])
    results = tmp_path / "results"
    cli = run_cli("search", str(path), "--results", str(results))
    assert cli.code == 0, cli.out + cli.err
    records = {d.name: read_result(d) for d in run_dirs(results, "forget")}
    (base,) = [r for r in records.values() if r["slug"].startswith("base-")]  # run once, for both trials
    assert base["status"] == "ok" and base["metrics"]["task.general_ppl.word_perplexity"] > 1
    trials = [r for r in records.values() if r is not base]
    assert len(trials) == 2
    for record in trials:
        m = record["metrics"]
        assert record["status"] == "ok" and record["spec"]["reference"] == base["run_id"]
        assert record["spec"]["trial"]["study"] == "forget"
        delta = m["task.general_ppl.word_perplexity"] - base["metrics"]["task.general_ppl.word_perplexity"]
        assert m["forgetting_ppl_delta"] == pytest.approx(delta)
    skipped = [line for line in cli.err.splitlines() if base["run_id"] in line and "skipped" in line]
    assert len(skipped) == 1, cli.err  # the second trial found the base row finished
