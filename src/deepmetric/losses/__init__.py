"""Losses: thin ``nn.Module`` wrappers over :mod:`deepmetric.functional.losses`, by registry name.

Every loss is called ``loss(embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None)``
and has a ``distance`` attribute naming the distance it trains for.

>>> import deepmetric as dm
>>> loss = dm.losses.create("triplet", margin=0.2)
>>> loss.distance
'euclidean'
"""
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.combined import CombinedLoss, combine
from deepmetric.losses.granularity import IELoss, SGMLLoss
from deepmetric.losses.hierarchical import PentupletLoss, QuadletLoss, RadialLoss
from deepmetric.losses.memory import CrossBatchMemory
from deepmetric.losses.pair import (BinomialDevianceLoss, CircleLoss, ContrastiveLoss, DDMLLoss, FastAPLoss,
                                    GeneralizedLiftedStructureLoss, HistogramLoss, LiftedStructureLoss, MarginLoss,
                                    MultiSimilarityLoss, NTXentLoss, SupConLoss)
from deepmetric.losses.proxy import (ArcFaceLoss, CenterLoss, CosFaceLoss, NormalizedSoftmaxLoss, ProxyAnchorLoss,
                                     ProxyNCALoss, SoftTripleLoss, SubCenterArcFaceLoss)
from deepmetric.losses.triplet import AngularLoss, NPairsLoss, TripletMarginLoss, TupletMarginLoss

create = LOSSES.create
names = LOSSES.names

__all__ = ["LOSSES", "create", "names", "combine", "MetricLoss", "CombinedLoss", "CrossBatchMemory",
           # pair-based
           "ContrastiveLoss", "DDMLLoss", "BinomialDevianceLoss", "MultiSimilarityLoss", "LiftedStructureLoss",
           "GeneralizedLiftedStructureLoss", "MarginLoss", "CircleLoss", "NTXentLoss", "SupConLoss", "FastAPLoss",
           "HistogramLoss",
           # triplet family
           "TripletMarginLoss", "NPairsLoss", "AngularLoss", "TupletMarginLoss",
           # proxy, classification and centre
           "ProxyNCALoss", "ProxyAnchorLoss", "NormalizedSoftmaxLoss", "CosFaceLoss", "ArcFaceLoss",
           "SubCenterArcFaceLoss", "SoftTripleLoss", "CenterLoss",
           # hierarchical (order-preserving) and granularity-aware
           "QuadletLoss", "PentupletLoss", "RadialLoss", "SGMLLoss", "IELoss"]
