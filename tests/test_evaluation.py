"""Evaluation: ranking metrics on hand-worked cases and against plain loops and pytorch-metric-learning,
clustering metrics against scikit-learn, protocols (query-in-gallery, separate sets, groups), bad input."""
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

import deepmetric as dm
from deepmetric.evaluation import clustering, ranking
from deepmetric.labels import same_mask

logging.getLogger("PML").setLevel(logging.ERROR)


def line(*xs):
    return torch.tensor([[float(x)] for x in xs])


# ------------------------------------------------------------------ ranking functions on a relevance matrix

def test_ranking_functions_hand_worked():
    # query 0: T F T F with R = 2 relevant items in the gallery; query 1: F T F F with R = 3 (two of
    # them ranked beyond the top 4)
    rel = torch.tensor([[True, False, True, False], [False, True, False, False]])
    n_rel = torch.tensor([2, 3])
    assert ranking.precision_at_1(rel).tolist() == [1.0, 0.0]
    assert ranking.recall_at_k(rel, 1).tolist() == [1.0, 0.0]
    assert ranking.recall_at_k(rel, 2).tolist() == [1.0, 1.0]
    assert ranking.precision_at_k(rel, 2).tolist() == [0.5, 0.5]
    assert ranking.precision_at_k(rel, 4).tolist() == [0.5, 0.25]
    # R-precision: q0 top 2 = T F -> 1/2; q1 top 3 = F T F -> 1/3
    assert ranking.r_precision(rel, n_rel).tolist() == pytest.approx([1 / 2, 1 / 3])
    # MAP@R: q0 (1/2)(P(1) = 1) = 1/2 (the hit at rank 3 is beyond R); q1 (1/3)(P(2) = 1/2) = 1/6
    assert ranking.map_at_r(rel, n_rel).tolist() == pytest.approx([1 / 2, 1 / 6])
    # a query without relevant items (so no hit either) gives NaN (the caller excludes it)
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert math.isnan(ranking.map_at_r(none, torch.tensor([0]))[0])
    assert math.isnan(ranking.r_precision(none, torch.tensor([0]))[0])


