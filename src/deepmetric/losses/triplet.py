"""Triplet-family losses: triplet margin, N-pair, angular, tuplet margin. The math is in
:mod:`deepmetric.functional.losses` and :mod:`deepmetric.functional.triplet_family`."""
from __future__ import annotations

import math

import torch

from deepmetric._checks import check_int, check_number
from deepmetric.distances import DISTANCES, as_ascending, cosine_similarity, dot, pairwise
from deepmetric.functional import losses as F
from deepmetric.functional import triplet_family as TF
from deepmetric.labels import item_classes, pair_masks
from deepmetric.losses.base import LOSSES, MetricLoss, as_pairs, check_loss_distance
from deepmetric.tuples import Triplets


@LOSSES.register("triplet")
class TripletMarginLoss(MetricLoss):
    """Triplet margin loss (Schroff, Kalenichenko, Philbin, CVPR 2015, FaceNet)::

        L = reduce_{(a,p,n)} [D_ap - D_an + margin]_+

    or with ``soft_margin=True`` the soft margin of Hermans, Beyer, Leibe 2017 ("In Defense of the
    Triplet Loss for Person Re-Identification"), ``log(1 + exp(D_ap - D_an))``, which has no margin
    (``margin`` is then unused; pytorch-metric-learning's ``smooth_loss`` is ``softplus`` of
    ``D_ap - D_an + margin``, the same for ``margin=0``).

    Triplets:

    * ``tuples=None``: every valid triplet (``a`` and ``p`` share a label, ``p != a`` within the
      batch, ``n`` has another label), computed from the ``(B, R)`` distance matrix without
      enumerating triplets: the hinge by sorting each row's negatives (``O(B R log R)`` time,
      ``O(B R)`` memory), the soft margin in blocks of anchors of at most ``max_elements``
      elements (see :func:`deepmetric.functional.losses.all_triplets_margin_loss`).
    * :class:`~deepmetric.tuples.Triplets`: those triplets, as given (duplicates count twice).
    * :class:`~deepmetric.tuples.Pairs`: every triplet ``(a, p, n)`` made of a given positive pair
      ``(a, p)`` and a given negative pair ``(a, n)`` with the same anchor; each given pair counts
      once however often it is given.

    The default ``reduction="mean_nonzero"`` averages over the triplets with a non-zero loss, as
    pytorch-metric-learning's ``AvgNonZeroReducer``. ``distance="dot"`` ranks by similarity:
    ``D = -x.y``, so the hinge is ``[s_an - s_ap + margin]_+``. For squared distances use
    ``distance="squared_euclidean"``.

    Args:
        margin: the margin (>= 0); 0.2 as in FaceNet (pytorch-metric-learning defaults to 0.05).
        distance: ``euclidean``, ``squared_euclidean``, ``cosine`` or ``dot``.
        soft_margin: use ``log(1 + exp(D_ap - D_an))`` instead of the hinge.
        reduction: ``mean_nonzero``, ``mean`` or ``sum`` over triplets.
        max_elements: block size bound of the soft-margin all-triplets computation.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("triplet", margin=0.2)
    >>> emb, labels = torch.tensor([[0.0], [0.5], [0.6]]), torch.tensor([0, 0, 1])
    >>> round(float(loss(emb, labels)), 4)  # triplets (0, 1, 2): 0.1 and (1, 0, 2): 0.6
    0.35
    >>> round(float(loss(emb, labels, dm.Triplets(*torch.tensor([[0], [1], [2]])))), 4)
    0.1
    """

    def __init__(self, margin: float = 0.2, distance: str = "euclidean", soft_margin: bool = False,
                 reduction: str = "mean_nonzero", max_elements: int = F.MAX_TRIPLET_BLOCK):
        super().__init__()
        self.margin = check_number("margin", margin, low=0.0)
        self.distance = check_loss_distance("TripletMarginLoss", distance, DISTANCES)
        if not isinstance(soft_margin, bool):
            raise TypeError(f"soft_margin: expected a bool, got {soft_margin!r}")
        self.soft_margin = soft_margin
        self.reduction = F.check_reduction(reduction)
        self.max_elements = check_int(max_elements, "max_elements", 1)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        dist = as_ascending(pairwise(x, ref_x, self.distance), self.distance)
        if isinstance(tuples, Triplets):
            a, p, n = tuples
            return F.given_triplets_margin_loss(dist, a, p, n, self.margin, self.soft_margin, self.reduction)
        pos, neg = self.masks(x, labels, tuples, ref_x, ref_labels)
        return F.all_triplets_margin_loss(dist, pos, neg, self.margin, self.soft_margin, self.reduction,
                                          self.max_elements)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, distance={self.distance!r}, soft_margin={self.soft_margin}, "
                f"reduction={self.reduction!r}")


# -- triplet family: N-pair, angular, tuplet margin ------------------------------------------------

def _positive_pairs(tuples, labels, ref_labels):
    """``(a, p)`` index tensors of the positive pairs: every valid pair (lexicographic order) when
    ``tuples`` is None, else the given ones with their duplicates (a triplet gives its ``(a, p)``)."""
    if tuples is None:
        pos, _ = pair_masks(labels, ref_labels)
        return pos.nonzero(as_tuple=True)
    a1, p, _, _ = as_pairs(tuples)
    return a1, p


