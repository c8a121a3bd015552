"""A frozen feature extractor loaded from a local weights file, with a trainable head on top."""
from __future__ import annotations

from pathlib import Path

import torch

from deepmetric._checks import check_flag
from deepmetric.models.heads import MODELS, Embedder


@MODELS.register("frozen")
class FrozenExtractor(Embedder):
    """``f(x) = head(backbone(x))`` where ``backbone`` is fixed (no gradient, eval mode).

    ``backbone`` is a model spec (e.g. ``{"name": "cnn", "out_features": 128}``) whose weights come from
    ``weights``, a local ``state_dict`` file (or a deepmetric checkpoint) loaded with
    ``weights_only=True``; nothing is ever downloaded. ``head`` is a model spec built on the backbone's
    output (default: a linear head).
    """

    def __init__(self, in_shape, backbone, weights: str, head=None, normalize: bool = False):
        super().__init__()
        from deepmetric.training import checkpoint

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights: no such file {path} (expected a local state_dict file)")
        self.backbone = MODELS.create(backbone, in_shape=in_shape)
        try:
            state = checkpoint.load(path)  # weights_only, and torch's advice to unpickle anything never shown
        except ValueError as err:
            raise ValueError(f"weights: {err}") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a deepmetric checkpoint
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights: {path} does not fit the backbone: missing keys {missing[:5]}, "
                             f"unexpected keys {unexpected[:5]}")
        self.backbone.requires_grad_(False).eval()
        head = head or {"name": "linear", "out_features": self.backbone.out_features}
        self.head = MODELS.create(head, in_shape=(self.backbone.out_features,))
        self.out_features, self.normalize = self.head.out_features, check_flag(normalize, "normalize")

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # batch-norm statistics stay frozen too
        return self

    def embed(self, x):
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)
