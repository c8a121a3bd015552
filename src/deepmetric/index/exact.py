"""Exact k-nearest-neighbour search by matrix products (torch), chunked so memory stays bounded.

Conventions (DESIGN.md): results are sorted by ascending distance (``cosine`` as ``1 - cos``, ``dot``
as its negative); ties keep gallery order (the smaller gallery index comes first). When fewer than
``k`` candidates remain for a query (``k`` larger than the gallery after exclusions), the missing slots
are padded with index ``-1`` and distance ``+inf``.

How a block is ranked. Each (query chunk x gallery block) of scores is one fused matrix product
(oneDNN for float32, see :func:`_mm_t`), with the formulas of :mod:`deepmetric.distances` rearranged
so that ranking needs no further pass over the block:

* ``euclidean`` and ``squared_euclidean``: ``s_ij = |y_j|^2 - 2 x_i.y_j`` (``|x_i|^2`` is constant in a
  row); the returned distance is ``sqrt(max(s_ij + |x_i|^2, 0))`` (resp. without the root; reported
  as 0 up to 1e-6 as in ``distances.euclidean``, after the results are ordered; distances refined
  pair by pair, :func:`_refine`, are reported as computed);
* ``cosine``: ``s_ij = -x_i.y_j / (|x_i| |y_j|)``, returned as ``1 + s_ij = 1 - cos``;
* ``dot``: ``s_ij = -x_i.y_j``, returned as is.

A running top-k of scores is kept block by block: bounded per-query heaps filled by the compiled
kernels of :mod:`deepmetric.index._heaps` while k is small against the gallery (``HEAP_RATIO``;
always for query-in-gallery), else a merge of sorted blocks. Ties are broken by gallery index on the
score and again on the returned distance, so identical vectors always come back in gallery order.
With refinement (:func:`_needs_refine`: cosine, float64 products, and the ``exact`` index), ``k +
REFINE_MARGIN`` candidates are kept by score and ranked by their distances recomputed pair by pair
(:func:`_refine`), so that different directions at equal cosines (integer vectors) also keep gallery
order, and rows whose cut lies within the products' rounding are searched once more, with
``RESEARCH_MARGIN`` candidates (:meth:`_Searcher.search`).
"""
from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
import torch

from deepmetric._checks import check_embeddings, check_groups, check_int
from deepmetric._threads import over_rows
from deepmetric.distances import check_distance
from deepmetric.index import _heaps

#: queries per chunk and gallery items per block: one block of scores holds
#: ``QUERY_CHUNK * GALLERY_CHUNK`` floats (8 MB in float32 by default, so that it stays in the cache
#: between the product and the screening). Searches deeper than a block (k > GALLERY_CHUNK) take
#: blocks of k items: a merge of sorted blocks costs O(k) per block.
QUERY_CHUNK = 1024
GALLERY_CHUNK = 2048


def _onednn_linear():
    """oneDNN's fully connected product (``torch.ops.mkldnn._linear_pointwise``), when this torch has it."""
    try:
        if torch.backends.mkldnn.is_available():
            return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        pass
    return None


_ONEDNN_LINEAR = _onednn_linear()


def _mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)``, a new ``(len(a), len(b))`` tensor.

    float32 on the CPU goes through oneDNN, which reaches about twice the throughput of torch's BLAS
    (MKL) on this project's AVX-512 machines when the result fits in the last-level cache
    (``bench/evaluation.py`` prints the GFLOPS of both); other dtypes and devices use ``torch.mm``.
    """
    if _ONEDNN_LINEAR is not None and a.dtype == torch.float32 and a.device.type == "cpu":
        return _ONEDNN_LINEAR(a, b, bias, "none", [], "")
    return torch.mm(a, b.T) if bias is None else torch.addmm(bias, a, b.T)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """float32 unless the caller gave float64 (half precision is too coarse to rank)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _sort_by_value_then_index(values: torch.Tensor, cols: torch.Tensor):
    """Sort each row by (value, column): columns ascending first, then a stable sort on values."""
    cols, order = cols.sort(dim=1)
    values = values.gather(1, order)
    values, order = values.sort(dim=1, stable=True)
    return values, cols.gather(1, order)


