"""`chatterbot`: ~2,000 English question→answer pairs in 21 topics from the chatterbot-corpus package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from harness.data.base import Dataset, DataError, register


def corpus_dir(language: str = "english") -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.name", "the `chatterbot-corpus` package is not installed: run `make install`")
    return Path(spec.submodule_search_locations[0]) / "data" / language


class Chatterbot(Dataset):
    name = "chatterbot"
    description = "chatterbot-corpus English Q→A pairs; each record keeps its `topic` (file name)"

    def records(self, cfg):
        out = []
        for path in sorted(corpus_dir().glob("*.yml")):
            doc = yaml.safe_load(path.read_text()) or {}
            for conv in doc.get("conversations") or []:
                # a conversation is a list of turns; consecutive turns form Q→A pairs
                turns = [str(t) for t in conv if isinstance(t, (str, int, float)) and str(t).strip()]
                for question, answer in zip(turns, turns[1:]):
                    out.append({"prompt": question.strip(), "response": answer.strip(), "topic": path.stem})
        return out


register(Chatterbot)