def test_ranking_functions_errors():
    rel = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="k: rel has only 3 columns"):
        ranking.recall_at_k(rel, 4)
    with pytest.raises(ValueError, match="k: expected an integer"):
        ranking.precision_at_k(rel, 0)
    with pytest.raises(ValueError, match="rel: expected a bool"):
        ranking.precision_at_1(rel.float())
    with pytest.raises(ValueError, match="search with k >= max"):
        ranking.map_at_r(rel, torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="n_relevant: expected shape"):
        ranking.r_precision(rel, torch.tensor([1]))
    with pytest.raises(TypeError, match="n_relevant: expected integer"):
        ranking.r_precision(rel, torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        ranking.r_precision(rel, torch.tensor([1, -1]))


@st.composite
def relevance_cases(draw):
    q = draw(st.integers(1, 5))
    k = draw(st.integers(1, 7))
    rel = draw(st.lists(st.lists(st.booleans(), min_size=k, max_size=k), min_size=q, max_size=q))
    # a query has at least the hits it shows and at most k relevant items
    n_rel = [draw(st.integers(max(1, sum(row)), k)) for row in rel]
    return rel, n_rel


@settings(max_examples=60, deadline=None)
@given(relevance_cases())
def test_ranking_functions_equal_plain_loops(case):
    rel_list, n_list = case
    rel, n_rel = torch.tensor(rel_list), torch.tensor(n_list)
    k = rel.shape[1]
    for j, (row, r) in enumerate(zip(rel_list, n_list)):
        assert ranking.precision_at_1(rel)[j] == float(row[0])
        for kk in range(1, k + 1):
            assert ranking.recall_at_k(rel, kk)[j] == float(any(row[:kk]))
            assert ranking.precision_at_k(rel, kk)[j] == pytest.approx(sum(row[:kk]) / kk)
        assert ranking.r_precision(rel, n_rel)[j] == pytest.approx(sum(row[:r]) / r)
        ap, hits = 0.0, 0
        for i in range(1, r + 1):
            if row[i - 1]:
                hits += 1
                ap += hits / i
        assert ranking.map_at_r(rel, n_rel)[j] == pytest.approx(ap / r)


def random_labels(form, n, gen):
    if form == "flat":
        return torch.randint(0, 4, (n,), generator=gen)
    if form == "hierarchical":  # sub-class ids recur under different parents
        return torch.randint(0, 3, (n, 2), generator=gen)
    return torch.rand(n, 4, generator=gen) < 0.3  # multi-label, some items with no label at all


@pytest.mark.parametrize("form", ["flat", "hierarchical", "multilabel"])
def test_relevance_and_counts_equal_same_mask(form):
    gen = torch.Generator().manual_seed(0)
    ql, gl = random_labels(form, 23, gen), random_labels(form, 31, gen)
    idx = torch.randint(-1, 31, (23, 9), generator=gen)  # -1 = padded slot
    full = same_mask(ql, gl)
    expected = full.gather(1, idx.clamp_min(0)) & (idx >= 0)
    assert torch.equal(ranking.relevance(idx, ql, gl), expected)
    assert torch.equal(ranking.count_relevant(ql, gl), full.sum(1))
    # separate sets with groups
    qg, gg = torch.randint(0, 5, (23,), generator=gen), torch.randint(0, 5, (31,), generator=gen)
    keep = qg.unsqueeze(1) != gg.unsqueeze(0)
    assert torch.equal(ranking.count_relevant(ql, gl, False, qg, gg), (full & keep).sum(1))
    # query-in-gallery: self excluded, with and without groups
    full = same_mask(gl, gl)
    not_self = ~torch.eye(31, dtype=torch.bool)
    assert torch.equal(ranking.count_relevant(gl, gl, True), (full & not_self).sum(1))
    keep = gg.unsqueeze(1) != gg.unsqueeze(0)
    assert torch.equal(ranking.count_relevant(gl, gl, True, gg, gg), (full & not_self & keep).sum(1))


# ------------------------------------------------------------------ evaluate: hand-worked cases

C3 = 1 / math.log2(3)  # NDCG discount at rank 2 (rank 1: 1, rank 3: 1/log2(4) = 1/2)
E5 = 1 / math.log2(5)  # NDCG discount at rank 4
COUNTS = ("num_queries", "queries_without_relevant")

# Six points on a line (query-in-gallery; each query excludes itself):
#   item:   0    1    2    3    4    5
#   x:      0    1    3    4    7    20
#   label:  A    A    B    A    B    C
# q0 (A): 1 (d1, A), 2 (d3, B), 3 (d4, A), 4, 5   rel T F T F F, R=2: P@1 1, RP 1/2, MAP@R (1/2)(1) = 1/2
# q1 (A): 0 (d1, A), 2 (d2, B), 3 (d3, A), 4, 5   rel T F T F F, R=2: P@1 1, RP 1/2, MAP@R 1/2
# q2 (B): 3 (d1), 1 (d2), 0 (d3), 4 (d4, B), 5     rel F F F T F, R=1: P@1 0, RP 0,   MAP@R 0
# q3 (A): 2 (d1, B), 1 (d3, A), 4 (d3, B), 0 (d4, A), 5: items 1 and 4 tie at d=3, gallery order puts 1 first
#                                                 rel F T F T F, R=2: P@1 0, RP 1/2, MAP@R (1/2)(1/2) = 1/4
# q4 (B): 3 (d3), 2 (d4, B), 1 (d6), 0 (d7), 5     rel F T F F F, R=1: P@1 0, RP 0,   MAP@R 0
# q5 (C): no other C -> no relevant item: excluded from the means and counted.
# Means over the 5 scored queries: P@1 = 2/5, R@1 = 2/5, R@2 = (1+1+0+1+1)/5 = 4/5, R@4 = 5/5,
# RP = (1/2 + 1/2 + 0 + 1/2 + 0)/5 = 3/10, MAP@R = (1/2 + 1/2 + 0 + 1/4 + 0)/5 = 1/4.
# P@2 = (1/2 + 1/2 + 0 + 1/2 + 1/2)/5 = 2/5;  P@4 = (2 + 2 + 1 + 2 + 1)/4/5 = 2/5
# mAP@k = (1/min(k, R)) sum_{i<=k} P(i) rel(i):
#   @1: 1, 1, 0, 0, 0 -> 2/5
#   @2: 1/2, 1/2, 0, (1/2)/2 = 1/4, (1/2)/1 = 1/2 -> (7/4)/5 = 7/20
#   @4: (1 + 2/3)/2 = 5/6, 5/6, (1/4)/1 = 1/4, (1/2 + 2/4)/2 = 1/2, 1/2 -> (35/12)/5 = 7/12
# MRR: 1, 1, 1/4, 1/2, 1/2 -> (13/4)/5 = 13/20;  full-ranking mAP: every relevant item is in the top 4 -> 7/12
# NDCG (gain 1, discounts 1, C3, 1/2, E5; IDCG: R=2 -> 1 + C3, R=1 -> 1):
#   @1: 1, 1, 0, 0, 0 -> 2/5
#   @2: 1/(1+C3), 1/(1+C3), 0, C3/(1+C3), C3
#   @4: (1 + 1/2)/(1+C3) twice, E5, (C3 + E5)/(1+C3), C3
# Each query can retrieve 5 items, so of the default ks only 1, 2, 4 are reported.
LINE_X = line(0, 1, 3, 4, 7, 20)
LINE_Y = torch.tensor([0, 0, 1, 0, 1, 2])
LINE_SCORES = {
    "precision_at_1": 2 / 5,
    "recall_at_1": 2 / 5, "map_at_1": 2 / 5, "ndcg_at_1": 2 / 5,
    "recall_at_2": 4 / 5, "precision_at_2": 2 / 5, "map_at_2": 7 / 20, "ndcg_at_2": ((2 + C3) / (1 + C3) + C3) / 5,
    "recall_at_4": 1.0, "precision_at_4": 2 / 5, "map_at_4": 7 / 12,
    "ndcg_at_4": ((3 + C3 + E5) / (1 + C3) + E5 + C3) / 5,
    "r_precision": 3 / 10, "map_at_r": 1 / 4, "mrr": 13 / 20, "num_queries": 6, "queries_without_relevant": 1}


def test_hand_worked_query_in_gallery():
    for kw in (dict(), dict(chunk_size=1), dict(chunk_size=4)):
        scores = dm.evaluate(LINE_X, LINE_Y, nmi=False, **kw)
        assert scores == pytest.approx(LINE_SCORES)
        assert list(scores) == list(LINE_SCORES)
        assert all(type(v) is float for k, v in scores.items() if k not in COUNTS)
        assert type(scores["num_queries"]) is int
    scores = dm.evaluate(LINE_X, LINE_Y, nmi=False, full_map=True)
    assert scores == pytest.approx({**LINE_SCORES, "map": 7 / 12})


def test_mrr_searches_deeper_when_the_first_relevant_item_is_beyond_the_depth():
    # with ks = (1,) the search depth is max(1, R) = 2, but q2's only relevant item is at rank 4:
    # it is searched again deeper, so MRR stays (1 + 1 + 1/4 + 1/2 + 1/2)/5 = 13/20 and mAP@1 2/5
    for chunk_size in (1, 1024):
        scores = dm.evaluate(LINE_X, LINE_Y, nmi=False, ks=(1,), chunk_size=chunk_size)
        assert scores == pytest.approx({key: LINE_SCORES[key] for key in (
            "precision_at_1", "recall_at_1", "map_at_1", "ndcg_at_1", "r_precision", "map_at_r", "mrr") + COUNTS})
    # the full ranking: mAP over every rank (here 7/12) whatever the reported ks
    assert dm.evaluate(LINE_X, LINE_Y, nmi=False, ks=(1,), full_map=True)["map"] == pytest.approx(7 / 12)


def test_hand_worked_groups():
    # groups 0 0 1 2 3 4: items 0 and 1 may not retrieve each other.
    # q0 (A): 2 (B), 3 (A), 4, 5 -> F T F F (+1 padded slot), R=1 (item 3): P@1 0, RP 0, MAP@R 0, R@2 1
    # q1 (A): 2 (B), 3 (A), 4, 5 -> F T F F, R=1: P@1 0, RP 0, MAP@R 0, R@2 1
    # q2, q3, q4 as without groups: (0, 0, 0, R@2 0), (0, 1/2, 1/4, R@2 1), (0, 0, 0, R@2 1); q5 excluded
    # Means over 5: P@1 0, R@2 4/5, R@4 1, RP (1/2)/5 = 1/10, MAP@R (1/4)/5 = 1/20
    # P@2: 1/2, 1/2, 0, 1/2, 1/2 -> 2/5;  P@4: (1 + 1 + 1 + 2 + 1)/4/5 = 3/10
    # mAP@2: 1/2, 1/2, 0, 1/4, 1/2 -> 7/20;  mAP@4: 1/2, 1/2, 1/4, 1/2, 1/2 -> 9/20;  MRR the same 9/20
    # NDCG@2: C3, C3, 0, C3/(1+C3), C3;  NDCG@4: C3, C3, E5, (C3+E5)/(1+C3), C3
    scores = dm.evaluate(LINE_X, LINE_Y, groups=torch.tensor([0, 0, 1, 2, 3, 4]), nmi=False)
    assert scores == pytest.approx({
        "precision_at_1": 0.0, "recall_at_1": 0.0, "map_at_1": 0.0, "ndcg_at_1": 0.0,
        "recall_at_2": 4 / 5, "precision_at_2": 2 / 5, "map_at_2": 7 / 20, "ndcg_at_2": (3 * C3 + C3 / (1 + C3)) / 5,
        "recall_at_4": 1.0, "precision_at_4": 3 / 10, "map_at_4": 9 / 20,
        "ndcg_at_4": (3 * C3 + E5 + (C3 + E5) / (1 + C3)) / 5,
        "r_precision": 1 / 10, "map_at_r": 1 / 20, "mrr": 9 / 20, "num_queries": 6, "queries_without_relevant": 1})
    # groups 0 0 1 0 2 3: every A item shares a group with all other A items -> A queries have no
    # relevant item left. q2 (B): 3, 1, 0, 4 (B) -> F F F T, R=1; q4 (B): 3, 2 (B) -> F T, R=1.
    # Means over 2: P@1 0, R@1 0, R@2 1/2, R@4 1, RP 0, MAP@R 0; P@2 (0 + 1/2)/2, P@4 1/4;
    # mAP@2 (0 + 1/2)/2, mAP@4 (1/4 + 1/2)/2 = 3/8 = MRR; NDCG@2 (0 + C3)/2, NDCG@4 (E5 + C3)/2
    scores = dm.evaluate(LINE_X, LINE_Y, groups=np.array([0, 0, 1, 0, 2, 3]), nmi=False)
    assert scores == pytest.approx({
        "precision_at_1": 0.0, "recall_at_1": 0.0, "map_at_1": 0.0, "ndcg_at_1": 0.0,
        "recall_at_2": 1 / 2, "precision_at_2": 1 / 4, "map_at_2": 1 / 4, "ndcg_at_2": C3 / 2,
        "recall_at_4": 1.0, "precision_at_4": 1 / 4, "map_at_4": 3 / 8, "ndcg_at_4": (E5 + C3) / 2,
        "r_precision": 0.0, "map_at_r": 0.0, "mrr": 3 / 8, "num_queries": 6, "queries_without_relevant": 4})


def test_hand_worked_separate_sets_and_k_beyond_the_gallery():
    # gallery: g0 x=0 A, g1 x=2 B, g2 x=5 A. Queries: x=1 A, x=4 B, x=3 C.
    # q0 (A): g0 (d1, A) and g1 (d1, B) tie -> gallery order g0 first; g2 (d4, A): T F T, R=2
    #         P@1 1, R@1 1, R@2 1, P@2 1/2, P@3 2/3, RP 1/2, MAP@R (1/2)(1) = 1/2, MRR 1,
    #         mAP@1 1, mAP@2 1/2, mAP@3 (1 + 2/3)/2 = 5/6, NDCG@2 1/(1+C3), NDCG@3 (1 + 1/2)/(1+C3)
    # q1 (B): g2 (d1, A), g1 (d2, B), g0 (d4): F T F, R=1: P@1 0, R@1 0, R@2 1, P@2 1/2, P@3 1/3, RP 0,
    #         MAP@R 0, MRR 1/2, mAP@1 0, mAP@2 = mAP@3 = 1/2, NDCG@2 = NDCG@3 = C3
    # q2 (C): no C in the gallery -> excluded, counted.
    g, gl = line(0, 2, 5), torch.tensor([0, 1, 0])
    q, ql = line(1, 4, 3), torch.tensor([0, 1, 2])
    scores = dm.evaluate(q, ql, gallery=g, gallery_labels=gl, k=3, nmi=False)
    assert scores == pytest.approx({
        "precision_at_1": 1 / 2, "recall_at_1": 1 / 2, "map_at_1": 1 / 2, "ndcg_at_1": 1 / 2,
        "recall_at_2": 1.0, "precision_at_2": 1 / 2, "map_at_2": 1 / 2, "ndcg_at_2": (1 / (1 + C3) + C3) / 2,
        "recall_at_3": 1.0, "precision_at_3": 1 / 2, "map_at_3": 2 / 3, "ndcg_at_3": (1.5 / (1 + C3) + C3) / 2,
        "r_precision": 1 / 4, "map_at_r": 1 / 4, "mrr": 3 / 4, "num_queries": 3, "queries_without_relevant": 1})
    # k larger than the gallery: the default ks beyond it (4, 8, 10) are left out, the k asked for is
    # reported with the 7 missing slots not relevant: P@10 (2/10 + 1/10) / 2, mAP@10 = mAP@3,
    # NDCG@10 = NDCG@3
    scores = dm.evaluate(q, ql, g, gl, k=10, nmi=False, full_map=True)
    assert not [key for key in scores if key.endswith(("_at_4", "_at_8"))]
    assert {key: scores[key] for key in scores if key.endswith("_at_10")} == pytest.approx({
        "recall_at_10": 1.0, "precision_at_10": 3 / 20, "map_at_10": 2 / 3, "ndcg_at_10": (1.5 / (1 + C3) + C3) / 2})
    assert scores["map_at_r"] == pytest.approx(1 / 4) and scores["recall_at_2"] == 1.0
    assert scores["map"] == pytest.approx((5 / 6 + 1 / 2) / 2)  # full-ranking AP: q0 5/6, q1 1/2


def test_hand_worked_multilabel():
    # items x = 0 {a}, 1 {b}, 2 {a,b}, 3 {c}, 10 {a}; relevant = at least one label shared
    # q0 {a}:   1 (F), 2 (T), 3 (F), 4 (T); R=2: P@1 0, R@2 1, RP 1/2, MAP@R (1/2)(1/2) = 1/4
    # q1 {b}:   0 (d1, F) and 2 (d1, T) tie -> 0 first; 3 (F), 4 (F); R=1: P@1 0, R@2 1, RP 0, MAP@R 0
    # q2 {a,b}: 1 (d1, T) and 3 (d1, F) tie -> 1 first; 0 (T), 4 (T); R=3: P@1 1, RP 2/3,
    #           MAP@R (1/3)(1/1 + 2/3) = 5/9
    # q3 {c}:   nothing shares c -> excluded
    # q4 {a}:   3 (F), 2 (T), 1 (F), 0 (T); R=2: P@1 0, R@2 1, RP 1/2, MAP@R 1/4
    # Means over 4: P@1 1/4, R@2 1, RP (1/2 + 0 + 2/3 + 1/2)/4 = 5/12, MAP@R (1/4 + 0 + 5/9 + 1/4)/4 = 19/72
    # P@2: 1/2 each -> 1/2;  P@4: (2 + 1 + 3 + 2)/4/4 = 1/2;  MRR: (1/2 + 1/2 + 1 + 1/2)/4 = 5/8
    # mAP@1: 0, 0, 1, 0 -> 1/4;  mAP@2: (1/2)/2, (1/2)/1, 1/2, (1/2)/2 -> (3/2)/4 = 3/8
    # mAP@4: (1/2 + 2/4)/2 = 1/2, 1/2, (1 + 2/3 + 3/4)/3 = 29/36, 1/2 -> (83/36)/4 = 83/144
    # NDCG@2: C3/(1+C3), C3, 1/(1+C3) (IDCG of R=3 at 2: 1 + C3), C3/(1+C3)
    # NDCG@4: (C3 + E5)/(1+C3), C3, (1 + 1/2 + E5)/(1 + C3 + 1/2), (C3 + E5)/(1+C3)
    x = line(0, 1, 2, 3, 10)
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    scores = dm.evaluate(x, y)  # nmi requested but skipped: multi-label has no classes to cluster
    assert scores == pytest.approx({
        "precision_at_1": 1 / 4, "recall_at_1": 1 / 4, "map_at_1": 1 / 4, "ndcg_at_1": 1 / 4,
        "recall_at_2": 1.0, "precision_at_2": 1 / 2, "map_at_2": 3 / 8,
        "ndcg_at_2": (2 * C3 / (1 + C3) + C3 + 1 / (1 + C3)) / 4,
        "recall_at_4": 1.0, "precision_at_4": 1 / 2, "map_at_4": 83 / 144,
        "ndcg_at_4": (2 * (C3 + E5) / (1 + C3) + C3 + (1.5 + E5) / (1.5 + C3)) / 4,
        "r_precision": 5 / 12, "map_at_r": 19 / 72, "mrr": 5 / 8, "num_queries": 5, "queries_without_relevant": 1})


def test_hand_worked_relevance_fn():
    # a user relevance on flat labels: "relevant when the labels differ by at most 1".
    # x = 0, 1, 2, 5 with labels 0, 5, 1, 2 (query-in-gallery):
    # q0 (0): 1 (5, F), 2 (1, T), 3 (2, F); R=1: P@1 0, RP 0, MAP@R 0, MRR 1/2, R@2 1
    # q1 (5): 0 and 2 tie at d1 -> 0 (0, F), 2 (1, F), 3 (2, F): R=0 -> excluded
    # q2 (1): 1 (d1, 5, F), 0 (d2, 0, T), 3 (d3, 2, T); R=2: P@1 0, RP 1/2, MAP@R (1/2)/2 = 1/4,
    #         MRR 1/2, R@2 1
    # q3 (2): 2 (d3, 1, T), 1 (d4, 5, F), 0 (d5, 0, F); R=1: P@1 1, RP 1, MAP@R 1, MRR 1, R@2 1
    # Means over 3: P@1 1/3, R@2 1, RP 1/2, MAP@R 5/12, MRR 2/3
    def near(query_labels, result_labels):
        return (result_labels - query_labels.unsqueeze(1)).abs() <= 1

    scores = dm.evaluate(line(0, 1, 2, 5), torch.tensor([0, 5, 1, 2]), nmi=False, relevance_fn=near)
    assert {key: scores[key] for key in ("precision_at_1", "recall_at_2", "r_precision", "map_at_r", "mrr")} \
        == pytest.approx({"precision_at_1": 1 / 3, "recall_at_2": 1.0, "r_precision": 1 / 2,
                          "map_at_r": 5 / 12, "mrr": 2 / 3})
    assert scores["queries_without_relevant"] == 1


def test_hand_worked_hierarchical_uses_the_finest_level():
    # x = 0, 1, 2, 3 with labels (parent, child) = (0,0), (1,0), (0,0), (1,0): child 0 recurs under
    # both parents, so only items 0-2 and 1-3 are relevant to each other.
    # q0: 1 (F), 2 (T), 3 (F), R=1: P@1 0, R@2 1, P@2 1/2, mAP@2 1/2, MRR 1/2
    # q1: 0 (d1, F), 2 (d1, F), 3 (T), R=1: P@1 0, R@2 0, MRR 1/3 (searched beyond the depth 2)
    # q2: 1 (d1, F), 3 (d1, F), 0 (T): P@1 0, R@2 0, MRR 1/3
    # q3: 2 (F), 1 (T): P@1 0, R@2 1, P@2 1/2, mAP@2 1/2, MRR 1/2
    # Means: P@1 0, R@2 1/2, P@2 1/4, mAP@2 1/4, RP 0, MAP@R 0, MRR (5/3)/4 = 5/12 (MAP@R would be 1
    # everywhere if the child column alone counted).
    # Graded NDCG (gain = shared levels): q0 gains 0 2 0, ideal 2 0 0 (one item shares both levels,
    # no other shares the parent) -> NDCG@2 = (2^2 - 1) C3 / (2^2 - 1) = C3; q3 the same; q1, q2 0 -> C3/2.
    # The parent level relates the same pairs (children are all 0), so level_0 = level_1 = the top
    # level (binary NDCG@2 is C3 for q0 and q3 too).
    # Within the parent, each query ranks its one relevant item first and a padded slot second:
    # everything 1, except P@2 = 1/2.
    y = torch.tensor([[0, 0], [1, 0], [0, 0], [1, 0]])
    scores = dm.evaluate(line(0, 1, 2, 3), y, nmi=False)
    top = {"precision_at_1": 0.0, "recall_at_1": 0.0, "map_at_1": 0.0, "ndcg_at_1": 0.0,
           "recall_at_2": 0.5, "precision_at_2": 0.25, "map_at_2": 0.25, "ndcg_at_2": C3 / 2,
           "r_precision": 0.0, "map_at_r": 0.0, "mrr": 5 / 12, "num_queries": 4, "queries_without_relevant": 0}
    # no item has an intermediate (same parent, other child): order_preservation is undefined, left out
    assert list(scores) == list(top) + ["level_0", "level_1", "level_1_within_parent"]
    assert {key: scores[key] for key in top} == pytest.approx(top)
    assert scores["level_0"] == pytest.approx(top) and scores["level_1"] == pytest.approx(top)
    assert scores["level_1_within_parent"] == pytest.approx({
        **{key: 1.0 for key in top if key not in COUNTS}, "precision_at_2": 0.5,
        "num_queries": 4, "queries_without_relevant": 0})


# Five points, hierarchical labels (parent, child); query-in-gallery:
#   item:   0       1       2       3       4
#   x:      0       1       2       3       10
#   label:  (0,0)   (1,0)   (0,0)   (0,1)   (1,0)
# Results (ties in gallery order) and their shared levels with the query (the graded gain):
#   q0: 1, 2, 3, 4        gains 0 2 1 0   finest F T F F (R=1)   level 0: F T T F (R=2)
#   q1: 0, 2 (tie), 3, 4  gains 0 0 0 2   finest F F F T (R=1)   level 0: F F F T (R=1)
#   q2: 1, 3 (tie), 0, 4  gains 0 1 2 0   finest F F T F (R=1)   level 0: F T T F (R=2)
#   q3: 2, 1, 0, 4        gains 1 0 1 0   finest: none (R=0)     level 0: T F T F (R=2)
#   q4: 3, 2, 1, 0        gains 0 0 2 0   finest F F T F (R=1)   level 0: F F T F (R=1)
# Ideal gains: q0, q2: 2 1 0 0 (two items share the parent, one of them the child too); q1, q4: 2 0 0 0.
TREE_X = line(0, 1, 2, 3, 10)
TREE_Y = torch.tensor([[0, 0], [1, 0], [0, 0], [0, 1], [1, 0]])


def test_hand_worked_hierarchy_levels_graded_ndcg_and_within_parent():
    scores = dm.evaluate(TREE_X, TREE_Y, nmi=False, per_class=True)
    level_0_per_class = {key: scores["level_0"].pop(key) for key in ("per_class", "class_mean")}
    for key in ("per_class", "class_mean"):
        scores["level_1"].pop(key)
    # Quadlets (q, p, i, n): q0 -> (2, 3, 1) and (2, 3, 4); q2 -> (0, 3, 1) and (0, 3, 4); q1, q4 have no
    # intermediate and q3 no positive. Distances from q0: 2 < 3 < 1? no; 2 < 3 < 10 yes; from q2:
    # d(2, 0) = 2 > d(2, 3) = 1, no for both -> 1 of 4 preserved (estimated from a million draws)
    assert scores["order_preservation"] == pytest.approx(0.25, abs=0.005)
    # Top level = finest, over q0, q1, q2, q4 (q3 has no item of its own child class):
    # P@2 (1/2)/4 = 1/8, mAP@2 (1/2)/4 = 1/8; mAP@4 = MRR = (1/2 + 1/4 + 1/3 + 1/3)/4 = 17/48
    # graded NDCG, over all five queries (q3 shares its parent with items, gain 1 each):
    #   q0 DCG@2 = 3 C3, DCG@4 = 3 C3 + (2^1 - 1)/2, IDCG = 3 + C3 at 2 and 4;
    #   q1 DCG@4 = 3 E5, IDCG = 3; q2 DCG@2 = C3, DCG@4 = C3 + 3/2, IDCG 3 + C3; q4 DCG@4 = 3/2, IDCG 3;
    #   q3 as at level 0: NDCG@1 1, NDCG@2 1/(1+C3), NDCG@4 3/2/(1+C3)
    top = {"precision_at_1": 0.0, "recall_at_1": 0.0, "map_at_1": 0.0, "ndcg_at_1": 1 / 5,
           "recall_at_2": 1 / 4, "precision_at_2": 1 / 8, "map_at_2": 1 / 8,
           "ndcg_at_2": (4 * C3 / (3 + C3) + 1 / (1 + C3)) / 5,
           "recall_at_4": 1.0, "precision_at_4": 1 / 4, "map_at_4": 17 / 48,
           "ndcg_at_4": ((4 * C3 + 2) / (3 + C3) + E5 + 1 / 2 + 3 / 2 / (1 + C3)) / 5,
           "r_precision": 0.0, "map_at_r": 0.0, "mrr": 17 / 48, "num_queries": 5, "queries_without_relevant": 1}
    assert {key: scores[key] for key in top} == pytest.approx(top)
    # level 0 (same parent), all five queries:
    # P@1 = mAP@1 = NDCG@1 = 1/5 (q3); R@2 3/5; P@2 (1/2 + 0 + 1/2 + 1/2 + 0)/5; P@4 (2+1+2+2+1)/4/5
    # mAP@2: (1/2)/2, 0, (1/2)/2, 1/2, 0 -> 1/5
    # mAP@4: (1/2 + 2/3)/2 = 7/12, 1/4, 7/12, (1 + 2/3)/2 = 5/6, 1/3 -> (31/12)/5; MRR 1/2, 1/4, 1/2, 1, 1/3
    # RP: 1/2, 0, 1/2, 1/2, 0 -> 3/10; MAP@R: 1/4, 0, 1/4, 1/2, 0 -> 1/5
    # NDCG@2: C3/(1+C3), 0, C3/(1+C3), 1/(1+C3), 0;  NDCG@4: (C3 + 1/2)/(1+C3), E5, the same, 3/2/(1+C3), 1/2
    assert scores["level_0"] == pytest.approx({
        "precision_at_1": 1 / 5, "recall_at_1": 1 / 5, "map_at_1": 1 / 5, "ndcg_at_1": 1 / 5,
        "recall_at_2": 3 / 5, "precision_at_2": 3 / 10, "map_at_2": 1 / 5, "ndcg_at_2": (2 * C3 + 1) / (1 + C3) / 5,
        "recall_at_4": 1.0, "precision_at_4": 2 / 5, "map_at_4": 31 / 60,
        "ndcg_at_4": ((2 * C3 + 2.5) / (1 + C3) + E5 + 1 / 2) / 5,
        "r_precision": 3 / 10, "map_at_r": 1 / 5, "mrr": 31 / 60, "num_queries": 5, "queries_without_relevant": 0})
    # level 1 = the finest level with binary NDCG: NDCG@2 C3/4 (q0), NDCG@4 (C3 + E5 + 1/2 + 1/2)/4
    assert scores["level_1"] == pytest.approx({**top, "ndcg_at_1": 0.0, "ndcg_at_2": C3 / 4,
                                               "ndcg_at_4": (C3 + E5 + 1) / 4})
    # level 1 within the parent: parent 0 = items 0, 2, 3 and parent 1 = items 1, 4
    # q0: 2 (T), 3 (F); q1: 4 (T); q2: 3 (F), 0 (T); q4: 1 (T); q3 excluded; slots beyond are padding
    # P@1 3/4, P@2 1/2, P@4 1/4, mAP@2 = mAP@4 = MRR = (1 + 1 + 1/2 + 1)/4 = 7/8, NDCG@2 = NDCG@4 = (3 + C3)/4
    assert scores["level_1_within_parent"] == pytest.approx({
        "precision_at_1": 3 / 4, "recall_at_1": 3 / 4, "map_at_1": 3 / 4, "ndcg_at_1": 3 / 4,
        "recall_at_2": 1.0, "precision_at_2": 1 / 2, "map_at_2": 7 / 8, "ndcg_at_2": (3 + C3) / 4,
        "recall_at_4": 1.0, "precision_at_4": 1 / 4, "map_at_4": 7 / 8, "ndcg_at_4": (3 + C3) / 4,
        "r_precision": 3 / 4, "map_at_r": 3 / 4, "mrr": 7 / 8, "num_queries": 5, "queries_without_relevant": 1})
    # per class (finest): 0/0 = q0, q2: mAP@4 (1/2 + 1/3)/2 = 5/12, graded NDCG@4 the mean of q0 and q2;
    # 1/0 = q1, q4: mAP@4 (1/4 + 1/3)/2 = 7/24; 0/1 = q3 only, without relevant item
    per_class = scores["per_class"]
    assert list(per_class) == ["0/0", "0/1", "1/0"]
    # q3 has no finest-level relevant item, but its graded NDCG is defined (as in the top-level mean)
    assert per_class["0/1"] == pytest.approx({"ndcg_at_1": 1.0, "ndcg_at_2": 1 / (1 + C3),
                                              "ndcg_at_4": 3 / 2 / (1 + C3), "num_queries": 1,
                                              "queries_without_relevant": 1})
    assert per_class["0/0"]["map_at_4"] == pytest.approx(5 / 12)
    assert per_class["0/0"]["ndcg_at_4"] == pytest.approx((4 * C3 + 2) / (3 + C3) / 2)
    assert per_class["1/0"]["map_at_4"] == pytest.approx(7 / 24)
    assert per_class["1/0"]["num_queries"] == 2 and per_class["1/0"]["queries_without_relevant"] == 0
    assert scores["class_mean"]["map_at_4"] == pytest.approx((5 / 12 + 7 / 24) / 2)
    # per class at level 0: class 0 = q0, q2, q3 and class 1 = q1, q4 (mAP@4 of level 0 above)
    assert level_0_per_class["per_class"][0]["map_at_4"] == pytest.approx((7 / 12 + 7 / 12 + 5 / 6) / 3)
    assert level_0_per_class["per_class"][1]["map_at_4"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    assert level_0_per_class["class_mean"]["map_at_4"] == pytest.approx(((2 / 3) + 7 / 24) / 2)


def test_hand_worked_per_class():
    # LINE: A = q0, q1, q3; B = q2, q4; C = q5 (no relevant item)
    # P@1: A (1 + 1 + 0)/3 = 2/3, B 0 -> class mean 1/3 (the query mean is 2/5)
    # MAP@R: A (1/2 + 1/2 + 1/4)/3 = 5/12, B 0 -> 5/24;  MRR: A (1 + 1 + 1/2)/3 = 5/6, B (1/4 + 1/2)/2 = 3/8
    scores = dm.evaluate(LINE_X, LINE_Y, nmi=False, per_class=True)
    per_class, class_mean = scores["per_class"], scores["class_mean"]
    assert list(per_class) == [0, 1, 2]
    assert per_class[0]["precision_at_1"] == pytest.approx(2 / 3)
    assert per_class[0]["map_at_r"] == pytest.approx(5 / 12) and per_class[0]["mrr"] == pytest.approx(5 / 6)
    assert per_class[0]["num_queries"] == 3 and per_class[0]["queries_without_relevant"] == 0
    assert per_class[1]["precision_at_1"] == 0.0 and per_class[1]["mrr"] == pytest.approx(3 / 8)
    assert per_class[2] == {"num_queries": 1, "queries_without_relevant": 1}
    assert list(class_mean) == [key for key in LINE_SCORES if key not in COUNTS]
    assert class_mean["precision_at_1"] == pytest.approx(1 / 3)
    assert class_mean["map_at_r"] == pytest.approx(5 / 24)
    assert class_mean["mrr"] == pytest.approx((5 / 6 + 3 / 8) / 2)
    # the query-level keys are unchanged by per_class
    assert {key: scores[key] for key in LINE_SCORES} == pytest.approx(LINE_SCORES)


def test_hand_worked_per_class_of_a_hierarchy():
    # items at 0, 2, 1, 10, 11 with (actor, track) labels (0,0), (0,0), (0,1), (1,0), (1,0).
    # Graded NDCG@2, gains 2^shared - 1 (3 same track, 1 same actor):
    #   item 0 ranks item 2 (gain 1), item 1 (gain 3): (1 + 3/log2 3) / (3 + 1/log2 3); item 1 the same;
    #   item 2 ranks items 0 and 1 (gains 1, 1), as good as can be: 1; items 3 and 4: 1.
    # Item 2 is the only item of track 0/1, so it has no finest-level relevant item, yet its graded
    # NDCG is defined and counts in the top-level mean, and so in its class's.
    x, y = line(0, 2, 1, 10, 11), torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0], [1, 0]])
    scores = dm.evaluate(x, y, nmi=False, ks=(2,), per_class=True)
    track_00 = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert scores["ndcg_at_2"] == pytest.approx((2 * track_00 + 3) / 5)
    per_class = scores["per_class"]
    assert per_class["0/0"]["ndcg_at_2"] == pytest.approx(track_00) and per_class["1/0"]["ndcg_at_2"] == 1.0
    assert per_class["0/1"] == {"ndcg_at_2": 1.0, "num_queries": 1, "queries_without_relevant": 1}
    assert scores["class_mean"]["ndcg_at_2"] == pytest.approx((track_00 + 2) / 3)
    # per class at each level, e.g. per actor when each track is excluded as the query's group
    actors = scores["level_0"]["per_class"]
    assert list(actors) == [0, 1] and actors[0]["num_queries"] == 3 and actors[1]["num_queries"] == 2
    assert actors[0]["precision_at_1"] == 1.0 and scores["level_0"]["class_mean"]["map_at_r"] == 1.0
    grouped = dm.evaluate(x, y, nmi=False, ks=(2,), per_class=True, groups=torch.tensor([0, 0, 1, 2, 2]))
    # each track its own group: no finest-level relevant item; graded NDCG only for actor 0's items
    # (they find each other's tracks, gain 1, ranked first), actor 1 has only its own track
    assert grouped["class_mean"] == {"ndcg_at_2": 1.0}
    assert grouped["level_0"]["per_class"][1] == {"num_queries": 2, "queries_without_relevant": 2}
    # actor 0 without its own track: item 0 and item 1 find only item 2 (R = 1, at rank 1)
    assert grouped["level_0"]["per_class"][0]["map_at_r"] == 1.0
    assert grouped["level_0"]["class_mean"]["map_at_r"] == 1.0


