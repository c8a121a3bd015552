"""Relation masks from labels, so that losses, miners and metrics never special-case label shapes.

Label forms (DESIGN.md):

* flat ``(B,)`` int64: two items are related when their labels are equal;
* hierarchical ``(B, L)`` int64, column 0 the coarsest: two items share level ``l`` when columns
  ``0..l`` all agree (sub-class ids may recur under different parents);
* multi-label ``(B, C)`` bool: two items are related when they share at least one label.
"""
from __future__ import annotations

import torch

from deepmetric._checks import check_int


def is_multilabel(labels: torch.Tensor) -> bool:
    return labels.dtype == torch.bool and labels.dim() == 2


def is_hierarchical(labels: torch.Tensor) -> bool:
    return labels.dtype != torch.bool and labels.dim() == 2


def num_levels(labels: torch.Tensor) -> int:
    """Number of hierarchy levels (1 for flat and multi-label labels)."""
    return labels.shape[1] if is_hierarchical(labels) else 1


def shared_levels(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, R)`` int64: how many leading hierarchy levels two items share (0..L).

    For hierarchical labels, entry (i, j) is the largest ``n`` with columns ``0..n-1`` all equal.
    Flat labels behave as a one-level hierarchy (1 when equal, else 0).
    """
    ref_labels = labels if ref_labels is None else ref_labels
    if is_multilabel(labels):
        raise ValueError("shared_levels: multi-label (bool) labels have no hierarchy; use same_mask")
    levels = num_levels(labels)  # explicit, so that an empty batch keeps its shape
    a = labels.reshape(labels.shape[0], levels)
    b = ref_labels.reshape(ref_labels.shape[0], levels)
    agree = a.unsqueeze(1) == b.unsqueeze(0)  # (B, R, L), L is small
    return agree.long().cumprod(dim=2).sum(dim=2)


def level_ids(labels: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` int64: column ``l`` numbers the item's level-``l`` class (its prefix of columns
    ``0..l``) among the distinct prefixes, ``0..C_l-1`` in lexicographic order; so the last column
    numbers the finest classes."""
    if not is_hierarchical(labels):
        raise ValueError(f"labels: expected hierarchical (N, L) integer labels, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    return torch.stack([torch.unique(labels[:, :level + 1], dim=0, return_inverse=True)[1]
                        for level in range(labels.shape[1])], dim=1)


def item_classes(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes, ids)`` of flat or hierarchical labels: the distinct classes in sorted order (labels,
    or rows of a hierarchy: its finest classes) and each item's index among them."""
    return torch.unique(labels, dim=0 if labels.dim() == 2 else None, return_inverse=True)


def class_names(classes: torch.Tensor) -> list:
    """A name per class of :func:`item_classes`: the label, or ``"a/b/..."`` for a hierarchy's class."""
    return classes.tolist() if classes.dim() == 1 else ["/".join(map(str, row)) for row in classes.tolist()]


def same_mask(labels: torch.Tensor, ref_labels: torch.Tensor | None = None, level: int = -1) -> torch.Tensor:
    """``(B, R)`` bool: item i of the batch and item j of the reference set are related.

    Flat: equal labels. Hierarchical: equal at columns ``0..level`` (``level=-1`` is the finest).
    Multi-label: at least one label in common.
    """
    ref_labels = labels if ref_labels is None else ref_labels
    if is_multilabel(labels):
        return (labels.float() @ ref_labels.float().T) > 0
    if labels.dim() == 1:
        return labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    n_levels = labels.shape[1]
    level = check_int(level, "level", -n_levels, n_levels - 1) % n_levels
    return shared_levels(labels[:, : level + 1], ref_labels[:, : level + 1]) == level + 1


def pair_masks(labels: torch.Tensor, ref_labels: torch.Tensor | None = None, level: int = -1):
    """Positive and negative ``(B, R)`` masks for losses and miners.

    With no reference set (``ref_labels is None``) the reference set is the batch itself and an item
    is never its own positive (the diagonal is removed from the positive mask).
    """
    same = same_mask(labels, ref_labels, level)
    pos = same.clone()
    if ref_labels is None:
        pos.fill_diagonal_(False)
    return pos, ~same
