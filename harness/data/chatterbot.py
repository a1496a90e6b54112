"""`chatterbot`: ~2,000 English question→answer pairs in 21 topics from the chatterbot-corpus package.

About 5% of the pairs (chosen by a hash of the question text, so the same for every experiment
and split seed) are held out for the `chatterbot_mc` evaluation task and never
appear in any training, validation or test split."""

from __future__ import annotations

import hashlib
import importlib.util
from collections import Counter
from pathlib import Path

import yaml

from harness.data.base import Dataset, DataError, register


#: safe_load's loader, in libyaml's C build where there is one (the corpus parses in ~0.1 s instead of ~1 s)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def corpus_dir(language: str = "english") -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.name", "the `chatterbot-corpus` package is not installed: run `make install`")
    return Path(spec.submodule_search_locations[0]) / "data" / language


def _key(question: str) -> str:
    return question.strip().lower()


def heldout_questions(pairs: list[dict]) -> set[str]:
    """Questions reserved for evaluation: among those asked exactly once in the corpus (so the
    right answer is unambiguous), 1 in 8 by a stable hash of the text."""
    counts = Counter(_key(p["prompt"]) for p in pairs)
    return {q for q, n in counts.items() if n == 1 and int(hashlib.sha256(q.encode()).hexdigest(), 16) % 8 == 0}


def all_pairs() -> list[dict]:
    """Every Q→A pair of the English corpus, held-out ones included, with its `topic`."""
    out = []
    for path in sorted(corpus_dir().glob("*.yml")):
        doc = yaml.load(path.read_text(), Loader=_SAFE_LOADER) or {}
        for conv in doc.get("conversations") or []:
            # a conversation is a list of turns; consecutive turns form Q→A pairs
            turns = [str(t) for t in conv if isinstance(t, (str, int, float)) and str(t).strip()]
            for question, answer in zip(turns, turns[1:]):
                out.append({"prompt": question.strip(), "response": answer.strip(), "topic": path.stem})
    return out


class Chatterbot(Dataset):
    name = "chatterbot"
    description = ("chatterbot-corpus English Q→A pairs (minus the questions held out for `chatterbot_mc`); "
                   "each record keeps its `topic` (file name)")

    version = 2  # 2: questions held out for chatterbot_mc

    def records(self, cfg):
        pairs = all_pairs()
        heldout = heldout_questions(pairs)
        return [p for p in pairs if _key(p["prompt"]) not in heldout]


register(Chatterbot)
