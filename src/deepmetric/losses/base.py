"""What every tuple-based loss module shares: the registry, input and tuple validation, masks.

A loss module is called ``loss(embeddings, labels, tuples=None, ref_embeddings=None,
ref_labels=None)`` (DESIGN.md). ``tuples`` is a :class:`~deepmetric.tuples.Pairs` or
:class:`~deepmetric.tuples.Triplets` from a miner, or ``None`` for every valid tuple of the batch.
Anchor indices refer to the batch; positive and negative indices refer to the reference set, which
is the batch itself unless ``ref_embeddings`` is given (then nothing is excluded as a self-pair).
"""
from __future__ import annotations

import torch
from torch import nn

from deepmetric._checks import check_loss_value, check_pair, loss_precision
from deepmetric.distances import check_distance
from deepmetric.labels import pair_masks
from deepmetric.registry import Registry
from deepmetric.tuples import Pairs, Quadlets, Triplets

LOSSES = Registry("loss", "losses")


def check_loss_distance(owner: str, distance: str, allowed: tuple[str, ...]) -> str:
    """Return ``distance`` if it is a known distance that ``owner`` supports, else raise."""
    check_distance(distance)
    if distance not in allowed:
        raise ValueError(f"{owner}: distance {distance!r} is not supported; expected one of {', '.join(allowed)}")
    return distance


def _check_index(name: str, index, size: int, device) -> torch.Tensor:
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.is_floating_point() \
            or index.dtype == torch.bool or index.is_complex():
        got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
        raise TypeError(f"tuples.{name}: expected a 1-D integer tensor of indices, got {got}")
    index = index.to(device=device, dtype=torch.long)
    if index.numel():
        low, high = (int(v) for v in torch.aminmax(index))
        if low < 0 or high >= size:
            raise ValueError(f"tuples.{name}: expected indices in [0, {size}), got values in [{low}, {high}]")
    return index


def check_tuples(tuples, n: int, n_ref: int, device=None,
                 allow_quadlets: bool = False) -> Pairs | Triplets | Quadlets | None:
    """Validate miner output for a batch of ``n`` and a reference set of ``n_ref`` items.

    Returns ``None`` or a new Pairs / Triplets / Quadlets of int64 indices on ``device``; raises on
    another type (plain tuples included: losses tell pairs from triplets by type), ragged lengths or
    out-of-range indices. Quadlets ``(q, p, i, n)`` (``q`` indexes the batch, the others the
    reference set) are accepted only with ``allow_quadlets=True`` (losses that take them set
    ``accepts_quadlets = True``); otherwise they raise a TypeError.
    """
    if tuples is None:
        return None
    if isinstance(tuples, Quadlets):
        if not allow_quadlets:
            raise TypeError("tuples: expected deepmetric.tuples.Pairs or Triplets (or None), got Quadlets "
                            "(this loss does not take Quadlets)")
        q = _check_index("q", tuples.q, n, device)
        p, i = _check_index("p", tuples.p, n_ref, device), _check_index("i", tuples.i, n_ref, device)
        neg = _check_index("n", tuples.n, n_ref, device)
        if not q.numel() == p.numel() == i.numel() == neg.numel():
            raise ValueError(f"tuples: expected q, p, i, n of equal length, got "
                             f"{q.numel()}, {p.numel()}, {i.numel()}, {neg.numel()}")
        return Quadlets(q, p, i, neg)
    if isinstance(tuples, Pairs):
        a1, p = _check_index("a1", tuples.a1, n, device), _check_index("p", tuples.p, n_ref, device)
        a2, neg = _check_index("a2", tuples.a2, n, device), _check_index("n", tuples.n, n_ref, device)
        if a1.numel() != p.numel() or a2.numel() != neg.numel():
            raise ValueError(f"tuples: expected len(a1) == len(p) and len(a2) == len(n), got "
                             f"{a1.numel()}, {p.numel()}, {a2.numel()}, {neg.numel()}")
        return Pairs(a1, p, a2, neg)
    if isinstance(tuples, Triplets):
        a = _check_index("a", tuples.a, n, device)
        p, neg = _check_index("p", tuples.p, n_ref, device), _check_index("n", tuples.n, n_ref, device)
        if not a.numel() == p.numel() == neg.numel():
            raise ValueError(f"tuples: expected a, p, n of equal length, got {a.numel()}, {p.numel()}, {neg.numel()}")
        return Triplets(a, p, neg)
    hint = ""
    if isinstance(tuples, (tuple, list)) and len(tuples) in (3, 4):  # e.g. a pytorch-metric-learning miner's
        quadlets = " or (q, p, i, n) as deepmetric.Quadlets(*t)" if allow_quadlets else ""
        hint = (f"; wrap a plain (a, p, n) as deepmetric.Triplets(*t) and (a1, p, a2, n) as "
                f"deepmetric.Pairs(*t){quadlets} (a {type(tuples).__name__} of {len(tuples)} was given)")
    kinds = "Pairs, Triplets or Quadlets" if allow_quadlets else "Pairs or Triplets"
    raise TypeError(f"tuples: expected deepmetric.tuples.{kinds} (or None), got {type(tuples).__name__}{hint}")


