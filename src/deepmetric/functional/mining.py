"""Mining as pure functions of a ``(B, R)`` distance (or similarity) matrix and label masks.

Every function takes the matrix between a batch (rows) and a reference set (columns, the batch
itself when there is none) and the boolean ``pos_mask`` / ``neg_mask`` of
:func:`deepmetric.labels.pair_masks`, and returns :class:`~deepmetric.tuples.Triplets` or
:class:`~deepmetric.tuples.Pairs` of int64 indices: anchors index rows, positives and negatives
index columns. Distances are "smaller is closer" (use :func:`deepmetric.distances.as_ascending`
for ``dot``); :func:`multi_similarity_pairs` takes similarities ("larger is closer") as its paper.

Memory is O(B * R) (the quadlet functions: plus their (q, p, i) triples): reductions are masked
reductions over rows, and where the output itself can be O(B^3) (all margin-violating triplets) it
is built over chunks of positive pairs, each a bounded ``(chunk, R)`` comparison. Ties are broken
towards the smallest column index (``argmax`` / ``argmin`` along a row return the first extreme value).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from deepmetric.tuples import Pairs, Quadlets, Triplets, empty_index

TRIPLET_TYPES = ("semihard", "hard", "easy", "all")

# Elements of one (chunk, R) working block when enumerating triplets over positive pairs.
CHUNK_ELEMENTS = 1 << 22


def _check_masks(matrix: torch.Tensor, name: str = "dist", **masks: torch.Tensor) -> None:
    """``matrix`` (the argument ``name``) is ``(B, R)`` and every mask a bool tensor of its shape."""
    if matrix.dim() != 2:
        raise ValueError(f"{name}: expected a (B, R) matrix, got shape {tuple(matrix.shape)}")
    for name, mask in masks.items():
        if mask.dtype != torch.bool or mask.shape != matrix.shape:
            raise ValueError(f"{name}: expected a bool tensor of shape {tuple(matrix.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")


# Array work of the miners runs on numpy views of CPU tensors (same memory, no copy): on CPU,
# numpy's comparisons, flatnonzero, repeat and masked reductions are several times faster than
# torch's (whose comparison and index kernels are slow for the large, dense (B, R) masks of mining).
# Other devices, and dtypes numpy lacks, use torch. The algorithms are written once, against the
# small set of operations of _NumpyOps / _TorchOps; indexing, arithmetic and comparisons are the
# same in both libraries.


class _NumpyOps:
    @staticmethod
    def arange(n):
        return np.arange(n, dtype=np.int64)

    @staticmethod
    def cat(arrays):
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    @staticmethod
    def where(cond, x, y):
        return np.where(cond, x, y)

    @staticmethod
    def row_max(x):
        return x.max(axis=1)

    @staticmethod
    def row_min(x):
        return x.min(axis=1)

    @staticmethod
    def repeat(values, counts):
        return np.repeat(values, counts)

    @staticmethod
    def flat_nonzero(mask):
        return np.flatnonzero(mask).astype(np.int64, copy=False)

    @staticmethod
    def counts_and_columns(mask):
        """Per-row counts of the True entries of a 2-D mask and their columns (row-major order):
        binary searches of each row's first flat index in the sorted flat indices."""
        n_rows, n_cols = mask.shape
        flat = _NumpyOps.flat_nonzero(mask)
        row_start = np.arange(n_rows, dtype=np.int64) * n_cols
        counts = np.diff(np.searchsorted(flat, row_start), append=flat.size)
        flat -= np.repeat(row_start, counts)
        return counts, flat


