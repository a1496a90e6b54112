"""Preference objectives (issue 8): the pair data, bad input refused before any run, a DPO trainer
with LoRA that learns its pairs without a second model in memory, and SFT → DPO/KTO through the store."""

from __future__ import annotations

import math

import pytest
from conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment

from harness.config import DataCfg, build_run_config
from harness.data import DATASETS
from harness.data.base import split

PREFS = {"name": "chatterbot_prefs", "n_train": 16, "n_val": 8, "n_test": 0}


def test_chatterbot_pairs_stay_inside_their_split():
    cfg = DataCfg(name="chatterbot_prefs", n_val=32, n_test=16)
    records = DATASETS.get("chatterbot_prefs")().records(cfg)
    parts = split(records, cfg)
    assert {r["prompt"] for r in parts.val}.isdisjoint(r["prompt"] for r in parts.train_pool)
    for part in (parts.val, parts.test, parts.train_pool):
        answers = {r["response"] for r in part}
        assert all(r["rejected"] in answers and r["rejected"].strip() != r["response"].strip() for r in part)
    # same topic wherever the topic has another question in the split
    same_topic = sum(any(o["response"] == r["rejected"] and o["topic"] == r["topic"] for o in parts.train_pool)
                     for r in parts.train_pool)
    assert same_topic > 0.95 * len(parts.train_pool)
    # the pairs split exactly as chatterbot does: eval ppl compares with SFT runs on the same questions
    plain = split(DATASETS.get("chatterbot")().records(cfg), cfg)
    assert [r["prompt"] for r in plain.val] == [r["prompt"] for r in parts.val]


def test_the_answer_trl_sees_ends_with_one_end_of_turn():
    from harness import models
    from harness.objectives.parts.preference import completion_text

    _, tokenizer = models.load(build_run_config({"model": "tiny-smollm2"}, file="t").model, "cpu")
    text = completion_text(tokenizer, "hi?", "hello", DataCfg())
    assert text.startswith("hello") and text.endswith(tokenizer.eos_token) and text.count(tokenizer.eos_token) == 1


@pytest.mark.parametrize("base, needle", [
    ({"method": "prefix_tuning", "objective": "dpo", "data": PREFS}, "cannot wrap method `prefix_tuning`"),
    ({"objective": "dpo"}, "`chatterbot` has none"),
    ({"objective": {"name": "dpo", "start": "run:lora-r4-nope-s0"}, "data": PREFS}, "no finished run `lora-r4-nope-s0`"),
    ({"objective": {"name": "dpo", "start": "lora-r4"}, "data": PREFS}, "`start` names a finished run"),
    ({"objective": {"name": "dpo", "start": "run:dpo-lora-r4-a8-n16-s1"}, "data": PREFS},
     "Did you mean `run:dpo-lora-r4-a8-n16-s0`?"),
    ({"objective": {"name": "dpo", "beta": 0}, "data": PREFS}, "objective.beta"),
    ({"objective": {"name": "kto", "loss_type": "ipo"}, "data": PREFS}, "applies to objective `dpo`, not `kto`"),
    ({"objective": "kto", "data": PREFS, "train": {"micro_batch": 1}}, "micro_batch >= 2"),
])
def test_bad_preference_input_is_one_clear_message_before_any_run(tmp_path, base, needle):
    path = write_experiment(tmp_path, "badpref", base=tiny_base(**base), grid={})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "Traceback" not in res.err, res.err
    assert str(path) in res.err and needle in res.err, res.err
    assert not (tmp_path / "results").exists()


def test_a_pref_file_without_rejected_is_refused(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "chosen": "a{i}"}}\n' for i in range(40)))
    path = write_experiment(tmp_path, "nofield", grid={}, base=tiny_base(
        objective="dpo", data={"name": "prefs", "path": str(data), "n_train": 8, "n_val": 4, "n_test": 0}))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "data.path" in res.err and "no field `rejected`" in res.err, res.err


