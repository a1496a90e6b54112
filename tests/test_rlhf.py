"""RLHF (issue 22): the reward model's loss and learning, online RL (grpo, rloo) raising a reward over its
start, the KL to the start model, refusals before any run, and trained weights that reload and score the
same. All on the tiny random-init model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment

from harness.objectives.parts.reward_model import (as_reward_model, pair_rows, pairwise_loss, score_ids,
                                                   score_pairs)
from harness.objectives.parts.held_out_reward import mean_se, sample
from harness.objectives.parts.rl import kl_per_token
from harness.objectives.parts.rl_rewards import RuleReward, answer_chars, exact_answer

#: a separable toy preference: whatever the question, "good" is preferred to "bad"
TOY_PAIRS = [{"prompt": f"Question {i}: which word?", "chosen": "good", "rejected": "bad"} for i in range(64)]
SENTIMENT = {"name": "sentiment", "n_train": 32, "n_val": 16, "n_test": 0}
NO_LATENCY = {"latency": False}


def _tiny(device="cpu"):
    from harness import models
    from harness.config import ModelCfg

    return models.load(ModelCfg(name="tiny-smollm2"), device)


def _data_cfg():
    from harness.config import DataCfg

    return DataCfg(name="chatterbot")


# --- the reward model's loss ----------------------------------------------------------------------------


def test_reward_loss_is_minus_log_sigmoid_of_the_margin_on_a_hand_made_batch():
    r_c, r_r = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([0.0, -1.0, 0.5])
    expected = sum(math.log1p(math.exp(-(c - r))) for c, r in zip(r_c.tolist(), r_r.tolist())) / 3
    assert pairwise_loss(r_c, r_r).item() == pytest.approx(expected, rel=1e-6)
    assert pairwise_loss(r_r, r_c).item() > pairwise_loss(r_c, r_r).item()  # preferring the rejected costs more


def test_trl_reward_trainer_loss_equals_ours_on_the_reward_models_own_scores(tmp_path):
    """TRL's RewardTrainer reads the score where `score_ids` does (the last real token) and its loss is
    −log σ(r_c − r_r) of those scores."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    lm, tokenizer = _tiny()
    torch.manual_seed(0)
    model = as_reward_model(lm, tokenizer)
    records = [{"prompt": p["prompt"], "response": p["chosen"] + " x" * i, "rejected": p["rejected"]}
               for i, p in enumerate(TOY_PAIRS[:3])]  # chosen answers of different lengths: padding matters
    rows = pair_rows(tokenizer, records, _data_cfg(), 128)
    trainer = RewardTrainer(model=model, args=RewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                           bf16=False),
                            train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch)).item()
    r_c, r_r = score_pairs(model, rows, tokenizer.pad_token_id, 2, "cpu")
    assert not torch.equal(r_c, r_r)
    expected = sum(math.log1p(math.exp(-(c - r))) for c, r in zip(r_c.tolist(), r_r.tolist())) / len(rows)
    assert trl_loss == pytest.approx(expected, rel=1e-4)


# --- rule rewards ----------------------------------------------------------------------------------------


def test_rule_rewards_check_the_expected_answer():
    assert exact_answer("Positive. A fine film", "positive") == 1.0
    assert exact_answer("negative", "positive") == 0.0 and exact_answer("", "positive") == 0.0
    assert answer_chars("tive", "positive") == 1.0 and answer_chars("xyz", "positive") == 0.0
    assert RuleReward("exact_answer")(["p"] * 2, ["negative", "yes"], answer=["negative", "no"]) == [1.0, 0.0]


# --- the KL to the start model ---------------------------------------------------------------------------


def test_kl_to_the_start_model_is_zero_at_step_0_and_not_after_a_change():
    from contextlib import contextmanager

    from peft import LoraConfig, get_peft_model

    lm, tokenizer = _tiny()
    policy = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))

    @contextmanager
    def start_model():
        with policy.disable_adapter():
            yield policy

    prompts = ["Hello there", "What is the weather like?"]
    ids = sample(policy, tokenizer, prompts, 5, 1.0, 0, 2, "cpu")
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert kl_per_token(policy, start_model, prompt_ids, ids, "cpu") == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():  # move the adapter off its zero init: the same measure must now see a distance
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    assert kl_per_token(policy, start_model, prompt_ids, ids, "cpu") > 1e-4


def test_sampling_is_reproducible_by_seed_and_mean_se_is_the_standard_error():
    lm, tokenizer = _tiny()
    a = sample(lm, tokenizer, ["Hi", "Tell me a joke"], 4, 1.0, 7, 2, "cpu")
    assert a == sample(lm, tokenizer, ["Hi", "Tell me a joke"], 4, 1.0, 7, 2, "cpu")
    mean, se = mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))


