"""Losses as pure tensor functions: the math behind :mod:`deepmetric.losses`.

Every function takes a distance (or similarity) matrix, or the distances of given pairs or
triplets, plus masks or hyper-parameters, and returns a scalar. Nothing here looks at labels,
embeddings or miners: the modules in :mod:`deepmetric.losses` build the matrix and the masks.

Reduction is done in one place, :func:`reduce_sum`, for every loss:

* ``"mean_nonzero"``: sum of the terms divided by the number of terms that are > 0 (the default
  of pytorch-metric-learning's ``AvgNonZeroReducer``), 0 when no term is > 0;
* ``"mean"``: sum divided by the number of terms, 0 when there are none;
* ``"sum"``: the plain sum.

With no valid term every function returns a zero that is still connected to the graph of its input
(a sum over an empty selection of it), so ``backward()`` works and gives zero gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean_nonzero", "mean", "sum")

# Largest number of elements of one (anchors, positives, reference) block of the soft-margin
# all-triplets loss.
MAX_TRIPLET_BLOCK = 2 ** 22


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise naming the known ones."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


def reduce_sum(total: torch.Tensor, n_nonzero: torch.Tensor, n_terms: torch.Tensor,
               reduction: str) -> torch.Tensor:
    """Reduce a sum of ``n_terms`` non-negative loss terms, ``n_nonzero`` of them > 0.

    ``mean_nonzero``: ``total / max(n_nonzero, 1)``; ``mean``: ``total / max(n_terms, 1)``;
    ``sum``: ``total``. The counts are integer tensors (no host synchronisation).
    """
    check_reduction(reduction)
    if reduction == "sum":
        return total
    count = n_nonzero if reduction == "mean_nonzero" else n_terms
    return total / count.clamp_min(1).to(total.dtype)


def reduce_losses(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a tensor of non-negative per-term losses with :func:`reduce_sum`."""
    n_terms = torch.tensor(losses.numel(), device=losses.device)
    return reduce_sum(losses.sum(), (losses > 0).sum(), n_terms, reduction)


def contrastive_loss(pos_dist: torch.Tensor, neg_dist: torch.Tensor, pos_margin: float = 0.0,
                     neg_margin: float = 1.0, reduction: str = "mean_nonzero") -> torch.Tensor:
    """Contrastive loss (Hadsell, Chopra, LeCun, CVPR 2006, "Dimensionality Reduction by Learning
    an Invariant Mapping"), with a margin for positives as in pytorch-metric-learning::

        L = reduce_{(i,j) in P} [D_ij - m_pos]_+  +  reduce_{(i,j) in N} [m_neg - D_ij]_+

    ``pos_dist`` and ``neg_dist`` are 1-D tensors of the distances ``D_ij`` of positive and
    negative pairs. The two parts are reduced *separately* and summed (pytorch-metric-learning
    reduces ``pos_loss`` and ``neg_loss`` each with ``AvgNonZeroReducer`` and adds them).
    """
    pos = F.relu(pos_dist - pos_margin)
    neg = F.relu(neg_margin - neg_dist)
    return reduce_losses(pos, reduction) + reduce_losses(neg, reduction)


def ddml_loss(pos_sqdist: torch.Tensor, neg_sqdist: torch.Tensor, tau: float = 2.0, beta: float = 1.0,
              reduction: str = "mean") -> torch.Tensor:
    """Discriminative deep metric learning loss (Hu, Lu, Tan, CVPR 2014, "Discriminative Deep Metric
    Learning for Face Verification in the Wild"), eq. (5) without the weight penalty::

        L = reduce_{i != j} g(1 - l_ij (tau - d^2(x_i, x_j))),   g(z) = log(1 + exp(beta z)) / beta

    with ``l_ij = +1`` for positive pairs (``pos_sqdist``) and ``-1`` for negative pairs
    (``neg_sqdist``), both 1-D tensors of *squared* Euclidean distances. It asks
    ``d^2 < tau - 1`` for positives and ``d^2 > tau + 1`` for negatives. ``g`` is computed as
    ``softplus(z, beta)``, stable for large ``beta z``. The paper's constant factor 1/2 is dropped.
    """
    z = torch.cat([1.0 - (tau - pos_sqdist), 1.0 + (tau - neg_sqdist)])
    return reduce_losses(F.softplus(z, beta=beta), reduction)


