"""Verification metrics over pairs, as face and speaker verification report them.

Each pair ``i`` has a distance ``d_i`` (smaller = more similar, DESIGN.md) and a truth ``is_same_i``.
At threshold ``t`` a pair is declared "same" when ``d_i <= t``. Over the ``P`` same pairs and ``N``
different pairs:

* true accept rate ``TAR(t) = #{same, d <= t} / P`` (= true positive rate, 1 - FRR);
* false accept rate ``FAR(t) = #{different, d <= t} / N`` (= false positive rate);
* accuracy ``ACC(t) = (#{same, d <= t} + #{different, d > t}) / (P + N)``.

The ROC curve, its AUC, the EER and TAR@FAR need both same and different pairs and raise otherwise;
accuracy is defined for any pairs. ``kfold_accuracy`` is the LFW protocol (Huang et al. 2007,
"Labeled Faces in the Wild"): 10 folds, the threshold chosen on nine, the accuracy measured on the
tenth.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from deepmetric._checks import as_tensor, check_embeddings, check_int, warn
from deepmetric.distances import check_distance

__all__ = ["roc_curve", "roc_auc", "eer", "tar_at_far", "best_threshold", "kfold_accuracy",
           "pair_distances", "verification_scores"]


def _as_tensor(x, name: str) -> torch.Tensor:
    return as_tensor(x, name).detach()


def _check_pairs(distances, is_same) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n,)`` float64 finite distances and ``(n,)`` bool truths, on the CPU."""
    distances, is_same = _as_tensor(distances, "distances"), _as_tensor(is_same, "is_same")
    if distances.dim() != 1 or distances.numel() == 0:
        raise ValueError(f"distances: expected a non-empty 1-D array (one distance per pair), got shape "
                         f"{tuple(distances.shape)}")
    if distances.dtype == torch.bool or distances.is_complex():
        raise TypeError(f"distances: expected real distances, got {distances.dtype}")
    distances = distances.cpu().double()
    if not torch.isfinite(distances).all():
        bad = (~torch.isfinite(distances)).nonzero().flatten()[:5].tolist()
        raise ValueError(f"distances: contains NaN or infinite values (first bad pairs: {bad})")
    if is_same.shape != distances.shape:
        raise ValueError(f"is_same: expected shape {tuple(distances.shape)} to match distances, "
                         f"got {tuple(is_same.shape)}")
    if is_same.dtype != torch.bool:
        if is_same.is_floating_point() or is_same.is_complex():
            raise TypeError(f"is_same: expected bool or 0/1 integers, got {is_same.dtype}")
        if not ((is_same == 0) | (is_same == 1)).all():
            raise ValueError(f"is_same: expected bool or 0/1 integers, got values {torch.unique(is_same)[:5].tolist()}")
    return distances, is_same.cpu().bool()


def _sorted_counts(distances: torch.Tensor, is_same: torch.Tensor):
    """Distinct distances ``t_1 < ... < t_m`` and, for each, the numbers of same and different pairs
    with ``d <= t_j`` (cumulative counts at the last pair of each run of equal distances)."""
    d, order = torch.sort(distances, stable=True)
    same = is_same[order].long()
    last = torch.ones_like(d, dtype=torch.bool)
    last[:-1] = d[1:] != d[:-1]
    idx = last.nonzero().flatten()
    tps = same.cumsum(0)[idx]
    return d[idx], tps, idx + 1 - tps


def _need_both(n_same: int, n_diff: int, what: str):
    if n_same == 0 or n_diff == 0:
        kind = "different" if n_diff == 0 else "same"
        raise ValueError(f"is_same: {what} needs both same and different pairs, got no {kind} pair")


