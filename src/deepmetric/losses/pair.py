"""Pair losses: contrastive, DDML and multi-similarity.

Each is called ``loss(embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None)``.
With ``tuples=None`` every positive pair (same label, ``i != j`` within the batch) and every negative
pair enters. Given :class:`~deepmetric.tuples.Triplets` are used as the pairs ``(a, p)`` and
``(a, n)``. The math is in :mod:`deepmetric.functional.losses`.
"""
from __future__ import annotations

import torch

from deepmetric.distances import cosine_similarity, pairwise
from deepmetric.functional import losses as F
from deepmetric.losses.base import LOSSES, MetricLoss, as_pairs, check_loss_distance, check_number


@LOSSES.register("contrastive")
class ContrastiveLoss(MetricLoss):
    """Contrastive loss (Hadsell, Chopra, LeCun, CVPR 2006)::

        L = reduce_{(i,j) positive} [D_ij - pos_margin]_+  +  reduce_{(i,j) negative} [neg_margin - D_ij]_+

    Positive and negative parts are reduced separately and added, as pytorch-metric-learning's
    ``ContrastiveLoss`` does; the default ``reduction="mean_nonzero"`` averages each part over its
    pairs with a non-zero loss (its ``AvgNonZeroReducer``). Given pairs (or the pairs of given
    triplets) are used as they are, duplicates included.

    Args:
        pos_margin: positives closer than this cost nothing (>= 0).
        neg_margin: negatives farther than this cost nothing (>= 0).
        distance: ``euclidean``, ``squared_euclidean`` or ``cosine`` (distance ``1 - cos``).
        reduction: ``mean_nonzero``, ``mean`` or ``sum``.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("contrastive", neg_margin=1.0)
    >>> float(loss(torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 0, 1])))
    0.0
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, distance: str = "euclidean",
                 reduction: str = "mean_nonzero"):
        super().__init__()
        self.pos_margin = check_number("pos_margin", pos_margin, low=0.0)
        self.neg_margin = check_number("neg_margin", neg_margin, low=0.0)
        self.distance = check_loss_distance("ContrastiveLoss", distance,
                                            ("euclidean", "squared_euclidean", "cosine"))
        self.reduction = F.check_reduction(reduction)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        dist = pairwise(x, ref_x, self.distance)
        if tuples is None:
            pos, neg = self.masks(x, labels, tuples, ref_x, ref_labels)
            return F.masked_contrastive_loss(dist, pos, neg, self.pos_margin, self.neg_margin, self.reduction)
        a1, p, a2, n = as_pairs(tuples)
        return F.contrastive_loss(dist[a1, p], dist[a2, n], self.pos_margin, self.neg_margin, self.reduction)

    def extra_repr(self) -> str:
        return (f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, "
                f"distance={self.distance!r}, reduction={self.reduction!r}")


@LOSSES.register("ddml")
class DDMLLoss(MetricLoss):
    """Discriminative deep metric learning (Hu, Lu, Tan, CVPR 2014, "Discriminative Deep Metric
    Learning for Face Verification in the Wild")::

        L = mean_{i != j} g(1 - l_ij (tau - d^2(x_i, x_j))),   g(z) = log(1 + exp(beta z)) / beta

    ``l_ij = +1`` for a pair with the same label and ``-1`` otherwise; ``d^2`` is the squared
    Euclidean distance (fixed: ``distance = "squared_euclidean"``). Positives are pulled below
    ``tau - 1`` and negatives pushed beyond ``tau + 1``. The paper's weight penalty
    ``lambda/2 sum ||W||^2 + ||b||^2`` is the optimiser's weight decay, not part of this loss, and
    its constant factor 1/2 is dropped. Given pairs (or the pairs of given triplets) are used as
    they are.

    Args:
        tau: the distance threshold (> 0).
        beta: sharpness of the smoothed hinge ``g`` (> 0).
        reduction: ``mean`` (the default, over all pairs), ``mean_nonzero`` or ``sum``.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("ddml", tau=2.0)
    >>> round(float(loss(torch.zeros(2, 3), torch.tensor([0, 1]))), 4)  # g(1 + tau) = log(1 + e^3)
    3.0486
    """

    distance = "squared_euclidean"

    def __init__(self, tau: float = 2.0, beta: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.tau = check_number("tau", tau, low=0.0, strict=True)
        self.beta = check_number("beta", beta, low=0.0, strict=True)
        self.reduction = F.check_reduction(reduction)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        dist = pairwise(x, ref_x, self.distance)
        if tuples is None:
            pos, neg = self.masks(x, labels, tuples, ref_x, ref_labels)
            return F.masked_ddml_loss(dist, pos, neg, self.tau, self.beta, self.reduction)
        a1, p, a2, n = as_pairs(tuples)
        return F.ddml_loss(dist[a1, p], dist[a2, n], self.tau, self.beta, self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, beta={self.beta}, reduction={self.reduction!r}"


@LOSSES.register("multi-similarity")
class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss (Wang, Han, Huang, Dong, Scott, CVPR 2019), for each anchor ``i``::

        L_i = 1/alpha log(1 + sum_{k in P_i} exp(-alpha (S_ik - lambda)))
            + 1/beta  log(1 + sum_{k in N_i} exp( beta (S_ik - lambda)))

    ``lambda = base``; ``S`` is the cosine similarity (``distance="cosine"``, ``S = 1 - D``) or the
    raw dot product (``distance="dot"``; equal to cosine for L2-normalised embeddings). The default
    ``reduction="mean"`` averages ``L_i`` over all ``B`` anchors, an anchor without pairs counting
    as 0, as pytorch-metric-learning's ``MultiSimilarityLoss`` (``MeanReducer``) does;
    ``mean_nonzero`` averages over anchors with a pair. With given tuples, only their pairs enter
    ``P_i`` and ``N_i``, each pair once however often it is given (pytorch-metric-learning's
    matrix form). Unlike pytorch-metric-learning, one positive and one negative pair are enough for
    a non-zero loss (it returns 0 when every index tensor has at most one entry).

    Args:
        alpha: weight of the positive pairs (> 0).
        beta: weight of the negative pairs (> 0).
        base: the similarity offset ``lambda``.
        distance: ``cosine`` or ``dot``.
        reduction: ``mean``, ``mean_nonzero`` or ``sum`` (over anchors).

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("multi-similarity", alpha=2.0, beta=50.0, base=0.5)
    >>> emb = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    >>> bool(loss(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) > 0)
    True
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, distance: str = "cosine",
                 reduction: str = "mean"):
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=0.0, strict=True)
        self.beta = check_number("beta", beta, low=0.0, strict=True)
        self.base = check_number("base", base)
        self.distance = check_loss_distance("MultiSimilarityLoss", distance, ("cosine", "dot"))
        self.reduction = F.check_reduction(reduction)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        if self.distance == "cosine":  # S = cos directly (pairwise gives the distance 1 - cos)
            sim = cosine_similarity(x, ref_x)
        else:
            sim = pairwise(x, ref_x, self.distance)
        pos, neg = self.masks(x, labels, tuples, ref_x, ref_labels)
        if tuples is not None:
            both = torch.logical_and(pos, neg)
            if both.numel() and bool(both.view(torch.uint8).amax()):  # (faster than both.any())
                i, j = both.nonzero()[0].tolist()
                raise ValueError(f"tuples: pair ({i}, {j}) is given both as a positive and as a negative pair")
        return F.multi_similarity_loss(sim, pos, neg, self.alpha, self.beta, self.base, self.reduction)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, base={self.base}, distance={self.distance!r}, "
                f"reduction={self.reduction!r}")
