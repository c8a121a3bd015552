"""Clustering quality of embeddings: k-means with one cluster per class, scored against the labels.

Protocol of the metric-learning literature (Song et al. 2016, "Deep Metric Learning via Lifted
Structured Feature Embedding"; Musgrave et al. 2020): run k-means with as many clusters as classes on
the embeddings, then compare the cluster assignment Omega with the classes C by

* NMI (normalised mutual information) ``NMI(Omega, C) = 2 I(Omega; C) / (H(Omega) + H(C))``
  (scikit-learn's ``normalized_mutual_info_score``, arithmetic mean normalisation);
* AMI (adjusted mutual information, Vinh et al. 2010), MI corrected for chance:
  ``AMI = (I - E[I]) / (mean(H(Omega), H(C)) - E[I])``;
* F1 over pairs (Song et al. 2016): a pair of items is a true positive when it is in the same
  cluster and the same class, ``P = TP / #pairs in the same cluster``, ``R = TP / #pairs in the same
  class``, ``F1 = 2 P R / (P + R)`` (:func:`pairwise_f1`).

k-means is scikit-learn's ``KMeans`` (k-means++ initialisation, ``n_init`` restarts, ``random_state=seed``)
on float64 copies of the embeddings, so that results do not depend on the input dtype, or faiss'
``Kmeans`` (``backend="faiss"``, float32, as pytorch-metric-learning's AccuracyCalculator runs it).
"""
from __future__ import annotations

import numpy as np
import torch

from deepmetric._checks import as_tensor, check_embeddings, check_labels, check_seed
from deepmetric.labels import is_multilabel, item_classes

KMEANS_BACKENDS = ("sklearn", "faiss")


def class_ids(labels: torch.Tensor) -> np.ndarray:
    """Flat class ids as a numpy array; a hierarchy's rows become their finest class."""
    if is_multilabel(labels):
        raise ValueError("labels: clustering metrics need one class per item; multi-label (bool) labels have none")
    return item_classes(labels)[1].cpu().numpy()


def kmeans(embeddings: torch.Tensor, n_clusters: int, seed: int = 0, n_init: int = 1,
           backend: str = "sklearn") -> np.ndarray:
    """Cluster assignment ``(B,)`` of k-means (Lloyd's algorithm, k-means++ or random initialisation).

    ``backend="sklearn"``: ``KMeans(n_clusters, n_init=n_init, random_state=seed)`` on float64.
    ``backend="faiss"``: ``faiss.Kmeans(D, n_clusters, nredo=n_init, seed=seed)`` on float32 with every
    point used for training (no subsampling), then each point assigned to its nearest centroid.
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"backend: unknown k-means backend {backend!r}; expected one of {', '.join(KMEANS_BACKENDS)}")
    x = embeddings.detach().cpu().double().numpy()
    seed = check_seed(seed)
    if x.shape[0] == 0:
        raise ValueError("embeddings: expected at least one item to cluster, got an empty (0, D) tensor")
    if not 1 <= n_clusters <= x.shape[0]:
        raise ValueError(f"n_clusters: expected 1..{x.shape[0]} (the number of embeddings), got {n_clusters}")
    top = float(np.abs(x).max())
    if top > 0:  # k-means is scale-invariant; a power of two brings any data in range with no rounding, so the
        x = np.ldexp(x, -np.frexp(top)[1])  # squared distances cannot overflow (faiss aborted the process)
    if backend == "sklearn":  # scikit-learn and faiss are imported when used: each costs memory and time
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(x)
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], n_clusters, nredo=n_init, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=x.shape[0])
    km.train(x)
    return km.index.search(x, 1)[1][:, 0].astype(np.int64)


def _n_pairs(counts: np.ndarray) -> int:
    """``sum_i C(m_i) = sum_i m_i (m_i - 1) / 2``: the pairs inside groups of sizes ``m_i``."""
    counts = np.asarray(counts, dtype=np.int64)
    return int((counts * (counts - 1)).sum() // 2)


def pairwise_f1(classes, clusters) -> float:
    """Pairwise F1 of a clustering against the classes (Song et al. 2016), from the contingency table.

    With ``n_kc`` items of class ``c`` in cluster ``k``, ``a_k = sum_c n_kc``, ``b_c = sum_k n_kc``
    and ``C(m) = m (m - 1) / 2`` pairs::

        TP = sum_kc C(n_kc),   P = TP / sum_k C(a_k),   R = TP / sum_c C(b_c),
        F1 = 2 P R / (P + R) = 2 TP / (sum_k C(a_k) + sum_c C(b_c))

    F1 is 0 when no pair is a true positive, and 1 when both partitions are all singletons.

    >>> pairwise_f1([0, 0, 1, 1], [0, 0, 0, 1])  # TP 1, cluster pairs 3, class pairs 2
    0.4
    """
    classes, clusters = np.asarray(classes), np.asarray(clusters)
    if classes.ndim != 1:
        raise ValueError(f"classes: expected a 1-D array (one class per item), got shape {classes.shape}")
    if clusters.shape != classes.shape:
        raise ValueError(f"clusters: expected shape {classes.shape} to match classes, got {clusters.shape}")
    if classes.size == 0:
        raise ValueError("classes: expected at least one item, got none")
    from sklearn.metrics.cluster import contingency_matrix

    tp = _n_pairs(contingency_matrix(classes, clusters, sparse=True).data)
    denominator = (_n_pairs(np.unique(clusters, return_counts=True)[1])
                   + _n_pairs(np.unique(classes, return_counts=True)[1]))
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def clustering_scores(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1,
                      backend: str = "sklearn") -> dict:
    """``{"nmi": ..., "ami": ..., "f1": ...}`` from one k-means run with as many clusters as classes.

    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    >>> clustering_scores(x, torch.tensor([0, 0, 1, 1]))["nmi"]
    1.0
    """
    embeddings = check_embeddings(as_tensor(embeddings, "embeddings"), "embeddings")
    classes = class_ids(check_labels(as_tensor(labels, "labels"), embeddings.shape[0], "labels"))
    clusters = kmeans(embeddings, int(classes.max()) + 1 if classes.size else 0, seed=seed, n_init=n_init,
                      backend=backend)
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    return {"nmi": float(normalized_mutual_info_score(classes, clusters)),
            "ami": float(adjusted_mutual_info_score(classes, clusters)),
            "f1": pairwise_f1(classes, clusters)}


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1,
        backend: str = "sklearn") -> float:
    """NMI between k-means clusters (one per class) and the classes: ``2 I(Omega; C) / (H(Omega) + H(C))``."""
    return clustering_scores(embeddings, labels, seed=seed, n_init=n_init, backend=backend)["nmi"]


def ami(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1,
        backend: str = "sklearn") -> float:
    """AMI between k-means clusters (one per class) and the classes: ``(I - E[I]) / (mean(H) - E[I])``."""
    return clustering_scores(embeddings, labels, seed=seed, n_init=n_init, backend=backend)["ami"]


def f1(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1,
       backend: str = "sklearn") -> float:
    """Pairwise F1 between k-means clusters (one per class) and the classes: ``2 P R / (P + R)``."""
    return clustering_scores(embeddings, labels, seed=seed, n_init=n_init, backend=backend)["f1"]