def test_the_same_vectors_as_a_separate_gallery_are_warned_about():
    # a porting slip: every query finds itself first (P@1 1.0) where pml's ref_includes_query=True
    # or evaluate(x, y) would not
    x, y = line(0, 1, 3, 4), torch.tensor([0, 1, 0, 1])
    with pytest.warns(UserWarning, match=r"gallery: the same vectors as embeddings.*ref_includes_query=True") as caught:
        scores = dm.evaluate(x, y, gallery=x, gallery_labels=y, nmi=False)
    assert scores["precision_at_1"] == 1.0 and caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = torch.arange(4)
        assert dm.evaluate(x, y, gallery=x, gallery_labels=y, groups=ids, gallery_groups=ids,
                           nmi=False)["precision_at_1"] == 0.0


def test_perfect_embeddings_score_one():
    x = torch.cat([torch.randn(5, 3) * 0.01 + 10 * c for c in range(4)])
    y = torch.arange(4).repeat_interleave(5)
    scores = dm.evaluate(x, y, full_map=True)
    for key in ("precision_at_1", "recall_at_1", "r_precision", "map_at_r", "map_at_4", "ndcg_at_10", "mrr",
                "map", "nmi", "ami"):
        assert scores[key] == pytest.approx(1.0)
    assert scores["precision_at_8"] == pytest.approx(4 / 8)  # only 4 relevant items per query


