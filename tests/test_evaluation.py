"""Evaluation: ranking metrics on hand-worked cases and against plain loops and pytorch-metric-learning,
clustering metrics against scikit-learn, protocols (query-in-gallery, separate sets, groups), bad input."""
import logging
import math

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
    # a query without relevant items gives NaN (the caller excludes it)
    assert math.isnan(ranking.map_at_r(rel[:1], torch.tensor([0]))[0])
    assert math.isnan(ranking.r_precision(rel[:1], torch.tensor([0]))[0])


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
# Each query can retrieve 5 items, so of the default ks only 1, 2, 4 are reported.
LINE_X = line(0, 1, 3, 4, 7, 20)
LINE_Y = torch.tensor([0, 0, 1, 0, 1, 2])


def test_hand_worked_query_in_gallery():
    for kw in (dict(), dict(chunk_size=1), dict(chunk_size=4)):
        scores = dm.evaluate(LINE_X, LINE_Y, nmi=False, **kw)
        assert scores == pytest.approx({
            "precision_at_1": 2 / 5, "recall_at_1": 2 / 5, "recall_at_2": 4 / 5, "recall_at_4": 1.0,
            "r_precision": 3 / 10, "map_at_r": 1 / 4, "num_queries": 6, "queries_without_relevant": 1})
        assert all(type(v) is float for k, v in scores.items() if k not in ("num_queries", "queries_without_relevant"))
        assert type(scores["num_queries"]) is int


def test_hand_worked_groups():
    # groups 0 0 1 2 3 4: items 0 and 1 may not retrieve each other.
    # q0 (A): 2 (B), 3 (A), 4, 5 -> F T F F, R=1 (item 3): P@1 0, RP 0, MAP@R 0, R@2 1
    # q1 (A): 2 (B), 3 (A), 4, 5 -> F T F F, R=1: P@1 0, RP 0, MAP@R 0, R@2 1
    # q2, q3, q4 as without groups: (0, 0, 0, R@2 0), (0, 1/2, 1/4, R@2 1), (0, 0, 0, R@2 1); q5 excluded
    # Means over 5: P@1 0, R@2 4/5, R@4 1, RP (1/2)/5 = 1/10, MAP@R (1/4)/5 = 1/20
    scores = dm.evaluate(LINE_X, LINE_Y, groups=torch.tensor([0, 0, 1, 2, 3, 4]), nmi=False)
    assert scores == pytest.approx({
        "precision_at_1": 0.0, "recall_at_1": 0.0, "recall_at_2": 4 / 5, "recall_at_4": 1.0,
        "r_precision": 1 / 10, "map_at_r": 1 / 20, "num_queries": 6, "queries_without_relevant": 1})
    # groups 0 0 1 0 2 3: every A item shares a group with all other A items -> A queries have no
    # relevant item left. q2 (B): 3, 1, 0, 4 (B) -> F F F T, R=1; q4 (B): 3, 2 (B) -> F T, R=1.
    # Means over 2: P@1 0, R@1 0, R@2 1/2, R@4 1, RP 0, MAP@R 0.
    scores = dm.evaluate(LINE_X, LINE_Y, groups=np.array([0, 0, 1, 0, 2, 3]), nmi=False)
    assert scores == pytest.approx({
        "precision_at_1": 0.0, "recall_at_1": 0.0, "recall_at_2": 1 / 2, "recall_at_4": 1.0,
        "r_precision": 0.0, "map_at_r": 0.0, "num_queries": 6, "queries_without_relevant": 4})


