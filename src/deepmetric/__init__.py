"""deepmetric: deep metric learning for images, video and audio.

>>> import deepmetric as dm
>>> loss = dm.losses.create("triplet", margin=0.2)
>>> miner = dm.mining.create("semi-hard", margin=0.2)

The submodules are imported on first use (``dm.losses`` imports :mod:`deepmetric.losses`), so that
``import deepmetric`` and the command line's help do not pay for torch, faiss and numba up front.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("codes", "data", "distances", "evaluation", "functional", "index", "labels", "losses", "mining",
               "models", "registry", "report", "training", "tuples")
#: names of the package itself, from the submodule that defines them
_NAMES = {"evaluate": "evaluation", "Pairs": "tuples", "Triplets": "tuples", "Quadlets": "tuples"}

__all__ = ["data", "distances", "index", "labels", "losses", "mining", "models", "evaluate", "Pairs", "Triplets",
           "Quadlets", "__version__"]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f"deepmetric.{_NAMES[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"deepmetric.{name}")
    else:
        raise AttributeError(f"module 'deepmetric' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
