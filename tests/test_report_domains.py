"""Report sections across data sources, built from synthetic stores: transfer matrix, single- vs multi-task,
domain adaptation, continual learning and routing."""

from __future__ import annotations

import numpy as np
import pytest

from harness.objectives.parts import continual_metrics
from harness.report.build import build
from harness.report.continual import continual_chains
from harness.report.domains import multitask_comparison, transfer_matrix
from harness.report.frame import load_runs
from harness.report.render import write
from harness.report.sections import domain_sections
from report_store import write_run

SOURCES = ["chat_civic", "chat_health", "chat_technical"]
BASE = {"chat_civic": 3.0, "chat_health": 3.2, "chat_technical": 2.8}
#: trained source → seed → loss per evaluated source
SINGLE = {"chat_civic": [{"chat_civic": 2.0, "chat_health": 3.1, "chat_technical": 2.9},
                         {"chat_civic": 2.2, "chat_health": 3.3, "chat_technical": 2.9}],
          "chat_health": [{"chat_civic": 3.1, "chat_health": 2.4, "chat_technical": 2.7}]}
MULTI = {"shared": {"chat_civic": 2.3, "chat_health": 2.5, "chat_technical": 2.75},
         "per_task": {"chat_civic": 2.1, "chat_health": 2.6, "chat_technical": 2.85}}
DOMAINS = ["chat_civic", "chat_health"]


def _section(sections, title):
    return next(s for s in sections if s.title == title)


def _losses(losses: dict, prefix: str = "task_eval") -> dict:
    return {f"{prefix}.{s}.eval_loss": v for s, v in losses.items()}


def _evaluated(name: str, system_prompt: str | None = None, **train) -> dict:
    return {"data": {"name": name, **({"system_prompt": system_prompt} if system_prompt else {})},
            "eval": {"batch_size": 8, "sources": SOURCES}, **({"train": train} if train else {})}


def _base(root, exp):
    write_run(root, exp, method="none", slug="none", extra=_losses(BASE), overrides=_evaluated("chatterbot"))


def _single(root, exp, source, seed, losses, method="lora", forgetting=None, **train):
    extra = {**_losses(losses), **({"forgetting_ppl_pct": forgetting} if forgetting is not None else {})}
    write_run(root, exp, method=method, seed=seed, slug=f"{method}-{source}-n100-s{seed}", eval_loss=losses[source],
              extra=extra, overrides=_evaluated(source, **train))


def _multitask(root, exp, architecture, losses, seen=(300, 100)):
    objective = {"name": "multitask", "tasks": [{"name": t, "weight": 1.0} for t in DOMAINS],
                 "sampling": "proportional", "architecture": architecture}
    extra = {**_losses(losses), **{f"task_eval.{t}.examples_seen": n for t, n in zip(DOMAINS, seen)}}
    write_run(root, exp, method="lora", slug=f"multitask-{architecture}-lora-n100-s0", objective=objective,
              eval_loss=float(np.mean([losses[t] for t in DOMAINS])), extra=extra, overrides=_evaluated("chatterbot"))


def _transfer_store(root, exp="dom", base=True):
    if base:
        _base(root, exp)
    for source, seeds in SINGLE.items():
        for seed, losses in enumerate(seeds):
            _single(root, exp, source, seed, losses, grad_accum=2)
    for architecture, losses in MULTI.items():
        _multitask(root, exp, architecture, losses)


# -- transfer matrix ------------------------------------------------------------------------------------------------

def test_transfer_matrix_rows_columns_and_diagonal(tmp_path):
    _transfer_store(tmp_path)
    df = load_runs("dom", tmp_path)
    matrix = transfer_matrix(df)
    assert matrix.relative
    assert matrix.values.shape == (len(SINGLE) + len(MULTI), len(SOURCES))
    assert list(matrix.values.columns) == SOURCES  # trained sources first, then the evaluated-only one
    assert list(matrix.values.index) == ["chat_civic", "chat_health", "multitask per_task", "multitask shared"]
    assert matrix.in_domain == {"chat_civic": "chat_civic", "chat_health": "chat_health",
                                "multitask shared": None, "multitask per_task": None}
    # the diagonal comes from the single-task runs: their seed mean minus the base
    for source, seeds in SINGLE.items():
        expected = np.mean([s[source] for s in seeds]) - BASE[source]
        assert matrix.values.loc[source, source] == pytest.approx(expected)
    assert matrix.values.loc["chat_civic", "chat_technical"] == pytest.approx(2.9 - 2.8)
    assert matrix.seeds["chat_civic"] == 2
    for architecture, losses in MULTI.items():
        row = matrix.values.loc[f"multitask {architecture}"]
        assert row.tolist() == pytest.approx([losses[s] - BASE[s] for s in SOURCES])
    section = _section(domain_sections(df), "Transfer between domains")
    assert section.figures[0][0] == "transfer_matrix.png" and section.figures[0][1][:4] == b"\x89PNG"
    table = section.tables[0]
    assert table.columns == ["trained on", "n", *SOURCES] and len(table.rows) == 4
    assert table.rows[0][2].text == f"{2.1 - 3.0:+.3f} (in-domain)" and table.rows[0][2].best
    assert "diagonal" in section.paragraphs[0] and "negative is better" in section.paragraphs[0]
    assert any(b.startswith("Most helpful transfer: training on chat_health changed chat_technical's eval loss "
                            "by -0.100") for b in section.bullets)


