"""Pair losses: contrastive, DDML, multi-similarity, binomial deviance, lifted structure (original
and generalized), margin, circle, NT-Xent, supervised contrastive, FastAP and histogram.

Each is called ``loss(embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None)``.
With ``tuples=None`` every positive pair (same label, ``i != j`` within the batch) and every negative
pair enters. Given :class:`~deepmetric.tuples.Triplets` are used as the pairs ``(a, p)`` and
``(a, n)``. The math is in :mod:`deepmetric.functional.losses`.
"""
from __future__ import annotations

import math

import torch

from deepmetric._checks import check_int, check_number
from deepmetric.distances import cosine_similarity, pairwise
from deepmetric.functional import losses as F
from deepmetric.losses.base import LOSSES, MetricLoss, as_pairs, check_loss_distance
from deepmetric.tuples import Triplets


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


def _similarity(x, ref_x, distance):
    """``(B, R)`` similarity: cosine (computed directly) or the raw dot product."""
    return cosine_similarity(x, ref_x) if distance == "cosine" else pairwise(x, ref_x, "dot")


def _check_disjoint(pos, neg):
    both = torch.logical_and(pos, neg)
    if both.numel() and bool(both.view(torch.uint8).amax()):
        i, j = both.nonzero()[0].tolist()
        raise ValueError(f"tuples: pair ({i}, {j}) is given both as a positive and as a negative pair")


class _MaskedPairLoss(MetricLoss):
    """Shared ``compute``: the ``(B, R)`` matrix and masks (all valid pairs, or the pairs of the
    given tuples, each once) handed to ``self._loss(matrix, pos, neg, same_set)``."""

    similarity = False

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        mat = _similarity(x, ref_x, self.distance) if self.similarity else pairwise(x, ref_x, self.distance)
        pos, neg = self.masks(x, labels, tuples, ref_x, ref_labels)
        if tuples is not None:
            _check_disjoint(pos, neg)
        return self._loss(mat, pos, neg, ref_labels is None)


@LOSSES.register("multi-similarity")
class MultiSimilarityLoss(_MaskedPairLoss):
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

    similarity = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, distance: str = "cosine",
                 reduction: str = "mean"):
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=0.0, strict=True)
        self.beta = check_number("beta", beta, low=0.0, strict=True)
        self.base = check_number("base", base)
        self.distance = check_loss_distance("MultiSimilarityLoss", distance, ("cosine", "dot"))
        self.reduction = F.check_reduction(reduction)

    def _loss(self, sim, pos, neg, same_set):
        return F.multi_similarity_loss(sim, pos, neg, self.alpha, self.beta, self.base, self.reduction)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, base={self.base}, distance={self.distance!r}, "
                f"reduction={self.reduction!r}")


# ----------------------------------------------------------------------------------------------
# Pair-based losses on the whole (B, R) matrix (issue 4): binomial deviance, lifted structure,
# margin, circle, NT-Xent, SupCon, FastAP, histogram.
# ----------------------------------------------------------------------------------------------


@LOSSES.register("binomial-deviance")
class BinomialDevianceLoss(_MaskedPairLoss):
    """Binomial deviance loss (Yi, Lei, Liao, Li, ICPR 2014, "Deep Metric Learning for Person
    Re-identification")::

        L = sum_{i,j} W_ij log(1 + exp(-alpha (S_ij - beta) M_ij))

    ``S`` the cosine similarity, ``M_ij = 1`` for a positive pair and ``-C`` for a negative pair,
    ``W_ij = 1 / n_pos`` on positive and ``1 / n_neg`` on negative pairs (``reduction="mean"``: each
    side averaged over its pairs, the two added). The defaults ``alpha = 2, beta = 0.5, C = 25``
    are those of Ustinova and Lempitsky's comparison (NeurIPS 2016). pytorch-metric-learning has no
    binomial deviance loss. Given tuples select the pairs (each once).

    Args:
        alpha: scale (> 0).
        beta: similarity threshold.
        cost: weight ``C`` of the negative pairs (> 0).
        distance: ``cosine`` or ``dot``.
        reduction: ``mean`` (per side), ``mean_nonzero`` or ``sum``.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("binomial-deviance")
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    >>> round(float(loss(emb, torch.tensor([0, 0, 1]))), 4)  # log(1+e^-1) + log(1+e^-75)
    0.3133
    """

    similarity = True

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, cost: float = 25.0, distance: str = "cosine",
                 reduction: str = "mean"):
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=0.0, strict=True)
        self.beta = check_number("beta", beta)
        self.cost = check_number("cost", cost, low=0.0, strict=True)
        self.distance = check_loss_distance("BinomialDevianceLoss", distance, ("cosine", "dot"))
        self.reduction = F.check_reduction(reduction)

    def _loss(self, sim, pos, neg, same_set):
        return F.binomial_deviance_loss(sim, pos, neg, self.alpha, self.beta, self.cost, self.reduction)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, cost={self.cost}, distance={self.distance!r}, "
                f"reduction={self.reduction!r}")