def test_no_query_with_a_relevant_item_raises():
    with pytest.raises(ValueError, match="no query has a relevant item"):
        dm.evaluate(line(0, 1, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no query has a relevant item"):
        dm.evaluate(line(0, 1), torch.tensor([0, 1]), line(3), torch.tensor([2]))


# ------------------------------------------------------------------ against plain loops on random data

def loop_scores(dist, allowed, relevant, gains, ks, full_map):
    """Every ranking metric by plain loops: each query ranks its allowed gallery items by (distance,
    index); ``relevant`` and ``gains`` are (Q, G) lists; queries with no relevant item are skipped."""
    per_query, skipped = {}, 0
    for q in range(len(dist)):
        order = sorted((j for j in range(len(dist[q])) if allowed[q][j]), key=lambda j: (dist[q][j], j))
        rel = [relevant[q][j] for j in order]
        gain = [gains[q][j] for j in order]
        n_rel = sum(rel)
        if n_rel == 0:
            skipped += 1
            continue
        precision, hits = [], 0
        for i, r in enumerate(rel, start=1):
            hits += r
            precision.append(hits / i)
        ideal = sorted(gain, reverse=True)
        scores = {"precision_at_1": float(rel[0])}
        for k in ks:
            dcg = sum((2 ** gain[i] - 1) / math.log2(i + 2) for i in range(min(k, len(gain))))
            idcg = sum((2 ** ideal[i] - 1) / math.log2(i + 2) for i in range(min(k, len(ideal))))
            scores[f"recall_at_{k}"] = float(any(rel[:k]))
            scores[f"precision_at_{k}"] = sum(rel[:k]) / k
            scores[f"map_at_{k}"] = sum(p for p, r in zip(precision[:k], rel[:k]) if r) / min(k, n_rel)
            scores[f"ndcg_at_{k}"] = dcg / idcg
        scores["r_precision"] = sum(rel[:n_rel]) / n_rel
        scores["map_at_r"] = sum(p for p, r in zip(precision[:n_rel], rel[:n_rel]) if r) / n_rel
        scores["mrr"] = 1 / (rel.index(True) + 1)
        if full_map:
            scores["map"] = sum(p for p, r in zip(precision, rel) if r) / n_rel
        for name, value in scores.items():
            per_query.setdefault(name, []).append(value)
    return {name: sum(v) / len(v) for name, v in per_query.items()}, skipped


def plain_distances(q, g, distance):
    if distance == "cosine":
        qn, gn = q / q.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True)
        return (1 - qn @ gn.T).tolist()
    return torch.cdist(q, g).tolist()


def assert_equal_to_loops(ours, expected, skipped, n_q):
    assert {key: ours[key] for key in expected} == pytest.approx(expected, abs=1e-9)
    assert [key for key in ours if key not in COUNTS and not isinstance(ours[key], dict)] == list(expected)
    assert ours["num_queries"] == n_q and ours["queries_without_relevant"] == skipped


@pytest.mark.parametrize("ks,k,full_map", [((1, 2, 4, 8, 10), 7, True), ((1,), None, False), ((3,), 100, True)])
def test_flat_equals_plain_loops_query_in_gallery_with_groups(ks, k, full_map):
    gen = torch.Generator().manual_seed(11)
    n = 70
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 9, (n,), generator=gen)
    groups = torch.randint(0, 30, (n,), generator=gen)
    ours = dm.evaluate(x, y, groups=groups, nmi=False, ks=ks, k=k, full_map=full_map, chunk_size=16)
    allowed = ((groups.unsqueeze(1) != groups.unsqueeze(0)) & ~torch.eye(n, dtype=torch.bool)).tolist()
    relevant = (y.unsqueeze(1) == y.unsqueeze(0)).tolist()
    report = sorted({v for v in ks if v <= n - 1} | ({k} if k else set()))  # the k asked for, always
    expected, skipped = loop_scores(plain_distances(x, x, "euclidean"), allowed, relevant, relevant, report, full_map)
    assert_equal_to_loops(ours, expected, skipped, n)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_flat_equals_plain_loops_separate_sets(distance):
    gen = torch.Generator().manual_seed(12)
    q = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    ql, gl = torch.randint(0, 9, (40,), generator=gen), torch.randint(0, 7, (60,), generator=gen)
    ours = dm.evaluate(q, ql, g, gl, distance=distance, nmi=False, ks=(1, 5), full_map=True)
    relevant = (ql.unsqueeze(1) == gl.unsqueeze(0)).tolist()
    allowed = [[True] * 60 for _ in range(40)]
    expected, skipped = loop_scores(plain_distances(q, g, distance), allowed, relevant, relevant, [1, 5], True)
    assert skipped == int((ql >= 7).sum()) > 0
    assert_equal_to_loops(ours, expected, skipped, 40)


