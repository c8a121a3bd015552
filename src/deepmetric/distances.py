"""Pairwise distances and similarities between a batch ``x`` (B, D) and a reference set ``y`` (R, D).

Every function returns a ``(B, R)`` matrix. Distances grow with dissimilarity; ``dot`` and ``cosine``
similarities grow with similarity. L2 normalisation is never done here: it is an option of the
model's head (DESIGN.md). Use :func:`pairwise` with a name to pick one; :func:`is_similarity` tells
which direction a name ranks in.
"""
from __future__ import annotations

import math

import torch

DISTANCES = ("euclidean", "squared_euclidean", "cosine", "dot")


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||^2`` via ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product), clamped at 0."""
    d2 = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.T)
    return d2.clamp_min(0.0)


def _euclidean_values(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``sqrt(d2)`` where ``d2 > 1e-12`` and 0 elsewhere (NaN included), with
    ``d2 = |x|^2 + |y|^2 - 2 x.y`` computed as :func:`squared_euclidean` does, in place and without
    autograd. ``y=None`` means ``y = x`` (one squared norm)."""
    sq_x = x.pow(2).sum(1)
    sq_y = sq_x if y is None else y.pow(2).sum(1)
    d2 = (sq_x.unsqueeze(1) + sq_y.unsqueeze(0)).sub_((x @ (x if y is None else y).T).mul_(2.0))
    # threshold_: d2 if d2 > 1e-12 else 0 (NaN stays NaN until nan_to_num_ maps it to 0)
    return torch.nn.functional.threshold_(d2, 1e-12, 0.0).sqrt_().nan_to_num_(nan=0.0, posinf=math.inf)


class _Euclidean(torch.autograd.Function):
    """:func:`euclidean` with a hand-written backward (a few fused passes instead of autograd's
    chain through clamp, sqrt and where). With ``G = dL/dD`` and ``W = G / D`` (0 where ``D = 0``)::

        dL/dx_i = x_i sum_j W_ij - sum_j W_ij y_j,      dL/dy_j = y_j sum_i W_ij - sum_i W_ij x_i

    and for ``y = x`` (``y`` given as None) the two parts add up to ``x * rowsum(W + W^T) - (W + W^T) x``
    (one matrix product). The backward is written in differentiable operations, so double backward
    works."""

    @staticmethod
    def forward(ctx, x, y):
        d = _euclidean_values(x, y)
        ctx.self_distance = y is None
        ctx.save_for_backward(x, x if y is None else y, d)
        return d

    @staticmethod
    def backward(ctx, grad):
        x, y, d = ctx.saved_tensors
        # D > 0 means D >= 1e-6 (d2 > 1e-12), so the clamp only replaces the zeros, where sign(D) = 0
        w = (grad * d.sign()) / d.clamp_min(1e-7)
        if ctx.self_distance:
            w = w + w.T
            return x * w.sum(1, keepdim=True) - w @ x, None
        grad_x = x * w.sum(1, keepdim=True) - w @ y if ctx.needs_input_grad[0] else None
        grad_y = y * w.sum(0).unsqueeze(1) - w.T @ x if ctx.needs_input_grad[1] else None
        return grad_x, grad_y


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||_2``, with a zero gradient (not NaN) where two points coincide.

    Values: ``sqrt(d2)`` where ``d2 > 1e-12`` and 0 elsewhere, ``d2`` as in
    :func:`squared_euclidean`. The gradient is that of this formula (``(x_i - y_j) / D_ij``, 0 where
    ``D_ij = 0``), computed by a hand-written backward.
    """
    other = None if y is x else y
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return _Euclidean.apply(x, other)
    return _euclidean_values(x, other)


class _Gram(torch.autograd.Function):
    """``x @ x.T`` with the backward ``(G + G^T) x``: one matrix product where autograd, seeing two
    operands, does two. Written in differentiable operations (double backward works)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x @ x.T

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (grad + grad.T) @ x


def _matmul_t(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y.T``, through :class:`_Gram` when ``y`` is ``x`` and a gradient is needed."""
    if y is x and torch.is_grad_enabled() and x.requires_grad:
        return _Gram.apply(x)
    return x @ y.T


class _L2Normalize(torch.autograd.Function):
    """Rows divided by their L2 norm (``torch.nn.functional.normalize(x, dim=1, eps=1e-12)``, same
    values and gradients) with a multiplication by ``rsqrt`` and a hand-written backward
    ``(g - y (g . y)) / |x|`` (``g / eps`` for rows under ``eps``, where the norm is the constant
    ``eps``): about half the time of the division's autograd graph."""

    @staticmethod
    def forward(ctx, x, eps):
        y = x * torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True).clamp_min(eps * eps))
        ctx.save_for_backward(x, y)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        sq = x.pow(2).sum(dim=1, keepdim=True)  # recomputed from x, so that double backward sees it
        along = (grad * y).sum(dim=1, keepdim=True).masked_fill(sq < ctx.eps ** 2, 0)
        return (grad - y * along) * torch.rsqrt(sq.clamp_min(ctx.eps ** 2)), None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x_i / max(|x_i|, eps)`` row by row (zero rows stay zero)."""
    return _L2Normalize.apply(x, eps)


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x_i.y_j / (|x_i| |y_j|)``; zero vectors have similarity 0 to everything."""
    xn = l2_normalize(x)
    return _matmul_t(xn, xn) if y is x else xn @ l2_normalize(y).T


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine distance ``1 - cos(x_i, y_j)``."""
    return 1.0 - cosine_similarity(x, y)


def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dot-product similarity ``x_i.y_j`` (ranked in descending order; search negates it)."""
    return _matmul_t(x, y)


_FUNCTIONS = {"euclidean": euclidean, "squared_euclidean": squared_euclidean, "cosine": cosine, "dot": dot}


def check_distance(name: str) -> str:
    """Return ``name`` if it is a known distance, else raise listing the known ones."""
    if not isinstance(name, str) or name not in _FUNCTIONS:
        raise ValueError(f"distance: unknown name {name!r}; expected one of {', '.join(DISTANCES)}")
    return name


def pairwise(x: torch.Tensor, y: torch.Tensor | None = None, distance: str = "euclidean") -> torch.Tensor:
    """``(B, R)`` matrix of ``distance`` between rows of ``x`` and rows of ``y`` (``y`` defaults to ``x``).

    ``cosine`` returns the cosine *distance* and ``dot`` the raw dot *similarity*; use
    :func:`as_ascending` to turn any of them into "smaller is closer" scores.
    """
    fn = _FUNCTIONS[check_distance(distance)]
    return fn(x, x if y is None else y)


def is_similarity(distance: str) -> bool:
    """True when larger values of ``pairwise(..., distance)`` mean more similar (only ``dot``)."""
    return check_distance(distance) == "dot"


def as_ascending(matrix: torch.Tensor, distance: str) -> torch.Tensor:
    """Scores where smaller means closer: distances unchanged, ``dot`` negated (DESIGN.md)."""
    return -matrix if is_similarity(distance) else matrix