@LOSSES.register("lifted-structure")
class LiftedStructureLoss(_MaskedPairLoss):
    """Lifted structured loss (Oh Song, Xiang, Jegelka, Savarese, CVPR 2016, "Deep Metric Learning
    via Lifted Structured Feature Embedding"), eq. (4)::

        J_ij = log( sum_{(i,k) in N} exp(alpha - D_ik) + sum_{(j,l) in N} exp(alpha - D_jl) ) + D_ij - m_pos
        L    = 1 / (2 |P|) sum_{(i,j) in P} [J_ij]_+^2

    ``alpha = neg_margin``, ``m_pos = pos_margin``. Equal to pytorch-metric-learning's
    ``LiftedStructureLoss(neg_margin, pos_margin)`` (``MeanReducer``), but computed from one masked
    logsumexp per row of the ``(B, R)`` distance matrix instead of a (positive pairs x negative
    pairs) tensor: ``O(B R)`` memory. Intended differences: a positive pair with no negative at all
    costs 0 (the paper's ``log 0 = -inf``; pytorch-metric-learning takes that log as 0); given
    tuples count each pair once; with a reference set the negatives of the reference item ``j`` are
    the batch items of another label (pytorch-metric-learning uses the batch row with index ``j``).

    Args:
        neg_margin: ``alpha``, the margin of the negatives.
        pos_margin: subtracted from ``D_ij``.
        distance: ``euclidean``, ``squared_euclidean`` or ``cosine``.
        reduction: ``mean`` (over all positive pairs), ``mean_nonzero`` or ``sum``.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("lifted-structure", neg_margin=1.0)
    >>> float(loss(torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]]), torch.tensor([0, 0, 1])))
    0.0
    """

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, distance: str = "euclidean",
                 reduction: str = "mean"):
        super().__init__()
        self.neg_margin = check_number("neg_margin", neg_margin)
        self.pos_margin = check_number("pos_margin", pos_margin)
        self.distance = check_loss_distance("LiftedStructureLoss", distance,
                                            ("euclidean", "squared_euclidean", "cosine"))
        self.reduction = F.check_reduction(reduction)

    def _loss(self, dist, pos, neg, same_set):
        return F.lifted_structure_loss(dist, pos, neg, self.neg_margin, self.pos_margin, same_set, self.reduction)

    def extra_repr(self) -> str:
        return (f"neg_margin={self.neg_margin}, pos_margin={self.pos_margin}, distance={self.distance!r}, "
                f"reduction={self.reduction!r}")


