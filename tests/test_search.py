"""Optuna searches (`ftbench search`): the sweep file, the conditional space, workers sharing a study,
a killed worker, pruning, several objectives, PostgreSQL storage, best.yaml and the report section."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import PROJECT_ROOT, PYTHON, WIDE, read_result, run_cli, run_dirs, tiny_base, write_experiment
from postgres import postgres_server, require_postgres

from harness.search import load_sweep, suggest
from harness.search.space import parse_constraint, sampling_order, violation
from harness.search.study import make_sampler, public_url

#: every trial trains long enough (~2-4 s on the tiny model) for the pruning monitor to see its evals
SEARCH_BASE = tiny_base(train={"max_steps": 12, "micro_batch": 4, "lr": 1.0e-3, "seq_len": 64, "warmup_ratio": 0.0},
                        eval={"latency": False, "every_steps": 2})


def write_sweep(directory: Path, name: str, *, base: dict | None = None, **doc) -> Path:
    directory = Path(directory)
    experiment = write_experiment(directory, f"{name}_exp", base=base or SEARCH_BASE, grid={})
    doc = {"experiment": str(experiment), **doc}
    doc.setdefault("objectives", ["eval_loss"])
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def worker(sweep: Path, results: Path, *args: str) -> subprocess.Popen:
    """`ftbench search` in its own process, like a user's second terminal or machine."""
    env = {**os.environ, **WIDE, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen([PYTHON, "-m", "harness.cli", "search", str(sweep), "--results", str(results), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=PROJECT_ROOT)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def study_of(results: Path, name: str, storage: str | None = None) -> optuna.Study:
    url = storage or f"sqlite:///{(results / name / 'study.db').resolve()}"
    return optuna.load_study(study_name=name, storage=url)


LR_SPACE = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}


# --- the sweep file and the space (no training) ------------------------------------------------------

CONDITIONAL = {
    "method": {"type": "categorical", "choices": ["lora", "prompt_tuning", {"name": "adapter", "placement": "houlsby"}]},
    "method.r": {"type": "int", "low": 2, "high": 16, "log": True, "when": {"method": ["lora"]}},
    "method.num_virtual_tokens": {"type": "int", "low": 4, "high": 16, "step": 4, "when": {"method": "prompt_tuning"}},
    "train.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
}


@pytest.mark.parametrize("sampler", ["tpe", "random", "nsga2"])
def test_a_conditional_space_never_samples_r_for_prompt_tuning(tmp_path, sampler):
    sweep = load_sweep(write_sweep(tmp_path, "cond", space=CONDITIONAL, sampler={"name": sampler, "seed": 1}))
    study = optuna.create_study(sampler=make_sampler(sweep), directions=sweep.directions)
    seen = set()
    for i in range(40):
        trial = study.ask()
        params = suggest(trial, sweep.space, SEARCH_BASE)
        name = params["method"] if isinstance(params["method"], str) else params["method"]["name"]
        seen.add(name)
        assert ("method.r" in params) == (name == "lora"), params
        assert ("method.num_virtual_tokens" in params) == (name == "prompt_tuning"), params
        assert set(trial.params) == set(params)
        study.tell(trial, float(i % 7))
    assert seen == {"lora", "prompt_tuning", "adapter"}


def test_dimensions_are_sampled_after_the_keys_their_condition_reads(tmp_path):
    space = {"method.r": CONDITIONAL["method.r"], "method": CONDITIONAL["method"]}
    sweep = load_sweep(write_sweep(tmp_path, "order", space=space))
    assert sampling_order(sweep.space) == ["method", "method.r"]


def test_constraints_parse_and_measure_violation():
    assert parse_constraint("peak_mem_train_mb <= 2000") == ("peak_mem_train_mb", "<=", 2000.0)
    assert violation({"peak_mem_train_mb": 1500.0}, ("peak_mem_train_mb", "<=", 2000.0)) == -500.0
    assert violation({"task.x.acc": 0.3}, ("task.x.acc", ">=", 0.5)) == pytest.approx(0.2)
    assert violation({}, ("peak_mem_train_mb", "<=", 2000.0)) > 0
    with pytest.raises(ValueError, match="metric <= number"):
        parse_constraint("peak_mem_train_mb about 2000")


def test_the_storage_password_never_leaves_the_process():
    assert public_url("postgresql://me:s3cret@db.example:5432/ftbench") == "postgresql://me:***@db.example:5432/ftbench"
    assert "s3cret" not in public_url("mysql+pymysql://me:s3cret@host/db")


BAD_SWEEPS = [
    ({"spaces": {}}, ["spaces", "unknown top-level key", "Did you mean `space`"]),
    ({"space": {"method.rr": {"type": "int", "low": 1, "high": 4}}}, ["space.method.rr", "no such key", "method.r"]),
    ({"space": {"train.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}}, ["space.train.lr", "`low` must be <= `high`"]),
    ({"space": {"train.lr": {"type": "float", "low": 0, "high": 1e-2, "log": True}}}, ["space.train.lr", "log-scale"]),
    ({"space": {"method": {"type": "categorical", "choices": []}}}, ["space.method", "non-empty `choices`"]),
    ({"space": {"method.r": {"type": "int", "low": 1, "high": 4, "when": {"nope": ["x"]}}}},
     ["space.method.r.when.nope", "not a space key or config key"]),
    ({"objectives": ["eval_los"]}, ["objectives[0].metric", "unknown metric `eval_los`", "Did you mean `eval_loss`"]),
    ({"objectives": ["train_tokens"]}, ["objectives[0].direction", "no known direction"]),
    ({"constraints": ["peak_mem_train_mb ~ 3"]}, ["constraints[0]", "metric <= number"]),
    ({"constraints": ["peak_mem_train_m <= 3"]}, ["`constraints[0]`", "Did you mean `peak_mem_train_mb`"]),
    ({"sampler": {"name": "cmaes"}}, ["sampler.name", "tpe"]),
    ({"sampler": {"name": "tpe", "n_startup_trial": 3}}, ["sampler.n_startup_trial", "not an argument of optuna's TPESampler",
                                                          "Did you mean `n_startup_trials`"]),
    ({"pruner": "median", "objectives": ["peak_mem_train_mb"]}, ["pruner", "first objective must be `eval_loss`"]),
    ({"n_trials": 0}, ["n_trials", "greater than or equal to 1"]),
    ({"experiment": "no_such_experiment"}, ["`experiment`", "no experiment `no_such_experiment`"]),
]


@pytest.mark.parametrize("change,expected", BAD_SWEEPS, ids=[str(e[0]) for _, e in BAD_SWEEPS])
def test_a_bad_sweep_file_is_one_clear_message_and_exit_2(tmp_path, change, expected):
    doc = {"space": LR_SPACE, **change}
    path = write_sweep(tmp_path, "bad", **doc)
    cli = run_cli("search", str(path), "--results", str(tmp_path / "results"))
    assert cli.code == 2, cli.out + cli.err
    assert "Traceback" not in cli.err and str(path) in cli.err
    for text in expected:
        assert text in cli.err, cli.err
    assert not (tmp_path / "results" / "bad").exists()  # refused before any storage or run


def test_pruning_without_periodic_eval_is_refused_before_any_trial(tmp_path):
    base = tiny_base(eval={"latency": False})
    path = write_sweep(tmp_path, "noeval", base=base, space=LR_SPACE, pruner="median")
    cli = run_cli("search", str(path), "--results", str(tmp_path / "results"))
    assert cli.code == 2 and "eval.every_steps" in cli.err and "Traceback" not in cli.err


def test_a_sampled_option_on_the_wrong_method_is_refused_before_any_trial(tmp_path):
    space = {"method": {"type": "categorical", "choices": ["lora", "ia3"]},
             "method.r": {"type": "int", "low": 2, "high": 4}}  # no `when`: ia3 has no r
    path = write_sweep(tmp_path, "wrongopt", space=space)
    cli = run_cli("search", str(path), "--results", str(tmp_path / "results"))
    assert cli.code == 2 and "Traceback" not in cli.err
    assert "method.r" in cli.err or "`r`" in cli.err, cli.err
    assert run_dirs(tmp_path / "results", "wrongopt") == []


# --- real trials on the tiny model ----------------------------------------------------------------------

def test_two_workers_share_one_sqlite_study_without_duplicates(tmp_path):
    path = write_sweep(tmp_path, "two", space=LR_SPACE, n_trials=4, sampler={"name": "random", "seed": 0})
    results = tmp_path / "results"
    first = worker(path, results)
    time.sleep(1.0)
    second = worker(path, results)
    outs = [finish(first), finish(second)]
    study = study_of(results, "two")
    assert len(study.trials) == 4 and len({t.number for t in study.trials}) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), [t.state for t in study.trials]
    runs = run_dirs(results, "two")
    assert len(runs) == 4 and len({read_result(d)["run_id"] for d in runs}) == 4
    records = {read_result(d)["spec"]["trial"]["number"]: read_result(d) for d in runs}
    assert sorted(records) == list(range(4))
    for trial in study.trials:  # each trial's value is its run's eval loss, and its params made that run
        record = records[trial.number]
        assert record["status"] == "ok" and trial.user_attrs["run_id"] == record["run_id"]
        assert trial.values[0] == record["metrics"]["eval_loss"]
        assert record["spec"]["train"]["lr"] == trial.params["train.lr"]
        assert record["spec"]["varied"] == {"train.lr": trial.params["train.lr"]}
    assert all("this worker ran" in out for out in outs)
    assert sum(int(out.split("this worker ran ")[1].split()[0]) for out in outs) == 4  # both did work

    # the study is done: a third worker runs nothing; best.yaml reruns the winner on three seeds
    assert "this worker ran 0 trial(s)" in finish(worker(path, results))
    best = yaml.safe_load((results / "two" / "best.yaml").read_text())
    winner = min(study.trials, key=lambda t: t.values[0])
    assert best["grid"] == {"best": [{"train.lr": winner.params["train.lr"]}], "seeds": [0, 1, 2]}
    from harness.config import load_experiment
    from harness.grid import expand

    rerun = expand(load_experiment(results / "two" / "best.yaml"))
    assert [s.config.seed for s in rerun] == [0, 1, 2]
    assert rerun[0].config.train.lr == winner.params["train.lr"] and rerun[0].run_id == winner.user_attrs["run_id"]

    # the report carries the search section, drawn from the study
    cli = run_cli("report", "two", "--results", str(results), "--out", str(tmp_path / "reports"))
    assert cli.code == 0, cli.err
    page = (tmp_path / "reports" / "two" / "report.html").read_text()
    assert "<h2>Search</h2>" in page and "4 trials: 4 complete" in page
    assert (tmp_path / "reports" / "two" / "search_history.png").is_file()


def test_a_killed_worker_leaves_a_failed_trial_that_a_restart_retries(tmp_path):
    path = write_sweep(tmp_path, "killed", space=LR_SPACE, n_trials=2, sampler={"name": "random", "seed": 0},
                       heartbeat={"interval": 1, "grace": 3})
    results = tmp_path / "results"
    proc = worker(path, results)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until the first trial's run is training
        runs = run_dirs(results, "killed")
        if runs and (runs[0] / "metrics.jsonl").is_file():
            break
        time.sleep(0.2)
    else:
        pytest.fail("the first trial never started training")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study = study_of(results, "killed")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]
    time.sleep(4)  # past the grace period: the dead worker's heartbeat is stale

    out = finish(worker(path, results))
    study = study_of(results, "killed")
    states = {t.number: t.state for t in study.trials}
    assert states[0] == optuna.trial.TrialState.FAIL, out
    retry = [t for t in study.trials if t.system_attrs.get("retry_history") == [0]]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].params == study.trials[0].params  # the same point, run again
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2  # the budget: 2 trials besides the one that was retried
    # the killed run's folder was unfinished; the retry ran that same run to the end
    assert all(read_result(d)["status"] == "ok" for d in run_dirs(results, "killed"))


def test_pruning_stops_a_deliberately_bad_trial(tmp_path):
    base = {**SEARCH_BASE, "method": "full", "train": {**SEARCH_BASE["train"], "max_steps": 16}}
    good = [{"train.lr": 3.0e-3}, {"train.lr": 1.0e-3}]
    path = write_sweep(tmp_path, "prune", base=base, n_trials=3,
                       space={"train.lr": {"type": "float", "low": 1.0e-9, "high": 1.0e-2, "log": True}},
                       enqueue=[*good, {"train.lr": 1.0e-9}],  # an lr that cannot learn anything
                       pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 2})
    results = tmp_path / "results"
    out = finish(worker(path, results))
    study = study_of(results, "prune")
    states = [t.state for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED], out
    bad = study.trials[2]
    record = read_result(results / "prune" / bad.user_attrs["run_id"])
    assert record["status"] == "pruned" and "pruned at step" in record["error"]["message"]
    assert max(bad.intermediate_values) < 16  # stopped before its last step


