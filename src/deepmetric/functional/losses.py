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

import math

import numpy as np
import torch
import torch.nn.functional as F

REDUCTIONS = ("mean_nonzero", "mean", "sum")

# Largest number of elements of one (anchors, positives, reference) block of the soft-margin
# all-triplets loss.
MAX_TRIPLET_BLOCK = 2 ** 22

# A side of the multi-similarity loss whose mask holds under 1 / SPARSE_FRACTION of the matrix is
# computed on the list of its entries instead of the whole matrix.
SPARSE_FRACTION = 16


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


def _reduce_masked(terms: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """:func:`reduce_sum` of a ``(B, R)`` matrix of non-negative terms that is 0 outside ``mask``,
    over the ``mask.sum()`` terms inside it."""
    n_terms = mask.sum() if reduction == "mean" else None
    return reduce_sum(terms.sum(), torch.count_nonzero(terms), n_terms, reduction)


class _ContrastiveSums(torch.autograd.Function):
    """``(pos_total, pos_nonzero, neg_total, neg_nonzero)``: sums and non-zero counts of
    ``[D_ij - m_pos]_+`` over ``pos_mask`` and of ``[m_neg - D_ij]_+`` over ``neg_mask``.

    The ``(B, R)`` term matrices are built in place and turned into their slopes (``1`` where a term
    is > 0, else 0: the hinge's subgradient), which are all backward needs::

        dL/dD = g_pos * 1[pos term > 0] - g_neg * 1[neg term > 0]

    Two ``(B, R)`` temporaries in forward and one in backward, where autograd through ``where`` and
    ``relu`` allocates about a dozen. The backward is linear in the incoming gradients with
    constant slopes, so double backward works (and is 0 with respect to ``D``, as for the hinge).
    """

    @staticmethod
    def forward(ctx, dist, pos_mask, neg_mask, pos_margin, neg_margin):
        d = dist.detach()
        # (multiplying by the masks' bytes is much faster than by bool tensors or masked_fill on CPU)
        pos = (d - pos_margin).mul_(pos_mask.view(torch.uint8)).relu_()
        neg = torch.rsub(d, neg_margin).mul_(neg_mask.view(torch.uint8)).relu_()
        out = (pos.sum(), torch.count_nonzero(pos), neg.sum(), torch.count_nonzero(neg))
        ctx.save_for_backward(pos.sign_(), neg.sign_())
        ctx.mark_non_differentiable(out[1], out[3])
        return out

    @staticmethod
    def backward(ctx, grad_pos, _grad_pos_nonzero, grad_neg, _grad_neg_nonzero):
        pos_slope, neg_slope = ctx.saved_tensors
        return (pos_slope * grad_pos).addcmul_(neg_slope, grad_neg, value=-1.0), None, None, None, None


def masked_contrastive_loss(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                            pos_margin: float = 0.0, neg_margin: float = 1.0,
                            reduction: str = "mean_nonzero") -> torch.Tensor:
    """:func:`contrastive_loss` over every pair of the ``(B, R)`` distance matrix ``dist`` marked in
    the ``(B, R)`` bool masks, without gathering them::

        L = reduce_{pos_mask_ij} [D_ij - m_pos]_+  +  reduce_{neg_mask_ij} [m_neg - D_ij]_+

    Equal in value and gradient to ``contrastive_loss(dist[pos_mask], dist[neg_mask], ...)``: the
    terms are computed on the whole matrix and zeroed outside the masks (``dist`` must be finite).
    """
    check_reduction(reduction)
    pos_total, pos_nonzero, neg_total, neg_nonzero = _ContrastiveSums.apply(
        dist, pos_mask, neg_mask, float(pos_margin), float(neg_margin))
    pos_terms = neg_terms = None
    if reduction == "mean":
        pos_terms, neg_terms = pos_mask.sum(), neg_mask.sum()
    return (reduce_sum(pos_total, pos_nonzero, pos_terms, reduction)
            + reduce_sum(neg_total, neg_nonzero, neg_terms, reduction))


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


def masked_ddml_loss(sqdist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, tau: float = 2.0,
                     beta: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """:func:`ddml_loss` over every pair marked in the disjoint ``(B, R)`` bool masks of the matrix of
    squared Euclidean distances ``sqdist``, without gathering them::

        L = reduce_{pos_mask_ij or neg_mask_ij} g(1 - l_ij (tau - d^2_ij))

    Equal in value and gradient to ``ddml_loss(sqdist[pos_mask], sqdist[neg_mask], ...)``.
    """
    check_reduction(reduction)
    t = tau - sqdist
    z = torch.where(pos_mask, 1.0 - t, 1.0 + t)
    valid = pos_mask | neg_mask
    return _reduce_masked(torch.where(valid, F.softplus(z, beta=beta), 0.0), valid, reduction)


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


def scatter_add_runs_(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out.scatter_add_(0, index, values)`` for 1-D tensors, faster when ``index`` comes in runs of
    equal consecutive values (miners emit triplets grouped by positive pair): each run is summed
    first (``numpy.add.reduceat``) and added once. Scatter-adding a run element by element is slow
    on CPU, each addition waiting for the previous one to the same address. Used on CPU float32 /
    float64 tensors when runs average at least 4 elements; otherwise a plain ``scatter_add_``."""
    n = index.numel()
    if n > 1 and out.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        idx = index.numpy()
        starts = np.flatnonzero(idx[1:] != idx[:-1])
        if 4 * (starts.size + 1) <= n:
            starts = np.concatenate(([0], starts + 1))
            sums = np.add.reduceat(values.numpy(), starts)
            return out.index_add_(0, torch.from_numpy(idx[starts]), torch.from_numpy(sums))
    return out.scatter_add_(0, index, values)


class _GivenTripletsSum(torch.autograd.Function):
    """Sum of the triplet terms over given triplets, from the ``(B, R)`` distance matrix.

    Inputs: ``dist``, the flat indices ``ap = a * R + p`` and ``an = a * R + n`` of ``D_ap`` and
    ``D_an`` in ``dist`` (one entry per triplet, duplicates allowed), ``margin`` and
    ``soft_margin``. Returns ``(total, n_nonzero)``. Forward computes each term from
    ``x = D_ap - D_an`` as :func:`triplet_margin_loss` does and, in the same pass, the gradient of
    the sum with respect to the matrix, a ``(B, R)`` weight matrix built by scatter-adding each
    term's slope ``s`` (``1[x + margin > 0]`` for the hinge, ``sigmoid(x)`` for the soft margin)::

        dL/dD_ap = sum over the triplets (a, p, .) of s,      dL/dD_an = -sum over (a, ., n) of s

    This avoids autograd's gather of ``D_ap``, ``D_an`` and its scatter back: the backward is one
    multiplication. Only one backward pass is supported (no double backward).
    """

    @staticmethod
    def forward(ctx, dist, ap, an, margin, soft_margin):
        flat = dist.detach().reshape(-1)
        x = flat.index_select(0, ap).sub_(flat.index_select(0, an))  # D_ap - D_an
        if soft_margin:
            terms = F.softplus(x)
            slope = x.sigmoid_()
        else:
            terms = x.add_(margin).relu_()
        total, n_nonzero = terms.sum(), torch.count_nonzero(terms)  # terms >= 0
        if not soft_margin:
            slope = terms.sign_()  # 1 where the hinge is active, else 0 (relu'(0) = 0)
        grad = torch.zeros_like(flat)
        scatter_add_runs_(grad, ap, slope)
        grad.scatter_add_(0, an, slope.neg_())
        ctx.save_for_backward(grad.view_as(dist))
        ctx.mark_non_differentiable(n_nonzero)
        return total, n_nonzero

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_nonzero):
        (grad,) = ctx.saved_tensors
        return grad_total * grad, None, None, None, None


def given_triplets_margin_loss(dist: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor,
                               negatives: torch.Tensor, margin: float = 0.2, soft_margin: bool = False,
                               reduction: str = "mean_nonzero") -> torch.Tensor:
    """:func:`triplet_margin_loss` over given triplets ``(anchors[k], positives[k], negatives[k])``
    of the ``(B, R)`` distance matrix ``dist`` (duplicates count as often as given)::

        L = reduce_k [D(a_k, p_k) - D(a_k, n_k) + margin]_+     (or log(1 + exp(D_ap - D_an)))

    Equal in value and gradient to ``triplet_margin_loss(dist[a, p], dist[a, n], ...)``, but the
    gradient with respect to ``dist`` is accumulated densely in the forward pass (see
    :class:`_GivenTripletsSum`): O(T + B R) time and memory for T triplets, one backward pass.
    """
    check_reduction(reduction)
    n_ref = dist.shape[1]
    ap = torch.add(positives, anchors, alpha=n_ref)  # flat indices a * R + p, a * R + n
    an = torch.add(negatives, anchors, alpha=n_ref)
    total, n_nonzero = _GivenTripletsSum.apply(dist, ap, an, float(margin), bool(soft_margin))
    n_terms = torch.tensor(anchors.numel(), device=dist.device)
    return reduce_sum(total, n_nonzero, n_terms, reduction)


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


def _log1p_sum_exp_(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per row, ``log(1 + sum_k keep_k exp(x_k))`` for a 0/1 float mask ``keep`` (exactly 0 for a
    row with no kept entry). Overwrites ``x`` with the softmax weights
    ``keep_k exp(x_k) / (1 + sum_k keep_k exp(x_k))``, the gradient of the value with respect to ``x``.

    Stable as a logsumexp: with ``m = max(0, max_{k kept} x_k)`` (the maximum of ``keep * x`` and
    0), the value is ``m + log(exp(-m) + sum_k keep_k exp(x_k - m))``. Masks are applied by
    multiplication, which is branch-free and vectorised on CPU, unlike ``masked_fill`` or ``where``.
    Exponents are clamped at ``log(finfo.tiny) + 1`` first, because exp is very slow on CPU for
    results that underflow; since the sum is at least 1 (its largest term is ``exp(0)``), the at most
    ``R * e * tiny`` this could add is far below its rounding, and masked-out terms are zeroed exactly.
    ``x`` must be finite.
    """
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0])
    m = x.mul_(keep).amax(dim=1, keepdim=True).clamp_min_(0.0)
    x.sub_(m)
    if x.dtype != torch.float16:  # float16's tiny (6e-5) is not negligible next to 1
        x.clamp_min_(math.log(torch.finfo(x.dtype).tiny) + 1.0)
    e = x.exp_().mul_(keep)
    total = e.sum(dim=1, keepdim=True).add_(torch.exp(-m))
    e.div_(total)
    return total.log_().add_(m).squeeze(1)


def _log1p_sum_exp_sparse(x: torch.Tensor, rows: torch.Tensor, n_rows: int):
    """:func:`_log1p_sum_exp_` for a few entries given as a list: values ``x`` in rows ``rows``.
    Returns the per-row values and the weights of the entries (not in place)."""
    m = x.new_zeros(n_rows).scatter_reduce_(0, rows, x, "amax")  # max(0, row maximum)
    e = (x - m[rows]).exp_()
    total = torch.exp(-m).index_add_(0, rows, e)
    return total.log().add_(m), e.div_(total[rows])


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    if mask.device.type == "cpu":  # numpy's is several times faster
        return torch.from_numpy(np.flatnonzero(mask.numpy()).astype(np.int64, copy=False))
    return mask.reshape(-1).nonzero().squeeze(1)


class _MultiSimilarityRows(torch.autograd.Function):
    """Per-anchor multi-similarity losses ``L_i`` (see :func:`multi_similarity_loss`), with the
    gradient with respect to ``S`` computed in the forward pass::

        dL_i/dS_ik = -w+_ik on P_i,  +w-_ik on N_i,   w+-_ik = exp(-+a (S_ik - lambda)) / (1 + sum_P|N exp(...))

    (the softmax weights of the two logsumexps, ``a = alpha`` or ``beta``). A side whose mask is
    sparse (under ``1 / SPARSE_FRACTION`` of the matrix, as the positives of a batch usually are)
    is computed on the list of its entries; a dense side on the whole matrix with a few ``(B, R)``
    temporaries reused in place. One backward pass only (no double backward)."""

    @staticmethod
    def forward(ctx, sim, pos_mask, neg_mask, alpha, beta, base):
        s = sim.detach().contiguous()
        n_rows, n_cols = s.shape
        losses, grad = s.new_zeros(n_rows), None
        # L_i = sum over the two sides of 1/|c| log(1 + sum_k exp(c (S_ik - base))), c = beta or -alpha;
        # dL_i/dS_ik = sign(c) w_ik. The negatives first: usually dense, their weights become grad.
        for mask, coef in ((neg_mask, beta), (pos_mask, -alpha)):
            sign = math.copysign(1.0, coef)
            if SPARSE_FRACTION * int(torch.count_nonzero(mask)) < mask.numel():
                flat = _flat_nonzero(mask)
                x = s.reshape(-1).index_select(0, flat).sub_(base).mul_(coef)
                value, w = _log1p_sum_exp_sparse(x, torch.div(flat, n_cols, rounding_mode="floor"), n_rows)
                grad = torch.zeros_like(s) if grad is None else grad
                grad.view(-1).index_add_(0, flat, w, alpha=sign)
            else:
                w = (s - base).mul_(coef)
                value = _log1p_sum_exp_(w, mask.view(torch.uint8).to(s.dtype))  # (faster than from bool)
                if grad is None:
                    grad = w if sign > 0 else w.neg_()
                else:
                    grad.add_(w, alpha=sign)
            losses.add_(value.div_(abs(coef)))
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rows):
        (grad,) = ctx.saved_tensors
        return grad * grad_rows.unsqueeze(1), None, None, None, None, None


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
    losses = _MultiSimilarityRows.apply(sim, pos_mask, neg_mask, float(alpha), float(beta), float(base))
    return reduce_losses(losses, reduction)
