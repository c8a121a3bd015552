"""Mining as pure functions of a ``(B, R)`` distance (or similarity) matrix and label masks.

Every function takes the matrix between a batch (rows) and a reference set (columns, the batch
itself when there is none) and the boolean ``pos_mask`` / ``neg_mask`` of
:func:`deepmetric.labels.pair_masks`, and returns :class:`~deepmetric.tuples.Triplets` or
:class:`~deepmetric.tuples.Pairs` of int64 indices: anchors index rows, positives and negatives
index columns. Distances are "smaller is closer" (use :func:`deepmetric.distances.as_ascending`
for ``dot``); :func:`multi_similarity_pairs` takes similarities ("larger is closer") as its paper.

Memory is O(B * R): reductions are masked reductions over rows, and where the output itself can be
O(B^3) (all margin-violating triplets) it is built over chunks of positive pairs, each a bounded
``(chunk, R)`` comparison. Ties are broken towards the smallest column index (``torch.max`` /
``torch.min`` along a row return the first extreme value).
"""
from __future__ import annotations

import math

import torch

from deepmetric.tuples import Pairs, Triplets, empty_index

TRIPLET_TYPES = ("semihard", "hard", "easy", "all")

# Elements of one (chunk, R) working block when enumerating triplets over positive pairs.
CHUNK_ELEMENTS = 1 << 22


def _check_masks(matrix: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor) -> None:
    if matrix.dim() != 2:
        raise ValueError(f"dist: expected a (B, R) matrix, got shape {tuple(matrix.shape)}")
    for name, mask in (("pos_mask", pos_mask), ("neg_mask", neg_mask)):
        if mask.dtype != torch.bool or mask.shape != matrix.shape:
            raise ValueError(f"{name}: expected a bool tensor of shape {tuple(matrix.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")


def _empty_triplets(device) -> Triplets:
    return Triplets(empty_index(device), empty_index(device), empty_index(device))


def batch_hard_triplets(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor) -> Triplets:
    """Batch-hard triplets (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

    For every anchor ``a`` with at least one positive and one negative::

        p*(a) = argmax_{p in P(a)} D(a, p)      (hardest positive: farthest)
        n*(a) = argmin_{n in N(a)} D(a, n)      (hardest negative: closest)

    ``dist`` is ascending (smaller is closer). Ties go to the smallest reference index.
    Returns one triplet per such anchor, ordered by anchor.
    """
    _check_masks(dist, pos_mask, neg_mask)
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    hardest_pos = dist.masked_fill(~pos_mask, -math.inf).max(dim=1).indices
    hardest_neg = dist.masked_fill(~neg_mask, math.inf).min(dim=1).indices
    anchors = valid.nonzero().flatten()
    return Triplets(anchors, hardest_pos[anchors], hardest_neg[anchors])


def _triplet_condition(margin_ap_an: torch.Tensor, margin: float, type_of_triplets: str) -> torch.Tensor:
    """Which triplets qualify, from ``m = D(a, n) - D(a, p)`` (the triplet's margin)."""
    if type_of_triplets == "easy":
        return margin_ap_an > margin
    keep = margin_ap_an <= margin
    if type_of_triplets == "hard":
        keep &= margin_ap_an <= 0
    elif type_of_triplets == "semihard":
        keep &= margin_ap_an > 0
    return keep


