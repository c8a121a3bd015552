"""Temporal pooling of frame features and fusion of modalities (video and audio-visual embeddings).

Pooling modules map frame features ``x`` of shape ``(B, T, D)`` and an optional ``mask`` ``(B, T)``
(bool, ``True`` = a real frame, ``None`` = every frame is real) to one vector per item ``(B, D')``.
Padded frames never change the result, whatever their values, and a row with no real frame
gives a zero vector (never NaN). Fusion modules map a dict of per-modality vectors ``{name: (B, D_m)}``
(exactly the modalities they were built for) to one embedding ``(B, out_features)``.

>>> pool = POOLINGS.create("netvlad", in_features=16, clusters=4)
>>> pool(torch.randn(2, 5, 16), mask=torch.ones(2, 5, dtype=torch.bool)).shape
torch.Size([2, 64])
"""
from __future__ import annotations

import numbers
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from deepmetric._checks import check_flag, check_int, check_ints
from deepmetric.distances import l2_normalize
from deepmetric.models.heads import MODELS, Embedder, MLPHead
from deepmetric.registry import Registry

POOLINGS = Registry("pooling")


def check_frames(x: torch.Tensor, mask: torch.Tensor | None, in_features: int | None = None,
                 name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate frames ``(B, T, D)`` and a mask ``(B, T)``; return ``(x, mask)`` with a bool mask.

    Padded frames are replaced by zeros so that no value in them (huge, infinite, NaN) can reach
    the result or its gradient.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, T, D), got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name}: expected frame features of shape (B, T, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
    if in_features is not None and x.shape[2] != in_features:
        raise ValueError(f"{name}: expected D = {in_features} features per frame, got shape {tuple(x.shape)}")
    if mask is None:
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a bool torch.Tensor of shape (B, T), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected dtype torch.bool (True = real frame), got {mask.dtype}")
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask: expected shape (B, T) = {tuple(x.shape[:2])} to match {name}, "
                         f"got {tuple(mask.shape)}")
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device)), mask


class TemporalPool(nn.Module):
    """Base class: ``forward(x (B, T, D), mask (B, T) | None) -> (B, out_features)``."""

    in_features: int | None
    out_features: int | None


@POOLINGS.register("mean")
class MeanPool(TemporalPool):
    """Average of the real frames: ``v = (1 / |R|) sum_{t in R} x_t`` (R = real frames; ``v = 0``
    when R is empty). The video-level feature of YouTube-8M (Abu-El-Haija et al., 2016) and of
    CDML (Lee et al., KDD 2018).

    ``in_features`` is optional; when given, inputs are checked against it.
    """

    def __init__(self, in_features: int | None = None):
        super().__init__()
        self.in_features = self.out_features = None if in_features is None else int(in_features)

    def forward(self, x, mask=None):
        x, mask = check_frames(x, mask, self.in_features)
        count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
        return x.sum(dim=1) / count


@POOLINGS.register("max")
class MaxPool(TemporalPool):
    """Feature-wise maximum over the real frames: ``v_d = max_{t in R} x_{t,d}`` (``v = 0`` when R
    is empty), as in the frame-level baselines of YouTube-8M (Abu-El-Haija et al., 2016).
    The gradient flows to the arg-max frame of each feature.
    """

    def __init__(self, in_features: int | None = None):
        super().__init__()
        self.in_features = self.out_features = None if in_features is None else int(in_features)

    def forward(self, x, mask=None):
        x, mask = check_frames(x, mask, self.in_features)
        low = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
        v = torch.where(mask.unsqueeze(-1), x, low).amax(dim=1)
        return torch.where(mask.any(dim=1, keepdim=True), v, torch.zeros((), dtype=x.dtype, device=x.device))


