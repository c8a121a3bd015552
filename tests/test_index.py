"""Index backends: hand-worked searches, faiss flat against exact, recall of approximate indexes,
binary top-k and radius search against brute force, ids (int64 and strings), remove, save/load with
a verified manifest (byte flips, truncation, crashes during save), training and bad input."""
import hashlib
import json
import math
import os
import shutil
import stat
import subprocess
import sys

import faiss
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deepmetric.index as dmi
from deepmetric._io import write_json
from deepmetric.codes import hamming_distances
from deepmetric.index import BinaryIndex, ExactIndex

FLOAT_DISTANCES = ("euclidean", "squared_euclidean", "cosine", "dot")
# small settings so that every backend works on a few hundred vectors
SMALL = {"exact": {}, "flat": {}, "ivf-flat": dict(nlist=4, nprobe=4), "hnsw": dict(M=8),
         "ivf-pq": dict(nlist=4, m=4, nbits=4, nprobe=4), "faiss": dict(factory="IVF4,Flat", nprobe=4),
         "ivf-fastscan": dict(nlist=4, nprobe=4)}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def clustered(n, d, seed, n_clusters=30, per_cluster=10):
    """Two-level Gaussian clusters: unit-variance centres, ``per_cluster`` sub-centres at 0.3 around
    each, points at 0.05 around a random sub-centre, so that a point's nearest neighbours (its
    sub-cluster) are well defined."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, d, generator=gen).repeat_interleave(per_cluster, 0)
    sub = centres + 0.3 * torch.randn(centres.shape, generator=gen)
    return sub[torch.randint(0, sub.shape[0], (n,), generator=gen)] + 0.05 * torch.randn(n, d, generator=gen)


def random_codes(n, bits, seed):
    return torch.randint(0, 2, (n, bits), generator=torch.Generator().manual_seed(seed)).bool()


def built(name, distance=None, n=300, d=8, seed=0, ids=None):
    kwargs = dict(SMALL[name]) if name in SMALL else {}
    if name == "binary":
        index = dmi.create("binary")
        index.add(random_codes(n, 20, seed), ids)
        return index
    index = dmi.create(name, distance=distance or "euclidean", **kwargs)
    index.add(randn(n, d, seed=seed), ids)
    return index


def queries_for(index, q=7, seed=99):
    return random_codes(q, index.dim, seed) if index.backend == "binary" else randn(q, index.dim, seed=seed)


def pair_distance(a, b, distance):
    """One distance of float64 vectors, by its definition."""
    if distance == "euclidean":
        return float((a - b).norm())
    if distance == "squared_euclidean":
        return float((a - b).pow(2).sum())
    return float(1 - a.dot(b) / (a.norm() * b.norm()))


def brute_force_order(dist_row, k):
    """Plain loop: positions sorted by (distance, position), the first k."""
    return sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))[:k]


# --------------------------------------------------------------------------------------------------
# registry and hand-worked searches


def test_registry_lists_every_backend():
    assert dmi.names() == sorted(["binary", "exact", "faiss", "flat", "hnsw", "ivf-fastscan", "ivf-flat", "ivf-pq"])
    with pytest.raises(KeyError, match="unknown index 'annoy'; known indexes: binary, exact"):
        dmi.create("annoy")


@pytest.mark.parametrize("name", ["exact", "flat", "ivf-flat", "hnsw", "faiss"])
def test_every_distance_hand_worked(name):
    # gallery a = (1, 0), b = (3, 4), c = (0, 2); query q = (2, 0)
    # squared euclidean: |q-a|^2 = 1, |q-b|^2 = 1 + 16 = 17, |q-c|^2 = 4 + 4 = 8 -> a, c, b
    # cosine: cos(q, a) = 1, cos(q, b) = 6 / (2 * 5) = 0.6, cos(q, c) = 0 -> 1 - cos = 0, 0.4, 1
    # dot: q.a = 2, q.b = 6, q.c = 0 -> negated -6 (b), -2 (a), 0 (c)
    expected = {"euclidean": ([10, 30, 20], [1.0, math.sqrt(8), math.sqrt(17)]),
                "squared_euclidean": ([10, 30, 20], [1.0, 8.0, 17.0]),
                "cosine": ([10, 20, 30], [0.0, 0.4, 1.0]),
                "dot": ([20, 10, 30], [-6.0, -2.0, 0.0])}
    options = {"ivf-flat": dict(nlist=1, nprobe=1), "faiss": dict(factory="IVF1,Flat")}.get(name, {})
    for distance, (ids, dists) in expected.items():
        index = dmi.create(name, distance=distance, **options)
        index.add(torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]]), ids=torch.tensor([10, 20, 30]))
        d, i = index.search(torch.tensor([[2.0, 0.0]]), k=4)
        assert i.dtype == torch.int64 and d.dtype == torch.float32 and d.shape == (1, 4)
        assert i.tolist() == [ids + [-1]], (name, distance)
        assert d[0, :3].tolist() == pytest.approx(dists, abs=1e-5)
        assert d[0, 3] == math.inf


def test_exact_index_add_search_ids():
    index = dmi.create("exact", distance="euclidean")
    assert isinstance(index, ExactIndex) and len(index) == 0 and index.dim is None
    index.add(torch.tensor([[0.0], [10.0]]), ids=torch.tensor([100, 200]))
    index.add(torch.tensor([[4.0], [10.0]]))  # default ids continue from the largest id: 201, 202
    assert len(index) == 4 and index.dim == 1
    d, ids = index.search(torch.tensor([[9.0], [1.0]]), k=3)
    # query 9: 10 (id 200, d=1), 10 (id 202, d=1, later in the gallery), 4 (id 201, d=5)
    # query 1: 0 (id 100, d=1), 4 (id 201, d=3), 10 (id 200, d=9)
    assert ids.tolist() == [[200, 202, 201], [100, 201, 200]]
    assert d.tolist() == [[1.0, 1.0, 5.0], [1.0, 3.0, 9.0]]
    d, ids = index.search(torch.tensor([[0.0]]), k=6)
    assert ids[0, 4:].tolist() == [-1, -1] and torch.isinf(d[0, 4:]).all()
    assert index.names(ids) == [[100, 201, 200, 202, None, None]]


def test_exact_index_errors():
    index = ExactIndex("cosine")
    with pytest.raises(ValueError, match="the index has no vectors and no dimension yet"):
        index.search(torch.zeros(1, 2), 1)
    index.add(torch.randn(3, 2), ids=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="already in the index"):
        index.add(torch.randn(1, 2), ids=torch.tensor([2]))
    with pytest.raises(ValueError, match="unique"):
        index.add(torch.randn(2, 2), ids=torch.tensor([7, 7]))
    with pytest.raises(ValueError, match="vectors: expected dimension 2 like the index, got 3"):
        index.add(torch.randn(1, 3))
    with pytest.raises(ValueError, match="queries: expected dimension 2 like the index, got 3"):
        index.search(torch.randn(1, 3), 1)
    with pytest.raises(ValueError, match="unknown name"):
        ExactIndex("hamming")
    with pytest.raises(ValueError, match="NaN"):
        index.search(torch.tensor([[math.nan, 0.0]]), 1)
    with pytest.raises(ValueError, match=r"ids: expected shape \(2,\)"):
        index.add(torch.randn(2, 2), ids=torch.tensor([8]))
    with pytest.raises(ValueError, match="non-negative"):
        index.add(torch.randn(1, 2), ids=torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer or string ids"):
        index.add(torch.randn(1, 2), ids=torch.tensor([1.5]))
    with pytest.raises(ValueError, match="k: expected an integer >= 1"):
        index.search(torch.randn(1, 2), 0)
    assert len(index) == 3


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_exact_index_distances_of_duplicates_are_zero_and_precise(distance):
    # |x|^2 + |y|^2 - 2 x.y in float32 leaves ~1e-3 between identical vectors; the results are refined
    x = randn(300, 16) + 3.0
    index = dmi.create("exact", distance=distance)
    index.add(x)
    index.add(x[:10])  # duplicates: ids 300..309
    d, ids = index.search(x[:10], 2)
    assert torch.equal(d, torch.zeros(10, 2))
    assert ids[:, 0].tolist() == list(range(10)) and ids[:, 1].tolist() == list(range(300, 310))
    q = randn(20, 16, seed=5) + 3.0
    d, ids = index.search(q, 10)
    data = torch.cat([x, x[:10]]).double()
    for row, (d_row, id_row) in enumerate(zip(d, ids)):
        true = [pair_distance(q[row].double(), data[j], distance) for j in range(len(data))]
        expected = brute_force_order(true, 10)
        assert [true[j] for j in id_row.tolist()] == pytest.approx([true[j] for j in expected], abs=1e-5)
        assert d_row.tolist() == pytest.approx([true[j] for j in id_row.tolist()], rel=1e-6, abs=1e-7)


def test_exact_index_orders_near_duplicates_whatever_k():
    # two near-duplicates 1e-4 from each query among 2,000 items: float32 products cannot order them,
    # the refined distances can; the nearest is the same for every k and the float64 truth
    gen = torch.Generator().manual_seed(0)
    g, q = torch.randn(2000, 32, generator=gen), torch.randn(50, 32, generator=gen)
    data = torch.cat([g, q.repeat_interleave(2, 0) + 1e-4 * torch.randn(100, 32, generator=gen)])
    index = dmi.create("exact")
    index.add(data)
    first = index.search(q, 1)[1][:, 0]
    truth = torch.cdist(q.double(), data.double()).argsort(dim=1, stable=True)
    assert torch.equal(first, truth[:, 0])
    for k in (2, 5, 40):
        assert torch.equal(index.search(q, k)[1], truth[:, :k])


def test_exact_index_cosine_of_zero_and_tiny_vectors_follows_the_library():
    # distances.cosine normalises by max(|x|, 1e-12): [1e-13, 0] against [1, 0] is 1 - 0.1 = 0.9,
    # a zero vector is at 1 from everything; the refined distances must say the same
    from deepmetric.distances import cosine
    gallery = torch.tensor([[1e-13, 0.0], [0.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    queries = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    index = dmi.create("exact", distance="cosine")
    index.add(gallery)
    d, ids = index.search(queries, 4)
    expected = cosine(queries, gallery)
    assert ids.tolist() == [[3, 0, 1, 2], [0, 1, 2, 3]]
    assert d.double().tolist() == [pytest.approx(expected[i][ids[i]].tolist(), abs=1e-7) for i in range(2)]
    assert d[0].tolist() == pytest.approx([0.0, 0.9, 1.0, 1.0], abs=1e-7)


@pytest.mark.parametrize("name", ["exact", "flat"])
def test_empty_adds(name):
    index = dmi.create(name)
    index.add(torch.zeros(0, 4))  # fixes the dimension, holds nothing
    assert index.dim == 4 and len(index) == 0
    d, ids = index.search(randn(2, 4), 3)  # nothing to find: every slot empty, as for k beyond the items
    assert ids.tolist() == [[-1] * 3] * 2 and bool(torch.isinf(d).all())
    with pytest.raises(ValueError, match="expected dimension 4 like the index, got 5"):
        index.search(randn(1, 5), 1)
    with pytest.raises(ValueError, match="the index has no vectors and no dimension yet"):
        dmi.create(name).search(randn(1, 4), 1)
    index.add(torch.zeros(0, 4), ids=[])
    index.add(randn(1, 4), ids=["a"])  # adding nothing fixed no id type
    index.add(torch.zeros(0, 4))  # nothing to name: no string ids needed
    assert index.names(index.search(randn(1, 4), 1)[1]) == [["a"]]
    strings = dmi.create(name)
    strings.add(torch.zeros(0, 4), ids=np.array([], dtype=str))  # an empty array of strings: string ids
    with pytest.raises(ValueError, match="this index has string ids"):
        strings.add(randn(1, 4))
    strings.add(randn(1, 4), ids=["x"])
    assert strings.names(strings.search(randn(1, 4), 1)[1]) == [["x"]]


def test_exact_index_does_not_alias_the_callers_tensor():
    x = torch.tensor([[0.0], [5.0]])
    index = ExactIndex()
    index.add(x)
    x[0, 0] = 100.0
    assert index.search(torch.tensor([[1.0]]), 1)[1].tolist() == [[0]]


# --------------------------------------------------------------------------------------------------
# faiss against exact


def assert_same_neighbours(d, i, d_ref, i_ref, tol=1e-4):
    """Distances equal to ``tol``; ids equal at every slot whose distance is not tied (within ``tol``)
    with a neighbouring slot, so only the order among ties may differ."""
    torch.testing.assert_close(d, d_ref, atol=tol, rtol=0)
    gap_prev = torch.cat([torch.full((d.shape[0], 1), math.inf), d_ref[:, 1:] - d_ref[:, :-1]], 1)
    gap_next = torch.cat([d_ref[:, 1:] - d_ref[:, :-1], torch.full((d.shape[0], 1), math.inf)], 1)
    untied = (gap_prev > tol) & (gap_next > tol)
    assert untied.float().mean() > 0.8  # the comparison is not vacuous
    assert torch.equal(i[untied], i_ref[untied])


@pytest.mark.parametrize("distance", FLOAT_DISTANCES)
def test_faiss_flat_agrees_with_exact(distance):
    g, q = randn(500, 16, seed=1), randn(40, 16, seed=2)
    exact, flat = dmi.create("exact", distance=distance), dmi.create("flat", distance=distance)
    ids = torch.randperm(500, generator=torch.Generator().manual_seed(3)) * 7
    exact.add(g, ids)
    flat.add(g, ids)
    for k in (1, 10, 500):
        assert_same_neighbours(*flat.search(q, k), *exact.search(q, k))


@pytest.mark.parametrize("ids", [None, [10, 3, 7, 1, 2, 9, 4]])
@pytest.mark.parametrize("name", ["flat", "ivf-flat"])
@pytest.mark.parametrize("distance", FLOAT_DISTANCES)
def test_faiss_ties_keep_insertion_order_like_exact(name, distance, ids):
    # six copies of one vector (tied for every query) and one far vector, under shuffled int ids:
    # faiss alone returns tied inner products in reverse order and keeps the last inserted of a
    # tied run cut at k; every k must give exact's answer
    g = torch.tensor([[1.0, 1.0]] * 6 + [[5.0, 5.0]])
    q = torch.tensor([[1.0, 1.0], [0.5, 0.4], [-1.0, 0.0]])
    ids = None if ids is None else torch.tensor(ids)  # default ids 0, 1, ... or shuffled ones
    exact = dmi.create("exact", distance=distance)
    index = dmi.create(name, distance=distance, **({"nlist": 1} if name == "ivf-flat" else {}))
    exact.add(g, ids)
    index.add(g, ids)
    for k in range(1, 9):
        d_ref, i_ref = exact.search(q, k)
        d, i = index.search(q, k)
        assert torch.equal(i, i_ref), (k, i.tolist(), i_ref.tolist())
        torch.testing.assert_close(d, d_ref, atol=1e-5, rtol=0)



@pytest.mark.parametrize("distance", FLOAT_DISTANCES)
def test_flat_duplicates_at_distance_0_in_insertion_order_with_many_queries(distance):
    # two vectors, 2,048 copies each, interleaved (even rows v0, odd rows v1): row r's nearest are the
    # copies r % 2, r % 2 + 2, ... at distance 0 (-|v|^2 for dot). With many queries faiss computes
    # |x|^2 + |y|^2 - 2 x.y by BLAS, which rounds the copies differently: 255 of 1,024 rows came back
    # out of insertion order (squared distances 0 and 0.0039 among copies in a row)
    n = 4096
    v = randn(2, 128, seed=0)
    x = v[torch.arange(n) % 2]
    index = dmi.create("flat", distance=distance)
    index.add(x)
    for k in (50, 600):
        d, ids = index.search(x[:1024], k)
        assert torch.equal(ids, torch.arange(1024)[:, None] % 2 + 2 * torch.arange(k))
        assert (d == d[:, :1]).all()
        if distance != "dot":
            assert (d == 0).all()


def recall_at_10(index, q, exact_ids):
    found = index.search(q, 10)[1]
    return float((found.unsqueeze(2) == exact_ids.unsqueeze(1)).any(2).float().mean())


@pytest.mark.parametrize("name,options,bound", [
    ("ivf-flat", dict(nlist=30, nprobe=4), 0.9),
    ("hnsw", dict(M=16, ef_search=32), 0.9),
    ("ivf-pq", dict(nlist=30, m=8, nbits=6, nprobe=4), 0.5),
    ("faiss", dict(factory="IVF30,PQ16x4np", nprobe=4), 0.5),
    ("ivf-fastscan", dict(nlist=30, nprobe=4, refine=4), 0.8),
    ("ivf-fastscan", dict(nlist=30, nprobe=4, refine=0), 0.4),
])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_recall_at_10_against_exact_on_clustered_data(name, options, bound, distance):
    x = clustered(3200, 32, seed=4)
    g, q = x[:3000], x[3000:]
    exact = dmi.create("exact", distance=distance)
    exact.add(g)
    exact_ids = exact.search(q, 10)[1]
    index = dmi.create(name, distance=distance, **options)
    index.add(g)
    recall = recall_at_10(index, q, exact_ids)
    print(f"recall@10 of {name} {options} ({distance}) against exact: {recall:.3f}")
    assert recall >= bound


# --------------------------------------------------------------------------------------------------
# binary codes


def test_binary_hand_worked():
    # codes a = 1111, b = 1001 (as +-1), c = 0000; query 1101:
    # H(q, a) = 1 (bit 2), H(q, b) = 1 (bit 1), H(q, c) = 3 -> a and b tie, insertion order keeps a first
    index = BinaryIndex()
    index.add(torch.tensor([[1, 1, 1, 1], [1, -1, -1, 1], [-1, -1, -1, -1]]), ids=["a", "b", "c"])
    d, ids = index.search(torch.tensor([[1.0, 1.0, -1.0, 1.0]]), k=4)
    assert index.names(ids) == [["a", "b", "c", None]]
    assert d.tolist() == [[1.0, 1.0, 3.0, math.inf]]
    distances, found = index.radius_search(torch.tensor([[1, 1, -1, 1]]), 1)
    assert index.names(found[0]) == ["a", "b"] and distances[0].tolist() == [1.0, 1.0]
    assert index.dim == 4 and index.distance == "hamming"


@pytest.mark.parametrize("bits", [20, 64])
def test_binary_search_equals_brute_force_loop(bits):
    # 20 bits: many ties (checks the insertion order) and a padded last byte
    db, q = random_codes(400, bits, 5), random_codes(25, bits, 6)
    ids = torch.arange(400) * 3 + 1
    index = BinaryIndex()
    index.add(db, ids)
    hd = hamming_distances(q, db)
    for k in (1, 10, 400, 405):
        d, found = index.search(q, k)
        for a in range(25):
            row = hd[a].tolist()
            order = brute_force_order(row, k)
            pad = k - len(order)
            assert found[a].tolist() == [int(ids[j]) for j in order] + [-1] * pad
            assert d[a].tolist() == [float(row[j]) for j in order] + [math.inf] * pad


def near_duplicate_codes(n, bits, seed):
    """Codes in small families: a random base code and copies with 0 to 3 bits flipped."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 2, (n // 4 + 1, bits), generator=gen).bool()
    codes = base[torch.randint(0, base.shape[0], (n,), generator=gen)].clone()
    flips = torch.randint(0, bits, (n, 3), generator=gen)
    n_flips = torch.randint(0, 4, (n,), generator=gen)
    for f in range(3):
        rows = (n_flips > f).nonzero().flatten()
        codes[rows, flips[rows, f]] ^= True
    return codes