def as_pairs(tuples: Pairs | Triplets):
    """``(a1, p, a2, n)`` index tensors. Triplets give their anchor-positive pairs ``(a, p)`` and
    anchor-negative pairs ``(a, n)`` as they are: a pair that appears in several triplets appears
    that many times (as pytorch-metric-learning's ``convert_to_pairs``)."""
    if isinstance(tuples, Triplets):
        return tuples.a, tuples.p, tuples.a, tuples.n
    return tuples.a1, tuples.p, tuples.a2, tuples.n


def tuple_masks(tuples: Pairs | Triplets, n: int, n_ref: int, device=None):
    """``(n, n_ref)`` bool masks of the positive and negative pairs in ``tuples`` (each pair once,
    however often it is given)."""
    a1, p, a2, neg = as_pairs(tuples)
    return _index_mask(a1, p, n, n_ref, device), _index_mask(a2, neg, n, n_ref, device)


def _index_mask(rows: torch.Tensor, cols: torch.Tensor, n: int, n_ref: int, device) -> torch.Tensor:
    """``(n, n_ref)`` bool mask, True at ``(rows[k], cols[k])``: ``index_fill_`` of the flat indices
    (faster than a 2-D ``index_put_``)."""
    mask = torch.zeros(n * n_ref, dtype=torch.bool, device=device)
    mask.index_fill_(0, torch.add(cols, rows, alpha=n_ref), True)
    return mask.view(n, n_ref)


class MetricLoss(nn.Module):
    """Base class: validates the call and hands :meth:`compute` checked tensors (half-precision
    embeddings in float32, :func:`~deepmetric._checks.loss_precision`).

    Subclasses set ``distance`` (a name from :mod:`deepmetric.distances`) and implement
    ``compute(x, labels, tuples, ref_x, ref_labels)``, where ``ref_labels`` is ``None`` when the
    reference set is the batch itself (then ``ref_x is x`` and self-pairs are excluded).
    """

    distance: str = "euclidean"
    accepts_quadlets: bool = False  # hierarchical losses take deepmetric.tuples.Quadlets

    def forward(self, embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None) -> torch.Tensor:
        has_ref = ref_embeddings is not None or ref_labels is not None
        x, labels, ref_x, ref_labels = check_pair(embeddings, labels, ref_embeddings, ref_labels,
                                                  distance=self.distance)
        tuples = check_tuples(tuples, x.shape[0], ref_x.shape[0], x.device, self.accepts_quadlets)
        if ref_x is x:  # compute() tells the batch as its own reference set by identity
            x = ref_x = loss_precision(x)
        else:
            x, ref_x = loss_precision(x), loss_precision(ref_x)
        return check_loss_value(self.compute(x, labels, tuples, ref_x, ref_labels if has_ref else None),
                                type(self).__name__)

    def compute(self, x, labels, tuples, ref_x, ref_labels) -> torch.Tensor:
        raise NotImplementedError

    def masks(self, x, labels, tuples, ref_x, ref_labels):
        """Positive and negative ``(B, R)`` masks: of the given tuples, or of all valid pairs."""
        if tuples is None:
            return pair_masks(labels, ref_labels)
        return tuple_masks(tuples, x.shape[0], ref_x.shape[0], x.device)
