"""Granularity-aware losses: SGML (soft binomial deviance on graded similarities, plus an optional
attribute head) and the IE (include and exclude) centre loss.

Both are called ``loss(embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None)``
(DESIGN.md). Learnable parameters (SGML's attribute classifier, IE's centres) are
``nn.Parameter`` s of the module, so the trainer puts them in their own optimizer group at
``optimizer.loss_lr``. The math is in :mod:`deepmetric.functional.granularity`.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from deepmetric._checks import check_int, check_number
from deepmetric.distances import cosine_similarity, pairwise
from deepmetric.functional import granularity as F
from deepmetric.functional.hierarchical import check_reduction
from deepmetric.labels import is_multilabel, num_levels
from deepmetric.losses.base import LOSSES, MetricLoss, check_loss_distance, tuple_masks
from deepmetric.losses.proxy import ProxyLoss


def _check_attributes(num_attributes) -> tuple[int, ...] | None:
    """``num_attributes`` as a tuple of class counts (``None`` stays ``None``)."""
    if num_attributes is None:
        return None
    if isinstance(num_attributes, numbers.Integral):  # one attribute level (bools are refused below)
        num_attributes = [num_attributes]
    if isinstance(num_attributes, (str, bytes)) or not isinstance(num_attributes, Sequence) or not num_attributes:
        raise ValueError(f"num_attributes: expected None, an integer >= 1 or a non-empty list of them, "
                         f"got {num_attributes!r}")
    return tuple(check_int(n, f"num_attributes[{i}]", 1) for i, n in enumerate(num_attributes))


@LOSSES.register("sgml")
class SGMLLoss(MetricLoss):
    """Semantic granularity metric learning (Manandhar, Bastan, Yap, "Semantic Granularity Metric
    Learning for Visual Search", J. Visual Communication and Image Representation 2020)::

        L = L_sbd + w_attr L_attr

        L_sbd = 1/P sum_{i != j} s_ij log(1 + exp(-alpha (S_ij - beta)))
              + 1/N sum_{i != j} (1 - s_ij) log(1 + exp(alpha C (S_ij - beta)))
        P = sum_{i != j} s_ij,   N = sum_{i != j} (1 - s_ij)

    ``S_ij`` the cosine similarity of the embeddings (no normalisation inside the loss beyond the
    cosine itself, DESIGN.md), ``s_ij`` in ``[0, 1]`` the granularity similarity of the labels
    (:func:`~deepmetric.functional.granularity.granularity_similarity`: shared leading levels / L
    for hierarchical labels, equality for flat labels, Jaccard overlap for multi-label bool labels).
    This soft binomial deviance is the implemented reading of the paper: Yi et al.'s binomial
    deviance with each pair weighted by its degree of similarity instead of a hard label, each side
    normalised by its soft mass. With hard 0/1 similarities (flat labels) it equals
    :class:`~deepmetric.losses.BinomialDevianceLoss` with the same ``alpha, beta, cost`` (whose
    defaults ``2, 0.5, 25`` it shares).

    ``s_ij`` comes from the labels only: the attribute head's predictions do not weight the pairs (the
    paper describes the two tasks as linked through the granularity similarities; its equations were not
    available, so that link is not implemented). With multi-label bool labels there is no identity
    label: two items with the same attributes are full positives.

    ``L_attr`` is the multitask attribute term, on when ``num_attributes`` is given: a learnable
    linear classifier ``attribute_head`` (``nn.Linear(embedding_size, sum(num_attributes))``) on the
    embeddings of the batch. For integer labels ``num_attributes = [n_0, ..., n_{G-1}]`` gives one
    softmax cross-entropy per level ``0..G-1`` (column ``l`` of hierarchical labels, coarsest first;
    its ids must be ``0..n_l-1``), averaged over the levels; for multi-label bool ``(B, C)`` labels
    ``num_attributes = C`` gives a sigmoid binary cross-entropy over the ``C`` attributes. The paper's
    multitask network predicts attributes from a shared trunk; here the head sits on the embedding,
    so the trainer needs no change (the head trains at ``optimizer.loss_lr``).

    ``ref_embeddings`` / ``ref_labels``: the metric term compares the batch with the reference set
    (no self-pair exclusion); the attribute term uses the batch only. ``tuples`` (Pairs or Triplets
    from a miner) restrict the metric term to the pairs given, each once, positive and negative
    sides alike; their weights still come from ``s_ij`` (a miner decides which pairs enter, not
    how similar they are).

    Args:
        alpha: scale (> 0).
        beta: similarity threshold.
        cost: weight ``C`` of the negative side (> 0).
        attribute_weight: weight ``w_attr`` of the attribute term (>= 0).
        num_attributes: ``None`` (no attribute head), an integer or a list of class counts.
        embedding_size: dimension ``D`` of the embeddings; required with ``num_attributes``.
        distance: ``cosine`` (the paper's) or ``dot``.
        reduction: ``mean`` (soft-mass normalised, above) or ``sum`` (no ``1/P``, ``1/N``).

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("sgml")
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    >>> round(float(loss(emb, torch.tensor([0, 0, 1]))), 4)  # as binomial deviance on flat labels
    0.3133
    """

    distance = "cosine"

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, cost: float = 25.0, attribute_weight: float = 1.0,
                 num_attributes: int | Sequence[int] | None = None, embedding_size: int | None = None,
                 distance: str = "cosine", reduction: str = "mean"):
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=0.0, strict=True)
        self.beta = check_number("beta", beta)
        self.cost = check_number("cost", cost, low=0.0, strict=True)
        self.attribute_weight = check_number("attribute_weight", attribute_weight, low=0.0)
        self.distance = check_loss_distance("SGMLLoss", distance, ("cosine", "dot"))
        check_reduction(reduction)
        self.reduction = reduction
        self.num_attributes = _check_attributes(num_attributes)
        self.embedding_size = None if embedding_size is None else check_int(embedding_size, "embedding_size", 1)
        self.attribute_head = None
        if self.num_attributes is not None:
            if self.embedding_size is None:
                raise ValueError("embedding_size: required with num_attributes (the attribute head is "
                                 "nn.Linear(embedding_size, sum(num_attributes)))")
            self.attribute_head = nn.Linear(self.embedding_size, sum(self.num_attributes))

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        same_set = ref_labels is None
        sim = cosine_similarity(x, ref_x) if self.distance == "cosine" else pairwise(x, ref_x, "dot")
        s = F.granularity_similarity(labels, ref_labels, dtype=sim.dtype)
        if tuples is not None:
            pos, neg = tuple_masks(tuples, x.shape[0], ref_x.shape[0], x.device)
            mask = pos | neg
        elif same_set:
            mask = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        else:
            mask = None
        value = F.soft_binomial_deviance_loss(sim, s, mask, self.alpha, self.beta, self.cost, self.reduction)
        if self.attribute_head is not None:
            value = value + self.attribute_weight * self.attribute_term(x, labels)
        return value

    def attribute_term(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``L_attr`` of the batch (labels checked against ``num_attributes`` first)."""
        self._check_attribute_labels(labels)
        w = self.attribute_head.weight.to(dtype=x.dtype, device=x.device)
        b = self.attribute_head.bias.to(dtype=x.dtype, device=x.device)
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"embeddings: expected dimension embedding_size={w.shape[1]}, got {x.shape[1]}")
        return F.attribute_loss(torch.nn.functional.linear(x, w, b), labels, self.num_attributes)

    def _check_attribute_labels(self, labels: torch.Tensor) -> None:
        counts = self.num_attributes
        if is_multilabel(labels):
            if len(counts) != 1 or counts[0] != labels.shape[1]:
                raise ValueError(f"num_attributes: multi-label (B, C) labels need num_attributes=C={labels.shape[1]}, "
                                 f"got {list(counts)}")
            return
        levels = num_levels(labels)
        if len(counts) > levels:
            raise ValueError(f"num_attributes: {len(counts)} class counts given, but the labels have only {levels} "
                             f"level(s); expected at most {levels} counts (levels 0..{levels - 1}, coarsest first)")
        cols = labels.reshape(labels.shape[0], levels)
        if not cols.numel():
            return
        low, high = (t.tolist() for t in torch.aminmax(cols[:, :len(counts)], dim=0))
        for level, n in enumerate(counts):
            if low[level] < 0 or high[level] >= n:
                raise ValueError(f"labels: level {level} expected class ids in [0, {n}) for num_attributes[{level}]="
                                 f"{n}, got values in [{low[level]}, {high[level]}]")

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, cost={self.cost}, attribute_weight={self.attribute_weight}, "
                f"num_attributes={None if self.num_attributes is None else list(self.num_attributes)}, "
                f"distance={self.distance!r}, reduction={self.reduction!r}")


