"""`general_ppl`: perplexity on general English no experiment trains on — the 50 news articles of
the Lee corpus (Australian Broadcasting Corporation news on politics, business, disasters, sport;
gensim's `lee.cor`). News prose is far from chatterbot's short chat replies, so a rise here after
fine-tuning is forgetting of general language, not a change on the training distribution."""

from __future__ import annotations

from harness.data.corpora import gensim_test_file
from harness.tasks.base import LocalTask, register


class GeneralPPL(LocalTask):
    name = "general_ppl"
    version = 1
    description = "general English news (Lee corpus, 50 ABC articles): word_perplexity, bits_per_byte"
    primary_metric = "word_perplexity"
    higher_is_better = False

    def documents(self):
        lines = gensim_test_file("lee.cor").read_text(encoding="utf-8", errors="replace").splitlines()
        return [{"text": line.strip()} for line in lines if line.strip()]

    def spec(self, data_file):
        return {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"},
                            {"metric": "bits_per_byte"}],
        }


register(GeneralPPL)