def check_radius_search(index, db, ids, q, radius, method="auto"):
    hd = hamming_distances(q, db)
    distances, found = index.radius_search(q, radius, method=method)
    assert len(distances) == len(found) == q.shape[0]
    for a in range(q.shape[0]):
        row = hd[a].tolist()
        within = sorted((row[j], j) for j in range(len(row)) if row[j] <= radius)
        assert found[a].tolist() == [int(ids[j]) for _, j in within]
        assert distances[a].tolist() == [float(h) for h, _ in within]
        assert found[a].dtype == torch.int64 and distances[a].dtype == torch.float32


@pytest.mark.parametrize("bits", [12, 64, 200])
def test_radius_search_equals_brute_force(bits):
    codes = near_duplicate_codes(1200, bits, 7)
    db, q = codes[:1100], codes[1100:]
    ids = torch.arange(1100) + 1000
    index = BinaryIndex()
    index.add(db, ids)
    for method in ("hash", "scan", "auto"):
        for radius in (0, 1, 2, 3, 5, bits + 3, 3 * bits, 2 ** 31 - 1):  # beyond the bits: everything, at once
            check_radius_search(index, db, ids, q, radius, method)
        assert index.radius_search(q[:0], 2, method=method) == ([], [])
    # the hash tables serve every radius, grow with add, and are rebuilt after remove
    tables = index._multi_hash
    more = near_duplicate_codes(300, bits, 8)
    index.add(more, torch.arange(300) + 5000)
    assert index._multi_hash is tables
    db, ids = torch.cat([db, more]), torch.cat([ids, torch.arange(300) + 5000])
    for radius in (0, 2, 5):
        check_radius_search(index, db, ids, q, radius, "hash")
    index.remove(ids[:100])
    assert index._multi_hash is None
    check_radius_search(index, db[100:], ids[100:], q, 3, "hash")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 70), st.integers(1, 60), st.integers(0, 12), st.integers(0, 2 ** 31))
