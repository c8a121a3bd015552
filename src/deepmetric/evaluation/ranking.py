"""Retrieval metrics as pure functions of one ranked relevance matrix.

Every metric here reads ``rel``, a ``(Q, k)`` bool tensor whose entry ``(q, i)`` is True when the
``i``-th result (``i`` from 1, ascending distance) of query ``q`` is relevant, with padded slots
False, and, where needed, ``n_relevant`` ``(Q,)``: how many relevant items the gallery holds for each
query after exclusions (self, same group). Each returns a per-query float64 tensor; the caller takes
the mean over the queries it keeps (queries with ``n_relevant == 0`` are excluded there, never scored
as zero). :func:`relevance` and :func:`count_relevant` build the two inputs from labels.
"""
from __future__ import annotations

import torch

from deepmetric.labels import is_multilabel, same_mask

#: bound on the elements of a temporary (chunk, k, C) or (chunk, G) tensor
_BLOCK = 1 << 23


# ----------------------------------------------------------------------------- checks

def _check_rel(rel: torch.Tensor) -> torch.Tensor:
    if not isinstance(rel, torch.Tensor):
        raise TypeError(f"rel: expected a bool torch.Tensor of shape (Q, k), got {type(rel).__name__}")
    if rel.dtype != torch.bool or rel.dim() != 2:
        raise ValueError(f"rel: expected a bool tensor of shape (Q, k), got {rel.dtype} {tuple(rel.shape)}")
    return rel


