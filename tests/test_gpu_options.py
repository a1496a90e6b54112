"""The GPU options `train.kernels`, `train.attn_implementation` and `train.compile`, on a machine without
CUDA: the config accepts and rejects their values, preflight refuses what cannot run here before any
run starts, each reaches the code it configures, and specs at their defaults keep their run ids."""

import types

import pytest

from harness import models
from harness.config import TrainCfg, build_run_config
from harness.errors import ConfigError

from conftest import run_cli, tiny_base, write_experiment
from test_train import _examples, tiny_with_method

# --- the config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("kernels", "none"), ("kernels", "liger"),
                                        *[("attn_implementation", v) for v in ("auto", "sdpa_varlen", "sdpa", "eager",
                                                                               "flash_attention_2")],
                                        ("compile", True), ("compile", False)])
def test_the_config_accepts_each_value(key, value):
    assert getattr(build_run_config({"train": {key: value}}, file="x.yaml").train, key) == value


def test_the_defaults_change_nothing():
    train = TrainCfg()
    assert (train.kernels, train.attn_implementation, train.compile) == ("none", "auto", False)


@pytest.mark.parametrize("key, value, needles", [
    ("kernels", "fused", ["`train.kernels`", "liger"]),
    ("kernels", True, ["`train.kernels`"]),
    ("attn_implementation", "flash_attention_3", ["`train.attn_implementation`", "flash_attention_2"]),
    ("attn_implementation", "flash", ["`train.attn_implementation`"]),
    ("compile", "sometimes", ["`train.compile`"]),
    ("compile", 3, ["`train.compile`"]),
])
def test_the_config_rejects_other_values(key, value, needles):
    with pytest.raises(ConfigError) as caught:
        build_run_config({"train": {key: value}}, file="x.yaml")
    for needle in needles:
        assert needle in str(caught.value)


# --- preflight, before any run starts --------------------------------------------------------------

def _dry_run(tmp_path, **train):
    path = write_experiment(tmp_path / "exp", "gpu", base=tiny_base(train=train))
    return path, run_cli("run", str(path), "--dry-run", "--results", str(tmp_path / "results"))


@pytest.mark.parametrize("key, value, allowed", [
    ("kernels", "liger", "Allowed here: none, cpu."),
    ("attn_implementation", "flash_attention_2", "Allowed here: auto, sdpa_varlen, sdpa, eager."),
])
def test_preflight_rejects_what_needs_cuda_on_this_machine(tmp_path, key, value, allowed):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the option may run here")
    path, res = _dry_run(tmp_path, **{key: value})
    assert res.code == 2, res.out + res.err
    assert "Traceback" not in res.out + res.err
    assert res.err.startswith("error: ") and str(path) in res.err
    assert f"train.{key}`" in res.err and f"`{value}` needs a CUDA GPU" in res.err and allowed in res.err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("spec.yaml"))