@LOSSES.register("generalized-lifted-structure")
class GeneralizedLiftedStructureLoss(_MaskedPairLoss):
    """Generalized lifted structure loss (Hermans, Beyer, Leibe 2017, "In Defense of the Triplet
    Loss for Person Re-Identification", section 2), for each anchor ``a``::

        L_a = [ log sum_{p in P(a)} exp(D_ap - m_pos) + log sum_{n in N(a)} exp(m_neg - D_an) ]_+

    Equal to pytorch-metric-learning's ``GeneralizedLiftedStructureLoss(neg_margin, pos_margin)``
    (mean over all anchors) when every anchor has a positive and a negative; an anchor missing one
    of them costs 0 here (a log of an empty sum is ``-inf``), where pytorch-metric-learning takes
    that log as 0.

    Args:
        neg_margin, pos_margin: the margins ``m_neg`` and ``m_pos``.
        distance: ``euclidean``, ``squared_euclidean`` or ``cosine``.
        reduction: ``mean`` (over all anchors), ``mean_nonzero`` or ``sum``.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("generalized-lifted-structure")
    >>> float(loss(torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [5.0, 0.0]]), torch.tensor([0, 0, 1, 1])))
    0.0
    """

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, distance: str = "euclidean",
                 reduction: str = "mean"):
        super().__init__()
        self.neg_margin = check_number("neg_margin", neg_margin)
        self.pos_margin = check_number("pos_margin", pos_margin)
        self.distance = check_loss_distance("GeneralizedLiftedStructureLoss", distance,
                                            ("euclidean", "squared_euclidean", "cosine"))
        self.reduction = F.check_reduction(reduction)

    def _loss(self, dist, pos, neg, same_set):
        return F.generalized_lifted_structure_loss(dist, pos, neg, self.neg_margin, self.pos_margin, self.reduction)

    def extra_repr(self) -> str:
        return (f"neg_margin={self.neg_margin}, pos_margin={self.pos_margin}, distance={self.distance!r}, "
                f"reduction={self.reduction!r}")


@LOSSES.register("margin")
class MarginLoss(MetricLoss):
    """Margin loss (Wu, Manmatha, Smola, Krähenbühl, ICCV 2017, "Sampling Matters in Deep Embedding
    Learning"), eq. (3)-(4)::

        l(i, j) = [alpha + y_ij (D_ij - beta(i))]_+,      y_ij = +1 for positives, -1 for negatives

    over the pairs of the triplets, averaged over the non-zero terms, plus ``nu * beta`` when
    ``beta`` is learned. ``beta`` is one number or, with ``num_classes``, one per class (of the
    anchor); with ``learn_beta`` it is an ``nn.Parameter`` of this module (the trainer puts it in
    the loss's own optimizer group). Equal to pytorch-metric-learning's
    ``MarginLoss(margin, nu, beta, triplets_per_anchor="all", learn_beta, num_classes)``: all
    triplets (``tuples=None``), given triplets, or the triplets formed by given pairs sharing an
    anchor, all weighted per triplet but computed on the ``(B, R)`` matrix without enumerating
    triplets.

    Args:
        margin: ``alpha`` (>= 0).
        beta: initial boundary ``beta``.
        nu: weight of the ``beta`` regulariser (>= 0; used when ``learn_beta``).
        learn_beta: make ``beta`` a learnable parameter.
        num_classes: one ``beta`` per class (labels must be flat, in ``[0, num_classes)``).
        distance: ``euclidean``, ``squared_euclidean`` or ``cosine``.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("margin", margin=0.2, beta=1.2, learn_beta=True)
    >>> [name for name, _ in loss.named_parameters()]
    ['beta']
    """

    def __init__(self, margin: float = 0.2, beta: float = 1.2, nu: float = 0.0, learn_beta: bool = False,
                 num_classes: int | None = None, distance: str = "euclidean"):
        super().__init__()
        self.margin = check_number("margin", margin, low=0.0)
        check_number("beta", beta)
        self.nu = check_number("nu", nu, low=0.0)
        if not isinstance(learn_beta, bool):
            raise ValueError(f"learn_beta: expected True or False, got {learn_beta!r}")
        self.learn_beta = learn_beta
        if num_classes is not None:
            num_classes = check_int(num_classes, "num_classes", 1)
        self.num_classes = num_classes
        self.distance = check_loss_distance("MarginLoss", distance, ("euclidean", "squared_euclidean", "cosine"))
        init = torch.full((num_classes,) if num_classes else (), float(beta))
        if learn_beta:
            self.beta = torch.nn.Parameter(init)
        else:
            self.register_buffer("beta", init)

    def _weights(self, x, labels, tuples, ref_x, ref_labels):
        n, n_ref = x.shape[0], ref_x.shape[0]
        if tuples is None:
            pos, neg = self.masks(x, labels, tuples, ref_x, ref_labels)
            pos_w = pos * neg.sum(1, keepdim=True).to(x.dtype)
            neg_w = neg * pos.sum(1, keepdim=True).to(x.dtype)
            return pos_w, neg_w
        pos_w = x.new_zeros(n * n_ref)
        neg_w = x.new_zeros(n * n_ref)
        if isinstance(tuples, Triplets):
            ones = x.new_ones(tuples.a.numel())
            pos_w.index_add_(0, tuples.a * n_ref + tuples.p, ones)
            neg_w.index_add_(0, tuples.a * n_ref + tuples.n, ones)
        else:
            a1, p, a2, neg = as_pairs(tuples)
            n_pos_of = torch.bincount(a1, minlength=n).to(x.dtype)  # given positive pairs per anchor
            n_neg_of = torch.bincount(a2, minlength=n).to(x.dtype)
            pos_w.index_add_(0, a1 * n_ref + p, n_neg_of[a1])
            neg_w.index_add_(0, a2 * n_ref + neg, n_pos_of[a2])
        return pos_w.view(n, n_ref), neg_w.view(n, n_ref)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        dist = pairwise(x, ref_x, self.distance)
        beta = self.beta.to(x.dtype)
        if self.num_classes:
            if labels.dim() != 1:
                raise ValueError(f"labels: MarginLoss with num_classes needs flat (B,) labels, got shape "
                                 f"{tuple(labels.shape)}")
            low, high = (int(v) for v in torch.aminmax(labels))
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"labels: expected class ids in [0, {self.num_classes}) for num_classes="
                                 f"{self.num_classes}, got values in [{low}, {high}]")
            beta = beta[labels]
        pos_w, neg_w = self._weights(x, labels, tuples, ref_x, ref_labels)
        nu = self.nu if self.learn_beta else 0.0
        return F.margin_loss(dist, pos_w, neg_w, beta, self.margin, nu)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, nu={self.nu}, learn_beta={self.learn_beta}, num_classes={self.num_classes}, "
                f"distance={self.distance!r}")


