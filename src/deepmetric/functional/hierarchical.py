"""Hierarchical (order-preserving) losses as pure tensor functions: quadlet, pentuplet and radial.

Relations of a query ``q`` with hierarchical labels ``(B, L)`` (column 0 the coarsest) and a
"class" level ``level`` (default 0), as :func:`hierarchy_masks` computes them:

* positive ``p``: shares *all* ``L`` levels with ``q`` (same sub-class), ``p != q``;
* intermediate ``i``: shares levels ``0..level`` but not the finest (same class, other sub-class);
* negative ``n``: differs at a level ``<= level`` (other class).

Flat labels ``(B,)`` are a one-level hierarchy: no intermediates. A query with positives and
negatives but no intermediate falls back to its *no-intermediate form*, a triplet ``(q, p, n)``
(each loss documents which term it keeps), so flat labels give a triplet-style loss.

Two kinds of functions:

* ``*_terms``: one loss value per given tuple, from per-tuple distances (or embeddings);
* ``*_loss_all``: the sum over *every* valid tuple of the batch from the ``(B, R)`` distance matrix,
  without enumerating quadlets. A sum ``sum_{(q,a,b)} [margin + D_qa - D_qb]_+`` over all
  ``a in A(q), b in B(q)`` is computed per row by sorting the row's ``B`` entries and taking prefix
  sums (``O(B R log R)`` time, ``O(B R)`` memory); a quadlet sum is a weighted sum of such row sums,
  the weight counting the free fourth index (e.g. the number of negatives of ``q``).

With no valid tuple every function returns a zero connected to the graph of its input, never NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric._checks import check_int
from deepmetric.functional.mining import intermediate_triples
from deepmetric.labels import num_levels, shared_levels

REDUCTIONS = ("mean", "sum")


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero connected to the graph of every given tensor."""
    total = tensors[0].reshape(-1)[:0].sum()
    for t in tensors[1:]:
        total = total + t.reshape(-1)[:0].sum()
    return total


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


def reduce_total(total: torch.Tensor, count, reduction: str) -> torch.Tensor:
    """``total / max(count, 1)`` for ``mean`` (the mean over valid tuples), ``total`` for ``sum``."""
    if reduction == "sum":
        return total
    if isinstance(count, torch.Tensor):
        return total / count.clamp_min(1).to(total.dtype)
    return total / max(int(count), 1)


# -- relations -------------------------------------------------------------------------------------

def check_level(level, labels: torch.Tensor) -> int:
    """Return ``level`` in ``[0, L)`` for labels with ``L`` levels (negative values count from the
    finest), else raise. Multi-label (bool) labels have no hierarchy and are rejected."""
    if labels.dtype == torch.bool:
        raise ValueError("labels: hierarchical losses and miners need flat (B,) or hierarchical (B, L) integer "
                         "labels, got (B, C) bool multi-label")
    n_levels = num_levels(labels)
    return check_int(level, "level", -n_levels, n_levels - 1, f" for labels with {n_levels} level(s)") % n_levels


def hierarchy_masks(labels: torch.Tensor, ref_labels: torch.Tensor | None = None, level: int = 0):
    """``(pos, inter, neg)``: ``(B, R)`` bool masks of positives, intermediates and negatives.

    ``shared[q, r]`` = number of leading levels ``q`` and ``r`` share (0..L); then
    ``pos = shared == L`` (without the diagonal when ``ref_labels`` is None),
    ``inter = level < shared < L`` (i.e. ``level + 1 <= shared <= L - 1``) and
    ``neg = shared <= level``. Flat labels: ``L = 1``, so ``inter`` is empty.
    """
    level = check_level(level, labels)
    n_levels = num_levels(labels)
    shared = shared_levels(labels, ref_labels)
    pos = shared == n_levels
    if ref_labels is None:
        pos.fill_diagonal_(False)
    inter = (shared > level) & (shared < n_levels)
    neg = shared <= level
    return pos, inter, neg


