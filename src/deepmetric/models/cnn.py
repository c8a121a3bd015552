"""A small convolutional network trained from scratch on 1-channel (or few-channel) images."""
from __future__ import annotations

import torch
from torch import nn

from deepmetric._checks import check_flag, check_int, check_ints
from deepmetric.models.heads import MODELS, Embedder


@MODELS.register("cnn")
class SmallCNN(Embedder):
    """Four blocks of conv3x3 - batch norm - ReLU - max-pool 2x2, then a linear layer to the embedding.

    The "Conv-4" backbone of few-shot and metric learning on Omniglot (Vinyals et al. 2016;
    Snell et al. 2017), here followed by a linear embedding layer of ``out_features``.

    >>> SmallCNN(in_shape=(1, 28, 28), out_features=32)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 32])
    """

    def __init__(self, in_shape=(1, 28, 28), channels=(64, 64, 64, 64), out_features: int = 128,
                 normalize: bool = False):
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"in_shape: the cnn model expects images (C, H, W), got {tuple(in_shape)}")
        if min(in_shape[1:]) < 2 ** len(channels):
            raise ValueError(f"in_shape: the cnn model halves the image {len(channels)} times, so it needs images of "
                             f"at least {2 ** len(channels)}x{2 ** len(channels)}, got {tuple(in_shape)}")
        self.out_features = check_int(out_features, "out_features", 1)
        self.normalize = check_flag(normalize, "normalize")
        blocks, c_in = [], int(in_shape[0])
        for c in check_ints(channels, "channels", 1, "(64, 64, 64, 64)"):
            blocks += [nn.Conv2d(c_in, int(c), 3, padding=1), nn.BatchNorm2d(int(c)), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = int(c)
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *in_shape)).numel()
        self.fc = nn.Linear(n_flat, self.out_features)

    def embed(self, x):
        return self.fc(self.features(x).flatten(1))
