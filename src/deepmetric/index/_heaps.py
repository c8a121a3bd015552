"""Compiled kernels of the query-in-gallery search (:func:`deepmetric.index.exact.self_knn`): screening a
block of scores into per-row bounded max-heaps in one pass, without masks or sorting.

Every row ``g`` keeps the ``k`` best ``(score, id)`` pairs seen so far in a max-heap ``values[g]`` /
``ids[g]`` (root = the worst kept pair; pairs compare by score, then id, so ties keep gallery order),
its size in ``sizes[g]`` and its admission threshold in ``thresholds[g]``: an estimate before the
heap is full, then the root's score. A score above the threshold is skipped with one comparison;
only the rare scores at or below it touch the heap.

:func:`order_tied_runs` puts the ids of equal values in ascending order in rows already sorted by
value, for every search (ties keep gallery order).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from deepmetric._jit import kernel

#: columns per task of the column screening (each task owns its columns' heaps, so no two threads
#: write the same heap)
COLUMN_CHUNK = 64


@njit(inline="always")
def _before(v, j, root_v, root_j):
    """(v, j) ranks before (root_v, root_j): smaller score, or the same score and a smaller id."""
    return v < root_v or (v == root_v and j < root_j)


@njit(inline="always")
def _offer(values, ids, size, k, v, j):
    """Offer ``(v, j)`` to a max-heap of capacity ``k`` holding ``size`` pairs; returns the new size.

    Below capacity the pair is sifted up from the end; at capacity it replaces the root if it ranks
    before it and is sifted down, else the heap is unchanged."""
    if size < k:
        p = size
        while p > 0:
            parent = (p - 1) >> 1
            if not _before(values[parent], ids[parent], v, j):
                break
            values[p], ids[p] = values[parent], ids[parent]
            p = parent
        values[p], ids[p] = v, j
        return size + 1
    if not _before(v, j, values[0], ids[0]):
        return size
    _sift_down(values, ids, k, v, j)
    return size


@njit(inline="always")
def _sift_down(values, ids, size, v, j):
    """Put ``(v, j)`` at the root of the heap ``[0, size)`` and restore the heap order below it."""
    p = 0
    while True:
        c = 2 * p + 1
        if c >= size:
            break
        if c + 1 < size and _before(values[c], ids[c], values[c + 1], ids[c + 1]):
            c += 1
        if not _before(v, j, values[c], ids[c]):
            break
        values[p], ids[p] = values[c], ids[c]
        p = c
    values[p], ids[p] = v, j


@kernel()
def screen_rows(s, row0, col0, values, ids, sizes, thresholds):
    """Offer every entry of the block ``s`` (rows ``row0 + r``, columns ``col0 + c``) to its row's heap."""
    k = values.shape[1]
    for r in prange(s.shape[0]):
        g = row0 + r
        t = thresholds[g]
        row = s[r]
        for c in range(s.shape[1]):
            v = row[c]
            if v <= t:
                sizes[g] = _offer(values[g], ids[g], sizes[g], k, v, col0 + c)
                if sizes[g] == k:
                    t = values[g, 0]
        thresholds[g] = t


