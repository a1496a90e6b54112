"""harness.cli: every bad input is one clear message (file + dotted field), exit code 2, no traceback."""

import json

import pytest

from conftest import run_cli, run_dirs, tiny_base, write_experiment


def dry_run(path, results, *extra):
    return run_cli("run", str(path), "--dry-run", "--results", str(results), *extra)


def assert_config_error(res, path, *needles):
    assert res.code == 2, res.out + res.err
    assert "Traceback" not in res.err + res.out
    assert res.err.startswith("error: ")
    if path is not None:
        assert str(path) in res.err
    for needle in needles:
        assert needle in res.err, res.err


@pytest.mark.parametrize("case, base, grid, extra, needles", [
    ("unknown top-level key", None, None, {"grdi": {"seeds": [0]}}, ["`grdi`", "Did you mean `grid`?"]),
    ("unknown nested key", {"train": {"max_step": 5}}, None, {}, ["`train.max_step`", "Did you mean `max_steps`?"]),
    ("unknown method", {"method": "lorra"}, None, {}, ["`method.name`", "unknown method `lorra`", "Did you mean `lora`?"]),
    ("unknown method in grid", None, {"method": ["lora", "qlroa"]}, {},
     ["[method=qlroa] method.name", "Did you mean `qlora`?"]),
    ("option of another method", {"method": {"name": "full", "r": 8}}, None, {},
     ["`method.r`", "does not belong to method `full`"]),
    ("rank zero", {"method": {"name": "lora", "r": 0, "alpha": 16}}, None, {}, ["`method.r`", "greater than 0"]),
    ("negative rank in grid", None, {"method.r": [8, -1]}, {}, ["[method.r=-1] method.r"]),
    ("empty grid axis", None, {"method.r": []}, {}, ["`grid.method.r`", "empty axis"]),
    ("n_train larger than the data", {"data": {"name": "chatterbot", "n_train": 100000}}, None, {},
     ["`data.n_train`", "larger than the training pool"]),
    ("missing data file", {"data": {"name": "file", "path": "nope.jsonl"}}, None, {},
     ["`data.path`", "nope.jsonl", "does not exist"]),
    ("unknown model alias", {"model": "smollm-135m"}, None, {}, ["`model.name`", "Did you mean `smollm2-135m`?"]),
    ("missing local model folder", {"model": "./no/such/model"}, None, {},
     ["`model.name`", "./no/such/model", "does not exist"]),
    ("bad expression", {"method": {"name": "lora", "alpha": "__import__('os')"}}, None, {}, ["method"]),
    ("overflowing expression", {"method": {"name": "lora", "alpha": "1e300**2"}}, None, {}, ["method", "too large"]),
    ("math error in expression", {"train": {"lr": "sqrt(-1)"}}, None, {}, ["train", "cannot be evaluated"]),
    ("unknown dataset", {"data": {"name": "chaterbot"}}, None, {}, ["data.name", "chatterbot"]),
    ("unknown resource", None, None, {"resources": {"gpu": 1}}, ["`resources.gpu`", "Did you mean `gpus`?"]),
    ("negative gpus", None, None, {"resources": {"gpus": -1}}, ["`resources.gpus`", "greater than or equal to 0"]),
    ("artifacts_uri not a string", None, None, {"artifacts_uri": 3}, ["`artifacts_uri`", "path or URI"]),
    ("zero repeats", None, {"repeats": 0}, {}, ["`grid.repeats`", "must be a positive integer", "but got 0"]),
    ("negative repeats", None, {"repeats": -2}, {}, ["`grid.repeats`", "but got -2"]),
    ("repeats not a number", None, {"repeats": "x"}, {}, ["`grid.repeats`", "but got 'x'"]),
    ("repeats as a list", None, {"repeats": [0, 1]}, {}, ["`grid.repeats`", "but got [0, 1]"]),
    ("repeats in base", {"repeats": 2}, None, {}, ["`base.repeats`", "belongs in `grid:`"]),
    ("one repeat as an axis", None, {"repeat": [1]}, {}, ["`grid.repeat`", "`repeats: N`"]),
])
def test_validation_errors(tmp_path, case, base, grid, extra, needles):
    full_base = tiny_base(**(base or {}))
    path = write_experiment(tmp_path / "exp", "bad", base=full_base, grid=grid, **extra)
    assert_config_error(dry_run(path, tmp_path / "results"), path, *needles)