def test_hierarchy_equals_plain_loops():
    gen = torch.Generator().manual_seed(13)
    n, levels = 60, 3
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (n, levels), generator=gen)  # children recur under every parent
    groups = torch.randint(0, 40, (n,), generator=gen)
    ours = dm.evaluate(x, y, groups=groups, nmi=False, ks=(1, 3, 10), full_map=True)
    dist = plain_distances(x, x, "euclidean")
    allowed = (groups.unsqueeze(1) != groups.unsqueeze(0)) & ~torch.eye(n, dtype=torch.bool)
    shared = [[next((l for l in range(levels) if y[i, l] != y[j, l]), levels) for j in range(n)] for i in range(n)]
    shared = torch.tensor(shared)  # leading levels in common, by a loop
    finest = (shared == levels).tolist()
    expected, skipped = loop_scores(dist, allowed.tolist(), finest, shared.tolist(), [1, 3, 10], True)
    assert_equal_to_loops(ours, expected, skipped, n)
    for level in range(levels):
        same = (shared > level).tolist()
        expected, skipped = loop_scores(dist, allowed.tolist(), same, same, [1, 3, 10], True)
        assert ours[f"level_{level}"] == pytest.approx(
            {**expected, "num_queries": n, "queries_without_relevant": skipped}, abs=1e-9)
        if level:
            parent = (allowed & (shared >= level)).tolist()
            expected, skipped = loop_scores(dist, parent, same, same, [1, 3, 10], True)
            assert ours[f"level_{level}_within_parent"] == pytest.approx(
                {**expected, "num_queries": n, "queries_without_relevant": skipped}, abs=1e-9)
    assert "level_0_within_parent" not in ours


