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
from deepmetric.losses.triplet import TripletMarginLoss

create = LOSSES.create
names = LOSSES.names

__all__ = ["LOSSES", "create", "names", "MetricLoss", "ContrastiveLoss", "DDMLLoss", "MultiSimilarityLoss",
           "TripletMarginLoss"]
