"""Figures of learning tasks one after another, from an accuracy matrix (pure numpy).

R[i][j] is the quality on task j after training stage i (i, j = 0 … T−1); b[j] is the quality
on task j of the model before any stage. With quality where higher is better (accuracy, or −loss):

- average accuracy   ACC = 1/T Σ_j R[T−1][j]
- backward transfer  BWT = 1/(T−1) Σ_{j<T−1} (R[T−1][j] − R[j][j])      (Lopez-Paz & Ranzato 2017)
- forward transfer   FWT = 1/(T−1) Σ_{j>0} (R[j−1][j] − b[j])           (Lopez-Paz & Ranzato 2017)
- average forgetting F   = 1/(T−1) Σ_{j<T−1} max_{l<T−1} (R[l][j] − R[T−1][j])   (Chaudhry et al. 2018)

Negative BWT is forgetting; positive FWT means earlier stages helped a task before it was trained.
"""

from __future__ import annotations

import numpy as np


def _matrix(r) -> np.ndarray:
    r = np.asarray(r, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] < 2:
        raise ValueError(f"an accuracy matrix is T×T with T ≥ 2 stages, not {r.shape}")
    return r


def orient(r, higher_is_better: bool = True) -> np.ndarray:
    """The matrix as quality where higher is better (a loss or perplexity is negated)."""
    r = np.asarray(r, dtype=float)
    return r if higher_is_better else -r


def average_accuracy(r) -> float:
    r = _matrix(r)
    return float(r[-1].mean())


def backward_transfer(r) -> float:
    r = _matrix(r)
    t = r.shape[0]
    return float(np.mean([r[-1, j] - r[j, j] for j in range(t - 1)]))


def forward_transfer(r, baseline) -> float:
    r, b = _matrix(r), np.asarray(baseline, dtype=float)
    if b.shape != (r.shape[0],):
        raise ValueError(f"the baseline has one value per task: {r.shape[0]}, not {b.shape}")
    return float(np.mean([r[j - 1, j] - b[j] for j in range(1, r.shape[0])]))


def average_forgetting(r) -> float:
    r = _matrix(r)
    t = r.shape[0]
    return float(np.mean([r[: t - 1, j].max() - r[-1, j] for j in range(t - 1)]))


def summary(r, baseline=None, higher_is_better: bool = True) -> dict[str, float]:
    """ACC, BWT, FWT (when a baseline is given) and forgetting of a matrix, oriented first."""
    q = orient(r, higher_is_better)
    out = {"avg_accuracy": average_accuracy(q), "bwt": backward_transfer(q), "avg_forgetting": average_forgetting(q)}
    if baseline is not None:
        out["fwt"] = forward_transfer(q, orient(baseline, higher_is_better))
    if not higher_is_better:
        out["avg_accuracy"] = -out["avg_accuracy"]  # back to the metric's own units (a mean loss)
    return out
