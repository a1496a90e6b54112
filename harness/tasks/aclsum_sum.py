"""`aclsum_sum`: summarize an ACL paper abstract (generate_until → ROUGE-L F1), from the test
split of the `aclsum` package (100 papers); the summary is its challenge, approach and outcome."""

from __future__ import annotations

from harness.data.corpora import aclsum_file, papers
from harness.tasks.base import LocalTask, function_ref, register

__all__ = ["AclsumSum", "aclsum_file", "papers"]  # the papers live in the data layer

METRIC_MODULE = '''"""ROUGE-L F1 for ftbench's aclsum_sum task (written by harness/tasks/aclsum_sum.py)."""
from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def process_results(doc, results):
    return {"rougeL": _SCORER.score(doc["summary"], results[0].strip())["rougeL"].fmeasure}
'''


class AclsumSum(LocalTask):
    name = "aclsum_sum"
    version = 1
    description = "summarize ACL abstracts (aclsum test split, 100 papers): ROUGE-L F1"
    primary_metric = "rougeL"

    def documents(self):
        return papers("test")

    def spec(self, data_file):
        return {
            "output_type": "generate_until",
            "doc_to_text": "Abstract: {{abstract}}\nSummarize the paper in two sentences.\nSummary:",
            "doc_to_target": "{{summary}}",
            "process_results": function_ref("aclsum_metric.process_results"),
            "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 64, "do_sample": False},
            "metric_list": [{"metric": "rougeL", "aggregation": "mean", "higher_is_better": True}],
        }

    def extra_files(self):
        return {"aclsum_metric.py": METRIC_MODULE}


register(AclsumSum)
