"""Evaluation beyond loss: built-in lm-eval tasks, the perplexity cross-check, forgetting and
`ftbench eval` (many runs scored on one base load)."""

import json
import math

import pytest

from conftest import run_cli, tiny_base, write_experiment
from harness import models
from harness.config import DataCfg, ModelCfg
from harness.tasks import LOCAL_TASKS, task_dir


@pytest.fixture(scope="module")
def tiny():
    return models.load(ModelCfg(name="tiny-smollm2"), "cpu")


def _docs(name):
    path = task_dir(name) / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name, metric, low, high", [
    ("chatterbot_mc", "acc", 0, 1), ("polarity", "acc", 0, 1),
    ("general_ppl", "word_perplexity", 1, math.inf), ("aclsum_sum", "rougeL", 0, 1),
])
def test_each_built_in_task_builds_and_scores_the_tiny_model(tiny, name, metric, low, high):
    from harness.lmeval import score

    assert name in LOCAL_TASKS
    model, tok = tiny
    scores, seconds = score(model, tok, [name], limit=2, num_fewshot=None, batch_size=4)
    assert scores[f"task.{name}.n"] == 2
    assert low <= scores[f"task.{name}.{metric}"] <= high
    assert seconds > 0


def test_task_documents_are_deterministic_and_well_formed():
    mc = _docs("chatterbot_mc")
    assert len(mc) > 100
    assert all(len(d["choices"]) == 4 and len(set(d["choices"])) == 4 and 0 <= d["gold"] < 4 for d in mc)
    assert {d["gold"] for d in mc} == {0, 1, 2, 3}  # the right answer is not always in one place
    assert mc == LOCAL_TASKS.get("chatterbot_mc")().documents()
    polarity = _docs("polarity")
    assert len(polarity) == 100 and {d["label"] for d in polarity} == {0, 1}  # the other 100: `sentiment`
    assert len(_docs("general_ppl")) == 50 and len(_docs("aclsum_sum")) == 100


def test_a_limit_samples_the_whole_task_not_its_first_label_or_topic():
    """lm-eval's `limit: n` scores the first n documents: they must be a mix."""
    first = _docs("polarity")[:12]
    assert sum(d["label"] for d in first) == 6, [d["label"] for d in first]  # balanced
    mc = _docs("chatterbot_mc")
    assert len({d["topic"] for d in mc[:12]}) >= 4
    assert all(len(c) <= 200 for d in mc for c in d["choices"])  # the longest replies are never a choice


def test_chatterbot_mc_questions_are_in_no_split_of_the_chatterbot_dataset():
    from harness.data import DATASETS
    from harness.data.base import split

    questions = {d["question"].strip().lower() for d in _docs("chatterbot_mc")}
    records = DATASETS.get("chatterbot")().records(DataCfg())
    assert not questions & {r["prompt"].strip().lower() for r in records}
    for seed in (0, 1, 7):  # whatever the experiment's split seed
        parts = split(records, DataCfg(split_seed=seed))
        for part in (parts.train_pool, parts.val, parts.test):
            assert not questions & {r["prompt"].strip().lower() for r in part}


def test_aclsum_task_uses_only_the_test_split():
    from harness.tasks.aclsum_sum import aclsum_file

    ids = {d["id"] for d in _docs("aclsum_sum")}
    for other in ("train", "val"):
        other_ids = {json.loads(line)["id"] for line in aclsum_file(other).read_text().splitlines() if line.strip()}
        assert not ids & other_ids