def triplet_margin_loss(ap_dist: torch.Tensor, an_dist: torch.Tensor, margin: float = 0.2,
                        soft_margin: bool = False, reduction: str = "mean_nonzero") -> torch.Tensor:
    """Triplet margin loss over given triplets (Schroff, Kalenichenko, Philbin, CVPR 2015, FaceNet)::

        L = reduce_{(a,p,n)} [D_ap - D_an + margin]_+

    or, with ``soft_margin``, the soft-margin form of Hermans, Beyer, Leibe 2017 ("In Defense of the
    Triplet Loss for Person Re-Identification"), which has no margin parameter::

        L = reduce_{(a,p,n)} log(1 + exp(D_ap - D_an))

    ``ap_dist`` and ``an_dist`` are 1-D tensors, one entry per triplet.
    """
    x = ap_dist - an_dist
    losses = F.softplus(x) if soft_margin else F.relu(x + margin)
    return reduce_losses(losses, reduction)


def _hinge_sum_all_triplets(dist, pos_mask, neg_mask, margin):
    """Sum and number of non-zero terms of ``[D_ap - D_an + margin]_+`` over all valid triplets.

    For an anchor ``a`` and a positive ``p`` let ``t = D_ap + margin`` and ``k = #{n : D_an < t}``;
    then ``sum_n [t - D_an]_+ = k t - (sum of the k smallest D_an)``. One sort of each row's
    negatives, a prefix sum and a binary search give it for every ``(a, p)`` at once:
    ``O(B R log R)`` time and ``O(B R)`` memory, differentiable by autograd (the gradient is ``k``
    for ``D_ap`` and ``-1`` for each of the ``k`` closest negatives, the hinge's subgradient).
    """
    key, order = dist.detach().masked_fill(~neg_mask, float("inf")).sort(dim=1)
    neg_sorted = dist.gather(1, order).masked_fill(~neg_mask.gather(1, order), 0.0)
    prefix = F.pad(neg_sorted.cumsum(1), (1, 0))  # prefix[:, k] = sum of the k smallest D_an
    threshold = dist + margin
    k = torch.searchsorted(key, threshold.detach().contiguous()).masked_fill(~pos_mask, 0)
    total = (k.to(dist.dtype) * threshold - prefix.gather(1, k)).sum()
    return total, k.sum()


class _SoftMarginSumAllTriplets(torch.autograd.Function):
    """Sum of ``log(1 + exp(D_ap - D_an))`` over all valid triplets, in bounded memory.

    Returns ``(total, n_nonzero)``. Forward walks over blocks of anchors; each block is a
    ``(c, P, R)`` tensor (``P`` the largest number of positives of an anchor) with
    ``c * P * R <= max(max_elements, P * R)``. The gradient with respect to the distance matrix is
    accumulated block by block in the same pass and is the only thing saved for backward, so memory
    is ``O(B * R)`` plus a few blocks, never ``O(B * R * R)``::

        dL/dD_ap = sum_n sigmoid(D_ap - D_an),      dL/dD_an = -sum_p sigmoid(D_ap - D_an)
    """

    @staticmethod
    def forward(ctx, dist, pos_mask, neg_mask, max_elements):
        n_ref = dist.shape[1]
        grad = torch.zeros_like(dist)
        total = dist.new_zeros(())
        n_nonzero = torch.zeros((), dtype=torch.long, device=dist.device)
        rows = (pos_mask.any(1) & neg_mask.any(1)).nonzero().flatten()
        if rows.numel() > 0:
            n_pos = int(pos_mask[rows].sum(1).max())
            chunk = max(1, max_elements // (n_pos * n_ref))
            for start in range(0, rows.numel(), chunk):
                r = rows[start:start + chunk]
                d, pos, neg = dist[r], pos_mask[r], neg_mask[r]
                # column indices of each anchor's positives first, padded with non-positives
                p_idx = pos.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :n_pos]
                # invalid slots get D_ap = -inf or D_an = +inf, so that x = -inf and term = slope = 0
                d_ap = d.gather(1, p_idx).masked_fill(~pos.gather(1, p_idx), float("-inf"))
                d_an = d.masked_fill(~neg, float("inf"))
                x = d_ap.unsqueeze(2) - d_an.unsqueeze(1)  # (c, P, R): D_ap - D_an
                terms, slope = F.softplus(x), torch.sigmoid(x)
                total += terms.sum()
                n_nonzero += (terms > 0).sum()
                g = -slope.sum(1)
                g.scatter_add_(1, p_idx, slope.sum(2))
                grad[r] = g
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(n_nonzero)
        return total, n_nonzero

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_nonzero):
        (grad,) = ctx.saved_tensors
        return grad_total * grad, None, None, None


