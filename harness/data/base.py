"""The dataset interface, its registry, and the split/subset/tokenize steps every dataset shares."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.registry import Registry


class DataError(ValueError):
    """Data that cannot be used (missing file, missing fields, too few examples)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class Dataset:
    """A source of {prompt, response, ...} records. Subclasses implement `records`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: bump when the records a config yields change: runs on the old records get new run ids
    version: ClassVar[int] = 1
    #: its records also carry `rejected` (a worse answer than `response`): preference data
    pairs: ClassVar[bool] = False
    #: the subject area of its records (e.g. "technical"), for per-domain evaluation; None: unspecified
    domain: ClassVar[str | None] = None
    #: the built-in lm-eval task that scores this domain (e.g. "chatterbot_mc"), or None
    eval_task: ClassVar[str | None] = None

    def records(self, cfg) -> list[dict[str, Any]]:
        """All records with `prompt` and `response` keys (other keys are kept, e.g. `topic`).

        Raises:
            DataError: the source is missing or lacks the configured fields.
        """
        raise NotImplementedError


DATASETS: Registry[type[Dataset]] = Registry("dataset")


def register(cls: type[Dataset]) -> type[Dataset]:
    """Register a Dataset subclass under its `name` (call at the end of its module)."""
    return DATASETS.register(cls.name, cls)


def map_fields(rows: list[dict], cfg, source: str) -> list[dict]:
    """Rename the configured prompt/response fields to `prompt`/`response`.

    Raises:
        DataError: a field is missing from the rows.
    """
    if not rows:
        raise DataError("data.path", f"`{source}` holds no records")
    keys = set(rows[0])
    for option in ("prompt_field", "response_field"):
        wanted = getattr(cfg, option)
        if wanted not in keys:
            raise DataError(f"data.{option}", f"`{source}` has no field `{wanted}`; its fields are {sorted(keys)}")
    out = []
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in (cfg.prompt_field, cfg.response_field)}
        out.append({**extra, "prompt": str(row[cfg.prompt_field]), "response": str(row[cfg.response_field])})
    return out


@dataclass(frozen=True)
class Splits:
    train_pool: list[dict]
    val: list[dict]
    test: list[dict]


def prompt_key(prompt) -> str:
    """A prompt as compared across data sets: lower case, whitespace collapsed."""
    return " ".join(str(prompt).lower().split())


def split(records: list[dict], cfg) -> Splits:
    """Deterministic train/val/test split by `cfg.split_seed`, grouped by prompt text so the
    same question never sits on both sides (chatterbot repeats questions with other answers).

    Raises:
        DataError: fewer prompt groups than val + test need, or n_train larger than the pool.
    """
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["prompt"], []).append(rec)
    # order groups by a seeded hash: stable across Python versions and independent of file order
    keys = sorted(groups, key=lambda k: hashlib.sha256(f"{cfg.split_seed}:{k}".encode()).hexdigest())
    val, test, pool = [], [], []
    for key in keys:
        if len(val) < cfg.n_val:
            val.extend(groups[key])
        elif len(test) < cfg.n_test:
            test.extend(groups[key])
        else:
            pool.extend(groups[key])
    if len(val) < cfg.n_val or len(test) < cfg.n_test or not pool:
        raise DataError("data.n_val", f"{len(records)} records are too few for n_val={cfg.n_val} and "
                        f"n_test={cfg.n_test} plus a training pool")
    if cfg.n_train is not None and cfg.n_train > len(pool):
        raise DataError("data.n_train", f"n_train={cfg.n_train} is larger than the training pool "
                        f"({len(pool)} examples after n_val={cfg.n_val}, n_test={cfg.n_test}); use at most {len(pool)}")
    return Splits(train_pool=pool, val=val[: cfg.n_val], test=test[: cfg.n_test])


def train_subset(pool: list[dict], n_train: int | None, seed: int) -> list[dict]:
    """The first n_train of the pool shuffled by `seed`: for one seed, smaller sets nest in larger ones."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[i] for i in order[: n_train or len(pool)]]
