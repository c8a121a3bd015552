"""Nearest-neighbour indexes: ``add(vectors, ids)``, ``search(queries, k) -> (distances, ids)``, ``len()``.

Backends are registered by short name (``create("exact", distance="cosine")``). Search returns
ascending distances and keeps gallery order on ties (DESIGN.md). Only the exact torch backend exists
so far; faiss backends and save/load come later.
"""
from deepmetric.index.exact import ExactIndex, knn
from deepmetric.registry import Registry

INDEXES = Registry("index", "indexes")
INDEXES.register("exact")(ExactIndex)
create = INDEXES.create
names = INDEXES.names

__all__ = ["ExactIndex", "knn", "INDEXES", "create", "names"]
