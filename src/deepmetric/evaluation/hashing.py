"""Evaluation of binary codes by Hamming ranking, as the deep-hashing literature reports it.

Protocol of DPSH (Li et al. 2016, "Feature Learning based Deep Supervised Hashing with Pairwise
Labels"), HashNet (Cao et al. 2017) and CSQ (Yuan et al. 2020): every query code ranks the database
codes by Hamming distance (ties in database order) and a database item is relevant when it shares the
query's class (flat labels) or at least one label (multi-label, e.g. NUS-WIDE, MS-COCO).

With ``rel(i)`` the relevance of the ``i``-th ranked item, ``P(i) = (1/i) sum_{j<=i} rel(j)`` and ``R``
the number of relevant items in the database:

* ``AP = (1/R) sum_i P(i) rel(i)`` over the full ranking (``map``);
* ``AP@K = (1/R_K) sum_{i<=K} P(i) rel(i)`` with ``R_K = sum_{i<=K} rel(i)``, the relevant items
  *found* in the top ``K`` (``map_at_{K}``; DPSH's ``CalcTopMap``, also HashNet's and CSQ's code);
  a query with ``R_K = 0`` scores 0;
* ``P@N = (1/N) sum_{i<=N} rel(i)`` (``precision_at_{N}``);
* within Hamming radius ``r``: precision = relevant items at distance ``<= r`` over all items at
  distance ``<= r`` (0 when there is none), recall = the same relevant count over ``R``.

Queries with no relevant item in the database (``R = 0``) are excluded from every mean and counted in
``queries_without_relevant``, never scored as zero.
"""
from __future__ import annotations

import numpy as np
import torch

from deepmetric._checks import as_tensor, check_embeddings, check_int, check_ints, check_labels
from deepmetric._threads import over_rows
from deepmetric.codes import _hamming, _signs, to_bits
from deepmetric.evaluation import ranking
from deepmetric.index import _heaps
from deepmetric.index.exact import _numba_threads
from deepmetric.labels import is_hierarchical, same_mask, shared_levels

__all__ = ["hashing_scores"]

#: bound on the elements of one chunk's (queries x database) tensors
_BLOCK = 1 << 21


def _labels(labels, n: int, name: str, codes: str) -> torch.Tensor:
    return check_labels(as_tensor(labels, name), n, name, codes)


