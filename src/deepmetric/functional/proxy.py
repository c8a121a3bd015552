"""Proxy, classification and centre losses as pure tensor functions (the math behind
:mod:`deepmetric.losses.proxy`), in the manner of ``torch.nn.functional.linear``.

Each function takes the embeddings ``x`` (``(B, D)``), the learnable class parameters (proxies,
class weights or centres: ``(C, D)``, or ``(C * K, D)`` with ``K`` rows per class, row ``c * K + k``
the ``k``-th of class ``c``), ``labels``, a ``(B,)`` int64 tensor of class ids in ``0..C-1``, and
hyper-parameters, and returns a scalar. Labels are assumed valid here; the modules check them.

The work is one ``(B, D) x (D, C * K)`` matrix product plus element-wise passes over its result:
scales fold into the ``(C * K, D)`` normalised weights, and margins touch only the ``B`` target
entries (gathered and scattered back, no ``(B, C)`` mask). Nothing allocates more than
``O(B * C * K)``. With an empty batch every function returns a zero that is still connected to the
graph of its inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deepmetric.distances import l2_normalize
from deepmetric.functional.hierarchical import check_reduction


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy over the rows of ``logits`` (a connected ``0`` for no rows)."""
    return F.cross_entropy(logits, labels, reduction="sum") / max(logits.shape[0], 1)