def test_dpo_with_lora_learns_its_pairs_against_the_base_without_a_second_model(tmp_path):
    """The policy's own adapter-free base is the reference: parameters in memory are the base plus
    two small adapters (TRL's frozen `ref` copy), not two models."""
    from harness import models
    from harness.data.tokenize import encode_all, make_collator
    from harness.measure import count_params
    from harness.objectives.parts import preference
    from harness.context import RunContext
    from harness.train import build_trainer, training_args

    spec = build_run_config({**tiny_base(objective="dpo", data=PREFS), "train": {
        "max_steps": 12, "micro_batch": 4, "lr": 5.0e-3, "seq_len": 64, "packing": False}}, file="t")
    base, tokenizer = models.load(spec.model, "cpu")
    base_params = count_params(base)[1]
    ctx = RunContext(spec=spec, run_dir=tmp_path, device="cpu", total_steps=12)
    model = spec.method.build().apply(base, ctx)
    adapter = count_params(model)[0]
    objective = spec.objective.build()
    train, val = objective.records(ctx, {})
    trainer_cls, args_cls, options, dataset = objective.trl_parts(tokenizer, train, spec.data, 64)
    args = training_args(spec.train, out_dir=tmp_path, seed=0, device="cpu", packing=False, args_cls=args_cls,
                         bf16=False, gradient_checkpointing=False, **options)
    trainer = build_trainer(model, args, dataset, None, callbacks=[], trainer_cls=trainer_cls, processing_class=tokenizer)

    assert trainer.ref_model is None
    held = {id(p): p.numel() for m in (trainer.model, trainer.ref_model) if m is not None for p in m.parameters()}
    assert sum(held.values()) == base_params + 2 * adapter < 1.1 * base_params

    before = preference.figures(trainer, tokenizer, train, val, spec, "cpu")
    assert before["pref_accuracy_train"] == 0.0 and before["kl_to_ref"] == pytest.approx(0.0, abs=1e-6)
    trainer.train()
    after = preference.figures(trainer, tokenizer, train, val, spec, "cpu")
    assert after["pref_accuracy_train"] >= 0.75, after
    assert after["kl_to_ref"] > 0 and math.isfinite(after["reward_margin"])
    preference.drop_reference(trainer.model)
    assert list(trainer.model.peft_config) == ["default"]
    encoded = encode_all(tokenizer, val, spec.data, 64)
    assert make_collator(tokenizer, packing=False)(encoded[:2])["input_ids"].shape[0] == 2


def test_sft_then_dpo_and_kto_chain_through_the_store(tmp_path):
    """One grid: the base, an SFT run (full), then DPO (LoRA, full) starting from its merged weights, and KTO."""
    sft_slug = "full-n16-namechatterbot-max_steps24-save_weightsall-s0"
    start = f"run:{sft_slug}"
    path = write_experiment(tmp_path, "chain", base=tiny_base(data=PREFS, train={"max_steps": 4}), grid={"stage": [
        {"method": "none"},
        {"method": "full", "data.name": "chatterbot", "train.max_steps": 24, "train.save_weights": "all"},
        {"method": "lora", "objective": {"name": "dpo", "start": start}},
        {"method": "full", "train.lr": 1.0e-4, "objective": {"name": "dpo", "start": start}},
        {"method": "lora", "objective": {"name": "kto", "beta": 0.2}},
    ]})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 0, res.out + res.err
    results = {read_result(d)["slug"]: read_result(d) for d in run_dirs(tmp_path / "results", "chain")}
    assert sorted(results) == sorted(["dpo-full-n16-lr0.0001-s0", "dpo-lora-r4-a8-n16-s0",
                                      "kto-lora-r4-a8-n16-s0", sft_slug, "none-n16-s0"])
    assert all(r["status"] == "ok" for r in results.values()), {k: r["error"] for k, r in results.items()}
    sft, base = results[sft_slug], results["none-n16-s0"]
    for slug in ("dpo-lora-r4-a8-n16-s0", "dpo-full-n16-lr0.0001-s0", "kto-lora-r4-a8-n16-s0"):
        m = results[slug]["metrics"]
        assert 0 <= m["pref_accuracy"] <= 1 and m["kl_to_ref"] >= 0 and math.isfinite(m["eval_ppl"]), m
        assert sft["finished_at"] <= results[slug]["started_at"] or slug.startswith("kto")
    # a DPO run from the SFT run starts where SFT ended: its eval loss is near the SFT run's, far from the base's
    gap = base["metrics"]["eval_loss"] - sft["metrics"]["eval_loss"]
    assert gap > 0.5, (base["metrics"]["eval_loss"], sft["metrics"]["eval_loss"])
    for slug in ("dpo-lora-r4-a8-n16-s0", "dpo-full-n16-lr0.0001-s0"):
        assert results[slug]["spec"]["objective"]["start"] == start
        assert abs(results[slug]["metrics"]["eval_loss"] - sft["metrics"]["eval_loss"]) < 0.25 * gap, slug
    # `ftbench eval` and later stages rebuild a DPO run on its start model, not on the raw base
    from harness.config import RUN_KEYS
    from harness.runrefs import base_model_cfg

    dpo = results["dpo-lora-r4-a8-n16-s0"]
    config = build_run_config({k: v for k, v in dpo["spec"].items() if k in RUN_KEYS}, file="t")
    base_cfg, why = base_model_cfg(config, tmp_path / "results", "chain")
    assert why is None and base_cfg.name.endswith(f"run-{sft['run_id']}-" + "".join(
        ch for ch in sft["finished_at"] if ch.isdigit()))