# --- refused before any run ------------------------------------------------------------------------------


def _prefs_file(tmp_path) -> str:
    path = tmp_path / "toy_prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in TOY_PAIRS))
    return str(path)


@pytest.mark.parametrize("reward, says", [
    ("run:rm-nothing-s0", "no finished run `rm-nothing-s0`"),
    ("run:lora-r4-a8-n16-namechatterbot-s0", "is a `sft` run, not a `reward` run"),  # planned, not a reward model
    ("nonsense_rule", "a rule reward (answer_chars, exact_answer), not `nonsense_rule`"),
    (None, "needs a reward"),
])
def test_a_reward_that_is_missing_or_not_a_reward_run_is_refused_before_any_run(tmp_path, reward, says):
    rl = {"name": "grpo", **({"reward": reward} if reward else {})}
    path = write_experiment(tmp_path, "badrl", base=tiny_base(method={"name": "lora", "r": 4, "alpha": 8}),
                            grid={"stage": [{"data.name": "chatterbot"}, {"objective": rl}]})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "Traceback" not in res.err and says in res.err, res.err
    assert "objective.reward" in res.err and "badrl.yaml" in res.err
    assert not run_dirs(tmp_path / "results", "badrl")


@pytest.mark.parametrize("change, field, says", [
    ({"method": "prefix_tuning"}, "method", "cannot train and save it"),
    ({"method": "adapter"}, "method", "bottleneck adapters save only their modules"),
    ({"data": {"name": "chatterbot", "n_train": 16, "n_val": 8, "n_test": 0}}, "data.name", "has none"),
])
def test_reward_refuses_a_method_or_data_it_cannot_train_before_any_run(tmp_path, change, field, says):
    sections = {"data": {"name": "chatterbot_prefs", "n_train": 16, "n_val": 8, "n_test": 0}, **change}
    path = write_experiment(tmp_path, "badrm", grid={}, base=tiny_base(objective="reward", **sections))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "Traceback" not in res.err and says in res.err and field in res.err, res.err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("objective, says", [
    ({"name": "grpo", "reward": "exact_answer", "held_out_reward": "exact_answer"}, "is the training reward"),
    ({"name": "dpo", "held_out_reward": "exact_answer"}, "set `reward` too"),
    ({"name": "grpo", "reward": "exact_answer", "held_out_reward": "run:lora-r4-a8-n16-namechatterbot-s0"},
     "is a `sft` run, not a `reward` run"),
    ({"name": "rloo", "reward": "exact_answer", "held_out_reward": "run:rm-nothing-s0"}, "no finished run"),
])
def test_a_held_out_reward_that_cannot_check_the_reward_is_refused_before_any_run(tmp_path, objective, says):
    path = write_experiment(tmp_path, "badheld", base=tiny_base(method={"name": "lora", "r": 4, "alpha": 8}),
                            grid={"stage": [{"data.name": "chatterbot"},
                                            {"data.name": "chatterbot_prefs", "objective": objective}]})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "Traceback" not in res.err and says in res.err, res.err
    assert "objective.held_out_reward" in res.err and "badheld.yaml" in res.err
    assert not run_dirs(tmp_path / "results", "badheld")


def test_rl_refuses_groups_that_do_not_fill_a_step(tmp_path):
    path = write_experiment(tmp_path, "badgroups", grid={}, base=tiny_base(
        data=SENTIMENT, objective={"name": "rloo", "reward": "exact_answer", "num_generations": 3}))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "multiple of num_generations = 3" in res.err, res.err


# --- runs: the reward model learns, RL raises the reward, weights reload and score the same ---------------


HELD_OUT_RM = "run:rm-lora-r4-a8-n48-max_steps24-lr0.01-s1"


