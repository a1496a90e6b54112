"""Preference: held-out preference accuracy, reward margin and KL to the reference per preference-tuned
configuration."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.report import figures
from harness.report.columns import column, missing, text
from harness.report.context import ReportContext
from harness.report.document import Cell, Section, Table, metric_cell, number_cell, sortable
from harness.report.findings import seed_significance
from harness.report.frame import COSTS, PREFERENCE, QUALITY, Metric, best_rows, ok_runs
from harness.report.kinds import objective_of, runs_for
from harness.report.objectives import objective_summary, spec_cell
from harness.report.sections.base import register

__all__ = ["PREFERENCE_COLUMNS", "objective_labels", "preference_table", "preference_findings", "preference_section",
           "RLHF_OBJECTIVES", "reward_model_table", "policy_table", "rlhf_findings", "rlhf_section"]

PPL = QUALITY[1]
ACCURACY, ACCURACY_TRAIN, MARGIN, KL_REF = PREFERENCE
PREFERENCE_COLUMNS = [ACCURACY, ACCURACY_TRAIN, MARGIN, KL_REF, PPL,
                      *(m for m in COSTS if m.key in ("trainable_params", "peak_mem_train_mb"))]


def preference_table(summary: pd.DataFrame) -> Table:
    """One row per configuration of `preference_section`'s summary (with its `objective` labels)."""
    best = {m.key: best_rows(summary, m) for m in PREFERENCE_COLUMNS}
    start = "objective.start" in summary and summary["objective.start"].notna().any()
    columns = ["configuration", "objective", "method", "β", *(["started from"] if start else []), "n",
               *(m.label for m in PREFERENCE_COLUMNS)]
    rows = []
    for i, row in summary.iterrows():
        rows.append([Cell(row["config"], row["config"]), Cell(row["objective"], row["objective"]),
                     spec_cell(row, "method.name"), spec_cell(row, "objective.beta"), *([spec_cell(row, "objective.start")] if start else []),
                     Cell(str(row["n_seeds"]), row["n_seeds"]),
                     *(metric_cell(row, m, i in best[m.key]) for m in PREFERENCE_COLUMNS)])
    return Table("One row per preference-tuned configuration: mean ± 95% CI half-width over seeds", columns, rows)


def objective_labels(summary: pd.DataFrame) -> list[str]:
    """Per row: "dpo", or "dpo (ipo)" for another of TRL's losses than the paper's sigmoid."""
    return [name + ("" if missing(loss) or loss == "sigmoid" else f" ({loss})")
            for name, loss in zip(objective_of(summary), column(summary, "objective.loss_type"))]


