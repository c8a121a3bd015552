"""Clustering: pairwise F1 by hand and against a loop over all pairs; sklearn and faiss k-means backends."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import normalized_mutual_info_score

from deepmetric.evaluation import clustering


def loop_f1(classes, clusters):
    """Song et al. 2016: precision and recall over all pairs (i < j) put in the same cluster / class."""
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(classes)), 2):
        same_cluster, same_class = clusters[i] == clusters[j], classes[i] == classes[j]
        tp += same_cluster and same_class
        fp += same_cluster and not same_class
        fn += same_class and not same_cluster
    if tp == 0:
        return 1.0 if fp == fn == 0 else 0.0  # no pair anywhere: identical all-singleton partitions
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)


def separated(n_per_class=10, n_classes=4, dim=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(n_classes, dim) * 20 if n_classes <= dim else torch.randn(n_classes, dim, generator=gen) * 20
    x = centres.repeat_interleave(n_per_class, 0) + 0.1 * torch.randn(n_classes * n_per_class, dim, generator=gen)
    y = torch.arange(n_classes).repeat_interleave(n_per_class) * 5 + 3  # non-contiguous ids
    return x, y


# ------------------------------------------------------------------ pairwise F1

def test_pairwise_f1_hand_worked():
    # classes 0 0 1 1, clusters 0 0 0 1: cluster pairs (0,1) (0,2) (1,2) = 3, class pairs (0,1) (2,3) = 2,
    # both: (0,1) -> TP 1; P = 1/3, R = 1/2, F1 = 2 (1/6) / (5/6) = 0.4
    assert clustering.pairwise_f1([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.4)
    # classes 0 0 0 1 1 1, clusters 0 0 1 1 2 2: cluster pairs 3 (01, 23, 45), class pairs 3 + 3 = 6,
    # TP: (0,1) and (4,5) = 2 -> P = 2/3, R = 1/3, F1 = 2 (2/9) / 1 = 4/9
    assert clustering.pairwise_f1(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(4 / 9)
    # relabelling clusters or classes changes nothing; a perfect clustering scores 1
    assert clustering.pairwise_f1([5, 5, 9, 9], [1, 1, 0, 0]) == 1.0
    # no true positive pair: classes 0 0, clusters 0 1 -> 0; all singletons on both sides -> 1
    assert clustering.pairwise_f1([0, 0], [0, 1]) == 0.0
    assert clustering.pairwise_f1([0, 1, 2], [2, 1, 0]) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=25))
def test_pairwise_f1_equals_pair_loop(pairs):
    classes, clusters = [p[0] for p in pairs], [p[1] for p in pairs]
    assert clustering.pairwise_f1(classes, clusters) == pytest.approx(loop_f1(classes, clusters), abs=1e-12)
    # symmetric: swapping the roles of classes and clusters swaps P and R
    assert clustering.pairwise_f1(clusters, classes) == pytest.approx(loop_f1(classes, clusters), abs=1e-12)


def test_pairwise_f1_bad_input():
    with pytest.raises(ValueError, match=r"clusters: expected shape \(3,\) to match classes"):
        clustering.pairwise_f1([0, 1, 2], [0, 1])


# ------------------------------------------------------------------ clustering_scores with F1

@pytest.mark.parametrize("seed", [0, 1])
def test_clustering_scores_f1_matches_the_pair_loop_on_the_same_clusters(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 4, generator=gen)
    y = torch.randint(0, 5, (60,), generator=gen)
    for backend in clustering.KMEANS_BACKENDS:
        n_classes = len(torch.unique(y))
        clusters = clustering.kmeans(x, n_classes, seed=seed, backend=backend)
        scores = clustering.clustering_scores(x, y, seed=seed, backend=backend)
        assert scores["f1"] == pytest.approx(loop_f1(y.tolist(), clusters.tolist()), abs=1e-12)
        assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y.numpy(), clusters), abs=1e-12)
        assert clustering.f1(x, y, seed=seed, backend=backend) == scores["f1"]
        assert 0.0 < scores["f1"] < 1.0  # random points: some pairs right, not all


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_both_backends_recover_well_separated_clusters(backend):
    x, y = separated(n_per_class=10, n_classes=6, dim=8, seed=2)
    scores = clustering.clustering_scores(x, y, seed=0, n_init=3, backend=backend)
    assert scores == pytest.approx({"nmi": 1.0, "ami": 1.0, "f1": 1.0})
    assert clustering.nmi(x, y, backend=backend, n_init=3) == pytest.approx(1.0)
    clusters = clustering.kmeans(x, 6, seed=0, n_init=3, backend=backend)
    assert clusters.shape == (60,) and clusters.dtype.kind == "i"
    assert len(np.unique(clusters)) == 6


def test_faiss_kmeans_is_seeded():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(80, 5, generator=gen)
    a = clustering.kmeans(x, 6, seed=3, backend="faiss")
    assert np.array_equal(a, clustering.kmeans(x, 6, seed=3, backend="faiss"))
    assert any(not np.array_equal(a, clustering.kmeans(x, 6, seed=s, backend="faiss")) for s in range(4, 9))


def test_unknown_backend():
    x, y = separated()
    with pytest.raises(ValueError, match="backend: unknown k-means backend 'cuml'; expected one of sklearn, faiss"):
        clustering.kmeans(x, 4, backend="cuml")
    with pytest.raises(ValueError, match="backend: unknown k-means backend"):
        clustering.clustering_scores(x, y, backend="cuml")


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_nmi_and_f1_hand_worked(backend):
    """Two clear clusters {0, 1} and {2, 3} under classes (0, 0, 0, 1): k-means must find the clusters.
    With p(class, cluster) = 1/2 at (0, a), 1/4 at (0, b) and (1, b):
    I = 1/2 ln(4/3) + 1/4 ln(2/3) + 1/4 ln 2, H(class) = -(3/4 ln 3/4 + 1/4 ln 1/4), H(cluster) = ln 2,
    NMI = I / ((H(class) + H(cluster)) / 2) (arithmetic normalisation) = 0.3437.
    F1 over pairs: same cluster {01, 23}, same class {01, 02, 12}: TP 1, FP 1, FN 2, so P 1/2, R 1/3, F1 2/5."""
    from math import log
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    scores = clustering.clustering_scores(x, torch.tensor([0, 0, 0, 1]), backend=backend)
    mutual = 0.5 * log(4 / 3) + 0.25 * log(2 / 3) + 0.25 * log(2)
    h_class, h_cluster = -(0.75 * log(0.75) + 0.25 * log(0.25)), log(2)
    assert scores["nmi"] == pytest.approx(mutual / ((h_class + h_cluster) / 2), abs=1e-12)
    assert scores["nmi"] == pytest.approx(0.3437, abs=1e-4)
    assert scores["f1"] == pytest.approx(0.4, abs=1e-12)


def test_pairwise_f1_of_nothing_is_refused():
    with pytest.raises(ValueError, match="classes: expected at least one item"):
        clustering.pairwise_f1([], [])


def test_numpy_input_is_accepted():
    x = np.array([[0.0], [0.1], [5.0], [5.1]])
    assert clustering.clustering_scores(x, np.array([0, 0, 1, 1])) == {"nmi": 1.0, "ami": 1.0, "f1": 1.0}
