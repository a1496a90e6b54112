"""harness.grid: expansion (cartesian, paired, conditional, expressions, seeds), overrides, run ids."""

import json
import re
import subprocess

import pytest

from conftest import PROJECT_ROOT, PYTHON, expand_file, tiny_base, write_experiment
from harness.config import load_experiment
from harness.errors import ConfigError
from harness.grid import expand, parse_overrides


def specs_for(tmp_path, grid, base=None, overrides=None, stem="g"):
    path = write_experiment(tmp_path, stem, base=base or tiny_base(), grid=grid)
    return expand_file(path, overrides)


def slugs(specs):
    return [s.slug for s in specs]


def test_no_grid_is_one_run(tmp_path):
    specs = specs_for(tmp_path, None)
    assert len(specs) == 1
    assert specs[0].varied == {}
    assert specs[0].experiment == "g"


def test_cartesian_product_counts(tmp_path):
    specs = specs_for(tmp_path, {"method.r": [4, 8, 16], "train.lr": [1e-4, 1e-3], "seeds": [0, 1]})
    assert len(specs) == 12
    assert len({s.run_id for s in specs}) == 12
    combos = {(s.config.method.options.r, s.config.train.lr, s.config.seed) for s in specs}
    assert combos == {(r, lr, seed) for r in (4, 8, 16) for lr in (1e-4, 1e-3) for seed in (0, 1)}
    # the first axis varies slowest: a stable, documented order
    assert [s.config.method.options.r for s in specs[:4]] == [4, 4, 4, 4]


def test_method_option_axis_without_a_base_method_uses_the_default_method(tmp_path):
    base = tiny_base()
    del base["method"]
    specs = specs_for(tmp_path, {"method.r": [4, 8]}, base=base)
    assert [(s.config.method.name, s.config.method.options.r) for s in specs] == [("lora", 4), ("lora", 8)]


def test_seeds_axis(tmp_path):
    specs = specs_for(tmp_path, {"seeds": [0, 1, 2]})
    assert [s.config.seed for s in specs] == [0, 1, 2]
    assert [s.slug for s in specs] == ["lora-r4-a8-n16-s0", "lora-r4-a8-n16-s1", "lora-r4-a8-n16-s2"]


def test_repeats_run_every_point_again_with_the_same_seed(tmp_path):
    plain = specs_for(tmp_path, {"method": ["full", "lora"], "seeds": [0, 1]})
    specs = specs_for(tmp_path, {"method": ["full", "lora"], "seeds": [0, 1], "repeats": 2})
    assert len(specs) == 8 and len({s.run_id for s in specs}) == 8
    # repeat 0 is the run without repeats, byte for byte: same slug, same id (finished runs are skipped)
    assert [(s.slug, s.run_id) for s in specs[:4]] == [(s.slug, s.run_id) for s in plain]
    assert [s.config.repeat for s in specs] == [0] * 4 + [1] * 4  # the whole grid once, then again
    assert "repeat" not in specs[0].config.as_dict() and specs[4].config.as_dict()["repeat"] == 1
    assert [s.slug for s in specs[4:]] == [s.slug + "-rep1" for s in plain]
    assert [s.config.seed for s in specs[4:]] == [s.config.seed for s in plain]
    assert [s.config.model_copy(update={"repeat": 0}) for s in specs[4:]] == [s.config for s in plain]
    assert specs[5].varied == {"method": "full", "seeds": 1, "repeat": 1}


def test_repeats_one_and_the_set_override(tmp_path):
    [plain] = specs_for(tmp_path, None)
    [once] = specs_for(tmp_path, {"repeats": 1})
    assert (once.slug, once.run_id) == (plain.slug, plain.run_id)
    specs = specs_for(tmp_path, {"repeats": 3}, overrides=["repeats=2"])
    assert [s.slug for s in specs] == ["lora-r4-a8-n16-s0", "lora-r4-a8-n16-s0-rep1"]
    assert [s.run_id for s in specs_for(tmp_path, None, overrides=["repeats=2"])] == [s.run_id for s in specs]