class _TorchOps:
    def __init__(self, device):
        self.device = device

    def arange(self, n):
        return torch.arange(n, device=self.device)

    @staticmethod
    def cat(tensors):
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors)

    @staticmethod
    def where(cond, x, y):
        return torch.where(cond, x, y)

    @staticmethod
    def row_max(x):
        return x.amax(dim=1)

    @staticmethod
    def row_min(x):
        return x.amin(dim=1)

    @staticmethod
    def repeat(values, counts):
        return values.repeat_interleave(counts)

    @staticmethod
    def flat_nonzero(mask):
        return mask.reshape(-1).nonzero().squeeze(1)

    def counts_and_columns(self, mask):
        n_rows, n_cols = mask.shape
        flat = self.flat_nonzero(mask)
        row_start = torch.arange(n_rows, device=self.device) * n_cols
        first = torch.searchsorted(flat, row_start)
        counts = torch.diff(first, append=first.new_tensor([flat.numel()]))
        return counts, flat - row_start.repeat_interleave(counts)


_NUMPY_DTYPES = (torch.float32, torch.float64)


def _backend(matrix: torch.Tensor, *masks: torch.Tensor):
    """``(ops, matrix, masks, to_torch)``: the operations and the arrays to run a miner on, and a
    function that turns its int64 index arrays back into tensors on ``matrix``'s device."""
    if use_numpy(matrix):
        return (_NumpyOps, matrix.detach().numpy(), [m.numpy() for m in masks],
                lambda array: torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)))
    return _TorchOps(matrix.device), matrix.detach(), list(masks), lambda t: t


def use_numpy(matrix: torch.Tensor) -> bool:
    """Whether the miners run on numpy views of ``matrix`` (a CPU float32/float64 tensor)."""
    return matrix.device.type == "cpu" and matrix.dtype in _NUMPY_DTYPES


def _nonzero_2d(ops, mask):
    """``mask.nonzero(as_tuple=True)`` (lexicographic order) of a 2-D bool array: columns from the
    sorted flat indices, rows by repeating row ids by the per-row counts (no division)."""
    counts, cols = ops.counts_and_columns(mask)
    return ops.repeat(ops.arange(mask.shape[0]), counts), cols


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
    _check_masks(dist, pos_mask=pos_mask, neg_mask=neg_mask)
    if dist.shape[1] == 0:
        return _empty_triplets(dist.device)
    ops, d, (pos, neg), to_torch = _backend(dist, pos_mask, neg_mask)
    anchors = ops.flat_nonzero(pos.any(1) & neg.any(1))
    d, pos, neg = d[anchors], pos[anchors], neg[anchors]
    hardest_pos = ops.where(pos, d, -math.inf).argmax(1)
    hardest_neg = ops.where(neg, d, math.inf).argmin(1)
    return Triplets(to_torch(anchors), to_torch(hardest_pos), to_torch(hardest_neg))


