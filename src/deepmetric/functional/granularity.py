"""Granularity-aware losses as pure tensor functions (the math behind
:mod:`deepmetric.losses.granularity`): the SGML soft binomial deviance with its attribute term, and
the IE (include and exclude) loss.

Nothing here validates labels or hyper-parameters beyond what the formulas need; the modules do.
With no valid term every function returns a zero that is still connected to the graph of its
inputs, so ``backward()`` works and gives zero gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import squared_euclidean
from deepmetric.functional.hierarchical import check_reduction
from deepmetric.labels import is_multilabel, num_levels, shared_levels


def granularity_similarity(labels: torch.Tensor, ref_labels: torch.Tensor | None = None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, R)`` degree of semantic similarity ``s_ij`` in ``[0, 1]`` between item ``i`` of the
    batch and item ``j`` of the reference set (the batch itself when ``ref_labels`` is None).

    * hierarchical ``(B, L)`` int64 labels: the fraction of shared leading levels,
      ``s_ij = shared_levels(i, j) / L`` (``L = 2``: 1 same sub-class, 0.5 same class only, 0
      otherwise; sub-class ids may recur under different parents, as in
      :func:`deepmetric.labels.shared_levels`);
    * flat ``(B,)`` labels: 1 if equal, else 0;
    * multi-label ``(B, C)`` bool labels (attributes): the Jaccard overlap
      ``|A_i & A_j| / |A_i | A_j|``, 0 when both rows are empty.

    The diagonal is not special: ``s_ii = 1`` (0 for an empty multi-label row); losses exclude
    self-pairs themselves.

    >>> import torch
    >>> granularity_similarity(torch.tensor([[0, 0], [0, 1], [1, 0]]))
    tensor([[1.0000, 0.5000, 0.0000],
            [0.5000, 1.0000, 0.0000],
            [0.0000, 0.0000, 1.0000]])
    """
    ref = labels if ref_labels is None else ref_labels
    if is_multilabel(labels):
        a, b = labels.to(dtype), ref.to(dtype)
        inter = a @ b.T
        union = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros((), dtype=dtype))
    return shared_levels(labels, ref).to(dtype) / num_levels(labels)


def soft_binomial_deviance_loss(sim: torch.Tensor, similarity: torch.Tensor, mask: torch.Tensor | None = None,
                                alpha: float = 2.0, beta: float = 0.5, cost: float = 25.0,
                                reduction: str = "mean") -> torch.Tensor:
    """Soft binomial deviance, the metric term of SGML (Manandhar, Bastan, Yap, "Semantic
    Granularity Metric Learning for Visual Search", J. Visual Communication and Image
    Representation 2020)::

        L = 1/P sum_{(i,j) in V} s_ij log(1 + exp(-alpha (S_ij - beta)))
          + 1/N sum_{(i,j) in V} (1 - s_ij) log(1 + exp(alpha C (S_ij - beta)))

        P = sum_{(i,j) in V} s_ij,      N = sum_{(i,j) in V} (1 - s_ij)

    ``S`` the ``(B, R)`` similarity matrix (cosine), ``s`` the ``(B, R)`` granularity similarity in
    ``[0, 1]`` (:func:`granularity_similarity`), ``V`` the valid pairs (``mask``; all when None),
    ``C`` = ``cost``. A side with zero mass contributes 0. This is the implemented reading of the
    paper: binomial deviance (Yi et al. 2014) with each pair weighted by its degree of similarity
    instead of a hard label, each side normalised by its soft mass as binomial deviance averages
    over its positive and its negative pairs. With ``s`` in ``{0, 1}`` it equals
    :func:`deepmetric.functional.losses.binomial_deviance_loss` (``reduction="mean"``).
    ``reduction="sum"`` drops the ``1/P`` and ``1/N`` normalisers.
    """
    check_reduction(reduction)
    s = similarity.to(sim.dtype)
    if mask is not None:
        s_pos = torch.where(mask, s, 0.0)
        s_neg = torch.where(mask, 1.0 - s, 0.0)
    else:
        s_pos, s_neg = s, 1.0 - s
    z = sim - beta
    pos = (s_pos * F.softplus(z * -alpha)).sum()
    neg = (s_neg * F.softplus(z * (alpha * cost))).sum()
    if reduction == "sum":
        return pos + neg
    p_mass, n_mass = s_pos.sum(), s_neg.sum()
    one = torch.ones((), dtype=sim.dtype, device=sim.device)
    return pos / torch.where(p_mass > 0, p_mass, one) + neg / torch.where(n_mass > 0, n_mass, one)