def test_our_perplexity_and_lm_evals_rolling_loglikelihood_agree(tiny):
    """Both are exp(total NLL / tokens) over the same tokens: lm-eval scores every token of a
    document after an end-of-text prefix; we score the same tokens after the same prefix."""
    from lm_eval.api.instance import Instance

    from harness.data.tokenize import make_collator
    from harness.evaluate import token_loss
    from harness.lmeval import _lm_class

    model, tok = tiny
    texts = [d["text"] for d in _docs("general_ppl")[:4]]
    lm = _lm_class()(pretrained=model, tokenizer=tok, batch_size=4)
    lls = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    theirs = math.exp(-sum(lls) / n_tokens)
    examples = []
    for text in texts:
        ids = [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        examples.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    loss, count = token_loss(model, examples, make_collator(tok, packing=False), 4, "cpu")
    assert count == n_tokens
    assert math.exp(loss) == pytest.approx(theirs, rel=0.005)


def test_eval_scores_many_runs_on_one_base_load_and_caches(tmp_path):
    from harness import store
    from harness.rescore import score_runs

    base = tiny_base(eval={"latency": False, "tasks": ["chatterbot_mc", "general_ppl"], "limit": 4})
    path = write_experiment(tmp_path / "exp", "evalexp", base=base,
                            grid={"variant": [{"method": {"name": "lora", "r": 4}, "train.lr": 5.0e-4},
                                              {"method": "ia3", "train.lr": 3.0e-3},
                                              {"method": "adapter", "train.lr": 1.0e-3},
                                              {"method": "llama_adapter", "train.lr": 9.0e-3}]})
    results = tmp_path / "results"
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 0, res.out + res.err
    before = {r["slug"]: r for r in store.iter_results("evalexp", results)}
    assert len(before) == 5 and "base-tiny-smollm2" in before  # the reference row, added by itself
    assert any("." in r["run_id"] for r in before.values())  # `lr0.0005`: no valid peft adapter name as is
    ref = before["base-tiny-smollm2"]
    assert ref["spec"]["method"]["name"] == "none" and ref["metrics"]["trainable_params"] == 0
    for slug, result in before.items():
        m = result["metrics"]
        assert 0 <= m["task.chatterbot_mc.acc"] <= 1 and m["task.general_ppl.word_perplexity"] > 1
        assert set(result["task_meta"]) == {"chatterbot_mc", "general_ppl"}
        if slug != "base-tiny-smollm2":
            assert result["spec"]["reference"] == ref["run_id"]
            delta = m["task.general_ppl.word_perplexity"] - ref["metrics"]["task.general_ppl.word_perplexity"]
            assert m["forgetting_ppl_delta"] == pytest.approx(delta)

    loads = []
    real_load = models.load

    def counting_load(*args, **kwargs):
        loads.append(args[0].name)
        return real_load(*args, **kwargs)

    import harness.rescore

    harness.rescore.models.load = counting_load  # count the real loads (the function still runs)
    try:
        summary = score_runs("evalexp", root=results, tasks=None, limit=None, num_fewshot=None, batch_size=None,
                             force=True, log=lambda *a: None)
    finally:
        harness.rescore.models.load = real_load
    assert loads == ["tiny-smollm2"] and summary.base_loads == 1
    assert len(summary.scored) == 10 and summary.skipped == []
    after = {r["slug"]: r for r in store.iter_results("evalexp", results)}
    for slug, result in after.items():  # one shared base load gives exactly the per-run scores
        for key, value in before[slug]["metrics"].items():
            if key.startswith("task."):
                assert result["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (slug, key)

    again = run_cli("eval", "evalexp", "--results", str(results))
    assert again.code == 0 and "nothing to score" in again.out
    more = run_cli("eval", "evalexp", "--results", str(results), "--tasks", "polarity", "--limit", "2")
    assert more.code == 0, more.err
    assert "scored 5 (run, task) pairs of 5 runs" in more.out and "1 base load" in more.out
    assert all(r["metrics"]["task.polarity.n"] == 2 for r in store.iter_results("evalexp", results))
    # the kept weights' model card is rewritten with the new scores in its model-index
    from huggingface_hub import ModelCard

    lora = next(r for r in store.iter_results("evalexp", results) if r["spec"]["method"]["name"] == "lora")
    card = ModelCard.load(store.run_dir("evalexp", lora["run_id"], results) / "adapter" / "README.md")
    polarity = {e.metric_type: e.metric_value for e in card.data.eval_results if e.dataset_type == "polarity"}
    assert polarity["acc"] == pytest.approx(lora["metrics"]["task.polarity.acc"], rel=1e-5)

    # a broken artifact is reported and skipped; the other runs are still scored
    ia3 = next(r for r in after.values() if r["spec"]["method"]["name"] == "ia3")
    for weights in (store.run_dir("evalexp", ia3["run_id"], results) / "adapter").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    broken = run_cli("eval", "evalexp", "--results", str(results), "--tasks", "polarity", "--limit", "3")
    assert broken.code == 0, broken.err
    assert "could not score" in broken.out and ia3["slug"] in broken.out
    assert "scored 4 (run, task) pairs of 4 runs" in broken.out


@pytest.mark.parametrize("task, needles", [
    ("hellaswag", ["eval.tasks", "cannot be fetched", "chatterbot_mc, general_ppl, polarity"]),
    ("chatterbot_mcq", ["eval.tasks", "unknown task `chatterbot_mcq`", "Did you mean `chatterbot_mc`"]),
])
def test_unusable_tasks_fail_before_any_run(tmp_path, task, needles):
    path = write_experiment(tmp_path, "badtask", base=tiny_base(eval={"tasks": [task]}))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2, res.out + res.err
    assert "Traceback" not in res.err
    for needle in needles:
        assert needle in res.err, (needle, res.err)
    assert not (tmp_path / "results").exists()
