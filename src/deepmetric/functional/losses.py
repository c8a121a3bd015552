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

from deepmetric.functional.hierarchical import row_hinge_sums_and_count

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
        sums, n_nonzero = row_hinge_sums_and_count(dist, pos_mask, neg_mask, float(margin))
        total = sums.sum()
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


# ----------------------------------------------------------------------------------------------
# Pair-based losses on the whole (B, R) matrix: binomial deviance, lifted structure, margin,
# circle, NT-Xent, SupCon, FastAP, histogram.
# ----------------------------------------------------------------------------------------------


class _MaskedLogSumExp(torch.autograd.Function):
    """Row-wise ``log sum_{k: mask_k} exp(x_k)`` of a ``(B, R)`` matrix, 0 on empty rows, with the
    softmax weights ``mask_k exp(x_k - value)`` (the gradient) computed in the forward pass.

    Masks enter by multiplication with their 0/1 bytes (faster on CPU than ``masked_fill`` or
    ``where`` on bool tensors). Exponents are clamped at ``log(finfo.tiny) + 1`` below the row
    maximum of the kept entries, because exp is slow on CPU for results that underflow; the at
    most ``R * e * tiny`` relative error this could add is far below rounding; entries outside the
    mask are clamped to at most the maximum so that they never overflow. One backward pass."""

    @staticmethod
    def forward(ctx, x, mask):
        d = x.detach()
        m = torch.where(mask, d, float("-inf"))
        m = m.amax(1, keepdim=True) if m.shape[1] else m.new_full((m.shape[0], 1), float("-inf"))  # R = 0: no column
        has = torch.isfinite(m)
        m = torch.where(has, m, 0.0)
        w = d - m  # <= 0 on kept entries; masked-out entries are clamped to 0 so exp cannot overflow
        low = math.log(torch.finfo(w.dtype).tiny) + 1.0 if w.dtype != torch.float16 else None
        w.clamp_(min=low, max=0.0)
        w = w.exp_().mul_(mask.view(torch.uint8).to(w.dtype) if mask.dtype == torch.bool else mask)
        total = w.sum(1, keepdim=True)
        total = torch.where(has, total, 1.0)
        w.div_(total)
        ctx.save_for_backward(w)
        value = total.log_().add_(m).squeeze(1)
        out_has = has.squeeze(1)
        ctx.mark_non_differentiable(out_has)
        return value, out_has

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value, _grad_has):
        (w,) = ctx.saved_tensors
        return w * grad_value.unsqueeze(1), None


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = 1):
    """``(values, nonempty)``: ``log sum_{k: mask_k} exp(x_k)`` along ``dim`` of a 2-D ``x`` and
    whether the selection is non-empty. An empty selection gives the value 0 with zero gradients
    (never ``-inf`` or NaN); callers use ``nonempty`` to treat it as the empty sum it is. One
    backward pass (see :class:`_MaskedLogSumExp`)."""
    if dim in (0, -2):
        return _MaskedLogSumExp.apply(x.t(), mask.t())
    return _MaskedLogSumExp.apply(x, mask)


def _sentinel(dtype) -> float:
    """A very negative finite stand-in for ``log 0`` (``-inf`` would give NaN gradients)."""
    return torch.finfo(dtype).min / 4


def binomial_deviance_loss(sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                           alpha: float = 2.0, beta: float = 0.5, cost: float = 25.0,
                           reduction: str = "mean") -> torch.Tensor:
    """Binomial deviance loss (Yi, Lei, Liao, Li, ICPR 2014, "Deep Metric Learning for Person
    Re-identification")::

        L = sum_{i,j} W_ij log(1 + exp(-alpha (S_ij - beta) M_ij))

    ``M_ij = 1`` on positive pairs and ``-C`` (``cost``) on negative pairs; ``W_ij = 1 / n_pos``
    on positives and ``1 / n_neg`` on negatives: each side is reduced separately
    (``reduction="mean"``, the paper's ``W``) and the two are added. ``sim`` is a ``(B, R)``
    similarity matrix, the masks ``(B, R)`` bool.
    """
    check_reduction(reduction)
    z = sim - beta
    pos = torch.where(pos_mask, F.softplus(z * -alpha), 0.0)
    neg = torch.where(neg_mask, F.softplus(z * (alpha * cost)), 0.0)
    return _reduce_masked(pos, pos_mask, reduction) + _reduce_masked(neg, neg_mask, reduction)