def test_data_file_with_wrong_fields(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) + "\n" for i in range(50)))
    path = write_experiment(tmp_path, "bad", base=tiny_base(data={"name": "file", "path": str(data)}))
    assert_config_error(dry_run(path, tmp_path / "results"), path, "`data.prompt_field`", "no field `prompt`", "'q'")
    # mapping the fields makes the same file valid
    fixed = write_experiment(tmp_path, "good", base=tiny_base(
        data={"name": "file", "path": str(data), "prompt_field": "q", "response_field": "a", "n_val": 8}))
    res = dry_run(fixed, tmp_path / "results")
    assert res.code == 0, res.err


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("base:\n  model: tiny-smollm2\n  train: {max_steps: 3\ngrid:\n  seeds: [0\n")
    assert_config_error(dry_run(path, tmp_path / "results"), path, "malformed YAML", "line")


def test_missing_experiment_file(tmp_path):
    assert_config_error(dry_run(tmp_path / "nope.yaml", tmp_path / "results"), tmp_path / "nope.yaml", "file not found")


def test_set_override_of_unknown_key(tmp_path):
    path = write_experiment(tmp_path, "ok", base=tiny_base())
    res = dry_run(path, tmp_path / "results", "--set", "train.nope=1")
    assert_config_error(res, None, "train.nope", "SET")
    res = dry_run(path, tmp_path / "results", "--set", "train.max_step=1")
    assert_config_error(res, None, "train.max_step", "Did you mean `max_steps`?")


def test_set_override_with_bad_value(tmp_path):
    path = write_experiment(tmp_path, "ok", base=tiny_base())
    assert_config_error(dry_run(path, tmp_path / "results", "--set", "train.lr=-1"), path, "train.lr")


def test_many_problems_reported_together(tmp_path):
    path = write_experiment(tmp_path, "bad", base=tiny_base(train={"max_step": 5, "lr": 0}, model="smollm-135m"))
    res = dry_run(path, tmp_path / "results")
    assert_config_error(res, path, "train.max_step", "train.lr")


def test_unknown_method_fails_before_any_run(tmp_path):
    results = tmp_path / "results"
    path = write_experiment(tmp_path, "early", base=tiny_base(), grid={"method": ["lora", "lorra"]})
    res = run_cli("run", str(path), "--results", str(results))  # not a dry run
    assert_config_error(res, path, "unknown method `lorra`")
    assert run_dirs(results, "early") == []


def test_plugin_that_does_not_exist(tmp_path):
    path = write_experiment(tmp_path, "p", base=tiny_base(), plugins=["missing_plugin.py"])
    assert_config_error(dry_run(path, tmp_path / "results"), path, "plugins[0]", "does not exist")


def test_dry_run_lists_the_grid_and_starts_nothing(tmp_path):
    results = tmp_path / "results"
    path = write_experiment(tmp_path, "dry", base=tiny_base(), grid={"method": ["full", "lora"], "seeds": [0, 1]})
    res = dry_run(path, results)
    assert res.code == 0, res.err
    for slug in ("full-n16-s0", "full-n16-s1", "lora-r4-a8-n16-s0", "lora-r4-a8-n16-s1"):
        assert slug in res.out
    assert "4 runs: 4 new" in res.out
    assert run_dirs(results, "dry") == []


def test_dry_run_shows_the_repeats(tmp_path):
    results = tmp_path / "results"
    path = write_experiment(tmp_path, "dry", base=tiny_base(), grid={"method": ["full", "lora"], "repeats": 2})
    res = dry_run(path, results)
    assert res.code == 0, res.err
    for slug in ("full-n16-s0", "lora-r4-a8-n16-s0", "full-n16-s0-rep1", "lora-r4-a8-n16-s0-rep1"):
        assert slug in res.out
    assert "repeat" in res.out and "4 runs: 4 new" in res.out
    res = dry_run(path, results, "--set", "repeats=3")  # any experiment gets a noise floor without an edit
    assert res.code == 0, res.err
    assert "lora-r4-a8-n16-s0-rep2" in res.out and "6 runs: 6 new" in res.out
    assert_config_error(dry_run(path, results, "--set", "repeats=0"), None, "`repeats`", "positive integer")