def test_multilabel_and_relevance_fn_equal_plain_loops():
    gen = torch.Generator().manual_seed(14)
    n = 50
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(n, 5, generator=gen) < 0.25
    dist = plain_distances(x, x, "euclidean")
    allowed = (~torch.eye(n, dtype=torch.bool)).tolist()
    relevant = ((y.double() @ y.double().T) > 0).tolist()
    expected, skipped = loop_scores(dist, allowed, relevant, relevant, [1, 2, 4, 8, 10], True)
    assert_equal_to_loops(dm.evaluate(x, y, full_map=True), expected, skipped, n)

    def two_shared(query_labels, result_labels):
        return (result_labels & query_labels.unsqueeze(1)).sum(-1) >= 2

    relevant = ((y.double() @ y.double().T) >= 2).tolist()
    expected, skipped = loop_scores(dist, allowed, relevant, relevant, [1, 2, 4, 8, 10], True)
    assert_equal_to_loops(dm.evaluate(x, y, full_map=True, relevance_fn=two_shared, chunk_size=7),
                          expected, skipped, n)


def test_per_class_equals_evaluating_each_class_alone():
    gen = torch.Generator().manual_seed(15)
    n = 60
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = (torch.arange(n) % 5)[torch.randperm(n, generator=gen)] * 10
    ours = dm.evaluate(x, y, nmi=False, per_class=True, k=3, full_map=True)
    index = torch.arange(n)
    alone = {}
    for c in y.unique().tolist():
        m = y == c  # the class's queries against the whole gallery, each excluding itself through its group
        alone[c] = dm.evaluate(x[m], y[m], x, y, groups=index[m], gallery_groups=index, nmi=False, k=3, full_map=True)
        expected = {key: v for key, v in alone[c].items()}
        assert ours["per_class"][c] == pytest.approx(expected, abs=1e-12)
    metrics = [key for key in ours if key not in COUNTS and not isinstance(ours[key], dict)]
    assert ours["class_mean"] == pytest.approx({key: np.mean([alone[c][key] for c in alone]) for key in metrics})


# ------------------------------------------------------------------ against pytorch-metric-learning

def pml_scores(q, ql, g=None, gl=None, distance="euclidean", k="max_bin_count",
               include=("precision_at_1", "r_precision", "mean_average_precision_at_r")):
    from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    dist = {"euclidean": LpDistance(normalize_embeddings=False), "cosine": CosineSimilarity(),
            "dot": DotProductSimilarity(normalize_embeddings=False)}[distance]
    calc = AccuracyCalculator(include=include, k=k, knn_func=CustomKNN(dist), device=torch.device("cpu"))
    return calc.get_accuracy(q, ql, g, gl)


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "dot"])
def test_equals_pytorch_metric_learning_query_in_gallery(distance):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(300, 8, generator=gen)
    y = torch.randint(0, 25, (300,), generator=gen)
    y[:3] = torch.tensor([100, 101, 102])  # three lone items: no relevant item, excluded by both
    ours = dm.evaluate(x, y, distance=distance, nmi=False, chunk_size=64)
    theirs = pml_scores(x, y, distance=distance)
    assert ours["queries_without_relevant"] == 3
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_equals_pytorch_metric_learning_separate_sets(distance):
    gen = torch.Generator().manual_seed(5)
    q, g = torch.randn(120, 8, generator=gen), torch.randn(250, 8, generator=gen)
    ql, gl = torch.randint(0, 22, (120,), generator=gen), torch.randint(0, 20, (250,), generator=gen)
    ours = dm.evaluate(q, ql, g, gl, distance=distance, nmi=False)
    theirs = pml_scores(q, ql, g, gl, distance=distance)
    assert ours["queries_without_relevant"] == int((ql >= 20).sum())
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.parametrize("distance,separate", [("euclidean", False), ("cosine", False), ("dot", False),
                                               ("euclidean", True), ("cosine", True)])
def test_map_and_mrr_equal_pytorch_metric_learning(distance, separate):
    # AccuracyCalculator's mean_average_precision is (1/R) sum_{i<=k} P(i) rel(i) over its k results:
    # with k=None (the whole gallery) it is our full-ranking "map", and with k="max_bin_count"
    # (k = the largest R) it is our map_at_{k} for that k, since min(k, R) = R for every query.
    # Its mean_reciprocal_rank with k=None is our (exact) mrr.
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(200, 8, generator=gen)
    y = torch.randint(0, 15, (200,), generator=gen)
    y[:2] = torch.tensor([100, 101])
    if separate:
        q, ql, g, gl = x[:80], y[:80], x[80:], y[80:]
        max_r = max(int((gl == c).sum()) for c in ql.unique())  # as AccuracyCalculator: over query classes
    else:
        q, ql, g, gl = x, y, None, None
        max_r = int(torch.bincount(y).max()) - 1
    ours = dm.evaluate(q, ql, g, gl, distance=distance, nmi=False, full_map=True, ks=(), k=max_r)
    full = pml_scores(q, ql, g, gl, distance=distance, k=None,
                      include=("mean_average_precision", "mean_reciprocal_rank"))
    at_max = pml_scores(q, ql, g, gl, distance=distance, include=("mean_average_precision",))
    assert ours["map"] == pytest.approx(full["mean_average_precision"], abs=1e-6)
    assert ours["mrr"] == pytest.approx(full["mean_reciprocal_rank"], abs=1e-6)
    assert ours[f"map_at_{max_r}"] == pytest.approx(at_max["mean_average_precision"], abs=1e-6)