def lifted_structure_loss(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                          neg_margin: float = 1.0, pos_margin: float = 0.0, same_set: bool = True,
                          reduction: str = "mean") -> torch.Tensor:
    """Lifted structured loss (Oh Song, Xiang, Jegelka, Savarese, CVPR 2016, "Deep Metric Learning
    via Lifted Structured Feature Embedding"), eq. (4), with a positive margin as in
    pytorch-metric-learning::

        J_ij = log( sum_{(i,k) in N} exp(alpha - D_ik) + sum_{(j,l) in N} exp(alpha - D_jl) ) + D_ij - m_pos
        L    = 1 / (2 |P|) sum_{(i,j) in P} [J_ij]_+^2

    ``alpha = neg_margin``. Computed over the ``(B, R)`` matrix: one masked logsumexp per row (and
    per column) and one ``(B, R)`` matrix of ``J``, never a tensor per pair of pairs. Every ordered
    positive pair ``(i, j)`` of ``pos_mask`` is a term ``[J_ij]_+^2 / 2`` (both orders of a pair
    within one batch give the paper's ``1 / (2|P|)``), reduced by ``reduction`` ("mean": over all
    positive pairs). The negatives of ``j`` are row ``j`` of ``neg_mask`` when the reference set is
    the batch (``same_set``), else column ``j``: the batch items that are negatives of reference
    item ``j``. A positive pair with no negative on either side has ``J = -inf`` and costs 0.
    """
    check_reduction(reduction)
    x = neg_margin - dist
    row, row_has = masked_logsumexp(x, neg_mask, 1)
    col, col_has = (row, row_has) if same_set else masked_logsumexp(x, neg_mask, 0)
    low = _sentinel(dist.dtype)
    row = torch.where(row_has, row, low)
    col = torch.where(col_has, col, low)
    j = torch.logaddexp(row.unsqueeze(1), col.unsqueeze(0)) + (dist - pos_margin)
    terms = torch.where(pos_mask, F.relu(j).square() / 2, 0.0)
    return _reduce_masked(terms, pos_mask, reduction)


def generalized_lifted_structure_loss(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                                      neg_margin: float = 1.0, pos_margin: float = 0.0,
                                      reduction: str = "mean") -> torch.Tensor:
    """Generalized lifted structure loss (Hermans, Beyer, Leibe 2017, "In Defense of the Triplet
    Loss for Person Re-Identification", section 2; pytorch-metric-learning's
    ``GeneralizedLiftedStructureLoss``), for each anchor ``a``::

        L_a = [ log sum_{p in P_a} exp(D_ap - m_pos) + log sum_{n in N_a} exp(m_neg - D_an) ]_+

    reduced over the ``B`` anchors ("mean": all anchors, one without a positive or without a
    negative counting as 0, since a log of an empty sum is ``-inf``).
    """
    check_reduction(reduction)
    pos, pos_has = masked_logsumexp(dist - pos_margin, pos_mask, 1)
    neg, neg_has = masked_logsumexp(neg_margin - dist, neg_mask, 1)
    losses = torch.where(pos_has & neg_has, F.relu(pos + neg), 0.0)
    return reduce_losses(losses, reduction)