def test_dry_run_counts_finished_runs(tiny_sweep):
    res = dry_run(tiny_sweep.path, tiny_sweep.results)
    assert res.code == 0
    assert "2 runs: 2 ok" in res.out


def test_ls_and_show(tiny_sweep):
    res = run_cli("ls", "tiny", "--results", str(tiny_sweep.results))
    assert res.code == 0
    for spec in tiny_sweep.specs:
        assert spec.slug in res.out
    spec = tiny_sweep.by_method("lora")
    for key in (spec.run_id, spec.slug, spec.run_id.rsplit("-", 1)[1]):
        res = run_cli("show", key, "--results", str(tiny_sweep.results))
        assert res.code == 0
        assert json.loads(res.out)["run_id"] == spec.run_id
    assert run_cli("show", "nope", "--results", str(tiny_sweep.results)).code == 2
    assert run_cli("ls", "nope", "--results", str(tiny_sweep.results)).code == 2


def test_module_entry_point(tmp_path):
    import subprocess

    from conftest import PROJECT_ROOT, PYTHON

    path = write_experiment(tmp_path, "bad", base=tiny_base(train={"max_step": 5}))
    proc = subprocess.run([PYTHON, "-m", "harness", "run", str(path), "--dry-run", "--results", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.max_step" in proc.stderr and "Traceback" not in proc.stderr


def test_methods_lists_built_ins_and_peft_classes():
    res = run_cli("methods")
    assert res.code == 0, res.err
    for name in ("full", "lora", "qlora", "dora", "adalora", "prompt_tuning", "peft"):
        assert f" {name} " in res.out, name
    assert "LilyConfig" in res.out and "MissConfig" in res.out


@pytest.mark.parametrize("method, needles", [
    ({"name": "lora", "target_modules": ["nope_proj"]}, ["[lora-r8-a16-n16-s0] method", "nope_proj", "not found"]),
    ({"name": "lora", "r": 1000}, ["[lora-r1000-a16-n16-s0] method", "r=1000 is larger than layer", "use r <= 64"]),
    ({"name": "llama_adapter", "adapter_layers": 5}, ["llama_adapter", "exceeds the model's 2 layers"]),
    ({"name": "freeze", "modules": ["*nope*"]}, ["[freeze-m1-n16-s0] method", "`*nope*` matches no parameter"]),
    ([{"name": "freeze", "layers": 3}, "ia3"], ["[freeze-top3+ia3-n16-s0] method", "exceeds the model's 2 decoder"]),
    (["ia3", {"name": "lora", "r": 1000}], ["+lora-r1000", "r=1000 is larger than layer"]),
    (["adalora", "ia3"], ["method.methods[0]", "cannot be combined", "rank allocator"]),
])
def test_method_model_mismatch_is_caught_before_any_run(tmp_path, method, needles):
    base = tiny_base()
    base["method"] = method  # replace, not merge: the base's lora options would not fit every method
    path = write_experiment(tmp_path, "mismatch", base=base)
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2, res.out + res.err
    assert str(path) in res.err and "Traceback" not in res.err
    for needle in needles:
        assert needle in res.err, (needle, res.err)
    assert not (tmp_path / "results").exists() or run_dirs(tmp_path / "results" / "mismatch") == []


def test_the_ray_executor_without_ray_is_one_clear_message(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    path = write_experiment(tmp_path / "exp", "noray", base=tiny_base(), grid={})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"), "--executor", "ray")
    assert_config_error(res, None, "pip install '.[distributed]'")
    assert not (tmp_path / "results" / "noray").exists()


def test_ray_flags_with_the_local_executor_are_refused(tmp_path):
    path = write_experiment(tmp_path / "exp", "flags", base=tiny_base(), grid={})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"), "--address", "auto")
    assert_config_error(res, None, "`--address`", "--executor ray")
