"""Raw texts shipped in PyPI packages that both training datasets and lm-eval tasks read: the
aclsum papers, gensim's test files (polarity sentences, the Lee news corpus), and the split of the
polarity sentences between the `polarity` task and the `sentiment` dataset (they never share one).

It sits in the data layer so that tasks import data, never the reverse."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path


def stable_shuffle(docs: list[dict], field: str) -> list[dict]:
    """Documents in a fixed order that depends only on their `field` text (a hash), so that lm-eval's
    `limit: n` (the first n documents) is a sample of the whole task, not of its first topic or label."""
    return sorted(docs, key=lambda d: hashlib.sha256(str(d[field]).encode()).hexdigest())


# --- aclsum ---------------------------------------------------------------------------------------

def aclsum_file(split: str) -> Path:
    """The `aclsum` package's jsonl file of one split ("train", "val", "test").

    Raises:
        FileNotFoundError: the `aclsum` package is not installed.
    """
    spec = importlib.util.find_spec("aclsum")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `aclsum` package is not installed: run `make install`")
    return Path(spec.submodule_search_locations[0]) / "dataset" / f"{split}.jsonl"


def papers(split: str) -> list[dict]:
    """The papers of one split ("train", "val", "test") as {id, abstract, summary}: the abstract's
    sentences joined, the summary its challenge, approach and outcome joined.

    Raises:
        FileNotFoundError: the `aclsum` package is not installed.
    """
    docs = []
    for line in aclsum_file(split).read_text(encoding="utf-8").splitlines():
        paper = json.loads(line)
        abstract = " ".join(paper["sentences"]["abstract"])
        summary = " ".join(paper["summary"][k] for k in ("challenge", "approach", "outcome"))
        docs.append({"id": paper["id"], "abstract": abstract, "summary": summary})
    return docs


# --- gensim's test data ---------------------------------------------------------------------------

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


def polarity_task_halves() -> list[list[dict]]:
    """Per label (negative, positive): the half of its sentences the `polarity` task keeps, in hash order."""
    by_label = [stable_shuffle([d for d in polarity_sentences() if d["label"] == label], "sentence") for label in (0, 1)]
    return [docs[: len(docs) // 2] for docs in by_label]


@functools.cache
def _task_set() -> frozenset[str]:
    return frozenset(d["sentence"] for half in polarity_task_halves() for d in half)


def in_task(sentence: str) -> bool:
    """Whether the `polarity` task scores this sentence (else it is `sentiment` training data)."""
    return sentence in _task_set()