def margin_loss(dist: torch.Tensor, pos_weight: torch.Tensor, neg_weight: torch.Tensor, beta: torch.Tensor,
                margin: float = 0.2, nu: float = 0.0) -> torch.Tensor:
    """Margin loss (Wu, Manmatha, Smola, Krähenbühl, ICCV 2017, "Sampling Matters in Deep Embedding
    Learning"), eq. (3) with the regulariser of eq. (4)::

        l(i, j) = [alpha + y_ij (D_ij - beta(i))]_+,          y_ij = +1 positive, -1 negative
        L       = sum_{(i,j)} w_ij l(i, j) / sum_{(i,j)} w_ij 1[l(i, j) > 0]  +  nu * beta-term

    ``alpha = margin``. The pairs and their weights come from triplets, as in
    pytorch-metric-learning's ``MarginLoss``: ``pos_weight[a, p]`` / ``neg_weight[a, n]`` is the
    number of triplets in which the pair ``(a, p)`` / ``(a, n)`` appears (for all triplets of a batch:
    ``pos_weight = pos_mask * |N_a|``, ``neg_weight = neg_mask * |P_a|``), so the sum over triplets
    is taken without enumerating them. ``beta`` is a scalar tensor (one global ``beta``) or a
    ``(B,)`` tensor (``beta(i)``, e.g. per class of the anchor). The regulariser is ``nu * beta``
    for a scalar and ``nu * sum_a T_a beta(a) / divisor`` for a vector (``T_a`` the number of
    triplets of anchor ``a``). Zero, still connected to ``dist`` and ``beta``, when no term is > 0.
    """
    b = beta.reshape(-1, 1) if beta.dim() else beta
    pos = F.relu(dist - b + margin)
    neg = F.relu(b - dist + margin)
    total = (pos * pos_weight).sum() + (neg * neg_weight).sum()
    divisor = (pos_weight * (pos > 0)).sum() + (neg_weight * (neg > 0)).sum()
    div = divisor.clamp_min(1)
    loss = total / div
    if nu:
        if beta.dim():
            per_anchor = (pos_weight.sum(1) + neg_weight.sum(1)) / 2  # T_a: each triplet counted once per side
            reg = torch.where(divisor > 0, (per_anchor * beta).sum() / div, 0.0 * beta.sum())
        else:
            reg = torch.where(pos_weight.sum() > 0, beta, 0.0 * beta)  # no triplet: no term at all
        loss = loss + nu * reg
    return loss


def circle_loss(sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, m: float = 0.4,
                gamma: float = 80.0, reduction: str = "mean_nonzero") -> torch.Tensor:
    """Circle loss (Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei, CVPR 2020, "Circle Loss: A Unified
    Perspective of Pair Similarity Optimization"), eq. (6) with the relaxation of eq. (8), for each
    anchor::

        L = log[1 + sum_j exp(gamma a_n^j (s_n^j - D_n)) sum_i exp(-gamma a_p^i (s_p^i - D_p))]
        a_p = [O_p - s_p]_+,  a_n = [s_n - O_n]_+   (not differentiated),
        O_p = 1 + m, O_n = -m, D_p = 1 - m, D_n = m

    reduced over the ``B`` anchors (an anchor without a positive or a negative counts as 0; the
    default ``mean_nonzero`` as pytorch-metric-learning's ``CircleLoss``). ``sim`` is ``(B, R)``.
    """
    check_reduction(reduction)
    s = sim.detach()
    logit_p = -gamma * F.relu(1 + m - s) * (sim - (1 - m))
    logit_n = gamma * F.relu(s + m) * (sim - m)
    lp, p_has = masked_logsumexp(logit_p, pos_mask, 1)
    ln, n_has = masked_logsumexp(logit_n, neg_mask, 1)
    losses = torch.where(p_has & n_has, F.softplus(lp + ln), 0.0)
    return reduce_losses(losses, reduction)


