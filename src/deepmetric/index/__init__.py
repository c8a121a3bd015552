"""Nearest-neighbour indexes: ``add(vectors, ids)``, ``search(queries, k) -> (distances, ids)``,
``remove(ids)``, ``save(dir)``, ``load(dir)``, ``len()`` (DESIGN.md "Contracts").

Backends by registry name (``create(name, distance=..., **options)``; ``names()`` lists them):

* ``exact``: torch matrix products (:func:`knn`), every float distance, exact ties in insertion order;
* ``flat``, ``ivf-flat`` (nlist, nprobe), ``hnsw`` (M, ef_construction, ef_search),
  ``ivf-pq`` (nlist, m, nbits, nprobe): faiss float indexes;
* ``ivf-fastscan`` (nlist, m, nprobe, refine): IVF with 4-bit PQ fast scan and exact re-ranking, the
  approximate mode of ``evaluate``;
* ``faiss``: any faiss factory string, ``create("faiss", factory="IVF64,PQ16")``;
* ``binary``: packed bit codes, Hamming distance, with :meth:`BinaryIndex.radius_search`.

Search returns float32 distances in ascending order and int64 ids; string ids are mapped back with
``index.names(ids)``. ``save`` writes a directory with a verified manifest; :func:`load` reads any
backend back.

>>> import torch, deepmetric.index as dmi
>>> index = dmi.create("exact", distance="cosine")
>>> index.add(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ids=torch.tensor([7, 9]))
>>> index.search(torch.tensor([[0.1, 1.0]]), k=1)[1].tolist()
[[9]]
"""
from deepmetric.index.backends import (BinaryIndex, ExactIndex, FaissIndex, FlatIndex, HNSWIndex, IVFFastScanIndex,
                                       IVFFlatIndex, IVFPQIndex)
from deepmetric.index.base import INDEXES, Index, load, read_manifest
from deepmetric.index.exact import knn

create = INDEXES.create
names = INDEXES.names

__all__ = ["Index", "ExactIndex", "FaissIndex", "FlatIndex", "IVFFlatIndex", "HNSWIndex", "IVFPQIndex",
           "IVFFastScanIndex", "BinaryIndex", "knn", "INDEXES", "create", "names", "load", "read_manifest"]
