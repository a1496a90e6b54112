"""The report's RLHF part: reward models with their Wilson interval, RL beside DPO from one start, the held-out
reward beside the training reward, and the over-optimisation finding."""

from __future__ import annotations

from harness.report.build import build
from harness.report.render import to_markdown
from report_store import write_run

START = "run:lora-n100-s0"


def _policy(root, name, method, before, after, held=None, **extra):
    metrics = {"rl_reward_mean_before": before, "rl_reward_mean": after, "rl_reward_before_se": 0.05,
               "rl_reward_se": 0.05, "kl_to_ref": 0.02, **extra}
    if held is not None:
        metrics.update(heldout_reward_mean_before=held[0], heldout_reward_mean=held[1],
                       heldout_reward_before_se=0.04, heldout_reward_se=0.04)
    objective = {"name": name, "start": START, "reward": "run:rm-lora-n100-s0",
                 **({"held_out_reward": "run:rm-lora-n100-s1"} if held else {})}
    return write_run(root, "rl", method=method, objective=objective, extra=metrics,
                     slug=f"{name}-{method}", eval_loss=2.5)


def _store(root):
    write_run(root, "rl", method="lora", eval_loss=2.4)  # the SFT start
    write_run(root, "rl", method="lora", objective={"name": "reward", "start": START}, slug="rm-lora-n100-s0",
              extra={"reward_accuracy": 0.75, "reward_accuracy_train": 0.9, "reward_margin": 0.3,
                     "reward_pairs": 24.0})
    # standard errors 0.05 (training reward) and 0.04 (held-out): a change is real beyond ± 0.139 / ± 0.111.
    # GRPO-LoRA exploits the reward: it rises, the held-out one falls; GRPO-full's held-out reward rises too;
    # RLOO's training reward moves within its noise; GRPO-QLoRA's held-out reward stays within its noise
    rollouts = {"gen_time_share": 0.3, "gen_tokens_per_s": 40.0, "gen_len_mean": 8.0}
    _policy(root, "grpo", "lora", 0.20, 0.60, held=(0.30, 0.05), **rollouts)
    _policy(root, "grpo", "full", 0.20, 0.40, held=(0.10, 0.35), **rollouts)
    _policy(root, "rloo", "lora", 0.20, 0.25, held=(0.10, 0.40), **rollouts)
    _policy(root, "grpo", "qlora", 0.20, 0.50, held=(0.10, 0.15), **rollouts)
    _policy(root, "dpo", "lora", 0.20, 0.25, held=(0.10, 0.12), pref_accuracy=0.7)


def test_rlhf_part_shows_the_held_out_reward_and_names_over_optimisation(tmp_path):
    _store(tmp_path)
    page = to_markdown(build("rl", tmp_path))
    part = page[page.index("## RLHF"):]
    assert "75.0 [" in part  # the reward model's accuracy with its Wilson interval
    header = next(line for line in part.splitlines() if line.startswith("| configuration | objective"))
    assert "held-out reward: start → after (± 95%)" in header and "Δ held-out" in header
    grpo_lora = next(line for line in part.splitlines() if line.startswith("| grpo-lora"))
    assert "0.200 ± 0.098 → 0.600 ± 0.098" in grpo_lora and "0.300 ± 0.078 → 0.050 ± 0.078" in grpo_lora
    assert "+0.400" in grpo_lora and "-0.250" in grpo_lora
    verdicts = {line.split(" (")[0].lstrip("- "): line for line in part.splitlines() if "held-out reward -" in line
                or "held-out reward +" in line}
    assert "training reward +0.400 ± 0.139, held-out reward -0.250 ± 0.111 (95%) — over-optimisation" in \
        verdicts["grpo lora"]
    assert "the gain transferred" in verdicts["grpo full"]
    assert "cannot be told from none" in verdicts["rloo lora"]  # +0.05 is within ± 0.139
    assert "did not move beyond its noise while the training reward rose" in verdicts["grpo qlora"]
    assert "Held-out reward: `run:rm-lora-n100-s1`" in part
    assert "| dpo-lora" in part  # offline tuning from the same start sits beside RL


def test_without_a_held_out_reward_the_table_has_no_such_column(tmp_path):
    write_run(tmp_path, "rl", method="lora", eval_loss=2.4)
    _policy(tmp_path, "grpo", "lora", 0.20, 0.60, gen_time_share=0.3, gen_tokens_per_s=40.0, gen_len_mean=8.0)
    part = to_markdown(build("rl", tmp_path))
    part = part[part.index("## RLHF"):]
    assert "held-out reward" not in part and "over-optimisation" not in part.replace("may be over-optimisation", "")
    assert "0.200 ± 0.098 → 0.600 ± 0.098" in part
