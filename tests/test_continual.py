"""Building blocks of multi-task and continual learning (issue 9): mixture sampling, replay, EWC,
and the transfer / forgetting figures on a hand-made accuracy matrix."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from harness.objectives.parts import continual_metrics as cm
from harness.objectives.parts.ewc import anchor, ewc_penalty, fisher_diagonal
from harness.objectives.parts.mixing import batch_schedule, mixture_probabilities, reservoir, task_order, with_replay

#: R[i][j]: accuracy on task j after stage i; baseline b[j]: before any stage
R = [[0.80, 0.30, 0.20],
     [0.60, 0.90, 0.35],
     [0.50, 0.70, 0.85]]
B = [0.25, 0.25, 0.25]


def test_transfer_and_forgetting_figures_on_a_hand_made_matrix():
    assert cm.average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.85) / 3)
    assert cm.backward_transfer(R) == pytest.approx(((0.50 - 0.80) + (0.70 - 0.90)) / 2)  # -0.25
    assert cm.forward_transfer(R, B) == pytest.approx(((0.30 - 0.25) + (0.35 - 0.25)) / 2)  # 0.075
    assert cm.average_forgetting(R) == pytest.approx(((0.80 - 0.50) + (0.90 - 0.70)) / 2)  # best earlier − final
    # a loss matrix is negated: losses that rise on old tasks are negative backward transfer
    losses = [[1.0, 3.0], [1.5, 0.8]]
    figures = cm.summary(losses, baseline=[3.2, 3.1], higher_is_better=False)
    assert figures["bwt"] == pytest.approx(-(1.5 - 1.0)) and figures["avg_forgetting"] == pytest.approx(0.5)
    assert figures["fwt"] == pytest.approx(3.1 - 3.0) and figures["avg_accuracy"] == pytest.approx((1.5 + 0.8) / 2)
    with pytest.raises(ValueError, match="T ≥ 2"):
        cm.average_accuracy([[0.5]])


@pytest.mark.parametrize("strategy, temperature, expected", [
    ("proportional", None, [0.1, 0.3, 0.6]),
    ("equal", None, [1 / 3] * 3),
    ("temperature", 2.0, [n ** 0.5 / sum(m ** 0.5 for m in (100, 300, 600)) for n in (100, 300, 600)]),
])
def test_mixture_sampling_draws_the_stated_proportions(strategy, temperature, expected):
    sizes = [100, 300, 600]
    probabilities = mixture_probabilities(sizes, strategy, temperature)
    assert probabilities == pytest.approx(expected)
    draws = batch_schedule(sizes, probabilities, 6000, batch=1, seed=1, order="random")
    counts = Counter(i for i, _ in draws)
    for i, p in enumerate(expected):  # within 4 standard deviations of a binomial count
        assert abs(counts[i] - 6000 * p) < 4 * (6000 * p * (1 - p)) ** 0.5
    # a source is seen whole before any of its examples repeats
    first = [picked[0] for i, picked in draws if i == 0][:100]
    assert sorted(first) == list(range(100))
    # stratified: every prefix of t draws holds ⌊p·t⌋ or ⌈p·t⌉ of each source
    order = task_order(probabilities, 600, "stratified", seed=1)
    for t in range(1, 601):
        for i, p in enumerate(expected):
            assert abs(order[:t].count(i) - p * t) < 1 + 1e-9, (t, i)


def test_equal_sampling_in_stratified_order_gives_every_task_the_same_batches():
    draws = batch_schedule([129, 882, 100, 164], [0.25] * 4, 32, batch=4, seed=0)
    assert Counter(task for task, _ in draws) == {0: 8, 1: 8, 2: 8, 3: 8}
    assert all(sorted(task for task, _ in draws[k:k + 4]) == [0, 1, 2, 3] for k in range(0, 32, 4))
    firsts = {tuple(task_order([0.25] * 4, 4, seed=seed)) for seed in range(6)}
    assert len(firsts) > 1  # ties between equally owed tasks go by the seed, not always task 0 first
    with pytest.raises(ValueError, match="unknown task order"):
        task_order([0.5, 0.5], 4, "roundrobin")


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        mixture_probabilities([1, 2], "temperature", 0)
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        mixture_probabilities([1, 2], "softmax")
    with pytest.raises(ValueError, match="needs examples"):
        mixture_probabilities([3, 0])


def test_replay_is_the_stated_fraction_and_only_from_earlier_stages():
    current = [("c", i) for i in range(300)]
    earlier = [("e", i) for i in range(1000)]
    mixed = with_replay(current, earlier, 0.25, seed=3)
    replayed = [x for x in mixed if x[0] == "e"]
    assert len(replayed) / len(mixed) == pytest.approx(0.25, abs=0.005)
    assert set(replayed) <= set(earlier) and set(current) <= set(mixed) and len(set(replayed)) == len(replayed)
    assert sorted(with_replay(current, earlier, 0.0)) == current  # no replay: the stage's own examples
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        with_replay(current, earlier, 1.0)
    # the reservoir is uniform: every earlier item has the same chance (checked over many seeds)
    hits = Counter(x for seed in range(400) for x in reservoir(range(20), 5, seed))
    assert max(hits.values()) - min(hits.values()) < 60  # expectation 100 each


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x, labels, use_cache=None):
        return type("Out", (), {"loss": torch.nn.functional.cross_entropy(self.linear(x), labels)})()


def test_the_fisher_of_a_packed_batch_is_that_of_its_examples_padded():
    """Packed examples must not attend to each other in the Fisher pass (a cache on made them: logits
    off by ~1 against the same examples alone)."""
    from harness import models
    from harness.config import build_run_config

    model, _ = models.load(build_run_config({"model": "tiny-smollm2"}, file="t").model, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # tied to the embeddings: every position's gradient lands here
    packed = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 10, 11]]), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2]]),
              "labels": torch.tensor([[-100, 6, 7, 8, -100, 10, 11]])}
    padded = {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
              "labels": torch.tensor([[-100, 6, 7, 8], [-100, 10, 11, -100]])}
    a, b = fisher_diagonal(model, [packed]), fisher_diagonal(model, [padded])
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-9) for k in a)


def test_ewc_penalty_is_zero_at_the_previous_optimum_and_grows_away_from_it():
    torch.manual_seed(0)
    model = _Tiny()
    batches = [{"x": torch.randn(8, 3), "labels": torch.randint(0, 2, (8,))} for _ in range(4)]
    fisher = fisher_diagonal(model, batches)
    assert set(fisher) == {"linear.weight", "linear.bias"} and all((f >= 0).all() for f in fisher.values())
    assert any((f > 0).any() for f in fisher.values())
    anchors = anchor(model)
    assert ewc_penalty(model, fisher, anchors, strength=100.0).item() == 0.0
    with torch.no_grad():
        model.linear.weight.add_(0.1)
    moved = ewc_penalty(model, fisher, anchors, strength=100.0)
    expected = 50.0 * (fisher["linear.weight"] * 0.01).sum()
    assert moved.item() == pytest.approx(expected.item(), rel=1e-5) and moved.item() > 0
    moved.backward()  # the penalty pulls the weights back toward the anchor
    assert (model.linear.weight.grad >= 0).all() and model.linear.weight.grad.abs().sum() > 0