# ------------------------------------------------------------------ clustering

def test_nmi_ami_equal_sklearn_with_the_same_kmeans():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(200, 5, generator=gen)
    y = torch.randint(0, 7, (200,), generator=gen) * 3 + 10  # non-contiguous class ids
    for seed in (0, 3):
        clusters = KMeans(n_clusters=7, n_init=1, random_state=seed).fit_predict(x.double().numpy())
        expected_nmi = normalized_mutual_info_score(y.numpy(), clusters)
        expected_ami = adjusted_mutual_info_score(y.numpy(), clusters)
        assert clustering.nmi(x, y, seed=seed) == pytest.approx(expected_nmi, abs=1e-12)
        assert clustering.ami(x, y, seed=seed) == pytest.approx(expected_ami, abs=1e-12)
        scores = dm.evaluate(x, y, seed=seed)
        assert scores["nmi"] == pytest.approx(expected_nmi, abs=1e-12)
        assert scores["ami"] == pytest.approx(expected_ami, abs=1e-12)


def test_nmi_hand_worked():
    # two tight, far apart pairs with matching labels: k-means recovers the classes -> NMI = AMI = 1;
    # swapping one label in each pair makes clusters independent of classes -> NMI = 0
    x = line(0, 0.1, 5, 5.1)
    assert clustering.nmi(x, torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0)
    assert clustering.ami(x, torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0)
    assert clustering.nmi(x, torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    # hierarchical labels cluster by finest class; evaluate clusters the queries only
    assert clustering.nmi(x, torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0]])) == pytest.approx(1.0)
    scores = dm.evaluate(x, torch.tensor([0, 0, 1, 1]), gallery=line(0, 5), gallery_labels=torch.tensor([0, 1]))
    assert scores["nmi"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multi-label"):
        clustering.nmi(x, torch.ones(4, 2, dtype=torch.bool))


# ------------------------------------------------------------------ invariances

def test_permuting_the_items_changes_nothing():
    gen = torch.Generator().manual_seed(9)
    x, y = torch.randn(80, 6, generator=gen), torch.randint(0, 6, (80,), generator=gen)
    groups = torch.randint(0, 30, (80,), generator=gen)
    perm = torch.randperm(80, generator=gen)
    a = dm.evaluate(x, y, groups=groups, nmi=False, full_map=True)
    b = dm.evaluate(x[perm], y[perm], groups=groups[perm], nmi=False, full_map=True)
    assert a == pytest.approx(b, abs=1e-12)


def test_chunk_size_changes_nothing():
    gen = torch.Generator().manual_seed(10)
    q, g = torch.randn(50, 4, generator=gen), torch.randn(70, 4, generator=gen)
    ql, gl = torch.randint(0, 5, (50,), generator=gen), torch.randint(0, 5, (70,), generator=gen)
    qg, gg = torch.randint(0, 9, (50,), generator=gen), torch.randint(0, 9, (70,), generator=gen)
    a = dm.evaluate(q, ql, g, gl, groups=qg, gallery_groups=gg, nmi=False, k=20, full_map=True)
    for chunk_size in (1, 7):
        assert dm.evaluate(q, ql, g, gl, groups=qg, gallery_groups=gg, nmi=False, k=20, full_map=True,
                           chunk_size=chunk_size) == a
    y = torch.randint(0, 3, (50, 2), generator=gen)
    a = dm.evaluate(q, y, nmi=False, ks=(1, 3), per_class=True)
    assert dm.evaluate(q, y, nmi=False, ks=(1, 3), per_class=True, chunk_size=3) == a


# ------------------------------------------------------------------ inputs

def test_numpy_inputs_equal_tensor_inputs():
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(60, 4, generator=gen), torch.randint(0, 5, (60,), generator=gen)
    a = dm.evaluate(x, y)
    b = dm.evaluate(x.numpy(), y.numpy().astype(np.int32))
    c = dm.evaluate(x.double().numpy(), y.numpy())
    assert a == b
    assert c == pytest.approx(a, abs=1e-9)
    d = dm.evaluate(x[:20].numpy(), y[:20].numpy(), gallery=x[20:].numpy(), gallery_labels=y[20:].numpy())
    e = dm.evaluate(x[:20], y[:20], gallery=x[20:], gallery_labels=y[20:])
    assert d == e
    # views numpy makes without copying: reversed (negative strides), strided, read-only
    flipped = dm.evaluate(x.numpy()[::-1], y.numpy()[::-1], nmi=False)
    assert flipped == dm.evaluate(x.flip(0), y.flip(0), nmi=False)
    frozen = x.numpy().copy()
    frozen.flags.writeable = False
    assert dm.evaluate(frozen[::2], y.numpy()[::2], nmi=False) == dm.evaluate(x[::2], y[::2], nmi=False)


def test_ks_reported_only_where_the_gallery_allows():
    gen = torch.Generator().manual_seed(8)
    x, y = torch.randn(9, 3, generator=gen), torch.randint(0, 2, (9,), generator=gen)
    scores = dm.evaluate(x, y, nmi=False)
    assert [k for k in scores if k.startswith("recall_at_")] == ["recall_at_1", "recall_at_2", "recall_at_4",
                                                                "recall_at_8"]
    scores = dm.evaluate(x, y, nmi=False, ks=(3,), k=5)
    assert [k for k in scores if "_at_" in k and not k.endswith("_at_r")] == [
        "precision_at_1", "recall_at_3", "precision_at_3", "map_at_3", "ndcg_at_3",
        "recall_at_5", "precision_at_5", "map_at_5", "ndcg_at_5"]
    # groups: 12 items in groups of 4 leave every query 8 items, in groups of 6 only 6 (no recall_at_8)
    x, y = torch.randn(12, 3, generator=gen), torch.randint(0, 2, (12,), generator=gen)
    for size, expected in ((4, [1, 2, 4, 8, 10]), (6, [1, 2, 4])):
        groups = torch.arange(12) // size
        scores = dm.evaluate(x, y, groups=groups, nmi=False, ks=(1, 2, 4, 8, 10), k=10 if size == 4 else None)
        assert [k for k in scores if k.startswith("recall_at_")] == [f"recall_at_{v}" for v in expected]
    # separate sets: the gallery holds 3 items of query 0's group 7 among 10
    g_groups = torch.tensor([7, 7, 7, 1, 2, 3, 4, 5, 6, 8])
    scores = dm.evaluate(x[:2], y[:2], gallery=x[2:], gallery_labels=y[2:], groups=torch.tensor([7, 0]),
                         gallery_groups=g_groups, nmi=False, ks=(1, 7, 8))
    assert [k for k in scores if k.startswith("recall_at_")] == ["recall_at_1", "recall_at_7"]


def test_hierarchy_of_single_item_instances_reports_the_coarser_levels():
    # (category, instance) with one item per instance: no query has a relevant item at the finest
    # level, so its metrics are left out (not zero, not NaN); level 0 is the flat evaluation of column 0
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(12, 3, generator=gen)
    y = torch.stack([torch.arange(12) % 3, torch.arange(12)], 1)
    scores = dm.evaluate(x, y, nmi=False, per_class=True)
    assert "map_at_r" not in scores and scores["queries_without_relevant"] == 12
    assert all(key.startswith("ndcg_at_") for key in scores["class_mean"])  # graded: same category counts
    flat = dm.evaluate(x, y[:, 0], nmi=False, per_class=True)
    level_classes, flat_classes = scores["level_0"].pop("per_class"), flat.pop("per_class")
    assert list(level_classes) == list(flat_classes)
    assert all(level_classes[c] == pytest.approx(flat_classes[c]) for c in flat_classes)
    assert scores["level_0"].pop("class_mean") == pytest.approx(flat.pop("class_mean"))
    assert scores["level_0"] == pytest.approx(flat)
    scores = dm.evaluate(x, y, nmi=False, full_map=True)
    assert scores["level_0"] == pytest.approx(dm.evaluate(x, y[:, 0], nmi=False, full_map=True))


def test_hierarchy_clustering_metrics_at_every_level():
    # two parents 10 apart, each with three children that overlap completely: k-means with two
    # clusters finds the parents exactly (NMI = AMI = F1 = 1 at level 0), not the children
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([[p, c] for p in range(2) for c in range(3) for _ in range(5)])
    x = 0.1 * torch.randn(30, 2, generator=gen) + 10.0 * y[:, :1].float()
    scores = dm.evaluate(x, y)
    assert scores["level_0"]["nmi"] == pytest.approx(1.0)
    assert scores["level_0"]["ami"] == pytest.approx(1.0)
    assert scores["level_0"]["f1"] == pytest.approx(1.0)
    assert scores["nmi"] < 0.9  # the children are not separable
    assert {key: scores["level_1"][key] for key in ("nmi", "ami", "f1")} == {
        key: scores[key] for key in ("nmi", "ami", "f1")}
    assert "nmi" not in dm.evaluate(x, y, nmi=False)["level_0"]


def test_undefined_order_preservation_is_left_out():
    # a single top-level class: no quadlet has an item of another top-level class
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    y = torch.stack([torch.zeros(12, dtype=torch.long), torch.arange(12) % 3], 1)
    assert "order_preservation" not in dm.evaluate(x, y, nmi=False)
    y[:6, 0] = 1
    assert 0.0 <= dm.evaluate(x, y, nmi=False)["order_preservation"] <= 1.0


def test_bad_input_raises_clear_errors():
    x, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="embeddings: contains NaN"):
        dm.evaluate(torch.full((6, 3), math.nan), y)
    with pytest.raises(ValueError, match="labels: expected 6 rows"):
        dm.evaluate(x, y[:5])
    with pytest.raises(TypeError, match="labels: expected integer"):
        dm.evaluate(x, y.float())
    with pytest.raises(TypeError, match="embeddings: expected a torch.Tensor or numpy array"):
        dm.evaluate(x.tolist(), y)
    with pytest.raises(ValueError, match="gallery and gallery_labels"):
        dm.evaluate(x, y, gallery=x)
    with pytest.raises(ValueError, match="kmeans: unknown k-means backend 'nope'"):
        dm.evaluate(x, y, nmi=False, kmeans="nope")  # named even when no k-means runs
    with pytest.raises(ValueError, match="gallery: expected dimension 3"):
        dm.evaluate(x, y, torch.randn(4, 2), y[:4])
    with pytest.raises(ValueError, match="gallery_labels: expected the same label form"):
        dm.evaluate(x, y, x, torch.zeros(6, 2, dtype=torch.long))
    bad = x.clone()
    bad[2, 0] = math.nan
    with pytest.raises(ValueError, match=r"gallery: contains NaN or infinite values \(first bad rows: \[2\]\)"):
        dm.evaluate(x, y, bad, y)
    with pytest.raises(ValueError, match="gallery_labels: expected 6 rows to match gallery,"):
        dm.evaluate(x, y, x, y[:5])
    with pytest.raises(ValueError, match=r"groups: expected shape \(6,\)"):
        dm.evaluate(x, y, groups=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="groups: expected integer"):
        dm.evaluate(x, y, groups=torch.zeros(6))
    with pytest.raises(ValueError, match="gallery_groups: only with a separate gallery"):
        dm.evaluate(x, y, gallery_groups=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="groups and gallery_groups"):
        dm.evaluate(x, y, x, y, groups=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="ks: expected an integer >= 1, got 0"):
        dm.evaluate(x, y, ks=(0, 1))
    with pytest.raises(ValueError, match="k: expected an integer >= 1, got 0"):
        dm.evaluate(x, y, k=0)
    with pytest.raises(ValueError, match="distance: unknown name"):
        dm.evaluate(x, y, distance="l1")
    with pytest.raises(TypeError, match="full_map: expected True or False"):
        dm.evaluate(x, y, full_map="yes")
    with pytest.raises(TypeError, match="per_class: expected True or False"):
        dm.evaluate(x, y, per_class=1)
    with pytest.raises(ValueError, match="per_class: needs one class per query"):
        dm.evaluate(x, torch.ones(6, 2, dtype=torch.bool), per_class=True)
    with pytest.raises(TypeError, match="relevance_fn: expected a function"):
        dm.evaluate(x, y, relevance_fn=3)
    with pytest.raises(ValueError, match=r"relevance_fn: expected a bool tensor of shape \(6, 6\)"):
        dm.evaluate(x, y, relevance_fn=lambda q, r: r[:, :2] == q.unsqueeze(1))
    with pytest.raises(TypeError, match="relevance_fn: expected a bool tensor"):
        dm.evaluate(x, y, relevance_fn=lambda q, r: (r == q.unsqueeze(1)).long())