def _triplet_condition(m, margin: float, type_of_triplets: str):
    """Which triplets qualify, from ``m = D(a, n) - D(a, p)`` (the triplet's margin); for
    ``"hard"``, ``m <= margin and m <= 0`` is tested as ``m <= min(margin, 0)``."""
    if type_of_triplets == "easy":
        return m > margin
    if type_of_triplets == "hard":
        return m <= min(margin, 0.0)
    keep = m <= margin
    if type_of_triplets == "semihard":
        keep &= m > 0
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
    _check_masks(dist, pos_mask=pos_mask, neg_mask=neg_mask)
    if type_of_triplets not in TRIPLET_TYPES:
        raise ValueError(f"type_of_triplets: expected one of {', '.join(TRIPLET_TYPES)}, got {type_of_triplets!r}")
    if dist.shape[1] == 0:
        return _empty_triplets(dist.device)
    ops, d, (pos, neg), to_torch = _backend(dist, pos_mask, neg_mask)
    pair_a, pair_p = _nonzero_2d(ops, pos)
    has_neg = neg.any(1)[pair_a]  # anchors without any negative can produce no triplet
    pair_a, pair_p = pair_a[has_neg], pair_p[has_neg]
    if pair_a.shape[0] == 0:
        return _empty_triplets(dist.device)
    chunk = max(1, chunk_elements // dist.shape[1])
    out_a, out_p, out_n = [], [], []
    for start in range(0, pair_a.shape[0], chunk):
        a = pair_a[start:start + chunk]
        p = pair_p[start:start + chunk]
        rows = d[a]                                       # (c, R): D(a, .), a copy
        m = rows - d[a, p][:, None]                       # D(a, n) - D(a, p)
        keep = _triplet_condition(m, margin, type_of_triplets)
        keep &= neg[a]
        if hardest_only:
            rows[~keep] = math.inf
            has = keep.any(1)
            out_a.append(a[has])
            out_p.append(p[has])
            out_n.append(rows.argmin(1)[has])
        else:
            # positive pair r gives (a[r], p[r], n) for every kept negative n of its row
            counts, n = ops.counts_and_columns(keep)
            out_a.append(ops.repeat(a, counts))
            out_p.append(ops.repeat(p, counts))
            out_n.append(n)
    return Triplets(*(to_torch(ops.cat(out)) for out in (out_a, out_p, out_n)))


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
    _check_masks(dist, neg_mask=neg_mask)
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
    _check_masks(dist, pos_mask=pos_mask, neg_mask=neg_mask)
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
    _check_masks(sim, "sim", pos_mask=pos_mask, neg_mask=neg_mask)
    if sim.shape[1] == 0:
        empty = empty_index(sim.device)
        return Pairs(empty, empty, empty, empty)
    ops, s, (pos, neg), to_torch = _backend(sim, pos_mask, neg_mask)
    hardest_neg = ops.row_max(ops.where(neg, s, -math.inf))
    hardest_pos = ops.row_min(ops.where(pos, s, math.inf))
    # positive pairs are few (a handful per anchor): test them from their list, not on the matrix
    a1, p = _nonzero_2d(ops, pos)
    keep = s[a1, p] - epsilon < hardest_neg[a1]
    a2, n = _nonzero_2d(ops, (s + epsilon > hardest_pos[:, None]) & neg)
    return Pairs(to_torch(a1[keep]), to_torch(p[keep]), to_torch(a2), to_torch(n))


def _empty_pairs(device) -> Pairs:
    empty = empty_index(device)
    return Pairs(empty, empty, empty, empty)


def pair_margin_pairs(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, pos_margin: float = 0.2,
                      neg_margin: float = 0.8, similarity: bool = False) -> Pairs:
    """Pair margin mining: the pairs a contrastive loss with these margins would penalise.

    With distances ``D`` (``similarity=False``), keep

        positive pair (i, j)  if  D_ij > pos_margin        negative pair (i, j)  if  D_ij < neg_margin

    and with similarities ``S`` (``similarity=True``) ``S_ij < pos_margin`` and ``S_ij > neg_margin``,
    pytorch-metric-learning's ``PairMarginMiner`` inequalities. ``dist`` is in its own units (not
    made ascending). Pairs come out in lexicographic order.
    """
    _check_masks(dist, pos_mask=pos_mask, neg_mask=neg_mask)
    if dist.shape[1] == 0:
        return _empty_pairs(dist.device)
    ops, d, (pos, neg), to_torch = _backend(dist, pos_mask, neg_mask)
    if similarity:
        pos, neg = pos & (d < pos_margin), neg & (d > neg_margin)
    else:
        pos, neg = pos & (d > pos_margin), neg & (d < neg_margin)
    a1, p = _nonzero_2d(ops, pos)
    a2, n = _nonzero_2d(ops, neg)
    return Pairs(to_torch(a1), to_torch(p), to_torch(a2), to_torch(n))


EASY_HARD_STRATEGIES = ("hard", "semihard", "easy", "all")


def check_easy_hard_strategies(pos_strategy: str, neg_strategy: str) -> None:
    """Raise a ValueError for an unknown or impossible combination of batch easy/hard strategies."""
    for name, value in (("pos_strategy", pos_strategy), ("neg_strategy", neg_strategy)):
        if value not in EASY_HARD_STRATEGIES:
            raise ValueError(f"{name}: expected one of {', '.join(EASY_HARD_STRATEGIES)}, got {value!r}")
    if pos_strategy == neg_strategy == "semihard":
        raise ValueError('pos_strategy and neg_strategy cannot both be "semihard" (each is defined by the other)')
    if "semihard" in (pos_strategy, neg_strategy) and "all" in (pos_strategy, neg_strategy):
        raise ValueError('"semihard" cannot be combined with "all": it needs one chosen pair on the other side')


def _pick_per_row(d: torch.Tensor, mask: torch.Tensor, largest: bool):
    """Per row, the column of the largest (or smallest) entry of ``d`` inside ``mask``, its value, and
    whether the row has any entry (first index on ties)."""
    fill = -math.inf if largest else math.inf
    masked = d.masked_fill(~mask, fill)
    value, index = (masked.max(dim=1) if largest else masked.min(dim=1)) if d.shape[1] else (
        d.new_full((d.shape[0],), fill), torch.zeros(d.shape[0], dtype=torch.long, device=d.device))
    return index, value, mask.any(dim=1)


def batch_easy_hard(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, pos_strategy: str = "easy",
                    neg_strategy: str = "semihard", allowed_pos_range: tuple[float, float] | None = None,
                    allowed_neg_range: tuple[float, float] | None = None,
                    range_values: torch.Tensor | None = None) -> Triplets | Pairs:
    """Batch easy/hard mining (Xuan, Stylianou, Pless, WACV 2020, "Improved Embeddings with Easy
    Positive Triplet Mining"; Hermans et al. 2017 for batch-hard), one positive and one negative per
    anchor chosen by strategy, with ``D`` ascending (smaller is closer)::

        positive  easy: argmin_p D_ap      hard: argmax_p D_ap      semihard: argmax_{p: D_ap < D_an*} D_ap
        negative  easy: argmax_n D_an      hard: argmin_n D_an      semihard: argmin_{n: D_an > D_ap*} D_an

    where ``*`` is the pair chosen on the other side; ``"all"`` keeps every pair of its side.
    ``allowed_pos_range`` / ``allowed_neg_range`` ``(low, high)`` keep only pairs whose value in
    ``range_values`` (the matrix in the distance's own units; default ``dist``) lies in
    ``[low, high]``, before choosing; they also filter an ``"all"`` side (an intended difference:
    pytorch-metric-learning's ``BatchEasyHardMiner`` ignores the range there). Otherwise these are
    its rules. Returns :class:`Triplets` ``(a, p*, n*)`` for anchors with both choices (by anchor), or,
    when a side is ``"all"``, :class:`Pairs`: every pair of that side and the chosen pair of each
    anchor on the other.
    """
    _check_masks(dist, pos_mask=pos_mask, neg_mask=neg_mask)
    check_easy_hard_strategies(pos_strategy, neg_strategy)
    d = dist.detach()
    values = d if range_values is None else range_values.detach()
    pos, neg = pos_mask, neg_mask
    if allowed_pos_range is not None:
        pos = pos & (values >= allowed_pos_range[0]) & (values <= allowed_pos_range[1])
    if allowed_neg_range is not None:
        neg = neg & (values >= allowed_neg_range[0]) & (values <= allowed_neg_range[1])
    pos_largest = pos_strategy != "easy"  # hard and semihard positives: the farthest
    neg_largest = neg_strategy == "easy"  # easy negatives: the farthest
    if pos_strategy == "semihard":
        n_idx, n_val, n_ok = _pick_per_row(d, neg, neg_largest)
        p_idx, _, p_ok = _pick_per_row(d, pos & (d < n_val.unsqueeze(1)), True)
    elif neg_strategy == "semihard":
        p_idx, p_val, p_ok = _pick_per_row(d, pos, pos_largest)
        n_idx, _, n_ok = _pick_per_row(d, neg & (d > p_val.unsqueeze(1)), False)
    else:
        p_idx, _, p_ok = _pick_per_row(d, pos, pos_largest)
        n_idx, _, n_ok = _pick_per_row(d, neg, neg_largest)
    if "all" not in (pos_strategy, neg_strategy):
        a = (p_ok & n_ok).nonzero().flatten()
        return Triplets(a, p_idx[a], n_idx[a])
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = neg.nonzero(as_tuple=True)
    if pos_strategy != "all":
        a1 = p_ok.nonzero().flatten()
        p = p_idx[a1]
    if neg_strategy != "all":
        a2 = n_ok.nonzero().flatten()
        n = n_idx[a2]
    return Pairs(a1, p, a2, n)


def angular_triplets(gram: torch.Tensor, ref_gram: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                     angle: float, sq_norms: torch.Tensor | None = None,
                     chunk_elements: int = CHUNK_ELEMENTS) -> Triplets:
    """Angular mining (Wang et al., ICCV 2017, "Deep Metric Learning with Angular Loss"): every valid
    triplet whose angle at the negative exceeds ``angle`` (radians)::

        x_c = (x_a + x_p) / 2,     angle(a, p, n) = atan(||x_a - x_p|| / (2 ||x_n - x_c||))

    (the angle ``n'`` of the paper's triangle; the loss asks ``tan n' <= tan alpha``). ``gram``
    ``(B, R)`` holds ``x_a . x_r``, ``ref_gram`` ``(R, R)`` holds ``x_p . x_n`` (the same matrix when
    the reference set is the batch); ``sq_norms`` ``(B,)`` are the batch's squared norms (default:
    the diagonal of ``gram``, right when the reference set is the batch). Distances come from the
    Gram matrices (``||x_n - x_c||^2 = |x_n|^2 - x_n.(x_a + x_p) + |x_a + x_p|^2 / 4``), over chunks
    of positive pairs of at most ``chunk_elements`` entries: never a (B, R, R) tensor. A zero
    ``||x_n - x_c||`` gives an angle of pi/2 (0/0 gives no triplet), as pytorch-metric-learning's
    ``AngularMiner``. Triplets come out in lexicographic ``(a, p, n)`` order.
    """
    _check_masks(gram, "gram", pos_mask=pos_mask, neg_mask=neg_mask)
    g, h = gram.detach(), ref_gram.detach()
    sq_a = torch.diagonal(g) if sq_norms is None else sq_norms.detach()
    sq_ref = torch.diagonal(h)
    pair_a, pair_p = (pos_mask & neg_mask.any(dim=1, keepdim=True)).nonzero(as_tuple=True)
    if pair_a.numel() == 0:
        return _empty_triplets(gram.device)
    chunk = max(1, chunk_elements // max(g.shape[1], 1))
    out_a, out_p, out_n = [], [], []
    for start in range(0, pair_a.numel(), chunk):
        a, p = pair_a[start:start + chunk], pair_p[start:start + chunk]
        ap_dot = g[a, p]
        ap = (sq_a[a] + sq_ref[p] - 2 * ap_dot).clamp_min(0).sqrt()
        s = sq_a[a] + sq_ref[p] + 2 * ap_dot  # |x_a + x_p|^2
        nc = (sq_ref.unsqueeze(0) - (g[a] + h[p]) + (s / 4).unsqueeze(1)).clamp_min(0).sqrt()
        keep = (torch.atan(ap.unsqueeze(1) / (2 * nc)) > angle) & neg_mask[a]
        r, n = keep.nonzero(as_tuple=True)
        out_a.append(a[r])
        out_p.append(p[r])
        out_n.append(n)
    return Triplets(torch.cat(out_a), torch.cat(out_p), torch.cat(out_n))


def uniform_histogram_pairs(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, num_bins: int = 100,
                            pos_per_bin: int = 10, neg_per_bin: int = 10,
                            generator: torch.Generator | None = None) -> Pairs:
    """Uniform histogram mining (pytorch-metric-learning's ``UniformHistogramMiner``): pairs whose
    distances cover their range evenly.

    For each side (positive pairs, negative pairs) separately: cut ``[min D, max D]`` of that side's
    pairs into ``num_bins`` equal bins (``[e_k, e_{k+1})``, the last one closed) and draw
    ``pos_per_bin`` (or ``neg_per_bin``) pairs uniformly *with replacement* from each non-empty bin.
    Deterministic given ``generator``'s state. Pairs come out bin by bin (ascending distances).
    """
    _check_masks(dist, pos_mask=pos_mask, neg_mask=neg_mask)
    d = dist.detach()
    out = []
    for mask, k in ((pos_mask, pos_per_bin), (neg_mask, neg_per_bin)):
        rows, cols = mask.nonzero(as_tuple=True)
        if rows.numel() == 0:
            out += [rows, cols]
            continue
        values = d[rows, cols]
        edges = torch.linspace(float(values.min()), float(values.max()), num_bins + 1, dtype=d.dtype,
                               device=d.device)
        # bin k holds e_k <= v < e_{k+1}: the number of inner edges <= v (the last bin is closed)
        bins = torch.searchsorted(edges[1:num_bins].contiguous(), values.contiguous(), right=True)
        order = torch.argsort(bins, stable=True)
        counts = torch.bincount(bins, minlength=num_bins)
        starts = torch.cumsum(counts, 0) - counts
        full = (counts > 0).nonzero().flatten()
        draws = torch.rand(full.numel(), k, generator=generator, device=d.device, dtype=torch.float64) \
            * counts[full].unsqueeze(1)
        pick = order[(starts[full].unsqueeze(1) + draws.long().clamp_max(counts[full].unsqueeze(1) - 1)).reshape(-1)]
        out += [rows[pick], cols[pick]]
    return Pairs(*out)


# -- quadlets (hierarchical labels) ----------------------------------------------------------------

QUADLET_STRATEGIES = ("all", "hard", "semi-hard")


def _empty_quadlets(device) -> Quadlets:
    empty = empty_index(device)
    return Quadlets(empty, empty, empty, empty)


def sample_indices(total: int, cap: int | None, generator: torch.Generator | None = None,
                   device=None) -> torch.Tensor:
    """``arange(total)`` if ``cap`` is None or ``total <= cap``, else ``cap`` distinct indices of
    ``[0, total)`` drawn uniformly without replacement (deterministic given ``generator``), sorted.

    Memory ``O(cap)`` when ``total`` is much larger than ``cap`` (rejection of repeated draws),
    ``O(total)`` otherwise (a random permutation)."""
    if cap is None or total <= cap:
        return torch.arange(total, device=device)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if total <= max(4 * cap, 1 << 20):
        chosen = torch.randperm(total, generator=generator, device=gen_device)[:cap]
    else:
        chosen = torch.empty(0, dtype=torch.long, device=gen_device)
        while chosen.numel() < cap:
            extra = cap - chosen.numel() + cap // 8 + 16
            draw = torch.randint(total, (extra,), generator=generator, device=gen_device)
            chosen = torch.unique(torch.cat([chosen, draw]))
        chosen = chosen[torch.randperm(chosen.numel(), generator=generator, device=gen_device)[:cap]]
    return chosen.sort().values.to(device)


def _expand_ranges(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, columns: torch.Tensor,
                   cap: int | None, generator: torch.Generator | None):
    """Expand prefixes ``k`` (each with a query row ``rows[k]``) by the ranks ``lo[k] <= r < hi[k]``
    of that row's candidate list ``columns[rows[k], r]``: returns ``(prefix index, column)`` for every
    (prefix, rank), or for ``cap`` of them drawn uniformly without replacement. Memory is the output
    plus ``O(number of prefixes)``."""
    counts = (hi - lo).clamp_min(0)
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1]) if ends.numel() else 0
    flat = sample_indices(total, cap, generator, rows.device)
    prefix = torch.searchsorted(ends, flat, right=True)
    rank = lo[prefix] + flat - (ends[prefix] - counts[prefix])
    return prefix, columns[rows[prefix], rank]


