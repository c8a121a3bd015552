"""Models: backbones and heads that map inputs to ``(B, D)`` embeddings.

Every registered model is built as ``MODELS.create(spec, in_shape=...)`` where ``in_shape`` is the
shape of one input item (e.g. ``(64,)`` for features, ``(1, 28, 28)`` for images); the trainer
passes it from the data. L2 normalisation of the output is the model's ``normalize`` option.
"""
from deepmetric.models.heads import MLPHead, LinearHead, MODELS
from deepmetric.models.cnn import SmallCNN
from deepmetric.models.frozen import FrozenExtractor
from deepmetric.models.temporal import (POOLINGS, AttentionPool, EarlyFusion, LateFusion, MaxPool, MeanPool,
                                        ModalityEncoders, NetVLAD, RecurrentPool, VideoEmbedder)

create = MODELS.create
names = MODELS.names

__all__ = ["MODELS", "MLPHead", "LinearHead", "SmallCNN", "FrozenExtractor", "create", "names",
           # video: temporal pooling of (B, T, D) frame features with a mask, and fusion of modalities
           "POOLINGS", "MeanPool", "MaxPool", "AttentionPool", "NetVLAD", "RecurrentPool", "VideoEmbedder",
           "EarlyFusion", "LateFusion", "ModalityEncoders"]
