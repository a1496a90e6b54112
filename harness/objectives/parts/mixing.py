"""Mixing several data sources into one training stream, and replaying earlier ones (pure Python).

Sampling strategies for a multi-task mixture of sources with n_i examples each:
`proportional` (p_i ∝ n_i), `equal` (p_i = 1/K) and temperature τ (p_i ∝ n_i^(1/τ): τ = 1 is
proportional, τ → ∞ equal). Replay keeps a reservoir sample of earlier stages' examples and mixes
a fraction of them into each later stage.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence


def mixture_probabilities(sizes: Sequence[int], strategy: str = "proportional",
                          temperature: float | None = None) -> list[float]:
    """Probability of drawing each source.

    Raises:
        ValueError: no sources, an empty source, an unknown strategy, or a temperature ≤ 0.
    """
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError(f"every source needs examples: sizes {list(sizes)}")
    if strategy == "equal":
        weights = [1.0] * len(sizes)
    elif strategy == "proportional":
        weights = [float(n) for n in sizes]
    elif strategy == "temperature":
        if temperature is None or temperature <= 0:
            raise ValueError(f"the sampling temperature must be > 0, not {temperature}")
        weights = [n ** (1.0 / temperature) for n in sizes]
    else:
        raise ValueError(f"unknown sampling strategy `{strategy}`; allowed: equal, proportional, temperature")
    total = sum(weights)
    return [w / total for w in weights]


def reservoir(stream: Iterable, k: int, seed: int = 0) -> list:
    """A uniform sample of `k` items of a stream of unknown length (Vitter's algorithm R)."""
    rng = random.Random(seed)
    kept: list = []
    for i, item in enumerate(stream):
        if i < k:
            kept.append(item)
        else:
            j = rng.randint(0, i)
            if j < k:
                kept[j] = item
    return kept


def with_replay(current: Sequence, earlier: Sequence, fraction: float, seed: int = 0) -> list:
    """The current stage's examples plus replayed earlier ones, so that replay is `fraction` of the
    result (as near as whole examples allow), the earlier ones a reservoir sample.

    Raises:
        ValueError: a fraction outside [0, 1).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the replay fraction must be in [0, 1), not {fraction}")
    k = min(len(earlier), round(fraction * len(current) / (1 - fraction)))
    replayed = reservoir(earlier, k, seed)
    out = list(current) + replayed
    random.Random(seed + 1).shuffle(out)
    return out


def task_order(probabilities: Sequence[float], n: int, order: str = "stratified", seed: int = 0) -> list[int]:
    """The task of each of `n` draws. `random`: independent draws by `probabilities`, so short runs
    stray from them (32 draws of 4 equal tasks can come out 13/5/7/7). `stratified`: smooth weighted
    round robin (each task earns p_i per draw, the most-owed one is drawn), so after every prefix of
    t draws each task has ⌊p_i·t⌋ or ⌈p_i·t⌉ of them; ties go by a seeded shuffle of the tasks.

    Raises:
        ValueError: an unknown order.
    """
    rng = random.Random(seed)
    if order == "random":
        return rng.choices(range(len(probabilities)), weights=probabilities, k=n)
    if order != "stratified":
        raise ValueError(f"unknown task order `{order}`; allowed: random, stratified")
    rank = {task: i for i, task in enumerate(rng.sample(range(len(probabilities)), len(probabilities)))}
    owed, out = [0.0] * len(probabilities), []
    for _ in range(n):
        owed = [o + p for o, p in zip(owed, probabilities)]
        task = max(range(len(owed)), key=lambda i: (round(owed[i], 9), -rank[i]))
        owed[task] -= 1.0
        out.append(task)
    return out


def batch_schedule(sizes: Sequence[int], probabilities: Sequence[float], n_batches: int, batch: int,
                   seed: int = 0, order: str = "stratified") -> list[tuple[int, list[int]]]:
    """`n_batches` single-task micro-batches: (task index, `batch` example indices of that task). The
    tasks come from `task_order`; a task's examples in a shuffled cycle (all seen before any
    repeats). One task per micro-batch lets a model switch its task adapters between batches."""
    rng = random.Random(seed)
    orders = [rng.sample(range(n), n) for n in sizes]
    cursors = [0] * len(sizes)
    out = []
    for task in task_order(probabilities, n_batches, order, seed):
        picked = []
        for _ in range(batch):
            if cursors[task] == sizes[task]:
                orders[task], cursors[task] = rng.sample(range(sizes[task]), sizes[task]), 0
            picked.append(orders[task][cursors[task]])
            cursors[task] += 1
        out.append((task, picked))
    return out