def _columns_first(mask: torch.Tensor) -> torch.Tensor:
    """``(B, R)`` column indices with each row's marked columns first, in increasing order."""
    return torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices


def intermediate_triples(q: torch.Tensor, p: torch.Tensor, inter_mask: torch.Tensor):
    """The triples ``(q, p, i)`` of the pairs ``(q[k], p[k])`` with every intermediate ``i`` of their
    query (``inter_mask[q, i]``), in the pairs' order and then by column. Memory: the triples plus
    ``O(B R)``, never a ``(B, R, R)`` tensor."""
    prefix, i = _expand_ranges(q, torch.zeros_like(q), inter_mask.sum(dim=1)[q], _columns_first(inter_mask), None,
                               None)
    return q[prefix], p[prefix], i


def all_quadlets(pos_mask: torch.Tensor, inter_mask: torch.Tensor, neg_mask: torch.Tensor,
                 max_quadlets: int | None = None, generator: torch.Generator | None = None) -> Quadlets:
    """Every valid quadlet ``(q, p, i, n)``: ``pos_mask[q, p]``, ``inter_mask[q, i]``,
    ``neg_mask[q, n]`` (``(B, R)`` bool masks, see :func:`deepmetric.functional.hierarchical.hierarchy_masks`).

    Built from the positive pairs ``(q, p)``, each expanded by the intermediates of ``q`` and then by
    its negatives: memory is the triples and the output plus ``O(B R)``, never a ``(B, R, R)`` tensor.
    With ``max_quadlets``, at most that many,
    drawn uniformly without replacement (deterministic given ``generator``). Order: lexicographic
    ``(q, p, i, n)`` (of the kept ones).
    """
    _check_masks(pos_mask, "pos_mask", pos_mask=pos_mask, inter_mask=inter_mask, neg_mask=neg_mask)
    device = pos_mask.device
    q, p, i = intermediate_triples(*(pos_mask & neg_mask.any(dim=1, keepdim=True)).nonzero(as_tuple=True), inter_mask)
    if q.numel() == 0:
        return _empty_quadlets(device)
    n_neg = neg_mask.sum(dim=1)
    prefix, n = _expand_ranges(q, torch.zeros_like(q), n_neg[q], _columns_first(neg_mask), max_quadlets, generator)
    return Quadlets(q[prefix], p[prefix], i[prefix], n)


