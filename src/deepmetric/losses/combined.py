"""A weighted sum of losses, each with its own miner (DESIGN.md: the ``losses:`` config list).

Typical uses: a metric loss beside a classification or centre loss (Wen et al. 2016 train softmax
+ lambda * centre loss), or two metric losses with different miners.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from deepmetric import mining
from deepmetric._checks import check_number
from deepmetric.losses.base import LOSSES


class CombinedLoss(nn.Module):
    """``L = sum_i w_i L_i(x, y, miner_i(x, y))``: each loss with its weight and its own miner.

    A loss without a miner gets the ``tuples`` passed to the call (``None``: all valid tuples).
    ``distance`` is the first loss's (the one the embedding is evaluated with). Learnable parameters
    of every loss (proxies, centres) are parameters of this module, so the trainer puts them in the
    loss parameter group.

    >>> import torch, deepmetric as dm
    >>> loss = dm.losses.combine([{"name": "triplet", "margin": 0.2, "miner": "batch-hard"},
    ...                           {"name": "contrastive", "weight": 0.5}])
    >>> x, y = torch.randn(8, 4), torch.arange(4).repeat(2)
    >>> bool(loss(x, y) >= 0)
    True
    """

    def __init__(self, losses, miners=None, weights=None):
        super().__init__()
        losses = list(losses)
        if not losses or not all(isinstance(loss, nn.Module) for loss in losses):
            raise ValueError("losses: expected a non-empty list of loss modules")
        miners = [None] * len(losses) if miners is None else list(miners)
        weights = [1.0] * len(losses) if weights is None else list(weights)
        if not len(miners) == len(weights) == len(losses):
            raise ValueError(f"miners/weights: expected one per loss ({len(losses)}), "
                             f"got {len(miners)} miners and {len(weights)} weights")
        self.losses = nn.ModuleList(losses)
        self.miners = miners
        self.weights = [check_number(f"weights[{i}]", w, low=0.0) for i, w in enumerate(weights)]

    @property
    def distance(self) -> str:
        return self.losses[0].distance

    def forward(self, embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None) -> torch.Tensor:
        total = None
        for loss, miner, weight in zip(self.losses, self.miners, self.weights):
            mined = tuples if miner is None else miner(embeddings, labels, ref_embeddings, ref_labels)
            value = weight * loss(embeddings, labels, mined, ref_embeddings, ref_labels)
            total = value if total is None else total + value
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}, miners={self.miners}"


def combine(specs) -> CombinedLoss:
    """A :class:`CombinedLoss` from config items: a loss name, or a mapping with ``name``, the loss's
    arguments, and optional ``weight`` (default 1) and ``miner`` (a miner name or mapping; for a loss that
    takes a miner itself, ``xbm``, the loss's own)."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ValueError(f"losses: expected a non-empty list of losses, got {specs!r}")
    losses, miners, weights = [], [], []
    for i, spec in enumerate(specs):
        spec = {"name": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else None
        if spec is None or "name" not in spec:
            raise ValueError(f"losses[{i}]: expected a loss name or a mapping with 'name', got {specs[i]!r}")
        weights.append(spec.pop("weight", 1.0))
        takes_miner = spec["name"] in LOSSES and "miner" in inspect.signature(LOSSES.get(spec["name"])).parameters
        miner = None if takes_miner else spec.pop("miner", None)  # xbm's miner mines against its memory
        miners.append(None if miner is None else mining.create(miner))
        losses.append(LOSSES.create(spec))
    return CombinedLoss(losses, miners, weights)