def test_preflight_names_both_problems_at_once(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, res = _dry_run(tmp_path, kernels="liger", attn_implementation="flash_attention_2")
    assert res.code == 2 and "train.kernels`" in res.err and "train.attn_implementation`" in res.err


def test_preflight_names_the_missing_package_on_a_gpu(tmp_path):
    """With CUDA but without the packages, the message says what to install."""
    from harness.config import load_experiment
    from harness.grid import expand
    from harness.preflight import check_gpu_options

    path = write_experiment(tmp_path, "gpu", base=tiny_base(train={"kernels": "liger",
                                                                   "attn_implementation": "flash_attention_2"}))
    problems = check_gpu_options(expand(load_experiment(path)), file=str(path), cuda=True)
    fields = {field.split("] ")[1]: message for _, field, message in problems}
    if not models.installed("liger_kernel"):
        assert "pip install liger-kernel" in fields["train.kernels"]
    if not models.installed("flash_attn"):
        assert "pip install flash-attn" in fields["train.attn_implementation"]


def test_options_that_run_anywhere_pass_preflight(tmp_path):
    from harness.config import load_experiment
    from harness.grid import expand
    from harness.preflight import check_gpu_options

    path = write_experiment(tmp_path, "cpu", base=tiny_base(), grid={"train.attn_implementation": ["auto", "sdpa",
                                                                                                  "eager"],
                                                                      "train.compile": [False, True]})
    assert check_gpu_options(expand(load_experiment(path)), file=str(path), cuda=False) == []


# --- what each option reaches ---------------------------------------------------------------------------

def test_compile_reaches_the_training_arguments(tmp_path):
    from harness.train import training_args

    on = training_args(TrainCfg(compile=True), out_dir=tmp_path, seed=0, device="cpu", packing=True)
    off = training_args(TrainCfg(), out_dir=tmp_path, seed=0, device="cpu", packing=True)
    assert on.torch_compile is True and off.torch_compile is False


def test_auto_attention_is_sdpa_varlen_without_cuda_or_flash_attn(monkeypatch):
    import torch

    assert models.pick_attn_implementation("auto", "cpu", torch.float32) == "sdpa_varlen"
    assert models.pick_attn_implementation("auto", "cpu", torch.bfloat16) == "sdpa_varlen"
    assert models.pick_attn_implementation("sdpa", "cpu", torch.float32) == "sdpa"
    assert models.pick_attn_implementation("eager", "cpu", torch.float32) == "eager"
    monkeypatch.setattr(models, "installed", lambda package: package == "flash_attn")
    assert models.pick_attn_implementation("auto", "cuda", torch.bfloat16) == "flash_attention_2"
    assert models.pick_attn_implementation("auto", "cuda", torch.float32) == "sdpa_varlen"  # FA2: half precision
    monkeypatch.setattr(models, "installed", lambda package: False)
    assert models.pick_attn_implementation("auto", "cuda", torch.bfloat16) == "sdpa_varlen"


@pytest.mark.parametrize("train, expected", [(None, "sdpa_varlen"), ({}, "sdpa_varlen"),
                                             ({"attn_implementation": "sdpa"}, "sdpa"),
                                             ({"attn_implementation": "eager"}, "eager")])
def test_the_model_loads_with_the_chosen_attention_and_the_run_records_it(train, expected):
    spec = build_run_config({"model": "tiny-smollm2", "train": train or {}}, file="x.yaml")
    model, _ = models.load(spec.model, "cpu", None if train is None else spec.train)
    assert model.config._attn_implementation == expected
    assert models.runtime_env(spec.as_dict(), "cpu") == {"attn_implementation": expected}
    assert models.runtime_env({}, None) == {"attn_implementation": None}  # a run that failed before its device


def test_liger_at_run_time_without_the_package_is_a_clear_error():
    if models.installed("liger_kernel"):
        pytest.skip("liger-kernel is installed here")
    with pytest.raises(models.ModelLoadError, match="pip install liger-kernel"):
        models.apply_kernels(types.SimpleNamespace(config=None), "liger")
    assert models.apply_kernels("model", "none") == "model"


# --- a model that computes its own (fused) loss ----------------------------------------------------------

def _fused_loss_forward(calls: list):
    """A stand-in for Liger's `lce_forward` (its contract, plain torch): with `skip_logits` and targets,
    the loss from the hidden states at `logits_to_keep`, sum ÷ `num_items_in_batch` (mean without it),
    and no logits."""
    import torch.nn.functional as F
    from transformers.modeling_outputs import CausalLMOutputWithPast

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, labels=None,
                shift_labels=None, num_items_in_batch=None, skip_logits=None, **kwargs):
        assert skip_logits is True and labels is None
        calls.append({"keep": logits_to_keep, "shift_labels": shift_labels, "num_items": num_items_in_batch})
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            **kwargs).last_hidden_state
        logits = self.lm_head(hidden[:, logits_to_keep, :]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100,
                               reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else shift_labels.ne(-100).sum())
        return CausalLMOutputWithPast(loss=loss, logits=None)

    return forward