def _small_ints(distances: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Hamming distances (whole floats) in the smallest integer type that holds ``0..n_bits``."""
    dtype = torch.uint8 if n_bits <= 255 else torch.int16 if n_bits <= 32767 else torch.int32
    return distances.to(dtype)


def _stable_order(distances: torch.Tensor) -> torch.Tensor:
    """Each row's column order by ascending Hamming distance, ties in column (database) order. On the
    CPU numpy's radix sort of small integers, about fifteen times faster than ``torch.sort``."""
    if distances.device.type != "cpu":
        return torch.sort(distances, dim=1, stable=True).indices
    a = distances.numpy()
    order = np.empty(a.shape, dtype=np.int64)

    def sort(r0: int, r1: int) -> None:
        order[r0:r1] = np.argsort(a[r0:r1], axis=1, kind="stable")

    over_rows(sort, a.shape[0])
    return torch.from_numpy(order)


def hashing_scores(query_codes, query_labels, db_codes, db_labels, top_k: int | None = None,
                   precision_ns=(100, 500, 1000), radius: int | None = 2, query_real=None, db_real=None,
                   chunk_size: int | None = None) -> dict:
    """Hamming-ranking metrics of binary codes as a dict of python numbers.

    ``query_codes`` ``(Q, b)`` and ``db_codes`` ``(N, b)`` are codes in any form
    :func:`deepmetric.codes.to_bits` accepts (``{-1, +1}``, ``{0, 1}``, bool; real values by sign).
    Labels are flat ``(n,)`` integers, multi-label ``(n, C)`` bool (relevant = at least one shared
    label) or hierarchical ``(n, L)`` integers, column 0 the coarsest (the keys below at the finest
    level, relevant = every column equal, and ``level_{l}`` with the same keys at level ``l``,
    relevant = columns ``0..l`` equal), numpy or torch.

    Keys (formulas in the module docstring):

    * ``map``: mAP of the full Hamming ranking of the database, ties in database order; with
      ``query_real`` ``(Q, D)`` and ``db_real`` ``(N, D)`` (the real-valued codes before ``sign``),
      items at equal Hamming distance are re-ranked by the euclidean distance of their real codes;
    * ``map_at_{K}`` for ``top_k = K``: the deep-hashing mAP@K, AP over the top K divided by the
      number of relevant items found in the top K; a query with none found scores 0, as in DPSH's
      ``CalcTopMap`` (a ``K`` larger than the database ranks all of it);
    * ``precision_at_{n}`` for each ``n`` in ``precision_ns``; an ``n`` beyond the database counts
      the missing ranks as not relevant (as :func:`deepmetric.evaluate` and DeepHash-pytorch do);
    * ``precision_within_radius_{r}`` and ``recall_within_radius_{r}`` for ``radius = r`` (skipped
      with ``radius=None``); an empty radius counts as precision 0;
    * ``num_queries`` and ``queries_without_relevant`` (queries excluded from every mean; when no
      query has a relevant item at the finest level of a hierarchy, only these two are reported there).

    Work is chunked over queries (``chunk_size`` queries at a time, by default so that a chunk holds
    about 2 million query-database entries), so memory is ``O(chunk_size * N)``.

    >>> q, db = torch.tensor([[1, 1]]), torch.tensor([[1, -1], [1, 1], [-1, -1]])
    >>> hashing_scores(q, torch.tensor([0]), db, torch.tensor([0, 0, 1]), precision_ns=(1,))["map"]
    1.0
    """
    q_bits, db_bits = to_bits(query_codes, "query_codes"), to_bits(db_codes, "db_codes")
    if q_bits.shape[1] != db_bits.shape[1]:
        raise ValueError(f"db_codes: expected codes of {q_bits.shape[1]} bits to match query_codes, "
                         f"got {db_bits.shape[1]}")
    n_q, n_db, n_bits = q_bits.shape[0], db_bits.shape[0], q_bits.shape[1]
    if n_q == 0 or n_db == 0:
        raise ValueError(f"query_codes/db_codes: expected at least one code each, got {n_q} and {n_db}")
    device = q_bits.device
    db_bits = db_bits.to(device)
    q_labels = _labels(query_labels, n_q, "query_labels", "query_codes").to(device)
    db_labels = _labels(db_labels, n_db, "db_labels", "db_codes").to(device)
    if db_labels.shape[1:] != q_labels.shape[1:] or db_labels.dtype != q_labels.dtype:
        raise ValueError(f"db_labels: expected the same label form as query_labels {tuple(q_labels.shape[1:])} "
                         f"{q_labels.dtype}, got {tuple(db_labels.shape[1:])} {db_labels.dtype}")
    if (query_real is None) != (db_real is None):
        raise ValueError("query_real and db_real must be given together")
    if query_real is not None:
        query_real = check_embeddings(as_tensor(query_real, "query_real"), "query_real")
        db_real = check_embeddings(as_tensor(db_real, "db_real"), "db_real")
        if query_real.shape[0] != n_q or db_real.shape[0] != n_db or db_real.shape[1] != query_real.shape[1]:
            raise ValueError(f"query_real/db_real: expected shapes ({n_q}, D) and ({n_db}, D), got "
                             f"{tuple(query_real.shape)} and {tuple(db_real.shape)}")
        # float64 on the CPU, for _real_distances
        query_real, db_real = query_real.to("cpu", torch.float64), db_real.to("cpu", torch.float64).contiguous()
    top_k = None if top_k is None else check_int(top_k, "top_k", 1)
    ns = sorted(set(check_ints(precision_ns, "precision_ns", 1, "(100, 1000)")))
    radius = None if radius is None else check_int(radius, "radius", 0)
    step = check_int(chunk_size, "chunk_size", 1) if chunk_size is not None else max(1, _BLOCK // n_db)

    db_signs = _signs(db_bits)
    levels = q_labels.shape[1] if is_hierarchical(q_labels) else 0
    views: list[dict[str, list[torch.Tensor]]] = [{} for _ in range(1 + levels)]  # finest, then each level
    for s in range(0, n_q, step):
        rows = slice(s, s + step)
        if levels:  # relevant at level l: the first l + 1 columns equal
            shared = shared_levels(q_labels[rows], db_labels)
            masks = [shared == levels] + [shared > level for level in range(levels)]
        else:
            masks = [same_mask(q_labels[rows], db_labels)]
        keep = torch.stack([m.any(1) for m in masks]).any(0)
        if not keep.any():
            continue
        ham = _small_ints(_hamming(_signs(q_bits[rows][keep]), db_signs), n_bits)
        if query_real is None:
            order = _stable_order(ham)
        else:  # lexicographic (Hamming, euclidean, database index): two stable sorts
            real = _real_distances(query_real[rows][keep.cpu()], db_real).to(device)
            order = torch.sort(real, dim=1, stable=True).indices
            order = order.gather(1, _stable_order(ham.gather(1, order)))
        for values, relevant in zip(views, masks):
            relevant = relevant[keep]
            scored = relevant.any(1)
            if not scored.any():
                continue
            scores = _query_scores(relevant[scored], order[scored], ham[scored], top_k, ns, radius)
            for name, value in scores.items():
                values.setdefault(name, []).append(value)
    if not any(views):
        raise ValueError("query_labels/db_labels: no query has a relevant item in the database, "
                         "so no hashing metric is defined")
    results = _means(views[0], n_q)
    for level in range(levels):
        results[f"level_{level}"] = _means(views[level + 1], n_q)
    return results


def _real_distances(queries: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """Squared euclidean distances ``(c, N)`` between float64 CPU rows, each pair computed by the same
    loop (:func:`deepmetric.index._heaps.pair_distances`): identical database rows get identical
    distances, near-duplicates their true order. A matrix product (``|x|^2 + |y|^2 - 2 x.y``) rounds
    identical rows differently by their place in its tiles, so that their order, and the scores,
    depended on ``chunk_size``."""
    positions = torch.arange(db.shape[0]).expand(queries.shape[0], -1).contiguous()
    out = torch.empty(positions.shape, dtype=torch.float64)
    with _numba_threads():
        _heaps.pair_distances(queries.contiguous().numpy(), db.numpy(), positions.numpy(), _heaps.SQUARED, out.numpy())
    return out


def _query_scores(relevant, order, ham, top_k, ns, radius) -> dict:
    """Per-query metrics (float64) of queries that all have a relevant item: ``relevant`` and ``ham``
    ``(c, N)`` in database order, ``order`` the Hamming ranking of the database."""
    n_rel = relevant.sum(1)
    rel = relevant.gather(1, order)
    scores = {"map": ranking.average_precision(rel, n_rel)}
    if top_k is not None:
        top = rel[:, :min(top_k, rel.shape[1])]
        hits = top.cumsum(1)
        ranks = torch.arange(1, top.shape[1] + 1, device=rel.device, dtype=torch.float64)
        scores[f"map_at_{top_k}"] = (hits / ranks * top).sum(1) / hits[:, -1].clamp_min(1)
    for n in ns:
        scores[f"precision_at_{n}"] = rel[:, :n].sum(1).double() / n
    if radius is not None:
        within = ham <= min(radius, torch.iinfo(ham.dtype).max)  # a larger radius would wrap around
        n_within, found = within.sum(1).double(), (within & relevant).sum(1).double()
        scores[f"precision_within_radius_{radius}"] = found / n_within.clamp_min(1)
        scores[f"recall_within_radius_{radius}"] = found / n_rel.double()
    return scores


def _means(values: dict, n_q: int) -> dict:
    """Means over the scored queries, and the counts; no metric when no query was scored."""
    results = {name: float(torch.cat(v).mean()) for name, v in values.items()}
    n_scored = sum(v.numel() for v in values.get("map", []))
    return {**results, "num_queries": n_q, "queries_without_relevant": n_q - n_scored}
