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


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True, fastmath=True)
def pair_distances(queries, gallery, positions, kind, out):
    """``out[r, m]`` for ``j = positions[r, m]`` (``+inf`` where ``j < 0``): ``||q - x||^2`` (``SQUARED``),
    ``-q.x`` (``DOT``) or, for rows prepared as unit vectors, ``1 - cos = ||q - x||^2 / 2`` (``COSINE``;
    ``1 - q.x`` when a row is not of unit norm, i.e. a zero row). Every pair is computed by the same
    loop, so identical vectors get identical values wherever they sit (unlike a blocked matrix product)."""
    d = queries.shape[1]
    for r in prange(positions.shape[0]):
        for m in range(positions.shape[1]):
            j = positions[r, m]
            if j < 0:
                out[r, m] = np.inf
                continue
            sq, qx, qq, xx = 0.0, 0.0, 0.0, 0.0
            if kind == SQUARED:
                for t in range(d):
                    sq += (queries[r, t] - gallery[j, t]) * (queries[r, t] - gallery[j, t])
                out[r, m] = sq
            elif kind == DOT:
                for t in range(d):
                    qx += queries[r, t] * gallery[j, t]
                out[r, m] = -qx
            else:
                for t in range(d):
                    q, x = queries[r, t], gallery[j, t]
                    sq += (q - x) * (q - x)
                    qx += q * x
                    qq += q * q
                    xx += x * x
                out[r, m] = 0.5 * sq if abs(qq - 1.0) <= 1e-5 and abs(xx - 1.0) <= 1e-5 else 1.0 - qx
