"""`polarity`: sentiment (negative / positive) of movie-review sentences from gensim's test data
(Pang & Lee, 200 labelled sentences), as multiple choice: a second domain, unlike chatterbot chat.

The task scores half of the sentences (50 per label, chosen by a hash of the text); the other half
is the `sentiment` training dataset (harness/data/sources.py), so the two never share a sentence."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from harness.tasks.base import LocalTask, register, stable_shuffle


def gensim_test_file(name: str) -> Path:
    """A file of gensim's test data, found without importing gensim (only its data is used).

    Raises:
        FileNotFoundError: gensim is not installed (`make install` installs it, without its deps).
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `gensim` package (for its test data) is not installed: run `make install`")
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data" / name


def polarity_sentences() -> list[dict]:
    """All 200 labelled sentences in file order, as {sentence, label} (label 1: positive).

    Raises:
        FileNotFoundError: gensim is not installed.
    """
    docs = []
    text = gensim_test_file("pang_lee_polarity.cor").read_text(encoding="cp1252")  # 0x97 dashes: Windows-1252
    for line in text.splitlines():
        label, _, sentence = line.partition(" ")
        if label in ("__label__neg", "__label__pos") and sentence.strip():
            docs.append({"sentence": sentence.strip(), "label": int(label == "__label__pos")})
    return docs


def _task_halves() -> list[list[dict]]:
    """Per label (negative, positive): the half of its sentences the task keeps, in hash order."""
    by_label = [stable_shuffle([d for d in polarity_sentences() if d["label"] == label], "sentence") for label in (0, 1)]
    return [docs[: len(docs) // 2] for docs in by_label]


@functools.cache
def _task_set() -> frozenset[str]:
    return frozenset(d["sentence"] for half in _task_halves() for d in half)


def in_task(sentence: str) -> bool:
    """Whether the `polarity` task scores this sentence (else it is `sentiment` training data)."""
    return sentence in _task_set()


class Polarity(LocalTask):
    name = "polarity"
    # 2: labels alternate (the file lists every negative sentence first, so a limit saw one label)
    # 3: half the sentences (50 per label by hash); the other half is the `sentiment` dataset
    version = 3
    description = "sentiment of 100 movie-review sentences, negative or positive (acc)"

    def documents(self):
        # alternate the labels (each in a fixed shuffled order) so that any `limit` is balanced
        return [doc for pair in zip(*_task_halves()) for doc in pair]

    def spec(self, data_file):
        return {
            "output_type": "multiple_choice",
            "doc_to_text": "Review: {{sentence}}\nIs this review negative or positive?\nAnswer:",
            "doc_to_choice": ["negative", "positive"],
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }


register(Polarity)