@POOLINGS.register("attention")
class AttentionPool(TemporalPool):
    """Additive (Bahdanau) attention pooling over frames (Bahdanau et al., ICLR 2015; as a pooling,
    Yang et al., NAACL 2016):

        e_t = w^T tanh(W x_t + b),   alpha = softmax_{t in R}(e_t),   v = sum_{t in R} alpha_t x_t

    Padded frames get the logit ``-inf`` (weight 0); a row with no real frame gives ``v = 0``.
    """

    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.in_features = self.out_features = int(in_features)
        hidden = check_int(hidden, "hidden", 1)
        self.project = nn.Linear(self.in_features, hidden)      # W, b
        self.score = nn.Linear(hidden, 1, bias=False)          # w

    def weights(self, x, mask=None) -> torch.Tensor:
        """The attention weights ``alpha`` ``(B, T)`` (rows with no real frame are all zero)."""
        x, mask = check_frames(x, mask, self.in_features)
        return self._weights(x, mask)

    def _weights(self, x, mask):
        e = self.score(torch.tanh(self.project(x))).squeeze(-1)
        real_row = mask.any(dim=1, keepdim=True)
        # a row with no real frame attends (uniformly, harmlessly) to its zeroed frames, so no NaN
        e = e.masked_fill(~(mask | ~real_row), float("-inf"))
        return torch.softmax(e, dim=1) * real_row

    def forward(self, x, mask=None):
        x, mask = check_frames(x, mask, self.in_features)
        return torch.einsum("bt,btd->bd", self._weights(x, mask), x)


@POOLINGS.register("netvlad")
class NetVLAD(TemporalPool):
    """NetVLAD (Arandjelovic et al., "NetVLAD: CNN architecture for weakly supervised place
    recognition", CVPR 2016), over frames instead of image locations:

        a_k(x_t) = exp(w_k^T x_t + b_k) / sum_k' exp(w_k'^T x_t + b_k')
        V_k      = sum_{t in R} a_k(x_t) (x_t - c_k)                       k = 1..K
        V_k <- V_k / |V_k|   (intra-normalisation),   V <- V / |V|   (global L2)

    with independent parameters ``w_k, b_k`` (``assign``) and centres ``c_k`` (``centers``), as in
    the paper. The output is ``V`` flattened cluster by cluster, ``(B, K * D)`` with entry
    ``k * D + d`` = ``V_k[d]``. Padded frames contribute nothing; a row with no real frame gives 0.
    ``alpha`` sets the initialisation ``w_k = 2 alpha c_k``, ``b_k = -alpha |c_k|^2`` of the paper
    (the soft-assignment is then ``softmax_k(-alpha |x - c_k|^2)``) with random centres.
    """

    def __init__(self, in_features: int, clusters: int = 8, alpha: float = 1.0):
        super().__init__()
        self.in_features, self.clusters = check_int(in_features, "in_features", 1), check_int(clusters, "clusters", 1)
        self.out_features = self.in_features * self.clusters
        self.centers = nn.Parameter(torch.randn(self.clusters, self.in_features) / self.in_features ** 0.5)
        self.assign = nn.Linear(self.in_features, self.clusters)
        with torch.no_grad():
            self.assign.weight.copy_(2 * alpha * self.centers)
            self.assign.bias.copy_(-alpha * self.centers.pow(2).sum(dim=1))

    def forward(self, x, mask=None):
        x, mask = check_frames(x, mask, self.in_features)
        a = torch.softmax(self.assign(x), dim=-1) * mask.unsqueeze(-1).to(x.dtype)  # (B, T, K)
        v = torch.einsum("btk,btd->bkd", a, x) - a.sum(dim=1).unsqueeze(-1) * self.centers
        v = l2_normalize(v.reshape(-1, self.in_features)).reshape(x.shape[0], -1)
        return l2_normalize(v)


