"""Hierarchical (order-preserving) losses: quadlet, pentuplet and radial. The math is in
:mod:`deepmetric.functional.hierarchical`.

Labels are hierarchical ``(B, L)`` int64, column 0 the coarsest; ``level`` (default 0) is the
"class" level and the last column the "sub-class". For a query ``q``: a positive ``p`` shares every
level (same sub-class, ``p != q``), an intermediate ``i`` shares levels ``0..level`` but not the
finest (same class, other sub-class), a negative ``n`` differs at a level ``<= level`` (other class).
Flat ``(B,)`` labels are accepted and have no intermediates; a query without an intermediate uses the
loss's *no-intermediate form* on its triplets ``(q, p, n)``. Multi-label labels are rejected.

Every loss takes ``tuples=None`` (every valid tuple of the batch), :class:`~deepmetric.tuples.Quadlets`
(e.g. from the ``"quadlet"`` miner) or :class:`~deepmetric.tuples.Triplets` (taken in the
no-intermediate form). ``reduction="mean"`` (default) averages over the tuples (quadlets plus
fallback triplets), ``"sum"`` sums them; with no tuple the loss is a zero connected to the graph.
"""
from __future__ import annotations

import torch

from deepmetric._checks import check_int, check_number
from deepmetric.distances import pairwise
from deepmetric.functional import hierarchical as H
from deepmetric.losses.base import LOSSES, MetricLoss, check_loss_distance
from deepmetric.tuples import Quadlets, Triplets

__all__ = ["QuadletLoss", "PentupletLoss", "RadialLoss"]


def _check_kind(owner: str, tuples) -> None:
    if tuples is not None and not isinstance(tuples, (Quadlets, Triplets)):
        raise TypeError(f"tuples: {owner} takes deepmetric.tuples.Quadlets or Triplets (or None), "
                        f"got {type(tuples).__name__}")