@pytest.mark.parametrize("count", [True, False], ids=["num_items", "mean"])
def test_a_fused_loss_model_gets_the_label_positions_and_gives_the_same_loss(tmp_path, count):
    import torch
    from transformers import TrainingArguments

    from harness.context import RunContext
    from harness.data.tokenize import make_collator
    from harness.train import LabelLogitsTrainer, fuses_loss

    spec = build_run_config({"model": "tiny-smollm2", "method": "lora", "tracking": "none"}, file="test")
    losses = []
    for fused in (False, True):
        torch.manual_seed(0)
        model, tok = models.load(spec.model, "cpu")
        calls: list = []
        if fused:  # what models.apply_kernels leaves on the model, with the stand-in for liger's forward
            model.forward = types.MethodType(_fused_loss_forward(calls), model)
            setattr(model, models.FUSED_LOSS, True)
        torch.manual_seed(0)
        model = spec.method.build().apply(model, RunContext(spec=spec, run_dir=tmp_path, device="cpu", total_steps=10))
        model.train()
        assert fuses_loss(model) is fused
        batch = make_collator(tok, True)(_examples(tok))
        scored = batch["labels"][..., 1:].ne(-100).sum()
        trainer = LabelLogitsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                         report_to="none"))
        losses.append(trainer.compute_loss(model, dict(batch), num_items_in_batch=scored if count else None).item())
        if fused:
            [call] = calls
            assert len(call["keep"]) == int(scored) and call["shift_labels"].ne(-100).all()
            assert (call["num_items"] is not None) is count
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_a_compiled_model_still_projects_only_the_label_positions(tmp_path):
    """Under `train.compile` the Trainer hands compute_loss torch.compile's wrapper (`_orig_mod`)."""
    import torch
    from transformers import TrainingArguments

    from harness.data.tokenize import make_collator
    from harness.train import LabelLogitsTrainer

    class Wrapper(torch.nn.Module):  # what torch.compile returns, without compiling
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, *args, **kwargs):
            return self._orig_mod(*args, **kwargs)

    model, tok = tiny_with_method(tmp_path, "lora")
    batch = make_collator(tok, True)(_examples(tok))
    trainer = LabelLogitsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                     report_to="none"))
    _, outputs = trainer.compute_loss(Wrapper(model), dict(batch), return_outputs=True)
    assert outputs.logits.shape[1] == int(batch["labels"][..., 1:].ne(-100).sum())


# --- run ids ---------------------------------------------------------------------------------------------

#: a spec written before these options existed, and the id it had then (a data version bump changes it)
GOLDEN = ({"model": "tiny-smollm2", "data": {"name": "chatterbot", "n_train": 16, "n_val": 8, "n_test": 0},
           "method": {"name": "lora", "r": 4, "alpha": 8}, "tracking": "none",
           "train": {"max_steps": 3, "micro_batch": 4, "lr": 1.0e-3, "seq_len": 64},
           "eval": {"latency_prompts": 1, "latency_new_tokens": 2}}, "lora-r4-a8-n16-s0-e3e8ec1b")


def _run_id(tmp_path, stem, base):
    from harness.config import load_experiment
    from harness.grid import expand

    [spec] = expand(load_experiment(write_experiment(tmp_path, stem, base=base)))
    return spec


def test_run_ids_of_specs_at_the_defaults_are_unchanged(tmp_path):
    base, golden = GOLDEN
    plain = _run_id(tmp_path, "plain", base)
    spelt = _run_id(tmp_path, "spelt", {**base, "train": {**base["train"], "kernels": "none",
                                                          "attn_implementation": "auto", "compile": False}})
    assert plain.run_id == spelt.run_id == golden
    assert not {"kernels", "attn_implementation", "compile"} & set(plain.config.as_dict()["train"])


@pytest.mark.parametrize("key, value", [("kernels", "liger"), ("attn_implementation", "sdpa"), ("compile", True)])
def test_a_set_option_is_in_the_spec_and_the_id(tmp_path, key, value):
    base, golden = GOLDEN
    spec = _run_id(tmp_path, key, {**base, "train": {**base["train"], key: value}})
    assert spec.run_id != golden and spec.config.as_dict()["train"][key] == value
    # what the run's process reads back from spec.yaml is the same config
    assert build_run_config(spec.config.as_dict(), file="spec.yaml") == spec.config
