"""Retrieval metrics as pure functions of one ranked relevance matrix.

Every metric here reads ``rel``, a ``(Q, k)`` bool tensor whose entry ``(q, i)`` is True when the
``i``-th result (``i`` from 1, ascending distance) of query ``q`` is relevant, with padded slots
False, and, where needed, ``n_relevant`` ``(Q,)``: how many relevant items the gallery holds for each
query after exclusions (self, same group). Graded metrics (NDCG) read ``gains`` ``(Q, k)`` instead:
the gain of each result (binary relevance: ``rel``; a hierarchy: the number of shared levels,
:func:`graded_relevance`). Each returns a per-query float64 tensor; the caller takes the mean over the
queries it keeps (queries with ``n_relevant == 0`` are excluded there, never scored as zero).
:func:`relevance`, :func:`graded_relevance`, :func:`count_relevant` and :func:`ideal_gains` build the
inputs from labels. :func:`gap_at_k` is the one pooled metric: it ranks classification scores of all
items together (YouTube-8M's Global Average Precision) and returns a float.

Notation: ``P(i) = (1/i) sum_{j<=i} rel(j)`` is the precision at rank ``i`` and ``R`` the number of
relevant items of a query.
"""
from __future__ import annotations

import torch

from deepmetric._checks import as_tensor, check_groups, check_int
from deepmetric.evaluation import _multilabel
from deepmetric.labels import is_multilabel, item_classes

#: bound on the elements of a temporary (chunk, k, C) or (chunk, G) tensor
_BLOCK = 1 << 23


# ----------------------------------------------------------------------------- checks

def _check_rel(rel: torch.Tensor) -> torch.Tensor:
    if not isinstance(rel, torch.Tensor):
        raise TypeError(f"rel: expected a bool torch.Tensor of shape (Q, k), got {type(rel).__name__}")
    if rel.dtype != torch.bool or rel.dim() != 2:
        raise ValueError(f"rel: expected a bool tensor of shape (Q, k), got {rel.dtype} {tuple(rel.shape)}")
    return rel


def _check_k(rel: torch.Tensor, k, name: str = "rel") -> int:
    k = check_int(k, "k", 1)
    if k > rel.shape[1]:
        raise ValueError(f"k: {name} has only {rel.shape[1]} columns, got k={k}; search with at least k results")
    return k


def _check_counts(counts, name: str, dim: int) -> torch.Tensor:
    shape = "(Q,)" if dim == 1 else "(Q, G)"
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"{name}: expected an integer torch.Tensor of shape {shape}, got {type(counts).__name__}")
    if counts.is_floating_point() or counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"{name}: expected integer counts, got {counts.dtype}")
    if counts.dim() != dim:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(counts.shape)}")
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError(f"{name}: expected counts >= 0, got a negative count")
    return counts


def _check_n_relevant(rel: torch.Tensor, n_relevant, at_r: bool = False) -> torch.Tensor:
    """``n_relevant`` as a (Q,) count on ``rel``'s device, consistent with ``rel``.

    ``at_r``: metrics at R read the top R results, so ``rel`` needs at least ``max(R)`` columns.
    """
    n_relevant = _check_counts(n_relevant, "n_relevant", 1)
    if n_relevant.shape[0] != rel.shape[0]:
        raise ValueError(f"n_relevant: expected shape ({rel.shape[0]},) to match rel, got {tuple(n_relevant.shape)}")
    n_relevant = n_relevant.to(rel.device)
    if not n_relevant.numel():
        return n_relevant
    found = rel.sum(dim=1)
    over = (found > n_relevant).nonzero().flatten()
    if over.numel():
        q = int(over[0])
        raise ValueError(f"n_relevant: query {q} has {int(found[q])} relevant results in rel but n_relevant "
                         f"says {int(n_relevant[q])}; count relevant items with the search's exclusions")
    if at_r and int(n_relevant.max()) > rel.shape[1]:
        raise ValueError(
            f"rel: has {rel.shape[1]} columns but a query has {int(n_relevant.max())} relevant items; "
            "search with k >= max(n_relevant) for metrics at R")
    return n_relevant