def _order_ties_by_index(values: torch.Tensor, cols: torch.Tensor):
    """Rows already sorted by value: put runs of equal values in column order. On the CPU ``cols`` is
    reordered in place (by :func:`deepmetric.index._heaps.order_tied_runs`); elsewhere the rows with
    ties are sorted again."""
    if values.device.type == "cpu":
        values, cols = values.contiguous(), cols.contiguous()
        if values.shape[0] and values.shape[1] > 1:
            with _numba_threads():
                _heaps.order_tied_runs(values.numpy(), cols.numpy())
        return values, cols
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1).nonzero().flatten()
    if tied.numel():
        values, cols = values.clone(), cols.clone()
        values[tied], cols[tied] = _sort_by_value_then_index(values[tied], cols[tied])
    return values, cols


def _argsort_rows(a: np.ndarray, ids: np.ndarray | None):
    """``(values, ids)`` of every row of ``a`` in ascending order of value (ids: the columns unless
    given), ties in any order: numpy's SIMD sort on torch's threads, about five times faster than
    ``torch.sort`` here."""
    values = np.empty_like(a)
    out = np.empty(a.shape, dtype=np.int64)

    def sort(r0: int, r1: int) -> None:
        order = np.argsort(a[r0:r1], axis=1)
        values[r0:r1] = np.take_along_axis(a[r0:r1], order, axis=1)
        out[r0:r1] = order if ids is None else np.take_along_axis(ids[r0:r1], order, axis=1)

    over_rows(sort, a.shape[0])
    return values, out


def _sort_rows(scores: torch.Tensor, ids: torch.Tensor | None = None):
    """Every row sorted by (value, id): ``(values, ids)``, the ids being the columns unless given.

    On the CPU an unstable sort (:func:`_argsort_rows`), then the ids of tied values put in order by
    :func:`_order_ties_by_index`; elsewhere torch's stable sort (given ids must then ascend along
    each run of ties, as they do when they are the columns or sorted blocks of a gallery in order).
    """
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        values, order = _argsort_rows(scores.numpy(), None if ids is None else ids.numpy())
        return _order_ties_by_index(torch.from_numpy(values), torch.from_numpy(order))
    values, order = scores.sort(dim=1, stable=True)
    if ids is None:
        return values, order
    return values, ids.gather(1, order)


#: candidates searched beyond k and ranked again by their distances recomputed pair by pair (:func:`_refine`)
REFINE_MARGIN = 16
#: the margin of the one deeper search of rows whose cut lies within the products' rounding
RESEARCH_MARGIN = 256


def _needs_refine(x: torch.Tensor, distance: str) -> bool:
    """Whether a search keeps ``k + REFINE_MARGIN`` candidates and ranks them by :func:`_refine`: when
    the product may score identical vectors differently (:func:`_products_consistent`), and always for
    cosine, whose equal cosines of different vectors (parallel vectors of other norms, integer vectors at
    the same angle) score a last bit apart, so that the k kept by score could cut such a run anywhere."""
    return distance == "cosine" or not _products_consistent(x)


def _products_consistent(x: torch.Tensor) -> bool:
    """Whether :func:`_mm_t` scores identical gallery vectors identically wherever they sit. oneDNN's
    float32 product does; MKL's float64 product rounds the columns at the edges of its tiles
    differently, so identical vectors would be ordered by rounding instead of gallery order."""
    return _ONEDNN_LINEAR is not None and x.dtype == torch.float32 and x.device.type == "cpu"


def _refine(queries: torch.Tensor, gallery: torch.Tensor, distance: str, positions: torch.Tensor):
    """``(distances, positions)`` of candidates with their distances recomputed pair by pair, each row
    sorted by (distance, position); ``positions`` ``-1`` (no candidate) stay last at ``+inf``.

    Queries and gallery as prepared for the search (centred for euclidean), but not normalised for
    cosine: ``||q - x||`` (squared), ``1 - cos`` for cosine (from its square in float64, so that equal
    cosines of integer vectors tie exactly: :func:`deepmetric.index._heaps.pair_distances`), ``-q.x`` for
    dot. Identical vectors get identical distances (exact zeros between duplicates, as in faiss' flat
    index), and near-duplicates are ordered without the cancellation of ``|x|^2 + |q|^2 - 2 q.x``.
    """
    if queries.device.type != "cpu":  # a compiled kernel; on the CPU _sort_rows puts tied ids in order
        d, p = _refine(queries.cpu(), gallery.cpu(), distance, positions.cpu())
        return d.to(queries.device), p.to(queries.device)
    queries, gallery, positions = queries.contiguous(), gallery.contiguous(), positions.contiguous()
    out = torch.empty(positions.shape, dtype=queries.dtype)
    kind = {"dot": _heaps.DOT, "cosine": _heaps.COSINE}.get(distance, _heaps.SQUARED)
    with _numba_threads():
        _heaps.pair_distances(queries.numpy(), gallery.numpy(), positions.numpy(), kind, out.numpy())
    if distance == "euclidean":
        out.sqrt_()
    distances, positions = _sort_rows(out, positions)
    return distances, positions.masked_fill_(torch.isinf(distances), -1)