def test_transfer_matrix_without_a_base_shows_raw_losses(tmp_path):
    _transfer_store(tmp_path, "raw", base=False)
    df = load_runs("raw", tmp_path)
    matrix = transfer_matrix(df)
    assert not matrix.relative
    assert matrix.values.loc["chat_health", "chat_health"] == pytest.approx(2.4)
    assert matrix.values.equals(matrix.raw)
    section = _section(domain_sections(df), "Transfer between domains")
    assert "raw eval loss: no untouched-base row" in section.paragraphs[0]
    assert len(section.tables) == 1  # no base row to show


# -- single-task vs multi-task --------------------------------------------------------------------------------------

def test_single_vs_multitask_per_task(tmp_path):
    _transfer_store(tmp_path)
    df = load_runs("dom", tmp_path)
    table = multitask_comparison(df)
    assert len(table) == len(MULTI) * len(DOMAINS)
    row = table[(table["task"] == "chat_civic") & (table["multitask"] == "multitask shared")].iloc[0]
    assert row["multitask loss"] == pytest.approx(2.3) and row["single-task loss"] == pytest.approx(2.1)
    assert row["Δ loss (multi − single)"] == pytest.approx(0.2)
    assert row["multitask examples"] == 300
    assert row["single-task examples"] == 5 * 4 * 2  # max_steps × micro_batch × grad_accum
    assert row["single-task config"] == "lora-chat_civic-n100"
    section = _section(domain_sections(df), "Single-task vs multi-task")
    assert section.figures[0][0] == "multitask.png"
    # per_task: civic 2.1 vs 2.1 (not lower), health 2.6 vs 2.4
    assert "multitask per_task: lower loss than single-task on 0 of 2 task(s), mean Δ +0.100." in section.bullets


# -- domain adaptation ----------------------------------------------------------------------------------------------

def test_domain_adaptation_names_the_best_method_and_the_least_forgetting(tmp_path):
    _base(tmp_path, "adapt")
    for source in DOMAINS:
        off = {s: BASE[s] for s in SOURCES if s != source}
        _single(tmp_path, "adapt", source, 0, {**off, source: BASE[source] - 1.0}, method="full", forgetting=12.0)
        _single(tmp_path, "adapt", source, 0, {**{s: v - 0.05 for s, v in off.items()}, source: BASE[source] - 0.6},
                method="lora", forgetting=2.0)
    write_run(tmp_path, "adapt", method="none", slug="none-prompt-health", extra=_losses({**BASE, "chat_health": 3.0}),
              overrides=_evaluated("chat_health", system_prompt="You are a careful medical assistant."))
    df = load_runs("adapt", tmp_path)
    section = _section(domain_sections(df), "Domain adaptation")
    table = section.tables[0]
    rows = {row[0].text: dict(zip(table.columns, row)) for row in table.rows}
    prompt = rows["none-prompt-health"]
    assert prompt["method"].text == "prompt design" and prompt["in-domain Δ vs base"].text == "-0.200"
    assert prompt["forgetting % (general ppl)"].text == "–"
    full = rows["full-chat_health-n100"]
    assert full["in-domain Δ vs base"].text == "-1.000" and full["in-domain Δ vs base"].best
    assert rows["lora-chat_health-n100"]["other domains Δ (mean)"].text == "-0.050"
    assert rows["lora-chat_civic-n100"]["forgetting % (general ppl)"].best
    bullets = section.bullets
    assert bullets[0] == "Best in-domain: full, mean in-domain Δ vs base -1.000 over 2 configuration(s); next lora, -0.600 over 2."
    assert bullets[1] == "Forgets least: lora, mean general-ppl forgetting +2.0% over 2 configuration(s); next full, +12.0% over 2."
    # the prompt-design baseline is no trained row of the transfer matrix
    assert "none-prompt-health" not in transfer_matrix(df).configs.values()


# -- continual learning ---------------------------------------------------------------------------------------------

