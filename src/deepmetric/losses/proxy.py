"""Proxy, classification and centre losses: proxy-NCA, proxy-anchor, normalized softmax, CosFace,
ArcFace, sub-center ArcFace, SoftTriple and centre loss.

Each is called ``loss(embeddings, labels)`` (the signature of every loss, DESIGN.md; ``tuples``,
``ref_embeddings`` and ``ref_labels`` must be left ``None``: these losses compare the batch with
their learnable proxies, not with mined tuples or a reference set). Each takes ``num_classes`` and
``embedding_size`` (pytorch-metric-learning's names) and holds its proxies / class weights / centres
as an ``nn.Parameter`` of shape ``(num_classes [* K], embedding_size)``, initialised from torch's
global generator (reproducible under ``torch.manual_seed``). The trainer puts these parameters in
their own optimizer group (``optimizer.loss_lr``).

Labels must be flat class ids ``0..num_classes-1`` (the trainer maps its labels with
``contiguous_labels``); anything else is a clear error. The math is in
:mod:`deepmetric.functional.proxy`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from deepmetric._checks import (check_embeddings, check_int, check_loss_value, check_magnitude, check_number,
                                loss_precision)
from deepmetric.distances import l2_normalize
from deepmetric.functional import proxy as F
from deepmetric.functional.hierarchical import check_reduction
from deepmetric.losses.base import LOSSES, check_loss_distance


class ProxyLoss(nn.Module):
    """Base class: validates the call, casts the learnable parameters to the embeddings' dtype and
    device (differentiably; the stored parameters are not changed) and hands :meth:`compute` the
    embeddings (half precision in float32, :func:`~deepmetric._checks.loss_precision`) and labels."""

    distance: str = "cosine"

    def __init__(self, num_classes: int, embedding_size: int):
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", 1)
        self.embedding_size = check_int(embedding_size, "embedding_size", 1)

    def forward(self, embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None) -> torch.Tensor:
        owner = type(self).__name__
        if tuples is not None:
            raise ValueError(f"{owner}: tuples are not used by this loss (it compares the batch with its "
                             "proxies); call it without a miner")
        if ref_embeddings is not None or ref_labels is not None:
            raise ValueError(f"{owner}: ref_embeddings / ref_labels are not supported (the proxies are the "
                             "reference set)")
        x = check_embeddings(embeddings, "embeddings")
        check_magnitude(x, self.distance)
        if x.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings: expected dimension embedding_size={self.embedding_size}, got {x.shape[1]}")
        labels = self.check_class_labels(labels, x.shape[0])
        return check_loss_value(self.compute(loss_precision(x), labels.to(x.device)), type(self).__name__)

    def check_class_labels(self, labels, n: int) -> torch.Tensor:
        """``labels`` as int64 if they are ``(n,)`` integer class ids in ``0..num_classes-1``."""
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels: expected integer class ids, got {labels.dtype}")
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(f"labels: expected shape ({n},) of flat class ids, got {tuple(labels.shape)}")
        labels = labels.long()
        if labels.numel():
            low, high = torch.stack(torch.aminmax(labels)).tolist()  # one host synchronisation
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"labels: expected contiguous class ids in [0, {self.num_classes}) for num_classes="
                    f"{self.num_classes}, got values in [{low}, {high}]; map them with "
                    "deepmetric.training.trainer.contiguous_labels")
        return labels

    @staticmethod
    def cast(param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return param.to(dtype=x.dtype, device=x.device)

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"


@LOSSES.register("proxy-nca")
class ProxyNCALoss(ProxyLoss):
    """Proxy-NCA (Movshovitz-Attias, Toshev, Leung, Ioffe, Singh, ICCV 2017, "No Fuss Distance
    Metric Learning using Proxies")::

        L = mean_x -log( exp(-s d(x, p(y))) / sum_{z in Z} exp(-s d(x, p(z))) )

    ``p(z)`` is the learnable proxy of class ``z`` (``proxies``, ``(num_classes, embedding_size)``,
    standard normal initialisation), ``s = softmax_scale``. With ``distance="cosine"`` (the default),
    ``d(x, p) = ||x/|x| - p/|p| ||^2 = 2 - 2 cos(x, p)``: the paper's normalised embeddings and
    proxies, and pytorch-metric-learning's ``ProxyNCALoss()`` (its default ``LpDistance(power=2)``
    normalises both). ``distance="squared_euclidean"`` uses the raw vectors. Intended difference from
    the paper: the denominator includes the positive proxy (a softmax cross-entropy, as
    pytorch-metric-learning computes it); from pytorch-metric-learning: samples whose probability
    underflows to 0 are kept, not dropped.

    Args:
        num_classes: number of classes ``C`` (labels are ``0..C-1``).
        embedding_size: dimension ``D`` of the embeddings.
        softmax_scale: ``s`` (> 0); pytorch-metric-learning's ``softmax_scale``.
        distance: ``cosine`` or ``squared_euclidean``.

    >>> import torch, deepmetric as dm
    >>> _ = torch.manual_seed(0)
    >>> loss = dm.losses.create("proxy-nca", num_classes=3, embedding_size=4, softmax_scale=10.0)
    >>> bool(loss(loss.proxies[[0, 1, 2]].detach(), torch.tensor([0, 1, 2])) < loss(
    ...      loss.proxies[[1, 2, 0]].detach(), torch.tensor([0, 1, 2])))
    True
    """

    def __init__(self, num_classes: int, embedding_size: int, softmax_scale: float = 1.0,
                 distance: str = "cosine"):
        super().__init__(num_classes, embedding_size)
        self.softmax_scale = check_number("softmax_scale", softmax_scale, low=0.0, strict=True)
        self.distance = check_loss_distance("ProxyNCALoss", distance, ("cosine", "squared_euclidean"))
        self.proxies = nn.Parameter(torch.randn(self.num_classes, self.embedding_size))

    def compute(self, x, labels):
        return F.proxy_nca_loss(x, self.cast(self.proxies, x), labels, self.softmax_scale, self.distance)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, softmax_scale={self.softmax_scale}, distance={self.distance!r}"


@LOSSES.register("proxy-anchor")
class ProxyAnchorLoss(ProxyLoss):
    """Proxy-anchor loss (Kim, Kim, Cho, Kwak, CVPR 2020, "Proxy Anchor Loss for Deep Metric
    Learning")::

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

    ``s`` is the cosine similarity, ``P`` the learnable proxies (``proxies``, ``(num_classes,
    embedding_size)``, Kaiming-normal initialisation as the authors' code), ``P+`` those with a
    positive in the batch, ``X_p+`` / ``X_p-`` the batch items of / not of ``p``'s class,
    ``delta = margin``. Same as pytorch-metric-learning's ``ProxyAnchorLoss`` (no intended difference).

    Args:
        num_classes: number of classes ``C`` (labels are ``0..C-1``).
        embedding_size: dimension ``D`` of the embeddings.
        margin: ``delta`` (>= 0).
        alpha: the scale ``alpha`` (> 0).

    >>> import torch, deepmetric as dm
    >>> _ = torch.manual_seed(0)
    >>> loss = dm.losses.create("proxy-anchor", num_classes=3, embedding_size=4)
    >>> value = loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]))
    >>> value.backward(); loss.proxies.grad.shape
    torch.Size([3, 4])
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32.0):
        super().__init__(num_classes, embedding_size)
        self.margin = check_number("margin", margin, low=0.0)
        self.alpha = check_number("alpha", alpha, low=0.0, strict=True)
        self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def compute(self, x, labels):
        return F.proxy_anchor_loss(x, self.cast(self.proxies, x), labels, self.margin, self.alpha)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, alpha={self.alpha}"


