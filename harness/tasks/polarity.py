"""`polarity`: sentiment (negative / positive) of movie-review sentences from gensim's test data
(Pang & Lee, 200 labelled sentences), as multiple choice: a second domain, unlike chatterbot chat.

The task scores half of the sentences (50 per label, chosen by a hash of the text); the other half
is the `sentiment` training dataset (harness/data/sources.py), so the two never share a sentence."""

from __future__ import annotations

from harness.data.corpora import gensim_test_file, in_task, polarity_sentences, polarity_task_halves
from harness.tasks.base import LocalTask, register

__all__ = ["Polarity", "gensim_test_file", "in_task", "polarity_sentences"]  # the texts live in the data layer


class Polarity(LocalTask):
    name = "polarity"
    # 2: labels alternate (the file lists every negative sentence first, so a limit saw one label)
    # 3: half the sentences (50 per label by hash); the other half is the `sentiment` dataset
    version = 3
    description = "sentiment of 100 movie-review sentences, negative or positive (acc)"

    def documents(self):
        # alternate the labels (each in a fixed shuffled order) so that any `limit` is balanced
        return [doc for pair in zip(*polarity_task_halves()) for doc in pair]

    def spec(self, data_file):
        return {
            "output_type": "multiple_choice",
            "doc_to_text": "Review: {{sentence}}\nIs this review negative or positive?\nAnswer:",
            "doc_to_choice": ["negative", "positive"],
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }


register(Polarity)