def all_triplets_margin_loss(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                             margin: float = 0.2, soft_margin: bool = False,
                             reduction: str = "mean_nonzero",
                             max_elements: int = MAX_TRIPLET_BLOCK) -> torch.Tensor:
    """:func:`triplet_margin_loss` over *all* triplets ``(a, p, n)`` with ``pos_mask[a, p]`` and
    ``neg_mask[a, n]``, without enumerating them.

    ``dist`` is a ``(B, R)`` matrix of distances (smaller is closer), the masks ``(B, R)`` bool.

    * Hinge: per-row sorting and prefix sums, ``O(B R log R)`` time, ``O(B R)`` memory.
    * Soft margin: blocks of anchors of at most ``max(max_elements, P * R)`` elements (``P`` the
      largest number of positives of one anchor), a few such temporaries at a time, plus a saved
      ``(B, R)`` gradient; ``O(B P R)`` time. This path supports one backward pass (no double
      backward).

    Neither path ever builds a ``(B, R, R)`` tensor.
    """
    n_terms = (pos_mask.sum(1) * neg_mask.sum(1)).sum()
    if soft_margin:
        total, n_nonzero = _SoftMarginSumAllTriplets.apply(dist, pos_mask, neg_mask, int(max_elements))
    else:
        total, n_nonzero = _hinge_sum_all_triplets(dist, pos_mask, neg_mask, float(margin))
    return reduce_sum(total, n_nonzero, n_terms, reduction)


def _log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, ``log(1 + sum_{k: mask_k} exp(x_k))``: a logsumexp with one extra zero term
    (exactly 0 for a row with no masked entry)."""
    x = x.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1), dim=1)


def multi_similarity_loss(sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                          alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                          reduction: str = "mean") -> torch.Tensor:
    """Multi-similarity loss (Wang, Han, Huang, Dong, Scott, CVPR 2019, "Multi-Similarity Loss with
    General Pair Weighting for Deep Metric Learning"), eq. (6)::

        L_i = 1/alpha log(1 + sum_{k in P_i} exp(-alpha (S_ik - lambda)))
            + 1/beta  log(1 + sum_{k in N_i} exp( beta (S_ik - lambda)))

    reduced over the ``B`` anchors (rows), ``lambda = base``. ``sim`` is a ``(B, R)`` similarity
    matrix, ``P_i`` / ``N_i`` the rows of ``pos_mask`` / ``neg_mask``. An anchor with no pair has
    ``L_i = 0`` and, with ``reduction="mean"`` (pytorch-metric-learning's ``MeanReducer``), still
    counts in the mean over all ``B`` anchors.
    """
    pos = _log1p_sum_exp(-alpha * (sim - base), pos_mask) / alpha
    neg = _log1p_sum_exp(beta * (sim - base), neg_mask) / beta
    return reduce_losses(pos + neg, reduction)