@pytest.fixture(scope="module")
def rlhf_sweep(tmp_path_factory):
    """reward model on the toy preference → GRPO (LoRA) against it; GRPO and RLOO (full) with a rule reward."""
    tmp = tmp_path_factory.mktemp("rlhf")
    toy = {"name": "prefs", "path": _prefs_file(tmp), "n_train": 48, "n_val": 16, "n_test": 0}
    rule = {"reward": "answer_chars", "num_generations": 4, "max_new_tokens": 4, "beta": 0.0}
    # a step size large enough that one update makes the above-group-mean samples' tokens dominate: on a
    # random-init model over a 49k vocabulary, small steps leave the sampling distribution nearly uniform
    rule_run = {**{f"data.{k}": v for k, v in SENTIMENT.items()}, "method": "full", "train.lr": 0.2,
                "train.max_steps": 8, "train.micro_batch": 16, "train.warmup_ratio": 0.0}
    grid = {"stage": [
        # latency on: a reward model writes no text, so the run must skip it rather than fail on it
        {"objective": {"name": "reward"}, "train.max_steps": 24, "train.lr": 1.0e-2, "eval.latency": True},
        # a second reward model (another seed: other pairs, another head) that RL never trains against
        {"objective": {"name": "reward"}, "train.max_steps": 24, "train.lr": 1.0e-2, "seed": 1},
        {"objective": {"name": "grpo", "reward": "run:rm-lora-r4-a8-n48-max_steps24-lr0.01-latency-s0",
                       "held_out_reward": HELD_OUT_RM, "max_new_tokens": 4, "beta": 0.1}},
        {**rule_run, "objective": {"name": "grpo", **rule}},
        {**rule_run, "objective": {"name": "rloo", **rule}},
        # offline preference tuning beside RL, scored under the same reward model on the same prompts
        {"objective": {"name": "dpo", "reward": "run:rm-lora-r4-a8-n48-max_steps24-lr0.01-latency-s0",
                       "held_out_reward": HELD_OUT_RM, "max_new_tokens": 4}},
    ]}
    path = write_experiment(tmp, "rlhf", base=tiny_base(data=toy, method={"name": "lora", "r": 4, "alpha": 8},
                                                        eval=NO_LATENCY), grid=grid)
    res = run_cli("run", str(path), "--results", str(tmp / "results"))
    assert res.code == 0, res.out + res.err
    results = {r["slug"]: r for r in (read_result(d) for d in run_dirs(tmp / "results", "rlhf"))}
    for result in results.values():
        assert result["status"] == "ok", result["error"]
    return tmp / "results", results


def _one(results: dict, prefix: str) -> dict:
    (slug,) = [s for s in results if s.startswith(prefix)]
    return results[slug]


def test_a_reward_model_learns_a_separable_toy_preference(rlhf_sweep):
    _, results = rlhf_sweep
    m = _one(results, "rm-lora-r4-a8-n48-max_steps24-lr0.01-latency")["metrics"]
    assert m["reward_accuracy"] >= 0.9 and m["reward_margin"] > 0, m
    assert m["reward_accuracy_train"] >= 0.9 and m["reward_pairs"] == 16
    assert m["eval_loss"] is None and m["infer_decode_ms_per_token"] is None  # no text: no token loss, no latency
    assert m["merge_s"] is not None and m["peak_mem_eval_mb"] is not None  # merged, and its evaluation measured
    assert m["adapter_bytes"] > 0


@pytest.mark.parametrize("objective", ["grpo", "rloo"])
def test_rl_with_a_rule_reward_raises_the_mean_reward_over_the_start_model(rlhf_sweep, objective):
    """The rule is `answer_chars` (share of the completion's letters in the expected answer), a toy reward the
    tiny random model provably can climb: its random samples differ in it (so the group advantages are not
    zero), and with a large step (lr 0.2, full fine-tuning) each update moves the logits of the tokens of
    above-mean samples by several nats, so the next samples come mostly from them. `exact_answer` gives it
    no signal: it never writes `positive`/`negative` exactly. (Measured: 0.459 → 0.625 ± 0.03 for GRPO.)"""
    _, results = rlhf_sweep
    m = _one(results, f"{objective}-answer_chars-full")["metrics"]
    assert m["rl_reward_mean"] > m["rl_reward_mean_before"] + 0.05, m
    assert m["gen_tokens_per_s"] > 0 and 0 < m["gen_time_share"] < 1 and 0 < m["gen_len_mean"] <= 4
    assert m["kl_to_ref"] is None  # full fine-tuning with beta 0: TRL loads no reference, none is claimed
    assert math.isfinite(m["eval_loss"])


def test_grpo_against_a_reward_run_measures_its_kl_to_the_start(rlhf_sweep):
    _, results = rlhf_sweep
    m = _one(results, "grpo-rm-lora")["metrics"]
    for key in ("rl_reward_mean", "rl_reward_mean_before", "rl_reward_se", "kl_to_ref", "eval_loss"):
        assert m[key] is not None and math.isfinite(m[key]), (key, m)
    assert m["kl_to_ref"] >= 0


def test_dpo_scored_under_a_reward_run_sits_beside_rl(rlhf_sweep):
    _, results = rlhf_sweep
    dpo, grpo = _one(results, "dpo-lora")["metrics"], _one(results, "grpo-rm-lora")["metrics"]
    for key in ("rl_reward_mean", "rl_reward_mean_before", "rl_reward_se", "pref_accuracy", "kl_to_ref"):
        assert dpo[key] is not None and math.isfinite(dpo[key]), (key, dpo)
    # the same start (the base), the same held-out prompts and seed, the same frozen reward model
    assert dpo["rl_reward_mean_before"] == pytest.approx(grpo["rl_reward_mean_before"], abs=1e-5)
    # that scoring (and the pairs') is the objective's phase, not the run's fixed cost
    assert dpo["objective_s"] > 0 and grpo["objective_s"] > 0