def all_triplets(pos_mask: torch.Tensor, neg_mask: torch.Tensor, max_triplets: int | None = None,
                 generator: torch.Generator | None = None) -> Triplets:
    """Every valid triplet ``(a, p, n)`` (``pos_mask[a, p]``, ``neg_mask[a, n]``), in lexicographic
    order; with ``max_triplets``, at most that many drawn uniformly without replacement. Memory: the
    output plus ``O(B R)``."""
    _check_masks(pos_mask, "pos_mask", pos_mask=pos_mask, neg_mask=neg_mask)
    device = pos_mask.device
    a, p = (pos_mask & neg_mask.any(dim=1, keepdim=True)).nonzero(as_tuple=True)
    if a.numel() == 0:
        return _empty_triplets(device)
    prefix, n = _expand_ranges(a, torch.zeros_like(a), neg_mask.sum(dim=1)[a], _columns_first(neg_mask), max_triplets,
                               generator)
    return Triplets(a[prefix], p[prefix], n)


def _members_by_distance(d: torch.Tensor, mask: torch.Tensor):
    """``(key, columns)``: each row's marked columns first, by increasing distance (ties, ``+inf``
    included, by column), then the others; ``key`` their distances, ``+inf`` for the others (sorted
    ascending, for binary search)."""
    key, columns = d.masked_fill(~mask, math.inf).sort(dim=1, stable=True)
    # a marked column at +inf may sort after an unmarked one of a smaller index: marked first
    order = (~mask.gather(1, columns)).to(torch.int8).sort(dim=1, stable=True).indices
    return key.gather(1, order), columns.gather(1, order)