def preference_findings(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The best held-out accuracy and what it cost in distance from the reference."""
    rows = summary[np.isfinite(summary[f"{ACCURACY.key}_mean"])]
    if rows.empty:
        return ["No preference run measured its held-out accuracy."]
    top = rows.iloc[0]  # sorted by accuracy, best first
    line = (f"Highest preference accuracy: {top['group']} ({top['config']}), {_accuracy(top)} of held-out pairs "
            f"ranked right (chance: 50%) at a KL to the reference of {KL_REF.format(top[f'{KL_REF.key}_mean'])}")
    if len(rows) > 1:
        other = rows.iloc[1]
        seeds = seed_significance(runs, top["config"], other["config"], ACCURACY.key)
        line += f"; next {other['group']} ({other['config']}) at {_accuracy(other)}, {seeds}"
    out = [line + "."]
    kl = rows[np.isfinite(rows[f"{KL_REF.key}_mean"])]
    if len(kl) > 1:
        near = kl.loc[kl[f"{KL_REF.key}_mean"].idxmin()]
        if near["config"] != top["config"]:
            out.append(f"{near['group']} ({near['config']}) stayed closest to its reference (KL "
                       f"{KL_REF.format(near[f'{KL_REF.key}_mean'])}) at {_accuracy(near)} accuracy.")
    return out


def _accuracy(row) -> str:
    return f"{ACCURACY.format(row[f'{ACCURACY.key}_mean'])}%"


def preference_section(df: pd.DataFrame) -> Section | None:
    """Held-out preference accuracy, reward margin and KL to the reference per configuration; None without such runs."""
    runs = runs_for(ok_runs(df), "preference")
    runs = runs[~objective_of(runs).isin(RLHF_OBJECTIVES)]  # reward models and RL policies: `rlhf_section`
    if runs.empty:
        return None
    summary = objective_summary(runs, PREFERENCE_COLUMNS, ACCURACY)
    summary["objective"] = objective_labels(summary)
    summary["group"] = [f"{row['objective']} {text(row.get('method.name'))}".strip()
                        for _, row in summary.iterrows()]
    section = Section("Preference", paragraphs=[(
        "Policies tuned on chosen/rejected pairs. Preference accuracy is the share of pairs whose chosen answer gets "
        "the higher implicit reward (held out, and on the training pairs); the reward margin is its mean lead; KL to "
        "ref is the policy's per-token KL to its reference model. ORPO has no reference model: its accuracy and "
        "margin compare the answers' log-odds, and its KL to ref is empty.")])
    section.bullets = preference_findings(runs, summary)
    section.figures.append(("preference.png", figures.preference(summary, summary["group"], ACCURACY, KL_REF),
                            ("held-out preference accuracy against KL to the reference, per objective and method "
                             "(dashed: chance)")))
    section.tables.append(preference_table(summary))
    return section


# --- RLHF: SFT → reward model → online RL, beside DPO/ORPO from the same start ----------------------------------

#: the objectives of RLHF's second and third steps (issue 22)
RLHF_OBJECTIVES = ("reward", "grpo", "rloo")
REWARD_MODEL = [Metric("reward_accuracy", "reward accuracy %", "{:.1f}", 100, noun="reward-model accuracy"),
                Metric("reward_accuracy_train", "reward accuracy % (train)", "{:.1f}", 100),
                Metric("reward_margin", "reward margin", "{:.3f}"),
                Metric("reward_pairs", "held-out pairs", "{:.0f}")]
RL = [Metric("rl_reward_mean_before", "reward at start", "{:.3f}"), Metric("rl_reward_mean", "reward", "{:.3f}"),
      Metric("rl_reward_before_se", "reward at start SE", "{:.3f}"), Metric("rl_reward_se", "reward SE", "{:.3f}"),
      Metric("gen_len_mean", "completion tokens", "{:.1f}"), Metric("gen_tokens_per_s", "rollout tokens/s", "{:.1f}"),
      Metric("gen_time_share", "rollout share %", "{:.0f}", 100)]
#: the same samples under `objective.held_out_reward`, a reward never trained against
HELD_OUT = [Metric("heldout_reward_mean_before", "held-out reward at start", "{:.3f}"),
            Metric("heldout_reward_mean", "held-out reward", "{:.3f}"),
            Metric("heldout_reward_before_se", "held-out reward at start SE", "{:.3f}"),
            Metric("heldout_reward_se", "held-out reward SE", "{:.3f}")]
_COST = {m.key: m for m in COSTS}
POLICY_COLUMNS = [*RL, *HELD_OUT, KL_REF, ACCURACY, QUALITY[0], _COST["train_s"], _COST["peak_mem_train_mb"],
                  _COST["trainable_params"]]
Z95 = 1.959964


def _interval(row, mean: Metric, se: Metric) -> str:
    """"m ± h": over seeds, the seed t-interval; for one seed, 1.96 × the run's standard error over prompts."""
    m = row[f"{mean.key}_mean"]
    if not np.isfinite(m):
        return "–"
    if row["n_seeds"] > 1 and np.isfinite(row[f"{mean.key}_ci_high"]):
        half = row[f"{mean.key}_ci_high"] - m
    else:
        half = Z95 * row[f"{se.key}_mean"] if np.isfinite(row[f"{se.key}_mean"]) else math.nan
    return f"{mean.format(m)}" + (f" ± {mean.format(half)}" if np.isfinite(half) else "")


def _wilson(share: float, n: float) -> tuple[float, float]:
    """The 95% Wilson score interval of a share of n trials."""
    if not (np.isfinite(share) and np.isfinite(n)) or n <= 0:
        return math.nan, math.nan
    centre = (share + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(share * (1 - share) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return centre - half, centre + half


def reward_model_table(summary: pd.DataFrame) -> Table:
    """One row per reward-model configuration: held-out accuracy with its 95% interval, margin, cost."""
    accuracy, train, margin, pairs = REWARD_MODEL
    rows = []
    for _, row in summary.iterrows():
        low, high = _wilson(row[f"{accuracy.key}_mean"], row[f"{pairs.key}_mean"])
        shown = accuracy.format(row[f"{accuracy.key}_mean"])
        if np.isfinite(low):
            shown += f" [{accuracy.format(low)}, {accuracy.format(high)}]"
        rows.append([Cell(row["config"], row["config"]), spec_cell(row, "method.name"),
                     spec_cell(row, "objective.start"), Cell(shown, sortable(row[f"{accuracy.key}_mean"])),
                     metric_cell(row, train, False), metric_cell(row, margin, False), metric_cell(row, pairs, False),
                     metric_cell(row, _COST["train_s"], False), metric_cell(row, _COST["peak_mem_train_mb"], False)])
    return Table("Reward models: share of held-out pairs scored chosen > rejected, with its 95% Wilson interval "
                 "(chance 50%)", ["configuration", "method", "started from", accuracy.label, train.label,
                                  margin.label, pairs.label, _COST["train_s"].label, _COST["peak_mem_train_mb"].label],
                 rows)


def policy_table(summary: pd.DataFrame) -> Table:
    """One row per policy configuration (RL and offline preference tuning side by side)."""
    length, speed, share = RL[4:]
    held = np.isfinite(summary[f"{HELD_OUT[1].key}_mean"]).any()
    rows = []
    for _, row in summary.iterrows():
        rows.append([Cell(row["config"], row["config"]), Cell(row["objective"], row["objective"]),
                     spec_cell(row, "method.name"), spec_cell(row, "objective.beta"),
                     *_change_cells(row, *RL[:4]), *(_change_cells(row, *HELD_OUT) if held else ()),
                     *(metric_cell(row, m, False) for m in (KL_REF, ACCURACY, QUALITY[0], _COST["train_s"],
                                                            _COST["peak_mem_train_mb"], _COST["trainable_params"],
                                                            share, speed, length))])
    columns = ["configuration", "objective", "method", "β", "reward: start → after (± 95%)", "Δ reward",
               *(["held-out reward: start → after (± 95%)", "Δ held-out"] if held else []),
               KL_REF.label + " (start)", ACCURACY.label, "eval loss (held-out chosen)",
               *(m.label for m in (_COST["train_s"], _COST["peak_mem_train_mb"], _COST["trainable_params"], share,
                                   speed, length))]
    return Table("Policies from the same SFT start: online RL (reward under the training reward on held-out prompts, "
                 "start model → trained policy) beside offline preference tuning (its preference accuracy); "
                 + ("the held-out reward scores the same samples under a reward model no run trains against; "
                    if held else "") + "KL is to the start model, eval loss on the held-out chosen answers",
                 columns, rows)


def _change_cells(row, before: Metric, after: Metric, before_se: Metric, after_se: Metric) -> list[Cell]:
    """"start ± h → after ± h" (sorted by after) and the change."""
    return [Cell(f"{_interval(row, before, before_se)} → {_interval(row, after, after_se)}",
                 sortable(row[f"{after.key}_mean"])),
            number_cell(row[f"{after.key}_mean"] - row[f"{before.key}_mean"], "{:+.3f}")]


def rlhf_findings(models: pd.DataFrame, policies: pd.DataFrame) -> list[str]:
    """How far to trust the reward, what RL gained, and at what distance and cost."""
    out = []
    accuracy = REWARD_MODEL[0]
    for _, row in models.iterrows():
        low, high = _wilson(row[f"{accuracy.key}_mean"], row[f"{REWARD_MODEL[3].key}_mean"])
        out.append(f"Reward model {row['config']}: {accuracy.format(row[f'{accuracy.key}_mean'])}% of held-out pairs "
                   f"ranked right (95% interval {accuracy.format(low)}–{accuracy.format(high)}%; chance 50%)"
                   + ("; below ~70% its rewards are weak guidance for RL." if high < 0.7 else "."))
    rl = policies[policies["objective"].isin(RLHF_OBJECTIVES)] if not policies.empty else policies
    if not rl.empty:
        gains = rl[f"{RL[1].key}_mean"] - rl[f"{RL[0].key}_mean"]
        if np.isfinite(gains).any():
            top = rl.loc[gains.idxmax()]
            out.append(f"Largest reward gain over the start: {top['objective']} {text(top.get('method.name'))} "
                       f"({top['config']}), {_interval(top, RL[0], RL[2])} → {_interval(top, RL[1], RL[3])} "
                       "at a KL to "
                       f"the start of {KL_REF.format(top[f'{KL_REF.key}_mean'])} nats/token.")
        out.extend(over_optimisation(rl))
        share = rl[f"{RL[6].key}_mean"]
        if np.isfinite(share).any():
            out.append(f"Writing rollouts took {100 * np.nanmin(share):.0f}–{100 * np.nanmax(share):.0f}% of RL "
                       "training time: on a CPU, generation, not the update, is what online RL pays for.")
    offline = policies[~policies["objective"].isin(RLHF_OBJECTIVES)] if not policies.empty else policies
    if not offline.empty and not rl.empty:
        scored = offline[np.isfinite(offline[f"{RL[1].key}_mean"])]
        if scored.empty:
            out.append("DPO/ORPO have no rollouts and were not scored under a reward (`objective.reward`); compare "
                       "them with RL on what both measure: eval loss on the held-out chosen answers, KL to the start, "
                       "and cost.")
        else:
            best_rl = rl.loc[rl[f"{RL[1].key}_mean"].idxmax()] if np.isfinite(rl[f"{RL[1].key}_mean"]).any() else None
            best_off = scored.loc[scored[f"{RL[1].key}_mean"].idxmax()]
            if best_rl is not None:
                out.append(f"Under the same reward on the same held-out prompts: best online RL {best_rl['objective']} "
                           f"{text(best_rl.get('method.name'))} {_interval(best_rl, RL[1], RL[3])} vs best offline "
                           f"{best_off['objective']} {text(best_off.get('method.name'))} "
                           f"{_interval(best_off, RL[1], RL[3])} (± 95%; overlapping intervals do not separate them). "
                           "DPO/ORPO never see the reward model while training; RL optimises it, so a higher RL "
                           "reward may be over-optimisation: read it with the KL and eval loss beside it.")
    return out


def _delta(row, before: Metric, after: Metric, before_se: Metric, after_se: Metric) -> tuple[float, float]:
    """(after − before, the 95% half-width of that change from the two standard errors). The two means are over
    the same prompts, so treating them as independent overstates the noise: a change this rule calls real is."""
    change = row[f"{after.key}_mean"] - row[f"{before.key}_mean"]
    return change, Z95 * math.hypot(row[f"{before_se.key}_mean"], row[f"{after_se.key}_mean"])


def over_optimisation(rl: pd.DataFrame) -> list[str]:
    """Per RL policy scored under a held-out reward: did that reward follow the training reward? A gain in the
    training reward with a loss in the held-out one is the policy exploiting its reward model; a change within
    its noise is called nothing."""
    out = []
    for _, row in rl.iterrows():
        trained, t_half = _delta(row, *RL[:4])
        held, h_half = _delta(row, *HELD_OUT)
        if not (np.isfinite(trained) and np.isfinite(held)):
            continue
        said = f"training reward {trained:+.3f} ± {t_half:.3f}, held-out reward {held:+.3f} ± {h_half:.3f} (95%)"
        if not trained - t_half > 0:
            verdict = ("the training reward did not rise beyond its noise, so over-optimisation cannot be told from "
                       "none here (more held-out prompts or steps)")
        elif held - h_half > 0:
            verdict = "the held-out reward rose too: the gain transferred"
        elif held + h_half < 0:
            verdict = "over-optimisation: the held-out reward fell while the training reward rose"
        else:
            verdict = ("the held-out reward did not move beyond its noise while the training reward rose: the gain "
                       "did not transfer (over-optimisation, or a held-out model too weak to see it)")
        out.append(f"{row['objective']} {text(row.get('method.name'))} ({row['config']}): {said} — {verdict}.")
    return out


def held_out_models(policies: pd.DataFrame) -> list[str]:
    """The held-out reward the policies were scored under, named once."""
    refs = sorted(set(column(policies, "objective.held_out_reward").dropna())) if not policies.empty else []
    return [f"Held-out reward: {', '.join(f'`{r}`' for r in refs)} scores the same samples as the training reward; "
            "no run trains against it, so it checks the training reward for over-optimisation."] if refs else []


def rlhf_section(df: pd.DataFrame) -> Section | None:
    """RLHF's reward models and RL policies beside DPO/ORPO policies from the same starts; None without them."""
    runs = runs_for(ok_runs(df), "preference")
    names = objective_of(runs)
    if not names.isin(RLHF_OBJECTIVES).any():
        return None
    models = objective_summary(runs[names == "reward"], [*REWARD_MODEL, _COST["train_s"], _COST["peak_mem_train_mb"]],
                               REWARD_MODEL[0]) if (names == "reward").any() else pd.DataFrame()
    policies = runs[names != "reward"]
    starts = set(column(runs[names.isin(("grpo", "rloo"))], "objective.start").dropna())
    from_starts = column(policies, "objective.start").isin(starts)
    policies = policies[from_starts | objective_of(policies).isin(("grpo", "rloo"))]
    summary = objective_summary(policies, POLICY_COLUMNS, RL[1]) if not policies.empty else pd.DataFrame()
    if not summary.empty:
        summary["objective"] = objective_labels(summary)
    section = Section("RLHF: reward model and online RL", paragraphs=[(
        "RLHF in the course's three steps: SFT; a reward model (the SFT model with a scalar head) trained on the "
        "preference pairs with −log σ(r_chosen − r_rejected); then online RL (GRPO, RLOO) against that frozen "
        "reward "
        "with a KL pull toward the SFT model. Rewards are the training reward's mean on the held-out prompts (one "
        "sample each, same seed) for the start model and the trained policy; ± is 1.96 × the standard error over "
        "prompts (over seeds when there are several). DPO and ORPO from the same start sit beside them, scored "
        "under the same reward on the same prompts when their `objective.reward` names it.")])
    section.bullets = [*rlhf_findings(models, summary), *held_out_models(policies)]
    if not models.empty:
        section.tables.append(reward_model_table(models))
    if not summary.empty:
        section.tables.append(policy_table(summary))
    return section


@register("preference", order=40)
def _build(ctx: ReportContext) -> list[Section]:
    return [s for s in (preference_section(ctx.df), rlhf_section(ctx.df)) if s is not None]