class _CosineClassifierLoss(ProxyLoss):
    """A loss on the ``(B, C)`` cosine similarity to learnable class weights ``weight`` (``(C, D)``,
    standard normal initialisation)."""

    def __init__(self, num_classes: int, embedding_size: int, rows_per_class: int = 1):
        super().__init__(num_classes, embedding_size)
        self.weight = nn.Parameter(torch.randn(self.num_classes * rows_per_class, self.embedding_size))



@LOSSES.register("normalized-softmax")
class NormalizedSoftmaxLoss(_CosineClassifierLoss):
    """Normalized softmax (Zhai, Wu, BMVC 2019, "Classification is a Strong Baseline for Deep Metric
    Learning")::

        L = mean_i -log( exp(x_i^T p_{y_i} / sigma) / sum_{j=1}^{C} exp(x_i^T p_j / sigma) )

    with ``x_i`` and the class weights ``p_j`` (``weight``, ``(num_classes, embedding_size)``)
    L2-normalised, ``sigma = temperature``. Same as pytorch-metric-learning's
    ``NormalizedSoftmaxLoss`` (whose ``W`` is our ``weight.T``).

    Args:
        num_classes: number of classes ``C`` (labels are ``0..C-1``).
        embedding_size: dimension ``D`` of the embeddings.
        temperature: ``sigma`` (> 0).

    >>> import torch, deepmetric as dm
    >>> _ = torch.manual_seed(0)
    >>> loss = dm.losses.create("normalized-softmax", num_classes=3, embedding_size=4, temperature=0.05)
    >>> loss(loss.weight.detach(), torch.tensor([0, 1, 2])).item() < 0.5
    True
    """

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 0.05):
        super().__init__(num_classes, embedding_size)
        self.temperature = check_number("temperature", temperature, low=0.0, strict=True)

    def compute(self, x, labels):
        return F.normalized_softmax_loss(x, self.cast(self.weight, x), labels, self.temperature)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"


