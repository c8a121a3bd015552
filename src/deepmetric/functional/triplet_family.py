"""Triplet-family losses as pure tensor functions: N-pair, angular and tuplet margin.

Each function takes similarity matrices and index tensors or weight matrices, never labels or
embeddings (the modules in :mod:`deepmetric.losses.triplet` build those). None of them builds a
tensor with one entry per (positive pair, negative) of the whole batch at once: the tuplet margin
loss factorises per anchor (``O(B R)``), the angular loss works over blocks of positive pairs of at
most ``max_elements`` entries and accumulates its gradient in the same pass.

With no valid term every function returns a zero that is still connected to the graph of its input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deepmetric.functional.losses import _log1p_sum_exp_

# Largest number of elements of one (pairs, R) block of the angular loss.
MAX_PAIR_BLOCK = 2 ** 22


def _zero(t: torch.Tensor) -> torch.Tensor:
    """A zero connected to the graph of ``t`` (a sum over an empty selection of it)."""
    return t.reshape(-1)[:0].sum()


def n_pairs_loss(sim: torch.Tensor) -> torch.Tensor:
    """Multi-class N-pair loss (Sohn, NeurIPS 2016, "Improved Deep Metric Learning with Multi-class
    N-pair Loss Objective"), eq. (3) without the L2 penalty::

        L = 1/N sum_i log(1 + sum_{j != i} exp(f_i^T f_j^+ - f_i^T f_i^+))

    ``sim`` is the ``(N, N)`` matrix ``sim[i, j] = f_i^T f_j^+`` between the anchors and the
    positives of ``N`` pairs from ``N`` distinct classes, so the loss is the cross-entropy of each row
    with target ``i``. ``N = 0`` gives a connected zero.
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim: expected a square (N, N) matrix, got shape {tuple(sim.shape)}")
    n = sim.shape[0]
    if n == 0:
        return _zero(sim)
    return F.cross_entropy(sim, torch.arange(n, device=sim.device))


class _AngularSum(torch.autograd.Function):
    """Sum over given positive pairs ``(a_k, p_k)`` of the angular loss terms (see
    :func:`angular_loss`), from the Gram matrices ``G = X R^T`` (``(B, R)``) and ``H = R R^T``
    (``(R, R)``). Forward walks over blocks of pairs and accumulates the gradient of the sum::

        dL/dG_an += c1 w_kn,   dL/dH_pn += c1 w_kn,   dL/dG_ap -= c2 sum_n w_kn

    with ``w_kn`` the softmax weight of negative ``n`` in the term of pair ``k``. Returns
    ``(total, n_nonzero)``; one backward pass only."""

    @staticmethod
    def forward(ctx, gram, ref_gram, a, p, neg_mask, c1, c2, max_elements):
        g, h = gram.detach(), ref_gram.detach()
        grad_g, grad_h = torch.zeros_like(g), torch.zeros_like(h)
        total = g.new_zeros(())
        n_nonzero = torch.zeros((), dtype=torch.long, device=g.device)
        n_ref = g.shape[1]
        chunk = max(1, max_elements // max(n_ref, 1))
        for start in range(0, a.numel(), chunk):
            ac, pc = a[start:start + chunk], p[start:start + chunk]
            ap = g[ac, pc]
            x = g.index_select(0, ac).add_(h.index_select(0, pc)).mul_(c1).sub_((c2 * ap).unsqueeze(1))
            keep = neg_mask.index_select(0, ac).view(torch.uint8).to(x.dtype)
            value = _log1p_sum_exp_(x, keep)  # x becomes the softmax weights
            w = x
            total += value.sum()
            n_nonzero += (value > 0).sum()
            grad_g.index_add_(0, ac, w, alpha=c1)
            grad_h.index_add_(0, pc, w, alpha=c1)
            grad_g.view(-1).index_add_(0, ac * n_ref + pc, w.sum(1), alpha=-c2)
        ctx.save_for_backward(grad_g, grad_h)
        ctx.mark_non_differentiable(n_nonzero)
        return total, n_nonzero

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_nonzero):
        grad_g, grad_h = ctx.saved_tensors
        return grad_total * grad_g, grad_total * grad_h, None, None, None, None, None, None


def angular_loss(gram: torch.Tensor, ref_gram: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor,
                 neg_mask: torch.Tensor, alpha: float = math.radians(40.0),
                 max_elements: int = MAX_PAIR_BLOCK) -> torch.Tensor:
    """Angular loss (Wang, Zhou, Wen, Liu, Lin, ICCV 2017, "Deep Metric Learning with Angular
    Loss"), eq. (8) and (9), averaged over the given positive pairs ``(a, p)``::

        f_{a,p,n} = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p
        L = 1/|P| sum_{(a,p) in P} log(1 + sum_{n in N(a)} exp(f_{a,p,n}))

    ``gram`` is ``(B, R)``: ``x_a^T x_r`` between the batch and the reference set; ``ref_gram`` is
    ``(R, R)``: ``x_p^T x_n`` within the reference set (the same matrix when the reference set is the
    batch); ``anchors`` index rows, ``positives`` columns (duplicates count as often as given);
    ``neg_mask`` ``(B, R)`` marks ``N(a)``. ``alpha`` is in radians. Pairs are processed in blocks of
    at most ``max_elements`` entries; the gradient is accumulated in the forward pass (one backward
    pass only). The paper's features are L2-normalised; this function takes them as they are.
    """
    if not 0.0 < alpha < math.pi / 2:
        raise ValueError(f"alpha: expected an angle in (0, pi/2) radians, got {alpha!r}")
    if anchors.numel() == 0:
        return _zero(gram) + _zero(ref_gram)
    t2 = math.tan(alpha) ** 2
    total, _ = _AngularSum.apply(gram, ref_gram, anchors, positives, neg_mask, 4.0 * t2, 2.0 * (1.0 + t2),
                                 int(max_elements))
    return total / anchors.numel()


def tuplet_margin_loss(cos: torch.Tensor, pos_weight: torch.Tensor, neg_weight: torch.Tensor,
                       margin: float = math.radians(5.73), scale: float = 64.0) -> torch.Tensor:
    """Tuplet margin loss (Yu and Tao, ICCV 2019, "Deep Metric Learning with Tuplet Margin Loss"),
    eq. (4), averaged over positive pairs::

        L = 1/|P| sum_{(a,p) in P} log(1 + sum_{n in N(a)} exp(s (cos theta_an - cos(theta_ap - beta))))

    ``cos`` is the ``(B, R)`` cosine similarity matrix; ``pos_weight`` ``(B, R)`` counts each positive
    pair ``(a, p)`` (0 elsewhere; a pair given twice counts twice), ``neg_weight`` ``(B, R)`` counts
    each negative ``n`` of ``a`` (a negative given twice counts twice inside the sum). ``margin``
    (beta) is in radians.

    The sum over negatives does not depend on ``p``: with ``Z_a = sum_n w_an exp(s cos theta_an)``
    each term is ``softplus(log Z_a - s cos(theta_ap - beta))``, so the loss costs ``O(B R)`` time and
    memory, never a (positive pairs, negatives) tensor. ``cos(theta - beta)`` is computed as
    ``c cos(beta) + sqrt(max(1 - c^2, eps)) sin(beta)`` with ``c = cos theta``, so duplicated
    embeddings (``c = 1``) give a finite gradient (``acos`` has an infinite slope there).
    """
    n_pairs = pos_weight.sum()
    eps = torch.finfo(cos.dtype).eps ** 2 if cos.dtype == torch.float64 else torch.finfo(cos.dtype).eps
    has_neg = (neg_weight > 0).any(dim=1, keepdim=True)
    z = cos * scale + torch.log(neg_weight)  # -inf where the weight is 0
    m = torch.where(has_neg, z.detach().amax(dim=1, keepdim=True), 0.0) if z.shape[1] else z.new_zeros(z.shape[0], 1)
    s = torch.where(neg_weight > 0, torch.exp(z - m), 0.0).sum(dim=1, keepdim=True)
    log_z = torch.where(has_neg, torch.log(torch.where(has_neg, s, 1.0)) + m, -math.inf)
    shifted = cos * math.cos(margin) + torch.sqrt((1.0 - cos * cos).clamp_min(eps)) * math.sin(margin)
    terms = F.softplus(log_z - scale * shifted)
    total = torch.where(pos_weight > 0, terms * pos_weight, 0.0).sum()
    return total / n_pairs.clamp_min(1.0)