@POOLINGS.register("recurrent")
class RecurrentPool(TemporalPool):
    """The final hidden state of a recurrent network run over the real frames only:

        h_t = RNN(x_t, h_{t-1}),   v = h_{t_last}    (GRU: Cho et al., 2014; LSTM: Hochreiter and
                                                      Schmidhuber, 1997)

    with ``t_last`` the last real frame. Real frames are read in order and padded frames are
    skipped wherever they are (sequences are packed with ``pack_padded_sequence``), so padding
    never changes the result. ``bidirectional=True`` concatenates the forward state at the last
    real frame and the backward state at the first: ``out_features = 2 * hidden``. Uses the top
    layer when ``num_layers > 1``. A row with no real frame gives 0.
    """

    def __init__(self, in_features: int, hidden: int = 128, cell: str = "gru", bidirectional: bool = False,
                 num_layers: int = 1):
        super().__init__()
        cells = {"gru": nn.GRU, "lstm": nn.LSTM}
        if cell not in cells:
            raise ValueError(f"cell: expected one of {sorted(cells)}, got {cell!r}")
        self.in_features, self.hidden = check_int(in_features, "in_features", 1), check_int(hidden, "hidden", 1)
        self.cell = cell
        self.directions = 2 if check_flag(bidirectional, "bidirectional") else 1
        self.out_features = self.hidden * self.directions
        self.rnn = cells[cell](self.in_features, self.hidden, num_layers=check_int(num_layers, "num_layers", 1),
                               batch_first=True, bidirectional=self.directions == 2)

    def forward(self, x, mask=None):
        x, mask = check_frames(x, mask, self.in_features)
        # move the real frames to the front of each row, keeping their order
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
        x = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))
        lengths = mask.sum(dim=1)
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        if self.cell == "lstm":
            h = h[0]
        v = torch.cat(list(h[-self.directions:]), dim=1)  # top layer, forward (and backward) state
        return v * (lengths > 0).unsqueeze(-1).to(v.dtype)


def _as_hidden(hidden) -> tuple[int, ...]:
    """Hidden layer sizes: one integer or a sequence of them (each >= 1)."""
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, (bool, np.bool_)):
        return (check_int(hidden, "hidden", 1),)
    return check_ints(hidden, "hidden", 1, "(256,)")


def _modality_dims(dims, in_shape, who: str) -> dict[str, int]:
    """``{modality: D_m}`` from ``dims`` (ints) or a registry ``in_shape`` (a mapping to ``(D_m,)``)."""
    def as_dims(value, arg):
        if not isinstance(value, Mapping) or not value:
            raise TypeError(f"{who}: {arg} must be a non-empty mapping modality -> feature size "
                            f"(e.g. {{'visual': 1024, 'audio': 128}}), got {value!r}")
        out = {}
        for name, d in value.items():
            shape = (d,) if isinstance(d, int) else tuple(d)
            if len(shape) != 1:
                raise ValueError(f"{who}: {arg}[{name!r}]: expected a feature size D or shape (D,), got {d!r}")
            out[str(name)] = int(shape[0])
        return out

    if dims is None and in_shape is None:
        raise TypeError(f"{who}: give dims (a mapping modality -> feature size)")
    got = as_dims(dims, "dims") if dims is not None else None
    from_shape = as_dims(in_shape, "in_shape") if in_shape is not None else None
    if got is not None and from_shape is not None and got != from_shape:
        raise ValueError(f"{who}: dims {got} and in_shape {from_shape} disagree")
    return got if got is not None else from_shape