def _check_k(rel: torch.Tensor, k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    if k > rel.shape[1]:
        raise ValueError(f"k: rel has only {rel.shape[1]} columns, got k={k}; search with at least k results")
    return k


def _check_n_relevant(rel: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    if not isinstance(n_relevant, torch.Tensor):
        raise TypeError(f"n_relevant: expected an integer torch.Tensor of shape (Q,), got {type(n_relevant).__name__}")
    if n_relevant.dim() != 1 or n_relevant.shape[0] != rel.shape[0]:
        raise ValueError(f"n_relevant: expected shape ({rel.shape[0]},) to match rel, got {tuple(n_relevant.shape)}")
    if n_relevant.is_floating_point() or n_relevant.dtype == torch.bool or n_relevant.is_complex():
        raise TypeError(f"n_relevant: expected integer counts, got {n_relevant.dtype}")
    if n_relevant.numel() and int(n_relevant.min()) < 0:
        raise ValueError("n_relevant: expected counts >= 0, got a negative count")
    if n_relevant.numel() and int(n_relevant.max()) > rel.shape[1]:
        raise ValueError(
            f"rel: has {rel.shape[1]} columns but a query has {int(n_relevant.max())} relevant items; "
            "search with k >= max(n_relevant) for metrics at R")
    return n_relevant.to(rel.device)


# ----------------------------------------------------------------------------- metrics

def precision_at_1(rel: torch.Tensor) -> torch.Tensor:
    """``P@1 = rel(1)``: 1 when the nearest result is relevant, else 0."""
    _check_k(_check_rel(rel), 1)
    return rel[:, 0].double()


def recall_at_k(rel: torch.Tensor, k: int) -> torch.Tensor:
    """Recall@k as the field reports it for metric learning (hit rate; Song et al. 2016,
    "Deep Metric Learning via Lifted Structured Feature Embedding"): ``1[sum_{i<=k} rel(i) > 0]``."""
    k = _check_k(_check_rel(rel), k)
    return rel[:, :k].any(dim=1).double()


def precision_at_k(rel: torch.Tensor, k: int) -> torch.Tensor:
    """``P@k = (1/k) sum_{i<=k} rel(i)`` (padded slots count as not relevant)."""
    k = _check_k(_check_rel(rel), k)
    return rel[:, :k].sum(dim=1).double() / k


def _within_r(rel: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """``rel(i)`` for ``i <= R`` and False beyond, ``R = n_relevant`` per query."""
    ranks = torch.arange(rel.shape[1], device=rel.device)
    return rel & (ranks.unsqueeze(0) < n_relevant.unsqueeze(1))


def r_precision(rel: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """R-precision: precision in the top R, ``R`` = number of relevant items of the query.

    ``RP = (1/R) sum_{i<=R} rel(i)`` (Musgrave et al. 2020, "A Metric Learning Reality Check").
    Queries with ``R = 0`` get NaN (exclude them before averaging).
    """
    rel = _check_rel(rel)
    n_relevant = _check_n_relevant(rel, n_relevant)
    return _within_r(rel, n_relevant).sum(dim=1).double() / n_relevant.double()


def map_at_r(rel: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """Mean average precision at R (Musgrave et al. 2020, "A Metric Learning Reality Check").

    ``MAP@R = (1/R) sum_{i<=R} P(i) rel(i)`` with ``P(i) = (1/i) sum_{j<=i} rel(j)`` and ``R`` the
    number of relevant items of the query. Queries with ``R = 0`` get NaN (exclude them first).
    """
    rel = _check_rel(rel)
    n_relevant = _check_n_relevant(rel, n_relevant)
    hits = _within_r(rel, n_relevant)
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float64)
    precision = hits.cumsum(dim=1).double() / ranks
    return (precision * hits).sum(dim=1) / n_relevant.double()


# ----------------------------------------------------------------------------- relevance from labels

def _flat_ids(query_labels: torch.Tensor, gallery_labels: torch.Tensor):
    """Contiguous class ids ``0..C-1`` shared by queries and gallery (rows of a hierarchy = finest class).

    Two items get the same id exactly when ``labels.same_mask`` relates them (flat: equal labels;
    hierarchical at the finest level: all columns equal).
    """
    both = torch.cat([query_labels, gallery_labels.to(query_labels.device)])
    _, ids = torch.unique(both, dim=0 if both.dim() == 2 else None, return_inverse=True)
    return ids[: query_labels.shape[0]], ids[query_labels.shape[0]:]


def relevance(indices: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """``(Q, k)`` bool: result ``indices[q, i]`` (a gallery index, ``-1`` for padding) is relevant to query q.

    Relevance is ``labels.same_mask`` (flat: equal label; hierarchical: same finest class, i.e. all
    columns equal; multi-label: at least one label shared) evaluated only at the returned indices: the
    labels of the results are gathered and compared, so no ``(Q, G)`` mask is ever built. Padded slots
    are False.
    """
    valid = indices >= 0
    idx = indices.clamp_min(0)
    query_labels, gallery_labels = query_labels.to(idx.device), gallery_labels.to(idx.device)
    if query_labels.dim() == 1:
        return (gallery_labels[idx] == query_labels.unsqueeze(1)) & valid
    step = max(1, _BLOCK // max(1, idx.shape[1] * query_labels.shape[1]))
    out = []
    for s in range(0, idx.shape[0], step):
        found, wanted = gallery_labels[idx[s:s + step]], query_labels[s:s + step].unsqueeze(1)
        if is_multilabel(query_labels):
            out.append((found & wanted).any(dim=2))
        else:
            out.append((found == wanted).all(dim=2))
    rel = torch.cat(out) if out else torch.zeros(idx.shape, dtype=torch.bool, device=idx.device)
    return rel & valid


def count_relevant(query_labels: torch.Tensor, gallery_labels: torch.Tensor, exclude_self: bool = False,
                   query_groups: torch.Tensor | None = None,
                   gallery_groups: torch.Tensor | None = None) -> torch.Tensor:
    """``(Q,)`` int64: number of gallery items relevant to each query, after the search's exclusions.

    Exclusions match :func:`deepmetric.index.knn`: with ``exclude_self`` query i is gallery item i and
    is not counted; with groups, items of the query's group are not counted. Flat and hierarchical
    labels are counted from class (and class-group) counts; multi-label relevance is counted chunk
    by chunk from ``labels.same_mask``.
    """
    n_q = query_labels.shape[0]
    if not is_multilabel(query_labels):
        q_ids, g_ids = _flat_ids(query_labels, gallery_labels)
        n_ids = int(torch.cat([q_ids, g_ids]).max()) + 1 if n_q + g_ids.numel() else 0
        counts = torch.bincount(g_ids, minlength=n_ids)[q_ids]
        self_counted = torch.ones(n_q, dtype=torch.bool, device=q_ids.device)  # an item matches itself
        if query_groups is not None:
            q_key, g_key = _flat_ids(torch.stack([q_ids, query_groups.to(q_ids.device)], 1),
                                     torch.stack([g_ids, gallery_groups.to(q_ids.device)], 1))
            n_keys = int(torch.cat([q_key, g_key]).max()) + 1
            counts = counts - torch.bincount(g_key, minlength=n_keys)[q_key]
            if exclude_self:  # self is already removed when it is in the query's group
                self_counted = query_groups.to(q_ids.device) != gallery_groups[:n_q].to(q_ids.device)
        if exclude_self:
            counts = counts - self_counted.long()
        return counts
    counts = []
    step = max(1, _BLOCK // max(1, gallery_labels.shape[0]))
    for s in range(0, n_q, step):
        rel = same_mask(query_labels[s:s + step], gallery_labels)
        if query_groups is not None:
            rel &= query_groups[s:s + step].unsqueeze(1) != gallery_groups.unsqueeze(0)
        if exclude_self:
            rows = torch.arange(rel.shape[0], device=rel.device)
            rel[rows, rows + s] = False
        counts.append(rel.sum(dim=1))
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)
