"""Proxy, classification and centre losses as pure tensor functions (the math behind
:mod:`deepmetric.losses.proxy`).

Each function takes a ``(B, C)`` matrix between the batch and the ``C`` classes' proxies (a distance
or a cosine similarity, computed by the module from its learnable parameters) and ``labels``, a
``(B,)`` int64 tensor of class ids in ``0..C-1``, plus hyper-parameters, and returns a scalar. Labels
are assumed valid here; the modules check them.

Nothing allocates more than ``O(B * C * K)`` (``K`` sub-centres per class). With an empty batch every
function returns a zero that is still connected to the graph of its input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _mean(losses: torch.Tensor) -> torch.Tensor:
    """Mean of a 1-D tensor of per-sample losses; a zero connected to the graph when it is empty."""
    return losses.sum() / max(losses.numel(), 1)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy over the rows of ``logits`` (``0`` for no rows)."""
    return _mean(F.cross_entropy(logits, labels, reduction="none"))


def _target_mask(sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` bool mask, True at ``(i, labels[i])``."""
    return F.one_hot(labels, sim.shape[1]).bool()


def log1p_sum_exp(z: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(1 + sum_{mask} exp(z))`` along ``dim``, stable, with zero (never NaN) gradients at the
    entries outside ``mask`` and ``0`` where the mask is empty."""
    if z.shape[dim] == 0:
        return z.sum(dim=dim) * 0
    z = z.masked_fill(~mask, -math.inf)
    top = z.amax(dim=dim, keepdim=True).clamp_min(0).detach()
    return (top + torch.log(torch.exp(-top) + torch.exp(z - top).sum(dim=dim, keepdim=True))).squeeze(dim)


def proxy_nca_loss(dist: torch.Tensor, labels: torch.Tensor, softmax_scale: float = 1.0) -> torch.Tensor:
    """Proxy-NCA (Movshovitz-Attias, Toshev, Leung, Ioffe, Singh, ICCV 2017, "No Fuss Distance
    Metric Learning using Proxies"), as pytorch-metric-learning's ``ProxyNCALoss`` computes it::

        L = mean_x -log( exp(-s d(x, p(y))) / sum_{z in Z} exp(-s d(x, p(z))) )

    ``dist`` is the ``(B, C)`` matrix ``d(x, p(z))`` to the proxies, ``s = softmax_scale``. The
    denominator runs over every proxy, the positive one included (a softmax cross-entropy); the
    paper's denominator leaves it out (``Z \\ {y}``).
    """
    return _cross_entropy(-softmax_scale * dist, labels)


def proxy_anchor_loss(sim: torch.Tensor, labels: torch.Tensor, margin: float = 0.1,
                      alpha: float = 32.0) -> torch.Tensor:
    """Proxy-anchor loss (Kim, Kim, Cho, Kwak, CVPR 2020, "Proxy Anchor Loss for Deep Metric
    Learning")::

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

    ``sim`` is the ``(B, C)`` cosine similarity ``s(x, p)``; ``P+`` the proxies with a positive in
    the batch, ``X_p+`` / ``X_p-`` the batch items of / not of proxy ``p``'s class, ``delta = margin``.
    """
    pos = _target_mask(sim, labels)
    pos_term = log1p_sum_exp(-alpha * (sim - margin), pos, dim=0)
    neg_term = log1p_sum_exp(alpha * (sim + margin), ~pos, dim=0)
    n_with_pos = pos.any(dim=0).sum().clamp_min(1)
    return pos_term.sum() / n_with_pos + neg_term.sum() / max(sim.shape[1], 1)


def normalized_softmax_loss(cos: torch.Tensor, labels: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Normalized softmax (Zhai, Wu, BMVC 2019, "Classification is a Strong Baseline for Deep Metric
    Learning")::

        L = mean_i -log( exp(x_i^T p_{y_i} / sigma) / sum_{j=1}^{C} exp(x_i^T p_j / sigma) )

    with ``x_i`` and ``p_j`` L2-normalised (``cos`` is their ``(B, C)`` cosine similarity) and
    ``sigma = temperature``.
    """
    return _cross_entropy(cos / temperature, labels)


def cosface_loss(cos: torch.Tensor, labels: torch.Tensor, margin: float = 0.35, scale: float = 64.0) -> torch.Tensor:
    """CosFace / large margin cosine loss (Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu, CVPR 2018)::

        L = mean_i -log( e^{s (cos(theta_{y_i,i}) - m)} / (e^{s (cos(theta_{y_i,i}) - m)}
                                                         + sum_{j != y_i} e^{s cos(theta_{j,i})}) )

    ``cos`` is the ``(B, C)`` matrix ``cos(theta_{j,i})``, ``m = margin``, ``s = scale``.
    """
    logits = cos - margin * _target_mask(cos, labels).to(cos.dtype)
    return _cross_entropy(scale * logits, labels)


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """The ``(B, C)`` cosines with ArcFace's additive angular margin on the target class:
    ``cos(theta + m)`` where ``theta <= pi - m``, else ``cos(theta) - m sin(m)`` (the fallback of
    InsightFace and pytorch-metric-learning that keeps the target logit decreasing in ``theta``).

    ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)`` with ``sin(theta) = sqrt(1 - cos^2)``
    clamped away from 0, so the gradient stays finite at ``cos = +-1`` (``acos`` would give inf).
    """
    target = _target_mask(cos, labels)
    c = cos.clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - c * c).clamp_min(torch.finfo(cos.dtype).eps))
    shifted = torch.where(c >= -math.cos(margin), c * math.cos(margin) - sin * math.sin(margin),
                          c - margin * math.sin(margin))
    return torch.where(target, shifted, cos)


def arcface_loss(cos: torch.Tensor, labels: torch.Tensor, margin: float = 0.5, scale: float = 64.0) -> torch.Tensor:
    """ArcFace / additive angular margin loss (Deng, Guo, Xue, Zafeiriou, CVPR 2019)::

        L = mean_i -log( e^{s cos(theta_{y_i} + m)} / (e^{s cos(theta_{y_i} + m)}
                                                      + sum_{j != y_i} e^{s cos(theta_j)}) )

    ``cos`` is the ``(B, C)`` matrix ``cos(theta_j)`` (for sub-center ArcFace, the maximum over each
    class's sub-centres, :func:`max_over_subcenters`), ``m = margin`` in radians, ``s = scale``;
    the target logit is :func:`arcface_logits`.
    """
    return _cross_entropy(scale * arcface_logits(cos, labels, margin), labels)


def max_over_subcenters(cos: torch.Tensor, num_classes: int, sub_centers: int) -> torch.Tensor:
    """Sub-center ArcFace (Deng, Guo, Liu, Zafeiriou, Yang, ECCV 2020): the ``(B, C)`` cosine to the
    nearest of each class's ``K`` sub-centres, ``cos(theta_{i,j}) = max_k cos(x_i, W_{j,k})``, from the
    ``(B, C * K)`` cosines (column ``j * K + k`` is sub-centre ``k`` of class ``j``)."""
    return cos.view(cos.shape[0], num_classes, sub_centers).amax(dim=2)


def soft_triple_loss(cos: torch.Tensor, labels: torch.Tensor, centers_per_class: int = 10, la: float = 20.0,
                     gamma: float = 0.1, margin: float = 0.01) -> torch.Tensor:
    """SoftTriple loss (Qian, Shang, Sun, Hu, Li, Jin, ICCV 2019, "SoftTriple Loss: Deep Metric
    Learning Without Triplet Sampling"), without the centre regulariser
    (:func:`soft_triple_regularizer`)::

        S'_{i,c} = sum_k  exp(x_i^T w_c^k / gamma) / sum_k' exp(x_i^T w_c^k' / gamma)  x_i^T w_c^k
        L = mean_i -log( exp(lambda (S'_{i,y_i} - delta)) / (exp(lambda (S'_{i,y_i} - delta))
                                                             + sum_{j != y_i} exp(lambda S'_{i,j})) )

    ``cos`` is the ``(B, C * K)`` cosine similarity to the centres (column ``c * K + k`` is centre
    ``k`` of class ``c``), ``K = centers_per_class``, ``lambda = la``, ``delta = margin``.
    """
    sim = cos.view(cos.shape[0], -1, centers_per_class)
    soft = (torch.softmax(sim / gamma, dim=2) * sim).sum(dim=2)
    logits = soft - margin * _target_mask(soft, labels).to(soft.dtype)
    return _cross_entropy(la * logits, labels)


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
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected one of mean, sum, got {reduction!r}")
    total = 0.5 * ((x - centers[labels]) ** 2).sum()
    return total if reduction == "sum" else total / max(x.shape[0], 1)
