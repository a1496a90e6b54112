"""harness.config: strict sections, shorthands, method options, experiment files."""

import pytest

from conftest import write_experiment
from harness.config import ModelCfg, TrainCfg, build_run_config, load_experiment
from harness.errors import ConfigError


def fields_of(exc: ConfigError) -> list[str]:
    return [field for _, field, _ in exc.problems]


def test_defaults_and_shorthands():
    cfg = build_run_config({"model": "tiny-smollm2", "method": "qlora", "data": "chatterbot", "tracking": "none"},
                           file="x.yaml")
    assert cfg.model.name == "tiny-smollm2"
    assert cfg.method.name == "qlora"
    assert cfg.tracking.backend == "none"
    assert cfg.data.name == "chatterbot"
    assert cfg.model.load_in_4bit is True  # qlora turns 4-bit on by itself
    assert cfg.method.as_dict() == {"name": "qlora", "r": 8, "alpha": 16, "dropout": 0.05,
                                    "target_modules": "all-linear", "bias": "none"}


def test_default_method_is_lora():
    assert build_run_config({}, file="x.yaml").method.name == "lora"


def test_alpha_expression_of_r():
    cfg = build_run_config({"method": {"name": "lora", "r": 16, "alpha": "2*r"}}, file="x.yaml")
    assert cfg.method.options.r == 16
    assert cfg.method.options.alpha == 32


def test_expression_over_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        build_run_config({"method": {"name": "lora", "alpha": "2*rank"}}, file="x.yaml")
    assert "method.alpha" in str(info.value) or "method" in fields_of(info.value)[0]
    assert "rank" in str(info.value)