def test_radius_search_property(bits, n, radius, seed):
    db = near_duplicate_codes(n, bits, seed)
    q = near_duplicate_codes(5, bits, seed + 1)
    index = BinaryIndex()
    index.add(db)
    for method in ("hash", "scan"):
        check_radius_search(index, db, torch.arange(n), q, radius, method)


def test_radius_search_hashes_only_where_it_is_estimated_faster():
    # 2^20 codes of 64 bits: m = round(64 / 20) = 3 substrings of 21 bits. Radius 2: nflip 0, 3 probes,
    # cost 250 * 3 + 300 * 3 * 2^20 / 2^21 = 1,200 ns against a scan of 0.5 * 2^20 = 524,288 ns: hash.
    # Radius 10: nflip 3, 3 (1 + 21 + 210 + 1330) = 4,686 probes, 250 * 4,686 + 300 * 4,686 / 2 =
    # 1,874,400 ns: scan (measured: 1.4 ms a query by hashing, 0.4 by the scan)
    index = BinaryIndex()
    index.add(np.random.default_rng(0).integers(0, 2, (2 ** 20, 64), dtype=np.uint8))
    assert index._hash_plan(2) == (3, 0, True)
    assert index._hash_plan(8) == (3, 2, True)
    assert index._hash_plan(10) == (3, 3, False)
    index.radius_search(torch.ones(1, 64), 10)
    assert index._multi_hash is None  # the scan builds no tables


def test_binary_errors():
    with pytest.raises(ValueError, match="distance: the binary index measures Hamming distance"):
        dmi.create("binary", distance="euclidean")
    with pytest.raises(ValueError, match="unknown name 'hamming'"):
        dmi.create("flat", distance="hamming")
    index = BinaryIndex()
    with pytest.raises(ValueError, match="the index has no codes and no length yet"):
        index.radius_search(random_codes(1, 8, 0), 1)
    index.add(random_codes(10, 16, 0))
    with pytest.raises(ValueError, match="vectors: expected dimension 16 like the index, got 24"):
        index.add(random_codes(3, 24, 0))
    with pytest.raises(ValueError, match="queries: expected dimension 16 like the index, got 8"):
        index.search(random_codes(3, 8, 0), 1)
    with pytest.raises(ValueError, match="radius: expected an integer"):
        index.radius_search(random_codes(1, 16, 0), -1)
    with pytest.raises(ValueError, match="method: expected 'auto', 'hash' or 'scan', got 'mih'"):
        index.radius_search(random_codes(1, 16, 0), 1, method="mih")
    with pytest.raises(ValueError, match="NaN"):
        index.search(torch.full((1, 16), math.nan), 1)


# --------------------------------------------------------------------------------------------------
# ids, remove, training


@pytest.mark.parametrize("name", ["exact", "flat", "hnsw", "binary"])
def test_string_ids(name, tmp_path):
    index = built(name, n=50, ids=[f"item-{j}" for j in range(50)])
    index.add(queries_for(index, 3, seed=5), ids=["x", "y", "z"])
    assert len(index) == 53
    q = queries_for(index)
    d, labels = index.search(q, 5)
    assert labels.dtype == torch.int64
    names = index.names(labels)
    assert all(isinstance(s, str) for row in names for s in row)
    # the labels are 0..52 in insertion order: label j names item-j, 50..52 name x, y, z
    expected = [[f"item-{j}" if j < 50 else "xyz"[j - 50] for j in row] for row in labels.tolist()]
    assert names == expected
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "ids.json").is_file()
    loaded = dmi.load(tmp_path / "idx")
    d2, labels2 = loaded.search(q, 5)
    assert torch.equal(labels2, labels) and torch.equal(d2, d) and loaded.names(labels2) == names
    with pytest.raises(TypeError, match="this index has string ids, got int64 ids"):
        loaded.add(queries_for(index, 1), ids=torch.tensor([5]))
    with pytest.raises(ValueError, match="string ids; pass one"):
        loaded.add(queries_for(index, 1))
    with pytest.raises(ValueError, match=r"already in the index: \['x'\]"):
        loaded.add(queries_for(index, 2), ids=["new", "x"])
    with pytest.raises(ValueError, match="duplicates"):
        loaded.add(queries_for(index, 2), ids=["w", "w"])
    with pytest.raises(TypeError, match="mix"):
        loaded.add(queries_for(index, 2), ids=["w", 3])


def test_int_index_refuses_string_ids_and_unknown_labels():
    index = built("exact", n=5)
    with pytest.raises(TypeError, match="this index has int64 ids, got string ids"):
        index.add(randn(1, 8), ids=["a"])
    with pytest.raises(ValueError, match=r"ids: not in the index: \[77\]"):
        index.names(torch.tensor([[0, 77]]))


@pytest.mark.parametrize("name", ["exact", "flat", "ivf-flat", "ivf-pq", "binary"])
def test_remove(name):
    index = built(name, n=300, ids=torch.arange(300) * 2)
    gone = torch.arange(0, 600, 6)  # every third item
    q = queries_for(index, 20)
    assert index.remove(gone) == 100
    assert len(index) == 200
    d, ids = index.search(q, 250)
    assert not torch.isin(ids, gone).any()
    assert (ids[:, :200] >= 0).all() and (ids[:, 200:] == -1).all()  # every remaining item is found
    with pytest.raises(ValueError, match=r"ids: not in the index: \[0\]"):
        index.remove(torch.tensor([0]))
    if name in ("exact", "flat", "binary"):  # exact search: same as an index of the remaining items only
        keep = ~torch.isin(torch.arange(300) * 2, gone)
        rebuilt = dmi.create(name, **({} if name == "binary" else {"distance": "euclidean"}))
        data = random_codes(300, 20, 0) if name == "binary" else randn(300, 8, seed=0)
        rebuilt.add(data[keep], (torch.arange(300) * 2)[keep])
        d_ref, ids_ref = rebuilt.search(q, 10)
        d, ids = index.search(q, 10)
        if name == "flat":
            assert_same_neighbours(d, ids, d_ref, ids_ref)
        else:
            assert torch.equal(ids, ids_ref) and torch.equal(d, d_ref)
    # 598 = 299 * 2 is kept (not a multiple of 6): default ids continue after it with 599, 600
    index.add(queries_for(index, 2, seed=8))
    assert index.names(torch.tensor([[599, 600]])) == [[599, 600]]
    with pytest.raises(ValueError, match=r"not in the index: \[601\]"):
        index.names(torch.tensor([[601]]))


@pytest.mark.parametrize("name", ["exact", "flat", "binary"])
def test_default_ids_are_never_handed_out_twice(name, tmp_path):
    index = built(name, n=5)  # ids 0..4
    index.remove(torch.tensor([3, 4]))
    index.add(queries_for(index, 2, seed=1))  # 5 and 6, not 3 and 4 again
    assert index.names(torch.tensor([[5, 6]])) == [[5, 6]]
    with pytest.raises(ValueError, match=r"not in the index: \[3\]"):
        index.names(torch.tensor([[3]]))
    index.remove(torch.tensor([5, 6]))
    loaded = dmi.load(index.save(tmp_path / "idx"))  # the counter is saved with the index
    loaded.add(queries_for(index, 1, seed=2))
    assert loaded.names(torch.tensor([[7]])) == [[7]]
    index = built(name, n=1, ids=torch.tensor([2**63 - 1]))
    with pytest.raises(ValueError, match="ids: 1 default ids from 9223372036854775808 would pass the int64 range"):
        index.add(queries_for(index, 1))


@pytest.mark.parametrize("name", ["exact", "flat"])
def test_zero_dimensional_vectors_are_refused(name):
    index = dmi.create(name)
    with pytest.raises(ValueError, match=r"vectors: expected at least one dimension.*got shape \(3, 0\)"):
        index.add(torch.zeros(3, 0))
    assert len(index) == 0 and index.dim is None


def test_adding_nothing_to_a_string_id_index():
    index = dmi.create("flat")
    index.add(randn(2, 4), ids=["a", "b"])
    index.add(torch.zeros(0, 4), ids=[])
    assert len(index) == 2 and index.names(index.search(randn(1, 4), 2)[1])[0] in (["a", "b"], ["b", "a"])


