"""Objective `orpo`: the loss as the paper defines it, pairs learnt without a reference model, and a run
through the CLI with its figures."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment

from harness.objectives.orpo import log_odds, orpo_loss

PREFS = {"name": "chatterbot_prefs", "n_train": 16, "n_val": 8, "n_test": 0}


def test_log_odds_is_log_p_over_one_minus_p():
    p = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(log_odds(p.log()), torch.log(p / (1 - p)), atol=1e-6)
    assert torch.isfinite(log_odds(torch.tensor([0.0])))  # P = 1 is clamped, not inf


def _pair_batch(chosen_logit: float, rejected_logit: float):
    """Two rows over a 2-token vocabulary: the chosen answer is token 0 in row 0, the rejected one
    token 0 in row 1; each row's logits favour token 0 by the given margin."""
    logits = torch.zeros(2, 3, 2)
    logits[0, :, 0], logits[1, :, 0] = chosen_logit, rejected_logit
    labels = torch.tensor([[-100, 0, 0], [-100, 0, 0]])
    return logits, labels


def test_orpo_loss_is_sft_plus_lambda_times_the_odds_ratio_term():
    logits, labels = _pair_batch(2.0, -1.0)
    loss, figures = orpo_loss(logits, labels, strength=0.5)
    p_w, p_l = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(-1.0))  # per-token P of token 0
    sft = -p_w.log()
    ratio = torch.log(p_w / (1 - p_w)) - torch.log(p_l / (1 - p_l))
    expected = sft + 0.5 * -torch.nn.functional.logsigmoid(ratio)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert figures["orpo_sft_loss"] == pytest.approx(sft.item(), rel=1e-5)
    # preferring the rejected answer costs more than preferring the chosen one
    worse, _ = orpo_loss(*_pair_batch(-1.0, 2.0), strength=0.5)
    assert worse.item() > loss.item()


def test_orpo_with_lora_runs_through_the_cli_without_a_reference_model(tmp_path):
    path = write_experiment(tmp_path, "orpo", grid={}, base=tiny_base(
        data=PREFS, objective={"name": "orpo", "beta": 0.5},
        train={"max_steps": 8, "lr": 5.0e-3, "seq_len": 64, "micro_batch": 4}))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 0, res.out + res.err
    (result,) = [read_result(d) for d in run_dirs(tmp_path / "results", "orpo")]
    assert result["status"] == "ok", result["error"]
    assert result["slug"].startswith("orpo-lora")
    m = result["metrics"]
    assert 0 <= m["pref_accuracy"] <= 1 and 0 <= m["pref_accuracy_train"] <= 1
    assert math.isfinite(m["reward_margin"]) and math.isfinite(m["eval_loss"])
    assert m["orpo_odds_ratio_loss"] > 0 and m["orpo_sft_loss"] > 0
    # no reference model in training; the KL to the start is measured after it with the adapter off
    assert m["kl_to_ref"] > 0 and math.isfinite(m["kl_to_ref"])


def test_mean_kl_is_zero_for_the_same_model_and_positive_otherwise():
    import torch

    from harness.objectives.parts.preference import mean_kl

    p = [torch.log_softmax(torch.randn(5, 11, generator=torch.Generator().manual_seed(0)), -1)]
    q = [torch.log_softmax(torch.randn(5, 11, generator=torch.Generator().manual_seed(1)), -1)]
    assert mean_kl(p, p) == pytest.approx(0.0, abs=1e-7) and mean_kl(p, q) > 0
    expected = float(torch.nn.functional.kl_div(q[0], p[0], log_target=True, reduction="sum")) / 5
    assert mean_kl(p, q) == pytest.approx(expected, rel=1e-5) and mean_kl([], []) is None


def test_orpo_refuses_a_method_it_cannot_train_on_pairs(tmp_path):
    path = write_experiment(tmp_path, "badorpo", grid={}, base=tiny_base(
        method="prefix_tuning", data=PREFS, objective="orpo"))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "Traceback" not in res.err and "cannot wrap method `prefix_tuning`" in res.err, res.err
    assert not (tmp_path / "results").exists()
