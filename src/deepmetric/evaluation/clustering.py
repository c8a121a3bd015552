"""Clustering quality of embeddings: k-means with one cluster per class, scored against the labels.

Protocol of the metric-learning literature (Song et al. 2016, "Deep Metric Learning via Lifted
Structured Feature Embedding"; Musgrave et al. 2020): run k-means with as many clusters as classes on
the embeddings, then compare the cluster assignment Omega with the classes C by

* NMI (normalised mutual information) ``NMI(Omega, C) = 2 I(Omega; C) / (H(Omega) + H(C))``
  (scikit-learn's ``normalized_mutual_info_score``, arithmetic mean normalisation);
* AMI (adjusted mutual information, Vinh et al. 2010), MI corrected for chance:
  ``AMI = (I - E[I]) / (mean(H(Omega), H(C)) - E[I])``.

k-means is scikit-learn's ``KMeans`` (k-means++ initialisation, ``n_init`` restarts, ``random_state=seed``),
run on float64 copies of the embeddings so that results do not depend on the input dtype.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from deepmetric._checks import check_embeddings, check_labels
from deepmetric.labels import is_multilabel


def class_ids(labels: torch.Tensor) -> np.ndarray:
    """Flat class ids as a numpy array; a hierarchy's rows become their finest class."""
    if is_multilabel(labels):
        raise ValueError("labels: clustering metrics need one class per item; multi-label (bool) labels have none")
    _, ids = torch.unique(labels, dim=0 if labels.dim() == 2 else None, return_inverse=True)
    return ids.cpu().numpy()


def kmeans(embeddings: torch.Tensor, n_clusters: int, seed: int = 0, n_init: int = 1) -> np.ndarray:
    """Cluster assignment ``(B,)`` of scikit-learn's k-means on the embeddings."""
    x = embeddings.detach().cpu().double().numpy()
    if not 1 <= n_clusters <= x.shape[0]:
        raise ValueError(f"n_clusters: expected 1..{x.shape[0]} (the number of embeddings), got {n_clusters}")
    return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(x)


def clustering_scores(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1) -> dict:
    """``{"nmi": ..., "ami": ...}`` from one k-means run with as many clusters as classes.

    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    >>> clustering_scores(x, torch.tensor([0, 0, 1, 1]))["nmi"]
    1.0
    """
    embeddings = check_embeddings(embeddings, "embeddings")
    classes = class_ids(check_labels(labels, embeddings.shape[0], "labels"))
    clusters = kmeans(embeddings, int(classes.max()) + 1 if classes.size else 0, seed=seed, n_init=n_init)
    return {"nmi": float(normalized_mutual_info_score(classes, clusters)),
            "ami": float(adjusted_mutual_info_score(classes, clusters))}


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1) -> float:
    """NMI between k-means clusters (one per class) and the classes: ``2 I(Omega; C) / (H(Omega) + H(C))``."""
    return clustering_scores(embeddings, labels, seed=seed, n_init=n_init)["nmi"]


def ami(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, n_init: int = 1) -> float:
    """AMI between k-means clusters (one per class) and the classes: ``(I - E[I]) / (mean(H) - E[I])``."""
    return clustering_scores(embeddings, labels, seed=seed, n_init=n_init)["ami"]