def _pair_counts(rows, cols, n: int, n_ref: int, dtype, device) -> torch.Tensor:
    """``(n, n_ref)`` matrix counting how often each ``(rows[k], cols[k])`` is given."""
    counts = torch.zeros(n * n_ref, dtype=dtype, device=device)
    counts.index_add_(0, torch.add(cols, rows, alpha=n_ref), torch.ones(rows.numel(), dtype=dtype, device=device))
    return counts.view(n, n_ref)


def _first_per_class(cls: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """For each class id present in ``cls``, the smallest of ``positions`` with that class."""
    first = torch.full((int(cls.max()) + 1,), positions.numel(), dtype=torch.long, device=cls.device)
    first.scatter_reduce_(0, cls, positions, "amin")
    return first[first < positions.numel()]


def _first_pair_per_class(labels: torch.Tensor, ref_labels: torch.Tensor | None):
    """The lexicographically first positive pair ``(a, p)`` of each class, without the ``(B, R)``
    mask: within the batch, the class's two smallest indices; with a reference set, the smallest
    batch index of a class present in the reference set and the class's smallest reference index."""
    n = labels.shape[0]
    if ref_labels is None:
        cls = item_classes(labels)[1]
        order = torch.argsort(cls, stable=True)
        counts = torch.bincount(cls)
        starts = (torch.cumsum(counts, 0) - counts)[counts >= 2]
        return order[starts], order[starts + 1]
    cls = item_classes(torch.cat([labels, ref_labels]))[1]
    n_cls = int(cls.max()) + 1
    first_a = torch.full((n_cls,), n, dtype=torch.long, device=cls.device)
    first_a.scatter_reduce_(0, cls[:n], torch.arange(n, device=cls.device), "amin")
    n_ref = ref_labels.shape[0]
    first_p = torch.full((n_cls,), n_ref, dtype=torch.long, device=cls.device)
    first_p.scatter_reduce_(0, cls[n:], torch.arange(n_ref, device=cls.device), "amin")
    keep = (first_a < n) & (first_p < n_ref)
    return first_a[keep], first_p[keep]


@LOSSES.register("n-pairs")
class NPairsLoss(MetricLoss):
    """Multi-class N-pair loss (Sohn, NeurIPS 2016, "Improved Deep Metric Learning with Multi-class
    N-pair Loss Objective"), eq. (3) without the L2 penalty on embeddings::

        L = 1/N sum_{i=1}^N log(1 + sum_{j != i} exp(f_i^T f_j^+ - f_i^T f_i^+))

    over ``N`` positive pairs ``(f_i, f_i^+)`` of ``N`` distinct classes, the positives of the other
    pairs serving as negatives (a softmax cross-entropy over the ``(N, N)`` similarity matrix).

    Pairs: from the positive pairs of the batch (``tuples=None``, lexicographic order), of the given
    :class:`~deepmetric.tuples.Pairs`, or the ``(a, p)`` of given :class:`~deepmetric.tuples.Triplets`,
    the first pair of each anchor class is kept, exactly as pytorch-metric-learning's ``NPairsLoss``
    (``convert_to_pos_pairs_with_unique_labels``), which this equals for ``distance="dot"`` when pml's
    dot product does not normalise the embeddings (``DotProductSimilarity(normalize_embeddings=False)``;
    pml's default normalises them, i.e. ``distance="cosine"`` here). A
    reference set is supported (positives then come from it; pml does not support one). Hierarchical
    labels use their finest level; multi-label labels are rejected (a class per item is needed).

    ``distance``: the similarity ``f_i^T f_j^+`` is ``dot`` (the paper's, default), ``cosine``
    (cosine similarity, shifted by a constant that cancels) or minus a euclidean distance.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("n-pairs")
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> round(float(loss(emb, torch.tensor([0, 0, 1, 1]))), 4)  # pairs (0, 1), (2, 3): log(1 + exp(0.1 - 1))
    0.3412
    """

    def __init__(self, distance: str = "dot"):
        super().__init__()
        self.distance = check_loss_distance("NPairsLoss", distance, DISTANCES)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        if labels.dtype == torch.bool:
            raise ValueError("labels: NPairsLoss needs one class per item ((B,) or (B, L) integers), "
                             "got (B, C) bool multi-label")
        if tuples is None:
            a, p = _first_pair_per_class(labels, ref_labels)
        else:
            a, p = _positive_pairs(tuples, labels, ref_labels)
            if a.numel():
                first = _first_per_class(item_classes(labels[a])[1], torch.arange(a.numel(), device=a.device))
                a, p = a[first], p[first]
        sim = -as_ascending(pairwise(x[a], ref_x[p], self.distance), self.distance)
        return TF.n_pairs_loss(sim)

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}"