def test_hand_worked_separate_sets_and_k_beyond_the_gallery():
    # gallery: g0 x=0 A, g1 x=2 B, g2 x=5 A. Queries: x=1 A, x=4 B, x=3 C.
    # q0 (A): g0 (d1, A) and g1 (d1, B) tie -> gallery order g0 first; g2 (d4, A): T F T, R=2
    #         P@1 1, R@1 1, R@2 1, P@3 2/3, RP 1/2, MAP@R (1/2)(1) = 1/2
    # q1 (B): g2 (d1, A), g1 (d2, B), g0 (d4): F T F, R=1: P@1 0, R@1 0, R@2 1, P@3 1/3, RP 0, MAP@R 0
    # q2 (C): no C in the gallery -> excluded, counted.
    g, gl = line(0, 2, 5), torch.tensor([0, 1, 0])
    q, ql = line(1, 4, 3), torch.tensor([0, 1, 2])
    scores = dm.evaluate(q, ql, gallery=g, gallery_labels=gl, k=3, nmi=False)
    assert scores == pytest.approx({
        "precision_at_1": 1 / 2, "recall_at_1": 1 / 2, "recall_at_2": 1.0, "recall_at_3": 1.0,
        "precision_at_3": 1 / 2, "r_precision": 1 / 4, "map_at_r": 1 / 4,
        "num_queries": 3, "queries_without_relevant": 1})
    # k larger than the gallery: searched as deep as the gallery goes, no recall/precision at 10 reported
    scores = dm.evaluate(q, ql, g, gl, k=10, nmi=False)
    assert "recall_at_10" not in scores and "precision_at_10" not in scores
    assert scores["map_at_r"] == pytest.approx(1 / 4) and scores["recall_at_2"] == 1.0


def test_hand_worked_multilabel():
    # items x = 0 {a}, 1 {b}, 2 {a,b}, 3 {c}, 10 {a}; relevant = at least one label shared
    # q0 {a}:   1 (F), 2 (T), 3 (F), 4 (T); R=2: P@1 0, R@2 1, RP 1/2, MAP@R (1/2)(1/2) = 1/4
    # q1 {b}:   0 (d1, F) and 2 (d1, T) tie -> 0 first; 3 (F), 4 (F); R=1: P@1 0, R@2 1, RP 0, MAP@R 0
    # q2 {a,b}: 1 (d1, T) and 3 (d1, F) tie -> 1 first; 0 (T), 4 (T); R=3: P@1 1, RP 2/3,
    #           MAP@R (1/3)(1/1 + 2/3) = 5/9
    # q3 {c}:   nothing shares c -> excluded
    # q4 {a}:   3 (F), 2 (T), 1 (F), 0 (T); R=2: P@1 0, R@2 1, RP 1/2, MAP@R 1/4
    # Means over 4: P@1 1/4, R@2 1, RP (1/2 + 0 + 2/3 + 1/2)/4 = 5/12, MAP@R (1/4 + 0 + 5/9 + 1/4)/4 = 19/72
    x = line(0, 1, 2, 3, 10)
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    scores = dm.evaluate(x, y)  # nmi requested but skipped: multi-label has no classes to cluster
    assert scores == pytest.approx({
        "precision_at_1": 1 / 4, "recall_at_1": 1 / 4, "recall_at_2": 1.0, "recall_at_4": 1.0,
        "r_precision": 5 / 12, "map_at_r": 19 / 72, "num_queries": 5, "queries_without_relevant": 1})


def test_hand_worked_hierarchical_uses_the_finest_level():
    # x = 0, 1, 2, 3 with labels (parent, child) = (0,0), (1,0), (0,0), (1,0): child 0 recurs under
    # both parents, so only items 0-2 and 1-3 are relevant to each other.
    # q0: 1 (F), 2 (T), 3 (F), R=1: P@1 0, R@2 1
    # q1: 0 (d1, F), 2 (d1, F), 3 (T), R=1: P@1 0, R@2 0
    # q2: 1 (d1, F), 3 (d1, F), 0 (T): P@1 0, R@2 0
    # q3: 2 (F), 1 (T): P@1 0, R@2 1
    # Means: P@1 0, R@2 1/2, RP 0, MAP@R 0 (it would be 1 everywhere if the child column alone counted)
    y = torch.tensor([[0, 0], [1, 0], [0, 0], [1, 0]])
    scores = dm.evaluate(line(0, 1, 2, 3), y, nmi=False)
    assert scores == pytest.approx({
        "precision_at_1": 0.0, "recall_at_1": 0.0, "recall_at_2": 0.5, "r_precision": 0.0,
        "map_at_r": 0.0, "num_queries": 4, "queries_without_relevant": 0})


def test_perfect_embeddings_score_one():
    x = torch.cat([torch.randn(5, 3) * 0.01 + 10 * c for c in range(4)])
    y = torch.arange(4).repeat_interleave(5)
    scores = dm.evaluate(x, y)
    for key in ("precision_at_1", "recall_at_1", "r_precision", "map_at_r", "nmi", "ami"):
        assert scores[key] == pytest.approx(1.0)