def test_remove_string_ids_then_reuse_names():
    data = randn(4, 8, seed=0)
    index = dmi.create("flat")
    index.add(data, ids=["a", "b", "c", "d"])
    assert index.remove(["b", "d"]) == 2
    d, ids = index.search(data[:1], 4)  # query = the vector of "a"
    assert index.names(ids)[0][:2] == ["a", "c"] and ids[0, 2:].tolist() == [-1, -1]
    index.add(torch.full((1, 8), 100.0), ids=["b"])  # a removed name can come back
    assert index.names(index.search(torch.full((1, 8), 99.0), 1)[1]) == [["b"]]
    with pytest.raises(ValueError, match=r"ids: not in the index: \['d'\]"):
        index.remove(["d"])


def test_hnsw_cannot_remove_and_stays_intact():
    index = built("hnsw", n=100)
    q = queries_for(index)
    before = index.search(q, 5)
    with pytest.raises(NotImplementedError, match="remove: the hnsw index .* cannot remove"):
        index.remove(torch.tensor([3]))
    assert len(index) == 100
    after = index.search(q, 5)
    assert torch.equal(before[1], after[1]) and torch.equal(before[0], after[0])


def test_training_on_first_add_or_explicitly():
    with pytest.raises(ValueError, match=r"vectors: cannot train the ivf-flat index 'IVF100,Flat' on 50 vectors"):
        dmi.create("ivf-flat", nlist=100).add(randn(50, 8))
    with pytest.raises(ValueError, match=r"cannot train the ivf-pq index .* on 100 vectors"):
        dmi.create("ivf-pq", nlist=4, m=4, nbits=8).add(randn(100, 8))  # PQ needs 2^8 = 256
    index = dmi.create("ivf-flat", nlist=4, nprobe=4)  # nprobe = nlist: exact
    index.train(randn(200, 8, seed=1))
    assert len(index) == 0 and index.dim == 8
    index.add(randn(3, 8, seed=2), ids=torch.tensor([5, 6, 7]))  # too few to train, but trained already
    exact = dmi.create("exact")
    exact.add(randn(3, 8, seed=2), ids=torch.tensor([5, 6, 7]))
    q = randn(4, 8, seed=3)
    assert torch.equal(index.search(q, 3)[1], exact.search(q, 3)[1])
    with pytest.raises(ValueError, match="vectors: expected dimension 8"):
        index.train(randn(200, 4))


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_fastscan_reranking_every_candidate_is_exact(distance):
    # every list probed and refine * k >= n: all vectors are re-ranked by their exact distances
    x = randn(300, 8, seed=6)
    index = dmi.create("ivf-fastscan", distance=distance, nlist=4, nprobe=4, refine=30)
    index.add(x)
    exact = dmi.create("exact", distance=distance)
    exact.add(x)
    q = randn(20, 8, seed=7)
    d, i = index.search(q, 10)
    d_exact, i_exact = exact.search(q, 10)
    assert torch.equal(i, i_exact)
    assert torch.allclose(d, d_exact, atol=1e-5)


def test_fastscan_cosine_returns_every_item_and_refuses_dot_and_zero_vectors():
    # small integer vectors (many equal inner products): faiss' inner-product fast scan used to
    # return empty slots here; cosine is ranked as the euclidean distance of unit vectors
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (300, 4), generator=gen).float()
    x = x[x.ne(0).any(1)]
    q = torch.randint(1, 3, (20, 4), generator=gen).float()
    index = dmi.create("ivf-fastscan", distance="cosine", nlist=2, nprobe=2, refine=1000)
    index.add(x)
    exact = dmi.create("exact", distance="cosine")
    exact.add(x)
    d, i = index.search(q, len(x))
    d_exact, _ = exact.search(q, len(x))
    assert bool((i >= 0).all())
    assert sorted(i[0].tolist()) == list(range(len(x)))
    assert torch.allclose(d, d_exact, atol=1e-6)
    with pytest.raises(ValueError, match=r"queries: zero vectors have no direction.*first zero rows: \[1\]"):
        index.search(torch.stack([q[0], torch.zeros(4)]), 3)
    with pytest.raises(ValueError, match="not 'dot'"):
        dmi.create("ivf-fastscan", distance="dot")


def test_a_failed_first_add_leaves_no_dimension_behind():
    index = dmi.create("ivf-flat", nlist=100, nprobe=4)
    with pytest.raises(ValueError, match="cannot train"):
        index.add(randn(50, 8))  # fewer vectors than lists
    index.add(randn(500, 4))
    assert index.dim == 4 and len(index) == 500
    assert index.search(randn(2, 4, seed=1), 3)[1].shape == (2, 3)
    fastscan = dmi.create("ivf-fastscan", nlist=40, nprobe=4)  # m: half the dimension it is built for
    with pytest.raises(ValueError, match="cannot train"):
        fastscan.add(randn(30, 8))
    fastscan.add(randn(300, 6))
    assert fastscan.dim == 6 and fastscan.search(randn(2, 6, seed=1), 3)[1].shape == (2, 3)


@pytest.mark.parametrize("name", ["exact", "flat", "hnsw"])
@pytest.mark.parametrize("distance", ["euclidean", "dot"])
def test_indexes_refuse_overflowing_vectors_when_added(name, distance):
    index = dmi.create(name, distance=distance)
    with pytest.raises(ValueError, match="vectors: .* overflow"):
        index.add(randn(3, 4) * 1e20)  # (|x| + |y|)^2 is beyond float32
    assert len(index) == 0 and index.dim is None
    index.add(randn(10, 4))
    with pytest.raises(ValueError, match="vectors: .* overflow"):
        index.add(randn(1, 4) * 1e20)
    assert len(index) == 10
    with pytest.raises(ValueError, match="overflow"):
        index.search(torch.full((1, 4), 1e20), 2)


def test_fastscan_search_parameters_and_remove(tmp_path):
    index = dmi.create("ivf-fastscan", nlist=4, m=2, nprobe=3, refine=2.5)
    index.add(randn(300, 8))
    index.save(tmp_path / "idx")
    for each in (index, dmi.load(tmp_path / "idx")):
        refine = faiss.downcast_index(each._index.index)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(refine))
        assert (refine.k_factor, ivf.nprobe, ivf.pq.M, each.factory) == (2.5, 3, 2, "IVF4,PQ2x4fs,RFlat")
    with pytest.raises(NotImplementedError, match="cannot remove vectors"):
        index.remove(torch.tensor([0]))
    # faiss' remove_ids on fast-scan codes corrupts later adds (a re-added vector was not its own nearest
    # neighbour for three rows in four): refused, and the index is left as it was
    for name, options in (("ivf-fastscan", dict(nlist=4, nprobe=4, refine=0)), ("faiss", dict(factory="PQ4x4fs"))):
        unrefined = dmi.create(name, **options)
        unrefined.add(randn(300, 8))
        with pytest.raises(NotImplementedError, match="remove_ids leaves fast-scan codes inconsistent"):
            unrefined.remove(torch.tensor([0, 5]))
        assert len(unrefined) == 300


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match="m: expected a divisor of the dimension 10"):
        dmi.create("ivf-pq", m=4).add(randn(300, 10))
    with pytest.raises(ValueError, match="factory: faiss cannot build 'IVFnope'"):
        dmi.create("faiss", factory="IVFnope").add(randn(300, 10))
    with pytest.raises(ValueError, match="nprobe: does not apply to the faiss index 'HNSW8'"):
        dmi.create("faiss", factory="HNSW8", nprobe=4).add(randn(30, 10))
    with pytest.raises(ValueError, match="factory: expected a faiss index factory string"):
        dmi.create("faiss", factory="")
    with pytest.raises(ValueError, match="nlist: expected an integer >= 1, got 0"):
        dmi.create("ivf-flat", nlist=0)
    with pytest.raises(ValueError, match="m: expected a divisor of the dimension 10 .*; got 4"):
        dmi.create("ivf-fastscan", m=4).add(randn(300, 10))
    with pytest.raises(ValueError, match=r"dimension 15 .*; the default is half the dimension, 7; pass m="):
        dmi.create("ivf-fastscan").add(randn(300, 15))  # m was never given: say where 7 came from
    with pytest.raises(ValueError, match=r"refine: expected 0 \(no re-ranking\) or a factor >= 1, got 0.5"):
        dmi.create("ivf-fastscan", refine=0.5)
    with pytest.raises(TypeError, match=r"index 'hnsw': unknown arguments \['nlist'\]; it takes \['M', 'distance', "
                                        r"'ef_construction', 'ef_search'\]"):
        dmi.create("hnsw", nlist=3)
    # Hamming distances of faiss' own codes, not the distance asked for
    for factory in ("LSH", "PCA8,LSH", "IDMap,LSH", "IDMap2,PCA8,LSH"):
        index = dmi.create("faiss", factory=factory)
        with pytest.raises(ValueError, match=f"factory: '{factory}' ranks by the Hamming distance of its own"):
            index.add(randn(300, 10))
        assert index.dim is None and len(index) == 0


def test_cosine_after_a_transform_with_l2norm_stays_cosine():
    # PCA to 4 dimensions then L2norm: the cosine of the projected vectors, 0 for an item itself
    x = randn(300, 10)
    index = dmi.create("faiss", factory="PCA4,L2norm,Flat", distance="cosine")
    index.add(x)
    d, ids = index.search(x[:5], 1)
    assert ids[:, 0].tolist() == list(range(5)) and d.abs().max() < 1e-6


@pytest.mark.parametrize("name", ["exact", "flat", "ivf-flat", "hnsw", "ivf-pq", "faiss", "ivf-fastscan", "binary"])
def test_k_beyond_the_index_pads(name):
    index = built(name, n=40)
    d, ids = index.search(queries_for(index, 3), 45)
    assert ids.shape == (3, 45) and (ids[:, 40:] == -1).all() and torch.isinf(d[:, 40:]).all()
    found = ids[:, :40]
    assert (found >= 0).all() and all(len(set(row)) == 40 for row in found.tolist())
    assert (d[:, 1:40] >= d[:, :39]).all()  # ascending


# --------------------------------------------------------------------------------------------------
# save and load