def hard_quadlets(dist: torch.Tensor, pos_mask: torch.Tensor, inter_mask: torch.Tensor,
                  neg_mask: torch.Tensor) -> Quadlets:
    """Hardest quadlet of every positive pair ``(q, p)`` (``dist`` ascending, ``(B, R)``)::

        i* = argmin_{i in I(q)} D(q, i),      n* = argmin_{n in N(q)} D(q, n)

    the intermediate most likely to violate ``D(q,p) < D(q,i)`` and the negative most likely to
    violate ``D(q,i) < D(q,n)`` (both depend on ``q`` only). Pairs whose query has no intermediate or
    no negative give nothing. Ties: the smallest column. ``O(B R)`` memory; order: by ``(q, p)``.
    """
    _check_masks(dist, pos_mask=pos_mask, inter_mask=inter_mask, neg_mask=neg_mask)
    if dist.shape[1] == 0:
        return _empty_quadlets(dist.device)
    d = dist.detach()
    i_star = d.masked_fill(~inter_mask, math.inf).argmin(dim=1)
    n_star = d.masked_fill(~neg_mask, math.inf).argmin(dim=1)
    ok = inter_mask.any(dim=1) & neg_mask.any(dim=1)
    q, p = (pos_mask & ok.unsqueeze(1)).nonzero(as_tuple=True)
    return Quadlets(q, p, i_star[q], n_star[q])