@LOSSES.register("angular")
class AngularLoss(MetricLoss):
    """Angular loss (Wang, Zhou, Wen, Liu, Lin, ICCV 2017, "Deep Metric Learning with Angular
    Loss"), eq. (8)-(9) generalised to every positive pair as pytorch-metric-learning does::

        f_{a,p,n} = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p
        L = 1/|P| sum_{(a,p) in P} log(1 + sum_{n: y_n != y_a} exp(f_{a,p,n}))

    ``P``: every positive pair (``tuples=None``), the given :class:`~deepmetric.tuples.Pairs`' positive
    pairs or the ``(a, p)`` of each given :class:`~deepmetric.tuples.Triplets` (duplicates count). The
    negatives are *every* reference item with another label, whatever the tuples (as
    pytorch-metric-learning's ``AngularLoss``); given tuples with no negative pair give a zero.

    The paper's (and pml's) features are L2-normalised. pml normalises inside the loss; deepmetric
    never does (DESIGN.md: normalisation is an option of the model's head), so normalise the
    embeddings first. On L2-normalised input this equals pml's ``AngularLoss(alpha)``. Memory is
    ``O(B R)`` plus blocks of at most ``max_elements`` (pairs x reference) entries, and ``O(R^2)`` with
    a separate reference set (its Gram matrix, e.g. an xbm memory).

    Args:
        alpha: the angle alpha in degrees, in (0, 90) (the paper uses 36 to 55; default 40 as pml).
        max_elements: block size bound.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("angular", alpha=40)
    >>> emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]), dim=1)
    >>> round(float(loss(emb, torch.tensor([0, 0, 1, 1]))), 4)  # as pml's AngularLoss(alpha=40)
    0.1154
    """

    distance = "euclidean"

    def __init__(self, alpha: float = 40.0, max_elements: int = TF.MAX_PAIR_BLOCK):
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=0.0, strict=True)
        if self.alpha >= 90.0:
            raise ValueError(f"alpha: expected an angle in degrees in (0, 90), got {alpha!r}")
        self.max_elements = check_int(max_elements, "max_elements", 1)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        a, p = _positive_pairs(tuples, labels, ref_labels)
        _, neg_mask = pair_masks(labels, ref_labels)
        gram = dot(x, ref_x)
        ref_gram = gram if ref_labels is None else dot(ref_x, ref_x)
        if tuples is not None and as_pairs(tuples)[2].numel() == 0:
            a = a[:0]
        return TF.angular_loss(gram, ref_gram, a, p, neg_mask, math.radians(self.alpha), self.max_elements)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


@LOSSES.register("tuplet-margin")
class TupletMarginLoss(MetricLoss):
    """Tuplet margin loss (Yu and Tao, ICCV 2019, "Deep Metric Learning with Tuplet Margin Loss"),
    eq. (4), over positive pairs::

        L = 1/|P| sum_{(a,p) in P} log(1 + sum_{n in N(a)} exp(s (cos theta_an - cos(theta_ap - beta))))

    with ``theta`` the angle between embeddings, ``beta`` the slack margin and ``s`` the scale.
    ``tuples=None``: every positive pair, and every negative of its anchor; given
    :class:`~deepmetric.tuples.Pairs` or :class:`~deepmetric.tuples.Triplets`: their positive pairs,
    and for each the given negative pairs of its anchor (duplicates count as often as given), as
    pytorch-metric-learning's ``TupletMarginLoss(margin, scale)``, which this equals. It never builds
    pml's (positive pairs x negative pairs) tensor: the sum over negatives depends only on the anchor
    (``O(B R)``). Differences from pml: ``cos(theta - beta)`` is computed without ``acos``, so
    duplicated embeddings have a finite gradient (pml's is NaN/inf there); values agree to ~1e-7.

    Args:
        margin: beta in degrees (>= 0; default 5.73 as pml, 0.1 rad as in the paper).
        scale: s (> 0; default 64).

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.create("tuplet-margin", margin=5.73, scale=64)
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> round(float(loss(emb, torch.tensor([0, 0, 1, 1]))), 4)  # cos 0.995 - cos(theta_ap - beta) << 0
    0.0
    """

    distance = "cosine"

    def __init__(self, margin: float = 5.73, scale: float = 64.0):
        super().__init__()
        self.margin = check_number("margin", margin, low=0.0)
        if self.margin >= 180.0:
            raise ValueError(f"margin: expected an angle in degrees in [0, 180), got {margin!r}")
        self.scale = check_number("scale", scale, low=0.0, strict=True)

    def compute(self, x, labels, tuples, ref_x, ref_labels):
        cos = cosine_similarity(x, ref_x)
        n, n_ref = cos.shape
        if tuples is None:
            pos, neg = pair_masks(labels, ref_labels)
            pos_w, neg_w = pos.to(cos.dtype), neg.to(cos.dtype)
        else:
            a1, p, a2, neg_idx = as_pairs(tuples)
            pos_w = _pair_counts(a1, p, n, n_ref, cos.dtype, cos.device)
            neg_w = _pair_counts(a2, neg_idx, n, n_ref, cos.dtype, cos.device)
        return TF.tuplet_margin_loss(cos, pos_w, neg_w, math.radians(self.margin), self.scale)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, scale={self.scale}"
