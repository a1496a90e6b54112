"""Bottleneck adapters (adapter: houlsby / pfeiffer / parallel) and compacter on the tiny model:
which weights train, how many, identity at init, gradients, save → load, AdapterDrop, bad options,
and one sweep through the CLI."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from harness import models
from harness.config import RUN_KEYS, ModelCfg, build_run_config
from harness.errors import ConfigError
from harness.measure import count_params
from harness.methods.adapter import CONFIG_FILE, WEIGHTS_FILE, AdapterOptions
from harness.methods.compacter import CompacterOptions
from tests.conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment

HIDDEN, LAYERS = 64, 2  # the tiny model (harness.models._build_tiny)
CASES = [
    ("adapter", {"placement": "houlsby"}),
    ("adapter", {"placement": "pfeiffer"}),
    ("adapter", {"placement": "parallel", "non_linearity": "gelu", "reduction_factor": 8}),
    ("compacter", {"placement": "houlsby"}),
    ("compacter", {"placement": "pfeiffer", "phm_rank": 2, "non_linearity": "silu"}),
    ("compacter", {"placement": "parallel", "reduction_factor": 4, "phm_dim": 2}),
]
IDS = [f"{name}-{opts['placement']}" for name, opts in CASES]


def build(name: str, **options):
    return build_run_config({"model": "tiny-smollm2", "method": {"name": name, **options}, "tracking": "none"},
                            file="test").method.build()


_LOADED: list = []


def tiny(fresh: bool = False):
    """(model, tokenizer) of the untouched tiny model: a copy of one loaded model, or a new load."""
    if fresh:
        return models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    if not _LOADED:
        _LOADED.extend(models.load(ModelCfg(name="tiny-smollm2"), "cpu"))
    return copy.deepcopy(_LOADED[0]), _LOADED[1]


def blocks(placement: str) -> list[str]:
    return ["self_attn", "mlp"] if placement == "houlsby" else ["mlp"]


def expected_count(name: str, options) -> int:
    """Trainable parameters by formula: per adapter down (h→b) + up (b→h), weights and biases;
    compacter's PHM projection in→out has n·(in/n·k + k·out/n) = k·(in+out) weights plus the
    shared n×n×n A_i, counted once."""
    h, b = HIDDEN, HIDDEN // options.reduction_factor
    if name == "adapter":
        per_adapter = (h * b + b) + (b * h + h)
        shared = 0
    else:
        k = options.phm_rank
        per_adapter = (k * (h + b) + b) + (k * (b + h) + h)
        shared = options.phm_dim ** 3
    return (LAYERS - options.adapterdrop) * len(blocks(options.placement)) * per_adapter + shared


def expected_names(name: str, options) -> set[str]:
    leaves = ["weight", "bias"] if name == "adapter" else ["s", "t", "bias"]
    prefixes = [f"model.layers.{i}.{block}.adapter" for i in range(options.adapterdrop, LAYERS)
                for block in blocks(options.placement)]
    names = {f"{p}.{proj}.{leaf}" for p in prefixes for proj in ("down", "up") for leaf in leaves}
    if name == "compacter":
        names.add(f"{prefixes[0]}.down.rule")  # the shared A_i, named where first met
    return names


def batch(tok):
    enc = tok(["Hello there, how are you?", "What is two plus two?"], return_tensors="pt", padding=True)
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc


def trained(method, steps: int = 3):
    """An adapted tiny model after a few AdamW steps (adapter weights far from their init)."""
    torch.manual_seed(0)
    model, tok = tiny()
    model = method.apply(model, None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(**batch(tok)).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, tok


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_only_adapter_weights_train_and_count_matches_formula(name, opts):
    method = build(name, **opts)
    model, _ = tiny()
    _, base_total = count_params(model)
    base_names = {n for n, _ in model.named_parameters()}
    model = method.apply(model, None)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_names(name, method.options)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in base_names)
    n_trainable, total = count_params(model)
    assert n_trainable == expected_count(name, method.options)
    assert total == base_total + n_trainable


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_adapted_model_starts_as_the_base_model(name, opts):
    from harness.methods._bottleneck import Bottleneck

    model, tok = tiny()
    with torch.no_grad():
        base = model(**batch(tok)).logits
        exact = build(name, **opts, init_scale=0).apply(model, None)(**batch(tok)).logits
    assert torch.equal(exact, base)  # zero-init up projection: bit-identical to the base model
    # default init_scale 1e-3: every adapter is near the identity, f(x) tiny next to x
    torch.manual_seed(0)
    near = build(name, **opts).apply(tiny()[0], None)
    x = torch.randn(8, HIDDEN)
    adapters = [m for m in near.modules() if isinstance(m, Bottleneck)]
    assert adapters
    with torch.no_grad():
        assert all(m(x).norm() < 1e-2 * x.norm() for m in adapters)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_forward_backward_reaches_every_adapter_weight(name, opts):
    model, tok = tiny()
    model = build(name, **opts).apply(model, None)
    model.train()
    loss = model(**batch(tok)).loss
    assert math.isfinite(loss.item())
    loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


@pytest.mark.parametrize(("name", "opts"), [*CASES, ("adapter", {"placement": "houlsby", "adapterdrop": 1})],
                         ids=[*IDS, "adapter-houlsby-drop1"])
def test_save_then_load_on_a_fresh_base_gives_identical_outputs(name, opts, tmp_path):
    method = build(name, **opts)
    model, tok = trained(method)
    out = tmp_path / "artifact"
    method.save(model, out)
    assert sorted(f.name for f in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    from safetensors.torch import load_file

    saved = load_file(str(out / WEIGHTS_FILE))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["hidden_size"] == HIDDEN and config["layers"] == list(range(method.options.adapterdrop, LAYERS))

    fresh, _ = tiny(fresh=True)
    loaded = build(name, **opts).load(fresh, out, None)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        a, b = model(**batch(tok)), loaded(**batch(tok))
    assert torch.equal(a.logits, b.logits)
    assert a.loss.item() == b.loss.item()
    with torch.no_grad():
        assert not torch.equal(tiny()[0](**batch(tok)).logits, a.logits)  # training did change something


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_adapterdrop_leaves_the_lowest_layers_bare(name, opts):
    full = build(name, **opts)
    dropped = build(name, **opts, adapterdrop=1)
    model = dropped.apply(tiny()[0], None)
    layer0, layer1 = model.model.layers
    assert not hasattr(layer0.mlp, "adapter") and not hasattr(layer0.self_attn, "adapter")
    assert hasattr(layer1.mlp, "adapter")
    n_dropped = count_params(model)[0]
    n_full = count_params(full.apply(tiny()[0], None))[0]
    assert n_dropped == expected_count(name, dropped.options)
    assert n_dropped < n_full
    for k in (LAYERS, LAYERS + 3):
        with pytest.raises(ValueError, match=r"`method\.adapterdrop` must be less than .* \(2\)"):
            build(name, **opts, adapterdrop=k).apply(tiny()[0], None)


@pytest.mark.parametrize(("name", "option", "value"), [
    ("adapter", "placement", "middle"),
    ("adapter", "reduction_factor", 0),
    ("adapter", "non_linearity", "softmax"),
    ("adapter", "adapterdrop", -1),
    ("adapter", "init_scale", -0.1),
    ("compacter", "phm_dim", 0),
    ("compacter", "phm_rank", 0),
    ("adapter", "phm_dim", 4),  # a compacter option
    ("adapter", "rank", 4),
])
def test_bad_option_names_its_field(name, option, value):
    with pytest.raises(ConfigError, match=rf"`method\.{option}`"):
        build(name, **{option: value})


def test_bad_options_rejected_by_the_options_models():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="placement"):
        AdapterOptions(placement="middle")
    with pytest.raises(ValidationError, match="phm_dim"):
        CompacterOptions(phm_dim=-2)


def test_shape_errors_name_the_option():
    with pytest.raises(ValueError, match=r"`method\.reduction_factor` must be at most hidden_size=64"):
        build("adapter", reduction_factor=65).apply(tiny()[0], None)
    with pytest.raises(ValueError, match=r"`method\.phm_dim` must divide hidden_size=64 and the bottleneck size=4"):
        build("compacter", phm_dim=8).apply(tiny()[0], None)  # 64 // 16 = 4 is not a multiple of 8
    with pytest.raises(ValueError, match=r"`method\.phm_dim` must divide hidden_size=64"):
        build("compacter", phm_dim=3, reduction_factor=4).apply(tiny()[0], None)


def test_unsupported_architecture_and_double_apply():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    with pytest.raises(ValueError, match="model_type `gpt2`"):
        build("adapter").apply(gpt2, None)
    model = build("adapter").apply(tiny()[0], None)
    with pytest.raises(ValueError, match="already has bottleneck adapters"):
        build("compacter").apply(model, None)


def test_slugs():
    assert build("adapter").slug() == "adapter-pfeiffer-rf16"
    assert build("adapter", placement="houlsby", reduction_factor=8).slug() == "adapter-houlsby-rf8"
    assert build("compacter", placement="parallel").slug() == "compacter-parallel-rf16-phm4"


def test_sweep_through_the_cli(tmp_path):
    """adapter and compacter train 2 steps in child processes; the saved artifact is small and
    reloading it onto the base model reproduces the recorded eval loss."""
    from harness.data.tokenize import make_collator
    from harness.evaluate import token_loss
    from harness.context import RunContext

    base = tiny_base(method={"name": "adapter", "placement": "houlsby", "reduction_factor": 8},
                     train={"max_steps": 2})
    path = write_experiment(tmp_path / "exp", "adapters", base=base, grid={"method": ["adapter", "compacter"]})
    results = tmp_path / "results"
    cli = run_cli("run", str(path), "--results", str(results), "--workers", "2")
    assert cli.code == 0, cli.out + cli.err
    model_bytes = sum(f.stat().st_size for f in Path(models.resolve("tiny-smollm2")).glob("*.safetensors"))
    dirs = run_dirs(results, "adapters")
    assert len(dirs) == 2
    for run_dir in dirs:
        result = read_result(run_dir)
        assert result["status"] == "ok", result["error"]
        m = result["metrics"]
        assert 0 < m["adapter_bytes"] < model_bytes / 100
        assert 0 < m["trainable_pct"] < 1
        spec = build_run_config({k: v for k, v in result["spec"].items() if k in RUN_KEYS}, file="test")
        assert result["slug"].startswith(spec.method.build().slug())
        model, tok = models.load(spec.model, "cpu")
        loaded = spec.method.build().load(model, run_dir / "adapter", None)
        objective, ctx = spec.objective.build(), RunContext(spec=spec, run_dir=run_dir, device="cpu", total_steps=2)
        _, val = objective.encode(ctx, tok, *objective.records(ctx, {}))
        loss, _ = token_loss(loaded, val, make_collator(tok, spec.train.packing), spec.eval.batch_size, "cpu")
        assert loss == pytest.approx(m["eval_loss"], rel=1e-6)