@pytest.mark.parametrize("value", [0, -1, "x", 1.5, True, [2], None])
def test_bad_repeats(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        specs_for(tmp_path, {"repeats": value})
    [(file, field, message)] = info.value.problems
    assert (file.endswith("g.yaml"), field) == (True, "grid.repeats")
    assert "must be a positive integer" in message and repr(value) in message


def test_reference_row_is_shared_by_the_repeats(tmp_path):
    from harness.grid import with_references

    specs = with_references(specs_for(tmp_path, {"repeats": 2}, base=tiny_base(eval={"tasks": ["general_ppl"]})))
    assert [s.slug for s in specs] == ["base-tiny-smollm2", "lora-r4-a8-n16-s0", "lora-r4-a8-n16-s0-rep1"]
    assert specs[1].reference == specs[2].reference == specs[0].run_id


def test_method_axis_keeps_base_options_the_method_accepts(tmp_path):
    specs = specs_for(tmp_path, {"method": ["full", "lora", "qlora"]})
    by = {s.config.method.name: s.config for s in specs}
    assert set(by) == {"full", "lora", "qlora"}
    assert by["full"].method.as_dict() == {"name": "full"}
    assert by["lora"].method.options.r == 4 and by["qlora"].method.options.r == 4
    assert by["qlora"].model.load_in_4bit and not by["lora"].model.load_in_4bit


def test_paired_axis_values_move_together(tmp_path):
    grid = {"variant": [{"method": "full", "train.lr": 5e-5},
                        {"method": "lora", "train.lr": 5e-4},
                        {"method": "qlora", "model.load_in_4bit": True, "train.lr": 5e-4}],
            "seeds": [0, 1]}
    specs = specs_for(tmp_path, grid)
    assert len(specs) == 6  # 3 pairs × 2 seeds, not 3 × 3 × 2
    pairs = {(s.config.method.name, s.config.train.lr, s.config.model.load_in_4bit) for s in specs}
    assert pairs == {("full", 5e-5, False), ("lora", 5e-4, False), ("qlora", 5e-4, True)}


@pytest.mark.parametrize("order", ["method first", "condition first"])
def test_conditional_axis(tmp_path, order):
    method_axis = ("method", ["full", "lora", "qlora"])
    r_axis = ("method.r", {"values": [4, 8], "when": {"method": ["lora", "qlora"]}})
    grid = dict([method_axis, r_axis] if order == "method first" else [r_axis, method_axis])
    # base method `full`: the condition must see the method axis, not the base, whatever the order
    specs = specs_for(tmp_path, grid, base=tiny_base(method={"name": "full"}))
    names = [s.config.method.name for s in specs]
    assert names.count("full") == 1
    assert names.count("lora") == 2
    assert names.count("qlora") == 2
    assert {s.config.method.options.r for s in specs if s.config.method.name != "full"} == {4, 8}
    assert sorted(slugs(specs)) == sorted(["full-n16-s0", "lora-r4-a8-n16-s0", "lora-r8-a16-n16-s0",
                                           "qlora-r4-a8-n16-s0", "qlora-r8-a16-n16-s0"])


def test_alpha_as_expression_of_r(tmp_path):
    specs = specs_for(tmp_path, {"method.r": [4, 8, 16], "method.alpha": "2*r"})
    assert [(s.config.method.options.r, s.config.method.options.alpha) for s in specs] == [(4, 8), (8, 16), (16, 32)]


def test_alpha_axis_of_expressions(tmp_path):
    specs = specs_for(tmp_path, {"method.r": [4, 8], "method.alpha": ["r", "2*r"]})
    assert sorted((s.config.method.options.r, s.config.method.options.alpha) for s in specs) == [
        (4, 4), (4, 8), (8, 8), (8, 16)]


def test_slug_format(tmp_path):
    base = tiny_base(data={"n_train": 256}, method={"name": "lora", "r": 8, "alpha": 16})
    [spec] = specs_for(tmp_path, None, base=base)
    assert spec.slug == "lora-r8-a16-n256-s0"
    assert re.fullmatch(r"lora-r8-a16-n256-s0-[0-9a-f]{8}", spec.run_id)


def test_slug_names_other_varied_keys(tmp_path):
    specs = specs_for(tmp_path, {"train.lr": [1e-4, 1e-3], "train.packing": [True, False]})
    assert slugs(specs) == ["lora-r4-a8-n16-lr0.0001-packing-s0", "lora-r4-a8-n16-lr0.0001-no_packing-s0",
                            "lora-r4-a8-n16-lr0.001-packing-s0", "lora-r4-a8-n16-lr0.001-no_packing-s0"]


def test_duplicate_points_are_dropped(tmp_path):
    specs = specs_for(tmp_path, {"method.r": [4, 4, 8]})
    assert [s.config.method.options.r for s in specs] == [4, 8]


def test_set_override(tmp_path):
    specs = specs_for(tmp_path, {"method.r": [4, 8]}, overrides=["train.max_steps=7", "data.n_train=32"])
    assert [s.config.train.max_steps for s in specs] == [7, 7]
    assert [s.config.data.n_train for s in specs] == [32, 32]


def test_set_override_of_axis_replaces_the_axis(tmp_path):
    specs = specs_for(tmp_path, {"method.r": [4, 8], "seeds": [0, 1]}, overrides=["method.r=16"])
    assert [s.config.method.options.r for s in specs] == [16, 16]
    assert [s.config.seed for s in specs] == [0, 1]
    specs = specs_for(tmp_path, {"method.r": [4, 8], "seeds": [0, 1]}, overrides=["seeds=[3,4,5]"])
    assert [(s.config.method.options.r, s.config.seed) for s in specs] == [
        (4, 3), (4, 4), (4, 5), (8, 3), (8, 4), (8, 5)]


def test_set_override_wins_over_a_paired_axis(tmp_path):
    grid = {"variant": [{"method": "full", "train.lr": 5e-5}, {"method": "lora", "train.lr": 5e-4}]}
    specs = specs_for(tmp_path, grid, overrides=["train.lr=0.01"])
    assert {(s.config.method.name, s.config.train.lr) for s in specs} == {("full", 0.01), ("lora", 0.01)}


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["train.lr=0.001", "seeds=[0, 1]", "train.packing=false", "model=tiny-smollm2"]) == [
        ("train.lr", 1e-3), ("seeds", [0, 1]), ("train.packing", False), ("model", "tiny-smollm2")]


