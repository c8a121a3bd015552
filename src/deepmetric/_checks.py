"""Input validation shared by every module: fail early, name the argument, say what was expected."""
from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
import warnings

import numpy as np
import torch


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_IMPORTLIB = os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep  # deepmetric's lazy submodules


def warn(message: str) -> None:
    """``warnings.warn`` attributed to the caller's own code: the first frame outside deepmetric, however
    deep inside the library the warning is raised. Like ``stacklevel``, the count skips the import
    system's frames (a warning raised while a module is imported)."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        if not ("importlib" in name and "_bootstrap" in name):  # frames stacklevel does not count
            level += 1
            if not (os.path.abspath(name).startswith(_PACKAGE) or os.path.abspath(name).startswith(_IMPORTLIB)):
                break
        frame = frame.f_back
    warnings.warn(message, stacklevel=level)


def as_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a torch tensor: tensors as they are; numpy arrays of numbers or bools shared when torch
    can read them in place, else copied (read-only, not C-contiguous, or in non-native byte order,
    which torch refuses); anything else is an error naming the argument."""
    if isinstance(x, torch.Tensor):
        return x
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if not (x.dtype == np.bool_ or np.issubdtype(x.dtype, np.number)):
        raise TypeError(f"{name}: expected a numeric or bool array, got dtype {x.dtype}")
    if not (x.flags.writeable and x.flags.c_contiguous and x.dtype.isnative):
        x = np.array(x, dtype=x.dtype.newbyteorder("="), order="C")
    return torch.from_numpy(x)


class ExtremeValuesError(ValueError):
    """Embeddings holding NaN or infinite values, or rows too long to compute distances with: in
    training, the sign of a diverged run (the trainer names the step and the learning rate)."""


def check_groups(query_groups, gallery_groups, n_q: int, n_g: int, names=("query_groups", "gallery_groups")):
    """``(query_groups, gallery_groups)`` as int64 ``(n_q,)`` and ``(n_g,)`` tensors (both None, or
    both given: a query's group excludes the gallery items of the same group), else an error."""
    if (query_groups is None) != (gallery_groups is None):
        raise ValueError(f"{names[0]} and {names[1]} must be given together")
    if query_groups is None:
        return None, None
    checked = []
    for groups, n, name in ((query_groups, n_q, names[0]), (gallery_groups, n_g, names[1])):
        groups = as_tensor(groups, name)
        if groups.dim() != 1 or groups.shape[0] != n:
            raise ValueError(f"{name}: expected shape ({n},), got {tuple(groups.shape)}")
        if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
            raise TypeError(f"{name}: expected integer group ids, got {groups.dtype}")
        checked.append(groups.long())
    return tuple(checked)


def check_embeddings(x: torch.Tensor, name: str = "embeddings") -> torch.Tensor:
    """Return ``x`` if it is a finite floating ``(B, D)`` tensor, else raise a clear error."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, D), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected shape (B, D), got {tuple(x.shape)} ({x.dim()}-D)")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one dimension (D >= 1), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ExtremeValuesError(f"{name}: contains NaN or infinite values (first bad rows: {bad})")
    return x


def check_number(name: str, value, low: float | None = None, strict: bool = False) -> float:
    """``value`` as a float if it is a finite real number (numpy's too, bools not), ``> low`` if ``strict``
    else ``>= low`` (``low`` None: any); else a ValueError naming ``name`` (as :func:`check_int`)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name}: expected a number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def check_flag(value, name: str) -> bool:
    """``value`` if it is a bool (numpy's too), else a TypeError naming ``name``: ``bool("false")`` is True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_int(value, name: str, low: int | None = None, high: int | None = None, why: str = "") -> int:
    """``value`` as a Python int if it is an integer (numpy's too, bools not) in ``[low, high]`` (either
    bound may be None), else a ValueError naming the argument and the range; ``why`` says where a bound
    comes from."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
            or (low is not None and value < low) or (high is not None and value > high)):
        expected = ("an integer" if low is None and high is None else f"an integer >= {low}" if high is None
                    else f"an integer <= {high}" if low is None else f"an integer in [{low}, {high}]")
        raise ValueError(f"{name}: expected {expected}{why}, got {value!r}")
    return int(value)