ROUND_TRIPS = [("exact", "euclidean"), ("exact", "dot"), ("flat", "cosine"), ("ivf-flat", "dot"),
               ("hnsw", "squared_euclidean"), ("ivf-pq", "euclidean"), ("faiss", "cosine"),
               ("ivf-fastscan", "euclidean"), ("ivf-fastscan", "cosine"), ("binary", None)]


@pytest.mark.parametrize("name,distance", ROUND_TRIPS)
def test_save_load_round_trip(name, distance, tmp_path):
    index = built(name, distance, n=300, ids=torch.arange(300) * 5 + 2)
    q = queries_for(index, 12)
    before = index.search(q, 10)
    assert index.save(tmp_path / "idx") == tmp_path / "idx"
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["backend"] == name and manifest["count"] == 300 and manifest["dimension"] == index.dim
    assert manifest["distance"] == index.distance and manifest["options"] == index.options
    assert set(manifest["files"]) == {f for f in os.listdir(tmp_path / "idx") if f != "manifest.json"}
    for f, entry in manifest["files"].items():
        assert entry["size"] == (tmp_path / "idx" / f).stat().st_size and len(entry["sha256"]) == 64
    loaded = dmi.load(tmp_path / "idx")
    assert type(loaded) is type(index) and len(loaded) == 300 and loaded.dim == index.dim
    assert loaded.distance == index.distance and loaded.options == index.options
    after = loaded.search(q, 10)
    assert torch.equal(after[1], before[1]) and torch.equal(after[0], before[0])
    assert type(index).load(tmp_path / "idx").search(q, 10)[1].tolist() == before[1].tolist()
    # still usable: add more (an IVF index stays trained), wrong dimensions fail clearly
    loaded.add(queries_for(index, 2, seed=5))
    assert len(loaded) == 302
    wrong = random_codes(2, index.dim + 1, 0) if name == "binary" else randn(2, index.dim + 1)
    with pytest.raises(ValueError, match=f"vectors: expected dimension {index.dim} like the index"):
        loaded.add(wrong)
    with pytest.raises(ValueError, match=f"queries: expected dimension {index.dim} like the index"):
        loaded.search(wrong, 3)


def test_loading_with_the_wrong_class_is_clear(tmp_path):
    built("hnsw", n=20).save(tmp_path / "idx")
    with pytest.raises(ValueError, match="holds a 'hnsw' index, not 'flat'"):
        dmi.FlatIndex.load(tmp_path / "idx")


def test_search_parameters_survive_save_and_load(tmp_path):
    index = dmi.create("hnsw", M=8, ef_construction=20, ef_search=7)
    index.add(randn(100, 8))
    index.save(tmp_path / "idx")
    loaded = dmi.load(tmp_path / "idx")
    hnsw = faiss.downcast_index(faiss.downcast_index(loaded._index).index).hnsw
    assert (hnsw.efSearch, hnsw.efConstruction) == (7, 20)


def flip_byte(path, position, mask=0xFF):
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["exact", "ivf-flat", "hnsw", "binary"])
def test_flipping_a_byte_of_any_file_fails_naming_it(name, tmp_path):
    index = built(name, n=100, ids=[f"id{j}" for j in range(100)])
    q = queries_for(index)
    expected = index.search(q, 5)
    directory = index.save(tmp_path / "idx")
    files = sorted(os.listdir(directory))
    assert {"manifest.json", "ids.npy", "ids.json"} <= set(files) and len(files) == 4
    for file in files:
        # every byte of the manifest (one backend; every third byte for the others); a few bytes of the
        # other files (their sha256 covers every byte). Mask 0xFF makes non-ASCII bytes; mask 0x01 keeps
        # the JSON readable (a digit of a size, a letter of a checksum) so the checksums must catch it.
        size = (directory / file).stat().st_size
        every = 1 if name == "exact" else 3
        positions = (range(0, size, every) if file == "manifest.json"
                     else sorted({0, 1, size // 3, size // 2, size - 1}))
        for position in positions:
            for mask in (0xFF, 0x01):
                flip_byte(directory / file, position, mask)
                with pytest.raises(ValueError) as err:
                    dmi.load(directory)
                assert str(directory / file) in str(err.value), (file, position, mask, str(err.value))
                flip_byte(directory / file, position, mask)  # flipping again restores it
    loaded = dmi.load(directory)  # the restored files load and search as before
    assert torch.equal(loaded.search(q, 5)[1], expected[1])


@pytest.mark.parametrize("name", ["exact", "flat", "binary"])
def test_truncated_or_missing_files_fail_naming_them(name, tmp_path):
    built(name, n=100).save(tmp_path / "good")
    for file in sorted(os.listdir(tmp_path / "good")):
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(tmp_path / "good", bad)
        data = (bad / file).read_bytes()
        (bad / file).write_bytes(data[:-1])
        with pytest.raises(ValueError, match="truncated" if file != "manifest.json" else "manifest") as err:
            dmi.load(bad)
        assert str(bad / file) in str(err.value)
        (bad / file).unlink()
        with pytest.raises(FileNotFoundError, match="missing") as err:
            dmi.load(bad)
        assert str(bad / file) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no index directory"):
        dmi.load(tmp_path / "nowhere")


def test_save_refuses_to_replace_other_directories(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a saved index .* refusing to replace it"):
        built("exact", n=5).save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="no dimension yet"):
        dmi.create("flat").save(tmp_path / "empty")
    # a manifest.json of something else (a web app's) does not make a directory an index
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "manifest.json").write_text('{"name": "my app", "files": {}}')
    (tmp_path / "app" / "app.js").write_text("keep me")
    with pytest.raises(ValueError, match="is not a saved index .* refusing to replace it"):
        built("exact", n=5).save(tmp_path / "app")
    assert sorted(os.listdir(tmp_path / "app")) == ["app.js", "manifest.json"]
    # a saved index holding a file its manifest does not list
    built("exact", n=5).save(tmp_path / "idx")
    (tmp_path / "idx" / "README").write_text("keep me")
    with pytest.raises(ValueError, match="holds files its manifest.json does not list \\(README\\)"):
        built("exact", n=6).save(tmp_path / "idx")
    assert len(dmi.load(tmp_path / "idx")) == 5 and (tmp_path / "idx" / "README").read_text() == "keep me"


def test_save_refuses_a_symbolic_link_and_keeps_its_target(tmp_path):
    built("exact", n=5).save(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="link is a symbolic link; give the directory it points to"):
        built("exact", n=6).save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and len(dmi.load(tmp_path / "link")) == 5
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_save_flushes_every_file_to_the_disk_before_renaming(tmp_path, monkeypatch):
    built("flat", n=5).save(tmp_path / "idx")  # an old index to replace
    synced, renamed = set(), []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        synced.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def rename(src, dst):
        renamed.append((str(src), set(synced)))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    built("flat", n=6).save(tmp_path / "idx")
    monkeypatch.undo()
    new = [(src, done) for src, done in renamed if ".tmp-" in src]
    assert len(new) == 1
    src, done = os.path.realpath(new[0][0]), new[0][1]
    assert {os.path.join(src, name) for name in os.listdir(tmp_path / "idx")} | {src} <= done
    assert os.path.realpath(tmp_path) in synced  # the rename itself
    assert len(dmi.load(tmp_path / "idx")) == 6


def test_saved_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        built("flat", n=5).save(tmp_path / "idx")
        write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "idx").st_mode) == 0o750
    for name in os.listdir(tmp_path / "idx"):
        assert stat.S_IMODE(os.stat(tmp_path / "idx" / name).st_mode) == 0o640, name
    assert stat.S_IMODE(os.stat(tmp_path / "metrics.json").st_mode) == 0o640


def leftovers(tmp_path):
    return sorted(p for p in os.listdir(tmp_path) if p != "idx")


@pytest.mark.parametrize("name,target", [("exact", (np, "save")), ("flat", (faiss, "write_index")),
                                         ("binary", (faiss, "write_index_binary")),
                                         ("hnsw", (os, "rename"))])
def test_crash_during_save_keeps_the_old_index(name, target, tmp_path, monkeypatch):
    old = built(name, n=60, seed=1)
    q = queries_for(old)
    expected = old.search(q, 5)
    old.save(tmp_path / "idx")
    new = built(name, n=80, seed=2)
    module, attr = target
    real = getattr(module, attr)

    def crash(*args, **kwargs):
        if module is os and ".tmp-" not in str(args[0]):  # let the old index be moved aside and back
            return real(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(module, attr, crash)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "idx")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    loaded = dmi.load(tmp_path / "idx")
    assert len(loaded) == 60
    got = loaded.search(q, 5)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])
    new.save(tmp_path / "idx")  # a later save replaces it
    assert len(dmi.load(tmp_path / "idx")) == 80 and leftovers(tmp_path) == []


def test_next_default_id_in_the_manifest_is_checked(tmp_path):
    from deepmetric.index.base import _manifest_checksum

    def rewrite(directory, **fields):
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest.update(fields)
        for key in [k for k, v in fields.items() if v is None]:
            del manifest[key]
        manifest["checksum"] = _manifest_checksum(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))

    directory = built("exact", n=4).save(tmp_path / "idx")
    rewrite(directory, next_id=2)
    with pytest.raises(ValueError, match="next_id 2 must be an integer above the largest id 3"):
        dmi.load(directory)
    rewrite(directory, next_id=None)  # saved before next_id existed: one past the largest id
    index = dmi.load(directory)
    index.add(randn(1, 8))
    assert index.names(torch.tensor([[4]])) == [[4]]
    big = built("exact", n=1, ids=torch.tensor([2**63 - 1])).save(tmp_path / "big")
    rewrite(big, next_id=None)
    with pytest.raises(ValueError, match="would pass the int64 range"):
        dmi.load(big).add(randn(1, 8))