def _check_gains(gains, name: str) -> torch.Tensor:
    if not isinstance(gains, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (Q, k), got {type(gains).__name__}")
    if gains.dim() != 2 or gains.is_complex():
        raise ValueError(f"{name}: expected a real tensor of shape (Q, k), got {gains.dtype} {tuple(gains.shape)}")
    gains = gains.double()
    if not bool(torch.isfinite(gains).all()) or (gains.numel() and float(gains.min()) < 0):
        raise ValueError(f"{name}: expected finite gains >= 0")
    return gains


def _precisions(rel: torch.Tensor) -> torch.Tensor:
    """``(Q, k)`` float64: ``P(i) = (1/i) sum_{j<=i} rel(j)``."""
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float64)
    return rel.cumsum(dim=1).double() / ranks


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
    n_relevant = _check_n_relevant(rel, n_relevant, at_r=True)
    return _within_r(rel, n_relevant).sum(dim=1).double() / n_relevant.double()


def map_at_r(rel: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """Mean average precision at R (Musgrave et al. 2020, "A Metric Learning Reality Check").

    ``MAP@R = (1/R) sum_{i<=R} P(i) rel(i)`` with ``P(i) = (1/i) sum_{j<=i} rel(j)`` and ``R`` the
    number of relevant items of the query. Queries with ``R = 0`` get NaN (exclude them first).
    """
    rel = _check_rel(rel)
    n_relevant = _check_n_relevant(rel, n_relevant, at_r=True)
    hits = _within_r(rel, n_relevant)
    return (_precisions(hits) * hits).sum(dim=1) / n_relevant.double()


def map_at_k(rel: torch.Tensor, k: int, n_relevant: torch.Tensor) -> torch.Tensor:
    """Average precision at k (its mean over queries is mAP@k), normalised by ``min(k, R)``.

    ``AP@k = (1 / min(k, R)) sum_{i<=k} P(i) rel(i)``: average precision (Manning, Raghavan & Schuetze
    2008, "Introduction to Information Retrieval", sec. 8.4) cut at rank k, divided by the most
    relevant items the top k can hold, so that a ranking with its first ``min(k, R)`` results relevant
    scores 1 (the ``apk`` normaliser of Kaggle's ml_metrics). For ``k >= R`` it equals the AP over the
    full ranking restricted to the top k. Queries with ``R = 0`` get NaN.

    >>> rel = torch.tensor([[True, False, False, True]])  # R = 2: (P(1) + P(4)) / 2 = (1 + 2/4) / 2
    >>> map_at_k(rel, 4, torch.tensor([2])).tolist(), map_at_k(rel, 2, torch.tensor([2])).tolist()
    ([0.75], [0.5])
    """
    k = _check_k(_check_rel(rel), k)
    n_relevant = _check_n_relevant(rel, n_relevant)
    hits = rel[:, :k]
    return (_precisions(hits) * hits).sum(dim=1) / n_relevant.clamp(max=k).double()


def average_precision(rel: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """Average precision over the full ranking (its mean over queries is mAP; Manning, Raghavan &
    Schuetze 2008, "Introduction to Information Retrieval", sec. 8.4; TREC's non-interpolated AP).

    ``AP = (1/R) sum_i P(i) rel(i)`` over every rank ``i``. ``rel`` must hold every relevant item of each
    query (a search as deep as the gallery); a query showing fewer than its ``R`` relevant items is an
    error, since its AP would be silently too low. Queries with ``R = 0`` get NaN.

    >>> average_precision(torch.tensor([[True, False, False, True]]), torch.tensor([2])).tolist()
    [0.75]
    """
    rel = _check_rel(rel)
    n_relevant = _check_n_relevant(rel, n_relevant)
    found = rel.sum(dim=1)
    short = (found != n_relevant).nonzero().flatten()
    if short.numel():
        q = int(short[0])
        raise ValueError(f"rel: query {q} shows {int(found[q])} of its {int(n_relevant[q])} relevant items; "
                         "average_precision needs the full ranking (search with k = the gallery size)")
    # P(i) at the relevant ranks only: the m-th relevant item of a row, at rank i, adds m / i
    rows, cols = rel.nonzero(as_tuple=True)  # row by row, ranks ascending
    first = found.cumsum(0) - found  # where each row's relevant items start in rows/cols
    m = torch.arange(1, rows.numel() + 1, device=rel.device) - first[rows]
    total = torch.zeros(rel.shape[0], dtype=torch.float64, device=rel.device)
    return total.index_add_(0, rows, m.double() / (cols + 1).double()) / n_relevant.double()


def reciprocal_rank(rel: torch.Tensor) -> torch.Tensor:
    """Reciprocal rank of the first relevant result; its mean over queries is the MRR (Voorhees 1999,
    "The TREC-8 Question Answering Track Report").

    ``RR = 1 / min{i : rel(i)}``, and 0 when none of the columns of ``rel`` is relevant (search deep
    enough to reach the first relevant item for an exact value, as ``evaluate`` does).

    >>> reciprocal_rank(torch.tensor([[False, False, False, True], [True, True, False, False]])).tolist()
    [0.25, 1.0]
    """
    rel = _check_rel(rel)
    _check_k(rel, 1)
    first = rel.int().argmax(dim=1)  # argmax returns the first of equal maxima: the first True
    return rel.any(dim=1) / (first + 1).double()


def ideal_gains(counts: torch.Tensor, k: int) -> torch.Tensor:
    """``(Q, k)`` float64: the best possible gains of each query sorted descending (the ideal ranking
    whose DCG normalises :func:`ndcg_at_k`).

    ``counts`` ``(Q, G)`` int: ``counts[q, g]`` retrievable items have gain ``> g`` (non-increasing in
    ``g``). The ideal ranking puts the highest gains first, so its gain at rank ``i`` is
    ``#{g : counts[q, g] >= i}``. Binary relevance: ``counts = n_relevant[:, None]`` (gain 1 at ranks
    ``1..R``); a hierarchy with gain = shared levels: ``counts[:, l]`` = items sharing levels ``0..l``.

    >>> ideal_gains(torch.tensor([[3, 2]]), 4).tolist()  # 3 items share level 0, 2 of them level 1 too
    [[2.0, 2.0, 1.0, 0.0]]
    """
    counts = _check_counts(counts, "counts", 2)
    k = check_int(k, "k", 1)
    if counts.shape[1] > 1 and bool((counts[:, 1:] > counts[:, :-1]).any()):
        raise ValueError("counts: expected counts[:, g] (items with gain > g) to be non-increasing in g")
    ranks = torch.arange(1, k + 1, device=counts.device)
    return (counts.unsqueeze(2) >= ranks).sum(dim=1).double()


def ndcg_at_k(gains: torch.Tensor, k: int, ideal_gains: torch.Tensor) -> torch.Tensor:
    """Normalised discounted cumulative gain at k (Jaervelin & Kekaelaeinen 2002, "Cumulated gain-based
    evaluation of IR techniques"; the exponential gain of Burges et al. 2005, "Learning to Rank using
    Gradient Descent").

    ``DCG@k = sum_{i<=k} (2^{g_i} - 1) / log2(i + 1)`` and ``NDCG@k = DCG@k / IDCG@k``, where IDCG@k is
    the DCG of ``ideal_gains`` ``(Q, >=k)``, the query's best possible gains sorted descending
    (:func:`ideal_gains`). ``gains`` ``(Q, >=k)``: binary relevance ``rel`` (bool, gain 1), or graded
    gains such as the number of shared hierarchy levels (:func:`graded_relevance`). Padded slots have
    gain 0. Queries with ``IDCG@k = 0`` (nothing relevant) get NaN.

    >>> rel = torch.tensor([[False, True]])  # DCG = 1 / log2(3), IDCG = 1
    >>> round(float(ndcg_at_k(rel, 2, ideal_gains(torch.tensor([[1]]), 2))), 4)
    0.6309
    """
    gains, ideal = _check_gains(gains, "gains"), _check_gains(ideal_gains, "ideal_gains")
    k = _check_k(gains, k, "gains")
    _check_k(ideal, k, "ideal_gains")
    if ideal.shape[0] != gains.shape[0]:
        raise ValueError(f"ideal_gains: expected {gains.shape[0]} rows to match gains, got {ideal.shape[0]}")
    ideal = ideal[:, :k].to(gains.device)
    if k > 1 and bool((ideal[:, 1:] > ideal[:, :-1]).any()):
        raise ValueError("ideal_gains: expected each row sorted in descending order (the ideal ranking)")
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=gains.device, dtype=torch.float64))
    dcg = ((torch.exp2(gains[:, :k]) - 1.0) * discount).sum(dim=1)
    idcg = ((torch.exp2(ideal) - 1.0) * discount).sum(dim=1)
    return dcg / idcg


