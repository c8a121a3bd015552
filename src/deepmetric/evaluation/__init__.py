"""Evaluation of embeddings the way the metric-learning literature reports it.

``evaluate`` runs one exact k-NN search (query-in-gallery: one symmetric pass over all items with
:func:`deepmetric.index.exact.self_knn` when the results fit in memory; otherwise, and for separate
query and gallery sets, chunked over queries so memory stays bounded), turns the results into a
``(Q, k)`` relevance matrix and reads every ranking metric from it
(:mod:`deepmetric.evaluation.ranking`); clustering metrics come from k-means on the query embeddings
(:mod:`deepmetric.evaluation.clustering`). Verification (pairs) and hashing (Hamming ranking) metrics
live in :mod:`~deepmetric.evaluation.verification` and :mod:`~deepmetric.evaluation.hashing`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from deepmetric._checks import (as_tensor, check_flag, check_groups, check_int, check_ints, check_pair, check_seed,
                               warn)
from deepmetric.distances import check_distance
from deepmetric.evaluation import _multilabel, clustering, hashing, hierarchy, ranking, verification
from deepmetric.evaluation.hashing import hashing_scores
from deepmetric.evaluation.verification import verification_scores
from deepmetric.index.exact import _Searcher, self_knn
from deepmetric.labels import class_names, is_hierarchical, is_multilabel, item_classes

DEFAULT_KS = (1, 2, 4, 8, 10, 100)
#: bound on the elements of one chunk's (queries x depth) results
_RESULTS_BLOCK = 1 << 22
#: bound on the (queries x depth) results of a search of every query at once (about 400 MB)
_ALL_RESULTS = 1 << 25

__all__ = ["evaluate", "hashing_scores", "verification_scores", "clustering", "hashing", "hierarchy", "ranking",
           "verification", "DEFAULT_KS"]


def _as_tensor(x, name: str):
    return None if x is None else as_tensor(x, name)


# ----------------------------------------------------------------------------- the engine

class _View(NamedTuple):
    """One notion of relevance, read from the results of a shared search.

    ``judge(base)`` turns a chunk's ``base`` (the bool relevance or the int shared levels of its results)
    into ``(rel, gains)``; ``n_relevant`` ``(Q,)`` counts relevant items after exclusions and
    ``ideal_counts`` ``(Q, G)`` the items of gain ``> g`` (:func:`ranking.ideal_gains`).
    """
    n_relevant: torch.Tensor
    ideal_counts: torch.Tensor
    judge: Callable


def _binary(rel):
    return rel, rel


def _nans(n: int, device) -> torch.Tensor:
    return torch.full((n,), math.nan, dtype=torch.float64, device=device)


def _chunk_metrics(rel, gains, n_relevant, ideal_counts, report_ks, full_map) -> dict:
    """Per-query metrics of queries that all have ``n_relevant > 0``.

    ``rel`` holds every result a query can get when a reported k goes beyond its columns (the search
    stops at the gallery's size): the slots beyond are not relevant, so the metrics at k are those at
    the last column, with precision divided by k (mAP@k divides by ``min(k, R) = R`` and IDCG@k has
    no gain beyond R either)."""
    if full_map:  # the whole ranking for mAP and MRR; the other metrics read no deeper than R or k
        full = {"mrr": ranking.reciprocal_rank(rel), "map": ranking.average_precision(rel, n_relevant)}
        depth = max(max(report_ks, default=1), int(n_relevant.max()) if n_relevant.numel() else 0)
        rel, gains = rel[:, :depth], gains[:, :depth]
    scores = {"precision_at_1": ranking.precision_at_1(rel)}
    cols = rel.shape[1]
    ideal = ranking.ideal_gains(ideal_counts, min(report_ks[-1], cols)) if report_ks else None
    for v in report_ks:
        c = min(v, cols)
        scores[f"recall_at_{v}"] = ranking.recall_at_k(rel, c)
        scores[f"precision_at_{v}"] = ranking.precision_at_k(rel, c) * (c / v)
        scores[f"map_at_{v}"] = ranking.map_at_k(rel, c, n_relevant)
        scores[f"ndcg_at_{v}"] = ranking.ndcg_at_k(gains, c, ideal)
    scores["r_precision"] = ranking.r_precision(rel, n_relevant)
    scores["map_at_r"] = ranking.map_at_r(rel, n_relevant)
    if full_map:
        return scores | full
    scores["mrr"] = ranking.reciprocal_rank(rel)
    return scores


def _scores(searcher, queries, base_fn, views, self_mode, q_groups, g_groups, report_ks, full_map,
            chunk_size) -> list[dict]:
    """Search the queries once, chunk by chunk, and read every metric of every view from the results.

    Returns, per view, ``{metric: (Q,) float64}`` with NaN for the queries the view does not score
    (no relevant item). The depth of a chunk is the largest of its queries' ``R`` and of the reported
    ks (the whole gallery with ``full_map``), so metrics at R are exact; MRR is made exact by searching
    the queries whose first relevant item lies beyond that depth again, four times deeper each round,
    until it is found or the query's list ends (reciprocal rank 0: nothing relevant is retrievable,
    e.g. with an approximate index whose probed lists hold none).
    """
    n_q, n_g = queries.shape[0], searcher.n
    retrievable = n_g - int(self_mode)
    n_rel = torch.stack([view.n_relevant for view in views], dim=1)
    active = (n_rel > 0).any(dim=1).nonzero().flatten()
    floor = n_g if full_map else min(max(report_ks, default=1), n_g)  # no result lies beyond the gallery
    out = [{} for _ in views]
    unfound = torch.zeros_like(n_rel, dtype=torch.bool)  # scored, first relevant item not reached yet

    def depth_of(rows):
        return max(floor, int(n_rel[rows].max()))

    if active.numel() == 0:
        return out
    # When the results fit in memory, every query is searched at once: query-in-gallery by one symmetric
    # search, an index in one call (faiss and torch run separate OpenMP thread pools; alternating
    # between them chunk by chunk cost about a second more at 100,000 queries).
    ranked = None
    if not full_map and n_q * depth_of(active) <= _ALL_RESULTS:
        if self_mode and isinstance(searcher, _Searcher):
            ranked = self_knn(queries, depth_of(active), searcher.distance, q_groups)[1]
        elif isinstance(searcher, _IndexSearcher):
            ranked = searcher.search(queries, depth_of(active),
                                     torch.arange(n_q, device=queries.device) if self_mode else None)[1]

    def search(rows, depth):
        """Relevance of the rows' results and whether each list ended early (padding: nothing more
        can be retrieved for that query, e.g. everything else is excluded or not probed by an index)."""
        if ranked is not None and depth <= ranked.shape[1]:
            indices = ranked[rows, :depth]
        else:
            _, indices = searcher.search(queries[rows], depth, rows if self_mode else None,
                                         None if q_groups is None else q_groups[rows], g_groups)
        return base_fn(indices, rows), (indices < 0).any(dim=1)

    step = max(1, min(chunk_size, _RESULTS_BLOCK // depth_of(active)))
    for s in range(0, active.numel(), step):
        rows = active[s:s + step]
        depth = depth_of(rows)
        base, exhausted = search(rows, depth)
        for v, view in enumerate(views):
            scored = view.n_relevant[rows] > 0
            rel, gains = view.judge(base[scored])
            scores = _chunk_metrics(rel, gains, view.n_relevant[rows][scored], view.ideal_counts[rows][scored],
                                    report_ks, full_map)
            for name, values in scores.items():
                if name not in out[v]:
                    out[v][name] = _nans(n_q, queries.device)
                out[v][name][rows[scored]] = values
            if depth < retrievable:
                unfound[rows[scored], v] = ~rel.any(dim=1) & ~exhausted[scored]

    depth = floor
    while bool(unfound.any()):
        redo = unfound.any(dim=1).nonzero().flatten()
        depth = min(n_g, 4 * max(depth, depth_of(redo)))
        step = max(1, min(chunk_size, _RESULTS_BLOCK // depth))
        for s in range(0, redo.numel(), step):
            rows = redo[s:s + step]
            base, exhausted = search(rows, depth)
            for v, view in enumerate(views):
                todo = unfound[rows, v]
                rel, _ = view.judge(base[todo])
                found = rel.any(dim=1)
                done = rows[todo][found]
                out[v]["mrr"][done] = ranking.reciprocal_rank(rel[found])
                unfound[done, v] = False
                unfound[rows[todo][~found & exhausted[todo]], v] = False  # nothing more to retrieve: RR 0
        if depth >= n_g:  # every retrievable item was returned: nothing can be left
            break
    return out


def _means(values: dict, n_relevant: torch.Tensor) -> dict:
    """Means over the queries with a relevant item; none when no query has one (undefined, not 0)."""
    scored = n_relevant > 0
    if not bool(scored.any()):
        return {}
    return {name: float(v[scored].mean()) for name, v in values.items()}


def _counts(n_relevant: torch.Tensor) -> dict:
    return {"num_queries": int(n_relevant.shape[0]), "queries_without_relevant": int((n_relevant == 0).sum())}


def _within_parent(queries, q_labels, gallery, g_labels, level, distance, self_mode, q_groups, g_groups,
                   report_ks, full_map, chunk_size) -> dict:
    """Per-query metrics at ``level`` when each query ranks only the gallery items of its own parent
    (the items equal to it at columns ``0..level-1``); one search per parent."""
    q_parent, g_parent = ranking._flat_ids(q_labels[:, :level], g_labels[:, :level])
    n_parents = int(torch.cat([q_parent, g_parent]).max()) + 1
    q_split = torch.bincount(q_parent, minlength=n_parents).tolist()
    g_split = torch.bincount(g_parent, minlength=n_parents).tolist()
    q_members = q_parent.argsort(stable=True).split(q_split)
    g_members = g_parent.argsort(stable=True).split(g_split)  # self mode: the same rows as the queries
    values: dict[str, torch.Tensor] = {}
    for q_rows, g_rows in zip(q_members, g_members):
        if q_rows.numel() == 0 or g_rows.numel() == 0:
            continue
        ql, gl = q_labels[q_rows, level], g_labels[g_rows, level]
        qg = None if q_groups is None else q_groups[q_rows]
        gg = None if g_groups is None else g_groups[g_rows]
        n_rel = ranking.count_relevant(ql, gl, self_mode, qg, gg)
        parent = _scores(_Searcher(gallery[g_rows], distance), queries[q_rows],
                         lambda indices, rows, ql=ql, gl=gl: ranking.relevance(indices, ql[rows], gl),
                         [_View(n_rel, n_rel.unsqueeze(1), _binary)], self_mode, qg, gg, report_ks, full_map,
                         chunk_size)[0]
        for name, v in parent.items():
            if name not in values:
                values[name] = _nans(queries.shape[0], queries.device)
            values[name][q_rows] = v
    return values


def _per_class(values: dict, n_relevant: torch.Tensor, labels: torch.Tensor):
    """``({class: {metric: mean over its scored queries, ..., num_queries, queries_without_relevant}},
    {metric: unweighted mean over the classes with a scored query})``."""
    classes, inverse = item_classes(labels)
    n_classes = classes.shape[0]
    scored = n_relevant > 0
    n_all = torch.bincount(inverse, minlength=n_classes)
    n_scored = torch.bincount(inverse[scored], minlength=n_classes)
    means = {name: torch.zeros(n_classes, dtype=torch.float64, device=v.device).index_add_(
        0, inverse[scored], v[scored]) / n_scored for name, v in values.items()}
    lists = {name: m.tolist() for name, m in means.items()}
    keys = class_names(classes)
    per_class = {}
    for c, (key, total, n) in enumerate(zip(keys, n_all.tolist(), n_scored.tolist())):
        entry = {name: m[c] for name, m in lists.items()} if n else {}
        per_class[key] = {**entry, "num_queries": total, "queries_without_relevant": total - n}
    has = n_scored > 0
    return per_class, ({name: float(m[has].mean()) for name, m in means.items()} if bool(has.any()) else {})


class _IndexSearcher:
    """Search through a :mod:`deepmetric.index` backend (e.g. ``ivf-flat``, ``hnsw``) with the interface
    of the exact searcher; the gallery is added with its positions as ids. For query-in-gallery, one
    more neighbour is fetched and the query itself dropped from its list."""

    def __init__(self, gallery: torch.Tensor, distance: str, name: str, options: dict):
        from deepmetric import index as indexes
        self.n, self.distance = gallery.shape[0], distance
        self.index = indexes.create(name, distance=distance, **options)
        self.index.add(gallery)
        self.searched = self.cut_short = 0  # lists that ended before the depth asked for

    def search(self, queries, k, self_index=None, query_groups=None, gallery_groups=None):
        """Groups are refused by ``evaluate`` before an index is built."""
        width = min(k + int(self_index is not None), self.n)
        distances, ids = self.index.search(queries, width)
        if self_index is not None:  # drop the query's own entry, or the last one if it was not returned
            found = ids == self_index.unsqueeze(1)
            drop = torch.where(found.any(dim=1), found.byte().argmax(dim=1), width - 1)
            cols = torch.arange(width - 1, device=ids.device).unsqueeze(0)
            keep = cols + (cols >= drop.unsqueeze(1)).long()
            distances, ids = distances.gather(1, keep), ids.gather(1, keep)
        available = min(k, self.n - int(self_index is not None))
        self.searched += ids.shape[0]
        self.cut_short += int((ids[:, :available] < 0).any(dim=1).sum())
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            ids = torch.cat([ids, ids.new_full((ids.shape[0], pad), -1)], 1)
            distances = torch.cat([distances, distances.new_full((ids.shape[0], pad), math.inf)], 1)
        return distances, ids


def evaluate(embeddings, labels, gallery=None, gallery_labels=None, *, k: int | None = None,
             distance: str = "euclidean", groups=None, gallery_groups=None, ks=DEFAULT_KS,
             nmi: bool = True, seed: int = 0, chunk_size: int = 1024, full_map: bool = False,
             per_class: bool = False, relevance_fn=None, index: str | None = None,
             index_options: dict | None = None, kmeans: str = "sklearn") -> dict:
    """Retrieval and clustering metrics of embeddings, as a dict of python numbers, from one search.

    Protocols:

    * ``evaluate(emb, labels)``: query-in-gallery. Every item is a query against all the others
      (itself excluded).
    * ``evaluate(q, q_labels, gallery=g, gallery_labels=g_labels)``: separate query and gallery sets.
      Queries that are also gallery items (pytorch-metric-learning's ``ref_includes_query=True``)
      need ``groups`` / ``gallery_groups`` of item ids, or each query retrieves itself first.

    ``groups`` (and ``gallery_groups`` with a separate gallery) are integer ids; a query never
    retrieves an item of its own group, and such items do not count as relevant. Queries with no
    relevant item in the gallery are excluded from every mean and counted in
    ``queries_without_relevant`` (never scored as zero); when no query has one, the metrics are
    left out (e.g. the finest level of a hierarchy of single-item instances; ``level_0`` has them).

    Labels (DESIGN.md): flat ``(N,)`` int (relevant = same class); multi-label ``(N, C)`` bool
    (relevant = at least one label shared); hierarchical ``(N, L)`` int, column 0 the coarsest: the
    top-level keys are at the finest level (relevant = all columns equal) except ``ndcg_at_{k}``,
    which is graded (gain = number of shared leading levels) and averaged over every query that shares
    at least the top level with some item, and ``level_{l}`` holds every metric at
    level ``l`` (relevant = equal at columns ``0..l``, binary NDCG); for ``l >= 1``,
    ``level_{l}_within_parent`` ranks for each query only the gallery items of its own parent (equal at
    columns ``0..l-1``); query-in-gallery without groups, ``order_preservation`` is the fraction of a seeded sample of
    a million quadlets (same finest class, same top-level class, other top-level class) whose distances
    keep that order (:mod:`deepmetric.evaluation.hierarchy`).
    ``relevance_fn(query_labels, result_labels) -> bool tensor`` replaces the
    relevance of any label form (then no levels): ``query_labels`` is ``(c, ...)``, ``result_labels``
    ``(c, m, ...)`` and the result ``(c, m)``; it is also called against the whole gallery (chunked
    over queries) to count each query's relevant items.

    Keys (all means over the scored queries, see :mod:`deepmetric.evaluation.ranking` for the
    formulas): ``precision_at_1``; for every reported k (``ks`` up to the number of items every scored
    query can retrieve, after its own group, and ``k`` always: slots beyond the gallery count as not
    relevant) ``recall_at_{k}`` (hit rate), ``precision_at_{k}``, ``map_at_{k}`` (divided by
    ``min(k, R)``) and ``ndcg_at_{k}``;
    ``r_precision``; ``map_at_r``; ``mrr`` (exact: queries whose
    first relevant item lies beyond the search depth are searched again deeper); ``map`` (AP over the
    full ranking, with ``full_map=True``: every query ranks the whole gallery, chunk by chunk);
    ``nmi``, ``ami``, ``f1`` (:func:`clustering.clustering_scores`, k-means from ``kmeans`` =
    ``"sklearn"`` or ``"faiss"`` (much faster with many classes) on the
    query embeddings, one cluster per class, ``seed``; not for multi-label; in ``level_{l}``, one
    cluster per class of that level); ``num_queries``;
    ``queries_without_relevant``. With ``per_class=True`` (flat or hierarchical labels):
    ``per_class`` = ``{class: {metric: mean over its scored queries, num_queries,
    queries_without_relevant}}`` (class = the label, or ``"a/b/..."`` for a hierarchy's finest class;
    graded ``ndcg_at_{k}`` over the class's queries it is defined for) and ``class_mean`` = the
    unweighted mean over the classes with a scored query of each metric; ``level_{l}`` holds the same
    two for the classes of level ``l`` (the label ``a`` at level 0, then ``"a/b"``, ...).

    The search depth is the largest of the queries' numbers of relevant items (at every level of a
    hierarchy) and of the reported ks, so MAP@R and R-precision are exact. ``chunk_size`` bounds the
    queries whose ranked lists are held at once where those lists are long (deep searches, separate
    galleries, re-searches for MRR): memory against speed. The results are the same for every
    ``chunk_size`` (the depth of a chunk is its largest R) except where more than ``RESEARCH_MARGIN``
    (256) items score within the float32 products' rounding of a query's R-th distance (e.g.
    thousands of near-duplicates): which of them fill the last places can then depend on it.

    Approximate mode: ``index="ivf-fastscan"`` (or any name of :mod:`deepmetric.index`, with
    ``index_options`` such as ``{"nlist": 256, "nprobe": 24}``) builds that index over the gallery and
    reads the ranked lists from it instead of the exact search; the metrics are then those of the
    approximate ranking (faster on large galleries; not with ``groups``). They can be biased either
    way: an IVF's lists tend to hold a query's class-mates, so with about one list per class MAP@R is
    overestimated (docs/results.md, "Approximate mode"); compare with the exact search on a subset.
    A list that ends before its depth (the probed lists held fewer items) counts the missing ranks as
    not relevant, with a warning; ``level_{l}_within_parent`` always comes from the exact search.

    >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    >>> evaluate(x, torch.tensor([0, 0, 1, 1]), nmi=False)["map_at_r"]
    1.0
    """
    embeddings, labels = _as_tensor(embeddings, "embeddings"), _as_tensor(labels, "labels")
    gallery, gallery_labels = _as_tensor(gallery, "gallery"), _as_tensor(gallery_labels, "gallery_labels")
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery and gallery_labels must be given together")
    self_mode = gallery is None
    if not self_mode and groups is None and isinstance(gallery, torch.Tensor) and isinstance(embeddings, torch.Tensor) \
            and (gallery.data_ptr(), gallery.shape, gallery.stride()) == (
                embeddings.data_ptr(), embeddings.shape, embeddings.stride()):
        warn("gallery: the same vectors as embeddings, as a separate gallery, so every query retrieves itself "
             "first (precision@1 1.0); for query-in-gallery call evaluate(embeddings, labels) without a gallery, "
             "or pass groups and gallery_groups of item ids (pytorch-metric-learning's ref_includes_query=True)")
    queries, q_labels, gallery, g_labels = check_pair(embeddings, labels, gallery, gallery_labels,
                                                         ref_names=("gallery", "gallery_labels"))
    if gallery.shape[0] == 0:
        name = "embeddings" if self_mode else "gallery"
        raise ValueError(f"{name}: expected at least one item, got an empty (0, D) tensor")
    distance = check_distance(distance)
    ks, k = check_ints(ks, "ks", 1, "(1, 5, 10)"), None if k is None else check_int(k, "k", 1)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    full_map, per_class = check_flag(full_map, "full_map"), check_flag(per_class, "per_class")
    nmi, seed = check_flag(nmi, "nmi"), check_seed(seed)
    if kmeans not in clustering.KMEANS_BACKENDS:  # also with nmi=False: a typo is named, not ignored
        raise ValueError(f"kmeans: unknown k-means backend {kmeans!r}; expected one of "
                         f"{', '.join(clustering.KMEANS_BACKENDS)}")
    if relevance_fn is not None and not callable(relevance_fn):
        raise TypeError(f"relevance_fn: expected a function (query_labels, result_labels) -> bool tensor, "
                        f"got {type(relevance_fn).__name__}")
    if index is None and index_options:
        raise ValueError("index_options: given without index=; name the index they are for, e.g. "
                         "index='ivf-fastscan'")
    if index_options is not None and not isinstance(index_options, dict):
        raise TypeError(f"index_options: expected a dict such as {{'nlist': 256, 'nprobe': 24}}, got "
                        f"{type(index_options).__name__}")
    if index_options and "distance" in index_options:
        raise ValueError("index_options: 'distance' is evaluate's own argument (distance=), not an index option")
    index_options = dict(index_options or {})
    if index is not None and (groups is not None or gallery_groups is not None):
        raise ValueError("groups: excluding groups needs the exact search; leave index=None")
    if index is not None and full_map:
        raise ValueError("full_map: mAP over the full ranking needs the exact search (an approximate index "
                         "does not rank every item); leave index=None")
    if per_class and is_multilabel(q_labels):
        raise ValueError("per_class: needs one class per query; multi-label (bool) labels have none")
    n_q, n_g = queries.shape[0], gallery.shape[0]
    if n_q == 0:
        raise ValueError("embeddings: expected at least one query, got an empty (0, D) tensor")
    if self_mode:
        if gallery_groups is not None:
            raise ValueError("gallery_groups: only with a separate gallery; use groups for query-in-gallery")
        q_groups = g_groups = check_groups(groups, groups, n_q, n_q, ("groups", "groups"))[0]
    else:
        q_groups, g_groups = check_groups(groups, gallery_groups, n_q, n_g, ("groups", "gallery_groups"))

    device = queries.device
    dtype = torch.float64 if torch.float64 in (queries.dtype, gallery.dtype) else torch.float32
    queries, gallery = queries.detach().to(dtype), gallery.detach().to(device=device, dtype=dtype)  # no gradient
    q_labels, g_labels = q_labels.to(device), g_labels.to(device)
    if q_groups is not None:
        q_groups, g_groups = q_groups.to(device), g_groups.to(device)

    levels = q_labels.shape[1] if is_hierarchical(q_labels) and relevance_fn is None else 0
    if levels:
        counts = torch.stack([ranking.count_relevant(q_labels[:, :level + 1], g_labels[:, :level + 1], self_mode,
                                                     q_groups, g_groups) for level in range(levels)], dim=1)
        views = [_View(counts[:, -1], counts, lambda shared: (shared == levels, shared))]
        views += [_View(counts[:, level], counts[:, level:level + 1],
                        lambda shared, level=level: _binary(shared > level)) for level in range(levels)]
        # graded NDCG is defined for every query that shares a level with some item, not only for
        # those with an item of their own finest class
        views.append(_View(counts[:, 0], counts, lambda shared: (shared > 0, shared)))

        def base_fn(indices, rows):
            return ranking.graded_relevance(indices, q_labels[rows], g_labels)
    elif is_multilabel(q_labels) and relevance_fn is None:  # the labels packed once, not for every chunk
        q_bytes, g_bytes = _multilabel.packed_pair(q_labels, g_labels)
        n_rel = _multilabel.count_relevant(q_bytes, g_bytes, self_mode, q_groups, g_groups).to(device)
        views = [_View(n_rel, n_rel.unsqueeze(1), _binary)]

        def base_fn(indices, rows):
            return _multilabel.relevance(indices, q_bytes[rows.cpu()], g_bytes)
    else:
        n_rel = ranking.count_relevant(q_labels, g_labels, self_mode, q_groups, g_groups, relevance_fn)
        views = [_View(n_rel, n_rel.unsqueeze(1), _binary)]

        def base_fn(indices, rows):
            return ranking.relevance(indices, q_labels[rows], g_labels, relevance_fn)
    scored = torch.stack([view.n_relevant > 0 for view in views]).any(0)  # queries some view scores
    if not bool(scored.any()):
        raise ValueError("labels/gallery_labels: no query has a relevant item in the gallery "
                         "(after excluding itself and its group), so no ranking metric is defined")

    retrievable = n_g - int(self_mode)  # items the most restricted scored query can retrieve
    if q_groups is not None:  # minus its group (which holds the query itself in query-in-gallery)
        own = q_groups[scored]
        ids, sizes = torch.unique(g_groups, return_counts=True)
        at = torch.searchsorted(ids, own).clamp_max(ids.numel() - 1)
        retrievable = n_g - int(torch.where(ids[at] == own, sizes[at], 0).max())
    report_ks = sorted({v for v in ks if v <= retrievable} | ({k} if k is not None else set()))
    options = dict(self_mode=self_mode, q_groups=q_groups, g_groups=g_groups, report_ks=report_ks,
                   full_map=full_map, chunk_size=chunk_size)
    if index is None:
        searcher = _Searcher(gallery, distance)
    else:
        searcher = _IndexSearcher(gallery, distance, index, index_options)
    values = _scores(searcher, queries, base_fn, views, **options)
    if index is not None and searcher.cut_short:
        warn(f"index: {searcher.cut_short} of the {searcher.searched} result lists of {index!r} ended before "
             "the depth asked for (the largest of R and the reported ks), although the gallery holds more "
             "items: the lists the index probes held fewer. The missing ranks count as not relevant, which "
             "lowers the metrics that read them (R-precision and MAP@R when a list ends before R); probe "
             "more (nprobe, ef_search) or compare with the exact search")

    results = _means(values[0], views[0].n_relevant)
    if levels:
        graded = {key: v for key, v in values.pop().items() if key.startswith("ndcg_at_")}
        results.update(_means(graded, counts[:, 0]))
    clusters = nmi and not is_multilabel(q_labels)
    if clusters:
        results.update(clustering.clustering_scores(queries, q_labels, seed=seed, backend=kmeans))
    results.update(_counts(views[0].n_relevant))
    for level in range(levels):
        results[f"level_{level}"] = _means(values[level + 1], counts[:, level])
        if per_class:  # e.g. per actor where the finest class (a track) is each query's own group
            results[f"level_{level}"]["per_class"], results[f"level_{level}"]["class_mean"] = _per_class(
                values[level + 1], counts[:, level], q_labels[:, 0] if level == 0 else q_labels[:, :level + 1])
        if clusters:  # the finest level's are the top-level keys
            results[f"level_{level}"].update(
                {key: results[key] for key in ("nmi", "ami", "f1")} if level == levels - 1 else
                clustering.clustering_scores(queries, q_labels[:, :level + 1], seed=seed, backend=kmeans))
        results[f"level_{level}"].update(_counts(counts[:, level]))
    for level in range(1, levels):
        # an item relevant at `level` shares the parent, so the counts are those of the whole gallery
        within = _within_parent(queries, q_labels, gallery, g_labels, level, distance, **options)
        results[f"level_{level}_within_parent"] = {**_means(within, counts[:, level]), **_counts(counts[:, level])}
    if levels >= 2 and self_mode and q_groups is None:
        preserved = hierarchy.order_preservation(queries, q_labels, distance, seed=seed)
        if not math.isnan(preserved):  # NaN: no quadlet (e.g. a single top-level class)
            results["order_preservation"] = preserved
    if per_class:
        results["per_class"], results["class_mean"] = _per_class(values[0], views[0].n_relevant, q_labels)
        if levels:  # graded NDCG over the queries it is defined for, as at the top level
            graded_per_class, graded_mean = _per_class(graded, counts[:, 0], q_labels)
            for key, entry in graded_per_class.items():
                results["per_class"][key].update({name: v for name, v in entry.items() if name in graded})
            results["class_mean"].update(graded_mean)
    return results