def _ref_rows(ref_x: torch.Tensor, rows: torch.Tensor, distance: str):
    """Distances from the reference items ``rows`` to the whole reference set: ``(D, inverse)``
    with ``D`` of shape ``(U, R)`` over the unique rows, so ``D[inverse[k], j] = d(ref[rows[k]], ref[j])``."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    return pairwise(ref_x[unique], ref_x, distance), inverse


@LOSSES.register("quadlet")
class QuadletLoss(MetricLoss):
    """Order-preserving quadlet loss for hierarchical labels, the ordering constraints
    ``D(q,p) + m1 < D(q,i)`` and ``D(q,i) + m2 < D(q,n)`` of Zhang, Zhou, Lin and Zhang (CVPR 2016,
    "Embedding Label Structures for Fine-Grained Feature Representation") as hinges::

        L(q, p, i, n) = [m1 + D(q,p) - D(q,i)]_+ + [m2 + D(q,i) - D(q,n)]_+

    with ``D`` the squared euclidean distance (default; ``distance="euclidean"`` also works). A sub-class
    must be tighter than its class by ``m1`` and classes must be apart by a further ``m2``.

    No-intermediate form (flat labels, a class with one sub-class in the batch, given ``Triplets``):
    ``[m1 + m2 + D(q,p) - D(q,n)]_+``, a triplet loss with margin ``m1 + m2``: the constraint the two
    margins imply together (``[a]_+ + [b]_+ >= [a + b]_+``), so flat labels train a plain triplet
    loss with the same total separation.

    Defaults ``m1 = 0.1``, ``m2 = 0.2`` are for L2-normalised embeddings, where squared distances lie
    in ``[0, 4]``: together they ask for the same separation ``0.3`` between a positive and a
    negative as a triplet margin of about 0.2-0.3, the smaller part inside a class (sub-classes of a
    class are often visually close), the larger between classes.

    ``tuples=None``: every valid quadlet plus the fallback triplets of queries without an intermediate,
    computed without enumerating quadlets: ``sum_{q,p,i,n} [m1 + D_qp - D_qi]_+`` is
    ``sum_{q,p,i} N_q [m1 + D_qp - D_qi]_+`` (``N_q`` negatives of ``q``) and likewise the second term
    with ``P_q`` positives; each is a per-row sorted prefix sum (``O(B R log R)`` time, ``O(B R)``
    memory; see :func:`deepmetric.functional.hierarchical.quadlet_loss_all`). ``reduction="mean"``
    divides by the number of tuples ``sum_q P_q N_q max(I_q, 1)``.

    Args:
        margin1: ``m1 >= 0`` between positive and intermediate.
        margin2: ``m2 >= 0`` between intermediate and negative.
        level: the class level (column) of the labels.
        distance: ``squared_euclidean`` (default) or ``euclidean``.
        reduction: ``mean`` or ``sum`` over tuples.

    >>> import torch, deepmetric as dm
    >>> from deepmetric.losses.hierarchical import QuadletLoss
    >>> labels = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2]])
    >>> emb = torch.tensor([[0.0], [0.1], [0.5], [2.0]])
    >>> float(QuadletLoss()(emb, labels))  # every margin is satisfied
    0.0
    """

    accepts_quadlets = True

    def __init__(self, margin1: float = 0.1, margin2: float = 0.2, level: int = 0,
                 distance: str = "squared_euclidean", reduction: str = "mean"):
        super().__init__()
        self.margin1 = check_number("margin1", margin1, low=0.0)
        self.margin2 = check_number("margin2", margin2, low=0.0)
        self.level = check_int(level, "level")
        self.distance = check_loss_distance("QuadletLoss", distance, ("squared_euclidean", "euclidean"))
        self.reduction = H.check_reduction(reduction)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        _check_kind("QuadletLoss", tuples)
        H.check_level(self.level, labels)
        dist = pairwise(x, ref_x, self.distance)
        if tuples is None:
            pos, inter, neg = H.hierarchy_masks(labels, ref_labels, self.level)
            return H.quadlet_loss_all(dist, pos, inter, neg, self.margin1, self.margin2, self.reduction)
        if isinstance(tuples, Quadlets):
            q, p, i, n = tuples
            terms = H.quadlet_terms(dist[q, p], dist[q, i], dist[q, n], self.margin1, self.margin2)
        else:
            a, p, n = tuples
            terms = H.quadlet_terms(dist[a, p], None, dist[a, n], self.margin1, self.margin2)
        return H.reduce_total(terms.sum(), terms.numel(), self.reduction)

    def extra_repr(self) -> str:
        return (f"margin1={self.margin1}, margin2={self.margin2}, level={self.level}, "
                f"distance={self.distance!r}, reduction={self.reduction!r}")


@LOSSES.register("pentuplet")
class PentupletLoss(MetricLoss):
    """Pentuplet loss (Gupta et al., ICPR 2018, critical scenes in video), for a query ``q``, a
    positive ``p``, two intermediates ``i1``, ``i2`` (in the paper: early and late critical scenes)
    and a negative ``n``::

        L = [g1 + D(q,p) - D(q,n)]_+ + [g2 + D(p,i1) - D(p,n)]_+ + [g3 + D(p,i2) - D(p,n)]_+
            + [g4 + D(p,i1) - D(p,i2)]_+

    with ``D`` the squared euclidean distance (default; ``euclidean`` also works) and defaults
    ``g1, g2, g3, g4 = 0.7, 0.5, 0.4, 0.1``. The paper's L2 weight penalty (``lambda = 0.001``) is
    not part of this loss: set it as the optimizer's weight decay.

    Hierarchical labels from a batch have no notion of early and late intermediates, so this module
    uses the one-intermediate form ``i1 = i2 = i`` (the ``g4`` term is dropped, ``g2`` and ``g3`` both
    apply to ``D(p,i)``): ``tuples=None`` means every valid quadlet ``(q, p, i, n)``, given
    :class:`~deepmetric.tuples.Quadlets` are taken as ``(q, p, i, n)``. A tuple without intermediate
    (a query with none, flat labels, given :class:`~deepmetric.tuples.Triplets`) keeps only the first
    term. For explicit two-intermediate pentuplets call
    :func:`deepmetric.functional.hierarchical.pentuplet_terms` with the five distances.

    ``tuples=None`` is computed without enumerating quadlets: the first term is a per-query sum over
    ``(p, n)`` weighted by ``max(I_q, 1)``; the others depend on ``(p, i, n)`` only, and the
    intermediates and negatives of ``q`` are those of ``p``, so they are per-``p`` sums over the
    reference set weighted by the number of queries of which ``p`` is a positive (``O(R^2)`` memory,
    :func:`deepmetric.functional.hierarchical.pentuplet_loss_all`). ``reduction="mean"`` divides by
    the number of tuples (quadlets plus fallback triplets).

    Args:
        g1, g2, g3, g4: the margins (>= 0).
        level: the class level (column) of the labels.
        distance: ``squared_euclidean`` (default) or ``euclidean``.
        reduction: ``mean`` or ``sum`` over tuples.
    """

    accepts_quadlets = True

    def __init__(self, g1: float = 0.7, g2: float = 0.5, g3: float = 0.4, g4: float = 0.1, level: int = 0,
                 distance: str = "squared_euclidean", reduction: str = "mean"):
        super().__init__()
        self.gammas = tuple(check_number(name, value, low=0.0)
                            for name, value in (("g1", g1), ("g2", g2), ("g3", g3), ("g4", g4)))
        self.level = check_int(level, "level")
        self.distance = check_loss_distance("PentupletLoss", distance, ("squared_euclidean", "euclidean"))
        self.reduction = H.check_reduction(reduction)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        _check_kind("PentupletLoss", tuples)
        H.check_level(self.level, labels)
        dist = pairwise(x, ref_x, self.distance)
        if tuples is None:
            pos, inter, neg = H.hierarchy_masks(labels, ref_labels, self.level)
            if ref_labels is None:
                return H.pentuplet_loss_all(dist, pos, inter, neg, gammas=self.gammas, reduction=self.reduction)
            _, ref_inter, ref_neg = H.hierarchy_masks(ref_labels, None, self.level)
            ref_dist = pairwise(ref_x, ref_x, self.distance)
            return H.pentuplet_loss_all(dist, pos, inter, neg, ref_dist, ref_inter, ref_neg, self.gammas,
                                        self.reduction)
        if isinstance(tuples, Triplets):
            a, p, n = tuples
            terms = H.pentuplet_terms(dist[a, p], dist[a, n], gammas=self.gammas)
        else:
            q, p, i, n = tuples
            ref_dist, row = _ref_rows(ref_x, p, self.distance)
            terms = H.pentuplet_terms(dist[q, p], dist[q, n], ref_dist[row, i], ref_dist[row, n], gammas=self.gammas)
        return H.reduce_total(terms.sum(), terms.numel(), self.reduction) + H._zero(dist)

    def extra_repr(self) -> str:
        g1, g2, g3, g4 = self.gammas
        return (f"g1={g1}, g2={g2}, g3={g3}, g4={g4}, level={self.level}, distance={self.distance!r}, "
                f"reduction={self.reduction!r}")


@LOSSES.register("radial")
class RadialLoss(MetricLoss):
    """Radial loss (Jain et al., ICASSP 2019) for hierarchical labels: the query, its positive and its
    intermediate form a group with centroid and radius::

        X_G = (f(q) + f(p) + f(i)) / 3,     R = max_{x in {q, p, i}} ||f(x) - X_G||
        L = [(c R)^2 - ||f(n) - X_G||^2]_+ + [m + ||f(q) - f(p)||^2 - ||f(q) - f(i)||^2]_+

    so the negative must lie outside the sphere of radius ``c R`` around the group and the sub-class
    be tighter than the class by ``m``. Defaults ``c = 3``, ``m = 0.3``. ``R`` is a function of the
    triple and gradients flow through it (to the farthest of the three points; ``R^2`` is computed as
    a max of squared norms, so no square root is differentiated and coinciding points give finite
    gradients). The embedding is searched with the euclidean distance (``distance = "euclidean"``).

    No-intermediate form (flat labels, a query without intermediate, given ``Triplets``): the group
    is the pair ``(q, p)``: ``X_G = (f(q) + f(p)) / 2``, ``R = ||f(q) - f(p)|| / 2``, and only the
    first term ``[(c R)^2 - ||f(n) - X_G||^2]_+`` is kept.

    ``tuples=None``: every valid quadlet and every fallback triplet of the batch, exactly and without
    enumerating them (:func:`~deepmetric.functional.hierarchical.radial_loss_all`: one matrix product per
    block of groups gives each centroid's distances to all negatives). ``reduction="mean"`` averages
    over the tuples.

    Args:
        c: radius scale (>= 0).
        margin: ``m >= 0``.
        level: the class level (column) of the labels.
        reduction: ``mean`` or ``sum`` over tuples.
    """

    accepts_quadlets = True
    distance = "euclidean"

    def __init__(self, c: float = 3.0, margin: float = 0.3, level: int = 0, reduction: str = "mean"):
        super().__init__()
        self.c = check_number("c", c, low=0.0)
        self.margin = check_number("margin", margin, low=0.0)
        self.level = check_int(level, "level")
        self.reduction = H.check_reduction(reduction)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        _check_kind("RadialLoss", tuples)
        H.check_level(self.level, labels)
        if tuples is None:
            with torch.no_grad():
                pos, inter, neg = H.hierarchy_masks(labels, ref_labels, self.level)
            total, count = H.radial_loss_all(x, ref_x, pos, inter, neg, self.c, self.margin)
            return H.reduce_total(total, count, self.reduction)
        if isinstance(tuples, Quadlets):
            q, p, i, n = tuples
            terms = H.radial_terms(x[q], ref_x[p], ref_x[i], ref_x[n], self.c, self.margin)
        else:  # Triplets: the no-intermediate form
            a, p, n = tuples
            terms = H.radial_terms(x[a], ref_x[p], None, ref_x[n], self.c, self.margin)
        return H.reduce_total(terms.sum() + H._zero(x, ref_x), terms.numel(), self.reduction)

    def extra_repr(self) -> str:
        return f"c={self.c}, margin={self.margin}, level={self.level}, reduction={self.reduction!r}"
