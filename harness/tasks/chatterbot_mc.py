"""`chatterbot_mc`: answer a held-out chatterbot question by picking the right reply among four
drawn from the same topic (multiple choice → acc, acc_norm). Its questions never appear in any
split of the `chatterbot` dataset (see harness.data.chatterbot.heldout_questions).

Documents come in a fixed shuffled order, so `eval.limit: n` scores a sample across topics rather
than the first topics of the corpus. Replies longer than MAX_REPLY_CHARS (the longest 5%, up to
1,087 characters) are never a choice: one such reply costs as much compute as twenty typical ones
(median 52 characters) and its length alone sets it apart."""

from __future__ import annotations

import hashlib
import random

from harness.tasks.base import LocalTask, register, stable_shuffle

MAX_REPLY_CHARS = 200


class ChatterbotMC(LocalTask):
    name = "chatterbot_mc"
    version = 2  # 2: shuffled document order, replies over MAX_REPLY_CHARS left out
    description = "held-out chatterbot questions, the right reply among 4 from the same topic (acc, acc_norm)"
    primary_metric = "acc"

    def documents(self):
        from harness.data.chatterbot import _key, all_pairs, heldout_questions

        pairs = all_pairs()
        heldout = heldout_questions(pairs)
        replies: dict[str, list[str]] = {}
        for pair in pairs:
            topic_replies = replies.setdefault(pair["topic"], [])
            if pair["response"] not in topic_replies and len(pair["response"]) <= MAX_REPLY_CHARS:
                topic_replies.append(pair["response"])
        docs = []
        for pair in pairs:
            if _key(pair["prompt"]) not in heldout or len(pair["response"]) > MAX_REPLY_CHARS:
                continue
            others = [r for r in replies[pair["topic"]] if r != pair["response"]]
            if len(others) < 3:
                continue
            rng = random.Random(hashlib.sha256(pair["prompt"].encode()).hexdigest())
            choices = rng.sample(others, 3)
            gold = rng.randrange(4)
            choices.insert(gold, pair["response"])
            docs.append({"question": pair["prompt"], "choices": choices, "gold": gold, "topic": pair["topic"]})
        return stable_shuffle(docs, "question")

    def spec(self, data_file):
        return {
            "output_type": "multiple_choice",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        }


register(ChatterbotMC)