def scaled_cosine(x: torch.Tensor, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``(B, C)`` matrix ``scale * cos(x_i, w_j)``; the scale multiplies the ``(C, D)`` normalised
    weights, not the ``(B, C)`` result (cheaper when ``C * D < B * C``)."""
    return l2_normalize(x) @ (l2_normalize(weight) * scale).T


def _replace_targets(logits: torch.Tensor, labels: torch.Tensor, fn) -> torch.Tensor:
    """``logits`` with each row's target entry ``z`` replaced by ``fn(z)``: ``B`` gathered values,
    one out-of-place scatter (no ``(B, C)`` mask)."""
    index = labels.unsqueeze(1)
    return logits.scatter(1, index, fn(logits.gather(1, index)))


def log1p_sum_exp(z: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(1 + sum_{mask} exp(z))`` along ``dim``, stable, with zero (never NaN) gradients at the
    entries outside ``mask`` and ``0`` where the mask is empty."""
    if z.shape[dim] == 0:
        return z.sum(dim=dim) * 0
    z = z.masked_fill(~mask, -math.inf)
    return _log1p_sum_exp(z, dim)


def _log1p_sum_exp(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(1 + sum exp(z))`` along ``dim`` (entries of ``-inf`` count as absent)."""
    top = z.amax(dim=dim, keepdim=True).clamp_min(0).detach()
    return (top + torch.log(torch.exp(-top) + torch.exp(z - top).sum(dim=dim, keepdim=True))).squeeze(dim)


def proxy_nca_loss(x: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, softmax_scale: float = 1.0,
                   distance: str = "cosine") -> torch.Tensor:
    """Proxy-NCA (Movshovitz-Attias, Toshev, Leung, Ioffe, Singh, ICCV 2017, "No Fuss Distance
    Metric Learning using Proxies"), as pytorch-metric-learning's ``ProxyNCALoss`` computes it::

        L = mean_x -log( exp(-s d(x, p(y))) / sum_{z in Z} exp(-s d(x, p(z))) )

    ``proxies`` is ``(C, D)``, ``s = softmax_scale``; ``d`` is ``||x/|x| - p/|p| ||^2 = 2 - 2 cos``
    (``distance="cosine"``) or ``||x - p||^2`` (``"squared_euclidean"``). The denominator runs over
    every proxy, the positive one included (a softmax cross-entropy); the paper's denominator leaves
    it out (``Z \\ {y}``). Terms constant along a row cancel in the softmax, so the logits are
    ``2 s cos(x, p)``, or ``2 s x^T p - s |p|^2``: one matrix product.
    """
    if distance == "cosine":
        logits = scaled_cosine(x, proxies, 2.0 * softmax_scale)
    elif distance == "squared_euclidean":
        logits = torch.addmm(-softmax_scale * proxies.pow(2).sum(1), x, proxies.T, alpha=2.0 * softmax_scale)
    else:
        raise ValueError(f"distance: expected cosine or squared_euclidean, got {distance!r}")
    return _cross_entropy(logits, labels)


def proxy_anchor_loss(x: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, margin: float = 0.1,
                      alpha: float = 32.0) -> torch.Tensor:
    """Proxy-anchor loss (Kim, Kim, Cho, Kwak, CVPR 2020, "Proxy Anchor Loss for Deep Metric
    Learning")::

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

    ``s`` is the cosine similarity to the ``(C, D)`` ``proxies``, ``P+`` the proxies with a positive
    in the batch, ``X_p+`` / ``X_p-`` the batch items of / not of proxy ``p``'s class,
    ``delta = margin``. The positive part touches only the ``B`` target similarities (gathered, then
    summed per class with ``index_add``); the negative part is a column reduction of the ``(B, C)``
    matrix with the targets set to ``-inf``.
    """
    n_classes = proxies.shape[0]
    z = scaled_cosine(x, proxies, alpha)  # alpha * s
    index = labels.unsqueeze(1)
    pos = (alpha * margin - z.gather(1, index)).squeeze(1)  # -alpha (s - delta), one per item
    top = torch.zeros(n_classes, dtype=z.dtype, device=z.device).scatter_reduce(
        0, labels, pos.detach(), reduce="amax", include_self=True)  # max(0, max_i) per class
    sums = torch.zeros_like(top).index_add(0, labels, torch.exp(pos - top[labels]))
    pos_term = top + torch.log(torch.exp(-top) + sums)
    n_with_pos = torch.zeros(n_classes, dtype=torch.bool, device=z.device).index_fill(0, labels, True).sum()
    neg = (z + alpha * margin).scatter(1, index, -math.inf)
    neg_term = _log1p_sum_exp(neg, dim=0) if z.shape[0] else z.sum(0) * 0
    return pos_term.sum() / n_with_pos.clamp_min(1) + neg_term.sum() / max(n_classes, 1)


def normalized_softmax_loss(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                            temperature: float = 0.05) -> torch.Tensor:
    """Normalized softmax (Zhai, Wu, BMVC 2019, "Classification is a Strong Baseline for Deep Metric
    Learning")::

        L = mean_i -log( exp(x_i^T p_{y_i} / sigma) / sum_{j=1}^{C} exp(x_i^T p_j / sigma) )

    with ``x_i`` and the class weights ``p_j`` (rows of ``weight``, ``(C, D)``) L2-normalised and
    ``sigma = temperature``.
    """
    return _cross_entropy(scaled_cosine(x, weight, 1.0 / temperature), labels)


def cosface_loss(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, margin: float = 0.35,
                 scale: float = 64.0) -> torch.Tensor:
    """CosFace / large margin cosine loss (Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu, CVPR 2018)::

        L = mean_i -log( e^{s (cos(theta_{y_i,i}) - m)} / (e^{s (cos(theta_{y_i,i}) - m)}
                                                         + sum_{j != y_i} e^{s cos(theta_{j,i})}) )

    ``theta_{j,i}`` is the angle between ``x_i`` and row ``j`` of ``weight`` (``(C, D)``),
    ``m = margin``, ``s = scale``.
    """
    logits = _replace_targets(scaled_cosine(x, weight, scale), labels, lambda z: z - scale * margin)
    return _cross_entropy(logits, labels)


def arcface_target(cos: torch.Tensor, margin: float) -> torch.Tensor:
    """ArcFace's target logit for target cosines ``cos``: ``cos(theta + m)`` where
    ``theta <= pi - m``, else ``cos(theta) - m sin(m)`` (the fallback of InsightFace and
    pytorch-metric-learning that keeps it decreasing in ``theta``).

    ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)`` with ``sin(theta) = sqrt(1 - cos^2)``
    clamped to at least ``sqrt(eps)`` of the dtype, so the gradient stays finite at ``cos = +-1``
    (``acos`` would give inf).
    """
    c = cos.clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - c * c).clamp_min(torch.finfo(cos.dtype).eps))
    return torch.where(c >= -math.cos(margin), c * math.cos(margin) - sin * math.sin(margin),
                       c - margin * math.sin(margin))


def arcface_loss(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, margin: float = 0.5,
                 scale: float = 64.0, sub_centers: int = 1) -> torch.Tensor:
    """ArcFace / additive angular margin loss (Deng, Guo, Xue, Zafeiriou, CVPR 2019)::

        L = mean_i -log( e^{s cos(theta_{y_i} + m)} / (e^{s cos(theta_{y_i} + m)}
                                                      + sum_{j != y_i} e^{s cos(theta_j)}) )

    ``theta_j`` is the angle between ``x_i`` and class ``j``'s weight, ``m = margin`` in radians,
    ``s = scale``; the target logit is :func:`arcface_target`. With ``sub_centers = K > 1``
    (sub-center ArcFace, Deng, Guo, Liu, Zafeiriou, Yang, ECCV 2020), ``weight`` is ``(C * K, D)``,
    row ``j * K + k`` sub-centre ``k`` of class ``j``, and ``cos(theta_j) = max_k cos(x_i, W_{j,k})``.
    """
    logits = scaled_cosine(x, weight, scale)
    if sub_centers > 1:
        logits = logits.view(logits.shape[0], logits.shape[1] // sub_centers, sub_centers).max(dim=2).values
    logits = _replace_targets(logits, labels, lambda z: scale * arcface_target(z / scale, margin))
    return _cross_entropy(logits, labels)


def soft_triple_loss(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, centers_per_class: int = 10,
                     la: float = 20.0, gamma: float = 0.1, margin: float = 0.01) -> torch.Tensor:
    """SoftTriple loss (Qian, Shang, Sun, Hu, Li, Jin, ICCV 2019, "SoftTriple Loss: Deep Metric
    Learning Without Triplet Sampling"), without the centre regulariser
    (:func:`soft_triple_regularizer`)::

        S'_{i,c} = sum_k  exp(x_i^T w_c^k / gamma) / sum_k' exp(x_i^T w_c^k' / gamma)  x_i^T w_c^k
        L = mean_i -log( exp(lambda (S'_{i,y_i} - delta)) / (exp(lambda (S'_{i,y_i} - delta))
                                                             + sum_{j != y_i} exp(lambda S'_{i,j})) )

    ``x_i`` and the centres (rows of ``centers``, ``(C * K, D)``, row ``c * K + k`` centre ``k`` of
    class ``c``) are L2-normalised, ``K = centers_per_class``, ``lambda = la``, ``delta = margin``.
    The similarities are computed once, scaled by ``1 / gamma`` (``S' = gamma sum_k softmax_k(z) z``
    with ``z = x^T w / gamma``); the largest tensor is ``(B, C * K)``. ``gamma < 0.025`` shifts each
    softmax by its maximum, larger ones by the bound ``1 / gamma``.
    """
    z = scaled_cosine(x, centers, 1.0 / gamma)
    z = z.view(z.shape[0], z.shape[1] // centers_per_class, centers_per_class)
    # softmax over the K centres by hand (faster than torch.softmax on a short last dimension):
    # |z| <= 1 / gamma, so shifting by 1 / gamma cannot overflow, nor underflow while 2 / gamma < 80.
    shift = 1.0 / gamma if gamma >= 0.025 else z.detach().amax(dim=2, keepdim=True)
    e = torch.exp(z - shift)
    soft = (e * z).sum(dim=2) / e.sum(dim=2)  # S' / gamma
    logits = _replace_targets(soft * (la * gamma), labels, lambda t: t - la * margin)
    return _cross_entropy(logits, labels)


def soft_triple_regularizer(centers: torch.Tensor, centers_per_class: int) -> torch.Tensor:
    """SoftTriple's centre regulariser (its eq. 11), which merges redundant centres of a class::

        R = sum_c sum_{t < s} sqrt(2 + 1e-5 - 2 w_c^t^T w_c^s) / (C K (K - 1))

    ``centers`` is ``(C * K, D)`` (rows L2-normalised by the caller); ``1e-5`` is the constant of the
    authors' code, which keeps the gradient finite for equal centres. Computed per class: a
    ``(C, K, K)`` tensor. ``0`` when ``K = 1``.
    """
    k = centers_per_class
    if k < 2:
        return centers.sum() * 0
    w = centers.view(-1, k, centers.shape[1])
    gram = torch.bmm(w, w.transpose(1, 2))
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=centers.device), diagonal=1)
    return torch.sqrt(2.0 + 1e-5 - 2.0 * gram[:, upper]).sum() / (w.shape[0] * k * (k - 1))


def center_loss(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Centre loss (Wen, Zhang, Li, Qiao, ECCV 2016, "A Discriminative Feature Learning Approach for
    Deep Face Recognition")::

        L_C = 1/2 sum_{i=1}^{m} ||x_i - c_{y_i}||_2^2

    ``reduction="sum"`` is the paper's sum over the mini-batch; ``"mean"`` divides it by ``m``.
    ``centers`` is ``(C, D)``; the gather ``centers[labels]`` is ``(B, D)``.
    """
    check_reduction(reduction)
    total = 0.5 * ((x - centers[labels]) ** 2).sum()
    return total if reduction == "sum" else total / max(x.shape[0], 1)
