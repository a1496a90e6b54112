"""`polarity`: sentiment (negative / positive) of the 200 labelled movie-review sentences in
gensim's test data (Pang & Lee), as multiple choice: a second domain, unlike chatterbot chat."""

from __future__ import annotations

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


class Polarity(LocalTask):
    name = "polarity"
    version = 2  # 2: labels alternate (the file lists every negative sentence first, so a limit saw one label)
    description = "sentiment of 200 movie-review sentences, negative or positive (acc)"

    def documents(self):
        docs = []
        text = gensim_test_file("pang_lee_polarity.cor").read_text(encoding="cp1252")  # 0x97 dashes: Windows-1252
        for line in text.splitlines():
            label, _, sentence = line.partition(" ")
            if label in ("__label__neg", "__label__pos") and sentence.strip():
                docs.append({"sentence": sentence.strip(), "label": int(label == "__label__pos")})
        # alternate the labels (each in a fixed shuffled order) so that any `limit` is balanced
        by_label = [stable_shuffle([d for d in docs if d["label"] == label], "sentence") for label in (0, 1)]
        return [doc for pair in zip(*by_label) for doc in pair]

    def spec(self, data_file):
        return {
            "output_type": "multiple_choice",
            "doc_to_text": "Review: {{sentence}}\nIs this review negative or positive?\nAnswer:",
            "doc_to_choice": ["negative", "positive"],
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }


register(Polarity)
