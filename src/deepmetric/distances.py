"""Pairwise distances and similarities between a batch ``x`` (B, D) and a reference set ``y`` (R, D).

Every function returns a ``(B, R)`` matrix. Distances grow with dissimilarity; ``dot`` and ``cosine``
similarities grow with similarity. L2 normalisation is never done here: it is an option of the
model's head (DESIGN.md). Use :func:`pairwise` with a name to pick one; :func:`is_similarity` tells
which direction a name ranks in.
"""
from __future__ import annotations

import torch

DISTANCES = ("euclidean", "squared_euclidean", "cosine", "dot")


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||^2`` via ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product), clamped at 0."""
    d2 = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.T)
    return d2.clamp_min(0.0)


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||_2``, with a zero gradient (not NaN) where two points coincide."""
    d2 = squared_euclidean(x, y)
    positive = d2 > 1e-12
    return torch.where(positive, d2.clamp_min(1e-12).sqrt(), torch.zeros_like(d2))


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x_i.y_j / (|x_i| |y_j|)``; zero vectors have similarity 0 to everything."""
    xn = torch.nn.functional.normalize(x, dim=1)
    yn = torch.nn.functional.normalize(y, dim=1)
    return xn @ yn.T


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine distance ``1 - cos(x_i, y_j)``."""
    return 1.0 - cosine_similarity(x, y)


def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dot-product similarity ``x_i.y_j`` (ranked in descending order; search negates it)."""
    return x @ y.T


_FUNCTIONS = {"euclidean": euclidean, "squared_euclidean": squared_euclidean, "cosine": cosine, "dot": dot}


def check_distance(name: str) -> str:
    """Return ``name`` if it is a known distance, else raise listing the known ones."""
    if name not in _FUNCTIONS:
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
