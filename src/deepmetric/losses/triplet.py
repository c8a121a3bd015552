"""Triplet losses. The math is in :mod:`deepmetric.functional.losses`."""
from __future__ import annotations

from deepmetric.distances import DISTANCES, as_ascending, pairwise
from deepmetric.functional import losses as F
from deepmetric.losses.base import LOSSES, MetricLoss, check_loss_distance, check_number
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
        margin: the margin (>= 0).
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
        if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
            raise ValueError(f"max_elements: expected a positive integer, got {max_elements!r}")
        self.max_elements = max_elements

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
