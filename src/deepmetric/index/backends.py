"""Index backends: exact (torch), faiss float indexes (flat, IVF, HNSW, IVF-PQ, any factory string)
and binary codes (faiss ``IndexBinaryFlat``, multi-index hashing for radius search).

Distances, always returned in ascending order (DESIGN.md):

* ``euclidean``: ``||x - y||`` (faiss L2 gives ``||x - y||^2``; its square root is returned);
* ``squared_euclidean``: ``||x - y||^2``;
* ``cosine``: ``1 - x.y / (|x| |y|)`` (vectors normalised, then faiss inner product);
* ``dot``: ``-x.y`` (faiss inner product, negated);
* ``hamming`` (binary only): the number of differing bits.

>>> import deepmetric.index as dmi
>>> index = dmi.create("flat", distance="euclidean")
>>> index.add(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), ids=["origin", "far"])
>>> d, ids = index.search(torch.tensor([[3.0, 3.0]]), k=2)
>>> index.names(ids), d.tolist()
([['far', 'origin']], [[1.0, 4.242640495300293]])
"""
from __future__ import annotations

import math
import re
import threading

import faiss
import numpy as np
import torch

from deepmetric._checks import as_tensor, check_embeddings, check_int
from deepmetric.codes import pack_bits, to_bits
from deepmetric.distances import check_distance
from deepmetric.index._heaps import order_tied_runs
from deepmetric.index.base import INDEXES, Index, read_npy
from deepmetric.index.exact import (REFINE_MARGIN, RESEARCH_MARGIN, _check_items_overflow, _max_norm, _numba_threads,
                                   _refine, _search_center, _Searcher, cut_within_rounding, search_chunks, unit_rows)