def attribute_loss(logits: torch.Tensor, labels: torch.Tensor, num_attributes: tuple[int, ...]) -> torch.Tensor:
    """Multitask attribute term of SGML: the mean over the predicted label groups of their
    classification losses, each averaged over the batch.

    ``logits`` is ``(B, sum(num_attributes))``, split into one block per group. Integer labels
    (``(B,)`` or ``(B, L)``): block ``l`` holds ``num_attributes[l]`` class scores for level ``l``
    (column ``l``; levels ``0..len(num_attributes)-1``, coarsest first), with softmax
    cross-entropy::

        L_attr = 1/G sum_{l<G} 1/B sum_i -log softmax(z_i^(l))[y_il]

    Multi-label ``(B, C)`` bool labels: one block of ``C`` scores and the sigmoid binary
    cross-entropy averaged over the batch and the ``C`` attributes. Labels are assumed valid here
    (the module checks them). An empty batch gives a connected zero.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0
    if is_multilabel(labels):
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    cols = labels.reshape(labels.shape[0], num_levels(labels))
    blocks = torch.split(logits, list(num_attributes), dim=1)
    total = sum(F.cross_entropy(block, cols[:, level]) for level, block in enumerate(blocks))
    return total / len(blocks)


def ie_loss(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, gamma: float = 1.0, margin: float = 1.0,
            exclude_weight: float = 1.0) -> torch.Tensor:
    """IE (include and exclude) loss, the implemented reading of Wu, Chen, Wang, Wu, "Exponential
    Discriminative Metric Embedding in Deep Learning" (Neurocomputing 2018, arXiv:1803.02504)::

        d_ik  = ||x_i - c_k||^2
        L_in  = 1/B sum_i log(1 + exp(gamma (d_{i,y_i} - 1/(K-1) sum_{k != y_i} d_ik + m)))
        L_ex  = 2/(K (K-1)) sum_{k < l} log(1 + exp(gamma (m - ||c_k - c_l||^2)))
        L     = L_in + lambda L_ex

    ``c_k`` the ``K`` learnable class centres (``centers``, ``(K, D)``, ``K >= 2``), ``y_i`` in
    ``0..K-1``, ``m`` = ``margin``, ``lambda`` = ``exclude_weight``. The include term pulls each
    sample to its centre until that distance is ``m`` below the mean of its distances to the other
    centres (the paper's "away from the mean distance ... with a large margin"), the softplus
    ``log(1 + exp(.))`` being the smooth exponential projection of that hinge; the exclude term
    keeps every pair of centres at least about ``m`` apart. Both tend to 0 when samples sit on
    their centres and centres are far apart. Squared distances use one matrix product
    (:func:`deepmetric.distances.squared_euclidean`).
    """
    k = centers.shape[0]
    if k < 2:
        raise ValueError(f"centers: the IE loss needs at least 2 classes, got {k}")
    if x.shape[0]:
        d = squared_euclidean(x, centers)
        d_y = d.gather(1, labels.unsqueeze(1)).squeeze(1)
        others = (d.sum(1) - d_y) / (k - 1)
        include = F.softplus(gamma * (d_y - others + margin)).mean()
    else:
        include = x.sum() * 0 + centers.sum() * 0
    dc = squared_euclidean(centers, centers)
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=centers.device), diagonal=1)
    exclude = F.softplus(gamma * (margin - dc[upper])).mean()
    return include + exclude_weight * exclude
