"""Multi-label relevance (at least one label shared) over bit-packed label rows.

A ``(N, C)`` bool label matrix is packed into ``(N, ceil(C / 8))`` bytes (:func:`packed_pair`). For each
query the kernels test only the bytes where the query has a label, so a pair costs about one test per
label of the query rather than ``C`` comparisons (YouTube-8M: 3,862 classes, about 3 labels per video).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from deepmetric._jit import kernel
from deepmetric.index.exact import _numba_threads


def packed_pair(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bytes (``np.packbits`` of each row, as CPU uint8 tensors) of multi-label query and gallery labels."""
    if gallery_labels.dtype != torch.bool or gallery_labels.dim() != 2:
        raise TypeError(f"gallery_labels: expected (G, C) bool multi-label labels like the queries, got "
                        f"{gallery_labels.dtype} {tuple(gallery_labels.shape)}")
    if query_labels.shape[1] != gallery_labels.shape[1]:
        raise ValueError(f"gallery_labels: expected {query_labels.shape[1]} label columns like the queries, got "
                         f"{gallery_labels.shape[1]}")
    return tuple(torch.from_numpy(np.packbits(labels.cpu().numpy(), axis=1)) for labels in (query_labels,
                                                                                           gallery_labels))


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.cpu().numpy())


def relevance(indices: torch.Tensor, query_bytes: torch.Tensor, gallery_bytes: torch.Tensor) -> torch.Tensor:
    """``(Q, k)`` bool: query ``q`` shares a label with gallery item ``indices[q, i]`` (False for -1)."""
    out = np.empty(tuple(indices.shape), dtype=np.bool_)
    with _numba_threads():
        shared_at(_numpy(query_bytes), _numpy(gallery_bytes), _numpy(indices.long()), out)
    return torch.from_numpy(out).to(indices.device)


def count_relevant(query_bytes: torch.Tensor, gallery_bytes: torch.Tensor, exclude_self: bool,
                   query_groups: torch.Tensor | None, gallery_groups: torch.Tensor | None) -> torch.Tensor:
    """``(Q,)`` int64: gallery items sharing a label with each query, without the query itself
    (``exclude_self``: query ``i`` is gallery item ``i``) and the items of its group (groups checked by
    the caller, :func:`deepmetric._checks.check_groups`)."""
    none = torch.zeros(0, dtype=torch.long)
    q_groups, g_groups = (none, none) if query_groups is None else (query_groups.long(), gallery_groups.long())
    counts = np.zeros(query_bytes.shape[0], dtype=np.int64)
    with _numba_threads():
        count_shared(_numpy(query_bytes), _numpy(gallery_bytes), exclude_self, _numpy(q_groups), _numpy(g_groups),
                     counts)
    return torch.from_numpy(counts)


@njit(inline="always")
def _label_bytes(words):
    """Indices of the non-zero bytes of one packed row."""
    out = np.empty(words.shape[0], dtype=np.int64)
    n = 0
    for w in range(words.shape[0]):
        if words[w] != 0:
            out[n] = w
            n += 1
    return out[:n]


@njit(inline="always")
def _share(q_row, g_row, nz):
    for t in range(nz.shape[0]):
        if q_row[nz[t]] & g_row[nz[t]]:
            return True
    return False


@kernel()
def shared_at(q_words, g_words, idx, out):
    """``out[q, j]``: query ``q`` and gallery item ``idx[q, j]`` share a label (False where it is -1).
    Packed rows: ``(Q, W)`` and ``(G, W)`` uint8."""
    for q in prange(idx.shape[0]):
        nz = _label_bytes(q_words[q])
        for j in range(idx.shape[1]):
            g = idx[q, j]
            out[q, j] = g >= 0 and _share(q_words[q], g_words[g], nz)


@kernel()
def count_shared(q_words, g_words, self_mode, q_groups, g_groups, counts):
    """``counts[q]``: gallery items sharing a label with query ``q``, leaving out item ``q`` itself when
    ``self_mode`` and the items of its group when groups are given (non-empty arrays)."""
    grouped = q_groups.shape[0] > 0
    for q in prange(q_words.shape[0]):
        nz = _label_bytes(q_words[q])
        c = 0
        if nz.shape[0]:
            for g in range(g_words.shape[0]):
                if (self_mode and g == q) or (grouped and g_groups[g] == q_groups[q]):
                    continue
                if _share(q_words[q], g_words[g], nz):
                    c += 1
        counts[q] = c
