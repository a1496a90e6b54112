"""The peak-memory estimate (harness/memory.py): components by hand, relations, the budget, the dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import memory, preflight
from harness.memory import MIB
from tests.conftest import expand_file, run_cli, tiny_base, write_experiment

#: tiny-smollm2: hidden 64, 2 layers, intermediate 128, 4 heads (2 key/value heads of 16), vocab 49,152, tied head
TINY_PARAMS = 49152 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3 + 2 * 64) + 64
TINY_TENSORS = 1 + 2 * 9 + 1  # embedding, 9 per layer (7 linear + 2 norms), the final norm


def _specs(tmp_path, methods, **sections):
    path = write_experiment(tmp_path / "exp", "mem", base=tiny_base(**sections), grid={"method": methods})
    return path, expand_file(path)


def _real_model(spec):
    from harness import models
    from harness.context import RunContext

    model, _ = models.load(spec.config.model, "cpu", spec.config.train)
    ctx = RunContext(spec=spec.config, run_dir=None, device="cpu", total_steps=3)
    return spec.config.method.build().apply(model, ctx)


def test_full_fine_tuning_components_are_exact_to_the_byte(tmp_path):
    _, (spec,) = _specs(tmp_path, ["full"])
    model = _real_model(spec)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    est = memory.estimate(spec.config, model, "cpu")
    assert round(est.weights_mb * MIB) == 4 * TINY_PARAMS + buffers
    assert round(est.grads_mb * MIB) == 4 * TINY_PARAMS
    assert round(est.optimizer_mb * MIB) == 2 * 4 * TINY_PARAMS + 4 * TINY_TENSORS  # AdamW: 2 fp32 moments + steps
    # the weightless copy preflight builds gives the same figures
    skeleton = preflight.estimates([spec], "cpu")[spec.run_id]
    assert round(skeleton.weights_mb * MIB) == round(est.weights_mb * MIB)
    assert round(skeleton.optimizer_mb * MIB) == round(est.optimizer_mb * MIB)


def test_optimizer_state_per_optimizer():
    tensors = [(10_000, 4), (100, 4)]
    assert memory.optimizer_state_bytes("adamw_torch", tensors) == 2 * 4 * 10_100 + 8
    assert memory.optimizer_state_bytes("adamw_torch_fused", [(10, 2)]) == 2 * 2 * 10 + 4  # moments in the bf16 dtype
    assert memory.optimizer_state_bytes("sgd", tensors) == 0
    eight = memory.optimizer_state_bytes("adamw_bnb_8bit", tensors)
    assert eight == 2 * (10_000 + 4 * 40) + 4 + 2 * 4 * 100 + 4  # 1 byte a moment + scales; small tensors fp32
    assert memory.optimizer_state_bytes("paged_adamw_8bit", tensors) == eight
    assert memory.optimizer_state_bytes("lion_32bit", [(10, 4)]) == 4 * 10 + 4


def test_relations_between_methods_on_the_135m_skeleton(tmp_path):
    path = write_experiment(tmp_path / "exp", "rel", base=tiny_base(model="smollm2-135m"),
                            grid={"method": ["full", "lora", "qlora", "prompt_tuning"]})
    specs = expand_file(path)
    est = {s.config.method.name: e for s, e in zip(specs, preflight.estimates(specs, "cpu").values())}
    state = {k: e.weights_mb + e.grads_mb + e.optimizer_mb for k, e in est.items()}
    assert state["full"] > state["lora"] > state["qlora"]  # LoRA's weights are the base's plus its adapters
    assert est["lora"].weights_mb > est["qlora"].weights_mb
    # on CPU bitsandbytes keeps dequantized weights for backward: QLoRA's peak is LoRA's, not below it
    assert est["full"].train_mb > max(est["lora"].train_mb, est["qlora"].train_mb)
    assert min(est.values(), key=lambda e: e.trainable_mb) is est["prompt_tuning"]
    # 134.5M fp32 values: weights, gradients and AdamW state alone are about 2 GiB
    full = est["full"]
    assert 1900 < full.weights_mb + full.grads_mb + full.optimizer_mb < 2100
    assert est["qlora"].weights_mb < 0.45 * est["lora"].weights_mb  # 4-bit decoder weights, fp32 embedding


def test_checkpointing_and_smaller_batches_lower_the_activations(tmp_path):
    _, (plain,) = _specs(tmp_path / "a", ["full"])
    _, (ckpt,) = _specs(tmp_path / "b", ["full"], train={"gradient_checkpointing": True})
    _, (small,) = _specs(tmp_path / "c", ["full"], train={"micro_batch": 1})
    a, b, c = (preflight.estimates([s], "cpu")[s.run_id] for s in (plain, ckpt, small))
    assert b.activations_mb < a.activations_mb and c.activations_mb < a.activations_mb
    assert a.weights_mb == b.weights_mb == c.weights_mb


@pytest.mark.parametrize("text, mib", [("1.5GiB", 1536), ("800MiB", 800), ("2GB", 2e9 / MIB), ("1024KiB", 1)])
def test_sizes_parse(text, mib):
    assert memory.parse_size(text) == pytest.approx(mib)


@pytest.mark.parametrize("text", ["1.5", "GiB", "-1GiB", "0MiB", "1.5 gib", "lots"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="must be a positive size with a unit"):
        memory.parse_size(text)


def test_dry_run_shows_each_points_estimate(tmp_path):
    path, _ = _specs(tmp_path, ["full", "lora"])
    result = run_cli("run", str(path), "--dry-run", "--results", str(tmp_path / "results"))
    assert result.code == 0, result.err
    assert "train MiB (est)" in result.out and "eval MiB (est)" in result.out


def test_a_budget_below_the_estimate_refuses_with_a_fix(tmp_path):
    path, specs = _specs(tmp_path, ["full", "lora"])
    est = {s.config.method.name: e for s, e in zip(specs, preflight.estimates(specs, "cpu").values())}
    budget = (est["full"].train_mb + est["lora"].train_mb) / 2
    args = ("run", str(path), "--memory-budget", f"{budget:.0f}MiB", "--results", str(tmp_path / "results"))
    result = run_cli(*args, "--dry-run")
    assert result.code == 2
    lines = [line for line in result.out.splitlines() if line.startswith("over budget:")]
    assert len(lines) == 1 and lines[0].startswith("over budget: full-")  # LoRA fits
    assert f"> budget {budget:,.0f} MiB" in lines[0]
    assert "train.gradient_checkpointing=true" in lines[0] and "train.micro_batch=2 with train.grad_accum=2" in lines[0]
    result = run_cli(*args, "--dry-run", "--allow-over-budget")
    assert result.code == 0 and "over budget: full-" in result.out
    result = run_cli(*args)  # a real run is refused before anything starts
    assert result.code == 2 and not (tmp_path / "results" / "mem").exists()
    bad = run_cli("run", str(path), "--memory-budget", "lots", "--dry-run")
    assert bad.code == 2 and "--memory-budget" in bad.err and "must be a positive size" in bad.err


@pytest.mark.slow
def test_the_estimate_is_within_20_percent_of_the_measured_peak_on_the_135m(tmp_path):
    base = tiny_base(model="smollm2-135m", data={"n_train": 48, "n_val": 32, "n_test": 0},
                     train={"max_steps": 8, "micro_batch": 6, "seq_len": 256, "packing": True},  # one epoch
                     eval={"latency": False})
    path = write_experiment(tmp_path / "exp", "mem135", base=base, grid={"method": ["full", "lora"]})
    result = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert result.code == 0, result.err
    for found in (tmp_path / "results" / "mem135").glob("*/result.json"):
        m = json.loads(found.read_text())["metrics"]
        assert m["peak_mem_train_est_mb"] == pytest.approx(m["peak_mem_train_mb"], rel=0.2)
        assert m["peak_mem_eval_est_mb"] == pytest.approx(m["peak_mem_eval_mb"], rel=0.2)


def test_the_report_puts_estimate_and_measurement_side_by_side():
    import pandas as pd

    from harness.report.sections.memory_estimate import estimate_table

    df = pd.DataFrame([
        {"config": "full", "status": "ok", "reference": False, "peak_mem_train_est_mb": 1100.0,
         "peak_mem_train_mb": 1000.0, "peak_mem_eval_est_mb": 450.0, "peak_mem_eval_mb": 500.0},
        {"config": "full", "status": "ok", "reference": False, "peak_mem_train_est_mb": 1100.0,
         "peak_mem_train_mb": 1200.0, "peak_mem_eval_est_mb": 450.0, "peak_mem_eval_mb": 500.0},
        {"config": "lora", "status": "failed", "reference": False, "peak_mem_train_est_mb": 900.0,
         "peak_mem_train_mb": None, "peak_mem_eval_est_mb": 400.0, "peak_mem_eval_mb": None},
    ])
    table = estimate_table(df)
    assert list(table["configuration"]) == ["full"]  # only finished runs
    row = table.iloc[0]
    assert row["train measured MiB"] == 1100 and row["train error %"] == pytest.approx(0.0)
    assert row["eval error %"] == pytest.approx(-10.0)


# --- micro_batch: auto --------------------------------------------------------------------------------

def test_choose_micro_batch_takes_the_largest_divisor_that_fits():
    assert memory.choose_micro_batch(12, lambda m: m <= 5) == 4
    assert memory.choose_micro_batch(12, lambda m: True) == 12
    assert memory.choose_micro_batch(7, lambda m: m < 7) == 1
    assert memory.choose_micro_batch(8, lambda m: False) is None


def test_auto_keeps_its_run_id_whatever_the_machine_chooses(tmp_path):
    from harness.config import build_run_config

    auto = build_run_config({"train": {"micro_batch": "auto", "effective_batch": 8}}, file="x.yaml")
    assert (auto.train.micro_batch, auto.train.grad_accum) == (8, 1)  # the plan starts from one micro-batch
    chosen = auto.model_copy(update={"train": auto.train.with_batch(2)})
    assert (chosen.train.micro_batch, chosen.train.grad_accum) == (2, 4)
    assert chosen.as_dict() == auto.as_dict()
    assert auto.as_dict()["train"]["micro_batch"] == "auto" and auto.as_dict()["train"]["effective_batch"] == 8
    fixed = build_run_config({"train": {"micro_batch": 8}}, file="x.yaml").as_dict()["train"]
    assert "effective_batch" not in fixed and fixed["micro_batch"] == 8  # runs without auto keep their ids


@pytest.mark.parametrize("train, says", [({"micro_batch": "auto"}, "needs `effective_batch`"),
                                         ({"effective_batch": 8}, "read only with `micro_batch: auto`"),
                                         ({"micro_batch": "auto", "effective_batch": 8, "grad_accum": 2},
                                          "`grad_accum` is chosen with it"),
                                         ({"micro_batch": "some"}, "or `auto`")])
def test_bad_auto_batches_are_refused_with_the_field(tmp_path, train, says):
    path = write_experiment(tmp_path, "bad", base=tiny_base(train=train))
    result = run_cli("run", str(path), "--dry-run")
    assert result.code == 2 and says in result.err and "bad.yaml" in result.err and "train" in result.err


def test_auto_under_a_budget_picks_a_smaller_micro_batch_at_the_same_effective_batch(tmp_path):
    path, specs = _specs(tmp_path, ["full", "lora"], train={"micro_batch": "auto", "effective_batch": 8})
    one = {s.config.method.name: e for s, e in zip(specs, preflight.estimates(specs, "cpu").values())}
    budget = (one["lora"].train_mb + one["full"].train_mb) / 2  # all 8 in one pass: LoRA fits, full does not
    args = ("run", str(path), "--memory-budget", f"{budget:.0f}MiB", "--results", str(tmp_path / "results"))
    settled, _ = preflight.fit_batches(specs, "cpu", budget)
    batches = {s.config.method.name: (s.config.train.micro_batch, s.config.train.grad_accum) for s in settled}
    assert batches["lora"] == (8, 1)
    assert batches["full"][0] < 8 and batches["full"][0] * batches["full"][1] == 8
    assert [s.run_id for s in settled] == [s.run_id for s in specs]
    assert all(s.batch == {"micro_batch": s.config.train.micro_batch, "grad_accum": s.config.train.grad_accum}
               for s in settled)
    result = run_cli(*args, "--dry-run")
    assert result.code == 0, result.out + result.err
    assert f"{batches['full'][0]} × {batches['full'][1]} (auto)" in result.out and "8 × 1 (auto)" in result.out


def test_an_adapter_on_a_projection_keeps_its_input_and_a_frozen_one_does_not(tmp_path):
    path, specs = _specs(tmp_path, ["full", "lora", "ia3", "prompt_tuning"])
    models_ = {s.config.method.name: _real_model(s) for s in specs}
    assert memory._frozen_inputs(models_["full"]) == (0, 0)
    assert memory._frozen_inputs(models_["lora"]) == (0, 0)  # LoRA's A reads every projection's input
    assert memory._frozen_inputs(models_["ia3"]) == (2, 0)  # k/v and down_proj carry IA3 vectors
    assert memory._frozen_inputs(models_["prompt_tuning"]) == (3, 1)  # nothing in the layers trains


def test_packed_rows_attend_per_example_and_keep_no_score_matrix(tmp_path):
    from harness.config import build_run_config

    packed = build_run_config({"train": {"packing": True}}, file="x.yaml")
    assert memory._attention_copies("cpu", packed) == 0  # sdpa_varlen: torch's flash kernel per example
    row_mask = build_run_config({"train": {"packing": True, "attn_implementation": "sdpa"}}, file="x.yaml")
    assert memory._attention_copies("cpu", row_mask) > 0 and memory._attention_copies("cuda", row_mask) == 0
    eager = build_run_config({"train": {"attn_implementation": "eager"}}, file="x.yaml")
    assert memory._attention_copies("cuda", eager) >= 1


@pytest.mark.slow
def test_a_real_4bit_model_counts_each_packed_weight_once(tmp_path):
    path, (spec,) = _specs(tmp_path, ["qlora"], model="smollm2-135m")
    from harness.models import meta_model

    real = _real_model(spec)  # peft's LoRA wrapper is itself a `Linear4bit` around bitsandbytes' one
    skeleton = meta_model(spec.config.model)
    assert memory._quantized_values(real, spec.config) == memory._quantized_values(skeleton, spec.config) > 0


def test_frozen_models_an_objective_holds_are_in_the_train_estimate(tmp_path):
    """A distillation teacher, and a full reference copy for DPO with full FT (LoRA switches its adapter off)."""
    from harness.config import load_experiment
    from harness.plan import plan_experiment

    root = Path(__file__).resolve().parent.parent
    path = root / "experiments" / "dpo_peft.yaml"
    plan = plan_experiment(load_experiment(path), [], file=str(path), root=tmp_path)
    est = preflight.estimates(plan.specs, "cpu")
    held = {s.slug.split("-n")[0]: est[s.run_id].held_mb for s in plan.specs if est.get(s.run_id)}
    assert held["dpo-full"] == pytest.approx(est[next(s.run_id for s in plan.specs
                                                      if s.slug.startswith("dpo-full"))].weights_mb, rel=0.01)
    assert held["dpo-lora-r8-a16"] == 0 and held.get("orpo-lora-r8-a16", 0) == 0
    dist = root / "experiments" / "distillation.yaml"
    plan = plan_experiment(load_experiment(dist), [], file=str(dist), root=tmp_path)
    est = preflight.estimates(plan.specs, "cpu")
    ens = [est[s.run_id] for s in plan.specs if "ens2" in s.slug and est.get(s.run_id)]
    one = [est[s.run_id] for s in plan.specs if s.slug.startswith("distill-every_2nd-kl-full") and est.get(s.run_id)]
    assert ens and one and ens[0].held_mb == pytest.approx(2 * one[0].held_mb) and one[0].held_mb > 500
    assert one[0].train_mb > one[0].held_mb
