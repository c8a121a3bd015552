"""Embedding heads on feature vectors: a linear (Mahalanobis) head and an MLP head."""
from __future__ import annotations

import math

import torch
from torch import nn

from deepmetric._checks import check_flag, check_int, check_ints
from deepmetric.distances import l2_normalize
from deepmetric.registry import Registry

MODELS = Registry("model")


def flat_features(in_shape) -> int:
    """Number of input features of one item of shape ``in_shape``."""
    return int(math.prod(in_shape))


class Embedder(nn.Module):
    """Base class: ``forward`` maps inputs to ``(B, out_features)``, L2-normalised if ``normalize``."""

    out_features: int
    normalize: bool

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        return l2_normalize(z) if self.normalize else z


@MODELS.register("linear")
class LinearHead(Embedder):
    """``f(x) = L x``: a linear map, i.e. a Mahalanobis metric ``M = L^T L`` on the inputs.

    >>> head = LinearHead(in_shape=(64,), out_features=16)
    >>> head(torch.zeros(2, 64)).shape
    torch.Size([2, 16])
    """

    def __init__(self, in_shape=(64,), out_features: int = 64, normalize: bool = False, bias: bool = False):
        super().__init__()
        self.out_features = check_int(out_features, "out_features", 1)
        self.normalize = check_flag(normalize, "normalize")
        self.linear = nn.Linear(flat_features(in_shape), self.out_features, bias=check_flag(bias, "bias"))

    def embed(self, x):
        return self.linear(x.flatten(1))


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


@MODELS.register("mlp")
class MLPHead(Embedder):
    """Multi-layer perceptron ``f(x) = W_M s(... s(W_1 x + b_1) ...) + b_M``.

    With ``activation="tanh"`` and no final activation this is the DDML network of Hu et al.
    (CVPR 2014); ``final_activation=True`` also squashes the embedding as DDML does.

    >>> MLPHead(in_shape=(64,), hidden=(32,), out_features=8)(torch.zeros(3, 64)).shape
    torch.Size([3, 8])
    """

    def __init__(self, in_shape=(64,), hidden=(256,), out_features: int = 64, activation: str = "relu",
                 normalize: bool = False, final_activation: bool = False, dropout: float = 0.0):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.out_features = check_int(out_features, "out_features", 1)
        self.normalize = check_flag(normalize, "normalize")
        final_activation = check_flag(final_activation, "final_activation")
        sizes = [flat_features(in_shape), *check_ints(hidden, "hidden", 1, "(256,)"), self.out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            last = i == len(sizes) - 2
            if not last or final_activation:
                layers.append(_ACTIVATIONS[activation]())
            if not last and dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)

    def embed(self, x):
        return self.net(x.flatten(1))
