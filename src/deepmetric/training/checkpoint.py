"""Checkpoints: atomic writes, ``weights_only=True`` loads, and the random state needed to resume."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from deepmetric._io import atomic_path


def rng_state(miners=()) -> dict:
    """Python, NumPy and torch generator states, and the private generators of ``miners`` (in their
    order), in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "miners": [m.rng_state() for m in miners],
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],  # a float or None: random.gauss's second value, kept for its next call
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict, miners=()) -> None:
    """Restore what :func:`rng_state` returned (a checkpoint that predates ``miners`` restores none)."""
    for miner, miner_state in zip(miners, state.get("miners", [])):
        miner.set_rng_state(miner_state)
    random.setstate((3, tuple(state["python"]), state.get("python_gauss")))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])


def save(path: str | Path, checkpoint: dict) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a crash never leaves a half-written file. The same
    checkpoint gives the same bytes (saved through a file object, torch does not record the temporary
    file's random name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)


def load(path: str | Path) -> dict:
    """Read a checkpoint without executing code from the file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file
        if isinstance(err, pickle.UnpicklingError):  # torch's message advises weights_only=False: running its code
            raise ValueError(f"checkpoint {path} could not be read: not a deepmetric checkpoint (corrupt, or "
                             "holding objects other than tensors and plain values, never unpickled)") from None
        raise ValueError(f"checkpoint {path} could not be read ({type(err).__name__}: {err})") from None