def nt_xent_loss(sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, temperature: float = 0.07,
                 reduction: str = "mean") -> torch.Tensor:
    """NT-Xent / InfoNCE loss (Chen, Kornblith, Norouzi, Hinton, ICML 2020, "A Simple Framework for
    Contrastive Learning of Visual Representations", eq. (1); Oord, Li, Vinyals 2018), for every
    positive pair ``(i, j)``::

        l_ij = -log( exp(s_ij / tau) / (exp(s_ij / tau) + sum_{k in N_i} exp(s_ik / tau)) )
             = softplus( log sum_{k in N_i} exp(s_ik / tau) - s_ij / tau )

    With one positive per anchor (two views of each image) this is SimCLR's loss; with labels, every
    positive pair is a term with its own denominator (pytorch-metric-learning's ``NTXentLoss``).
    Reduced over the positive pairs ("mean": all of them). One logsumexp per row: ``O(B R)``.
    """
    check_reduction(reduction)
    z = sim / temperature
    neg, neg_has = masked_logsumexp(z, neg_mask, 1)
    neg = torch.where(neg_has, neg, _sentinel(sim.dtype))
    terms = torch.where(pos_mask, F.softplus(neg.unsqueeze(1) - z), 0.0)
    return _reduce_masked(terms, pos_mask, reduction)


def supervised_contrastive_loss(sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                                temperature: float = 0.1, reduction: str = "mean_nonzero") -> torch.Tensor:
    """Supervised contrastive loss (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu,
    Krishnan, NeurIPS 2020, "Supervised Contrastive Learning"), ``L^sup_out`` of eq. (2), for each
    anchor ``i``::

        L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) )

    ``A(i) = P(i) ∪ N(i)`` (every other item), ``z_i . z_p`` the entries of ``sim``. Reduced over
    the ``B`` anchors (an anchor without positives counts as 0; the default ``mean_nonzero`` as
    pytorch-metric-learning's ``SupConLoss``).
    """
    check_reduction(reduction)
    z = sim / temperature
    denom, _ = masked_logsumexp(z, pos_mask | neg_mask, 1)
    pos_w = pos_mask.view(torch.uint8).to(sim.dtype) if pos_mask.dtype == torch.bool else pos_mask.to(sim.dtype)
    n_pos = pos_w.sum(1)
    # -1/|P| sum_p (z_ip - denom_i) = denom_i - mean_p z_ip, 0 for an anchor without positives
    losses = torch.where(n_pos > 0, denom - (z * pos_w).sum(1) / n_pos.clamp_min(1), 0.0)
    return reduce_losses(losses, reduction)


def _triangular_bins(values: torch.Tensor, low: float, delta: float, n_nodes: int):
    """Linear (triangular-kernel) binning onto nodes ``low + r delta``, ``r = 0..n_nodes-1``:
    ``(index, weight_lo, weight_hi)`` with ``values`` split between node ``index`` (weight
    ``1 - frac``) and node ``index + 1`` (weight ``frac``). Indices are clamped to
    ``[0, n_nodes + 1]``; callers drop nodes ``>= n_nodes`` (values beyond the last node)."""
    t = (values - low) / delta
    r = t.detach().floor().clamp(0, n_nodes + 1)
    frac = t - r
    return r.long(), 1 - frac, frac


def _node_hist(index: torch.Tensor, w_lo: torch.Tensor, w_hi: torch.Tensor, weight: torch.Tensor,
               n_nodes: int) -> torch.Tensor:
    """Per row of ``(B, R)`` inputs: ``(B, n_nodes)`` histogram, ``sum_k weight_k * pulse``."""
    out = w_lo.new_zeros(index.shape[0], n_nodes + 3)
    out = out.scatter_add(1, index, w_lo * weight).scatter_add(1, index + 1, w_hi * weight)
    return out[:, :n_nodes]


