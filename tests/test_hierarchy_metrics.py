"""Order preservation: the quadlet sampler against a plain enumeration, the metric against a loop."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

import deepmetric as dm
from deepmetric.evaluation.hierarchy import order_preservation, quadlet_distances, sample_quadlets


def random_tree(seed, parents=3, children=3, levels=2):
    gen = torch.Generator().manual_seed(seed)
    rows = [[a, c] + [0] * (levels - 2) for a in range(parents) for c in range(children)
            for _ in range(int(torch.randint(1, 4, (1,), generator=gen)))]
    y = torch.tensor(rows)
    return y[torch.randperm(len(y), generator=gen)]


def all_quadlets(y, level=0):
    n = len(y)
    same = lambda a, b, upto: bool((y[a, :upto + 1] == y[b, :upto + 1]).all())  # noqa: E731
    fine = y.shape[1] - 1
    return {(q, p, i, m) for q, p, i, m in itertools.product(range(n), repeat=4)
            if p != q and same(q, p, fine) and same(q, i, level) and not same(q, i, fine) and not same(q, m, level)}


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_quadlets_are_valid_and_uniform(seed):
    y = random_tree(seed)
    valid = all_quadlets(y)
    draws = 100 * len(valid)
    got = Counter(zip(*(t.tolist() for t in sample_quadlets(y, draws, seed=seed))))
    assert set(got) == valid  # every draw is valid and every valid quadlet is drawn
    counts = torch.tensor([got[t] for t in valid], dtype=torch.float64)
    chi2 = float(((counts - 100) ** 2 / 100).sum())  # chi-square with len(valid) - 1 degrees of freedom
    assert chi2 < len(valid) + 6 * (2 * len(valid)) ** 0.5


def test_sampled_quadlets_at_a_middle_level_of_three():
    y = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1]])
    for level in (0, 1):
        valid = all_quadlets(y, level)
        got = set(zip(*(t.tolist() for t in sample_quadlets(y, 50 * len(valid), level=level))))
        assert got == valid


def test_order_preservation_equals_the_fraction_over_all_quadlets():
    y = random_tree(3)
    x = torch.randn(len(y), 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = torch.cdist(x, x)
    valid = all_quadlets(y)
    exact = sum(bool(d[q, p] < d[q, i] < d[q, m]) for q, p, i, m in valid) / len(valid)
    assert order_preservation(x, y, samples=400_000) == pytest.approx(exact, abs=0.004)
    # squared euclidean keeps the order of euclidean; dot does not
    assert order_preservation(x, y, "squared_euclidean", samples=1000) == order_preservation(x, y, samples=1000)
    dp, di, dn = quadlet_distances(x, y, "dot", samples=10)
    q, p, i, m = sample_quadlets(y, 10)
    assert torch.allclose(dp, -(x[q] * x[p]).sum(1)) and torch.allclose(dn, -(x[q] * x[m]).sum(1))


def test_perfect_and_reversed_hierarchies():
    # children of one parent on a small circle, parents far apart: every quadlet is in order
    y = torch.tensor([[a, c] for a in range(3) for c in range(3) for _ in range(2)])
    x = (y[:, :1] * 100.0 + y[:, 1:] * 5.0).double() + 0.01 * torch.arange(len(y)).unsqueeze(1) % 0.02
    assert order_preservation(x, y) == 1.0
    assert order_preservation(torch.zeros(len(y), 2), y) == 0.0  # ties are not in order


def test_no_quadlet_and_bad_input():
    y = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0]])  # no intermediate anywhere
    assert all(t.numel() == 0 for t in sample_quadlets(y))
    assert order_preservation(torch.randn(4, 2), y) != order_preservation(torch.randn(4, 2), y)  # NaN
    with pytest.raises(ValueError, match="labels: expected hierarchical"):
        sample_quadlets(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="level: expected an integer in \\[0, 0\\]"):
        sample_quadlets(y, level=1)
    with pytest.raises(ValueError, match="samples: expected an integer >= 1"):
        sample_quadlets(y, samples=0)
    with pytest.raises(ValueError, match=r"embeddings: expected 4 rows \(the labels' rows\), got 3"):
        order_preservation(torch.randn(3, 2), y)


def test_evaluate_reports_it_only_for_hierarchies_without_groups():
    y = random_tree(5)
    x = torch.randn(len(y), 4, generator=torch.Generator().manual_seed(1))
    scores = dm.evaluate(x, y, nmi=False)
    assert scores["order_preservation"] == order_preservation(x, y)
    assert "order_preservation" not in dm.evaluate(x, y[:, 1], nmi=False)
    assert "order_preservation" not in dm.evaluate(x, y, groups=torch.arange(len(y)), nmi=False)


def test_graded_ndcg_scores_queries_that_share_only_a_parent():
    # every finest class a single item: no query has a relevant item at the finest level, yet each
    # shares its parent with one other item. Points 0, 5, 6, 11; labels (0,0) (0,1) (1,2) (1,3); gains
    # are shared levels (1 for the parent's other item). Query 5 ranks 6 (gain 0) before 0 (gain 1):
    # NDCG@2 = (1 / log2 3) / 1; likewise query 6. Queries 0 and 11 find their parent-mate first.
    x = torch.tensor([[0.0], [5.0], [6.0], [11.0]])
    y = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    s = dm.evaluate(x, y, ks=(1, 2), nmi=False)
    g = 1 / math.log2(3)
    assert s["ndcg_at_1"] == pytest.approx(0.5) and s["ndcg_at_2"] == pytest.approx((1 + g + g + 1) / 4)
    assert "map_at_r" not in s and s["queries_without_relevant"] == 4
    # mixed: points 0, 1, 6, 10 with labels (0,0) (0,0) (0,1) (1,2). Queries 0 and 1 rank their
    # class-mate (gain 2) then 6 (gain 1): NDCG 1. Query 6 has no class-mate but two parent-mates, and
    # ranks 10 (gain 0) first: NDCG@2 = (1/log2 3) / (1 + 1/log2 3). Query 10 shares nothing: excluded.
    x = torch.tensor([[0.0], [1.0], [6.0], [10.0]])
    y = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2]])
    s = dm.evaluate(x, y, ks=(1, 2), nmi=False)
    assert s["ndcg_at_2"] == pytest.approx((1 + 1 + g / (1 + g)) / 3)
    assert s["ndcg_at_1"] == pytest.approx(2 / 3) and s["map_at_r"] == 1.0