def test_no_query_with_a_relevant_item_raises():
    with pytest.raises(ValueError, match="no query has a relevant item"):
        dm.evaluate(line(0, 1, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no query has a relevant item"):
        dm.evaluate(line(0, 1), torch.tensor([0, 1]), line(3), torch.tensor([2]))


# ------------------------------------------------------------------ against pytorch-metric-learning

def pml_scores(q, ql, g=None, gl=None, distance="euclidean"):
    from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    dist = {"euclidean": LpDistance(normalize_embeddings=False), "cosine": CosineSimilarity(),
            "dot": DotProductSimilarity(normalize_embeddings=False)}[distance]
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", knn_func=CustomKNN(dist), device=torch.device("cpu"))
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
    a = dm.evaluate(x, y, groups=groups, nmi=False)
    b = dm.evaluate(x[perm], y[perm], groups=groups[perm], nmi=False)
    assert a == pytest.approx(b, abs=1e-12)


def test_chunk_size_changes_nothing():
    gen = torch.Generator().manual_seed(10)
    q, g = torch.randn(50, 4, generator=gen), torch.randn(70, 4, generator=gen)
    ql, gl = torch.randint(0, 5, (50,), generator=gen), torch.randint(0, 5, (70,), generator=gen)
    qg, gg = torch.randint(0, 9, (50,), generator=gen), torch.randint(0, 9, (70,), generator=gen)
    a = dm.evaluate(q, ql, g, gl, groups=qg, gallery_groups=gg, nmi=False, k=20)
    for chunk_size in (1, 7):
        assert dm.evaluate(q, ql, g, gl, groups=qg, gallery_groups=gg, nmi=False, k=20, chunk_size=chunk_size) == a


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


def test_ks_reported_only_where_the_gallery_allows():
    gen = torch.Generator().manual_seed(8)
    x, y = torch.randn(9, 3, generator=gen), torch.randint(0, 2, (9,), generator=gen)
    scores = dm.evaluate(x, y, nmi=False)
    assert [k for k in scores if k.startswith("recall_at_")] == ["recall_at_1", "recall_at_2", "recall_at_4",
                                                                "recall_at_8"]
    scores = dm.evaluate(x, y, nmi=False, ks=(3,), k=5)
    assert [k for k in scores if k.startswith(("recall_at_", "precision_at_"))] == [
        "precision_at_1", "recall_at_3", "recall_at_5", "precision_at_5"]


def test_bad_input_raises_clear_errors():
    x, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="embeddings: contains NaN"):
        dm.evaluate(torch.full((6, 3), math.nan), y)
    with pytest.raises(ValueError, match="labels: expected 6 rows"):
        dm.evaluate(x, y[:5])
    with pytest.raises(TypeError, match="labels: expected integer"):
        dm.evaluate(x, y.float())
    with pytest.raises(TypeError, match="embeddings: expected a numpy array or torch.Tensor"):
        dm.evaluate(x.tolist(), y)
    with pytest.raises(ValueError, match="gallery and gallery_labels"):
        dm.evaluate(x, y, gallery=x)
    with pytest.raises(ValueError, match="ref_embeddings: expected dimension 3"):
        dm.evaluate(x, y, torch.randn(4, 2), y[:4])
    with pytest.raises(ValueError, match="ref_labels: expected the same label form"):
        dm.evaluate(x, y, x, torch.zeros(6, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"groups: expected shape \(6,\)"):
        dm.evaluate(x, y, groups=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="groups: expected integer"):
        dm.evaluate(x, y, groups=torch.zeros(6))
    with pytest.raises(ValueError, match="gallery_groups: only with a separate gallery"):
        dm.evaluate(x, y, gallery_groups=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="groups and gallery_groups"):
        dm.evaluate(x, y, x, y, groups=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="ks/k: expected integers >= 1"):
        dm.evaluate(x, y, ks=(0, 1))
    with pytest.raises(ValueError, match="ks/k: expected integers >= 1"):
        dm.evaluate(x, y, k=0)
    with pytest.raises(ValueError, match="distance: unknown name"):
        dm.evaluate(x, y, distance="l1")
