"""Preference data: (prompt, chosen, rejected) records, `response` being the chosen answer.

`chatterbot_prefs` builds its pairs from chatterbot: chosen = the corpus answer, rejected = the
answer to another question of the same topic *from the same split*, so held-out pairs share nothing
with training pairs. `prefs` reads a local jsonl/json/csv/parquet file with `prompt`, `chosen`
and `rejected` fields."""

from __future__ import annotations

import hashlib

from harness.data.base import DataError, Dataset, register, split
from harness.data.chatterbot import Chatterbot
from harness.data.files import LocalFile


def _pick(key: str, candidates: list[dict]) -> dict:
    """A stable choice: the same record for the same key whatever the order of the corpus."""
    return min(candidates, key=lambda c: hashlib.sha256(f"{key}|{c['prompt']}|{c['response']}".encode()).hexdigest())


def with_rejected(records: list[dict]) -> list[dict]:
    """Each record with `rejected`: an answer to another question of its topic (any topic when its
    topic has no other question), never an answer equal to its own."""
    by_topic: dict[str, list[dict]] = {}
    for rec in records:
        by_topic.setdefault(rec.get("topic", ""), []).append(rec)
    out = []
    for rec in records:
        def usable(pool):
            return [c for c in pool if c["prompt"] != rec["prompt"] and c["response"].strip() != rec["response"].strip()]
        candidates = usable(by_topic[rec.get("topic", "")]) or usable(records)
        if candidates:
            out.append({**rec, "rejected": _pick(rec["prompt"] + rec["response"], candidates)["response"]})
    return out


class ChatterbotPrefs(Dataset):
    name = "chatterbot_prefs"
    description = ("chatterbot as preference pairs: chosen = the corpus answer, rejected = the answer to "
                   "another question of the same topic in the same split")
    pairs = True

    def records(self, cfg):
        # pair within each split: the split is by prompt, so it is the same when the recipe splits again
        parts = split(Chatterbot().records(cfg), cfg.model_copy(update={"n_train": None}))
        return [rec for part in (parts.val, parts.test, parts.train_pool) for rec in with_rejected(part)]


class PreferenceFile(LocalFile):
    name = "prefs"
    description = "local .jsonl/.json/.csv/.parquet preference pairs with `prompt`, `chosen` and `rejected` fields"
    pairs = True

    def records(self, cfg):
        rows = super().records(cfg.model_copy(update={"response_field": "chosen"}))
        missing = [i for i, row in enumerate(rows) if "rejected" not in row]
        if missing:
            keys = sorted(k for k in rows[0] if k != "response") + ["chosen"]
            raise DataError("data.path", f"`{cfg.path}` has no field `rejected` (preference pairs need prompt, "
                                         f"chosen, rejected); its fields are {sorted(set(keys))}")
        return [{**row, "rejected": str(row["rejected"])} for row in rows]


register(ChatterbotPrefs)
register(PreferenceFile)
