"""`ftbench compare` and `ftbench leaderboard` (issue 24): configurations matched across experiments, paired
differences over the same examples, what differs between the experiments, and one clear message for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.cli import main
from harness.errors import ConfigError
from harness.report.compare import compare, leaderboard, match_keys
from harness.report.frame import load_runs
from harness.report.render import to_html, to_markdown
from report_store import ENV, write_run

N, TOKENS = 64, 10


def _run(root, experiment, method, per_token, *, seed=0, **kw):
    splits = {"validation": {"nll": (per_token * TOKENS).tolist(), "tokens": [TOKENS] * len(per_token)}}
    return write_run(root, experiment, method=method, seed=seed, eval_loss=float(per_token.mean()),
                     examples={"splits": splits, "tasks": {}}, **kw)


def _store(root):
    """`a`: lora, ia3, dora; `b`: lora clearly worse, ia3 the same, at another lr and seq_len, newer torch."""
    rng = np.random.default_rng(0)
    base = 2.0 + rng.normal(0, 0.5, N)
    _run(root, "a", "lora", base, mem=1000)
    _run(root, "a", "ia3", base + 0.1, mem=800)
    _run(root, "a", "dora", base + 0.05, mem=1100)
    later = {"train": {"lr": 2e-3, "seq_len": 128}}
    _run(root, "b", "lora", base + 0.3 + rng.normal(0, 0.02, N), mem=900, overrides=later,
         env={**ENV, "torch": "2.14.0+cpu"})
    _run(root, "b", "ia3", base + 0.1 + rng.normal(0, 0.02, N), mem=700, overrides=later,
         env={**ENV, "torch": "2.14.0+cpu"})


def _section(report, title):
    return next(s for s in report.sections if s.title == title)


def _row(table, config):
    return next(r for r in table.rows if r[0].text == config)


def test_compare_matches_configurations_and_pairs_their_examples(tmp_path):
    _store(tmp_path)
    report = compare(["a", "b"], tmp_path)
    differs = _section(report, "What differs")
    text = "\n".join(differs.bullets)
    assert "2 configurations matched" in differs.paragraphs[0]
    # the lr and seq_len are settings that differ, not parts of the configuration: the rows still match
    assert "spec `train.lr`: 0.001 (a) → 0.002 (b) — every matched configuration" in text
    assert "spec `train.seq_len`" in text and "environment `torch`: 2.13.0+cpu (a) → 2.14.0+cpu (b)" in text
    assert "only in a (1): dora-n100" in text
    ppl = _section(report, "Side by side").tables[0]
    assert ppl.columns[:3] == ["configuration", "a", "b"] and "b − a: % change" in ppl.columns
    lora, ia3 = _row(ppl, "lora-n100"), _row(ppl, "ia3-n100")
    change = ppl.columns.index("b − a: % change")
    # lora's loss rose by 0.3 nats: +35% perplexity, an interval well above 0, paired over every example
    assert lora[change].sort == pytest.approx(100 * math.expm1(0.3), abs=2)
    assert "(excludes 0)" in lora[change + 1].text and lora[change + 3].text == f"{N} examples"
    assert "(includes 0)" in ia3[change + 1].text
    costs = _section(report, "Side by side").tables[-1]
    assert "(-10%)" in _row(costs, "lora-n100")[2].text  # 900 MiB vs 1000 MiB
    assert "Explore" in [s.title for s in report.sections]
    page, md = to_html(report), to_markdown(report)
    assert 'class="view pareto"' in page and "## What differs" in md
    assert set(report.summary["experiment"]) == {"a", "b"}


def test_unpaired_figures_say_so(tmp_path):
    rng = np.random.default_rng(1)
    _run(tmp_path, "a", "lora", 2.0 + rng.normal(0, 0.5, N))
    _run(tmp_path, "b", "lora", 2.0 + rng.normal(0, 0.5, N // 2))  # other examples: nothing to pair
    ppl = _section(compare(["a", "b"], tmp_path), "Side by side").tables[0]
    assert ppl.rows[0][-1].text.startswith("not paired")


def test_match_keys_ignore_settings_but_not_options_or_budget(tmp_path):
    _run(tmp_path, "m", "lora", np.full(4, 2.0), r=8)
    _run(tmp_path, "m", "lora", np.full(4, 2.0), r=16)
    _run(tmp_path, "m", "lora", np.full(4, 2.0), r=8, n_train=200)
    _run(tmp_path, "m", "lora", np.full(4, 2.0), r=8, seed=1, overrides={"train": {"lr": 5e-4}})
    keys = match_keys(load_runs("m", tmp_path).sort_values("slug"))
    assert keys.nunique() == 3  # r=8 at two lrs and seeds is one configuration; r=16 and n_train=200 are not


def test_compare_refuses_bad_input(tmp_path):
    _store(tmp_path)
    with pytest.raises(ConfigError, match="at least two"):
        compare(["a"], tmp_path)
    with pytest.raises(ConfigError, match=r"`c`: no finished runs .*Experiments there: a, b"):
        compare(["a", "c"], tmp_path)
    write_run(tmp_path, "other", method="full", eval_loss=2.0)
    with pytest.raises(ConfigError, match="no configuration is in every experiment"):
        compare(["a", "other"], tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["compare", "a", "nope"], "`nope`: no finished runs"),
    (["compare", "a", "other"], "no configuration is in every experiment"),
    (["leaderboard", "--metric", "eval_pp"], "Did you mean `eval_ppl`?"),
    (["leaderboard"], "several model and data sets match: pick one of --model tiny --data other"),
    (["leaderboard", "--data", "none_such"], "nothing matches"),
])
def test_cli_bad_input_is_one_message_and_exit_2(tmp_path, capsys, argv, message):
    _store(tmp_path)
    write_run(tmp_path, "other", method="full", eval_loss=2.0, overrides={"data": {"name": "other"}})
    assert main([*argv, "--results", str(tmp_path), "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("error: ")


def test_cli_compare_writes_one_report(tmp_path, capsys):
    _store(tmp_path)
    assert main(["compare", "a", "b", "--results", str(tmp_path), "--out", str(tmp_path / "reports")]) == 0
    out = tmp_path / "reports" / "compare-a-vs-b"
    assert {p.name for p in out.iterdir()} == {"report.html", "report.md", "summary.csv"}
    assert "b − a: % change" in (out / "report.md").read_text()


def test_leaderboard_ranks_every_experiment_on_one_model_and_data(tmp_path, capsys):
    _store(tmp_path)
    write_run(tmp_path, "other", method="full", eval_loss=1.0, overrides={"data": {"name": "other"}})
    report = leaderboard(tmp_path, data="synthetic")
    table = report.sections[0].tables[0]
    ranked = [(r[1].text, r[2].text) for r in table.rows]
    # lower eval ppl first; the other data set's better run is not on this board
    assert ranked[0] == ("a", "lora-n100") and ranked[-1] == ("b", "lora-n100") and len(ranked) == 5
    assert report.experiment == "leaderboard-tiny-synthetic"
    best_tokens = leaderboard(tmp_path, data="synthetic", metric="peak_mem_train_mb", top=2).sections[0].tables[0]
    assert [(r[1].text, r[2].text) for r in best_tokens.rows] == [("b", "ia3-n100"), ("a", "ia3-n100")]  # 700, 800
    assert main(["leaderboard", "--data", "synthetic", "--results", str(tmp_path), "--out",
                 str(tmp_path / "reports")]) == 0
    assert "lora-n100" in capsys.readouterr().out
    assert (tmp_path / "reports" / "leaderboard-tiny-synthetic" / "report.html").is_file()