def test_several_objectives_give_a_pareto_set(tmp_path):
    space = {"method": {"type": "categorical", "choices": ["lora", "ia3", "full"]},
             "method.r": {"type": "categorical", "choices": [2, 8], "when": {"method": "lora"}}}
    path = write_sweep(tmp_path, "pareto", space=space, n_trials=3, sampler={"name": "grid", "seed": 0},
                       objectives=["eval_loss", "trainable_params"])
    results = tmp_path / "results"
    finish(worker(path, results))
    study = study_of(results, "pareto")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3

    def dominated(t):
        return any(all(a <= b for a, b in zip(o.values, t.values)) and o.values != t.values for o in done)

    front = {t.number for t in done if not dominated(t)}
    assert front == {t.number for t in study.best_trials} and 1 <= len(front) <= 3
    best = yaml.safe_load((results / "pareto" / "best.yaml").read_text())
    expected = [{k: v for k, v in sorted(t.params.items(), key=lambda kv: kv[0] != "method")}
                for t in sorted(done, key=lambda t: t.number) if t.number in front]
    assert best["grid"]["best"] == expected


def test_two_workers_on_a_postgresql_server(tmp_path):
    require_postgres()
    with postgres_server() as url:
        path = write_sweep(tmp_path, "pg", space=LR_SPACE, n_trials=4, sampler={"name": "random", "seed": 0})
        results = tmp_path / "results"
        workers = [worker(path, results, "--storage", url) for _ in range(2)]
        for proc in workers:
            finish(proc)
        study = study_of(results, "pg", storage=url)
        assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        assert len(run_dirs(results, "pg")) == 4
        info = json.loads((results / "pg" / "search.json").read_text())
        assert info["storage"] == url and "sqlite" not in info["storage"]
