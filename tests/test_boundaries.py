"""Behaviour at exact ties of the strict / non-strict inequalities of the miners and of order
preservation. Random embeddings never produce ties, so each case below is hand-built: points on a
line with integer coordinates, or axis unit vectors, in float64, so that every distance and every
threshold is exactly representable and the tie is exact. Expected results are worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

import deepmetric as dm
from deepmetric.evaluation.hierarchy import order_preservation
from deepmetric.functional import mining as FM

f64 = torch.float64


def line(*xs):
    """1-D points (an (N, 1) float64 tensor); with a query at 0, the euclidean distance is |x|."""
    return torch.tensor([[float(x)] for x in xs], dtype=f64)


def pairs_of(a, b):
    return sorted(zip(a.tolist(), b.tolist()))


def test_semi_hard_quadlets_ties():
    # Semi-hard quadlet: D(q,p) < D(q,i) < D(q,n) and (D(q,i) < D(q,p) + m1 or D(q,n) < D(q,i) + m2),
    # every inequality strict (docstring of semi_hard_quadlets / QuadletMiner; negatives in the open
    # interval (D(q,i), D(q,i) + m2) when the first margin holds). pml has no quadlet miner.
    # One query at 0, labels (class, sub-class); euclidean, m1 = 1, m2 = 2:
    #   ref 0: p   at 1    (0, 0)  D = 1
    #   ref 1: i_a at 2    (0, 1)  D = 2 = D(q,p) + m1: first margin NOT violated (tie)
    #   ref 2: i_b at -1   (0, 1)  D = 1 = D(q,p): not ordered, no quadlet (tie)
    #   ref 3: i_c at 1.5  (0, 1)  D = 1.5 < D(q,p) + m1: first margin violated
    #   ref 4: n   at -2   (1, 0)  D = 2 (= D(q,i_a))
    #   ref 5: n   at 3    (1, 0)  D = 3
    #   ref 6: n   at 4    (1, 0)  D = 4 (= D(q,i_a) + m2)
    #   ref 7: n   at 5    (1, 0)  D = 5
    # i_a: negatives with 2 < D < 2 + 2 = 4            -> {5}
    # i_b: none (D(q,p) < D(q,i) fails at equality)
    # i_c: every negative with D > 1.5                 -> {4, 5, 6, 7}
    # Flips: `d_qi <= d_qp + m1` gives i_a {5, 6, 7}; hi with right=True gives i_a {5, 6};
    # lo with right=False gives i_a {4, 5}; `D(q,p) <= D(q,i)` adds i_b quadlets.
    q = line(0)
    ref = line(1, 2, -1, 1.5, -2, 3, 4, 5)
    labels = torch.tensor([[0, 0]])
    ref_labels = torch.tensor([[0, 0], [0, 1], [0, 1], [0, 1], [1, 0], [1, 0], [1, 0], [1, 0]])
    miner = dm.mining.create("quadlet", strategy="semi-hard", margin1=1.0, margin2=2.0, distance="euclidean")
    out = miner(q, labels, ref, ref_labels)
    got = sorted(zip(out.q.tolist(), out.p.tolist(), out.i.tolist(), out.n.tolist()))
    assert got == [(0, 0, 1, 5), (0, 0, 3, 4), (0, 0, 3, 5), (0, 0, 3, 6), (0, 0, 3, 7)]


def test_semi_hard_quadlets_with_infinite_distances():
    # Distances overflow to inf in float16 (norms of about 300). One query row, margin1 = 1, margin2 = 2:
    #   col 0: p   D = 1
    #   col 1: i   D = inf       (not below any negative: no quadlet)
    #   col 2: i   D = 1.5 < D(q,p) + m1: first margin violated, every negative beyond 1.5 qualifies
    #   col 3: n   D = 3
    #   col 4: n   D = inf       (D(q,i) = 1.5 < inf: ordered)
    # -> (0, 0, 2, 3) and (0, 0, 2, 4). Sorting the intermediates by distance with the other columns
    # at inf put column 0 (not an intermediate, column below 1) among them: (0, 0, 0, n) came out.
    d = torch.tensor([[1.0, math.inf, 1.5, 3.0, math.inf]])
    pos = torch.tensor([[True, False, False, False, False]])
    inter = torch.tensor([[False, True, True, False, False]])
    neg = torch.tensor([[False, False, False, True, True]])
    out = FM.semi_hard_quadlets(d, pos, inter, neg, margin1=1.0, margin2=2.0)
    assert sorted(zip(out.q.tolist(), out.p.tolist(), out.i.tolist(), out.n.tolist())) == [(0, 0, 2, 3), (0, 0, 2, 4)]


@pytest.mark.parametrize("distance, pos_margin, neg_margin", [("dot", 0.0, 0.0), ("cosine", 1.0, 1.0)])
def test_pair_margin_ties(distance, pos_margin, neg_margin):
    # Positive pairs kept if S < pos_margin, negatives if S > neg_margin (similarity, "dot");
    # D > pos_margin and D < neg_margin (distances): strict, as pml's PairMarginMiner
    # (`pos_pair < pos_margin if is_inverted else pos_pair > pos_margin`, and the reverse for negatives).
    # Query (1, 0), label 0; references (unit vectors):
    #   ref 0: (0, 1)  label 0  dot 0 = pos_margin (tie)  cosine distance 1 = pos_margin (tie): dropped
    #   ref 1: (-1, 0) label 0  dot -1 < 0                cosine distance 2 > 1: kept
    #   ref 2: (0, -1) label 1  dot 0 = neg_margin (tie)  cosine distance 1 = neg_margin (tie): dropped
    #   ref 3: (1, 0)  label 1  dot 1 > 0                 cosine distance 0 < 1: kept
    # -> positive pairs [(0, 1)], negative pairs [(0, 3)]; a non-strict comparison adds ref 0 / ref 2.
    q = torch.tensor([[1.0, 0.0]], dtype=f64)
    ref = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]], dtype=f64)
    miner = dm.mining.create("pair-margin", pos_margin=pos_margin, neg_margin=neg_margin, distance=distance)
    out = miner(q, torch.tensor([0]), ref, torch.tensor([0, 0, 1, 1]))
    assert pairs_of(out.a1, out.p) == [(0, 1)]
    assert pairs_of(out.a2, out.n) == [(0, 3)]


def test_distance_weighted_zero_weight_at_nonzero_loss_cutoff():
    # Weight 0 where D(a,n) >= nonzero_loss_cutoff (docstring), i.e. kept only if D < cutoff, as pml's
    # `mat < self.nonzero_loss_cutoff`. Dimension n = 3, so log w = -(n-2) log d = -log d.
    # Query (1,0,0), label 0; nonzero_loss_cutoff = 2:
    #   ref 0: (1, 0, 0)   label 0  positive
    #   ref 1: (0, 1, 0)   label 1  D = sqrt 2 < 2       weight 1/sqrt 2
    #   ref 2: (-1, 0, 0)  label 1  D = 2 = cutoff (tie) weight 0
    # -> probabilities [0, 1, 0] (with `<=`: ref 2 would get 0.5 / (0.5 + 0.707) = 0.41).
    q = torch.tensor([[1.0, 0.0, 0.0]], dtype=f64)
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], dtype=f64)
    dist = dm.distances.euclidean(q, ref)
    assert dist.tolist() == [[0.0, math.sqrt(2.0), 2.0]]
    neg = torch.tensor([[False, True, True]])
    probs = FM.distance_weighted_probabilities(dist, neg, dim=3, cutoff=0.5, nonzero_loss_cutoff=2.0)
    assert probs.tolist() == [[0.0, 1.0, 0.0]]
    # Through the miner: 32 copies of the positive give 32 draws, all of them ref 1 (index 32).
    ref = torch.cat([ref[:1].repeat(32, 1), ref[1:]])
    ref_labels = torch.tensor([0] * 32 + [1, 1])
    miner = dm.mining.create("distance-weighted", cutoff=0.5, nonzero_loss_cutoff=2.0, seed=0)
    out = miner(q, torch.tensor([0]), ref, ref_labels)
    assert out.n.tolist() == [32] * 32


def test_batch_easy_hard_closed_ranges():
    # allowed_pos_range / allowed_neg_range keep values in the closed [low, high] (docstring), as pml
    # (which masks `mat > high | mat < low`). Query at 0, label 0; euclidean; both ranges (2, 3):
    #   positives: ref 0..3 at 1, 2, 3, 4        (D = 1, 2, 3, 4)  -> in range: ref 1 (D=2), ref 2 (D=3)
    #   negatives: ref 4..7 at -1, -2, -3, -4    (D = 1, 2, 3, 4)  -> in range: ref 5 (D=2), ref 6 (D=3)
    # Every chosen pair sits on a bound, so flipping any of the four comparisons changes the result.
    q = line(0)
    ref = line(1, 2, 3, 4, -1, -2, -3, -4)
    labels, ref_labels = torch.tensor([0]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])

    def mine(pos_strategy, neg_strategy):
        miner = dm.mining.create("batch-easy-hard", pos_strategy=pos_strategy, neg_strategy=neg_strategy,
                                 allowed_pos_range=(2.0, 3.0), allowed_neg_range=(2.0, 3.0))
        return miner(q, labels, ref, ref_labels)

    # "all" sides: every pair in range (the range on an "all" side is deepmetric's documented choice)
    out = mine("all", "all")
    assert pairs_of(out.a1, out.p) == [(0, 1), (0, 2)]
    assert pairs_of(out.a2, out.n) == [(0, 5), (0, 6)]
    # easy positive = closest in range = D 2 (low bound); easy negative = farthest in range = D 3 (high)
    out = mine("easy", "easy")
    assert (out.a.tolist(), out.p.tolist(), out.n.tolist()) == ([0], [1], [6])
    # hard positive = farthest in range = D 3 (high bound); hard negative = closest = D 2 (low bound)
    out = mine("hard", "hard")
    assert (out.a.tolist(), out.p.tolist(), out.n.tolist()) == ([0], [2], [5])


def test_batch_easy_hard_semihard_strict():
    # Semi-hard is strict on both sides (docstring: D_an > D_ap*, D_ap < D_an*), as pml, which masks
    # `mat <= threshold` (min per row) and `mat >= threshold` (max per row). Query at 0, label 0.
    # pos "easy", neg "semihard": positive ref 0 at 2 (D 2); negatives ref 1 at -2 (D 2, tie), ref 2 at 3
    #   (D 3) -> p* = ref 0, n = closest with D > 2 = ref 2 (a `>=` would pick ref 1).
    miner = dm.mining.create("batch-easy-hard", pos_strategy="easy", neg_strategy="semihard")
    out = miner(line(0), torch.tensor([0]), line(2, -2, 3), torch.tensor([0, 1, 1]))
    assert (out.a.tolist(), out.p.tolist(), out.n.tolist()) == ([0], [0], [2])
    # pos "semihard", neg "hard": negative ref 0 at -2 (D 2); positives ref 1 at 1 (D 1), ref 2 at 2
    #   (D 2, tie) -> n* = ref 0, p = farthest with D < 2 = ref 1 (a `<=` would pick ref 2).
    miner = dm.mining.create("batch-easy-hard", pos_strategy="semihard", neg_strategy="hard")
    out = miner(line(0), torch.tensor([0]), line(-2, 1, 2), torch.tensor([1, 0, 0]))
    assert (out.a.tolist(), out.p.tolist(), out.n.tolist()) == ([0], [1], [0])


def test_uniform_histogram_bin_edges():
    # Bins [e_k, e_{k+1}), the last one closed (docstring), as pml's filter_by_bin
    # (`s <= d < e`, `d <= e` for the last bin). Query at 0, label 0; num_bins = 4; euclidean.
    #   positives at 1, 2, 5 (D 1, 2, 5): edges 1, 2, 3, 4, 5; bins: D1 -> 0, D2 -> 1 (on e_1), D5 -> 3
    #     -> 3 non-empty bins of one pair each: every pair drawn twice, deterministically.
    #     (edges taken as (e_k, e_{k+1}] would put D2 in bin 0: 2 bins, 4 pairs.)
    #   negatives at -1, -4, -5 (D 1, 4, 5): edges 1, 2, 3, 4, 5; bins: D1 -> 0, D4 -> 3 (on e_3), D5 -> 3
    #     -> 2 non-empty bins, 4 pairs; bin 0 gives ref 3 (D 1) twice, bin 3 two draws of ref 4 / ref 5.
    #     ((e_k, e_{k+1}] would put D4 in bin 2: 3 bins, 6 pairs.)
    q = line(0)
    ref = line(1, 2, 5, -1, -4, -5)
    miner = dm.mining.create("uniform-histogram", num_bins=4, pos_per_bin=2, neg_per_bin=2, seed=0)
    out = miner(q, torch.tensor([0]), ref, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert out.a1.tolist() == [0] * 6 and out.p.tolist() == [0, 0, 1, 1, 2, 2]
    assert out.a2.tolist() == [0] * 4
    assert out.n.tolist()[:2] == [3, 3] and set(out.n.tolist()[2:]) <= {4, 5}
    # the bins directly (the functional form, distances in pair order)
    dist = torch.tensor([[1.0, 2.0, 5.0, 1.0, 4.0, 5.0]], dtype=f64)
    pos = torch.tensor([[True, True, True, False, False, False]])
    out = FM.uniform_histogram_pairs(dist, pos, ~pos, num_bins=4, pos_per_bin=1, neg_per_bin=1,
                                     generator=torch.Generator().manual_seed(0))
    assert out.p.tolist() == [0, 1, 2] and len(out.n) == 2 and out.n.tolist()[0] == 3


# Order preservation: a quadlet is preserved iff d(q,p) < d(q,i) < d(q,n), ties counting as not
# preserved (module docstring). Labels: a0, a1 in sub-class (0, 0), b in (0, 1), n in (1, 0), so the
# queries are a0 and a1 only (b and n have no positive) and every sampled quadlet is (a, a', b, n).
# Squared euclidean distances, all integers:
#   "dp == di":  a0 (1,0,0), a1 (0,1,0), b (0,0,1), n (-1,-1,-1): dp = di = 2, dn = 6  -> 0.0
#   "di == dn":  a0 (1,0,0), a1 (-1,0,0), b (0,2,0), n (0,-2,0):  dp = 4, di = dn = 5  -> 0.0
#   control:     a0 (1,0,0), a1 (-1,0,0), b (0,2,0), n (0,-3,0):  dp = 4, di = 5, dn = 10 -> 1.0
# Flipping either `<` to `<=` turns the matching tie case into 1.0.
@pytest.mark.parametrize("points, expected", [
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]], 0.0),
    ([[1, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0]], 0.0),
    ([[1, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -3, 0]], 1.0),
], ids=["dp==di", "di==dn", "strict"])
def test_order_preservation_ties(points, expected):
    x = torch.tensor(points, dtype=f64)
    y = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0]])
    assert order_preservation(x, y, distance="squared_euclidean", samples=256) == expected