def _check_inputs(inputs, dims: Mapping[str, int], who: str) -> list[torch.Tensor]:
    """The tensors of ``inputs`` in the order of ``dims``, each checked to be ``(B, D_m)``."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"{who}: expected a dict of modality -> (B, D) tensors with keys {list(dims)}, "
                        f"got {type(inputs).__name__}")
    missing = [m for m in dims if m not in inputs]
    unknown = [m for m in inputs if m not in dims]
    if missing or unknown:
        what = f"missing modality {missing}" if missing else f"unknown modality {unknown}"
        raise KeyError(f"{who}: {what}; expected keys {list(dims)}, got {list(inputs)}")
    out, batch = [], None
    for m, d in dims.items():
        x = inputs[m]
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != d:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{who}: inputs[{m!r}]: expected shape (B, {d}), got {shape}")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{who}: inputs[{m!r}]: expected {batch} rows like the other modalities, "
                             f"got {x.shape[0]}")
        batch = x.shape[0]
        out.append(x)
    return out


@MODELS.register("early-fusion")
class EarlyFusion(Embedder):
    """Early fusion (Lee et al., "Collaborative Deep Metric Learning for Video Understanding",
    KDD 2018): concatenate the modalities' features, then one MLP:

        f(x) = MLP([x_1; x_2; ...; x_M])

    ``dims`` maps modality names to feature sizes; features are concatenated in the order of
    ``dims``, whatever the order of the input dict. Built from the registry, ``in_shape`` is the
    shape of one item, which for multi-modal items is a mapping ``{modality: (D_m,)}``::

        MODELS.create("early-fusion", in_shape={"visual": (1024,), "audio": (128,)}, out_features=256)

    >>> EarlyFusion({"visual": 8, "audio": 4}, hidden=16, out_features=5)(
    ...     {"visual": torch.zeros(2, 8), "audio": torch.zeros(2, 4)}).shape
    torch.Size([2, 5])
    """

    def __init__(self, dims: Mapping[str, int] | None = None, hidden=(256,), out_features: int = 64,
                 normalize: bool = True, activation: str = "relu", dropout: float = 0.0, in_shape=None):
        super().__init__()
        self.dims = _modality_dims(dims, in_shape, "EarlyFusion")
        self.out_features = check_int(out_features, "out_features", 1)
        self.normalize = check_flag(normalize, "normalize")
        self.mlp = MLPHead(in_shape=(sum(self.dims.values()),), hidden=_as_hidden(hidden),
                           out_features=self.out_features, activation=activation, dropout=dropout)

    def embed(self, inputs):
        return self.mlp(torch.cat(_check_inputs(inputs, self.dims, "EarlyFusion"), dim=1))


@MODELS.register("late-fusion")
class LateFusion(Embedder):
    """Late fusion (Lee et al., "Collaborative Deep Metric Learning for Video Understanding",
    KDD 2018): one MLP per modality into the same ``out_features`` space, combined by the
    element-wise (Hadamard) product:

        f(x) = MLP_1(x_1) * MLP_2(x_2) * ... * MLP_M(x_M)

    (then L2-normalised if ``normalize``). ``dims`` and ``in_shape`` are as in :class:`EarlyFusion`.
    The per-modality networks are ``self.encoders[name]``.
    """

    def __init__(self, dims: Mapping[str, int] | None = None, hidden=(256,), out_features: int = 64,
                 normalize: bool = True, activation: str = "relu", dropout: float = 0.0, in_shape=None):
        super().__init__()
        self.dims = _modality_dims(dims, in_shape, "LateFusion")
        self.out_features = check_int(out_features, "out_features", 1)
        self.normalize = check_flag(normalize, "normalize")
        self.encoders = nn.ModuleDict({
            m: MLPHead(in_shape=(d,), hidden=_as_hidden(hidden), out_features=self.out_features,
                       activation=activation, dropout=dropout)
            for m, d in self.dims.items()})

    def embed(self, inputs):
        xs = _check_inputs(inputs, self.dims, "LateFusion")
        z = None
        for m, x in zip(self.dims, xs):
            y = self.encoders[m](x)
            z = y if z is None else z * y
        return z


class ModalityEncoders(nn.Module):
    """One encoder per modality into one shared space, for cross-modal retrieval (an audio query
    searching a visual gallery; e.g. Zeng et al., "Deep triplet neural networks with cluster-CCA for
    audio-visual cross-modal retrieval", TOMM 2020):

        f_m(x) = MLP_m(x)  in R^{out_features}  for every modality m  (L2-normalised if ``normalize``)

    ``forward(x, modality="audio")`` embeds a ``(B, D_audio)`` tensor; ``forward({...})`` embeds
    every modality given and returns a dict. Not registered in ``MODELS``: its output depends on a
    modality argument, not only on one item as the registry's models do.
    """

    def __init__(self, dims: Mapping[str, int], hidden=(256,), out_features: int = 64, normalize: bool = True,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.dims = _modality_dims(dims, None, "ModalityEncoders")
        self.out_features = check_int(out_features, "out_features", 1)
        self.normalize = check_flag(normalize, "normalize")
        self.encoders = nn.ModuleDict({
            m: MLPHead(in_shape=(d,), hidden=_as_hidden(hidden), out_features=self.out_features,
                       activation=activation, dropout=dropout, normalize=self.normalize)
            for m, d in self.dims.items()})

    def forward(self, inputs, modality: str | None = None):
        if modality is None:
            if not isinstance(inputs, Mapping):
                raise TypeError("ModalityEncoders: give modality=<name> with a tensor, or a dict "
                                f"modality -> tensor; known modalities {list(self.dims)}")
            unknown = [m for m in inputs if m not in self.dims]
            if unknown:
                raise KeyError(f"ModalityEncoders: unknown modality {unknown}; expected some of {list(self.dims)}")
            return {m: self.forward(x, modality=m) for m, x in inputs.items()}
        if modality not in self.dims:
            raise KeyError(f"ModalityEncoders: unknown modality {modality!r}; expected one of {list(self.dims)}")
        d = self.dims[modality]
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.shape[1] != d:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"ModalityEncoders: {modality}: expected shape (B, {d}), got {shape}")
        return self.encoders[modality](inputs)


@MODELS.register("video")
class VideoEmbedder(Embedder):
    """Frame features to a video embedding: ``f(x, mask) = head(pool(x, mask))``, L2-normalised if
    ``normalize``. ``x`` is ``(B, T, D)`` frame features, ``mask`` ``(B, T)`` bool (``None`` = all real);
    a clip with no real frame is refused (pooled to 0, it would land where every other empty clip does).

    ``pool`` is a pooling name (``mean``, ``max``, ``attention``, ``netvlad``, ``recurrent``), a
    mapping ``{"name": ..., **kwargs}`` (e.g. ``{"name": "netvlad", "clusters": 16}``) or a module
    with ``forward(x, mask)`` (its ``out_features`` is used, else found from one zero frame).
    The head is :class:`MLPHead` with ``hidden`` layers (``hidden=()`` for a linear head).
    Built from the registry with ``in_shape=(T, D)``; any T works at run time.

    >>> VideoEmbedder(in_shape=(10, 16), pool="attention", out_features=8)(torch.randn(2, 7, 16)).shape
    torch.Size([2, 8])
    """

    def __init__(self, in_features: int | None = None, pool="mean", hidden=(256,), out_features: int = 64,
                 normalize: bool = True, activation: str = "relu", dropout: float = 0.0, in_shape=None):
        super().__init__()
        if in_shape is not None:
            in_shape = tuple(in_shape)
            if len(in_shape) != 2:
                raise ValueError(f"VideoEmbedder: in_shape: expected (T, D) for frame features, got {in_shape}")
            if in_features is not None and int(in_features) != int(in_shape[1]):
                raise ValueError(f"VideoEmbedder: in_features {in_features} and in_shape {in_shape} disagree")
            in_features = in_shape[1]
        if in_features is None:
            raise TypeError("VideoEmbedder: give in_features (D) or in_shape (T, D)")
        self.in_features = check_int(in_features, "in_features", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        self.normalize = check_flag(normalize, "normalize")
        if isinstance(pool, nn.Module):
            self.pool = pool
        else:
            self.pool = POOLINGS.create(pool, in_features=self.in_features)
        pooled = getattr(self.pool, "out_features", None)
        if pooled is None:
            with torch.no_grad():
                pooled = self.pool(torch.zeros(1, 1, self.in_features)).shape[-1]
        self.head = MLPHead(in_shape=(int(pooled),), hidden=_as_hidden(hidden), out_features=self.out_features,
                            activation=activation, dropout=dropout)

    def embed(self, x, mask=None):
        x, mask = check_frames(x, mask, self.in_features, "VideoEmbedder: x")
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:  # its pooled vector is 0, so every empty clip would embed to the same point
            raise ValueError(f"VideoEmbedder: rows {empty[:10]}{' ...' if len(empty) > 10 else ''} have no real "
                             "frame (mask all False, or T = 0); a clip needs at least one frame to be embedded")
        return self.head(self.pool(x, mask))

    def forward(self, x, mask=None):
        z = self.embed(x, mask)
        return l2_normalize(z) if self.normalize else z