def roc_curve(distances, is_same) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ROC curve ``(far, tar, thresholds)`` over every distinct threshold, as float64 tensors.

    Point 0 is ``t = -inf`` (no pair accepted, FAR = TAR = 0); point ``j >= 1`` is the ``j``-th
    smallest distinct distance ``t_j``, accepting pairs with ``d <= t_j``::

        FAR(t) = #{different, d <= t} / N,    TAR(t) = #{same, d <= t} / P

    This is ``sklearn.metrics.roc_curve(is_same, -distances, drop_intermediate=False)`` with the
    thresholds negated back into distances.

    >>> far, tar, t = roc_curve(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1, 0, 1, 0]))
    >>> far.tolist(), tar.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    distances, is_same = _check_pairs(distances, is_same)
    n_same = int(is_same.sum())
    n_diff = is_same.numel() - n_same
    _need_both(n_same, n_diff, "the ROC curve")
    thresholds, tps, fps = _sorted_counts(distances, is_same)
    zero = torch.zeros(1, dtype=torch.float64)
    far = torch.cat([zero, fps.double() / n_diff])
    tar = torch.cat([zero, tps.double() / n_same])
    return far, tar, torch.cat([torch.full((1,), -math.inf, dtype=torch.float64), thresholds])


def roc_auc(distances, is_same) -> float:
    """Area under the ROC curve, ``int TAR d(FAR)`` by the trapezoidal rule over :func:`roc_curve`.

    Equals the probability that a random same pair is closer than a random different pair, ties
    counting one half (the Mann-Whitney U statistic divided by ``P N``).

    >>> roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1, 0, 1, 0]))
    0.75
    """
    far, tar, _ = roc_curve(distances, is_same)
    return float(torch.trapezoid(tar, far))


def eer(distances, is_same) -> float:
    """Equal error rate: the FAR where ``FAR = FRR = 1 - TAR`` on the ROC curve.

    ``FAR - FRR`` increases strictly along :func:`roc_curve` from -1 to 1; the EER is where the
    segment between the two points around its sign change crosses ``FAR = FRR``, linearly
    interpolated: with ``g_j = FAR_j - FRR_j``, ``g_{j-1} < 0 <= g_j`` and
    ``alpha = -g_{j-1} / (g_j - g_{j-1})``, ``EER = FAR_{j-1} + alpha (FAR_j - FAR_{j-1})``.

    >>> eer(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1, 0, 1, 0]))
    0.5
    """
    far, tar, _ = roc_curve(distances, is_same)
    gap = far - (1.0 - tar)
    j = int((gap >= 0).nonzero()[0])  # j >= 1: gap[0] = -1 and gap[-1] = 1
    alpha = -gap[j - 1] / (gap[j] - gap[j - 1])
    return float(far[j - 1] + alpha * (far[j] - far[j - 1]))


def tar_at_far(distances, is_same, far: float) -> float:
    """TAR@FAR: the largest TAR over thresholds whose FAR is at most ``far``, ``max {TAR(t): FAR(t) <= far}``.

    >>> tar_at_far(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1, 0, 1, 0]), far=0.0)
    0.5
    """
    if isinstance(far, bool) or not isinstance(far, (int, float, np.floating, np.integer)) or not 0 <= far <= 1:
        raise ValueError(f"far: expected a number in [0, 1], got {far!r}")
    fars, tars, _ = roc_curve(distances, is_same)
    return float(tars[fars <= far].max())


def _best(thresholds: torch.Tensor, tps: torch.Tensor, fps: torch.Tensor, n_same: int, n_total: int):
    """Accuracy-maximising threshold (smallest on ties) among ``-inf`` and ``thresholds``."""
    n_diff = n_total - n_same
    correct = torch.cat([torch.tensor([n_diff]), tps + (n_diff - fps)])
    j = int(torch.argmax(correct))  # first maximum: the smallest threshold
    threshold = -math.inf if j == 0 else float(thresholds[j - 1])
    return threshold, float(correct[j]) / n_total


def best_threshold(distances, is_same) -> tuple[float, float]:
    """``(threshold, accuracy)`` maximising ``ACC(t) = (#{same, d <= t} + #{different, d > t}) / n``.

    Candidates are ``-inf`` (every pair declared different) and every distinct distance; on ties
    the smallest threshold wins. Defined for any pairs, also all same or all different.

    >>> best_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, True]))
    (0.2, 0.75)
    """
    distances, is_same = _check_pairs(distances, is_same)
    return _best(*_sorted_counts(distances, is_same), int(is_same.sum()), is_same.numel())