@LOSSES.register("circle")
class CircleLoss(_MaskedPairLoss):
    """Circle loss (Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei, CVPR 2020, "Circle Loss: A Unified
    Perspective of Pair Similarity Optimization"), eq. (6)/(8), for each anchor::

        L = log[1 + sum_j exp(gamma a_n^j (s_n^j - Delta_n)) sum_i exp(-gamma a_p^i (s_p^i - Delta_p))]
        a_p = [1 + m - s_p]_+,  a_n = [s_n + m]_+  (not differentiated),  Delta_p = 1 - m,  Delta_n = m

    ``s`` the cosine similarity. Equal to pytorch-metric-learning's ``CircleLoss(m, gamma)``
    (``AvgNonZeroReducer`` over anchors: ``reduction="mean_nonzero"``).

    Args:
        m: the relaxation margin (>= 0).
        gamma: the scale (> 0).
        distance: ``cosine`` or ``dot``.
        reduction: ``mean_nonzero``, ``mean`` or ``sum`` (over anchors).

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("circle", m=0.25, gamma=256)
    >>> bool(loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) >= 0)
    True
    """

    similarity = True

    def __init__(self, m: float = 0.4, gamma: float = 80.0, distance: str = "cosine",
                 reduction: str = "mean_nonzero"):
        super().__init__()
        self.m = check_number("m", m, low=0.0)
        self.gamma = check_number("gamma", gamma, low=0.0, strict=True)
        self.distance = check_loss_distance("CircleLoss", distance, ("cosine", "dot"))
        self.reduction = F.check_reduction(reduction)

    def _loss(self, sim, pos, neg, same_set):
        return F.circle_loss(sim, pos, neg, self.m, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"m={self.m}, gamma={self.gamma}, distance={self.distance!r}, reduction={self.reduction!r}"


class _TemperatureLoss(_MaskedPairLoss):
    """Softmax losses over similarities divided by a temperature (NT-Xent, SupCon)."""

    similarity = True

    def __init__(self, temperature: float, distance: str, reduction: str):
        super().__init__()
        self.temperature = check_number("temperature", temperature, low=0.0, strict=True)
        self.distance = check_loss_distance(type(self).__name__, distance, ("cosine", "dot"))
        self.reduction = F.check_reduction(reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, distance={self.distance!r}, reduction={self.reduction!r}"


@LOSSES.register("info-nce")
@LOSSES.register("nt-xent")
class NTXentLoss(_TemperatureLoss):
    """NT-Xent / InfoNCE loss (Chen, Kornblith, Norouzi, Hinton, ICML 2020, "A Simple Framework for
    Contrastive Learning of Visual Representations", eq. (1)), for every positive pair ``(i, j)``::

        l(i, j) = -log( exp(s_ij / tau) / (exp(s_ij / tau) + sum_{k in N(i)} exp(s_ik / tau)) ),   s_ij = sim(z_i, z_j)

    averaged over the positive pairs. For SimCLR, label the two views of image ``k`` with ``k``.
    Registered as ``nt-xent`` and ``info-nce`` (van den Oord et al. 2018's name for the same loss).
    Equal to pytorch-metric-learning's ``NTXentLoss(temperature)`` (cosine similarity), computed with
    one logsumexp per row of the ``(B, R)`` matrix instead of its (positive pairs x negative pairs)
    tensor, so ``B = 1200`` fits in a few ``(B, B)`` matrices. Given tuples count each pair once.

    Args:
        temperature: ``tau`` (> 0).
        distance: ``cosine`` or ``dot``.
        reduction: ``mean`` (over positive pairs), ``mean_nonzero`` or ``sum``.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("nt-xent", temperature=0.1)
    >>> bool(loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) > 0)
    True
    """

    def __init__(self, temperature: float = 0.07, distance: str = "cosine", reduction: str = "mean"):
        super().__init__(temperature, distance, reduction)

    def _loss(self, sim, pos, neg, same_set):
        return F.nt_xent_loss(sim, pos, neg, self.temperature, self.reduction)


@LOSSES.register("supervised-contrastive")
class SupConLoss(_TemperatureLoss):
    """Supervised contrastive loss (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu,
    Krishnan, NeurIPS 2020, "Supervised Contrastive Learning"), ``L^sup_out``, eq. (2)::

        L = sum_i -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) )

    ``A(i)`` every other item (positives and negatives), ``z_i . z_p`` the cosine similarity.
    Equal to pytorch-metric-learning's ``SupConLoss(temperature)`` (``AvgNonZeroReducer`` over
    anchors: ``reduction="mean_nonzero"``), except on a batch without negative pairs (one class), where
    pml returns 0 and this the paper's value, ``log(|A(i)|)`` and above; ``O(B R)`` memory.

    Args:
        temperature: ``tau`` (> 0).
        distance: ``cosine`` or ``dot``.
        reduction: ``mean_nonzero``, ``mean`` or ``sum`` (over anchors).

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("supervised-contrastive", temperature=0.1)
    >>> bool(loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) > 0)
    True
    """

    def __init__(self, temperature: float = 0.1, distance: str = "cosine", reduction: str = "mean_nonzero"):
        super().__init__(temperature, distance, reduction)

    def _loss(self, sim, pos, neg, same_set):
        return F.supervised_contrastive_loss(sim, pos, neg, self.temperature, self.reduction)


#: how far beyond FastAP's bound an embedding's norm may be (bfloat16 rounds a unit vector's norm by ~4e-3)
NORM_TOLERANCE = 1e-2


@LOSSES.register("fast-ap")
class FastAPLoss(_MaskedPairLoss):
    """FastAP (Cakir, He, Xia, Kulis, Sclaroff, CVPR 2019, "Deep Metric Learning to Rank"),
    eq. (9), for each anchor ``q`` ranking the rest of the batch (or the reference set)::

        FastAP_q = 1/N_q^+ sum_{j=1}^{L} h_j^+ H_j^+ / H_j,     L = mean_q (1 - FastAP_q)

    ``h^+_j`` / ``h_j`` the soft (triangular kernel) counts of positives / all items at squared
    Euclidean distance ``z_j`` (``L = num_bins + 1`` nodes over ``[0, max_distance]``; 4 for
    L2-normalised embeddings, whose normalisation is the model head's job; norms beyond
    ``max(1, sqrt(max_distance) / 2)`` are an error, as most distances could fall beyond the
    histogram, where they are dropped), ``H`` the cumulative counts. Equal to
    pytorch-metric-learning's ``FastAPLoss(num_bins)`` on L2-normalised embeddings, but ``O(B R)``
    (each distance scattered into its two nodes) and a reference set is supported. FastAP ranks whole
    lists: ``tuples`` are not accepted.

    Args:
        num_bins: number of histogram bins (>= 1).
        max_distance: the largest squared distance (> 0).
        reduction: ``mean`` (over anchors with a positive), ``mean_nonzero`` or ``sum``.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("fast-ap", num_bins=10)
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    >>> float(loss(emb, torch.tensor([0, 0, 1, 1])))
    0.0
    """

    distance = "squared_euclidean"

    def __init__(self, num_bins: int = 10, max_distance: float = 4.0, reduction: str = "mean"):
        super().__init__()
        self.num_bins = check_int(num_bins, "num_bins", 1)
        self.max_distance = check_number("max_distance", max_distance, low=0.0, strict=True)
        self.reduction = F.check_reduction(reduction)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        if tuples is not None:
            raise ValueError("tuples: FastAPLoss ranks the whole reference set; it takes no tuples (got "
                             f"{type(tuples).__name__})")
        # unit vectors (FastAP's domain), or norms small enough for every distance to fit the histogram
        bound = max(1.0, math.sqrt(self.max_distance) / 2)
        for name, v in (("embeddings", x), ("ref_embeddings", ref_x)):
            largest = float(v.detach().norm(dim=1).max()) if v.shape[0] else 0.0
            if largest > bound * (1 + NORM_TOLERANCE):
                raise ValueError(f"{name}: FastAP expects unit vectors, or norms up to sqrt(max_distance) / 2 "
                                 f"so that squared distances fit its histogram [0, {self.max_distance:g}]; got a "
                                 f"norm of {largest:.3g}. L2-normalise the embeddings in the model head "
                                 f"(pytorch-metric-learning normalises inside its default distance)")
        return super().compute(x, labels, tuples, ref_x, ref_labels)

    def _loss(self, dist, pos, neg, same_set):
        return F.fast_ap_loss(dist, pos, neg, self.num_bins, self.max_distance, self.reduction)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, max_distance={self.max_distance}, reduction={self.reduction!r}"


@LOSSES.register("histogram")
class HistogramLoss(_MaskedPairLoss):
    """Histogram loss (Ustinova, Lempitsky, NeurIPS 2016, "Learning Deep Embeddings with Histogram
    Loss"), eq. (4)::

        L = sum_{r=1}^{R} ( h^-_r sum_{q=1}^{r} h^+_q )

    the probability that a random negative pair is more similar than a random positive pair,
    estimated from the histograms ``h^+`` / ``h^-`` of the cosine similarities of positive /
    negative pairs over ``num_bins + 1`` nodes spaced ``Delta = 2 / num_bins`` on ``[-1, 1]``
    (linear interpolation between nodes). Equal to pytorch-metric-learning's
    ``HistogramLoss(n_bins=num_bins)`` when every item has a positive; all pairs of the masks enter
    (pytorch-metric-learning keeps only pairs of its all-triplets list), and given tuples select
    the pairs (each once). ``O(B R)``.

    Args:
        num_bins: number of bins (>= 1).

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("histogram", num_bins=50)
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    >>> float(loss(emb, torch.tensor([0, 0, 1, 1])))
    0.0
    """

    similarity = True
    distance = "cosine"

    def __init__(self, num_bins: int = 100):
        super().__init__()
        self.num_bins = check_int(num_bins, "num_bins", 1)

    def _loss(self, sim, pos, neg, same_set):
        return F.histogram_loss(sim, pos, neg, self.num_bins)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}"