def margin_triplets(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, margin: float = 0.2,
                    type_of_triplets: str = "all", hardest_only: bool = False,
                    chunk_elements: int = CHUNK_ELEMENTS) -> Triplets:
    """Triplets selected by their margin ``m(a, p, n) = D(a, n) - D(a, p)`` against ``margin`` (alpha).

    With ``dist`` ascending, over all anchors ``a``, positives ``p`` and negatives ``n`` of ``a``:

    * ``"all"``:      ``m <= alpha``          (the triplet loss ``[D(a,p) - D(a,n) + alpha]_+`` is active or at 0)
    * ``"hard"``:     ``m <= min(0, alpha)``  (negative no farther than the positive)
    * ``"semihard"``: ``0 < m <= alpha``      (Schroff et al. 2015, FaceNet: ``D(a,p) < D(a,n)``, inside the margin)
    * ``"easy"``:     ``m > alpha``

    These are pytorch-metric-learning's ``TripletMarginMiner`` inequalities, including the
    computation of ``m`` as a difference compared with ``alpha`` (so that results agree exactly).

    ``hardest_only=True`` keeps, for each positive pair ``(a, p)``, only the qualifying negative with
    the smallest ``D(a, n)`` (for ``"semihard"``: FaceNet's online semi-hard negative
    ``argmin_{n: D(a,n) > D(a,p)} D(a, n)``, kept only if it lies inside the margin); pairs with no
    qualifying negative are dropped (FaceNet / TensorFlow fall back to another negative; we do not).

    The output can be O(B^3) long; it is built over chunks of positive pairs, each a
    ``(chunk, R)`` masked row comparison of at most ``chunk_elements`` entries. Triplets come out in
    lexicographic ``(a, p, n)`` order.
    """
    _check_masks(dist, pos_mask, neg_mask)
    if type_of_triplets not in TRIPLET_TYPES:
        raise ValueError(f"type_of_triplets: expected one of {', '.join(TRIPLET_TYPES)}, got {type_of_triplets!r}")
    # Anchors without any negative can produce no triplet: skip their positive pairs early.
    pos_mask = pos_mask & neg_mask.any(dim=1, keepdim=True)
    pair_a, pair_p = pos_mask.nonzero(as_tuple=True)
    if pair_a.numel() == 0:
        return _empty_triplets(dist.device)
    chunk = max(1, chunk_elements // max(1, dist.shape[1]))
    out_a, out_p, out_n = [], [], []
    for start in range(0, pair_a.numel(), chunk):
        a = pair_a[start:start + chunk]
        p = pair_p[start:start + chunk]
        rows = dist[a]                                   # (c, R): D(a, .)
        m = rows - dist[a, p].unsqueeze(1)               # D(a, n) - D(a, p)
        keep = neg_mask[a] & _triplet_condition(m, margin, type_of_triplets)
        if hardest_only:
            n = rows.masked_fill(~keep, math.inf).min(dim=1).indices
            has = keep.any(dim=1)
            out_a.append(a[has])
            out_p.append(p[has])
            out_n.append(n[has])
        else:
            r, n = keep.nonzero(as_tuple=True)
            out_a.append(a[r])
            out_p.append(p[r])
            out_n.append(n)
    return Triplets(torch.cat(out_a), torch.cat(out_p), torch.cat(out_n))


def semi_hard_triplets(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, margin: float = 0.2,
                       hardest_only: bool = False, chunk_elements: int = CHUNK_ELEMENTS) -> Triplets:
    """Semi-hard triplets (Schroff, Kalenichenko & Philbin 2015, "FaceNet"):

        D(a, p) < D(a, n)  and  D(a, n) - D(a, p) <= alpha

    ``hardest_only=True`` keeps the closest such negative per positive pair (FaceNet's online
    semi-hard mining; pairs without one are dropped). See :func:`margin_triplets`.
    """
    return margin_triplets(dist, pos_mask, neg_mask, margin, "semihard", hardest_only, chunk_elements)


def distance_weighted_log_weights(dist: torch.Tensor, neg_mask: torch.Tensor, dim: int, cutoff: float = 0.5,
                                  nonzero_loss_cutoff: float = 1.4) -> torch.Tensor:
    """Unnormalised log sampling weights of negatives (Wu, Manmatha, Smola & Krahenbuhl, ICCV 2017,
    "Sampling Matters in Deep Embedding Learning", section 4).

    For points uniform on the unit sphere in R^n, pairwise distances follow

        q(d) ∝ d^{n-2} [1 - d^2/4]^{(n-3)/2}

    and negatives are sampled with probability ∝ 1 / q(D(a, n)), i.e. with log weight

        log w(a, n) = -(n-2) log d - ((n-3)/2) log(1 - d^2/4),   d = max(D(a, n), cutoff)

    (the clip at ``cutoff`` bounds the weight, the paper's ``min(lambda, q^{-1})``, as in the
    authors' code). ``log w = -inf`` where ``n`` is not a negative of ``a`` or where
    ``D(a, n) >= nonzero_loss_cutoff`` (such negatives give zero margin loss). ``1 - d^2/4`` is clamped
    at machine epsilon so that distances at or past the antipode (2) give a large finite weight
    instead of NaN. ``dist`` must be the euclidean distance between L2-normalised embeddings of
    dimension ``dim``. Returns a ``(B, R)`` tensor.
    """
    if dist.shape != neg_mask.shape or neg_mask.dtype != torch.bool:
        raise ValueError(f"neg_mask: expected a bool tensor of shape {tuple(dist.shape)}, "
                         f"got {neg_mask.dtype} {tuple(neg_mask.shape)}")
    d = dist.clamp_min(cutoff)
    one_minus = (1.0 - 0.25 * d * d).clamp_min(torch.finfo(dist.dtype).eps)
    log_w = -(dim - 2.0) * d.log() - ((dim - 3.0) / 2.0) * one_minus.log()
    allowed = neg_mask & (dist < nonzero_loss_cutoff)
    return log_w.masked_fill(~allowed, -math.inf)


def distance_weighted_probabilities(dist: torch.Tensor, neg_mask: torch.Tensor, dim: int, cutoff: float = 0.5,
                                    nonzero_loss_cutoff: float = 1.4) -> torch.Tensor:
    """``(B, R)`` sampling distribution of a negative for each anchor (rows sum to 1, or to 0 for an
    anchor with no negative): :func:`distance_weighted_log_weights` normalised per row (a softmax, in
    log space). An anchor whose negatives all have zero weight (all at ``D >= nonzero_loss_cutoff``)
    samples uniformly among its negatives, as the authors' code does.
    """
    log_w = distance_weighted_log_weights(dist, neg_mask, dim, cutoff, nonzero_loss_cutoff)
    has_weight = torch.isfinite(log_w).any(dim=1, keepdim=True)
    probs = torch.softmax(log_w.masked_fill(~has_weight, 0.0), dim=1).masked_fill(~has_weight, 0.0)
    uniform = neg_mask.to(dist.dtype)
    uniform = uniform / uniform.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.where(has_weight, probs, uniform)


def distance_weighted_negatives(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, dim: int,
                                cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                                generator: torch.Generator | None = None) -> Triplets:
    """Distance-weighted sampling (Wu et al., ICCV 2017): for every positive pair ``(a, p)``, one
    negative drawn independently (with replacement) from :func:`distance_weighted_probabilities` of
    ``a``. Anchors with no negative are skipped. Deterministic given ``generator``'s state; triplets
    come out in lexicographic ``(a, p)`` order.
    """
    _check_masks(dist, pos_mask, neg_mask)
    pos_mask = pos_mask & neg_mask.any(dim=1, keepdim=True)
    n_pos = pos_mask.sum(dim=1)
    anchors = (n_pos > 0).nonzero().flatten()
    if anchors.numel() == 0:
        return _empty_triplets(dist.device)
    probs = distance_weighted_probabilities(dist[anchors], neg_mask[anchors], dim, cutoff, nonzero_loss_cutoff)
    k = int(n_pos.max())
    draws = torch.multinomial(probs, k, replacement=True, generator=generator)  # (A, k)
    row, p = pos_mask[anchors].nonzero(as_tuple=True)                             # sorted by row, then p
    first = torch.cumsum(n_pos[anchors], 0) - n_pos[anchors]                      # first pair of each row
    rank = torch.arange(row.numel(), device=dist.device) - first[row]             # j-th positive of its row
    return Triplets(anchors[row], p, draws[row, rank])


def multi_similarity_pairs(sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                           epsilon: float = 0.1) -> Pairs:
    """Multi-similarity pair mining (Wang, Han, Huang, Dong & Scott, CVPR 2019, eq. 7-8).

    With similarities ``S`` (larger is closer), keep

        positive pair (i, k)  if  S_ik - epsilon < max_{j in N(i)} S_ij
        negative pair (i, j)  if  S_ij + epsilon > min_{k in P(i)} S_ik

    (a max over no negatives is -inf and a min over no positives is +inf, so anchors lacking one
    side keep nothing). Pairs come out in lexicographic order.
    """
    _check_masks(sim, pos_mask, neg_mask)
    hardest_neg = sim.masked_fill(~neg_mask, -math.inf).max(dim=1, keepdim=True).values
    hardest_pos = sim.masked_fill(~pos_mask, math.inf).min(dim=1, keepdim=True).values
    a1, p = (pos_mask & (sim - epsilon < hardest_neg)).nonzero(as_tuple=True)
    a2, n = (neg_mask & (sim + epsilon > hardest_pos)).nonzero(as_tuple=True)
    return Pairs(a1, p, a2, n)