@kernel()
def screen_columns(s, row0, col0, values, ids, sizes, thresholds):
    """Offer every entry of the block ``s`` to its column's heap (column ``col0 + c`` retrieves row
    ``row0 + r``): the transposed half of a symmetric block. Tasks own chunks of columns and read the
    block row by row; a row of a chunk is only examined entry by entry if one entry passes."""
    k = values.shape[1]
    n_c = s.shape[1]
    for task in prange((n_c + COLUMN_CHUNK - 1) // COLUMN_CHUNK):
        c0 = task * COLUMN_CHUNK
        c1 = min(c0 + COLUMN_CHUNK, n_c)
        t = thresholds[col0 + c0:col0 + c1].copy()
        for r in range(s.shape[0]):
            row = s[r, c0:c1]
            hit = False
            for c in range(c1 - c0):
                hit |= row[c] <= t[c]
            if not hit:
                continue
            for c in range(c1 - c0):
                if row[c] <= t[c]:
                    g = col0 + c0 + c
                    sizes[g] = _offer(values[g], ids[g], sizes[g], k, row[c], row0 + r)
                    if sizes[g] == k:
                        t[c] = values[g, 0]
        thresholds[col0 + c0:col0 + c1] = t


@kernel()
def sort_heaps(values, ids, sizes, empty_value):
    """Sort every row's heap in place into ascending (score, id) order (heapsort); the slots beyond
    its size get ``empty_value`` and id -1."""
    k = values.shape[1]
    for g in prange(values.shape[0]):
        size = sizes[g]
        for m in range(size, k):
            values[g, m], ids[g, m] = empty_value, -1
        while size > 1:
            last = size - 1
            v, j = values[g, last], ids[g, last]
            values[g, last], ids[g, last] = values[g, 0], ids[g, 0]
            _sift_down(values[g], ids[g], last, v, j)
            size = last


#: runs of equal values up to this length are insertion-sorted, longer ones sorted by np.sort
_SHORT_RUN = 16


@kernel()
def order_tied_runs(values, ids):
    """In rows sorted by value, sort the ids of every run of equal values in place (ascending): one
    pass per row, so ties cost O(k) rather than the two full sorts of a (value, id) lexicographic sort."""
    k = values.shape[1]
    for g in prange(values.shape[0]):
        start = 0
        while start < k:
            end = start + 1
            while end < k and values[g, end] == values[g, start]:
                end += 1
            if end - start > _SHORT_RUN:
                ids[g, start:end] = np.sort(ids[g, start:end])
            else:
                for m in range(start + 1, end):
                    j = ids[g, m]
                    p = m - 1
                    while p >= start and ids[g, p] > j:
                        ids[g, p + 1] = ids[g, p]
                        p -= 1
                    ids[g, p + 1] = j
            start = end


#: what :func:`pair_distances` computes
SQUARED, DOT, COSINE = 0, 1, 2


#: floating-point liberties of :func:`pair_distances`: reassociation lets its sums vectorise; no
#: assumption of finite values, so that the checks of the cosine's squared form stay in place
_PAIR_FASTMATH = {"reassoc", "nsz", "contract"}


@kernel(fastmath=_PAIR_FASTMATH)
def pair_distances(queries, gallery, positions, kind, out):
    """``out[r, m]`` for ``j = positions[r, m]`` (``+inf`` where ``j < 0``): ``||q - x||^2`` (``SQUARED``),
    ``-q.x`` (``DOT``) or ``1 - cos(q, x)`` (``COSINE``, on the vectors as given, not normalised; a zero
    vector has cosine 0 to everything). Every pair is computed by the same loop, so identical vectors
    get identical values wherever they sit (unlike a blocked matrix product).

    The cosine is read from its square, ``cos = sign(q.x) sqrt((q.x)^2 / (|q|^2 |x|^2))``, with the sums
    in float64: when they are exact (vectors of small integers, e.g. counts or binary attributes),
    equal cosines of different vectors come out identical, since a correctly rounded quotient and root
    of equal values are equal (``q.x / (|q| |x|)`` rounds each root on its own, and normalised rows
    round every component). Where the square under- or overflows, ``q.x / |q| / |x|`` is used, on the
    vectors divided by their largest entries where the sums themselves overflow."""
    d = queries.shape[1]
    for r in prange(positions.shape[0]):
        for m in range(positions.shape[1]):
            j = positions[r, m]
            if j < 0:
                out[r, m] = np.inf
                continue
            sq, qx = 0.0, 0.0
            if kind == SQUARED:
                for t in range(d):
                    sq += (queries[r, t] - gallery[j, t]) * (queries[r, t] - gallery[j, t])
                out[r, m] = sq
            elif kind == DOT:
                for t in range(d):
                    qx += queries[r, t] * gallery[j, t]
                out[r, m] = -qx
            else:
                out[r, m] = _cosine_distance(queries[r], gallery[j])


#: squared norms below this are raised to it, as :func:`deepmetric.distances.l2_normalize` divides by
#: ``max(|x|, 1e-12)``: a zero vector has cosine 0 to everything, a tiny one keeps its small cosines
_TINY_SQUARED_NORM = 1e-24


@njit(inline="always")
def _cosine_sums(q, x, q_scale, x_scale):
    """``(q.x, |q|^2, |x|^2)`` in float64 of the vectors divided by ``q_scale`` and ``x_scale``."""
    qx, qq, xx = 0.0, 0.0, 0.0
    for t in range(q.shape[0]):
        a, b = np.float64(q[t]) / q_scale, np.float64(x[t]) / x_scale
        qx += a * b
        qq += a * a
        xx += b * b
    return qx, qq, xx


@njit(inline="always")
def _cosine_distance(q, x):
    """``1 - cos(q, x)`` from the square of the cosine, sums in float64 (see :func:`pair_distances`),
    norms clamped as the library's, the cosine clipped to ``[-1, 1]``."""
    qx, qq, xx = _cosine_sums(q, x, 1.0, 1.0)
    qq, xx = max(qq, _TINY_SQUARED_NORM), max(xx, _TINY_SQUARED_NORM)
    num, den = qx * qx, qq * xx
    if den < np.inf and num < np.inf and (num > 0.0 or qx == 0.0):
        c = np.sqrt(num / den)
        c = c if qx >= 0.0 else -c
    elif qq < np.inf and xx < np.inf:  # the square under- or overflowed, not the sums
        c = qx / np.sqrt(qq) / np.sqrt(xx)
    else:  # the sums overflowed: the same on the vectors divided by their largest entries
        qx, qq, xx = _cosine_sums(q, x, np.float64(np.max(np.abs(q))), np.float64(np.max(np.abs(x))))
        c = qx / np.sqrt(qq) / np.sqrt(xx)
    return 1.0 - min(1.0, max(-1.0, c))
