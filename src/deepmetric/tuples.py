"""Typed index tuples returned by miners and accepted by losses.

They unpack like pytorch-metric-learning's tuples (``a, p, n = triplets``; ``a1, p, a2, n = pairs``)
so calls written for it work unchanged, but losses tell them apart by type, never by length.
Indices of anchors refer to the batch; indices of positives and negatives refer to the reference set
(the batch itself when no reference set is given).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


class _Tuples:
    def __iter__(self):
        return iter(getattr(self, f.name) for f in fields(self))

    def __len__(self) -> int:  # number of tuples, not of fields
        return int(getattr(self, fields(self)[0].name).numel())


@dataclass(frozen=True)
class Pairs(_Tuples):
    """Positive pairs ``(a1[k], p[k])`` and negative pairs ``(a2[k], n[k])``."""
    a1: torch.Tensor
    p: torch.Tensor
    a2: torch.Tensor
    n: torch.Tensor

    def __len__(self) -> int:
        return int(self.a1.numel() + self.a2.numel())


@dataclass(frozen=True)
class Triplets(_Tuples):
    """Triplets ``(a[k], p[k], n[k])``: anchor, positive, negative."""
    a: torch.Tensor
    p: torch.Tensor
    n: torch.Tensor


@dataclass(frozen=True)
class Quadlets(_Tuples):
    """Quadlets ``(q[k], p[k], i[k], n[k])``: query, positive, intermediate (same class, other
    sub-class) and negative, for hierarchical losses."""
    q: torch.Tensor
    p: torch.Tensor
    i: torch.Tensor
    n: torch.Tensor


def empty_index(device=None) -> torch.Tensor:
    return torch.empty(0, dtype=torch.long, device=device)