def test_embeddings_that_require_grad_give_the_same_metrics():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(60, 5, generator=gen)
    y = torch.arange(60) // 6
    expected = dm.evaluate(x, y, nmi=False)
    assert dm.evaluate(x.clone().requires_grad_(), y, nmi=False) == expected
    separate = dm.evaluate(x[:20].clone().requires_grad_(), y[:20], gallery=x[20:].clone().requires_grad_(),
                           gallery_labels=y[20:], nmi=False)
    assert separate == dm.evaluate(x[:20], y[:20], gallery=x[20:], gallery_labels=y[20:], nmi=False)


def test_numpy_inputs_in_any_byte_order_and_clear_errors_for_the_rest():
    # torch refuses non-native byte order; the arrays are converted, with the same results
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), np.repeat(np.arange(4), 3)
    swapped = x.astype(">f8" if np.little_endian else "<f8")
    assert dm.evaluate(swapped, y.astype(">i8" if np.little_endian else "<i8"), nmi=False) == dm.evaluate(x, y, nmi=False)
    d, same = rng.random(20), np.arange(20) % 2 == 0
    assert dm.evaluation.verification.roc_auc(d.astype(">f8" if np.little_endian else "<f8"), same) == \
        dm.evaluation.verification.roc_auc(d, same)
    codes = rng.integers(0, 2, size=(6, 8)).astype(np.int16)
    assert torch.equal(dm.codes.to_bits(codes.astype(">i2" if np.little_endian else "<i2")), dm.codes.to_bits(codes))
    with pytest.raises(TypeError, match="labels: expected a numeric or bool array, got dtype <U1"):
        dm.evaluate(x, np.array(list("aabbccddeeff")))
    with pytest.raises(TypeError, match="nmi: expected True or False"):
        dm.evaluate(x, y, nmi="no")
    with pytest.raises(ValueError, match="seed: expected an integer"):
        dm.evaluate(x, y, seed="a")
    with pytest.raises(ValueError, match="embeddings: expected at least one item to cluster"):
        clustering.clustering_scores(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"classes: expected a 1-D array .* got shape \(1, 2\)"):
        clustering.pairwise_f1(np.array([[0, 1]]), np.array([[0, 1]]))
    with pytest.raises(TypeError, match="precision_ns: expected a sequence of integers"):
        dm.evaluation.hashing_scores(codes, y[:6], codes, y[:6], precision_ns=100)


def test_empty_dimensions_and_galleries_are_named():
    x, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"embeddings: expected at least one dimension \(D >= 1\), got shape \(6, 0\)"):
        dm.evaluate(torch.zeros(6, 0), y, nmi=False)
    with pytest.raises(ValueError, match=r"labels: expected at least one column .* got shape \(6, 0\)"):
        dm.evaluate(x, torch.zeros(6, 0, dtype=torch.long), nmi=False)
    with pytest.raises(ValueError, match=r"gallery: expected at least one item"):
        dm.evaluate(x, y, gallery=torch.zeros(0, 3), gallery_labels=torch.zeros(0, dtype=torch.long), nmi=False)
    with pytest.raises(ValueError, match=r"embeddings: expected at least one item"):  # no gallery was passed
        dm.evaluate(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), nmi=False)
    with pytest.raises(TypeError, match=r"ks: expected a sequence of integers, e.g. \(1, 5, 10\), got 10"):
        dm.evaluate(x, y, ks=10, nmi=False)


@pytest.mark.parametrize("k", [10, 10**9])
def test_k_far_beyond_the_gallery_reads_the_whole_ranking_once(k):
    # the search stops at the gallery (6 items); slots beyond are not relevant. Relevance in ranked
    # order 1 0 1 0 0 1 (R = 3): P@k = 3/k, Recall@k 1, mAP@k = (1 + 2/3 + 3/6) / min(k, 3) = 13/18,
    # NDCG@k = (1 + 1/log2 4 + 1/log2 7) / (1 + 1/log2 3 + 1/log2 4). k = 1e9 used to allocate (Q, k).
    q, ql = torch.tensor([[0.0]]), torch.tensor([0])
    g, gl = torch.arange(1.0, 7.0).unsqueeze(1), torch.tensor([0, 1, 0, 1, 1, 0])
    s = dm.evaluate(q, ql, gallery=g, gallery_labels=gl, ks=(1,), k=k, nmi=False)
    assert s[f"precision_at_{k}"] == pytest.approx(3 / k) and s[f"recall_at_{k}"] == 1.0
    assert s[f"map_at_{k}"] == pytest.approx(13 / 18)
    assert s[f"ndcg_at_{k}"] == pytest.approx((1.5 + 1 / math.log2(7)) / (1.5 + 1 / math.log2(3)))