def test_override_in_exponent_notation(tmp_path):
    # YAML reads `1e-3` as a string; the section resolves it as an expression
    [spec] = specs_for(tmp_path, None, overrides=["train.lr=1e-3"])
    assert spec.config.train.lr == 1e-3


@pytest.mark.parametrize("item, field", [("train.nope=1", "train.nope"), ("trian.lr=1", "trian.lr"),
                                         ("train.lr", "train.lr"), ("seed.x=1", "seed.x")])
def test_bad_overrides(item, field):
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert [f for _, f, _ in info.value.problems] == [field]


def test_grid_errors_name_the_axis(tmp_path):
    with pytest.raises(ConfigError) as info:
        specs_for(tmp_path, {"method.r": [], "varaint": [1, 2]})
    fields = [f for _, f, _ in info.value.problems]
    assert fields == ["grid.method.r", "grid.varaint"]
    assert "empty axis" in str(info.value)


def test_grid_point_errors_name_the_point(tmp_path):
    with pytest.raises(ConfigError) as info:
        specs_for(tmp_path, {"method.r": [4, 0]}, base=tiny_base(method={"name": "lora", "alpha": 16}))
    assert [f for _, f, _ in info.value.problems] == ["[method.r=0] method.r"]


# --- run ids -------------------------------------------------------------------------------------

def test_same_spec_same_id_across_expansions(tmp_path):
    path = write_experiment(tmp_path, "ids", base=tiny_base(), grid={"method": ["full", "lora"], "seeds": [0, 1]})
    first = [s.run_id for s in expand(load_experiment(path))]
    second = [s.run_id for s in expand(load_experiment(path))]
    assert first == second
    assert len(set(first)) == 4