def gap_at_k(scores: torch.Tensor, targets: torch.Tensor, k: int = 20) -> float:
    """Global Average Precision at k as YouTube-8M defines it (Abu-El-Haija et al. 2016, "YouTube-8M:
    A Large-Scale Video Classification Benchmark"; ``eval_util.calculate_gap``).

    Each item keeps its top ``k`` classes by score (all ``C`` when ``k >= C``); the ``N * k`` pooled
    ``(score, positive)`` pairs are sorted by score, descending, and

    ``GAP = (1 / M) sum_i P(i) rel(i)``, with ``M`` the number of positives in ``targets`` (including
    those outside every top k, which lower the score) and ``P(i)`` the precision of the pooled list at
    ``i``. Returns 0.0 when ``targets`` has no positive (as YouTube-8M does). Ties in score are broken
    by item, then by class index (YouTube-8M shuffles them at random).

    Args:
        scores: ``(N, C)`` floating prediction scores (torch or numpy).
        targets: ``(N, C)`` ground truth: bool, or 0/1 numbers as YouTube-8M's code takes them.
        k: predictions kept per item (YouTube-8M uses 20).

    >>> scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    >>> targets = torch.tensor([[True, False, False], [False, False, True]])
    >>> gap_at_k(scores, targets, k=2)  # pooled: 0.9 T, 0.8 F, 0.7 T, 0.5 F -> (1 + 2/3) / 2
    0.8333333333333333
    """
    scores, targets = as_tensor(scores, "scores"), as_tensor(targets, "targets")
    if not scores.is_floating_point() or scores.dim() != 2:
        raise TypeError(f"scores: expected floating scores of shape (N, C), got {scores.dtype} {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores: contains NaN or infinite values")
    if targets.dtype != torch.bool:
        if targets.is_complex() or bool(((targets != 0) & (targets != 1)).any()):
            raise ValueError(f"targets: expected bool or 0/1 values, got {targets.dtype} values other than 0 and 1")
        targets = targets != 0
    if targets.shape != scores.shape:
        raise ValueError(f"targets: expected shape {tuple(scores.shape)} like scores, got {tuple(targets.shape)}")
    k = check_int(k, "k", 1)
    targets = targets.to(scores.device)
    n_positives = int(targets.sum())
    if n_positives == 0 or scores.numel() == 0:
        return 0.0
    k = min(k, scores.shape[1])
    step = max(1, _BLOCK // scores.shape[1])
    kept_scores, kept_positive = [], []
    for s in range(0, scores.shape[0], step):
        values, classes = scores[s:s + step].sort(dim=1, descending=True, stable=True)
        kept_scores.append(values[:, :k].reshape(-1))
        kept_positive.append(targets[s:s + step].gather(1, classes[:, :k]).reshape(-1))
    _, order = torch.cat(kept_scores).sort(descending=True, stable=True)
    positive = torch.cat(kept_positive)[order].unsqueeze(0)
    return float((_precisions(positive) * positive).sum()) / n_positives


# ----------------------------------------------------------------------------- relevance from labels

def _flat_ids(query_labels: torch.Tensor, gallery_labels: torch.Tensor):
    """Contiguous class ids ``0..C-1`` shared by queries and gallery (rows of a hierarchy = finest class).

    Two items get the same id exactly when ``labels.same_mask`` relates them (flat: equal labels;
    hierarchical at the finest level: all columns equal).
    """
    both = torch.cat([query_labels, gallery_labels.to(query_labels.device)])
    ids = item_classes(both)[1]
    return ids[: query_labels.shape[0]], ids[query_labels.shape[0]:]


def _check_indices(indices, query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.is_floating_point() \
            or indices.dtype == torch.bool:
        got = f"{indices.dtype} {tuple(indices.shape)}" if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise TypeError(f"indices: expected an integer tensor of shape (Q, k), got {got}")
    if indices.shape[0] != query_labels.shape[0]:
        raise ValueError(f"indices: expected {query_labels.shape[0]} rows (one per query), got {indices.shape[0]}")
    if indices.numel() and not -1 <= int(indices.min()) <= int(indices.max()) < gallery_labels.shape[0]:
        wrong = int(indices.max()) if int(indices.max()) >= gallery_labels.shape[0] else int(indices.min())
        raise ValueError(f"indices: expected gallery indices in [0, {gallery_labels.shape[0]}) (or -1 for padding), "
                         f"got {wrong}")
    return indices.long()


def _judge(relevance_fn, query_labels: torch.Tensor, result_labels: torch.Tensor) -> torch.Tensor:
    """``relevance_fn(query_labels (c, ...), result_labels (c, m, ...))``, checked to be ``(c, m)`` bool."""
    out = relevance_fn(query_labels, result_labels)
    shape = tuple(result_labels.shape[:2])
    if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
        got = out.dtype if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"relevance_fn: expected a bool tensor of shape {shape} (queries x results), got {got}")
    if tuple(out.shape) != shape:
        raise ValueError(f"relevance_fn: expected a bool tensor of shape {shape} (queries x results), "
                         f"got {tuple(out.shape)}")
    return out


def _default_relevance(query_labels: torch.Tensor, result_labels: torch.Tensor) -> torch.Tensor:
    """``labels.same_mask`` between each query ``(c, ...)`` and its results ``(c, m, ...)``."""
    wanted = query_labels.unsqueeze(1)
    if query_labels.dim() == 1:
        return result_labels == wanted
    return (result_labels == wanted).all(dim=2)


def relevance(indices: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor,
              relevance_fn=None) -> torch.Tensor:
    """``(Q, k)`` bool: result ``indices[q, i]`` (a gallery index, ``-1`` for padding) is relevant to query q.

    Relevance is ``labels.same_mask`` (flat: equal label; hierarchical: same finest class, i.e. all
    columns equal; multi-label: at least one label shared), or ``relevance_fn(query_labels,
    result_labels) -> bool`` with ``query_labels`` ``(c, ...)`` and ``result_labels`` ``(c, k, ...)``,
    evaluated only at the returned indices: the labels of the results are gathered and compared chunk
    by chunk, so no ``(Q, G)`` mask is ever built. Padded slots are False.
    """
    idx = _check_indices(indices, query_labels, gallery_labels)
    if is_multilabel(query_labels) and relevance_fn is None:
        return _multilabel.relevance(idx, *_multilabel.packed_pair(query_labels, gallery_labels))
    valid = idx >= 0
    idx = idx.clamp_min(0)
    query_labels, gallery_labels = query_labels.to(idx.device), gallery_labels.to(idx.device)
    if query_labels.dim() == 1 and relevance_fn is None:
        return (gallery_labels[idx] == query_labels.unsqueeze(1)) & valid
    width = gallery_labels[:1].numel()
    step = max(1, _BLOCK // max(1, idx.shape[1] * width))
    judge = _default_relevance if relevance_fn is None else relevance_fn
    out = [_judge(judge, query_labels[s:s + step], gallery_labels[idx[s:s + step]])
           for s in range(0, idx.shape[0], step)]
    rel = torch.cat(out) if out else torch.zeros(idx.shape, dtype=torch.bool, device=idx.device)
    return rel & valid


def graded_relevance(indices: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """``(Q, k)`` int64 graded relevance for hierarchies: how many leading levels result ``indices[q, i]``
    shares with query q, 0 for padded slots (index ``-1``).

    This is ``labels.shared_levels`` read only at the returned indices (chunk by chunk, no ``(Q, G)``
    tensor): the largest ``n`` with columns ``0..n-1`` equal, so ``n = L`` is the same finest class and
    ``n > l`` the same class at level ``l``. Flat labels are a one-level hierarchy (1 when equal).
    """
    if is_multilabel(query_labels):
        raise ValueError("query_labels: multi-label (bool) labels have no hierarchy; use relevance")
    idx = _check_indices(indices, query_labels, gallery_labels)
    valid = idx >= 0
    idx = idx.clamp_min(0)
    queries = query_labels.to(idx.device).reshape(query_labels.shape[0], -1)
    gallery = gallery_labels.to(idx.device).reshape(gallery_labels.shape[0], -1)
    step = max(1, _BLOCK // max(1, idx.shape[1] * queries.shape[1]))
    out = []
    for s in range(0, idx.shape[0], step):
        agree = gallery[idx[s:s + step]] == queries[s:s + step].unsqueeze(1)  # (c, k, L), L is small
        out.append(agree.long().cumprod(dim=2).sum(dim=2))
    levels = torch.cat(out) if out else torch.zeros(idx.shape, dtype=torch.long, device=idx.device)
    return levels * valid


def count_relevant(query_labels: torch.Tensor, gallery_labels: torch.Tensor, exclude_self: bool = False,
                   query_groups: torch.Tensor | None = None,
                   gallery_groups: torch.Tensor | None = None, relevance_fn=None) -> torch.Tensor:
    """``(Q,)`` int64: number of gallery items relevant to each query, after the search's exclusions.

    Exclusions match :func:`deepmetric.index.knn`: with ``exclude_self`` query i is gallery item i and
    is not counted; with groups, items of the query's group are not counted. Flat and hierarchical
    labels are counted from class (and class-group) counts; multi-label relevance (``labels.same_mask``)
    and a user ``relevance_fn`` (as in :func:`relevance`, called with ``result_labels`` = the whole
    gallery ``(c, G, ...)``) are counted chunk by chunk over the queries.
    """
    n_q = query_labels.shape[0]
    query_groups, gallery_groups = check_groups(query_groups, gallery_groups, n_q, gallery_labels.shape[0])
    if not is_multilabel(query_labels) and relevance_fn is None:
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
    if relevance_fn is None:
        return _multilabel.count_relevant(*_multilabel.packed_pair(query_labels, gallery_labels), exclude_self,
                                          query_groups, gallery_groups).to(query_labels.device)
    gallery_labels = gallery_labels.to(query_labels.device)
    n_g = gallery_labels.shape[0]
    step = max(1, _BLOCK // max(1, n_g * gallery_labels[:1].numel()))
    counts = []
    for s in range(0, n_q, step):
        wanted = query_labels[s:s + step]
        rel = _judge(relevance_fn, wanted,
                     gallery_labels.unsqueeze(0).expand(wanted.shape[0], *gallery_labels.shape)).clone()
        if query_groups is not None:
            rel &= query_groups[s:s + step].unsqueeze(1) != gallery_groups.unsqueeze(0)
        if exclude_self:
            rows = torch.arange(rel.shape[0], device=rel.device)
            rel[rows, rows + s] = False
        counts.append(rel.sum(dim=1))
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long, device=query_labels.device)
