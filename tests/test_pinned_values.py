"""Values the mutation review found unchecked: stable tie orders, clamps at the edges of ranges, strict
inequalities at exact ties, large distances and degenerate sizes. Each input is small and hand-built, and
each expected value is worked out by hand in the comment above its assertion."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from deepmetric.evaluation import hierarchy
from deepmetric.evaluation.hashing import hashing_scores
from deepmetric.evaluation.ranking import count_relevant, gap_at_k
from deepmetric.evaluation.verification import kfold_accuracy
from deepmetric.functional import losses as FL
from deepmetric.functional import mining as FM
from deepmetric.functional import proxy as FP

T, F = True, False


# ----------------------------------------------------------------------------- 1. gap_at_k ties

def test_gap_at_k_pooled_ties_keep_item_order():
    # 50 items x 1 class, every score 0.5, only the last item positive, k = 1: the pooled ranking of the
    # 50 tied top-1 scores keeps item order, so the positive is at rank 50: GAP = P(50) * 1 / 1 = 1/50 = 0.02
    scores = torch.full((50, 1), 0.5)
    targets = torch.zeros(50, 1, dtype=torch.bool)
    targets[-1] = True
    assert gap_at_k(scores, targets, k=1) == pytest.approx(1 / 50)


def test_gap_at_k_per_item_ties_keep_class_order():
    # 1 item, 40 classes all scored 0.5, only class 0 positive, k = 1: the item's top-1 among the tied
    # classes is class 0 (class order), a positive at rank 1: GAP = P(1) * 1 / 1 = 1.0
    scores = torch.full((1, 40), 0.5)
    targets = torch.zeros(1, 40, dtype=torch.bool)
    targets[0, 0] = True
    assert gap_at_k(scores, targets, k=1) == 1.0


# ----------------------------------------------------------------------------- 2. stable re-ranking orders

def test_hashing_real_rerank_ties_in_database_order():
    # 40 database items with identical binary codes (Hamming 0 to the query) and identical real codes
    # (squared distance 4 * 1^2 = 4 each): the ranking is database order, the one relevant item (the last)
    # is at rank 40: AP = P(40) * 1 / 1 = 1/40 = 0.025
    labels = torch.ones(40, dtype=torch.long)
    labels[-1] = 0
    scores = hashing_scores(torch.ones(1, 8), torch.tensor([0]), torch.ones(40, 8), labels,
                            query_real=torch.ones(1, 4), db_real=torch.zeros(40, 4), precision_ns=(1,), radius=None)
    assert scores["map"] == pytest.approx(1 / 40)


def test_semi_hard_quadlets_tied_distances_come_out_by_column():
    # One query row: column 0 the positive at D = 0.1, columns 1..20 intermediates all at D = 0.5, columns
    # 21..40 negatives all at D = 0.9. margin1 = 0.5: D(q,i) = 0.5 < 0.1 + 0.5 = 0.6, so the first margin is
    # violated and every negative with D(q,n) > 0.5 qualifies: 20 x 20 = 400 quadlets. Docstring order: by
    # (q, p), then intermediates and negatives by increasing distance, ties by column:
    # i = 1,1,...(20 times), 2,2,..., 20; n = 21..40 for each i.
    d = torch.tensor([[0.1] + [0.5] * 20 + [0.9] * 20])
    pos = torch.zeros(1, 41, dtype=torch.bool)
    pos[0, 0] = True
    inter = torch.zeros(1, 41, dtype=torch.bool)
    inter[0, 1:21] = True
    neg = torch.zeros(1, 41, dtype=torch.bool)
    neg[0, 21:] = True
    quads = FM.semi_hard_quadlets(d, pos, inter, neg, margin1=0.5, margin2=0.2)
    assert quads.q.tolist() == [0] * 400
    assert quads.p.tolist() == [0] * 400
    assert quads.i.tolist() == [i for i in range(1, 21) for _ in range(20)]
    assert quads.n.tolist() == list(range(21, 41)) * 20


# ----------------------------------------------------------------------------- 3. histogram loss at s = 1

def _histogram_grad(s_pos, s_neg):
    sim = torch.tensor([[s_pos, s_neg]], requires_grad=True)
    loss = FL.histogram_loss(sim, torch.tensor([[T, F]]), torch.tensor([[F, T]]), num_bins=2)
    loss.backward()
    return float(loss.detach()), sim.grad[0].tolist()


def test_histogram_loss_gradient_at_the_last_node():
    # num_bins = 2: nodes -1, 0, 1 (Delta = 1), u = s + 1, index = min(floor(u), 1), so s in [0, 1] splits
    # between node 1 (weight 1 - s) and node 2 (weight s): h+ = [0, 1 - s_p, s_p], h- = [0, 1 - s_n, s_n].
    # Phi+ = cumsum h+ = [0, 1 - s_p, 1], L = (1 - s_n)(1 - s_p) + s_n (one pair each, normaliser 1).
    # dL/ds_p = -(1 - s_n), dL/ds_n = 1 - (1 - s_p) = s_p.
    # s_p = 1, s_n = 0: L = 0, gradient [-1, +1]
    value, grad = _histogram_grad(1.0, 0.0)
    assert value == pytest.approx(0.0, abs=1e-6)
    assert grad == pytest.approx([-1.0, 1.0], abs=1e-6)
    # s_p = s_n = 1: L = 0 * 0 + 1 = 1, gradient [-(1 - 1), 1] = [0, +1]
    value, grad = _histogram_grad(1.0, 1.0)
    assert value == pytest.approx(1.0, abs=1e-6)
    assert grad == pytest.approx([0.0, 1.0], abs=1e-6)


# ----------------------------------------------------------------------------- 4. hardest negative, large distances

def test_batch_hard_and_hardest_only_with_distances_above_a_thousand():
    # D = [0, 5000, 2000], column 0 the positive, 1 and 2 negatives: the closest negative is column 2 (2000 <
    # 5000), whatever the size of the distances (the positive column must not compete).
    d = torch.tensor([[0.0, 5000.0, 2000.0]])
    pos, neg = torch.tensor([[T, F, F]]), torch.tensor([[F, T, T]])
    t = FM.batch_hard_triplets(d, pos, neg)
    assert (t.a.tolist(), t.p.tolist(), t.n.tolist()) == ([0], [0], [2])
    # margin 6000: m = 5000 - 0 and 2000 - 0 are both <= 6000, both kept; hardest_only keeps the closest, n = 2
    t = FM.margin_triplets(d, pos, neg, margin=6000.0, hardest_only=True)
    assert (t.a.tolist(), t.p.tolist(), t.n.tolist()) == ([0], [0], [2])


# ----------------------------------------------------------------------------- 5. 256-bit codes

def test_hashing_256_bit_codes_do_not_wrap():
    # Query all +1 (256 bits); database [all -1 (irrelevant): Hamming 256, all +1 but bit 0 (relevant): Hamming 1].
    # Ranking: relevant first. AP = 1, P@1 = 1; within radius 2 only the relevant item (1 <= 2 < 256):
    # precision 1/1 = 1, recall 1/1 = 1.
    db = torch.stack([-torch.ones(256), torch.ones(256)])
    db[1, 0] = -1
    scores = hashing_scores(torch.ones(1, 256), torch.tensor([0]), db, torch.tensor([1, 0]), precision_ns=(1,))
    assert scores["map"] == 1.0
    assert scores["precision_at_1"] == 1.0
    assert scores["precision_within_radius_2"] == 1.0
    assert scores["recall_within_radius_2"] == 1.0


# ----------------------------------------------------------------------------- 6. distance weighting at the antipode

def test_distance_weighted_probabilities_at_the_antipode():
    # dim 4, cutoff 0.5, both columns negatives below nonzero_loss_cutoff 3:
    # log w = -(n-2) log d - ((n-3)/2) log(max(1 - d^2/4, eps)), float32 eps = 2^-23.
    # d = 2: 1 - 4/4 = 0 -> eps, log w = -2 ln 2 + (23/2) ln 2 = 9.5 ln 2, w = 2^9.5 = 724.0773
    # d = 1: log w = -0 - (1/2) ln 0.75, w = 0.75^-1/2 = 1.1547005
    # softmax: 724.0773 / 725.2320 = 0.9984078, 1.1547005 / 725.2320 = 0.0015922
    probs = FM.distance_weighted_probabilities(torch.tensor([[2.0, 1.0]]), torch.tensor([[T, T]]), dim=4,
                                               nonzero_loss_cutoff=3.0)
    assert bool(torch.isfinite(probs).all())
    assert probs[0].tolist() == pytest.approx([0.9984078, 0.0015922], abs=1e-6)


# ----------------------------------------------------------------------------- 7. overflow guards

def test_multi_similarity_loss_far_below_base_with_large_beta():
    # One anchor, no positive, negatives at S = -1, base 0.5, beta 100:
    # L = 1/100 log(1 + 2 exp(100 (-1 - 0.5))) = log(1 + 2 e^-150) / 100 ~ 2 e^-150 / 100 ~ 1.4e-67 -> 0 in float32
    loss = FL.multi_similarity_loss(torch.tensor([[-1.0, -1.0]]), torch.tensor([[F, F]]), torch.tensor([[T, T]]),
                                    beta=100.0)
    assert math.isfinite(float(loss))
    assert abs(float(loss)) < 1e-30


def test_proxy_anchor_loss_with_a_large_alpha():
    # x = proxies = I_2, labels [0, 1], margin 0.1, alpha 128: cos(x_i, p_j) = [i == j].
    # Positive part, per proxy: log(1 + exp(-128 (1 - 0.1))) = log(1 + e^-115.2) ~ 1e-50 -> 0.
    # Negative part, per proxy: one item at cos 0: log(1 + exp(128 * 0.1)) = log(1 + e^12.8)
    #   = 12.8 + log(1 + e^-12.8) = 12.8000028; mean over the 2 proxies: 12.8000028. L = 0 + 12.8000028.
    loss = FP.proxy_anchor_loss(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), margin=0.1, alpha=128.0)
    assert float(loss) == pytest.approx(12.8000028, rel=1e-6)


# ----------------------------------------------------------------------------- 8. empty negative range

def test_semi_hard_quadlets_with_zero_second_margin_is_empty():
    # D = [0, .1, .5, .5, .9], p = 1, i = 2, negatives {3, 4}, margin1 = 0.1, margin2 = 0:
    # D(q,i) = 0.5 < D(q,p) + m1 = 0.2 is false, so a negative needs 0.5 < D(q,n) < 0.5 + 0: none (3 is at 0.5,
    # not > 0.5; 4 at 0.9 is not < 0.5). Empty result, no error.
    quads = FM.semi_hard_quadlets(torch.tensor([[0.0, 0.1, 0.5, 0.5, 0.9]]), torch.tensor([[F, T, F, F, F]]),
                                  torch.tensor([[F, F, T, F, F]]), torch.tensor([[F, F, F, T, T]]),
                                  margin1=0.1, margin2=0.0)
    assert [t.numel() for t in quads] == [0, 0, 0, 0]


# ----------------------------------------------------------------------------- 9. multi-label counts with groups

def test_count_relevant_multilabel_with_groups_of_one_query():
    # Query labels {0}; gallery {0} (group 0, the query's: left out) and {0, 1} (group 1, shares label 0): 1
    counts = count_relevant(torch.tensor([[T, F]]), torch.tensor([[T, F], [T, T]]), False,
                            torch.tensor([0]), torch.tensor([0, 1]))
    assert counts.tolist() == [1]


# ----------------------------------------------------------------------------- 10-11. degenerate sizes

def test_normalized_softmax_loss_batch_of_one():
    # x = [1, 0], weights I_2, label 0, temperature 1: logits [1, 0],
    # L = -log(e / (e + 1)) = log(1 + e^-1) = 0.3132617 (mean over one row)
    loss = FP.normalized_softmax_loss(torch.tensor([[1.0, 0.0]]), torch.eye(2), torch.tensor([0]), temperature=1.0)
    assert float(loss) == pytest.approx(0.3132617, rel=1e-6)


def test_soft_triple_regularizer_one_centre_per_class_is_zero():
    # K = 1: no pair t < s of centres in any class, the regulariser is exactly 0 (the docstring's case)
    assert float(FP.soft_triple_regularizer(torch.eye(3), 1)) == 0.0


# ----------------------------------------------------------------------------- 12. uniform fallback

def test_distance_weighted_uniform_fallback_for_one_far_negative():
    # A single negative at D = 1.5 >= nonzero_loss_cutoff 1.4: no weight, so uniform over the 1 negative:
    # [0, 1/1] = [0, 1] (the row sums to 1)
    probs = FM.distance_weighted_probabilities(torch.tensor([[0.0, 1.5]]), torch.tensor([[F, T]]), dim=4)
    assert probs.tolist() == [[0.0, 1.0]]


# ----------------------------------------------------------------------------- 13-14. order preservation

def test_sample_quadlets_follow_the_seed():
    # 60 items, coarse = i % 3, fine = i % 6: each query has 9 positives, 10 intermediates and 40 negatives,
    # 60 * 3600 = 216000 quadlets; two independent draws of 50 coincide with probability <= 216000^-50 ~ 0.
    # Same seed: the same sample (and the same order preservation); another seed: another sample.
    labels = torch.stack([torch.arange(60) % 3, torch.arange(60) % 6], 1)
    first, again, other = (hierarchy.sample_quadlets(labels, samples=50, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    assert hierarchy.order_preservation(x, labels, samples=50, seed=3) == \
        hierarchy.order_preservation(x, labels, samples=50, seed=3)


def test_quadlet_distances_cosine():
    # Rows 0 and 1 (fine class [0, 0]) are each other's positive, row 2 ([0, 1]) the only intermediate, row 3
    # ([1, 2]) the only negative. x_q = x_p = [1, 0], x_i = [0, 1], x_n = [-1, 0]:
    # cosine distance 1 - cos: d(q,p) = 1 - 1 = 0, d(q,i) = 1 - 0 = 1, d(q,n) = 1 - (-1) = 2
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2]])
    dp, di, dn = hierarchy.quadlet_distances(x, y, "cosine", samples=1)
    assert (dp.tolist(), di.tolist(), dn.tolist()) == ([0.0], [1.0], [2.0])


# ----------------------------------------------------------------------------- 15. strict inequalities (as PML)

def test_multi_similarity_pairs_at_exact_ties_keep_nothing():
    # S_pos = 0.75 (column 0), S_neg = 0.5 (column 1), epsilon 0.25 (all exact in binary):
    # positive kept iff 0.75 - 0.25 = 0.5 < max S_neg = 0.5: no; negative kept iff 0.5 + 0.25 = 0.75 >
    # min S_pos = 0.75: no. Nothing kept.
    pairs = FM.multi_similarity_pairs(torch.tensor([[0.75, 0.5]]), torch.tensor([[T, F]]), torch.tensor([[F, T]]),
                                      epsilon=0.25)
    assert [t.numel() for t in pairs] == [0, 0, 0, 0]


def test_angular_triplets_at_exactly_the_angle_keep_nothing():
    # a = [-1, 0], p = [1, 0], n = [0, 1]: x_c = [0, 0], ||x_a - x_p|| = 2, ||x_n - x_c|| = 1,
    # angle = atan(2 / (2 * 1)) = atan(1) = pi/4, not > pi/4: no triplet (also for a = 1, p = 0)
    x = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    g = x @ x.T
    pos = torch.tensor([[F, T, F], [T, F, F], [F, F, F]])
    neg = torch.tensor([[F, F, T], [F, F, T], [T, T, F]])
    t = FM.angular_triplets(g, g, pos, neg, angle=math.pi / 4)
    assert [v.numel() for v in t] == [0, 0, 0]


# ----------------------------------------------------------------------------- 16. k-fold one-kind warning

def test_kfold_one_kind_warning_threshold():
    # 10 folds of 10, 50 same of 100 (p = 0.5): fold 0 all different, folds 1-4 five same + five different,
    # folds 5-9 six same + four different. Fold 0's chance: p^10 + (1 - p)^10 = 2 * 0.5^10 = 1.95e-3 >= 1e-3:
    # no warning.
    d = np.arange(100) / 100.0
    same = np.array([0] * 10 + [1, 1, 1, 1, 1, 0, 0, 0, 0, 0] * 4 + [1, 1, 1, 1, 1, 1, 0, 0, 0, 0] * 5)
    assert same.sum() == 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfold_accuracy(d, same, n_folds=10)
    # 48 pairs sorted (24 same, then 24 different), 4 folds of 12 of one kind: chance 2 * 0.5^12 = 4.9e-4 < 1e-3
    with pytest.warns(UserWarning, match=r"is_same: folds \[0, 1, 2, 3\] of the 4 contiguous folds hold only"):
        kfold_accuracy(np.arange(48) / 48.0, np.repeat([1, 0], 24), n_folds=4)