def test_same_spec_same_id_across_processes(tmp_path):
    path = write_experiment(tmp_path, "ids", base=tiny_base(), grid={"method": ["full", "lora"], "seeds": [0, 1]})
    code = ("import json, sys; from harness.config import load_experiment; from harness.grid import expand; "
            "print(json.dumps([s.run_id for s in expand(load_experiment(sys.argv[1]))]))")
    outs = [subprocess.run([PYTHON, "-c", code, str(path)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout
            for seed in ("1", "2")]
    assert json.loads(outs[0]) == json.loads(outs[1]) == [s.run_id for s in expand_file(path)]


def test_same_spec_written_differently_same_id(tmp_path):
    """Shorthands, defaults spelt out and expressions resolve to the same spec, hence the same id."""
    a = write_experiment(tmp_path, "a", base=tiny_base(method={"name": "lora", "r": 4, "alpha": "2*r"}))
    b = write_experiment(tmp_path, "b", base=tiny_base(method={"name": "lora", "r": 4, "alpha": 8.0, "dropout": 0.05},
                                                       train={"scheduler": "linear"}))
    assert expand_file(a)[0].run_id == expand_file(b)[0].run_id


def test_changing_a_value_changes_the_id_but_tracking_does_not(tmp_path):
    base_id = expand_file(write_experiment(tmp_path, "a", base=tiny_base()))[0].run_id
    lr_id = expand_file(write_experiment(tmp_path, "b", base=tiny_base(train={"lr": 2e-3})))[0].run_id
    val_id = expand_file(write_experiment(tmp_path, "c", base=tiny_base(data={"n_val": 16})))[0].run_id
    wandb_id = expand_file(write_experiment(
        tmp_path, "d", base=tiny_base(tracking={"backend": "wandb", "project": "other", "tags": ["x"]})))[0].run_id
    assert len({base_id, lr_id, val_id}) == 3
    assert wandb_id == base_id
    # the override path gives the same ids as writing the value in the file
    assert expand_file(write_experiment(tmp_path, "e", base=tiny_base()), ["train.lr=0.002"])[0].run_id == lr_id


def test_latency_repeats_at_its_default_keeps_earlier_run_ids(tmp_path):
    """`eval.latency_repeats` came later: at its default it is left out of the spec (and the id hash)."""
    [plain] = expand_file(write_experiment(tmp_path, "a", base=tiny_base()))
    [spelt] = expand_file(write_experiment(tmp_path, "b", base=tiny_base(eval={"latency_repeats": 5})))
    [three] = expand_file(write_experiment(tmp_path, "c", base=tiny_base(eval={"latency_repeats": 3})))
    assert "latency_repeats" not in plain.config.as_dict()["eval"] and plain.config.eval.latency_repeats == 5
    assert spelt.run_id == plain.run_id
    assert three.run_id != plain.run_id and three.config.as_dict()["eval"]["latency_repeats"] == 3


def test_budget_confounds_flags_budget_paired_with_method(tmp_path):
    from harness.grid import budget_confounds

    crossed = specs_for(tmp_path, {"method": ["lora", "full"], "data.n_train": [16, 32]}, stem="crossed")
    assert budget_confounds(crossed) == []
    paired = specs_for(tmp_path, {"variant": [{"method": "lora", "train.max_steps": 3},
                                              {"method": "full", "train.max_steps": 5}]}, stem="paired")
    assert budget_confounds(paired) == ["train.max_steps"]
    # a learning rate per method is a recipe, not a budget
    lrs = specs_for(tmp_path, {"variant": [{"method": "lora", "train.lr": 1e-3}, {"method": "full", "train.lr": 1e-4}]},
                    stem="lrs")
    assert budget_confounds(lrs) == []
    # stages of different objectives (an SFT run, then DPO runs from it) are not compared
    staged = specs_for(tmp_path, {"stage": [
        {"method": "lora", "train.max_steps": 3, "data.name": "chatterbot"},
        {"method": "lora", "objective": "dpo"}, {"method": "full", "objective": "dpo"}]}, stem="staged")
    assert budget_confounds(staged) == []
    staged[-1] = specs_for(tmp_path, {"method": ["full"], "objective": ["dpo"], "train.max_steps": [9]}, stem="s2")[0]
    assert budget_confounds(staged) == ["train.max_steps"]


def test_a_run_that_reads_another_carries_its_id_and_folds_it_into_its_own(tmp_path):
    from harness.grid import with_reads

    chain = {"name": "continual", "sequence": ["chat_technical", "sentiment", "humaneval"]}
    base = tiny_base(data={"n_val": 8, "n_test": 0}, objective=chain)
    plain = expand(load_experiment(write_experiment(tmp_path, "chain", base=base)))
    specs = with_reads(plain)
    first, second, third = specs
    assert first.reads is None and second.reads == {f"run:{first.slug}": first.run_id}
    assert third.reads == {f"run:{second.slug}": second.run_id}  # the settled id, with stage 0's folded in
    assert first.run_id == plain[0].run_id and second.run_id != plain[1].run_id
    assert [s.run_id for s in with_reads(plain)] == [s.run_id for s in specs]  # settles the same every time
    # stage 0 alone under another id (a data version bump, a setting of its own grid point): the later
    # stages, whose own settings did not change, get new ids too, so a sweep reruns them
    from dataclasses import replace

    moved = with_reads([replace(plain[0], run_id=f"{first.slug}-00000000"), *plain[1:]])
    assert moved[1].reads == {f"run:{first.slug}": f"{first.slug}-00000000"}
    assert moved[1].run_id != second.run_id and moved[2].run_id != third.run_id
    assert second.as_dict()["reads"] == second.reads