def check_ints(values, name: str, low: int | None = None, example: str = "(1, 10)") -> tuple[int, ...]:
    """A sequence of integers (:func:`check_int`), as a tuple; a bare integer is an error naming
    ``example``, not read as a one-item sequence."""
    if isinstance(values, (numbers.Integral, str)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of integers, e.g. {example}, got {values!r}")
    return tuple(check_int(v, name, low) for v in values)


def loss_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is float16 or bfloat16 (differentiably), else as it is. Losses sum
    thousands of terms and count pairs: float16 tops out at 65504 and bfloat16 counts exactly only
    to 256, so a half-precision batch of a few hundred gave 0, inf or NaN. Mixed-precision training
    (``torch.autocast``) runs losses in float32 for the same reason."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_magnitude(x: torch.Tensor, distance: str, name: str = "embeddings") -> None:
    """Refuse rows too long for a loss or miner computing ``distance`` in ``x``'s dtype (float32 for
    half precision, :func:`loss_precision`): cosine and dot need ``|x|^2`` within the dtype (the norm
    of a longer row overflows, and normalising it gives 0: a wrong, finite loss); euclidean distances
    need ``(|x| + |y|)^2``, up to ``(2 max |x|)^2`` (beyond, inf and NaN). Necessary, not sufficient:
    sums of many huge terms can still overflow, which the losses report from their value."""
    if x.numel():
        x = loss_precision(x.detach())
        limit = math.sqrt(torch.finfo(x.dtype).max) / (1 if distance in ("cosine", "dot") else 2)
        if not float(x.norm(dim=1).max()) < limit:  # an overflowed (inf) norm fails too
            longest = float(x.double().norm(dim=1).max())
            raise ExtremeValuesError(f"{name}: rows too long for {distance} distances in {x.dtype} (the longest "
                                     f"has norm {longest:.3g}, the limit is {limit:.3g}); scale the embeddings "
                                     "down or normalise them")


def check_loss_value(value: torch.Tensor, owner: str) -> torch.Tensor:
    """``value`` if it is finite, else an :class:`ExtremeValuesError`: finite embeddings can still make
    a loss overflow (e.g. sums of squared distances near the dtype's limit)."""
    if not bool(torch.isfinite(value).all()):
        first = value.detach().flatten()[:1].item()
        why = ("its terms overflow their dtype" if math.isinf(first) else
               "its terms overflow their dtype (inf - inf), unless the loss has a bug")
        raise ExtremeValuesError(f"{owner}: the loss is {first} on finite embeddings: {why}; scale the embeddings "
                                 "down or normalise them")
    return value


def check_seed(seed) -> int:
    """A random seed: an integer in ``[0, 2^32)`` (what scikit-learn, faiss and torch all accept)."""
    return check_int(seed, "seed", 0, 2 ** 32 - 1)


def check_labels(labels: torch.Tensor, n: int, name: str = "labels", against: str = "the embeddings") -> torch.Tensor:
    """Validate labels for ``n`` items and return them as int64 (flat/hierarchical) or bool (multi-label).

    Accepted: ``(n,)`` integer, ``(n, L)`` integer (hierarchy, column 0 coarsest) or ``(n, C)`` bool
    (multi-label). Integer dtypes other than int64 are converted; float labels are an error. An
    integer hierarchy of three or more levels of 0s and 1s only is warned about: it looks like a
    multi-hot matrix meant as bool (two levels of 0/1, e.g. a small worked example, are left alone).
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name}: expected integer (or bool multi-label) labels, got {labels.dtype}")
    if labels.dim() not in (1, 2):
        raise ValueError(f"{name}: expected shape (B,), (B, L) or (B, C), got {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows to match {against}, got {labels.shape[0]}")
    if labels.dim() == 2 and labels.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one column (hierarchy level or label), got shape "
                         f"{tuple(labels.shape)}")
    if labels.dtype == torch.bool:
        if labels.dim() != 2:
            raise ValueError(f"{name}: bool labels are multi-label and must be (B, C), got {tuple(labels.shape)}")
        return labels
    if labels.dim() == 2 and labels.shape[1] > 2 and labels.numel() and not ((labels != 0) & (labels != 1)).any():
        warn(f"{name}: integer labels of shape {tuple(labels.shape)} are read as a {labels.shape[1]}-level "
             "hierarchy (column 0 coarsest: relevant when every column is equal), but hold only 0 and 1, "
             "like a multi-hot matrix; for multi-label relevance (at least one shared label) pass them "
             "as bool (labels.bool())")
    return labels.long()


def check_pair(embeddings, labels, ref_embeddings=None, ref_labels=None, ref_names=("ref_embeddings", "ref_labels"),
               distance: str | None = None):
    """Validate a batch and its optional reference set; return all four (ref defaults to the batch),
    the labels on the embeddings' device. ``ref_names``: the reference set's argument names in error
    messages. ``distance`` (losses and miners): also :func:`check_magnitude` of both sets."""
    ref_name, ref_labels_name = ref_names
    embeddings = check_embeddings(embeddings, "embeddings")
    labels = check_labels(labels, embeddings.shape[0], "labels").to(embeddings.device)
    if distance is not None:
        check_magnitude(embeddings, distance)
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError(f"{ref_name} and {ref_labels_name} must be given together")
    if ref_embeddings is None:
        return embeddings, labels, embeddings, labels
    ref_embeddings = check_embeddings(ref_embeddings, ref_name)
    dtype = torch.promote_types(embeddings.dtype, ref_embeddings.dtype)  # e.g. a float64 reference set
    embeddings, ref_embeddings = embeddings.to(dtype), ref_embeddings.to(dtype)
    ref_labels = check_labels(ref_labels, ref_embeddings.shape[0], ref_labels_name, ref_name).to(embeddings.device)
    if ref_embeddings.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"{ref_name}: expected dimension {embeddings.shape[1]} to match embeddings, "
            f"got {ref_embeddings.shape[1]}")
    if ref_labels.dim() != labels.dim() or ref_labels.shape[1:] != labels.shape[1:] or ref_labels.dtype != labels.dtype:
        raise ValueError(
            f"{ref_labels_name}: expected the same label form as labels {tuple(labels.shape[1:])} {labels.dtype}, "
            f"got {tuple(ref_labels.shape[1:])} {ref_labels.dtype}")
    if distance is not None:
        check_magnitude(ref_embeddings, distance, ref_name)
    return embeddings, labels, ref_embeddings, ref_labels