def _score_distances(scores: torch.Tensor, distance: str) -> torch.Tensor:
    """Distances from full scores: ``|x|^2 + |y|^2 - 2 x.y`` for ``euclidean`` (root) and
    ``squared_euclidean``; ``1 - cos`` (at least 0) from ``-cos`` for ``cosine``; ``-x.y`` for ``dot``.
    ``scores`` is overwritten (results can be large). Euclidean distances up to 1e-6 are set to 0 by
    :func:`_zero_tiny` once the results are in order."""
    if distance in ("euclidean", "squared_euclidean"):
        d2 = scores.clamp_min_(0.0)
        return d2 if distance == "squared_euclidean" else d2.sqrt_()
    if distance == "cosine":  # 1 - cos, at least 0 (rounding can take cos a little above 1)
        return scores.add_(1.0).clamp_min_(0.0)
    return scores


def _zero_tiny(distances: torch.Tensor, distance: str) -> torch.Tensor:
    """Euclidean distances up to 1e-6 (``d2 <= 1e-12``) reported as 0, as ``distances.euclidean``
    does, after the results were put in order: the cut is absolute, so ordering on the zeros would
    rank items closer than 1e-6 by gallery index whatever their distances (embeddings of small scale)."""
    return distances.masked_fill_(distances <= 1e-6, 0.0) if distance == "euclidean" else distances


#: the per-query heaps select while ``HEAP_RATIO * k <= gallery size``; deeper lists are sorted
HEAP_RATIO = 8