def test_a_manifest_of_a_newer_release_is_named_on_load(tmp_path):
    # a later deepmetric may add backends, options or a new format: the error names the manifest and
    # the release that wrote it (it was a bare KeyError or TypeError of the constructor)
    from deepmetric.index.base import _manifest_checksum
    directory = built("ivf-flat", n=300).save(tmp_path / "idx")
    original = json.loads((directory / "manifest.json").read_text())
    for change, message in [({"backend": "ivf-sq"}, r"unknown index 'ivf-sq'"),
                            ({"options": {**original["options"], "quantizer": "hnsw"}},
                             r"cannot build the 'ivf-flat' index it describes \(.*quantizer"),
                            ({"format_version": 2, "checksum": "computed otherwise"},
                             r"expected format deepmetric-index version 1, got deepmetric-index version 2")]:
        manifest = {**original, "deepmetric_version": "9.0", **change}
        if "checksum" not in change:
            manifest["checksum"] = _manifest_checksum(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=rf"manifest.json: {message}.*written by deepmetric 9.0, this is "):
            dmi.load(directory)


def test_interrupted_swap_is_reported_on_load(tmp_path, monkeypatch):
    from deepmetric.index import base
    monkeypatch.setattr(base, "_SWAP_WAIT", 0.2)  # how long a load waits for a save to end its swap
    built("exact", n=5).save(tmp_path / "idx")
    shutil.copytree(tmp_path / "idx", tmp_path / ".idx.old-ffff")  # an older night's, named last
    os.utime(tmp_path / ".idx.old-ffff", (1, 1))
    os.rename(tmp_path / "idx", tmp_path / ".idx.old-1234")  # as if the process died mid-swap
    with pytest.raises(FileNotFoundError, match=r"previous index at .*\.idx\.old-1234 \(rename it back\)"):
        dmi.load(tmp_path / "idx")
    # the next save puts a new index in place and removes what killed saves left
    (tmp_path / ".idx.tmp-dead").mkdir()
    built("exact", n=7).save(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert len(dmi.load(tmp_path / "idx")) == 7


def test_load_waits_for_a_save_between_its_two_renames(tmp_path):
    import threading
    built("exact", n=5).save(tmp_path / "idx")
    os.rename(tmp_path / "idx", tmp_path / ".idx.old-1234")  # a save has moved the old index aside...
    threading.Timer(0.3, os.rename, (tmp_path / ".idx.old-1234", tmp_path / "idx")).start()  # ...and ends
    assert len(dmi.load(tmp_path / "idx")) == 5


@pytest.mark.parametrize("name", ["exact", "flat", "binary"])
def test_a_save_during_a_load_never_gives_a_mix_of_two_indexes(name, tmp_path, monkeypatch):
    # a nightly rebuild saved while a service loads: every file must come from one of the two saves.
    # Both hold the same items in another order, so a mix (vectors of one, ids of the other) passes
    # every size check; it answered the wrong ids before the load held its directory open.
    from deepmetric.index import base
    vectors = random_codes(6, 16, seed=3) if name == "binary" else randn(6, 16)
    names = [f"item{i}" for i in range(6)]
    old, new = dmi.create(name), dmi.create(name)
    old.add(vectors, ids=names)
    new.add(vectors.flip(0), ids=names[::-1])
    old.save(tmp_path / "idx")
    real, saved = base.read_npy, []

    def read_then_save(held, file, *args):
        array = real(held, file, *args)
        if not saved:  # the backend's files are read: the rebuild lands now
            saved.append(new.save(tmp_path / "idx"))
        return array

    monkeypatch.setattr(base, "read_npy", read_then_save)
    loaded = dmi.load(tmp_path / "idx")
    assert saved and loaded.names(loaded.search(vectors, 1)[1]) == [[n] for n in names]


def test_save_touches_only_its_own_siblings_and_survives_lock_troubles(tmp_path, monkeypatch):
    import errno
    import fcntl
    # glob characters in the name: the cleanup of killed saves matched other indexes' copies
    for name in (".idx0.old-1234", ".idxA.tmp-inflight"):
        (tmp_path / name).mkdir()
    built("exact", n=5).save(tmp_path / "idx[0A]")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx0.old-1234", ".idxA.tmp-inflight", "idx[0A]"]
    # a file system without flock (NFS without a lock daemon): saved unlocked, with a warning
    real = fcntl.flock

    def unsupported(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with pytest.warns(UserWarning, match=r"\.nfs\.lock: the file system cannot lock files \(No locks available\)"):
        built("exact", n=6).save(tmp_path / "nfs")
    assert len(dmi.load(tmp_path / "nfs")) == 6 and not (tmp_path / ".nfs.lock").exists()
    monkeypatch.setattr(fcntl, "flock", real)
    # the lock file removed while held (a temporary-file cleaner): the save still succeeds
    index = built("exact", n=7)
    write = type(index)._write

    def write_then_lose_the_lock(self, directory):
        (tmp_path / ".gone.lock").unlink()
        return write(self, directory)

    monkeypatch.setattr(type(index), "_write", write_then_lose_the_lock)
    index.save(tmp_path / "gone")
    assert len(dmi.load(tmp_path / "gone")) == 7


def test_a_failed_save_keeps_its_errno_and_class(tmp_path, monkeypatch):
    import errno
    index = built("exact", n=5)
    for raised in (OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")):
        def fail(self, directory, raised=raised):
            raise raised

        monkeypatch.setattr(type(index), "_write", fail)
        with pytest.raises(type(raised), match=r"idx: cannot save the index \(.*\); the index there, if any, is unchanged"
                           ) as caught:
            index.save(tmp_path / "idx")
        assert caught.value.errno == raised.errno


def test_load_follows_a_symbolic_link_through_a_save_and_refuses_odd_files(tmp_path):
    import threading
    (tmp_path / "data").mkdir()
    built("exact", n=5).save(tmp_path / "data" / "idx")
    (tmp_path / "current").symlink_to(tmp_path / "data" / "idx")  # a blue-green deployment's link
    os.rename(tmp_path / "data" / "idx", tmp_path / "data" / ".idx.old-1234")  # a save between its renames
    threading.Timer(0.3, os.rename, (tmp_path / "data" / ".idx.old-1234", tmp_path / "data" / "idx")).start()
    assert len(dmi.load(tmp_path / "current")) == 5
    # a FIFO, a directory, or a link to one, where a listed file should be: refused at once, naming it, no
    # descriptor kept
    directory = tmp_path / "data" / "idx"
    os.rename(directory / "ids.npy", tmp_path / "ids.npy")
    os.mkfifo(tmp_path / "fifo")
    open_fds = len(os.listdir("/proc/self/fd"))
    for odd in (os.mkfifo, os.mkdir, lambda path: path.symlink_to(tmp_path / "fifo")):
        odd(directory / "ids.npy")
        for _ in range(3):
            with pytest.raises(ValueError, match=r"idx/ids\.npy: not a regular file"):
                dmi.load(directory)
        os.rmdir(directory / "ids.npy") if odd is os.mkdir else os.unlink(directory / "ids.npy")
    assert len(os.listdir("/proc/self/fd")) == open_fds
    os.symlink("ids.npy", directory / "ids.npy")  # a loop: the error names the file's path
    with pytest.raises(OSError, match=r"idx/ids\.npy: Too many levels of symbolic links"):
        dmi.load(directory)
    # files stored as links to a content-addressed cache (a model hub's, DVC's) are followed and checked
    os.unlink(directory / "ids.npy")
    for name in ("ids.npy", "manifest.json"):
        os.rename(directory / name if name != "ids.npy" else tmp_path / name, tmp_path / f"blob-{name}")
        os.symlink(tmp_path / f"blob-{name}", directory / name)
    assert len(dmi.load(directory)) == 5


def test_saves_to_one_path_take_turns(tmp_path):
    import fcntl
    import threading
    index = built("exact", n=5)
    lock = tmp_path / ".idx.lock"
    with open(lock, "a") as held:  # another process saving to idx
        fcntl.flock(held, fcntl.LOCK_EX)
        save = threading.Thread(target=index.save, args=(tmp_path / "idx",))
        save.start()
        save.join(0.5)
        assert save.is_alive() and not (tmp_path / "idx").exists()  # it waits
    save.join()
    assert len(dmi.load(tmp_path / "idx")) == 5 and not lock.exists()


@pytest.mark.parametrize("name", ["flat", "binary"])
def test_faiss_indexes_save_to_paths_that_are_not_utf8(name, tmp_path):
    directory = tmp_path / os.fsdecode(b"latin1-\xe9t\xe9") / "idx"  # faiss' own writer takes only UTF-8
    index = built(name, n=20)
    index.save(directory)
    loaded = dmi.load(directory)
    q = queries_for(index)
    assert torch.equal(loaded.search(q, 3)[1], index.search(q, 3)[1])


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_exact_index_searches_what_it_holds_after_add_and_remove(distance):
    # the gallery is prepared once per content: every add and remove must be seen by the next search
    index = dmi.create("exact", distance=distance)
    index.add(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ids=torch.tensor([1, 2]))
    q = torch.tensor([[1.0, 1.2]])
    assert index.search(q, 1)[1].tolist() == [[2]]
    index.add(torch.tensor([[1.0, 1.2]]), ids=torch.tensor([3]))
    assert index.search(q, 1)[1].tolist() == [[3]]
    index.remove(torch.tensor([3]))
    assert index.search(q, 1)[1].tolist() == [[2]]
    # float64 queries are searched in the stored float32: values float32 cannot hold are refused
    with pytest.raises(ValueError, match="queries: values beyond the range of torch.float32"):
        index.search(torch.tensor([[1e39, 1.0]], dtype=torch.float64), 1)


def test_faiss_is_never_asked_for_more_items_than_it_holds():
    # faiss' NSG search never returns when k exceeds the items; the tie look-ahead (k + 1) asked for
    # that whenever k reached the index size. Run in a child process so that a hang fails, not blocks.
    import subprocess
    import sys
    child = ("import torch, deepmetric.index as dmi\n"
             "x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))\n"
             "index = dmi.create('faiss', factory='NSG8,Flat')\n"
             "index.add(x)\n"
             "d, i = index.search(x[:2], 250)\n"
             "print(sorted(i[0, :200].tolist()) == list(range(200)), bool((i[:, 200:] == -1).all()))\n")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


@pytest.mark.parametrize("distance", ["dot", "cosine"])
def test_factory_built_for_another_metric_is_refused(distance):
    # faiss builds HNSW over PQ codes for L2 whatever metric is asked: its results would be L2 ranks
    index = dmi.create("faiss", factory="HNSW16,PQ4", distance=distance)
    with pytest.raises(ValueError, match="factory: faiss builds 'HNSW16,PQ4' for the squared euclidean metric only"):
        index.add(torch.randn(300, 8, generator=torch.Generator().manual_seed(0)))


def test_faiss_search_errors_name_the_factory():
    index = dmi.create("faiss", factory="Residual2x4,PQ4")
    index.add(torch.randn(400, 8, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="factory: faiss cannot search 'Residual2x4,PQ4'"):
        index.search(torch.randn(2, 8), 3)


def test_string_ids_with_nul_characters_are_refused():
    # numpy's str arrays drop trailing NULs: "x\0" came back as "x", and "a" / "a\0" were duplicates
    index = dmi.create("exact")
    with pytest.raises(ValueError, match="ids: expected strings without NUL characters"):
        index.add(torch.randn(2, 3), ids=["a", "a\0"])
    assert len(index) == 0


def test_manifest_fields_edited_by_hand_are_named(tmp_path):
    # with the manifest's checksum recomputed, missing or mistyped fields raised a bare KeyError or a
    # confusing message, and an unlisted ids.npy was read without its checksum
    from deepmetric.index.base import _manifest_checksum

    for case, (fields, message) in enumerate((({"files": None}, r"malformed fields \['files'\]"),
                            ({"count": None, "dimension": "8"}, r"malformed fields \['dimension', 'count'\]"),
                            ({"ids": "bogus"}, r"malformed fields \['ids'\]"),
                            ({"drop": "ids.npy"}, r"expected \['ids.npy'\] among the checked files"))):
        directory = built("exact", n=4).save(tmp_path / f"idx{case}")
        manifest = json.loads((directory / "manifest.json").read_text())
        for key, value in fields.items():
            if key == "drop":
                del manifest["files"][value]
            elif value is None:
                del manifest[key]
            else:
                manifest[key] = value
        manifest["checksum"] = _manifest_checksum(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=message):
            dmi.load(directory)


def test_an_id_type_not_fixed_yet_survives_save_and_load(tmp_path):
    # an empty add fixes the dimension but not the id type; the saved index said int64 and then
    # refused the string ids the original would take
    index = dmi.create("exact")
    index.add(torch.zeros(0, 4))
    loaded = dmi.load(index.save(tmp_path / "idx"))
    loaded.add(torch.randn(2, 4), ids=["a", "b"])
    assert loaded.names(loaded.search(torch.zeros(1, 4), 2)[1])[0] in (["a", "b"], ["b", "a"])


@pytest.mark.parametrize("kind", ["int", "string"])
def test_ids_stay_findable_across_many_small_adds_and_removes(kind):
    # the sorted copy of the ids is merged at each add (not sorted again): every id must stay findable,
    # clashes must be caught after merges, longer strings must not be cut to the first ones' width, and
    # a removal (which moves positions) must be followed correctly; ties come back in insertion order
    rng = np.random.default_rng(0)
    index = dmi.create("flat")
    held = []
    for step in range(40):
        n = int(rng.integers(1, 4))
        if kind == "int":
            ids = [int(v) for v in rng.choice(10**12, n, replace=False)]
        else:
            ids = ["x" * int(rng.integers(1, 30)) + str(step) + "-" + str(i) for i in range(n)]
        index.add(torch.ones(n, 4), ids=ids)  # identical vectors: every search is one long tie
        held += ids
        with pytest.raises(ValueError, match="ids: already in the index"):
            index.add(torch.ones(1, 4), ids=[held[int(rng.integers(len(held)))]])
        if step % 7 == 6:
            gone = held[1::3]
            assert index.remove(gone) == len(gone)
            held = [h for h in held if h not in gone]
    assert len(index) == len(held)
    assert index.names(index.search(torch.ones(1, 4), len(held))[1])[0] == held  # insertion order


@pytest.mark.parametrize("name", ["flat", "exact"])
def test_duplicate_saved_ids_and_a_missing_backend_file_are_refused_on_load(tmp_path, name):
    from deepmetric.index.base import _manifest_checksum

    def resign(directory, manifest):
        manifest["checksum"] = _manifest_checksum(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))

    directory = built(name, n=4).save(tmp_path / "idx")
    np.save(directory / "ids.npy", np.array([0, 1, 1, 3]))  # a hand edit, manifest signed again
    manifest = json.loads((directory / "manifest.json").read_text())
    data = (directory / "ids.npy").read_bytes()
    manifest["files"]["ids.npy"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    resign(directory, manifest)
    with pytest.raises(ValueError, match=r"ids.npy: ids: expected unique ids, got duplicates: \[1\]"):
        dmi.load(directory)
    own = {"flat": "index.faiss", "exact": "vectors.npy"}[name]
    del manifest["files"][own]
    resign(directory, manifest)
    with pytest.raises(ValueError, match=f"expected '{own}' among the checked files of a '{name}' index"):
        dmi.load(directory)


def test_a_faiss_index_of_another_metric_is_refused_on_load(tmp_path):
    # the manifest's distance edited from euclidean to cosine: L2 scores would be read as inner products
    from deepmetric.index.base import _manifest_checksum
    directory = built("flat", n=4).save(tmp_path / "idx")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["distance"] = "cosine"
    manifest["checksum"] = _manifest_checksum(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="index.faiss: holds a faiss index of the L2 metric, but the manifest's "
                                         "distance cosine needs inner product"):
        dmi.load(directory)


def test_an_index_emptied_by_removals_returns_empty_slots():
    for index in (built("flat", n=3), built("binary", n=3)):
        index.remove(torch.tensor([0, 1, 2]))
        queries = torch.ones(2, index.dim)
        d, ids = index.search(queries, 2)
        assert ids.tolist() == [[-1, -1]] * 2 and bool(torch.isinf(d).all())
    distances, ids = index.radius_search(torch.ones(2, index.dim), 3)
    assert [len(i) for i in ids] == [0, 0] and [len(x) for x in distances] == [0, 0]


@pytest.mark.parametrize("name", ["flat", "hnsw"])
def test_float64_values_beyond_float32_are_refused_under_cosine(name):
    # faiss holds float32: 1e39 became inf, then NaN after normalisation, and was stored silently
    index = dmi.create(name, distance="cosine")
    big = torch.tensor([[1e39, 1.0], [1.0, 2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="vectors: values beyond the range of float32"):
        index.add(big)
    index.add(big[1:])
    with pytest.raises(ValueError, match="queries: values beyond the range of float32"):
        index.search(big[:1], 1)


def test_search_options_change_after_build_and_load(tmp_path):
    gen = torch.Generator().manual_seed(4)
    x, q = torch.randn(400, 8, generator=gen), torch.randn(30, 8, generator=gen)
    exact = dmi.knn(q, x, 10)[1]
    index = dmi.create("ivf-flat", nlist=8, nprobe=1)
    index.add(x)
    assert not torch.equal(index.search(q, 10)[1], exact)
    index.set_search_options(nprobe=8)  # every list
    assert torch.equal(index.search(q, 10)[1], exact) and index.options["nprobe"] == 8
    loaded = dmi.load(index.save(tmp_path / "idx"))  # saved with the new value
    assert torch.equal(loaded.search(q, 10)[1], exact)
    loaded.set_search_options(nprobe=1)
    assert not torch.equal(loaded.search(q, 10)[1], exact)
    with pytest.raises(ValueError, match="ef_search: does not apply to the faiss index 'IVF8,Flat'"):
        loaded.set_search_options(nprobe=8, ef_search=32)
    assert loaded.options["nprobe"] == 1 and not torch.equal(loaded.search(q, 10)[1], exact)  # unchanged
    with pytest.raises(ValueError, match="nprobe: expected an integer >= 1"):
        loaded.set_search_options(nprobe=0)
    graph = dmi.create("hnsw", M=8, ef_search=1)
    with pytest.raises(ValueError, match="set_search_options: the index is not built yet"):
        graph.set_search_options(nprobe=4)  # accepted before, then every add failed
    graph.add(x)
    graph.set_search_options(ef_search=400)
    assert torch.equal(graph.search(q, 10)[1], exact) and graph.options["ef_search"] == 400
    # two options of which the second does not apply: faiss had already taken the first (nprobe 3),
    # and kept it through save and load while the options said otherwise
    both = dmi.create("faiss", factory="IVF4,Flat")
    both.add(x)
    with pytest.raises(ValueError, match="ef_search: does not apply to the faiss index 'IVF4,Flat'"):
        both.set_search_options(nprobe=3, ef_search=5)
    assert faiss.extract_index_ivf(both._index).nprobe == 1 and both.options["nprobe"] is None


def test_index_docstring_examples_run():
    import doctest

    import deepmetric.index.backends
    import deepmetric.index.exact
    for module in (dmi, deepmetric.index.backends, deepmetric.index.exact):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_id_lists_beyond_int64_and_object_arrays_get_clear_answers():
    index = dmi.create("flat")
    with pytest.raises(ValueError, match=r"ids: expected ids that fit in int64, got \[9223372036854775808\]"):
        index.add(randn(2, 4), ids=[2**63, 1])  # numpy made the list float64: "got dtype float64"
    with pytest.raises(TypeError, match="ids: expected all strings or all integers, got bool True"):
        index.add(randn(2, 4), ids=[True, False])
    index.add(randn(2, 4), ids=np.array(["a", "b"], dtype=object))  # a pandas column's values
    assert index.names(index.search(randn(1, 4), 2)[1])[0] in (["a", "b"], ["b", "a"])


def test_faiss_add_errors_name_the_factory():
    index = dmi.create("faiss", factory="NSG16,Flat")
    index.add(randn(200, 4))
    with pytest.raises(ValueError, match="vectors: faiss cannot add 10 vectors to 'NSG16,Flat' holding 200: "
                                         ".*NSG does not support incremental addition"):
        index.add(randn(10, 4))
    assert len(index) == 200


def test_saving_over_the_current_directory_is_refused(tmp_path, monkeypatch):
    # the swap renames the directory away and puts a new one in its place: the process would be left
    # in a deleted directory (and "." itself cannot be renamed: a bare OSError before)
    monkeypatch.chdir(tmp_path)
    index = built("flat", n=3)
    (tmp_path / "real" / "idx").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path / "real" / "idx")
    for path in (".", "..", "sub/..", tmp_path / "link" / "idx"):  # the last through a symbolic link
        with pytest.raises(ValueError, match="is the current directory or holds it"):
            index.save(path)
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(tmp_path / "real")
    (tmp_path / "link").unlink()
    assert os.listdir(tmp_path) == [] and len(dmi.load(index.save("idx"))) == 3


def test_names_of_uint64_labels_above_two_to_the_53():
    # uint64 labels (e.g. a search's ids cast by the caller) against the int64 ones, beyond float64's
    # integers: 2^60 + 2, absent, must not pass for 2^60 + 1
    index = dmi.create("flat")
    index.add(randn(2, 4), ids=np.array([2**60 + 1, 3]))
    assert index.names(np.array([[2**60 + 1, 3]], dtype=np.uint64)) == [[2**60 + 1, 3]]
    for absent in (2**60 + 2, 2**63 + 5):
        with pytest.raises(ValueError, match=f"ids: not in the index: \\[{absent}\\]"):
            index.names(np.array([absent], dtype=np.uint64))


_THREADS_SCRIPT = """
import faiss, torch
import deepmetric.index as dmi
print(torch.get_num_threads(), faiss.omp_get_max_threads())
for backend in ("exact", "flat"):
    index = dmi.create(backend)
    index.add(torch.cat([torch.zeros(100, 8), torch.randn(2000, 8)]))  # ties among the zeros
    index.search(torch.zeros(2, 8), 5)
    index.search(torch.randn(300, 8), 50)
    print(backend, torch.get_num_threads(), faiss.omp_get_max_threads())
"""


def test_searches_keep_the_callers_thread_count():
    # the compiled kernels run on torch's threads; numba's OpenMP pool, started on first use, set the
    # process' OpenMP threads (torch's and faiss') to every core. A fresh process: the pool starts once.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split("\n")[:3] == ["1 1", "exact 1 1", "flat 1 1"]


@pytest.mark.parametrize("backend", ["exact", "flat"])
def test_numpy_vectors_in_any_layout_and_values_beyond_the_stored_type(backend, tmp_path):
    # big-endian arrays failed with torch's message naming no argument; read-only memory maps warned
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    index = dmi.create(backend)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.add(np.load(tmp_path / "x.npy", mmap_mode="r"))
        index.add(x.astype(">f4"))
    d, ids = index.search(x[:3].astype(">f4"), 2)
    assert ids[:, 0].tolist() == [0, 1, 2] and (d[:, 0] == 0).all()
    with pytest.raises(TypeError, match="vectors: expected a numeric or bool array"):
        index.add(np.array([["a"] * 8], dtype=object))
    # a float32 index refuses float64 values it cannot hold (cosine stored them as inf rows)
    cosine = dmi.create(backend, distance="cosine")
    cosine.add(x)
    with pytest.raises(ValueError, match="vectors: values beyond the range of"):
        cosine.add(torch.full((1, 8), 1e300, dtype=torch.float64))
    assert len(cosine) == 50


def test_hnsw_returns_k_results_when_k_exceeds_ef_search():
    # faiss' graph keeps ef_search candidates, so asking for more left slots empty (id -1) although
    # the index held them; evaluate asks for k = the largest class and scored those slots as misses
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    index = dmi.create("hnsw", ef_search=16)
    index.add(x)
    d, ids = index.search(x[:20], 300)  # 136 empty slots before
    assert (ids >= 0).all() and torch.isfinite(d).all()
    assert index.options["ef_search"] == 16 and faiss.downcast_index(index._index.index).hnsw.efSearch == 16
    # the same inside a vector transform (the graph was not found there: 2,718 of 16,550 slots empty)
    for factory in ["PCA4,HNSW16,Flat", "L2norm,HNSW16,Flat"]:
        index = dmi.create("faiss", factory=factory, ef_search=16)
        index.add(x)
        assert (index.search(x[:20], 300)[1] >= 0).all(), factory


def test_crafted_files_with_resealed_checksums_are_refused_clearly(tmp_path):
    # whoever hands over an index can rewrite a file and recompute the manifest's checksums: a negative id
    # hid a real item (searches gave -1), ids null with items broke later saves, deep JSON nesting was a
    # RecursionError traceback, a NUL in ids.json was cut silently, an .npy header stating a huge shape
    # was allocated before any check
    from deepmetric.index.base import _manifest_checksum

    def tamper(directory, name=None, data=None, **fields):
        if name is not None:
            (directory / name).write_bytes(data)
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest.update(fields)
        for listed in manifest["files"]:
            content = (directory / listed).read_bytes()
            manifest["files"][listed] = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
        manifest["checksum"] = _manifest_checksum(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))

    def npy(array, stated=None):  # stated: the shape the header claims
        with open(tmp_path / "scratch.npy", "wb") as f:
            header = {"descr": array.dtype.str, "fortran_order": False, "shape": stated or array.shape}
            np.lib.format.write_array_header_1_0(f, header)
            f.write(array.tobytes())
        return (tmp_path / "scratch.npy").read_bytes()

    cases = [("ids.npy", npy(np.array([0, -1, 2, 3])), {}, r"ids\.npy: expected non-negative ids, got \[-1\]"),
             (None, None, {"ids": None}, r"manifest\.json: ids null \(no id type\) with count 4"),
             ("ids.json", b"[" * 100_000, {}, r"ids\.json: not valid JSON: RecursionError"),
             ("ids.json", b'["a", "b", "c\\u0000", "d"]', {}, r"ids\.json: expected a list of 4 strings without NUL"),
             ("ids.json", b"\xff", {}, r"ids\.json: not valid JSON: UnicodeDecodeError"),
             ("vectors.npy", npy(np.zeros((4, 8), np.float32))[:-4], {}, r"vectors\.npy: 124 bytes of data for shape"),
             ("vectors.npy", npy(np.zeros((4, 8), np.float32), stated=(2**32, 8)), {"count": 2**32},
              r"vectors\.npy: 128 bytes of data for shape \(4294967296, 8\) of float32 \(truncated or modified\)")]
    for case, (name, data, fields, message) in enumerate(cases):
        directory = built("exact", n=4, ids=["a", "b", "c", "d"] if name == "ids.json" else None).save(
            tmp_path / f"idx{case}")
        tamper(directory, name, data, **fields)
        with pytest.raises(ValueError, match=message):
            dmi.load(directory)


def test_a_faiss_file_stating_more_than_the_memory_is_a_clear_error(tmp_path, monkeypatch):
    # faiss allocates what a file states before reading it; std::bad_alloc came out as a bare MemoryError
    from deepmetric.index import backends
    directory = built("flat", n=4).save(tmp_path / "idx")

    def read_index(reader):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(backends.faiss, "read_index", read_index)
    with pytest.raises(ValueError, match=r"idx/index\.faiss: states sizes beyond the memory available"):
        dmi.load(directory)


def test_a_planted_symbolic_link_at_the_save_lock_is_refused(tmp_path):
    # the lock file was opened through a link planted at its path: a save created a file elsewhere
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "dir" / ".idx.lock")
    with pytest.raises(ValueError, match=r"\.idx\.lock: is a symbolic link"):
        built("exact", n=4).save(tmp_path / "dir" / "idx")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "dir" / "idx").exists()


def test_concurrent_searches_give_the_results_of_one_thread():
    # HNSW raised efSearch on the shared graph for a k above ef_search and put back what it had read, which
    # could be another thread's raise: it stayed raised (111 of 200 later rows changed). The binary index's
    # radius search set nflip on shared tables, and built them unguarded (missed hits, then a crash).
    import threading
    from deepmetric.index.backends import _innermost
    hnsw = dmi.create("hnsw", M=16, ef_search=16)
    hnsw.add(randn(4000, 32, seed=0))
    q = randn(20, 32, seed=1)
    alone = {k: hnsw.search(q, k)[1] for k in (5, 200, 10, 100)}
    codes = dmi.create("binary")
    codes.add(random_codes(20_000, 64, 0))
    cq = random_codes(20, 64, 1)
    within = {r: codes.radius_search(cq, r, method="scan")[1] for r in (2, 5, 8, 12)}
    failures = []

    def work(k, radius):
        try:
            for _ in range(10):
                assert torch.equal(hnsw.search(q, k)[1], alone[k])
                got = codes.radius_search(cq, radius, method="hash")[1]
                assert all(torch.equal(a, b) for a, b in zip(got, within[radius]))
        except AssertionError as err:
            failures.append(err)

    threads = [threading.Thread(target=work, args=pair) for pair in ((5, 2), (200, 5), (10, 8), (100, 12))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and _innermost(hnsw._index).hnsw.efSearch == 16
    assert torch.equal(hnsw.search(q, 5)[1], alone[5])


def test_search_after_faiss_torch_utils_replaced_the_wrappers():
    # faiss.contrib.torch_utils (imported by pytorch-metric-learning, among others) replaces faiss' Python
    # search with one that takes no search parameters: HNSW searches with k above ef_search then failed
    import faiss.contrib.torch_utils  # noqa: F401
    index = dmi.create("hnsw", M=16, ef_search=16)
    index.add(randn(500, 8))
    exact = dmi.create("exact")
    exact.add(randn(500, 8))
    got, want = index.search(randn(3, 8, seed=1), 100), exact.search(randn(3, 8, seed=1), 100)
    assert torch.isfinite(got[0]).all() and (got[1] >= 0).all()
    assert len(set(got[1][0].tolist()) & set(want[1][0].tolist())) >= 90