def _float_vectors(x, name: str) -> torch.Tensor:
    """A finite floating ``(N, D)`` tensor (numpy arrays accepted), float32 unless float64, detached."""
    x = check_embeddings(as_tensor(x, name) if isinstance(x, np.ndarray) else x, name).detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _cast_finite(x: torch.Tensor, dtype: torch.dtype, name: str, holder: str) -> torch.Tensor:
    """``x`` in ``dtype``, refused when values overflow it (float64 values beyond float32)."""
    x = x.to(dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: values beyond the range of {holder}; scale the embeddings down")
    return x


def _faiss_message(err: Exception) -> str:
    """faiss' own explanation without the C++ location prefix."""
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    return text.removeprefix("Error: ")


# --------------------------------------------------------------------------------------------------
# exact


@INDEXES.register("exact")
class ExactIndex(Index):
    """Exact (brute-force) k-NN over the added vectors, ties in insertion order, in the precision of
    the stored vectors: the ``k + REFINE_MARGIN`` best by blocked matrix products in torch
    (:func:`deepmetric.index.knn`), then ranked by their distances recomputed pair by pair
    (:func:`deepmetric.index.exact._refine`), so that duplicates are at distance 0 and near-duplicates
    in their true order; a row whose cut lies within the products' rounding of its k-th distance (a
    cluster of near-duplicates) is searched again with a wider margin. Supports every float distance
    and :meth:`remove`; the gallery is prepared for search (normalised or centred) once, not per call.

    >>> index = ExactIndex("euclidean")
    >>> index.add(torch.tensor([[0.0], [5.0]]), ids=torch.tensor([10, 20]))
    >>> index.search(torch.tensor([[4.0]]), k=1)[1].tolist()
    [[20]]
    """

    backend = "exact"
    _file = "vectors.npy"

    def __init__(self, distance: str = "euclidean"):
        super().__init__(check_distance(distance))
        self._vectors: torch.Tensor | None = None
        self._searcher: _Searcher | None = None  # the gallery prepared once (normalised or centred)

    def _prepare(self, vectors, name):
        x = _float_vectors(vectors, name)
        self._check_dim(x.shape[1], name)
        return x, int(x.shape[1])

    def _add(self, x, labels):
        if self._vectors is None:
            vectors = x.clone()
        else:
            x = _cast_finite(x.to(self._vectors.device), self._vectors.dtype, "vectors",
                             f"{self._vectors.dtype}, the stored vectors' type")
            vectors = torch.cat([self._vectors, x])
        _check_items_overflow(vectors, self.distance, "vectors", _search_center(vectors, self.distance))
        self._vectors, self._searcher = vectors, None

    def _search(self, queries, k):
        """Queries in the stored vectors' dtype and device, against the gallery prepared once (refined)."""
        if self._searcher is None:
            self._searcher = _Searcher(self._vectors, self.distance, refine=True)
        queries = queries.to(device=self._vectors.device)
        if queries.dtype != self._vectors.dtype:  # float64 queries of a float32 index may not fit
            queries = _cast_finite(queries, self._vectors.dtype, "queries", f"{self._vectors.dtype}, the stored "
                                   "vectors' type")
        distances, positions = search_chunks(self._searcher, queries, k)
        rounded = distances.float()
        if bool((torch.isinf(rounded) & torch.isfinite(distances)).any()):  # +inf marks an empty slot
            raise ValueError(f"queries: {self.distance} distances beyond the range of float32, in which an index "
                             "returns them (the stored vectors are float64); scale the vectors down")
        return rounded, torch.from_numpy(self._labels).to(positions.device)[positions]

    def _remove(self, labels, positions, keep):
        self._vectors = self._vectors[torch.from_numpy(keep).to(self._vectors.device)]
        self._searcher = None

    def _write(self, directory):
        with open(directory / self._file, "wb") as f:
            np.save(f, self._vectors.cpu().numpy(), allow_pickle=False)
        return [self._file]

    def _read(self, held, manifest):
        shape = (manifest["count"], manifest["dimension"])
        self._vectors = torch.from_numpy(read_npy(held, self._file, shape, [np.float32, np.float64]))
        self._searcher = None


# --------------------------------------------------------------------------------------------------
# faiss float indexes
#
# faiss' Python objects own their C++ index: ``index_factory`` and ``read_index`` return owning,
# already downcast objects, while ``downcast_index`` returns a non-owning view. Only views of an
# index kept alive elsewhere are taken here.


def _write_faiss(write, index, path) -> None:
    """faiss' ``write`` through a Python file: any path the OS takes (faiss' own takes only UTF-8), and
    a failed write (disk full) raises the OS' error."""
    with open(path, "wb") as f:
        write(index, faiss.PyCallbackIOWriter(f.write))


def _read_faiss(read, held, name: str):
    """faiss' ``read`` of the file ``name`` of a held index directory, through a Python file. faiss
    allocates the sizes a file states before reading them: a corrupt or crafted file that states more than
    the memory there is gives a ValueError naming it."""
    with held.open(name) as f:
        try:
            return read(faiss.PyCallbackIOReader(f.read))
        except MemoryError:
            raise ValueError(f"{held.path / name}: states sizes beyond the memory available (a corrupt or crafted "
                             f"faiss file)") from None


#: queries per faiss search call: faiss is slower on one call of very many queries
SEARCH_CHUNK = 4096


#: faiss' names of the search-time options
_FAISS_PARAMETERS = {"nprobe": "nprobe", "ef_search": "efSearch"}


def _search_parameters(nprobe, ef_search) -> dict:
    """The given search-time options, checked: ``{"nprobe": ..., "ef_search": ...}``."""
    return {option: check_int(value, option, 1) for option, value in (("nprobe", nprobe), ("ef_search", ef_search))
            if value is not None}


def _set_parameters(index, parameters: dict, factory: str) -> None:
    """Apply search-time options to a faiss index (ValueError naming one that does not apply)."""
    for option, value in parameters.items():
        try:
            faiss.ParameterSpace().set_index_parameter(index, _FAISS_PARAMETERS[option], value)
        except RuntimeError as err:
            raise ValueError(f"{option}: does not apply to the faiss index {factory!r}: "
                             f"{_faiss_message(err)}") from None


def _innermost(index):
    """The index inside faiss' wrappers (vector transforms, id maps), downcast."""
    while isinstance(index, (faiss.IndexPreTransform, faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    return index


def _unwrap(index):
    """The index inside faiss' id map (if any; a view owned by the map), else ``index``."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def _with_ids(index):
    """``index`` if it stores user ids itself (IVF, an id map), else wrapped in ``IndexIDMap``
    (which keeps a reference to it)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if isinstance(index, faiss.IndexIDMap) or isinstance(inner, faiss.IndexIVF):
        return index
    return faiss.IndexIDMap(index)


@INDEXES.register("faiss")
class FaissIndex(Index):
    """Any faiss float index, built from a faiss factory string (Douze et al. 2024, "The Faiss
    library"), e.g. ``create("faiss", factory="IVF64,PQ16", nprobe=8)``.

    Euclidean distances use faiss' L2 metric (``||x - y||^2``, square-rooted for ``euclidean``);
    ``cosine`` and ``dot`` its inner product on normalised resp. raw vectors. Indexes that need
    training (IVF, PQ) train on the first :meth:`add` or an explicit :meth:`train`. A factory string
    with a vector transform (``PCA64,Flat``, ``OPQ16,IVF256,PQ16``, ``RR``) measures the distance
    between the transformed vectors; for ``cosine`` put ``L2norm`` after the transform
    (``PCA64,L2norm,Flat``) so that they stay unit vectors. ``LSH`` is refused. User ids are
    kept by faiss (natively for IVF, else in an ``IndexIDMap``); :meth:`remove` works where faiss can
    (flat, IVF) and raises NotImplementedError elsewhere (e.g. HNSW).

    Args:
        factory: faiss index factory string (``"Flat"``, ``"IVF100,Flat"``, ``"HNSW32"``, ...).
        distance: ``euclidean``, ``squared_euclidean``, ``cosine`` or ``dot``.
        nprobe: inverted lists visited per query (IVF indexes).
        ef_search: candidate list size at search time (HNSW indexes).
    """

    backend = "faiss"
    _file = "index.faiss"

    def __init__(self, factory: str, distance: str = "euclidean", nprobe: int | None = None,
                 ef_search: int | None = None):
        if not isinstance(factory, str) or not factory.strip():
            raise ValueError(f"factory: expected a faiss index factory string such as 'IVF64,PQ16', got {factory!r}")
        super().__init__(check_distance(distance))
        self.factory = factory
        self._parameters = _search_parameters(nprobe, ef_search)
        self._ef_construction: int | None = None
        self._index = None
        self.options = {"factory": factory, "nprobe": self._parameters.get("nprobe"),
                        "ef_search": self._parameters.get("ef_search")}  # checked ints: saved as JSON

    @property
    def _metric(self):
        return faiss.METRIC_L2 if self.distance in ("euclidean", "squared_euclidean") else faiss.METRIC_INNER_PRODUCT

    def set_search_options(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search-time parameters, as faiss users set ``index.nprobe`` or
        ``index.hnsw.efSearch``: e.g. per request, or after :func:`deepmetric.index.load`. They apply
        to the following searches and are saved with the index; one that does not apply to this index
        (``nprobe`` of an HNSW graph) is refused and nothing changes. Before the first add, give the
        options to :func:`deepmetric.index.create` instead.

        >>> index = IVFFlatIndex(nlist=4, nprobe=1)
        >>> index.add(torch.randn(200, 8))
        >>> index.set_search_options(nprobe=4)  # every list: the exact neighbours
        >>> index.options["nprobe"]
        4
        """
        new = _search_parameters(nprobe, ef_search)
        if self._index is None:
            raise ValueError("set_search_options: the index is not built yet; give the options to create(), "
                             "or set them after the first add")
        # a dry run on an empty index of the same factory, so that a refused option changes nothing
        _set_parameters(faiss.index_factory(self._dim, self.factory, self._metric), new, self.factory)
        _set_parameters(_unwrap(self._index), new, self.factory)
        self._parameters = {**self._parameters, **new}
        self.options.update(new)

    def _configure(self, index) -> None:
        """Apply search-time parameters (and HNSW's efConstruction) to the unwrapped index."""
        _set_parameters(index, self._parameters, self.factory)
        if self._ef_construction is not None:
            index.hnsw.efConstruction = self._ef_construction

    def _build(self, d: int) -> None:
        try:
            index = faiss.index_factory(d, self.factory, self._metric)
        except RuntimeError as err:
            raise ValueError(f"factory: faiss cannot build {self.factory!r} for dimension {d} and distance "
                             f"{self.distance}: {_faiss_message(err)}") from None
        inner = _innermost(index)
        if isinstance(inner, faiss.IndexLSH):
            raise ValueError(f"factory: {self.factory!r} ranks by the Hamming distance of its own bit codes, not "
                             f"by {self.distance}; for binary codes use deepmetric.codes and the 'binary' index")
        if inner.metric_type != self._metric:  # e.g. HNSW over PQ codes: faiss builds it for L2 whatever asked
            raise ValueError(f"factory: faiss builds {self.factory!r} for the squared euclidean metric only, so it "
                             f"cannot rank by {self.distance}; use a euclidean distance or another factory string")
        self._configure(index)
        self._index = _with_ids(index)

    def _prepare(self, vectors, name):
        x = _float_vectors(vectors, name)
        self._check_dim(x.shape[1], name)
        x = _cast_finite(x, torch.float32, name, "float32, in which faiss holds vectors")
        if self.distance == "cosine":
            x = unit_rows(x)
        _check_items_overflow(x, self.distance, name)  # scores are bounded by (2 max(|x|, |y|))^2
        return np.ascontiguousarray(x.cpu().numpy()), int(x.shape[1])

    def train(self, vectors) -> None:
        """Train the index (IVF centroids, PQ codebooks) on ``(N, D)`` vectors without adding them;
        a no-op for indexes that need no training or are trained already."""
        x, d = self._prepare(vectors, "vectors")
        if self._index is None:
            self._build(d)
            self._dim = d
        self._train(x)

    def _train(self, x: np.ndarray) -> None:
        if self._index.is_trained:
            return
        try:
            self._index.train(x)
        except RuntimeError as err:
            raise ValueError(f"vectors: cannot train the {self.backend} index {self.factory!r} on "
                             f"{x.shape[0]} vectors: {_faiss_message(err)}") from None

    def _add(self, x, labels):
        first = self._index is None
        try:
            if first:
                self._build(x.shape[1])
            self._train(x)
            try:
                self._index.add_with_ids(x, labels)
            except RuntimeError as err:  # e.g. NSG builds its graph on the first add only, from > 100 vectors
                raise ValueError(f"vectors: faiss cannot add {x.shape[0]} vectors to {self.factory!r} "
                                 f"holding {len(self)}: {_faiss_message(err)}") from None
        except BaseException:
            if first:  # no index for a dimension that was never added: the next add may bring another
                self._index = None
            raise

    def _search(self, queries, k):
        """faiss' top-k with ties in insertion order. faiss keeps an arbitrary subset of the items
        tied at the k-th distance (the last inserted, for inner products), so one more is searched;
        the rare rows whose (k+1)-th result ties with the k-th are searched again, deeper, until the
        tied run ends inside their results. faiss is never asked for more items than the index holds
        (``k <= len(self)`` here): its NSG search then never returns."""
        n = len(self)
        depth = min(k + 1, n)
        d, ids = self._ordered_search(queries, depth)
        cut = np.flatnonzero((d[:, k] == d[:, k - 1]) & (ids[:, k] >= 0)) if depth > k else np.empty(0, np.int64)
        d, ids = np.ascontiguousarray(d[:, :k]), np.ascontiguousarray(ids[:, :k])
        while cut.size and depth < n:
            depth = min(2 * depth, n)
            deeper_d, deeper_ids = self._ordered_search(queries[cut], depth)
            d[cut], ids[cut] = deeper_d[:, :k], deeper_ids[:, :k]
            cut = cut[(deeper_d[:, -1] == deeper_d[:, k - 1]) & (deeper_ids[:, -1] >= 0)]
        return torch.from_numpy(d), torch.from_numpy(ids)

    def _ordered_search(self, queries, k):
        d, ids = self._faiss_search(queries, k)
        self._order_ties(d, ids)
        return d, ids

    def _faiss_search(self, queries, k, index=None):
        """faiss' search as distances in DESIGN.md's conventions (ascending; +inf for empty slots), of
        ``index`` (default: the index itself, which returns the user's ids)."""
        d = np.empty((queries.shape[0], k), dtype=np.float32)
        ids = np.empty((queries.shape[0], k), dtype=np.int64)
        # an HNSW graph keeps ef_search candidates: fewer than k would leave slots empty although the
        # index holds more items (faiss does not raise it to k, as hnswlib does); raised for this search
        # only, by its own parameters (the index is not changed: other threads may be searching it)
        graph = getattr(_innermost(self._index), "hnsw", None)  # inside transforms (PCA, L2norm) too
        params = hnsw = None
        if graph is not None and graph.efSearch < k:
            hnsw = faiss.SearchParametersHNSW()  # kept referenced while the transform's parameters point to it
            hnsw.efSearch = k
            params = hnsw
            if isinstance(self._index, faiss.IndexPreTransform):
                params = faiss.SearchParametersPreTransform()
                params.index_params = hnsw
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        try:  # faiss' C++ search: its Python wrapper takes no parameters once faiss.contrib.torch_utils replaced it
            for s in range(0, queries.shape[0], SEARCH_CHUNK):
                n = min(SEARCH_CHUNK, queries.shape[0] - s)
                (index or self._index).search_c(n, faiss.swig_ptr(queries[s:s + n]), k, faiss.swig_ptr(d[s:s + n]),
                                                faiss.swig_ptr(ids[s:s + n]), params)
        except RuntimeError as err:  # e.g. faiss' two-level "Residual" indexes cannot search
            raise ValueError(f"factory: faiss cannot search {self.factory!r}: {_faiss_message(err)}") from None
        self._to_distances(d)
        d[ids < 0] = np.inf
        return d, ids

    def _to_distances(self, d: np.ndarray) -> None:
        """faiss' scores (``||x - y||^2`` or ``x.y``, by :attr:`_metric`) as distances, in place (the
        results may be large). Cosine under the L2 metric ranks unit vectors: ``1 - cos = ||x - y||^2 / 2``."""
        if self._metric == faiss.METRIC_L2:
            np.maximum(d, 0.0, out=d)
            if self.distance == "euclidean":
                np.sqrt(d, out=d)
            elif self.distance == "cosine":
                np.multiply(d, 0.5, out=d)
        elif self.distance == "cosine":
            np.subtract(1.0, d, out=d)
            np.maximum(d, 0.0, out=d)
        else:
            np.negative(d, out=d)

    def _order_ties(self, d: np.ndarray, ids: np.ndarray) -> None:
        """Put equal distances in insertion order, in place, in the rows that hold a tie (one pass per
        row, compiled): their ids are mapped to insertion positions, ordered, and mapped back."""
        rows = np.flatnonzero((d[:, 1:] == d[:, :-1]).any(axis=1))
        if not rows.size:
            return
        sub_ids = ids[rows]
        positions = np.full(sub_ids.shape, -1, dtype=np.int64)  # -1 slots (+inf) stay together
        found = sub_ids >= 0
        positions[found] = self._labels_keys().find(sub_ids[found], "ids")
        with _numba_threads():
            order_tied_runs(np.ascontiguousarray(d[rows]), positions)
        ids[rows] = np.where(positions >= 0, self._labels[positions.clip(min=0)], -1)

    def _remove(self, labels, positions, keep):
        if isinstance(_innermost(self._index), (faiss.IndexIVFFastScan, faiss.IndexFastScan)):
            raise NotImplementedError(f"remove: the {self.backend} index ({self.factory}) cannot remove vectors: "
                                      "faiss' remove_ids leaves fast-scan codes inconsistent, so vectors added "
                                      "afterwards get wrong distances; build a new index without them")
        try:
            removed = self._index.remove_ids(np.ascontiguousarray(labels, dtype=np.int64))
        except RuntimeError as err:
            raise NotImplementedError(f"remove: the {self.backend} index ({self.factory}) cannot remove "
                                      f"vectors: {_faiss_message(err)}") from None
        if removed != len(labels):
            raise RuntimeError(f"remove: faiss removed {removed} of {len(labels)} vectors")

    def _write(self, directory):
        _write_faiss(faiss.write_index, self._index, directory / self._file)
        return [self._file]

    def _read(self, held, manifest):
        path = held.path / self._file
        try:
            index = _read_faiss(faiss.read_index, held, self._file)
        except RuntimeError as err:
            raise ValueError(f"{path}: cannot read as a faiss index: {_faiss_message(err)}") from None
        if index.d != manifest["dimension"] or index.ntotal != manifest["count"]:
            raise ValueError(f"{path}: holds {index.ntotal} vectors of dimension {index.d}, the manifest says "
                             f"{manifest['count']} of dimension {manifest['dimension']}")
        metric = _innermost(index).metric_type
        if metric != self._metric:
            names = {faiss.METRIC_L2: "L2", faiss.METRIC_INNER_PRODUCT: "inner product"}
            raise ValueError(f"{path}: holds a faiss index of the {names.get(metric, '?')} "
                             f"metric, but the manifest's distance {self.distance} needs "
                             f"{names[self._metric]} (saved by an earlier deepmetric, or the manifest was edited); "
                             "rebuild it")
        self._configure(_unwrap(index))
        self._index = index


@INDEXES.register("flat")
class FlatIndex(FaissIndex):
    """faiss exact search (``IndexFlatL2`` / ``IndexFlatIP``): every stored vector compared with
    every query. Supports :meth:`remove`."""

    backend = "flat"

    def __init__(self, distance: str = "euclidean"):
        super().__init__("Flat", distance)
        self.options = {}
        self._max_norm: float | None = None  # of the stored vectors, for the rounding bound of a search

    def _search(self, queries, k):
        """Exact top-k, ties in insertion order, as the ``exact`` index ranks (but for cosine: faiss holds
        the unit rows, so equal cosines of different directions can be a float32 rounding apart): faiss' ``k +
        REFINE_MARGIN`` best, ranked by their distances recomputed pair by pair (:func:`_refine`; with
        20 queries or more faiss computes ``|x|^2 + |y|^2 - 2 x.y`` by BLAS, which scores identical
        vectors differently and rarely 0). A row whose last candidate lies within the products'
        rounding of its k-th distance (:func:`cut_within_rounding`) is searched again with
        ``RESEARCH_MARGIN``, then deeper while its candidates end in a run of distances equal to the
        k-th, until the run ends inside them or every item is a candidate."""
        flat, n = _unwrap(self._index), len(self)
        vectors = torch.from_numpy(faiss.rev_swig_ptr(flat.get_xb(), n * flat.d).reshape(n, flat.d))
        if self._max_norm is None:
            self._max_norm = _max_norm(vectors)
        queries = torch.from_numpy(queries)
        distances = torch.empty((queries.shape[0], k), dtype=torch.float32)
        positions = torch.empty((queries.shape[0], k), dtype=torch.long)
        rows, depth = torch.arange(queries.shape[0]), min(k + REFINE_MARGIN, n)
        while rows.numel():
            d, p = self._faiss_search(queries[rows].numpy(), depth, flat)  # positions in insertion order
            last = torch.from_numpy(d[:, -1])
            refined, p = _refine(queries[rows], vectors, self.distance, torch.from_numpy(p))
            distances[rows], positions[rows] = refined[:, :k], p[:, :k]
            if depth == n:
                break
            kth = refined[:, k - 1]
            again = refined[:, -1] == kth  # a run of ties that may go on beyond the candidates
            if depth == min(k + REFINE_MARGIN, n):  # the first search: candidates cut by rounded scores
                score = {"euclidean": last.double().square(), "cosine": last - 1.0}.get(self.distance, last)
                again |= cut_within_rounding(score, kth, queries[rows], self.distance, self._max_norm, True)
            rows, depth = rows[again], min(max(2 * depth, k + RESEARCH_MARGIN), n)
        return distances, torch.from_numpy(self._labels)[positions.clamp(min=0)].masked_fill_(positions < 0, -1)

    def _add(self, x, labels):
        super()._add(x, labels)
        if self._max_norm is not None:
            self._max_norm = max(self._max_norm, _max_norm(torch.from_numpy(x)))

    def _remove(self, labels, positions, keep):
        super()._remove(labels, positions, keep)
        self._max_norm = None

    def _read(self, held, manifest):
        super()._read(held, manifest)
        self._max_norm = None


@INDEXES.register("ivf-flat")
class IVFFlatIndex(FaissIndex):
    """Inverted file (Sivic & Zisserman 2003; Jégou et al. 2011): k-means splits the space into
    ``nlist`` cells (trained on the first add); a query visits the ``nprobe`` nearest cells and
    compares exact distances inside them (faiss ``IVF{nlist},Flat``). Supports :meth:`remove`."""

    backend = "ivf-flat"

    def __init__(self, distance: str = "euclidean", nlist: int = 100, nprobe: int = 8):
        nlist = check_int(nlist, "nlist", 1)
        super().__init__(f"IVF{nlist},Flat", distance, nprobe=check_int(nprobe, "nprobe", 1))
        self.options = {"nlist": nlist, "nprobe": self.options["nprobe"]}


@INDEXES.register("hnsw")
class HNSWIndex(FaissIndex):
    """Hierarchical navigable small-world graph (Malkov & Yashunin 2018): each vector linked to
    ``M`` neighbours per layer; ``ef_construction`` candidates when inserting, ``ef_search`` when
    searching, raised to ``k`` for a search of more (faiss ``HNSW{M},Flat``). Cannot remove vectors."""

    backend = "hnsw"

    def __init__(self, distance: str = "euclidean", M: int = 32, ef_construction: int = 40, ef_search: int = 64):
        M = check_int(M, "M", 1)
        super().__init__(f"HNSW{M},Flat", distance, ef_search=check_int(ef_search, "ef_search", 1))
        self._ef_construction = check_int(ef_construction, "ef_construction", 1)
        self.options = {"M": M, "ef_construction": self._ef_construction, "ef_search": self.options["ef_search"]}


@INDEXES.register("ivf-pq")
class IVFPQIndex(FaissIndex):
    """IVFADC (Jégou, Douze & Schmid 2011, "Product quantization for nearest neighbor search"):
    an inverted file of ``nlist`` cells whose residuals are product-quantised into ``m`` sub-vectors
    of ``nbits`` bits each; distances are asymmetric approximations ``||x - q(y)||^2`` (faiss
    ``IVF{nlist},PQ{m}x{nbits}np``: no polysemous training, which only serves Hamming-filtered search
    and costs seconds). ``m`` must divide the dimension; training needs at least
    ``max(nlist, 2^nbits)`` vectors. Supports :meth:`remove`."""

    backend = "ivf-pq"

    def __init__(self, distance: str = "euclidean", nlist: int = 100, m: int = 8, nbits: int = 8, nprobe: int = 8):
        nlist, self.m, nbits = check_int(nlist, "nlist", 1), check_int(m, "m", 1), check_int(nbits, "nbits", 1)
        super().__init__(f"IVF{nlist},PQ{self.m}x{nbits}np", distance, nprobe=check_int(nprobe, "nprobe", 1))
        self.options = {"nlist": nlist, "m": self.m, "nbits": nbits, "nprobe": self.options["nprobe"]}

    def _build(self, d):
        if d % self.m:
            raise ValueError(f"m: expected a divisor of the dimension {d} (sub-vectors of equal length), got {self.m}")
        super()._build(d)


@INDEXES.register("ivf-fastscan")
class IVFFastScanIndex(FaissIndex):
    """IVF with 4-bit product quantisation scanned in SIMD registers ("PQ fast scan": André, Kermarrec &
    Le Scouarnec 2015, "Cache locality is not enough: high-performance nearest neighbor search with
    product quantization fast scan"), then exact re-ranking: a query visits its ``nprobe`` nearest of
    ``nlist`` k-means cells, ranks their codes by the asymmetric distance ``||x - q(y)||^2`` with
    ``q`` = ``m`` sub-quantisers of 16 centroids (looked up 32 codes at a time), and the best
    ``refine * k`` are re-ranked by their exact distances (faiss ``IVF{nlist},PQ{m}x4fs,RFlat``;
    ``refine=0`` keeps the approximate distances, ``IVF{nlist},PQ{m}x4fs``).

    This is the approximate mode of ``evaluate`` on large galleries: the codes scan several times
    faster than ``ivf-flat``'s float vectors, and re-ranking makes the returned order exact among the
    candidates. The cells are trained on up to ``TRAIN_PER_LIST`` vectors per list (all of them for
    ``n <= TRAIN_PER_LIST * nlist``); ``m`` must divide the dimension (default: half of it).
    Cannot :meth:`remove`: faiss' re-ranking stage cannot, and its removal from fast-scan codes
    leaves them inconsistent (vectors added afterwards get wrong distances; faiss 1.15).

    Distances: ``euclidean``, ``squared_euclidean`` and ``cosine``, the last as the euclidean ranking
    of unit vectors (``1 - cos = ||x - y||^2 / 2``; zero vectors, which have no direction, are
    refused). ``dot`` is refused: faiss' fast scan of inner products returns empty slots for items
    that exist (zero queries, coarse-valued vectors); use ``ivf-flat`` or ``hnsw`` for it.
    """

    backend = "ivf-fastscan"
    TRAIN_PER_LIST = 1024

    def __init__(self, distance: str = "euclidean", nlist: int = 256, m: int | None = None, nprobe: int = 16,
                 refine: float = 1.0):
        nlist = check_int(nlist, "nlist", 1)
        self.m = None if m is None else check_int(m, "m", 1)
        if isinstance(refine, bool) or not isinstance(refine, (int, float)) or not (refine == 0 or refine >= 1):
            raise ValueError(f"refine: expected 0 (no re-ranking) or a factor >= 1, got {refine!r}")
        self.refine = float(refine)
        if check_distance(distance) == "dot":
            raise ValueError("distance: ivf-fastscan supports euclidean, squared_euclidean and cosine, not 'dot' "
                             "(faiss' fast scan of inner products drops results); use ivf-flat or hnsw")
        self._template = f"IVF{nlist},PQ{{m}}x4fs" + (",RFlat" if self.refine else "")
        super().__init__(self._template, distance, nprobe=check_int(nprobe, "nprobe", 1))
        self.options = {"nlist": nlist, "m": self.m, "nprobe": self.options["nprobe"], "refine": self.refine}

    @property
    def _metric(self):
        return faiss.METRIC_L2  # cosine too, on unit vectors

    def _prepare(self, vectors, name):
        x, d = super()._prepare(vectors, name)
        if self.distance == "cosine":
            zero = np.flatnonzero(~np.any(x != 0, axis=1))
            if zero.size:
                raise ValueError(f"{name}: zero vectors have no direction, so ivf-fastscan cannot rank them by "
                                 f"cosine (first zero rows: {zero[:5].tolist()}); use exact or flat")
        return x, d

    def _build(self, d):
        m = self.m or d // 2
        if m < 1 or d % m:
            given = f"got {m}" if self.m else f"the default is half the dimension, {m}; pass m= (index_options)"
            raise ValueError(f"m: expected a divisor of the dimension {d} (sub-vectors of equal length); {given}")
        self.factory = self._template.format(m=m)
        super()._build(d)

    def _configure(self, index) -> None:
        super()._configure(index)
        if self.refine:
            index.k_factor = self.refine
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.max_points_per_centroid = self.TRAIN_PER_LIST

    def _read(self, held, manifest):
        self.factory = self._template.format(m=self.m or manifest["dimension"] // 2)
        super()._read(held, manifest)


# --------------------------------------------------------------------------------------------------
# binary codes


def _padded(codes: np.ndarray) -> np.ndarray:
    """``codes`` copied into a buffer with a zeroed tail of at least 8 bytes: faiss' multi-hash reads
    8 bytes at a time from inside a code, which may run up to 7 bytes past the last one."""
    n, size = codes.shape
    buffer = np.zeros((n + -(-8 // size), size), dtype=np.uint8)
    buffer[:n] = codes
    return buffer[:n]


@INDEXES.register("binary")
class BinaryIndex(Index):
    """Binary codes (deep hashing) packed 8 bits to a byte, searched by Hamming distance
    ``H(q, x) = popcount(q XOR x)`` with faiss ``IndexBinaryFlat`` (exact, brute force).

    :meth:`add` and :meth:`search` take ``(N, b)`` codes in any form :func:`deepmetric.codes.to_bits`
    accepts (``{-1, +1}`` or real values binarised by sign, ``{0, 1}``, bool); ``dim`` is ``b``.
    Results are ordered by distance, ties in insertion order. :meth:`radius_search` finds every
    code within a Hamming radius, by multi-index hashing where that is faster than a scan.

    >>> index = BinaryIndex()
    >>> index.add(torch.tensor([[1, 1, 1, 1], [1, -1, -1, 1]]), ids=["a", "b"])
    >>> d, ids = index.search(torch.tensor([[1, 1, -1, 1]]), k=2)
    >>> index.names(ids), d.tolist()
    ([['a', 'b']], [[1.0, 1.0]])
    """

    backend = "binary"
    _file = "codes.faiss"

    def __init__(self, distance: str = "hamming"):
        if distance != "hamming":
            raise ValueError(f"distance: the binary index measures Hamming distance ('hamming'), got {distance!r}")
        super().__init__(distance)
        self._index = None
        self._multi_hash = None  # faiss IndexBinaryMultiHash of radius_search, built on first use
        self._hash_lock = threading.Lock()  # its build and its nflip, which faiss takes from the index, not the call

    def _prepare(self, codes, name):
        bits = to_bits(codes, name)
        self._check_dim(bits.shape[1], name)
        return pack_bits(bits, name), int(bits.shape[1])

    def _add(self, packed, labels):
        if self._index is None:
            self._index = faiss.IndexBinaryFlat(8 * packed.shape[1])
        self._index.add(packed)
        if self._multi_hash is not None:  # positions continue in both
            self._multi_hash.add(_padded(packed))

    def _search(self, packed, k):
        distances, positions = self._index.search(packed, k)
        distances = distances.astype(np.float32)
        distances[positions < 0] = np.inf
        order = np.lexsort((positions, distances))  # per row: by distance, then insertion order
        distances = np.take_along_axis(distances, order, axis=1)
        positions = np.take_along_axis(positions, order, axis=1)
        ids = np.where(positions >= 0, self._labels[positions.clip(min=0)], -1)
        return torch.from_numpy(distances), torch.from_numpy(ids)

    def _hash_plan(self, radius: int) -> tuple[int, int, bool]:
        """``(m, nflip, faster)`` of multi-index hashing for ``radius`` (Norouzi, Punjani & Fleet 2012).

        The ``d`` bits are cut into ``m`` substrings of ``s = floor(d / m)`` bits, ``s`` about
        ``log2 N`` (their choice; at most 56, the width faiss reads at once). Two codes within ``r``
        bits differ in at most ``floor(r / m)`` bits in one substring (pigeonhole), so probing each
        substring's table with up to ``nflip = floor(r / m)`` flipped bits finds them all. ``faster``:
        the estimated cost of the ``m sum_{i <= nflip} C(s, i)`` probes and of checking the
        ``N / 2^s`` codes each returns (about 250 and 300 ns, uniform codes) is below a brute-force
        scan (about 0.5 ns a code); both measured on this project's machine (docs/results.md)."""
        d, n = self._index.d, self._index.ntotal
        if self._multi_hash is not None:
            m = self._multi_hash.nhash
        else:
            m = min(d, max(-(-d // 56), round(d / math.log2(max(n, 2)))))
        bits, nflip = d // m, radius // m
        probes = m * sum(math.comb(bits, i) for i in range(min(nflip, bits) + 1))
        return m, nflip, 250 * probes + 300 * probes * n / 2 ** bits < 0.5 * n

    def radius_search(self, queries, radius: int,
                      method: str = "auto") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every stored code within Hamming distance ``radius`` (inclusive) of each query, exactly.

        ``method="hash"``: multi-index hashing (Norouzi, Punjani & Fleet 2012, "Fast search in Hamming
        space with multi-index hashing", see ``_hash_plan``) with faiss ``IndexBinaryMultiHash``. Its
        tables take about 250 bytes a code and a few seconds per million codes; they are built on the
        first such search, grown by :meth:`add`, and rebuilt after :meth:`remove` or :meth:`load`.
        ``"scan"``: a brute-force range search over every code. ``"auto"`` hashes when the estimated
        cost of a search is below the scan's: small radii on large sets (64-bit codes, 1,000,000 of
        them: up to radius 8; 100,000: up to 7). The tables' one-off build is not counted: for a single
        search, ``"scan"`` is faster.

        Returns:
            ``(distances, ids)``: two lists with one 1-D tensor per query, float32 Hamming distances
            in ascending order (ties in insertion order) and the matching int64 ids.
        """
        radius = check_int(radius, "radius", 0, why=" (bits)")
        if method not in ("auto", "hash", "scan"):
            raise ValueError(f"method: expected 'auto', 'hash' or 'scan', got {method!r}")
        if self._dim is None:
            raise ValueError("radius_search: the index has no codes and no length yet; add codes first")
        packed, _ = self._prepare(queries, "queries")
        if len(self) == 0:
            return [torch.empty(0)] * packed.shape[0], [torch.empty(0, dtype=torch.long)] * packed.shape[0]
        if packed.shape[0] == 0:
            return [], []
        # faiss keeps distances < threshold: radius + 1 keeps those <= radius. Hashing for a radius
        # beyond the code length d (everything) would enumerate ever more bit flips: hash for d.
        radius = min(int(radius), self._index.d)
        m, nflip, faster = self._hash_plan(radius)
        if method == "hash" or (method == "auto" and faster):
            with self._hash_lock:  # searches from other threads: one table, built once, each its own nflip
                if self._multi_hash is None:
                    tables = faiss.IndexBinaryMultiHash(self._index.d, m, self._index.d // m)
                    tables.add(_padded(self._index.reconstruct_n(0, self._index.ntotal)))
                    self._multi_hash = tables
                self._multi_hash.nflip = nflip
                lims, distances, positions = self._multi_hash.range_search(_padded(packed), radius + 1)
        else:
            lims, distances, positions = self._index.range_search(packed, radius + 1)
        counts = np.diff(lims.astype(np.int64))
        query = np.repeat(np.arange(packed.shape[0]), counts)
        order = np.lexsort((positions, distances, query))
        distances = torch.from_numpy(distances[order].astype(np.float32))
        ids = torch.from_numpy(self._labels[positions[order]])
        counts = counts.tolist()
        return list(distances.split(counts)), list(ids.split(counts))

    def _remove(self, labels, positions, keep):
        self._index.remove_ids(np.ascontiguousarray(positions, dtype=np.int64))  # keeps insertion order
        self._multi_hash = None

    def _write(self, directory):
        _write_faiss(faiss.write_index_binary, self._index, directory / self._file)
        return [self._file]

    def _read(self, held, manifest):
        path = held.path / self._file
        try:
            index = _read_faiss(faiss.read_index_binary, held, self._file)
        except RuntimeError as err:
            raise ValueError(f"{path}: cannot read as a faiss binary index: {_faiss_message(err)}") from None
        if index.d != 8 * -(-manifest["dimension"] // 8) or index.ntotal != manifest["count"]:
            raise ValueError(f"{path}: holds {index.ntotal} codes of {index.d} bits, the manifest says "
                             f"{manifest['count']} of {manifest['dimension']} bits")
        self._index = index


__all__ = ["ExactIndex", "FaissIndex", "FlatIndex", "IVFFlatIndex", "HNSWIndex", "IVFPQIndex", "BinaryIndex"]