def semi_hard_quadlets(dist: torch.Tensor, pos_mask: torch.Tensor, inter_mask: torch.Tensor,
                       neg_mask: torch.Tensor, margin1: float = 0.1, margin2: float = 0.2,
                       max_quadlets: int | None = None, generator: torch.Generator | None = None) -> Quadlets:
    """Semi-hard quadlets: valid quadlets that are correctly ordered but inside a margin::

        D(q,p) < D(q,i) < D(q,n)   and   (D(q,i) < D(q,p) + m1   or   D(q,n) < D(q,i) + m2)

    (``dist`` ascending, ``(B, R)``). For a triple ``(q, p, i)`` with ``D(q,p) < D(q,i)``, the
    qualifying negatives are those with ``D(q,n)`` in ``(D(q,i), inf)`` if the first margin is
    violated, else in ``(D(q,i), D(q,i) + m2)``: a contiguous range of the row's negatives sorted by
    distance, found by binary search; the intermediates with ``D(q,i) > D(q,p)`` are such a range of
    the row's intermediates. Memory: the triples and the output plus ``O(B R)``, never a ``(B, R, R)``
    tensor. ``max_quadlets`` caps the output as in :func:`all_quadlets`. Order: by ``(q, p)``, then
    intermediates and negatives by increasing distance (ties by column).
    """
    _check_masks(dist, pos_mask=pos_mask, inter_mask=inter_mask, neg_mask=neg_mask)
    device = dist.device
    if dist.shape[1] == 0:
        return _empty_quadlets(device)
    d = dist.detach()
    key, columns = _members_by_distance(d, neg_mask)
    n_neg = neg_mask.sum(dim=1)
    lo = torch.searchsorted(key, d.contiguous(), right=True)                      # first n with D(q,n) > D(q,i)
    hi = torch.searchsorted(key, (d + margin2).contiguous(), right=False)         # D(q,n) < D(q,i) + m2
    i_key, i_columns = _members_by_distance(d, inter_mask)
    lo_i = torch.searchsorted(i_key, d.contiguous(), right=True)                  # first i with D(q,i) > D(q,p)
    q, p = pos_mask.nonzero(as_tuple=True)
    prefix, i = _expand_ranges(q, lo_i[q, p], inter_mask.sum(dim=1)[q], i_columns, None, None)
    q, p = q[prefix], p[prefix]
    if q.numel() == 0:
        return _empty_quadlets(device)
    d_qp, d_qi = d[q, p], d[q, i]
    first_violated = d_qi < d_qp + margin1
    hi_t = torch.where(first_violated, n_neg[q], torch.minimum(hi[q, i], n_neg[q]))
    prefix, n = _expand_ranges(q, lo[q, i], hi_t, columns, max_quadlets, generator)
    return Quadlets(q[prefix], p[prefix], i[prefix], n)