@LOSSES.register("cosface")
class CosFaceLoss(_CosineClassifierLoss):
    """CosFace / large margin cosine loss (Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu, CVPR 2018,
    "CosFace: Large Margin Cosine Loss for Deep Face Recognition")::

        L = mean_i -log( e^{s (cos(theta_{y_i,i}) - m)} / (e^{s (cos(theta_{y_i,i}) - m)}
                                                         + sum_{j != y_i} e^{s cos(theta_{j,i})}) )

    ``theta_{j,i}`` is the angle between ``x_i`` and the class weight ``W_j`` (``weight``,
    ``(num_classes, embedding_size)``). Same as pytorch-metric-learning's ``CosFaceLoss`` (whose
    ``W`` is our ``weight.T``).

    Args:
        num_classes: number of classes ``C`` (labels are ``0..C-1``).
        embedding_size: dimension ``D`` of the embeddings.
        margin: ``m`` (>= 0).
        scale: ``s`` (> 0).

    >>> import torch, deepmetric as dm
    >>> _ = torch.manual_seed(0)
    >>> loss = dm.losses.create("cosface", num_classes=3, embedding_size=4, margin=0.35, scale=64.0)
    >>> bool(loss(torch.randn(5, 4), torch.tensor([0, 1, 2, 2, 0])) > 0)
    True
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64.0):
        super().__init__(num_classes, embedding_size)
        self.margin = check_number("margin", margin, low=0.0)
        self.scale = check_number("scale", scale, low=0.0, strict=True)

    def compute(self, x, labels):
        return F.cosface_loss(x, self.cast(self.weight, x), labels, self.margin, self.scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, scale={self.scale}"


def _check_angle(margin) -> float:
    margin = check_number("margin", margin, low=0.0)
    if margin >= math.pi / 2:
        raise ValueError(f"margin: expected an angle in radians in [0, pi/2), got {margin!r}")
    return margin


@LOSSES.register("arcface")
class ArcFaceLoss(_CosineClassifierLoss):
    """ArcFace / additive angular margin loss (Deng, Guo, Xue, Zafeiriou, CVPR 2019, "ArcFace:
    Additive Angular Margin Loss for Deep Face Recognition")::

        L = mean_i -log( e^{s cos(theta_{y_i} + m)} / (e^{s cos(theta_{y_i} + m)}
                                                      + sum_{j != y_i} e^{s cos(theta_j)}) )

    ``theta_j`` is the angle between ``x_i`` and the class weight ``W_j`` (``weight``,
    ``(num_classes, embedding_size)``); where ``theta_{y_i} > pi - m`` the target logit is
    ``cos(theta_{y_i}) - m sin(m)`` (InsightFace's and pytorch-metric-learning's fallback).

    Intended differences from pytorch-metric-learning's ``ArcFaceLoss``: ``margin`` is in
    radians, as in the paper (``m = 0.5``), where pytorch-metric-learning takes degrees
    (``ArcFaceLoss(margin=math.degrees(m))``); ``sin(theta)`` is clamped to at least
    ``sqrt(eps)`` of the dtype so the gradient at ``cos = +-1`` is finite (``acos`` gives inf there).

    Args:
        num_classes: number of classes ``C`` (labels are ``0..C-1``).
        embedding_size: dimension ``D`` of the embeddings.
        margin: ``m`` in radians, in ``[0, pi/2)``.
        scale: ``s`` (> 0).

    >>> import torch, deepmetric as dm
    >>> _ = torch.manual_seed(0)
    >>> loss = dm.losses.create("arcface", num_classes=3, embedding_size=4, margin=0.5, scale=64.0)
    >>> bool(loss(torch.randn(5, 4), torch.tensor([0, 1, 2, 2, 0])) > 0)
    True
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.5, scale: float = 64.0):
        super().__init__(num_classes, embedding_size)
        self.margin = _check_angle(margin)
        self.scale = check_number("scale", scale, low=0.0, strict=True)

    def compute(self, x, labels):
        return F.arcface_loss(x, self.cast(self.weight, x), labels, self.margin, self.scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, scale={self.scale}"


@LOSSES.register("sub-center-arcface")
class SubCenterArcFaceLoss(_CosineClassifierLoss):
    """Sub-center ArcFace (Deng, Guo, Liu, Zafeiriou, Yang, ECCV 2020, "Sub-center ArcFace: Boosting
    Face Recognition by Large-scale Noisy Web Faces"): ArcFace on the cosine to the nearest of each
    class's ``K`` sub-centres::

        cos(theta_{i,j}) = max_{k=1..K} cos(x_i, W_{j,k})
        L = mean_i -log( e^{s cos(theta_{i,y_i} + m)} / (e^{s cos(theta_{i,y_i} + m)}
                                                        + sum_{j != y_i} e^{s cos(theta_{i,j})}) )

    ``weight`` is ``(num_classes * K, embedding_size)``, row ``j * K + k`` sub-centre ``k`` of class
    ``j`` (pytorch-metric-learning's ``W`` is our ``weight.T``). Differences from
    pytorch-metric-learning's ``SubCenterArcFaceLoss`` as for :class:`ArcFaceLoss` (margin in radians).
    Its outlier-dropping step (``get_outliers``) is a data-cleaning tool, not part of the loss, and
    is not provided.

    Args:
        num_classes: number of classes ``C`` (labels are ``0..C-1``).
        embedding_size: dimension ``D`` of the embeddings.
        margin: ``m`` in radians, in ``[0, pi/2)``.
        scale: ``s`` (> 0).
        sub_centers: ``K`` (>= 1).

    >>> import torch, deepmetric as dm
    >>> _ = torch.manual_seed(0)
    >>> loss = dm.losses.create("sub-center-arcface", num_classes=3, embedding_size=4, sub_centers=2)
    >>> tuple(loss.weight.shape)
    (6, 4)
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.5, scale: float = 64.0,
                 sub_centers: int = 3):
        self.sub_centers = check_int(sub_centers, "sub_centers", 1)
        super().__init__(num_classes, embedding_size, rows_per_class=self.sub_centers)
        self.margin = _check_angle(margin)
        self.scale = check_number("scale", scale, low=0.0, strict=True)

    def compute(self, x, labels):
        return F.arcface_loss(x, self.cast(self.weight, x), labels, self.margin, self.scale, self.sub_centers)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, scale={self.scale}, sub_centers={self.sub_centers}"


@LOSSES.register("soft-triple")
class SoftTripleLoss(ProxyLoss):
    """SoftTriple loss (Qian, Shang, Sun, Hu, Li, Jin, ICCV 2019, "SoftTriple Loss: Deep Metric
    Learning Without Triplet Sampling")::

        S'_{i,c} = sum_k  exp(x_i^T w_c^k / gamma) / sum_k' exp(x_i^T w_c^k' / gamma)  x_i^T w_c^k
        L = mean_i -log( exp(lambda (S'_{i,y_i} - delta)) / (exp(lambda (S'_{i,y_i} - delta))
                                                             + sum_{j != y_i} exp(lambda S'_{i,j})) )
            + tau R(w),   R = sum_c sum_{t<s} sqrt(2 + 1e-5 - 2 w_c^t^T w_c^s) / (C K (K - 1))

    ``x_i`` and the centres ``w_c^k`` (``centers``, ``(num_classes * K, embedding_size)``, row
    ``c * K + k``; Kaiming-uniform initialisation) are L2-normalised, ``lambda = la``,
    ``delta = margin``, ``K = centers_per_class``. The paper's defaults are ``la=20, gamma=0.1,
    margin=0.01, tau=0.2, K=10``; ``tau`` defaults to 0 here, which is pytorch-metric-learning's
    ``SoftTripleLoss`` (it has no regulariser; its ``fc`` is our ``centers.T``).

    Args:
        num_classes: number of classes ``C`` (labels are ``0..C-1``).
        embedding_size: dimension ``D`` of the embeddings.
        centers_per_class: ``K`` (>= 1).
        la: ``lambda`` (> 0).
        gamma: ``gamma`` (> 0).
        margin: ``delta`` (>= 0).
        tau: weight of the centre regulariser (>= 0).

    >>> import torch, deepmetric as dm
    >>> _ = torch.manual_seed(0)
    >>> loss = dm.losses.create("soft-triple", num_classes=3, embedding_size=4, centers_per_class=2, tau=0.2)
    >>> bool(loss(torch.randn(5, 4), torch.tensor([0, 1, 2, 2, 0])) > 0)
    True
    """

    def __init__(self, num_classes: int, embedding_size: int, centers_per_class: int = 10, la: float = 20.0,
                 gamma: float = 0.1, margin: float = 0.01, tau: float = 0.0):
        super().__init__(num_classes, embedding_size)
        self.centers_per_class = check_int(centers_per_class, "centers_per_class", 1)
        self.la = check_number("la", la, low=0.0, strict=True)
        self.gamma = check_number("gamma", gamma, low=0.0, strict=True)
        self.margin = check_number("margin", margin, low=0.0)
        self.tau = check_number("tau", tau, low=0.0)
        self.centers = nn.Parameter(torch.empty(self.num_classes * self.centers_per_class, self.embedding_size))
        nn.init.kaiming_uniform_(self.centers, a=math.sqrt(5))

    def compute(self, x, labels):
        centers = self.cast(self.centers, x)
        value = F.soft_triple_loss(x, centers, labels, self.centers_per_class, self.la, self.gamma, self.margin)
        if self.tau > 0:
            value = value + self.tau * F.soft_triple_regularizer(
                l2_normalize(centers), self.centers_per_class)
        return value

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, centers_per_class={self.centers_per_class}, la={self.la}, "
                f"gamma={self.gamma}, margin={self.margin}, tau={self.tau}")


@LOSSES.register("center")
class CenterLoss(ProxyLoss):
    """Centre loss (Wen, Zhang, Li, Qiao, ECCV 2016, "A Discriminative Feature Learning Approach for
    Deep Face Recognition")::

        L_C = 1/2 sum_{i=1}^{m} ||x_i - c_{y_i}||_2^2        (reduction="sum"; "mean" divides by m)

    ``c_j`` are the learnable class centres (``centers``, ``(num_classes, embedding_size)``,
    standard normal initialisation). Centre loss only pulls items to their centre, so it is used
    *beside* a discriminative loss, ``L = L_S + lambda L_C``: in a config, as a weighted entry of
    ``losses:``::

        losses:
          - {name: normalized-softmax, num_classes: 100, embedding_size: 128}
          - {name: center, weight: 0.01, num_classes: 100, embedding_size: 128}

    or in Python, ``value = softmax_loss(emb, y) + 0.01 * center_loss(emb, y)``. Intended difference
    from the paper: the centres are learnt by the optimizer from this gradient (at ``optimizer.loss_lr``,
    the paper's ``alpha``), not by the paper's separate update rule. pytorch-metric-learning has no
    centre loss.

    Args:
        num_classes: number of classes ``C`` (labels are ``0..C-1``).
        embedding_size: dimension ``D`` of the embeddings.
        reduction: ``mean`` (over the batch, the default) or ``sum`` (the paper's).

    >>> import torch, deepmetric as dm
    >>> _ = torch.manual_seed(0)
    >>> loss = dm.losses.create("center", num_classes=2, embedding_size=3)
    >>> loss(loss.centers.detach()[[0, 1, 1]], torch.tensor([0, 1, 1])).item()
    0.0
    """

    distance = "euclidean"

    def __init__(self, num_classes: int, embedding_size: int, reduction: str = "mean"):
        super().__init__(num_classes, embedding_size)
        check_reduction(reduction)
        self.reduction = reduction
        self.centers = nn.Parameter(torch.randn(self.num_classes, self.embedding_size))

    def compute(self, x, labels):
        return F.center_loss(x, self.cast(self.centers, x), labels, self.reduction)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction!r}"