def test_a_held_out_reward_model_scores_the_same_samples(rlhf_sweep):
    _, results = rlhf_sweep
    dpo, grpo = _one(results, "dpo-lora")["metrics"], _one(results, "grpo-rm-lora")["metrics"]
    for m in (dpo, grpo):
        for key in ("heldout_reward_mean", "heldout_reward_mean_before", "heldout_reward_se",
                    "heldout_reward_before_se"):
            assert m[key] is not None and math.isfinite(m[key]), (key, m)
        # another model: its scores of the same samples are not the training reward's
        assert m["heldout_reward_mean_before"] != pytest.approx(m["rl_reward_mean_before"], abs=1e-6)
    # the same start samples (same seed, prompts and start model) under the same held-out model
    assert dpo["heldout_reward_mean_before"] == pytest.approx(grpo["heldout_reward_mean_before"], abs=1e-5)
    assert _one(results, "grpo-answer_chars-full")["metrics"].get("heldout_reward_mean") is None


def test_a_preference_run_without_a_reward_keeps_its_spec_and_id():
    from harness.config import build_run_config
    from harness.grid import spec_hash

    base = tiny_base(data={"name": "chatterbot_prefs", "n_train": 16, "n_val": 8, "n_test": 0},
                     objective={"name": "dpo", "beta": 0.1})
    spec = build_run_config(base, file="t.yaml").as_dict()
    assert spec["objective"] == {"name": "dpo", "start": None, "beta": 0.1, "loss_type": "sigmoid"}
    scored = build_run_config({**base, "objective": {"name": "dpo", "reward": "exact_answer"}}, file="t.yaml")
    assert scored.as_dict()["objective"]["reward"] == "exact_answer"
    # RL runs recorded before `held_out_reward` keep theirs too
    rl = build_run_config({**base, "objective": {"name": "grpo", "reward": "exact_answer"}}, file="t.yaml")
    assert "held_out_reward" not in rl.as_dict()["objective"]
    checked = build_run_config({**base, "objective": {"name": "grpo", "reward": "exact_answer",
                                                      "held_out_reward": "answer_chars"}}, file="t.yaml")
    assert checked.as_dict()["objective"]["held_out_reward"] == "answer_chars"
    assert spec_hash(checked) != spec_hash(rl)


def test_reward_and_policy_weights_save_reload_and_score_the_same(rlhf_sweep):
    from harness.data import DATASETS
    from harness.config import RUN_KEYS, build_run_config
    from harness.data.base import split
    from harness.data.tokenize import encode_all, make_collator
    from harness.evaluate import example_losses
    from harness.objectives.parts.reward_model import load_reward_run
    from harness.runrefs import RunRefs

    root, results = rlhf_sweep
    refs = RunRefs(root, "rlhf")
    rm = _one(results, "rm-lora-r4-a8-n48-max_steps24-lr0.01-latency")
    model, tokenizer = load_reward_run(refs, f"run:{rm['slug']}", "cpu")
    spec = build_run_config({k: v for k, v in rm["spec"].items() if k in RUN_KEYS}, file="t")
    splits = split(DATASETS.get(spec.data.name)().records(spec.data), spec.data)
    held_out = pair_rows(tokenizer, splits.val, spec.data, spec.train.seq_len)
    r_c, r_r = score_pairs(model, held_out, tokenizer.pad_token_id, 4, "cpu")
    assert (r_c - r_r).mean().item() == pytest.approx(rm["metrics"]["reward_margin"], rel=1e-4, abs=1e-5)
    assert (r_c > r_r).float().mean().item() == rm["metrics"]["reward_accuracy"]
    alone = score_ids(model, [held_out[0]["chosen_ids"]], tokenizer.pad_token_id, 1, "cpu")  # no padding around it
    assert alone.item() == pytest.approx(r_c[0].item(), rel=1e-4, abs=1e-5)

    for prefix in ("grpo-rm-lora",):  # the LoRA policy against the reward run: its adapter, reloaded and merged
        run = _one(results, prefix)
        policy, tok = refs.load_model(f"run:{run['slug']}", "cpu")
        cfg = build_run_config({k: v for k, v in run["spec"].items() if k in RUN_KEYS}, file="t")
        val = split(DATASETS.get(cfg.data.name)().records(cfg.data), cfg.data).val
        scored = example_losses(policy, encode_all(tok, val, cfg.data, cfg.train.seq_len),
                                make_collator(tok, cfg.train.packing), cfg.eval.batch_size, "cpu")
        assert scored.loss == pytest.approx(run["metrics"]["eval_loss"], rel=1e-4), prefix