@LOSSES.register("ie")
class IELoss(ProxyLoss):
    """IE (include and exclude) loss, the implemented reading of Wu, Chen, Wang, Wu, "Exponential
    Discriminative Metric Embedding in Deep Learning" (Neurocomputing 2018, arXiv:1803.02504)::

        d_ik  = ||x_i - c_k||^2
        L_in  = 1/B sum_i log(1 + exp(gamma (d_{i,y_i} - 1/(K-1) sum_{k != y_i} d_ik + m)))
        L_ex  = 2/(K (K-1)) sum_{k < l} log(1 + exp(gamma (m - ||c_k - c_l||^2)))
        L     = L_in + lambda L_ex

    ``c_k`` the learnable class centres (``centers``, ``(num_classes, embedding_size)``, standard
    normal initialisation, as :class:`~deepmetric.losses.CenterLoss`), ``m`` = ``margin``,
    ``lambda`` = ``exclude_weight``. The include term pulls a sample to its centre until that
    squared distance is ``m`` below the mean squared distance to the other centres, in the
    exponential (softplus) projection; the exclude term keeps centres apart. The paper's exact
    equations were not available when this was written: this formula follows its abstract ("force
    the distance between a sample and its designated class center away from the mean distance of
    this sample to other class centers with a large margin in the exponential feature projection
    space"). The paper trains it beside softmax; combine it with a classification loss under
    ``losses:`` as for centre loss. Centres are learnt by the optimizer (``optimizer.loss_lr``).

    Labels: flat ``(B,)`` class ids, or hierarchical ``(B, L)`` of which column ``level`` is used
    (default ``-1``, the finest). Ids must be contiguous ``0..num_classes-1`` at that level (the
    trainer maps flat labels with ``contiguous_labels``); for the finest level of a hierarchy this
    means sub-class ids must be globally unique, not local to their parent. Anything else, and
    multi-label labels, is a clear error. ``tuples``, ``ref_embeddings`` and ``ref_labels`` must be
    ``None`` (the centres are the reference set).

    Args:
        num_classes: number of centres ``K`` (>= 2).
        embedding_size: dimension ``D`` of the embeddings.
        gamma: scale of the exponential projection (> 0).
        margin: ``m`` (>= 0).
        exclude_weight: ``lambda`` (>= 0).
        level: hierarchy column used as the class id (ignored for flat labels).

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("ie", num_classes=2, embedding_size=2)
    >>> with torch.no_grad():
    ...     _ = loss.centers.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
    >>> loss(loss.centers.detach()[[0, 1]], torch.tensor([0, 1])).item() < 1e-40
    True
    """

    distance = "euclidean"

    def __init__(self, num_classes: int, embedding_size: int, gamma: float = 1.0, margin: float = 1.0,
                 exclude_weight: float = 1.0, level: int = -1):
        super().__init__(check_int(num_classes, "num_classes", 2), embedding_size)
        self.gamma = check_number("gamma", gamma, low=0.0, strict=True)
        self.margin = check_number("margin", margin, low=0.0)
        self.exclude_weight = check_number("exclude_weight", exclude_weight, low=0.0)
        self.level = check_int(level, "level")
        self.centers = nn.Parameter(torch.randn(self.num_classes, self.embedding_size))

    def check_class_labels(self, labels, n: int) -> torch.Tensor:
        """Flat labels, or column ``level`` of hierarchical labels, checked by :class:`ProxyLoss`."""
        if isinstance(labels, torch.Tensor) and labels.dim() == 2 and labels.dtype != torch.bool \
                and not labels.is_floating_point() and not labels.is_complex():
            if labels.shape[0] != n:
                raise ValueError(f"labels: expected {n} rows to match the embeddings, got {labels.shape[0]}")
            levels = labels.shape[1]
            column = check_int(self.level, "level", -levels, levels - 1, f" for {levels}-level labels") % levels
            classes = torch.unique(labels[:, :column + 1], dim=0)  # (prefix, id) pairs of the batch
            ids, counts = torch.unique(classes[:, -1], return_counts=True)
            if bool((counts > 1).any()):  # one centre would serve classes of several parents
                raise ValueError(f"labels: class ids {ids[counts > 1][:5].tolist()} of level {column} recur under "
                                 "different parents; the IE loss needs ids unique across the hierarchy at its level "
                                 "(number them over the whole data set, as the trainer does with "
                                 "deepmetric.labels.level_ids)")
            labels = labels[:, column]
        elif isinstance(labels, torch.Tensor) and labels.dtype == torch.bool:
            raise TypeError("labels: the IE loss needs class ids (flat or hierarchical int64), got multi-label bool "
                            "labels")
        return super().check_class_labels(labels, n)

    def compute(self, x, labels):
        return F.ie_loss(x, self.cast(self.centers, x), labels, self.gamma, self.margin, self.exclude_weight)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, gamma={self.gamma}, margin={self.margin}, "
                f"exclude_weight={self.exclude_weight}, level={self.level}")
