"""Order preservation of a hierarchical embedding, from a seeded sample of quadlets.

For hierarchical labels ``(N, L)`` (column 0 the coarsest), a *quadlet* is a query ``q``, a positive
``p`` (same finest class, ``p != q``), an intermediate ``i`` (same class at ``level``, another finest
class) and a negative ``n`` (another class at ``level``). The embedding preserves the order of the
quadlet when ``d(q, p) < d(q, i) < d(q, n)``; *order preservation* is the fraction of quadlets that
it preserves (ties count as not preserved). With Omniglot's ``(alphabet, character)`` labels: a
drawing of the same character first, then one of the same alphabet, then everything else.

Quadlets are drawn uniformly from the set of all valid quadlets: the query with probability
proportional to its number of quadlets ``|P(q)| |I(q)| |N(q)|``, then ``p``, ``i`` and ``n``
uniformly and independently among its positives, intermediates and negatives.
"""
from __future__ import annotations

import torch

from deepmetric._checks import as_tensor, check_embeddings, check_int
from deepmetric.distances import check_distance
from deepmetric.labels import is_hierarchical, level_ids

__all__ = ["sample_quadlets", "quadlet_distances", "order_preservation"]


def sample_quadlets(labels: torch.Tensor, samples: int = 1_000_000, seed: int = 0, level: int = 0):
    """``(q, p, i, n)``: ``samples`` quadlets drawn uniformly, with replacement, from all valid ones
    (an unbiased sample however many there are); empty tensors when there is none."""
    if not isinstance(labels, torch.Tensor) or not is_hierarchical(labels) or labels.shape[1] < 2:
        got = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected hierarchical (N, L) integer labels with L >= 2, got {got}")
    n_levels = labels.shape[1]
    level = check_int(level, "level", 0, n_levels - 2, " (a level above the finest)")
    samples = check_int(samples, "samples", 1)
    labels = labels.cpu()
    ids = level_ids(labels)
    fine, coarse = ids[:, -1], ids[:, level]
    # fine ids number the rows in lexicographic order, so sorting by them makes every coarse class and,
    # inside it, every fine class a contiguous block
    order = torch.argsort(fine, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    fine_size, coarse_size = torch.bincount(fine), torch.bincount(coarse)
    f_size, c_size = fine_size[fine], coarse_size[coarse]
    f_start = (torch.cumsum(fine_size, 0) - fine_size)[fine]
    c_start = (torch.cumsum(coarse_size, 0) - coarse_size)[coarse]
    n_pos, n_int, n_neg = f_size - 1, c_size - f_size, labels.shape[0] - c_size
    weight = (n_pos * n_int * n_neg).double()
    total = float(weight.sum())
    empty = torch.empty(0, dtype=torch.long)
    if total == 0:
        return empty, empty, empty, empty
    g = torch.Generator().manual_seed(int(seed))
    q = torch.multinomial(weight, samples, replacement=True, generator=g)

    def draw(size):
        return (torch.rand(samples, generator=g, dtype=torch.float64) * size[q]).long().clamp_max(size[q] - 1)

    # positive: a position in the fine block other than the query's own
    r = draw(n_pos)
    p = f_start[q] + r + (f_start[q] + r >= rank[q]).long()
    # intermediate: a position in the coarse block outside the query's fine block
    r = draw(n_int)
    i = c_start[q] + r + (c_start[q] + r >= f_start[q]).long() * f_size[q]
    # negative: a position outside the query's coarse block
    r = draw(n_neg)
    n = r + (r >= c_start[q]).long() * c_size[q]
    return q, order[p], order[i], order[n]


def _paired(xa: torch.Tensor, xb: torch.Tensor, distance: str) -> torch.Tensor:
    """The distances of the rows of ``xa`` to the same rows of ``xb``."""
    if distance in ("euclidean", "squared_euclidean"):
        d = (xa - xb).square_().sum(1)
        return d.sqrt_() if distance == "euclidean" else d
    if distance == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(xa, xb, dim=1, eps=1e-12)
    return -(xa * xb).sum(1)  # dot: a larger product is nearer


@torch.no_grad()
def quadlet_distances(embeddings: torch.Tensor, labels: torch.Tensor, distance: str = "euclidean",
                      samples: int = 1_000_000, seed: int = 0, level: int = 0, chunk: int = 4096):
    """``(d(q, p), d(q, i), d(q, n))``: three ``(S,)`` tensors over the quadlets of
    :func:`sample_quadlets`: distances to a same-sub-class, a same-class and an other-class item."""
    check_distance(distance)
    embeddings = check_embeddings(as_tensor(embeddings, "embeddings"))  # NaN rows gave a wrong fraction
    if embeddings.shape[0] != labels.shape[0]:
        raise ValueError(f"embeddings: expected {labels.shape[0]} rows (the labels' rows), got {embeddings.shape[0]}")
    q, p, i, n = (t.to(embeddings.device) for t in sample_quadlets(labels, samples, seed, level))
    parts = [[], [], []]
    for s in range(0, q.numel(), chunk):
        xq = embeddings[q[s:s + chunk]]  # gathered once for the three relations
        for out, other in zip(parts, (p, i, n)):
            out.append(_paired(xq, embeddings[other[s:s + chunk]], distance))
    return tuple(torch.cat(d) if d else embeddings.new_zeros(0) for d in parts)


def order_preservation(embeddings: torch.Tensor, labels: torch.Tensor, distance: str = "euclidean",
                       samples: int = 1_000_000, seed: int = 0, level: int = 0) -> float:
    """Fraction of sampled quadlets with ``d(q, p) < d(q, i) < d(q, n)`` (NaN when there is none).

    >>> x = torch.tensor([[0.0], [0.1], [1.0], [5.0], [5.1], [6.0]])
    >>> y = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0], [1, 0], [1, 1]])
    >>> order_preservation(x, y)
    1.0
    """
    dp, di, dn = quadlet_distances(embeddings, labels, distance, samples, seed, level)
    if dp.numel() == 0:
        return float("nan")
    return float(((dp < di) & (di < dn)).double().mean())