def test_unknown_nested_key_suggests():
    with pytest.raises(ConfigError) as info:
        build_run_config({"train": {"max_step": 5}}, file="x.yaml")
    assert fields_of(info.value) == ["train.max_step"]
    assert "Did you mean `max_steps`?" in str(info.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        build_run_config({"train": {"lr": -1, "micro_batch": 0}, "eval": {"batchsize": 2}, "seed": -1},
                         file="x.yaml")
    assert set(fields_of(info.value)) == {"train.lr", "train.micro_batch", "eval.batchsize", "seed"}


def test_method_option_of_another_method():
    with pytest.raises(ConfigError) as info:
        build_run_config({"method": {"name": "full", "r": 8}}, file="x.yaml")
    assert fields_of(info.value) == ["method.r"]
    assert "does not belong to method `full`" in str(info.value)


def test_unknown_method_suggests():
    with pytest.raises(ConfigError) as info:
        build_run_config({"method": "lorra"}, file="x.yaml")
    assert fields_of(info.value) == ["method.name"]
    assert "Did you mean `lora`?" in str(info.value)


@pytest.mark.parametrize("r", [0, -4])
def test_rank_must_be_positive(r):
    with pytest.raises(ConfigError) as info:
        build_run_config({"method": {"name": "lora", "r": r}}, file="x.yaml")
    assert fields_of(info.value) == ["method.r"]


def test_full_fine_tuning_cannot_be_4bit():
    with pytest.raises(ConfigError) as info:
        build_run_config({"method": "full", "model": {"name": "tiny-smollm2", "load_in_4bit": True}}, file="x.yaml")
    assert fields_of(info.value) == ["model.load_in_4bit"]


def test_steps_or_epochs():
    assert TrainCfg(epochs=1).max_steps is None
    assert TrainCfg().max_steps == 40
    with pytest.raises(ValueError, match="either `max_steps` or `epochs`"):
        TrainCfg(epochs=1, max_steps=5)


def test_sections_are_frozen_and_strict():
    cfg = ModelCfg(name="tiny-smollm2")
    with pytest.raises(Exception):
        cfg.name = "other"
    with pytest.raises(Exception):
        ModelCfg(nmae="x")


def test_where_prefix_names_the_grid_point():
    with pytest.raises(ConfigError) as info:
        build_run_config({"train": {"lr": 0}}, file="e.yaml", where="[method=lora] ")
    assert fields_of(info.value) == ["[method=lora] train.lr"]
    assert str(info.value).startswith("e.yaml: `[method=lora] train.lr`:")


def test_load_experiment(tmp_path):
    path = write_experiment(tmp_path, "exp1", base={"model": "tiny-smollm2"}, grid={"seeds": [0, 1]},
                            description="d")
    exp = load_experiment(path)
    assert exp.name == "exp1"  # from the file name
    assert exp.file == str(path)
    assert exp.base == {"model": "tiny-smollm2"}
    assert exp.grid == {"seeds": [0, 1]}
    assert exp.description == "d"


def test_experiment_name_key(tmp_path):
    assert load_experiment(write_experiment(tmp_path, "f", name="given")).name == "given"


def test_unknown_top_level_key(tmp_path):
    path = write_experiment(tmp_path, "e", grdi={"seeds": [0]})
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert fields_of(info.value) == ["grdi"]
    assert "Did you mean `grid`?" in str(info.value)


def test_wrong_section_types(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("base: [1, 2]\nplugins: x.py\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert set(fields_of(info.value)) == {"base", "plugins"}


def test_malformed_yaml_gives_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base:\n  model: tiny\n   train: {max_steps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert "line" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("base: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError):
        load_experiment(path)


# --- stacks: `method: [a, b]` --------------------------------------------------------------------

def test_stack_shorthand_round_trips():
    cfg = build_run_config({"method": ["ia3", {"name": "prompt_tuning", "num_virtual_tokens": 8}]}, file="x.yaml")
    assert cfg.method.name == "stack"
    assert [m.name for m in cfg.method.options.methods] == ["ia3", "prompt_tuning"]
    assert cfg.train.packing is False  # a prompt method in the stack forces padded batches
    as_dict = cfg.method.as_dict()
    assert as_dict["methods"][1]["num_virtual_tokens"] == 8
    assert build_run_config({"method": as_dict}, file="x.yaml") == cfg  # what the run child re-reads
    assert cfg.method.build().slug() == "ia3+prompt_tuning-v8-text"


def test_stack_takes_4bit_from_its_components():
    assert build_run_config({"method": ["qlora", "ia3"]}, file="x.yaml").model.load_in_4bit is True


@pytest.mark.parametrize("methods, field, message", [
    (["lora"], "method.methods", "at least two"),
    (["adalora", "prompt_tuning"], "method.methods[0]", "rank allocator"),
    (["vera", "lora"], "method.methods[0]", "shared projections"),
    (["full", "lora"], "method.methods[0]", "use `freeze`"),
    (["prompt_tuning", "prefix_tuning"], "method.methods", "at most one prompt-learning"),
    (["lora", "lora"], "method.methods", "appears twice"),
    (["qlora", {"name": "freeze", "layers": 1}], "method.methods", "cannot be 4-bit"),
    ([{"name": "peft", "config": "LoKrConfig"}, "lora", {"name": "peft", "config": "LoKrConfig", "r": 4}],
     "method.methods", "`peft_lokr` appears twice"),
    (["lora", ["ia3", "lora"]], "method.methods[1]", "do not nest"),
    (["lora", "lorra"], "method.methods[1].name", "Did you mean"),
    (["lora", {"name": "ia3", "r": 4}], "method.methods[1].r", "does not belong to method `ia3`"),
    (["lora", {"name": "peft", "config": "PromptTuningConfig"}, "prefix_tuning"], "method.methods",
     "at most one prompt-learning"),
])
def test_incompatible_stacks_are_config_errors(methods, field, message):
    with pytest.raises(ConfigError) as info:
        build_run_config({"method": methods}, file="x.yaml")
    assert field in fields_of(info.value)
    assert message in str(info.value)


def test_freeze_needs_something_to_train():
    with pytest.raises(ConfigError, match="nothing trains"):
        build_run_config({"method": "freeze"}, file="x.yaml")