SEQUENCE = ["chat_civic", "chat_health", "chat_technical"]
BEFORE = [2.5, 3.1, 3.3]
NAIVE = [[1.0, 3.0, 3.2],
         [1.5, 1.1, 3.0],
         [1.8, 1.4, 1.2]]
REPLAY = [[1.0, 3.0, 3.2],
          [1.1, 1.1, 3.0],
          [1.2, 1.15, 1.2]]


def _chain(root, exp, strategy, matrix, stages=None, failed=(), before=True, method="lora"):
    chain = f"continual-{strategy}-{method}-n100-s0"
    for stage in stages if stages is not None else range(len(matrix)):
        objective = {"name": "continual", "sequence": SEQUENCE, "strategy": strategy, "stage": stage, "chain": chain,
                     **({"previous": f"run:{chain}-stage{stage - 1}"} if stage else {})}
        extra = _losses(dict(zip(SEQUENCE, matrix[stage])))
        if stage == 0 and before:
            extra.update(_losses(dict(zip(SEQUENCE, BEFORE)), "task_eval_before"))
        write_run(root, exp, method=method, slug=f"{chain}-stage{stage}", objective=objective, extra=extra,
                  status="oom" if stage in failed else "ok", overrides={"data": {"name": SEQUENCE[stage]}})


def test_continual_summary_of_a_hand_made_matrix():
    got = continual_metrics.summary(NAIVE, BEFORE, higher_is_better=False)
    assert got["avg_accuracy"] == pytest.approx((1.8 + 1.4 + 1.2) / 3)  # the mean final loss
    assert got["bwt"] == pytest.approx(((1.0 - 1.8) + (1.1 - 1.4)) / 2)  # losses rose: negative
    assert got["fwt"] == pytest.approx(((3.1 - 3.0) + (3.3 - 3.0)) / 2)  # earlier stages lowered later losses
    assert got["avg_forgetting"] == pytest.approx(((1.8 - 1.0) + (1.4 - 1.1)) / 2)


def test_continual_section_from_the_store(tmp_path):
    _chain(tmp_path, "cl", "naive", NAIVE)
    _chain(tmp_path, "cl", "replay", REPLAY)
    _chain(tmp_path, "cl", "ewc", NAIVE, failed=(1,))  # stage 1 ran out of memory
    _chain(tmp_path, "cl", "adapter_per_stage", NAIVE, stages=[0])  # stages 1, 2 never ran
    df = load_runs("cl", tmp_path)
    chains = {c.strategy: c for c in continual_chains(df)}
    assert chains["naive"].complete and np.allclose(chains["naive"].r, NAIVE)
    assert np.allclose(chains["naive"].b, BEFORE)
    assert chains["ewc"].missing == [1] and chains["adapter_per_stage"].missing == [1, 2]
    assert chains["ewc"].summary() is None
    section = _section(domain_sections(df), "Continual learning")
    summary = section.tables[0]
    rows = {row[0].text: dict(zip(summary.columns, row)) for row in summary.rows}
    assert set(rows) == {"naive", "replay"}
    assert rows["naive"]["BWT"].text == "-0.550" and rows["naive"]["FWT"].text == "+0.200"
    assert rows["naive"]["forgetting"].text == "0.550" and rows["naive"]["ACC (mean final loss)"].text == "1.467"
    assert rows["replay"]["BWT"].text == "-0.125" and rows["replay"]["BWT"].best
    assert rows["replay"]["forgetting"].text == "0.125" and rows["replay"]["forgetting"].best
    matrix = section.tables[1]  # the naive chain's forgetting matrix
    assert matrix.columns == ["", *SEQUENCE]
    assert [r[0].text for r in matrix.rows] == ["before stage 0 (base)", "after stage 0: chat_civic",
                                                "after stage 1: chat_health", "after stage 2: chat_technical"]
    assert [c.text for c in matrix.rows[3][1:]] == ["1.800", "1.400", "1.200"]
    assert section.bullets[0] == "Least forgetting: replay (average forgetting 0.125, BWT -0.125)."
    assert any(b.startswith("Chain continual-ewc-lora-n100-s0 (ewc) is incomplete: stage(s) 1 have no ok run")
               for b in section.bullets)
    assert any("continual-adapter_per_stage-lora-n100-s0" in b and "stage(s) 1, 2" in b for b in section.bullets)
    assert section.figures[0][0] == "continual.png" and section.figures[0][1][:4] == b"\x89PNG"