# -- all tuples, decomposed ------------------------------------------------------------------------

def row_hinge_sums(dist: torch.Tensor, a_mask: torch.Tensor, b_mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Per row ``r``: ``sum_{a in A(r)} sum_{b in B(r)} [margin + D_ra - D_rb]_+`` (a ``(B,)`` tensor).

    With ``t = D_ra + margin`` and ``k = #{b in B(r): D_rb < t}``, the inner sum is ``k t`` minus the
    sum of the ``k`` smallest ``D_rb``: one sort of each row's ``B`` entries, a prefix sum and a binary
    search (``O(B R log R)`` time, ``O(B R)`` memory, differentiable by autograd with the hinge's
    subgradient: 0 where the hinge is exactly 0).
    """
    return row_hinge_sums_and_count(dist, a_mask, b_mask, margin)[0]


def row_hinge_sums_and_count(dist: torch.Tensor, a_mask: torch.Tensor, b_mask: torch.Tensor,
                             margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`row_hinge_sums` and the number of its non-zero terms over all rows."""
    if dist.shape[1] == 0:
        return dist.sum(dim=1), torch.zeros((), dtype=torch.long, device=dist.device)
    key, order = dist.detach().masked_fill(~b_mask, float("inf")).sort(dim=1)
    b_sorted = dist.gather(1, order).masked_fill(~b_mask.gather(1, order), 0.0)
    prefix = F.pad(b_sorted.cumsum(1), (1, 0))  # prefix[:, k] = sum of the k smallest D_rb
    threshold = dist + margin
    k = torch.searchsorted(key, threshold.detach().contiguous()).masked_fill(~a_mask, 0)
    terms = k.to(dist.dtype) * threshold - prefix.gather(1, k)
    return torch.where(a_mask, terms, torch.zeros_like(terms)).sum(dim=1), k.sum()


def _counts(pos, inter, neg):
    return pos.sum(1), inter.sum(1), neg.sum(1)


def tuple_count(pos: torch.Tensor, inter: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Number of valid tuples: ``sum_q P_q N_q max(I_q, 1)`` (quadlets of the queries with an
    intermediate, fallback triplets ``(q, p, n)`` of those without)."""
    n_pos, n_inter, n_neg = _counts(pos, inter, neg)
    return (n_pos * n_neg * n_inter.clamp_min(1)).sum()


def quadlet_loss_all(dist: torch.Tensor, pos: torch.Tensor, inter: torch.Tensor, neg: torch.Tensor,
                     margin1: float = 0.1, margin2: float = 0.2, reduction: str = "mean") -> torch.Tensor:
    """:func:`quadlet_terms` over every valid tuple, from the ``(B, R)`` matrix ``dist``::

        sum_{q,p,i,n} [m1 + D_qp - D_qi]_+ = sum_{q,p,i} N_q [m1 + D_qp - D_qi]_+
        sum_{q,p,i,n} [m2 + D_qi - D_qn]_+ = sum_{q,i,n} P_q [m2 + D_qi - D_qn]_+

    (``P_q, I_q, N_q`` the numbers of positives, intermediates, negatives of ``q``), plus, for each
    query with no intermediate, its triplets ``[m1 + m2 + D_qp - D_qn]_+``. ``mean`` divides by the
    number of tuples, :func:`tuple_count`. Never enumerates quadlets: ``O(B R log R)`` time,
    ``O(B R)`` memory.
    """
    check_reduction(reduction)
    n_pos, n_inter, n_neg = _counts(pos, inter, neg)
    dtype = dist.dtype
    first = row_hinge_sums(dist, pos, inter, margin1) * n_neg.to(dtype)
    second = row_hinge_sums(dist, inter, neg, margin2) * n_pos.to(dtype)
    no_inter = (n_inter == 0).unsqueeze(1)
    fallback = row_hinge_sums(dist, pos & no_inter, neg, margin1 + margin2)
    total = (first + second + fallback).sum()
    return reduce_total(total, tuple_count(pos, inter, neg), reduction)


def pentuplet_loss_all(dist: torch.Tensor, pos: torch.Tensor, inter: torch.Tensor, neg: torch.Tensor,
                       ref_dist: torch.Tensor | None = None, ref_inter: torch.Tensor | None = None,
                       ref_neg: torch.Tensor | None = None, gammas=(0.7, 0.5, 0.4, 0.1),
                       reduction: str = "mean") -> torch.Tensor:
    """:func:`pentuplet_terms` in its one-intermediate form (``i1 = i2 = i``, no ``g4`` term) over
    every valid quadlet, plus the first term alone for every ``(q, p, n)`` of a query with no
    intermediate::

        sum_{q,p,i,n} [g1 + D_qp - D_qn]_+            = sum_{q,p,n} max(I_q, 1) [g1 + D_qp - D_qn]_+
        sum_{q,p,i,n} [g + D(p,i) - D(p,n)]_+ (g = g2, g3) = sum_p C_p sum_{i,n} [g + D(p,i) - D(p,n)]_+

    where ``C_p`` is the number of queries of which ``p`` is a positive: ``p`` has the labels of
    ``q``, so the intermediates and negatives of ``q`` are those of ``p``. ``ref_dist`` ``(R, R)``
    holds the distances within the reference set and ``ref_inter`` / ``ref_neg`` its relation masks;
    None means the reference set is the batch (``dist``, ``inter``, ``neg`` are then square).
    ``O(R^2)`` memory, no enumeration of quadlets.
    """
    check_reduction(reduction)
    g1, g2, g3 = (float(g) for g in gammas[:3])
    if ref_dist is None:
        ref_dist, ref_inter, ref_neg = dist, inter, neg
    n_pos, n_inter, n_neg = _counts(pos, inter, neg)
    dtype = dist.dtype
    first = row_hinge_sums(dist, pos, neg, g1) * n_inter.clamp_min(1).to(dtype)
    c_p = pos.sum(0).to(dtype)  # (R,)
    rows = c_p > 0
    if bool(rows.any()):
        d_rows, i_rows, n_rows = ref_dist[rows], ref_inter[rows], ref_neg[rows]
        per_p = row_hinge_sums(d_rows, i_rows, n_rows, g2) + row_hinge_sums(d_rows, i_rows, n_rows, g3)
        rest = (per_p * c_p[rows]).sum()
    else:
        rest = _zero(ref_dist)
    total = first.sum() + rest
    return reduce_total(total, tuple_count(pos, inter, neg), reduction)


# -- given tuples ----------------------------------------------------------------------------------

def quadlet_terms(d_qp: torch.Tensor, d_qi: torch.Tensor | None, d_qn: torch.Tensor, margin1: float = 0.1,
                  margin2: float = 0.2) -> torch.Tensor:
    """Per-tuple order-preserving (quadlet) loss::

        [m1 + D(q,p) - D(q,i)]_+ + [m2 + D(q,i) - D(q,n)]_+

    and, with no intermediate (``d_qi=None``), the triplet term ``[m1 + m2 + D(q,p) - D(q,n)]_+``
    (the weakest constraint the two margins imply, since ``[a]_+ + [b]_+ >= [a + b]_+``)."""
    if d_qi is None:
        return F.relu(margin1 + margin2 + d_qp - d_qn)
    return F.relu(margin1 + d_qp - d_qi) + F.relu(margin2 + d_qi - d_qn)


def pentuplet_terms(d_qp: torch.Tensor, d_qn: torch.Tensor, d_pi1: torch.Tensor | None = None,
                    d_pn: torch.Tensor | None = None, d_pi2: torch.Tensor | None = None,
                    gammas=(0.7, 0.5, 0.4, 0.1)) -> torch.Tensor:
    """Per-tuple pentuplet loss (Gupta et al., ICPR 2018)::

        [g1 + D(q,p) - D(q,n)]_+ + [g2 + D(p,i1) - D(p,n)]_+ + [g3 + D(p,i2) - D(p,n)]_+
                                 + [g4 + D(p,i1) - D(p,i2)]_+

    ``d_pi1=None`` (no intermediate): the first term only. ``d_pi2=None`` (one intermediate,
    ``i1 = i2``): the first three terms with ``D(p,i2) = D(p,i1)``, no ``g4`` term.
    """
    g1, g2, g3, g4 = (float(g) for g in gammas)
    out = F.relu(g1 + d_qp - d_qn)
    if d_pi1 is None:
        return out
    if d_pn is None:
        raise ValueError("d_pn: required when d_pi1 is given")
    if d_pi2 is None:
        return out + F.relu(g2 + d_pi1 - d_pn) + F.relu(g3 + d_pi1 - d_pn)
    return out + F.relu(g2 + d_pi1 - d_pn) + F.relu(g3 + d_pi2 - d_pn) + F.relu(g4 + d_pi1 - d_pi2)


def _sq_norm(v: torch.Tensor) -> torch.Tensor:
    return v.pow(2).sum(dim=1)


def radial_terms(f_q: torch.Tensor, f_p: torch.Tensor, f_i: torch.Tensor | None, f_n: torch.Tensor,
                 c: float = 3.0, margin: float = 0.3) -> torch.Tensor:
    """Per-tuple radial loss (Jain et al., ICASSP 2019) from the ``(T, D)`` embeddings of the tuples::

        X_G = (f(q) + f(p) + f(i)) / 3,     R = max_{x in {q, p, i}} ||f(x) - X_G||
        L = [(c R)^2 - ||f(n) - X_G||^2]_+ + [m + ||f(q) - f(p)||^2 - ||f(q) - f(i)||^2]_+

    ``R`` is a function of the triple and gradients flow through it (through the farthest of the
    three points; computed as ``R^2``, a max of squared norms, so no square root is ever
    differentiated). ``f_i=None`` (no intermediate): the group is the pair, ``X_G = (f(q) + f(p)) / 2``,
    ``R = ||f(q) - f(p)|| / 2``, and only the first term is kept.
    """
    if f_i is None:
        centre = (f_q + f_p) / 2
        r2 = torch.maximum(_sq_norm(f_q - centre), _sq_norm(f_p - centre))
        return F.relu(c * c * r2 - _sq_norm(f_n - centre))
    centre = (f_q + f_p + f_i) / 3
    r2 = torch.maximum(torch.maximum(_sq_norm(f_q - centre), _sq_norm(f_p - centre)), _sq_norm(f_i - centre))
    return F.relu(c * c * r2 - _sq_norm(f_n - centre)) + F.relu(margin + _sq_norm(f_q - f_p) - _sq_norm(f_q - f_i))


def _radial_block_sum(f_q, f_p, f_i, ref_x, neg_rows, n_neg_rows, c, margin):
    """Sum of the radial terms of one block of groups over all their negatives (see
    :func:`radial_loss_all`)."""
    if f_i is None:
        centre = (f_q + f_p) / 2
        r2 = _sq_norm(f_q - f_p) / 4
        total = 0
    else:
        centre = (f_q + f_p + f_i) / 3
        r2 = torch.maximum(torch.maximum(_sq_norm(f_q - centre), _sq_norm(f_p - centre)), _sq_norm(f_i - centre))
        total = (F.relu(margin + _sq_norm(f_q - f_p) - _sq_norm(f_q - f_i)) * n_neg_rows).sum()
    d2 = (_sq_norm(centre).unsqueeze(1) - 2 * centre @ ref_x.T + _sq_norm(ref_x).unsqueeze(0)).clamp_min(0)
    return total + (F.relu(c * c * r2.unsqueeze(1) - d2) * neg_rows).sum()


class _RadialSum(torch.autograd.Function):
    """:func:`_radial_block_sum` summed over blocks of groups ``(q, p, i)``, with the gradient of each
    block taken in the forward pass and accumulated, so no block is kept for the backward pass (one
    backward pass only)."""

    @staticmethod
    def forward(ctx, x, ref_x, blocks, neg, n_neg, c, margin):
        need_x, need_ref = ctx.needs_input_grad[:2]  # a reference set without gradient: an xbm memory
        x, ref_x = x.detach(), ref_x.detach()
        grad_x, grad_ref = torch.zeros_like(x), torch.zeros_like(ref_x)
        total = x.new_zeros(())
        for q, p, i in blocks:
            with torch.enable_grad():
                f_q, f_p, f_r = x[q].requires_grad_(need_x), ref_x[p].requires_grad_(need_ref), ref_x.detach()
                f_i = None if i is None else ref_x[i].requires_grad_(need_ref)
                value = _radial_block_sum(f_q, f_p, f_i, f_r.requires_grad_(need_ref), neg[q], n_neg[q], c, margin)
                grads = iter(torch.autograd.grad(value, [t for t in (f_q, f_p, f_r, f_i) if t is not None
                                                         and t.requires_grad]))
            total += value.detach()
            if need_x:
                grad_x.index_add_(0, q, next(grads))
            if need_ref:
                grad_ref.index_add_(0, p, next(grads))
                grad_ref += next(grads)
                if i is not None:
                    grad_ref.index_add_(0, i, next(grads))
        ctx.save_for_backward(grad_x, grad_ref)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        grad_x, grad_ref = ctx.saved_tensors
        return grad_total * grad_x, grad_total * grad_ref, None, None, None, None, None


def radial_loss_all(x: torch.Tensor, ref_x: torch.Tensor, pos: torch.Tensor, inter: torch.Tensor,
                    neg: torch.Tensor, c: float = 3.0, margin: float = 0.3, block: int = 1 << 22):
    """``(sum, count)`` of :func:`radial_terms` over every valid quadlet and every fallback triplet
    (queries without an intermediate), without enumerating them.

    A quadlet's first term depends on its negative only through ``||f(n) - X_G||^2``, so for each
    group (triple ``(q, p, i)``, or pair ``(q, p)`` for a query without intermediate) one matrix
    product gives the squared distances of its centroid to the whole reference set, masked to the
    query's negatives; the second term is the same for all ``|N(q)|`` negatives and is counted that
    many times. Memory: the groups are processed in blocks of ``block // R`` (groups x reference
    items), and the triples take no more than themselves and ``O(B R)``
    (:func:`deepmetric.functional.mining.intermediate_triples`). Under autograd
    each block's gradient is taken in the forward pass and accumulated into ``(B, D)`` and ``(R, D)``
    tensors, so memory stays bounded by the block (one backward pass only; no double backward).
    """
    n_ref = ref_x.shape[0]
    n_neg = neg.sum(dim=1)
    has_inter = inter.any(dim=1)
    pairs = (pos & ~has_inter.unsqueeze(1)).nonzero()  # fallback groups (q, p)
    groups = [(pairs[:, 0], pairs[:, 1], None), intermediate_triples(*pos.nonzero(as_tuple=True), inter)]
    g_step = max(1, block // max(1, n_ref))
    blocks = [(q_all[s:s + g_step], p_all[s:s + g_step], None if i_all is None else i_all[s:s + g_step])
              for q_all, p_all, i_all in groups for s in range(0, q_all.numel(), g_step)]
    count = sum(int(n_neg[q].sum()) for q, _, _ in blocks)
    if torch.is_grad_enabled() and (x.requires_grad or ref_x.requires_grad):
        return _RadialSum.apply(x, ref_x, blocks, neg, n_neg, c, margin), count
    total = _zero(x, ref_x)
    for q, p, i in blocks:
        total = total + _radial_block_sum(x[q], ref_x[p], None if i is None else ref_x[i], ref_x, neg[q], n_neg[q],
                                          c, margin)
    return total, count