def _new_heaps(n: int, k: int, dtype: torch.dtype, thresholds: torch.Tensor | None):
    """Empty bounded heaps of ``n`` rows for :mod:`deepmetric.index._heaps`: ``(values, ids, sizes,
    thresholds)`` as numpy arrays (thresholds ``+inf`` unless given)."""
    values = np.empty((n, k), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    t = np.full(n, np.inf, dtype=values.dtype) if thresholds is None else thresholds.cpu().numpy().astype(values.dtype)
    return values, np.empty((n, k), dtype=np.int32), np.zeros(n, dtype=np.int32), t


def _sorted_heaps(heaps):
    """``(values, ids)`` tensors of the heaps in ascending (value, id) order, padded with ``+inf`` / -1."""
    values, ids, sizes, _ = heaps
    with _numba_threads():
        _heaps.sort_heaps(values, ids, sizes, math.inf)
    return torch.from_numpy(values), torch.from_numpy(ids).long()


@contextlib.contextmanager
def _numba_threads():
    """Run the compiled kernels on as many threads as torch uses (``torch.set_num_threads``).

    numba's count is restored afterwards. Starting numba's OpenMP pool (on first use), and setting
    numba's count, set the process' OpenMP thread count, torch's and faiss' included: torch's count
    is put back too."""
    threads, previous = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


#: rows per chunk of the float64 statistics of a gallery (its centre and largest norm)
_ROWS = 16384


def _center(x: torch.Tensor) -> torch.Tensor:
    """The point euclidean searches move to the origin: the mean vector, rounded to a multiple of the
    power of two just below the items' spread (their RMS deviation from the mean).

    Moving every vector by the same amount leaves every distance unchanged, but ``|x|^2 + |y|^2 -
    2 x.y`` loses the digits that rank neighbours when the norms are large against the distances
    between items (embeddings far from the origin). The rounding keeps the shift exact on grids of
    coarser spacing, e.g. small integer coordinates, whose tied distances then stay exactly tied.
    """
    total, squares = x.new_zeros(x.shape[1], dtype=torch.float64), 0.0
    for chunk in x.split(_ROWS):  # float64 sums without a float64 copy of x
        total += chunk.double().sum(0)
    mean = total / x.shape[0]
    for chunk in x.split(_ROWS):  # a second pass: E[x^2] - E[x]^2 cancels far from the origin
        squares += float((chunk.double() - mean).square_().sum())  # double() of float64 is x itself
    spread = math.sqrt(squares / x.numel())
    if not spread > 0:
        return torch.zeros_like(x[0])
    step = 2.0 ** math.floor(math.log2(spread))
    return ((mean / step).round() * step).to(x.dtype)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (zero rows stay zero), computed in float64 chunk by chunk and
    rounded to ``x``'s dtype, so that parallel vectors of different norms come out identical and their
    cosine distances tie exactly (dividing in float32 can differ in the last bit)."""
    out = torch.empty_like(x)
    for rows, chunk in zip(out.split(_ROWS), x.split(_ROWS)):
        chunk = chunk.double()  # for float64 input, the caller's own rows: never written
        norms = chunk.norm(dim=1, keepdim=True)
        huge = torch.isinf(norms)
        if bool(huge.any()):  # |x|^2 beyond float64: the same direction from the row over its largest entry
            chunk = torch.where(huge, chunk / chunk.abs().amax(dim=1, keepdim=True), chunk)
            norms = chunk.norm(dim=1, keepdim=True)
        rows.copy_(chunk / norms.clamp_min(1e-12))
    return out


def _max_norm(x: torch.Tensor, center: torch.Tensor | None = None) -> float:
    """The largest row norm (of ``x - center``), computed in float64 chunk by chunk; 0 without rows."""
    if x.shape[0] == 0:
        return 0.0
    shift = 0.0 if center is None else center.double()
    return max(float((c.double() - shift).norm(dim=1).max()) for c in x.split(_ROWS))


def _check_overflow(norm_sum: float, distance: str, dtype: torch.dtype, name: str = "queries/gallery") -> None:
    """Scores are bounded by (|x| + |y|)^2; refuse inputs whose products would overflow."""
    if not norm_sum ** 2 < torch.finfo(dtype).max:
        raise ValueError(f"{name}: {distance} distances overflow {dtype} (the largest |x| + |y| "
                         f"is {norm_sum:.3g}); scale the embeddings down")


def _search_center(x: torch.Tensor, distance: str) -> torch.Tensor | None:
    """The point a euclidean search moves the items ``x`` by (:func:`_center`); None when they stay
    (other distances, no items, or a centre at the origin)."""
    if distance not in ("euclidean", "squared_euclidean") or x.shape[0] == 0:
        return None
    center = _center(x)
    return center if bool(center.any()) else None


def _check_items_overflow(x: torch.Tensor, distance: str, name: str, center: torch.Tensor | None = None) -> None:
    """Refuse items (moved by ``center``) whose scores against each other, or against a query as far
    out, would overflow: ``(2 max |x|)^2`` beyond the dtype. Cosine scores are bounded."""
    if distance != "cosine" and x.shape[0]:
        _check_overflow(2 * _max_norm(x, center), distance, x.dtype, name)


def cut_within_rounding(last_score, kth_distance, queries, distance: str, max_norm: float, symmetric: bool = False):
    """Rows whose last kept candidate scores within the products' rounding of the k-th distance (as a
    score), so that an item cut by its rounded score may be nearer than the k-th.

    Scores as :class:`_Searcher` ranks them: ``-2 x.y + |y|^2`` (euclidean), ``-cos`` (cosine, on unit
    ``queries``), ``-x.y`` (dot); ``symmetric``: the euclidean scores also hold the row constant
    ``|x|^2`` (:func:`_symmetric_factors`, faiss' L2 distances). Each score is within ``(D + 4) eps``
    times the sum of its terms' magnitudes; ``max_norm`` is the gallery's largest norm."""
    x_square = queries.double().square().sum(1)
    x_norm = x_square.sqrt()
    gamma = (queries.shape[1] + 4) * torch.finfo(queries.dtype).eps
    kth = kth_distance.double()
    row_constant = x_square if symmetric else 0.0
    if distance == "euclidean":
        kth = kth.square() - x_square + row_constant
    elif distance == "squared_euclidean":
        kth = kth - x_square + row_constant
    elif distance == "cosine":
        kth = kth - 1.0
    if distance == "cosine":  # unit vectors: |x.y| <= 1
        error = torch.full_like(x_norm, 2 * gamma)
    elif distance == "dot":  # |x.y|
        error = gamma * x_norm * max_norm
    else:  # |2 x.y| + |y|^2 (+ |x|^2)
        error = gamma * (2 * x_norm * max_norm + max_norm ** 2 + row_constant)
    return torch.isfinite(kth) & (last_score.double() <= kth + 2 * error)


class _Searcher:
    """Exact search over one gallery: gallery statistics computed once, queries searched chunk by chunk."""

    def __init__(self, gallery: torch.Tensor, distance: str, gallery_chunk_size: int = GALLERY_CHUNK,
                 refine: bool | None = None):
        """``refine``: search ``k + REFINE_MARGIN`` candidates by the product score and rank them by their
        distances recomputed pair by pair (:func:`_refine`); by default as :func:`_needs_refine` says
        (float64 products, and cosine)."""
        self.distance = distance
        self.block = gallery_chunk_size
        self.refine = _needs_refine(gallery, distance) if refine is None else refine
        self.raw = gallery.contiguous() if distance == "cosine" else None  # cosine is re-ranked on these
        if distance == "cosine":
            gallery = unit_rows(gallery)
        self.center = _search_center(gallery, distance)
        if self.center is not None:  # a moved copy of the gallery only when it is far from the origin
            gallery = gallery - self.center
        self.gallery = gallery.contiguous()
        self.n = gallery.shape[0]
        if distance in ("euclidean", "squared_euclidean"):
            self.bias = gallery.pow(2).sum(1)  # |y_j|^2
            self.alpha = -2.0
        else:
            self.bias = None
            self.alpha = -1.0
        self.max_norm = _max_norm(gallery)

    def _check_overflow(self, queries: torch.Tensor):
        if self.distance != "cosine" and queries.shape[0]:
            _check_overflow(_max_norm(queries) + self.max_norm, self.distance, queries.dtype)

    def search(self, queries, k, self_index=None, query_groups=None, gallery_groups=None, margin=REFINE_MARGIN):
        """Top-k ``(distances, indices)`` of a chunk of validated queries.

        ``self_index`` ``(c,)``: one gallery index per query that it must not retrieve (itself in the
        query-in-gallery protocol). ``query_groups`` ``(c,)`` / ``gallery_groups`` ``(G,)``: a query never
        retrieves an item of its own group. With ``refine``, ``k + margin`` candidates are kept by score;
        rows where an item beyond them may be among the k nearest (the last candidate scores within
        the products' rounding of the k-th distance, e.g. in a cluster of near-duplicates) are searched
        once more with ``RESEARCH_MARGIN``: clusters of up to about that many near-duplicates come back
        exact. Only once: on data of many exact duplicates every row qualifies, and searching deeper
        until the rows clear would rank the whole gallery.
        """
        original = queries
        if self.center is not None:
            queries = queries - self.center
        self._check_overflow(queries)
        n_q = queries.shape[0]
        prepared = unit_rows(queries) if self.distance == "cosine" else queries
        depth = k + margin if self.refine else k
        x = self.alpha * prepared  # scores = alpha x.y (+ |y|^2): a power of two, so no rounding is added
        rows = torch.arange(n_q, device=queries.device)
        # selection: per-query heaps (compiled, on the CPU) while k is small against the gallery,
        # else a running top-k of sorted blocks
        heaps = _new_heaps(n_q, depth, queries.dtype, None) if HEAP_RATIO * depth <= self.n else None
        best_s = queries.new_empty((n_q, 0))
        best_i = torch.empty((n_q, 0), dtype=torch.long, device=queries.device)
        step = self.block if heaps is not None else max(self.block, depth)
        for g0 in range(0, self.n, step):
            g1 = min(g0 + step, self.n)
            scores = _mm_t(x, self.gallery[g0:g1], None if self.bias is None else self.bias[g0:g1])
            if self_index is not None:
                cols = self_index - g0
                inside = (cols >= 0) & (cols < g1 - g0)
                scores[rows[inside], cols[inside]] = math.inf
            if query_groups is not None:
                scores.masked_fill_(query_groups.unsqueeze(1) == gallery_groups[g0:g1].unsqueeze(0), math.inf)
            if heaps is not None:
                with _numba_threads():
                    _heaps.screen_rows(scores.cpu().numpy(), 0, g0, *heaps)
                continue
            if g0 == 0:
                s, i = _sort_rows(scores)
            else:  # the new block's scores after the best so far, which hold smaller gallery indices
                cols = torch.arange(g0, g1, device=queries.device).expand(n_q, -1)
                s, i = _sort_rows(torch.cat([best_s, scores], dim=1), torch.cat([best_i, cols], dim=1))
            del scores
            best_s, best_i = s[:, :depth], i[:, :depth]
        if heaps is not None:
            best_s, best_i = (t.to(queries.device) for t in _sorted_heaps(heaps))
        elif best_s.shape[1] < depth:  # gallery smaller than the depth
            pad = depth - best_s.shape[1]
            best_s = torch.cat([best_s, best_s.new_full((n_q, pad), math.inf)], dim=1)
            best_i = torch.cat([best_i, best_i.new_full((n_q, pad), -1)], dim=1)
        best_i.masked_fill_(torch.isinf(best_s), -1)  # only excluded items score +inf
        if self.refine:
            if self.raw is not None:
                distances, best_i = _refine(queries, self.raw, self.distance, best_i)
            else:
                distances, best_i = _refine(prepared, self.gallery, self.distance, best_i)
            distances, best_i = distances[:, :k], best_i[:, :k]
            if depth < self.n and margin < RESEARCH_MARGIN:
                redo = cut_within_rounding(best_s[:, -1], distances[:, -1], prepared, self.distance,
                                           self.max_norm).nonzero().flatten()
                if redo.numel():
                    distances[redo], best_i[redo] = self.search(
                        original[redo], k, None if self_index is None else self_index[redo],
                        None if query_groups is None else query_groups[redo], gallery_groups,
                        min(RESEARCH_MARGIN, self.n - k))
            return distances, best_i
        distances = self._distances(best_s, queries)
        if self.distance != "dot":  # the map from score to distance may round distinct scores together
            distances, best_i = _order_ties_by_index(distances, best_i)
            best_i.masked_fill_(torch.isinf(distances), -1)  # pads sort last: keep them -1
        return _zero_tiny(distances, self.distance), best_i

    def _distances(self, scores, queries):
        """Distances from the kept scores, overwriting them."""
        if self.distance in ("euclidean", "squared_euclidean"):  # add back the row constant |x_i|^2
            scores = scores.add_(queries.pow(2).sum(1, keepdim=True))
        return _score_distances(scores, self.distance)


# ----------------------------------------------------------------------------- query-in-gallery search

#: rows (and columns) of one block of the symmetric search
SELF_BLOCK = 2048
#: gallery items sampled to estimate each row's k-th distance before the search: n / 20, between
#: half of _SAMPLE and _SAMPLE (the sample's product then costs at most a tenth of the search's)
_SAMPLE = 2048


def _symmetric_factors(x: torch.Tensor, distance: str):
    """``(a, b)`` such that ``a_i . b_j`` is symmetric in i and j and ranks j like the distance from i.

    ``euclidean`` / ``squared_euclidean``: ``a = [x, |x|^2, 1]``, ``b = [-2x, 1, |x|^2]``, so the product
    is ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j``; ``cosine``: ``-cos``; ``dot``: ``-x_i.x_j``.
    """
    if distance in ("euclidean", "squared_euclidean"):
        sq = x.pow(2).sum(1, keepdim=True)
        ones = torch.ones_like(sq)
        return torch.cat([x, sq, ones], 1), torch.cat([-2.0 * x, ones, sq], 1)
    if distance == "cosine":
        x = unit_rows(x)
    return x, -x


def self_knn(x: torch.Tensor, k: int, distance: str = "euclidean", groups: torch.Tensor | None = None,
             block_size: int = SELF_BLOCK, seed: int = 0):
    """Exact k nearest neighbours of every item among the others (query-in-gallery), exploiting symmetry.

    Same results as ``knn(x, x, k, distance, exclude_self=True, query_groups=groups,
    gallery_groups=groups)``, for about half the arithmetic: the score matrix ``S`` of
    :func:`_symmetric_factors` is symmetric, so each block ``S[I, J]`` with ``I <= J`` is computed once
    and ranked both along its rows (for the items of I) and along its columns (for the items of J).

    Ranking a block costs one pass over it (:mod:`deepmetric.index._heaps`): every item keeps its k
    best (score, id) pairs in a bounded max-heap, and an entry is offered to the heap only when it is
    at or below the item's threshold: first an estimate of its k-th score from a random sample of
    the gallery, chosen so that about 3k items fall below it, then the heap's worst kept score. An
    item whose estimate proved too low (fewer than k items below it) is searched again by the
    per-query search, so the result is always exact. For cosine, and when the product may score
    identical vectors differently (float64; :func:`_needs_refine`), ``k + REFINE_MARGIN`` are kept and
    ranked again by :func:`_refine`, so that ties keep gallery order, and rows whose cut lies within
    the products' rounding are searched again by the refined per-query search, as
    :meth:`_Searcher.search` does. Runs on the CPU (other devices: copied there and back). Memory:
    ``O(n * k + block_size^2)``; ``n`` must stay below 2^31 (ids are held as int32).
    """
    if x.device.type != "cpu":
        d, i = self_knn(x.cpu(), k, distance, None if groups is None else groups.cpu(), block_size, seed)
        return d.to(x.device), i.to(x.device)
    n, final_k = x.shape[0], k
    center = _search_center(x, distance)
    if center is not None:
        x = x - center
    _check_items_overflow(x, distance, "embeddings")
    refine = _needs_refine(x, distance)
    if refine:  # candidates beyond k, ranked again pair by pair at the end (_refine)
        k += REFINE_MARGIN
    a, b = _symmetric_factors(x, distance)
    bounds = [(s, min(s + block_size, n)) for s in range(0, n, block_size)]

    def scores(rows: slice, cols: torch.Tensor | slice) -> torch.Tensor:
        out = _mm_t(a[rows], b[cols])
        if groups is not None:
            out.masked_fill_(groups[rows, None] == groups[None, cols], math.inf)
        return out

    # thresholds: about 3k of the n - 1 other items are expected at or below the q-th of m sampled
    # scores; fewer than k are, i.e. Binomial(m, k / n) >= q, for about 0.2% of the rows at n = 1e5
    m = min(n, max(_SAMPLE // 2, min(_SAMPLE, n // 20)))
    q = math.ceil(3 * k * m / max(n - 1, 1))
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m]
    estimate = x.new_full((n,), math.inf)
    # the q-th smallest sampled score of each row (the root of a heap of q), where the sample is at most a
    # tenth of the items: on fewer (below about 10,000) the pass costs more than it saves
    if q <= m // 2 and 10 * m <= n:
        sampled = _new_heaps(n, q, x.dtype, None)
        with _numba_threads():
            for i0, i1 in bounds:
                s = scores(slice(i0, i1), sample)
                s[torch.arange(i0, i1)[:, None] == sample[None, :]] = math.inf
                _heaps.screen_rows(s.numpy(), i0, 0, *sampled)
        estimate = torch.from_numpy(sampled[0][:, 0])

    heaps = _new_heaps(n, k, x.dtype, estimate)
    with _numba_threads():
        for bi, (i0, i1) in enumerate(bounds):
            for bj in range(bi, len(bounds)):
                j0, j1 = bounds[bj]
                s = scores(slice(i0, i1), slice(j0, j1))
                if bi == bj:
                    s.fill_diagonal_(math.inf)
                _heaps.screen_rows(s.numpy(), i0, j0, *heaps)
                if bj != bi:
                    _heaps.screen_columns(s.numpy(), i0, j0, *heaps)
                del s  # freed before the next block is allocated: the allocator reuses its memory
    values, ids = _sorted_heaps(heaps)
    a = b = heaps = None  # free the factors and the int32 heap ids before the results are assembled
    ids.masked_fill_(torch.isinf(values), -1)
    # rows with fewer than k results although their estimate was finite: the estimate was too low
    redo = (ids < 0).any(dim=1) & torch.isfinite(estimate)
    if refine:
        distances, ids = _refine(x, x, distance, ids)
        distances, ids = distances[:, :final_k], ids[:, :final_k]
        # and rows where an item cut by its rounded score may be nearer than the k-th: both searched
        # again by the refined per-query search, as it searches such rows of its own (_Searcher.search)
        searcher = _Searcher(x, distance, refine=True)
        prepared = unit_rows(x) if distance == "cosine" else x
        redo |= cut_within_rounding(values[:, -1], distances[:, -1], prepared, distance, searcher.max_norm, True)
        redo = redo.nonzero().flatten()
        if redo.numel():
            distances[redo], ids[redo] = searcher.search(
                x[redo], final_k, redo, None if groups is None else groups[redo], groups,
                max(1, min(RESEARCH_MARGIN, n - final_k)))
        return distances, ids
    distances = _score_distances(values, distance)
    if distance != "dot":
        distances, ids = _order_ties_by_index(distances, ids)
        ids.masked_fill_(torch.isinf(distances), -1)
    distances = _zero_tiny(distances, distance)
    redo = redo.nonzero().flatten()
    if redo.numel():
        distances[redo], ids[redo] = _Searcher(x, distance, refine=False).search(
            x[redo], k, redo, None if groups is None else groups[redo], groups)
    return distances, ids


def _prepare(queries, gallery, distance, query_groups=None, gallery_groups=None):
    """Validate and convert search inputs; returns them on the queries' device in a common dtype."""
    queries = _as_float(check_embeddings(queries, "queries")).detach()  # a search has no gradient
    gallery = _as_float(check_embeddings(gallery, "gallery")).detach()
    distance = check_distance(distance)
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"gallery: expected dimension {queries.shape[1]} to match queries, got {gallery.shape[1]}")
    if gallery.shape[0] == 0:
        raise ValueError("gallery: expected at least one item, got an empty (0, D) tensor")
    query_groups, gallery_groups = check_groups(query_groups, gallery_groups, queries.shape[0], gallery.shape[0])
    if query_groups is not None:
        query_groups, gallery_groups = query_groups.to(queries.device), gallery_groups.to(queries.device)
    dtype = torch.promote_types(queries.dtype, gallery.dtype)
    queries, gallery = queries.to(dtype), gallery.to(device=queries.device, dtype=dtype)
    return queries, gallery, distance, query_groups, gallery_groups


def knn(queries: torch.Tensor, gallery: torch.Tensor, k: int, distance: str = "euclidean",
        exclude_self: bool = False, query_groups: torch.Tensor | None = None,
        gallery_groups: torch.Tensor | None = None, chunk_size: int = QUERY_CHUNK,
        gallery_chunk_size: int = GALLERY_CHUNK):
    """Exact k nearest neighbours of each query in the gallery.

    Args:
        queries: ``(Q, D)`` floating tensor.
        gallery: ``(G, D)`` floating tensor.
        k: number of neighbours (>= 1).
        distance: ``euclidean``, ``squared_euclidean``, ``cosine`` or ``dot`` (see ``deepmetric.distances``).
        exclude_self: query-in-gallery protocol: query ``i`` is gallery item ``i`` (needs ``Q <= G``)
            and never appears in its own results. When ``queries is gallery`` (and ``query_groups is
            gallery_groups``), :func:`self_knn` computes the same result with half the arithmetic.
        query_groups, gallery_groups: ``(Q,)`` and ``(G,)`` integer group ids, given together; a query
            never retrieves a gallery item of its own group (e.g. frames of the same video).
        chunk_size: queries per chunk. gallery_chunk_size: gallery items per block (at least k of
            them when k is large against the gallery); a running top-k is kept block by block, so
            memory is ``O(chunk_size * (gallery_chunk_size + k))``.

    Returns:
        ``(distances, indices)``, both ``(Q, k)``: ascending distances (``cosine`` as ``1 - cos``,
        ``dot`` negated) and int64 gallery indices. Ties keep gallery order. Slots beyond the
        candidates left after exclusions hold index ``-1`` and distance ``+inf``.

    >>> d, i = knn(torch.tensor([[0.0], [3.0]]), torch.tensor([[1.0], [2.0], [0.0]]), k=2)
    >>> i.tolist()
    [[2, 0], [1, 0]]
    """
    symmetric = queries is gallery and query_groups is gallery_groups  # query-in-gallery on one tensor
    queries, gallery, distance, query_groups, gallery_groups = _prepare(
        queries, gallery, distance, query_groups, gallery_groups)
    k = check_int(k, "k", 1)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    gallery_chunk_size = check_int(gallery_chunk_size, "gallery_chunk_size", 1)
    if exclude_self and queries.shape[0] > gallery.shape[0]:
        raise ValueError(
            f"exclude_self: query i must be gallery item i, but there are {queries.shape[0]} queries "
            f"and only {gallery.shape[0]} gallery items")
    if exclude_self and symmetric:
        return self_knn(queries, k, distance, query_groups, min(gallery_chunk_size, SELF_BLOCK))
    return search_chunks(_Searcher(gallery, distance, gallery_chunk_size), queries, k, chunk_size, exclude_self,
                         query_groups, gallery_groups)


def search_chunks(searcher: _Searcher, queries: torch.Tensor, k: int, chunk_size: int = QUERY_CHUNK,
                  exclude_self: bool = False, query_groups=None, gallery_groups=None):
    """:func:`knn` through a prepared :class:`_Searcher` (validated inputs), ``chunk_size`` queries at a time."""
    out_d, out_i = [queries.new_empty((0, k))], [torch.empty((0, k), dtype=torch.long, device=queries.device)]
    for q0 in range(0, queries.shape[0], chunk_size):
        q1 = min(q0 + chunk_size, queries.shape[0])
        d, i = searcher.search(
            queries[q0:q1], k, torch.arange(q0, q1, device=queries.device) if exclude_self else None,
            None if query_groups is None else query_groups[q0:q1], gallery_groups)
        out_d.append(d)
        out_i.append(i)
    return torch.cat(out_d), torch.cat(out_i)