def test_a_chain_without_base_losses_has_no_forward_transfer(tmp_path):
    _chain(tmp_path, "cl2", "naive", NAIVE)
    _chain(tmp_path, "cl2", "naive", REPLAY, before=False, method="full")
    section = _section(domain_sections(load_runs("cl2", tmp_path)), "Continual learning")
    rows = {row[0].text: dict(zip(section.tables[0].columns, row)) for row in section.tables[0].rows}
    assert set(rows) == {"naive lora", "naive full"}  # one strategy, told apart by method
    assert rows["naive lora"]["FWT"].text == "+0.200" and rows["naive full"]["FWT"].text == "–"
    assert rows["naive full"]["BWT"].text == "-0.125"
    full = next(t for t in section.tables[1:] if t.caption.startswith("naive full:"))
    assert full.rows[0][0].text == "after stage 0: chat_civic"  # no base row


def test_a_chain_with_no_complete_run_is_reported_not_crashed_on(tmp_path):
    _chain(tmp_path, "cl1", "naive", NAIVE, stages=[0, 1])
    section = _section(domain_sections(load_runs("cl1", tmp_path)), "Continual learning")
    assert section.tables == [] and section.figures == []
    assert "incomplete: stage(s) 2 have no ok run" in section.bullets[0]


# -- routing --------------------------------------------------------------------------------------------------------

def _route(root, exp):
    per = {"chat_civic": (2.1, 2.0, 2.4), "chat_health": (2.5, 2.3, 2.6)}
    extra = {"router_acc": 0.9, "router_acc_train": 0.95, "route.routed.eval_loss": 2.3,
             "route.oracle.eval_loss": 2.15, "route.shared.eval_loss": 2.5}
    for domain, (routed, oracle, shared) in per.items():
        extra.update({f"task_eval.{domain}.eval_loss": routed, f"oracle_eval.{domain}.eval_loss": oracle,
                      f"shared_eval.{domain}.eval_loss": shared})
    objective = {"name": "route", "adapters": {d: f"run:lora-{d}-n100-s0" for d in per}, "shared": "run:multitask"}
    write_run(root, exp, method="none", slug="route-s0", objective=objective, extra=extra)


def test_routing_section(tmp_path):
    _route(tmp_path, "rt")
    section = _section(domain_sections(load_runs("rt", tmp_path)), "Routing")
    overall = dict(zip(section.tables[0].columns, section.tables[0].rows[0]))
    assert overall["router accuracy %"].text == "90.0" and overall["router accuracy % (train)"].text == "95.0"
    assert overall["routed loss"].text == "2.300" and overall["routed − oracle"].text == "+0.150"
    detail = [[c.text for c in row] for row in section.tables[1].rows]
    assert detail == [["route", "chat_civic", "2.100", "2.000", "2.400", "+0.100"],
                      ["route", "chat_health", "2.500", "2.300", "2.600", "+0.200"]]
    assert section.bullets[0] == ("route: the router chose the right adapter for 90.0% of held-out prompts (95.0% of "
                                  "training prompts); routed loss 2.300 against 2.150 with the oracle (+0.150) and "
                                  "2.500 with the shared adapter.")
    assert section.figures[0][0] == "routing.png"
    # the route run is no single-task or multitask row
    assert "Transfer between domains" not in [s.title for s in domain_sections(load_runs("rt", tmp_path))]


# -- presence and rendering -----------------------------------------------------------------------------------------

TITLES = {"Transfer between domains", "Domain adaptation", "Single-task vs multi-task", "Continual learning", "Routing"}


def test_sections_absent_without_such_runs(tmp_path):
    write_run(tmp_path, "sft", method="lora", eval_loss=2.0)
    write_run(tmp_path, "sft", method="full", eval_loss=1.9)
    write_run(tmp_path, "sft", method="none", eval_loss=2.5)
    assert not TITLES & {s.title for s in build("sft", tmp_path).sections}
    # single-task runs alone: no multitask, continual or routing section
    _transfer_store(tmp_path, "single")
    titles = {s.title for s in domain_sections(load_runs("single", tmp_path))}
    assert titles == {"Transfer between domains", "Domain adaptation", "Single-task vs multi-task"}


def test_report_builds_with_every_domain_section(tmp_path):
    _transfer_store(tmp_path, "all")
    _chain(tmp_path, "all", "naive", NAIVE)
    _chain(tmp_path, "all", "replay", REPLAY, stages=[0, 2])
    _route(tmp_path, "all")
    report = build("all", tmp_path)
    titles = [s.title for s in report.sections]
    assert TITLES <= set(titles) and titles.index("Transfer between domains") < titles.index("Findings")
    paths = write(report, tmp_path / "out")
    markdown, page = paths["markdown"].read_text(), paths["html"].read_text()
    for title in TITLES:
        assert f"## {title}" in markdown and f"<h2>{title}</h2>" in page
    for name in ("transfer_matrix.png", "multitask.png", "continual.png", "routing.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    assert "(in-domain)" in markdown and "is incomplete" in markdown
