"""Evaluation of embeddings the way the metric-learning literature reports it.

``evaluate`` runs one exact k-NN search (chunked over queries, so memory stays bounded), turns the
results into a ``(Q, k)`` relevance matrix and reads every ranking metric from it
(:mod:`deepmetric.evaluation.ranking`); clustering metrics come from k-means on the query embeddings
(:mod:`deepmetric.evaluation.clustering`).
"""
from __future__ import annotations

import numpy as np
import torch

from deepmetric._checks import check_pair
from deepmetric.distances import check_distance
from deepmetric.evaluation import clustering, ranking
from deepmetric.index.exact import _Searcher
from deepmetric.labels import is_multilabel

DEFAULT_KS = (1, 2, 4, 8, 10, 100)
#: bound on the elements of one chunk's (queries x depth) results
_RESULTS_BLOCK = 1 << 22

__all__ = ["evaluate", "clustering", "ranking", "DEFAULT_KS"]


def _as_tensor(x, name: str):
    if x is None or isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x, copy=True) if not x.flags.writeable else x)
    raise TypeError(f"{name}: expected a numpy array or torch.Tensor, got {type(x).__name__}")


def _check_groups(groups, n: int, name: str):
    if groups is None:
        return None
    groups = _as_tensor(groups, name)
    if groups.dim() != 1 or groups.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(groups.shape)}")
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer group ids, got {groups.dtype}")
    return groups.long()


def _check_ks(ks, k):
    ks = tuple(ks)
    for value in ks + (() if k is None else (k,)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"ks/k: expected integers >= 1, got {value!r}")
    return tuple(int(v) for v in ks), None if k is None else int(k)


def evaluate(embeddings, labels, gallery=None, gallery_labels=None, *, k: int | None = None,
             distance: str = "euclidean", groups=None, gallery_groups=None, ks=DEFAULT_KS,
             nmi: bool = True, seed: int = 0, chunk_size: int = 1024) -> dict:
    """Retrieval and clustering metrics of embeddings, as a dict of python numbers.

    Protocols:

    * ``evaluate(emb, labels)``: query-in-gallery. Every item is a query against all the others
      (itself excluded).
    * ``evaluate(q, q_labels, gallery=g, gallery_labels=g_labels)``: separate query and gallery sets.

    Labels are flat ``(N,)`` int, hierarchical ``(N, L)`` int (relevant = same finest class) or
    multi-label ``(N, C)`` bool (relevant = at least one label shared). ``groups`` (and
    ``gallery_groups`` with a separate gallery) are integer ids; a query never retrieves an item of
    its own group, and such items do not count as relevant.

    The search depth is ``max(largest number of relevant items of any query, largest reported k,
    k)``, so MAP@R and R-precision are exact. Queries with no relevant item in the gallery are
    excluded from every mean and counted in ``queries_without_relevant``.

    Keys: ``precision_at_1``; ``recall_at_{k}`` (hit rate) for ``k`` in ``ks`` (and the given ``k``)
    up to the number of items a query can retrieve; ``precision_at_{k}`` for the given ``k``;
    ``r_precision``; ``map_at_r``; ``nmi`` and ``ami`` (k-means on the query embeddings, one cluster
    per class, ``seed``; not for multi-label); ``num_queries``; ``queries_without_relevant``.

    >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    >>> evaluate(x, torch.tensor([0, 0, 1, 1]), nmi=False)["map_at_r"]
    1.0
    """
    embeddings, labels = _as_tensor(embeddings, "embeddings"), _as_tensor(labels, "labels")
    gallery, gallery_labels = _as_tensor(gallery, "gallery"), _as_tensor(gallery_labels, "gallery_labels")
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery and gallery_labels must be given together")
    self_mode = gallery is None
    queries, q_labels, gallery, g_labels = check_pair(embeddings, labels, gallery, gallery_labels)
    distance = check_distance(distance)
    ks, k = _check_ks(ks, k)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    n_q, n_g = queries.shape[0], gallery.shape[0]
    if n_q == 0:
        raise ValueError("embeddings: expected at least one query, got an empty (0, D) tensor")
    if self_mode:
        if gallery_groups is not None:
            raise ValueError("gallery_groups: only with a separate gallery; use groups for query-in-gallery")
        q_groups = g_groups = _check_groups(groups, n_q, "groups")
    else:
        if (groups is None) != (gallery_groups is None):
            raise ValueError("groups and gallery_groups must be given together with a separate gallery")
        q_groups = _check_groups(groups, n_q, "groups")
        g_groups = _check_groups(gallery_groups, n_g, "gallery_groups")

    device = queries.device
    dtype = torch.float64 if torch.float64 in (queries.dtype, gallery.dtype) else torch.float32
    queries, gallery = queries.to(dtype), gallery.to(device=device, dtype=dtype)
    q_labels, g_labels = q_labels.to(device), g_labels.to(device)
    if q_groups is not None:
        q_groups, g_groups = q_groups.to(device), g_groups.to(device)

    n_relevant = ranking.count_relevant(q_labels, g_labels, self_mode, q_groups, g_groups)
    keep = (n_relevant > 0).nonzero().flatten()
    if keep.numel() == 0:
        raise ValueError("labels/gallery_labels: no query has a relevant item in the gallery "
                         "(after excluding itself and its group), so no ranking metric is defined")

    retrievable = n_g - int(self_mode)
    report_ks = sorted({v for v in ks + (() if k is None else (k,)) if v <= retrievable})
    min_depth = max(report_ks + [1, k or 1])
    per_query: dict[str, list[torch.Tensor]] = {}
    searcher = _Searcher(gallery, distance)
    step = max(1, min(chunk_size, _RESULTS_BLOCK // max(min_depth, int(n_relevant.max()))))
    for s in range(0, keep.numel(), step):
        rows = keep[s:s + step]
        n_rel = n_relevant[rows]
        depth = min(max(min_depth, int(n_rel.max())), n_g)
        _, indices = searcher.search(queries[rows], depth, rows if self_mode else None,
                                     None if q_groups is None else q_groups[rows], g_groups)
        rel = ranking.relevance(indices, q_labels[rows], g_labels)
        scores = {"precision_at_1": ranking.precision_at_1(rel)}
        for v in report_ks:
            scores[f"recall_at_{v}"] = ranking.recall_at_k(rel, v)
        if k is not None and k <= retrievable:
            scores[f"precision_at_{k}"] = ranking.precision_at_k(rel, k)
        scores["r_precision"] = ranking.r_precision(rel, n_rel)
        scores["map_at_r"] = ranking.map_at_r(rel, n_rel)
        for name, value in scores.items():
            per_query.setdefault(name, []).append(value)

    results = {name: float(torch.cat(values).mean()) for name, values in per_query.items()}
    if nmi and not is_multilabel(q_labels):
        results.update(clustering.clustering_scores(queries, q_labels, seed=seed))
    results["num_queries"] = int(n_q)
    results["queries_without_relevant"] = int(n_q - keep.numel())
    return results