def kfold_accuracy(distances, is_same, n_folds: int = 10, folds=None) -> dict:
    """Verification accuracy by k-fold cross-validation of the threshold (LFW protocol, Huang et al. 2007).

    For each fold ``k``: ``t_k`` = :func:`best_threshold` on the pairs of the other folds, and
    ``acc_k = ACC(t_k)`` on the pairs of fold ``k``. Folds are ``n_folds`` contiguous blocks of the
    pairs in their order (as in LFW's ``pairs.txt``; sizes differ by at most one), unless ``folds``
    gives a fold id per pair (then ``n_folds`` is ignored and folds come in the order of their
    sorted ids). Contiguous folds that hold only one kind of pair where a random order of the pairs
    would almost never give that (pairs sorted by ``is_same``) are warned about.

    Returns ``{"accuracy": mean_k acc_k, "accuracy_std": std_k acc_k (population, ddof=0, as most
    face-verification code prints it), "accuracy_se": the standard error of the mean that LFW's
    protocol asks to report, sqrt(sum_k (acc_k - mean)^2 / (K - 1)) / sqrt(K), "thresholds": (K,)
    tensor t_k, "accuracies": (K,) tensor acc_k}``.
    """
    distances, is_same = _check_pairs(distances, is_same)
    n = distances.numel()
    if folds is None:
        n_folds = check_int(n_folds, "n_folds", 2, n, " (the number of pairs)")
        sizes = [n // n_folds + (1 if k < n % n_folds else 0) for k in range(n_folds)]
        fold_ids = torch.repeat_interleave(torch.arange(n_folds), torch.tensor(sizes))
    else:
        fold_ids = _as_tensor(folds, "folds")
        if fold_ids.shape != distances.shape:
            raise ValueError(f"folds: expected shape {tuple(distances.shape)} (a fold id per pair), "
                             f"got {tuple(fold_ids.shape)}")
        if fold_ids.is_floating_point() or fold_ids.is_complex() or fold_ids.dtype == torch.bool:
            raise TypeError(f"folds: expected integer fold ids, got {fold_ids.dtype}")
        _, fold_ids = torch.unique(fold_ids.cpu(), return_inverse=True)
        if int(fold_ids.max()) < 1:
            raise ValueError("folds: expected at least two distinct fold ids, got one")
    if folds is None:  # folds of one kind that random order would almost never give: sorted pairs
        counts = torch.zeros(n_folds, 2, dtype=torch.float64).index_put_(
            (fold_ids, is_same.long()), torch.ones(n, dtype=torch.float64), accumulate=True)
        p = float(is_same.double().mean())
        chance = torch.where(counts.count_nonzero(1) < 2, p ** counts.sum(1) + (1 - p) ** counts.sum(1), 1.0)
        if float(chance.min()) < 1e-3:
            warn(f"is_same: folds {(chance < 1e-3).nonzero().flatten().tolist()} of the {n_folds} "
                 "contiguous folds hold only same or only different pairs, which a random order gives "
                 "with probability below 0.001 (are the pairs sorted by is_same?); each threshold is "
                 "then chosen on a skewed mix. LFW's folds hold both kinds: shuffle the pairs or pass "
                 "folds=")
    thresholds, accuracies = [], []
    for k in range(int(fold_ids.max()) + 1):
        test = fold_ids == k
        t, _ = best_threshold(distances[~test], is_same[~test])
        thresholds.append(t)
        accuracies.append(float(((distances[test] <= t) == is_same[test]).double().mean()))
    accuracies = torch.tensor(accuracies, dtype=torch.float64)
    k = accuracies.numel()
    return {"accuracy": float(accuracies.mean()), "accuracy_std": float(accuracies.std(correction=0)),
            "accuracy_se": float(accuracies.std(correction=1)) / math.sqrt(k),
            "thresholds": torch.tensor(thresholds, dtype=torch.float64), "accuracies": accuracies}


def pair_distances(a: torch.Tensor, b: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """``(n,)`` distance between ``a_i`` and ``b_i`` for each row, ascending in dissimilarity.

    The definitions of :mod:`deepmetric.distances`: ``euclidean`` ``||a_i - b_i||``,
    ``squared_euclidean`` ``||a_i - b_i||^2``, ``cosine`` ``1 - cos(a_i, b_i)`` (a zero vector has
    cosine 0), and ``dot`` as its negative ``-a_i.b_i`` (DESIGN.md: dot ranks as its negative).
    Computed in at least float32 (cosine so that rows normalising to the same vector, e.g. a row and
    itself, tie at exactly 0): half-precision arithmetic would round the distances into a few hundred
    distinct values (ties that move TAR@FAR) and overflow the squares.

    >>> pair_distances(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]]))
    tensor([5.])
    """
    a, b = check_embeddings(a, "a"), check_embeddings(b, "b")
    if b.shape != a.shape:
        raise ValueError(f"b: expected shape {tuple(a.shape)} to match a (one row per pair), got {tuple(b.shape)}")
    distance = check_distance(distance)
    dtype = torch.promote_types(a.dtype, torch.promote_types(b.dtype, torch.float32))
    a, b = a.to(dtype), b.to(dtype)
    if distance == "euclidean":
        return (a - b).norm(dim=1)
    if distance == "squared_euclidean":
        return (a - b).pow(2).sum(1)
    if distance == "cosine":  # |u - v|^2 / 2 of the unit rows u, v (in float64, rounded to the inputs' dtype, so
        # that equal unit rows give exactly 0, not float32 noise); rows shorter than 1e-12 as l2_normalize: 1 - u.v
        norm_a, norm_b = a.double().norm(dim=1, keepdim=True), b.double().norm(dim=1, keepdim=True)
        u = (a.double() / norm_a.clamp_min(1e-12)).to(dtype).double()
        v = (b.double() / norm_b.clamp_min(1e-12)).to(dtype).double()
        unit = ((norm_a >= 1e-12) & (norm_b >= 1e-12)).squeeze(1)
        return torch.where(unit, (u - v).pow(2).sum(1) / 2, 1 - (u * v).sum(1)).to(dtype)
    return -(a * b).sum(1)


def verification_scores(a: torch.Tensor, b: torch.Tensor, is_same, distance: str = "euclidean",
                        fars=(1e-3, 1e-2, 1e-1), n_folds: int = 10) -> dict:
    """Every verification metric of the pairs ``(a_i, b_i)`` as a dict of python floats.

    Keys: ``roc_auc``, ``eer``, ``tar_at_far_{far}`` for each ``far`` in ``fars`` (formatted with
    ``{far:g}``, e.g. ``tar_at_far_0.001``), ``accuracy``, ``accuracy_std`` and ``accuracy_se``
    (:func:`kfold_accuracy` with ``n_folds`` contiguous folds) and ``threshold``
    (:func:`best_threshold` over all pairs, the threshold to deploy).
    """
    if isinstance(fars, (str, bytes)) or not hasattr(fars, "__iter__"):
        raise TypeError(f"fars: expected a sequence of FARs in [0, 1], e.g. (1e-3, 1e-2), got {fars!r}")
    fars = list(fars)
    for value in fars:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not 0 <= value <= 1:
            raise ValueError(f"fars: expected numbers in [0, 1], got {value!r}")
    keys = [f"tar_at_far_{value:g}" for value in fars]
    if len(set(keys)) != len(keys):
        raise ValueError(f"fars: {fars} holds values that share a key ({', '.join(keys)}); give each FAR once")
    distances = pair_distances(a, b, distance)
    distances, is_same = _check_pairs(distances, is_same)
    scores = {"roc_auc": roc_auc(distances, is_same), "eer": eer(distances, is_same)}
    for key, value in zip(keys, fars):
        scores[key] = tar_at_far(distances, is_same, value)
    folds = kfold_accuracy(distances, is_same, n_folds=n_folds)
    for key in ("accuracy", "accuracy_std", "accuracy_se"):
        scores[key] = folds[key]
    scores["threshold"] = best_threshold(distances, is_same)[0]
    return scores
