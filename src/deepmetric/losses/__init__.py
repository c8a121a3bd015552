"""Losses: thin ``nn.Module`` wrappers over :mod:`deepmetric.functional.losses`, by registry name.

Every loss is called ``loss(embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None)``
and has a ``distance`` attribute naming the distance it trains for.

>>> import deepmetric as dm
>>> loss = dm.losses.create("triplet", margin=0.2)
>>> loss.distance
'euclidean'
"""
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.pair import ContrastiveLoss, DDMLLoss, MultiSimilarityLoss
from deepmetric.losses.pair import (BinomialDevianceLoss, CircleLoss, FastAPLoss, GeneralizedLiftedStructureLoss,
                                    HistogramLoss, LiftedStructureLoss, MarginLoss, NTXentLoss, SupConLoss)
_PAIR_BASED = ["BinomialDevianceLoss", "LiftedStructureLoss", "GeneralizedLiftedStructureLoss", "MarginLoss",
               "CircleLoss", "NTXentLoss", "SupConLoss", "FastAPLoss", "HistogramLoss"]
from deepmetric.losses.triplet import AngularLoss, NPairsLoss, TripletMarginLoss, TupletMarginLoss
from deepmetric.losses.proxy import (ArcFaceLoss, CenterLoss, CosFaceLoss, NormalizedSoftmaxLoss, ProxyAnchorLoss,
                                      ProxyNCALoss, SoftTripleLoss, SubCenterArcFaceLoss)

from deepmetric.losses.combined import CombinedLoss, combine
from deepmetric.losses.memory import CrossBatchMemory

create = LOSSES.create
names = LOSSES.names
__all__ = ["combine", "CombinedLoss", "CrossBatchMemory"]

__all__ += ["LOSSES", "create", "names", "MetricLoss", "ContrastiveLoss", "DDMLLoss", "MultiSimilarityLoss",
           "TripletMarginLoss", "NPairsLoss", "AngularLoss", "TupletMarginLoss",
           "ProxyNCALoss", "ProxyAnchorLoss", "NormalizedSoftmaxLoss", "CosFaceLoss", "ArcFaceLoss",
           "SubCenterArcFaceLoss", "SoftTripleLoss", "CenterLoss"]
__all__ += _PAIR_BASED