def fast_ap_loss(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, num_bins: int = 10,
                 max_distance: float = 4.0, reduction: str = "mean") -> torch.Tensor:
    """FastAP (Cakir, He, Xia, Kulis, Sclaroff, CVPR 2019, "Deep Metric Learning to Rank"), eq. (9)
    with the triangular-kernel histogram of section 4.2, for each anchor (query) ``q``::

        FastAP_q = 1/N_q^+ sum_{j=1}^{L} h_j^+ H_j^+ / H_j,     L_q = 1 - FastAP_q

    ``h^+_j`` / ``h_j`` are the (soft) counts of positives / all pairs of row ``q`` at distance
    node ``z_j = j * max_distance / num_bins`` (``j = 0..num_bins``, each distance split linearly
    between its two nearest nodes), ``H`` their cumulative sums, ``N_q^+ = |P_q|``. ``dist`` is the
    squared Euclidean distance of L2-normalised embeddings (range ``[0, 4]``). Reduced over anchors
    with at least one positive ("mean"). ``O(B R)``: each distance is scattered into its two nodes,
    no ``(bins, B, R)`` tensor.
    """
    check_reduction(reduction)
    n_nodes = num_bins + 1
    index, w_lo, w_hi = _triangular_bins(dist, 0.0, max_distance / num_bins, n_nodes)
    pos_w, neg_w = pos_mask.to(dist.dtype), neg_mask.to(dist.dtype)
    h_pos = _node_hist(index, w_lo, w_hi, pos_w, n_nodes)
    h_all = h_pos + _node_hist(index, w_lo, w_hi, neg_w, n_nodes)
    cum_pos, cum_all = h_pos.cumsum(1), h_all.cumsum(1)
    # every node with something at or below it: a node whose h^+ is exactly 0 (e.g. a distance of
    # exactly 0 puts nothing on the next node) still has a derivative, which cancels its neighbour's
    safe = cum_all > 0
    ap = torch.where(safe, h_pos * cum_pos / torch.where(safe, cum_all, 1.0), 0.0).sum(1)
    n_pos = pos_mask.sum(1)
    has = n_pos > 0
    losses = torch.where(has, 1 - ap / n_pos.clamp_min(1), 0.0)
    if reduction == "mean":
        return losses.sum() / has.sum().clamp_min(1)
    return reduce_losses(losses, reduction)


def histogram_loss(sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                   num_bins: int = 100) -> torch.Tensor:
    """Histogram loss (Ustinova, Lempitsky, NeurIPS 2016, "Learning Deep Embeddings with Histogram
    Loss"), eq. (4)::

        L = sum_{r=1}^{R} h^-_r sum_{q=1}^{r} h^+_q     (= sum_r h^-_r Phi^+_r)

    ``h^+`` / ``h^-`` are the histograms of the similarities of the positive / negative pairs over
    the nodes ``t_r = -1 + r Delta`` (``Delta = 2 / num_bins``, ``num_bins + 1`` nodes), each
    similarity split linearly between its two nearest nodes (eq. (2)), normalised by the number of
    pairs. ``sim`` is a ``(B, R)`` cosine similarity matrix; all pairs of the masks enter (a pair
    and its mirror image both, which leaves the normalised histograms unchanged). Zero, connected
    to ``sim``, without a positive or a negative pair.
    """
    n_nodes = num_bins + 1
    index, w_lo, w_hi = _triangular_bins(sim, -1.0, 2.0 / num_bins, n_nodes)
    index = index.clamp_max(num_bins - 1)  # s = 1 (or rounding above it) falls on the last node
    w_lo, w_hi = 1 - ((sim + 1) * (num_bins / 2.0) - index), (sim + 1) * (num_bins / 2.0) - index
    pos_w, neg_w = pos_mask.to(sim.dtype), neg_mask.to(sim.dtype)
    n_pos, n_neg = pos_w.sum(), neg_w.sum()
    h_pos = _node_hist(index.reshape(1, -1), w_lo.reshape(1, -1), w_hi.reshape(1, -1), pos_w.reshape(1, -1),
                       n_nodes)[0]
    h_neg = _node_hist(index.reshape(1, -1), w_lo.reshape(1, -1), w_hi.reshape(1, -1), neg_w.reshape(1, -1),
                       n_nodes)[0]
    value = (h_neg * h_pos.cumsum(0)).sum() / (n_pos * n_neg).clamp_min(1)
    return torch.where((n_pos > 0) & (n_neg > 0), value, 0.0 * value)
