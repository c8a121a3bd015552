"""Exact k-NN search: hand-worked cases, ties in gallery order, exclusions, padding, chunked merging."""
import itertools
import math
from fractions import Fraction

import pytest
import torch

from deepmetric.distances import DISTANCES, as_ascending, pairwise
import deepmetric as dm
import deepmetric.index as dmi
from deepmetric.index import exact, knn

CHUNKINGS = [dict(), dict(chunk_size=1, gallery_chunk_size=1), dict(chunk_size=3, gallery_chunk_size=4),
             dict(chunk_size=5, gallery_chunk_size=7)]


@pytest.fixture(autouse=True, params=["heaps", "sorted blocks"])
def selection(request, monkeypatch):
    """Every test runs with both selections of the per-query search: heaps always, or never."""
    monkeypatch.setattr(exact, "HEAP_RATIO", 0 if request.param == "heaps" else 10**9)
    return request.param


def brute_force(q, g, k, distance, exclude=None):
    """Full (Q, G) distance matrix, excluded entries set to +inf, stable ascending sort, padded to k."""
    scores = as_ascending(pairwise(q, g, distance), distance).clone()
    if exclude is not None:
        scores[exclude] = math.inf
    d, i = scores.sort(dim=1, stable=True)
    i = i.masked_fill(torch.isinf(d), -1)
    if k > g.shape[0]:
        pad = k - g.shape[0]
        d = torch.cat([d, torch.full((q.shape[0], pad), math.inf)], 1)
        i = torch.cat([i, torch.full((q.shape[0], pad), -1)], 1)
    return d[:, :k], i[:, :k]


def test_hand_worked_points_on_a_line():
    # gallery x = 0, 1, 3, 6; query x = 2: distances 2, 1, 1, 4
    # -> order: index 1 (d=1) and index 2 (d=1) tie, gallery order puts 1 first; then 0 (d=2), 3 (d=4)
    g = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    q = torch.tensor([[2.0]])
    for distance, expected_d in [("euclidean", [1, 1, 2, 4]), ("squared_euclidean", [1, 1, 4, 16])]:
        for kw in CHUNKINGS:
            d, i = knn(q, g, 4, distance, **kw)
            assert i.tolist() == [[1, 2, 0, 3]]
            assert d.tolist() == [expected_d]
            assert i.dtype == torch.int64


def test_dot_is_returned_negated_and_cosine_as_one_minus_cos():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [-1.0, 0.0]])
    q = torch.tensor([[1.0, 0.0]])
    # dot similarities 1, 0, 3, -1 -> ascending negated: -3 (2), -1 (0), 0 (1), 1 (3)
    d, i = knn(q, g, 4, "dot")
    assert i.tolist() == [[2, 0, 1, 3]] and d.tolist() == [[-3.0, -1.0, 0.0, 1.0]]
    # cosine distances 0, 1, 0, 2 -> 0 (0), 0 (2) tie in gallery order, 1 (1), 2 (3)
    d, i = knn(q, g, 4, "cosine")
    assert i.tolist() == [[0, 2, 1, 3]] and d.tolist() == [[0.0, 0.0, 1.0, 2.0]]


def test_duplicates_keep_gallery_order_at_the_k_boundary():
    # gallery: 5, 1, 5, 1, 5 (x), query 0: the two 1s first (indices 1, 3), then the 5s in order 0, 2, 4
    g = torch.tensor([[5.0], [1.0], [5.0], [1.0], [5.0]])
    q = torch.tensor([[0.0]])
    for kw in CHUNKINGS:
        assert knn(q, g, 3, **kw)[1].tolist() == [[1, 3, 0]]
        assert knn(q, g, 4, **kw)[1].tolist() == [[1, 3, 0, 2]]
        assert knn(q, g, 5, **kw)[1].tolist() == [[1, 3, 0, 2, 4]]


def test_distances_rounded_together_keep_gallery_order():
    # squared distances from the origin: item 0: 1 + (3 * 2^-13)^2 = 1 + 1.125 * 2^-23 -> float32 1 + 2^-23;
    # item 1: exactly 1. Their square roots both round to 1.0 in float32 (sqrt(1 + 2^-23) < 1 + 2^-24),
    # so the euclidean distances tie and gallery order (0 first) must win; squared distances do not tie.
    g = torch.tensor([[1.0, 3 * 2.0 ** -13], [1.0, 0.0]])
    q = torch.zeros(1, 2)
    d, i = knn(q, g, 2, "euclidean")
    assert d.tolist() == [[1.0, 1.0]] and i.tolist() == [[0, 1]]
    assert torch.equal(i, brute_force(q, g, 2, "euclidean")[1])
    assert knn(q, g, 2, "squared_euclidean")[1].tolist() == [[1, 0]]


def test_many_identical_points_return_the_first_indices():
    g = torch.ones(3000, 4)
    q = torch.ones(6, 4)
    for kw in [dict(), dict(chunk_size=2, gallery_chunk_size=700)]:
        d, i = knn(q, g, 10, **kw)
        assert (i == torch.arange(10)).all()
        assert (d == 0).all()


@pytest.mark.parametrize("distance", DISTANCES)
def test_equals_stable_brute_force_with_many_ties(distance):
    gen = torch.Generator().manual_seed(0)
    if distance == "cosine":  # axis-aligned vectors: cosines are exactly -1, 0 or 1
        axes = torch.cat([torch.eye(3), -torch.eye(3)])
        g = axes[torch.randint(0, 6, (40,), generator=gen)] * torch.randint(1, 4, (40, 1), generator=gen)
        q = axes[torch.randint(0, 6, (13,), generator=gen)] * torch.randint(1, 4, (13, 1), generator=gen)
    else:  # small integer coordinates: every distance is exact in float32 and ties abound
        g = torch.randint(-2, 3, (40, 3), generator=gen).float()
        q = torch.randint(-2, 3, (13, 3), generator=gen).float()
    for k in (1, 5, 40, 43):
        expected = brute_force(q, g, k, distance)
        for kw in CHUNKINGS:
            d, i = knn(q, g, k, distance, **kw)
            assert torch.equal(i, expected[1]), (k, kw)
            assert torch.equal(d, expected[0])


@pytest.mark.parametrize("distance", DISTANCES)
def test_equals_brute_force_on_random_data(distance):
    gen = torch.Generator().manual_seed(1)
    q, g = torch.randn(37, 8, generator=gen), torch.randn(101, 8, generator=gen)
    for k in (1, 10, 101):
        expected_d, expected_i = brute_force(q, g, k, distance)
        for kw in CHUNKINGS:
            d, i = knn(q, g, k, distance, **kw)
            assert torch.equal(i, expected_i)
            torch.testing.assert_close(d, expected_d)


def test_against_a_plain_python_loop():
    gen = torch.Generator().manual_seed(2)
    q, g = torch.randn(5, 3, generator=gen), torch.randn(9, 3, generator=gen)
    d, i = knn(q, g, 4, chunk_size=2, gallery_chunk_size=3)
    for a in range(5):
        dists = [math.dist(q[a].tolist(), g[b].tolist()) for b in range(9)]
        order = sorted(range(9), key=lambda b: (dists[b], b))[:4]
        assert i[a].tolist() == order
        assert d[a].tolist() == pytest.approx([dists[b] for b in order], abs=1e-5)


def test_exclude_self_query_in_gallery():
    # x = 0, 0, 2, 5: item 1 duplicates item 0; each item is excluded from its own results only
    x = torch.tensor([[0.0], [0.0], [2.0], [5.0]])
    for kw in CHUNKINGS:
        d, i = knn(x, x, 3, exclude_self=True, **kw)
        assert i.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [2, 0, 1]]
        assert d.tolist() == [[0, 2, 5], [0, 2, 5], [2, 2, 3], [3, 5, 5]]
        # k = gallery size: one slot is left after excluding self -> padded
        d, i = knn(x, x, 4, exclude_self=True, **kw)
        assert i[:, 3].tolist() == [-1] * 4 and torch.isinf(d[:, 3]).all()


def test_exclude_self_and_groups_equal_brute_force():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (30, 2), generator=gen).float()
    groups = torch.randint(0, 6, (30,), generator=gen)
    same_group = groups.unsqueeze(1) == groups.unsqueeze(0)
    self_mask = torch.eye(30, dtype=torch.bool)
    for distance in ("euclidean", "dot"):
        for kw in CHUNKINGS:
            for k in (3, 30, 35):
                d, i = knn(x, x, k, distance, exclude_self=True, **kw)
                assert torch.equal(i, brute_force(x, x, k, distance, self_mask)[1])
                d, i = knn(x, x, k, distance, query_groups=groups, gallery_groups=groups, **kw)
                assert torch.equal(i, brute_force(x, x, k, distance, same_group)[1])
                valid = i >= 0
                assert not (groups[i.clamp_min(0)] == groups.unsqueeze(1))[valid].any()
                # every item outside the group is found when k covers the gallery
                if k >= 30:
                    assert torch.equal(valid.sum(1), (~same_group).sum(1))


def test_groups_with_separate_query_and_gallery():
    g = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    q = torch.tensor([[0.0], [3.0]])
    # query 0 (group 7) must skip gallery items 0 and 1 (group 7); query 1 (group 9) skips item 3
    d, i = knn(q, g, 3, query_groups=torch.tensor([7, 9]), gallery_groups=torch.tensor([7, 7, 8, 9]))
    assert i.tolist() == [[2, 3, -1], [2, 1, 0]]
    assert d.tolist() == [[2.0, 3.0, math.inf], [1.0, 2.0, 3.0]]


def test_k_larger_than_gallery_pads():
    g = torch.tensor([[1.0], [0.0]])
    for kw in CHUNKINGS:
        d, i = knn(torch.tensor([[0.0]]), g, 5, **kw)
        assert i.tolist() == [[1, 0, -1, -1, -1]]
        assert d[0, :2].tolist() == [0.0, 1.0] and torch.isinf(d[0, 2:]).all()


def test_float64_is_kept_and_half_is_promoted():
    x = torch.randn(6, 3, dtype=torch.float64)
    assert knn(x, x, 2)[0].dtype == torch.float64
    assert knn(x.half(), x.half(), 2)[0].dtype == torch.float32


def test_bad_input_raises_clear_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="dimension"):
        knn(x, torch.randn(4, 2), 1)
    with pytest.raises(ValueError, match="NaN"):
        knn(torch.tensor([[math.nan, 0.0, 0.0]]), x, 1)
    with pytest.raises(ValueError, match="gallery.*NaN"):
        knn(x, torch.tensor([[math.inf, 0.0, 0.0]]), 1)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k: expected an integer >= 1"):
            knn(x, x, bad_k)
    with pytest.raises(ValueError, match="unknown name"):
        knn(x, x, 1, distance="manhattan")
    with pytest.raises(ValueError, match="together"):
        knn(x, x, 1, query_groups=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"query_groups: expected shape \(4,\)"):
        knn(x, x, 1, query_groups=torch.zeros(3, dtype=torch.long), gallery_groups=torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="query_groups: expected integer group ids"):
        knn(x, x, 1, query_groups=torch.zeros(4), gallery_groups=torch.zeros(4))
    with pytest.raises(ValueError, match="exclude_self"):
        knn(torch.randn(5, 3), x, 1, exclude_self=True)
    with pytest.raises(TypeError, match="floating"):
        knn(x.long(), x, 1)
    with pytest.raises(ValueError, match="chunk_size"):
        knn(x, x, 1, chunk_size=0)
    with pytest.raises(ValueError, match="overflow"):
        knn(torch.full((1, 3), 1e30), torch.full((1, 3), -1e30), 1)


def test_embeddings_that_require_grad_are_searched_without_a_graph():
    # embeddings straight from a model: the search needs no gradient and must not fail on one
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 4, generator=gen).requires_grad_()
    g = torch.randn(60, 4, generator=gen)
    xd = x.detach()
    for args, plain, kw in (((x, g), (xd, g), {}), ((x, x), (xd, xd), {"exclude_self": True})):
        d, i = knn(*args, 3, **kw)
        expected_d, expected_i = knn(*plain, 3, **kw)
        assert torch.equal(i, expected_i) and torch.equal(d, expected_d) and not d.requires_grad


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
def test_euclidean_ranks_are_kept_far_from_the_origin(distance):
    # a common shift changes no distance, but |x|^2 + |y|^2 - 2 x.y computed on the shifted float32
    # vectors (norms about 2,800 times the spread) would lose every digit that ranks the neighbours
    gen = torch.Generator().manual_seed(11)
    x = 0.1 * torch.randn(300, 8, generator=gen)
    shifted = x + 1000.0
    reference = shifted.double() - 1000.0  # the shifted points themselves, centred exactly
    for q, g, kw in ((shifted[:50], shifted[50:], {}), (shifted, shifted, {"exclude_self": True})):
        rq, rg = (reference[:50], reference[50:]) if q.shape[0] == 50 else (reference, reference)
        d, i = knn(q, g, 10, distance, **kw)
        d_ref, i_ref = knn(rq, rg, 10, distance, **kw)
        gaps = torch.cat([d_ref[:, 1:] - d_ref[:, :-1], torch.full((d.shape[0], 1), math.inf)], 1)
        untied = (gaps > 1e-3) & torch.cat([torch.full((d.shape[0], 1), True), gaps[:, :-1] > 1e-3], 1)
        assert untied.float().mean() > 0.5
        assert torch.equal(i[untied], i_ref[untied])
        torch.testing.assert_close(d, d_ref.float(), atol=1e-3, rtol=1e-3)


def test_tiny_spread_far_from_the_origin_is_centred_in_float64():
    # spread 1e-7 at 1000: the variance as E[x^2] - E[x]^2 cancels to 0 in float64, so the points
    # were not moved and |x|^2 + |y|^2 - 2 x.y (ulp of 4e6 about 1e-9) lost their distances (1e-14)
    x = 1e-7 * torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shifted = x + 1000.0
    exact = shifted - 1000.0  # exact (Sterbenz): the shifted points themselves
    for kw in ({"exclude_self": True}, {}):
        d, i = knn(shifted, shifted, 5, **kw)
        d_ref, i_ref = knn(exact, exact, 5, **kw)
        assert torch.equal(i, i_ref)
        torch.testing.assert_close(d, d_ref, rtol=1e-6, atol=0)


def test_query_in_gallery_refuses_overflowing_embeddings():
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0)) * 1e20
    for kw in ({"exclude_self": True}, {}):
        with pytest.raises(ValueError, match="overflow"):
            knn(x, x, 3, **kw)
    assert knn(x.double(), x.double(), 3, exclude_self=True)[1].min() >= 0


def test_cosine_distances_are_never_negative():
    x = torch.tensor([[1.0, 1e-4, 3.0], [0.3, 0.2, 0.9]], dtype=torch.float64) * torch.tensor([[1.0], [7.0]])
    d, _ = knn(x, x, 2, "cosine")
    assert (d >= 0).all() and d[:, 0].max() < 1e-12


@pytest.mark.parametrize("chunks", [{}, {"gallery_chunk_size": 3}])
def test_cosine_parallel_vectors_of_different_norms_tie_in_gallery_order(chunks):
    # every gallery row is a positive whole multiple of one of four integer directions (exactly
    # parallel in float32): its cosine distance to any multiple of the same direction is exactly that
    # of the others (ties in gallery order), in the per-query and the query-in-gallery search alike
    gen = torch.Generator().manual_seed(3)
    directions = torch.randint(-5, 6, (4, 5), generator=gen).float()
    which = torch.arange(24) % 4
    x = directions[which] * torch.randint(1, 30, (24, 1), generator=gen).float()
    d, i = knn(x[:4], x, 6, "cosine", **chunks)
    assert i.tolist() == [(which == c).nonzero().flatten().tolist() for c in range(4)]
    assert bool((d == d[:, :1]).all())
    d, i = knn(x, x, 5, "cosine", exclude_self=True, **chunks)
    for q in range(24):
        assert i[q].tolist() == [j for j in (which == which[q]).nonzero().flatten().tolist() if j != q]
        assert bool((d[q] == d[q, 0]).all())


def _exact_minus_cosine(a, b):
    """``-cos(a, b)`` of integer vectors as an exact order key: ``-sign(a.b) (a.b)^2 / (|a|^2 |b|^2)``."""
    ab, aa, bb = sum(i * j for i, j in zip(a, b)), sum(i * i for i in a), sum(j * j for j in b)
    return -Fraction(ab * abs(ab), aa * bb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cosine_ties_of_different_directions_keep_gallery_order(dtype):
    # every non-zero vector of {-2, ..., 2}^3: many pairs of *different* directions have exactly equal
    # cosines to a query (cos((1, 1, 1), (1, 1, 0)) = cos((1, 1, 1), (1, 0, 1))), which normalised float
    # products score differently in the last bit; the results must follow (exact cosine, gallery index)
    points = [p for p in itertools.product(range(-2, 3), repeat=3) if any(p)]
    x, n = torch.tensor(points, dtype=dtype), len(points)

    def expected(r, exclude):
        others = [j for j in range(n) if not (exclude and j == r)]
        return sorted(others, key=lambda j: (_exact_minus_cosine(points[r], points[j]), j))

    index = dmi.create("exact", distance="cosine")
    index.add(x)
    results = [(knn(x, x, n, "cosine")[1], False), (knn(x, x, n - 1, "cosine", exclude_self=True)[1], True),
               (exact.self_knn(x, n - 1, "cosine")[1], True), (index.search(x, n)[1], False)]
    for ids, exclude in results:
        assert [expected(r, exclude) for r in range(n)] == ids.tolist()
    # cut at k = 10: the distances of the first 10, in order, and ties among them in gallery order (an
    # item tied with the 10th beyond the cut may stand in for a smaller index: exact.py's docstring)
    d, ids = knn(x, x, 10, "cosine")
    for r in range(n):
        keys = [(_exact_minus_cosine(points[r], points[j]), j) for j in ids[r].tolist()]
        assert keys == sorted(keys)
        assert [key for key, _ in keys] == [_exact_minus_cosine(points[r], points[j]) for j in expected(r, False)[:10]]
    # the review's case: (1, 1, 1) is as close to (1, -1, 1) as to (-1, 1, 1); the first in gallery order wins
    y = torch.tensor([[1, -1, 1], [-1, 1, 1], [1, 1, 1]], dtype=dtype)
    assert dm.evaluate(y, torch.tensor([0, 1, 1]), distance="cosine", nmi=False)["precision_at_1"] == 0.5



def test_float32_cosine_cut_keeps_gallery_order_within_a_tied_run():
    # every non-zero vector of {-2, ..., 2}^3, twice over: a run of equal cosines (of different
    # directions and of parallel vectors of other norms) straddles the k-th place in most rows. The k
    # were kept by float32 score, so an item of the run with a larger index could stand in for a smaller
    # one, and the list depended on k and chunk_size (evaluate's depth is the largest R in a chunk)
    points = [p for p in itertools.product(range(-2, 3), repeat=3) if any(p)] * 2
    x, n = torch.tensor(points, dtype=torch.float32), len(points)
    full = [sorted(range(n), key=lambda j: (_exact_minus_cosine(points[r], points[j]), j)) for r in range(n)]
    for k in (5, 10, 37):
        for chunk_size in (1, 7, n):
            ids = knn(x, x, k, "cosine", chunk_size=chunk_size)[1]
            assert ids.tolist() == [row[:k] for row in full]
        ids = exact.self_knn(x, k, "cosine")[1]
        assert ids.tolist() == [[j for j in row if j != r][:k] for r, row in enumerate(full)]


def test_cosine_of_near_duplicates_and_of_huge_vectors():
    # a row of near-duplicates is one long run of close distances (re-ranked by a sort, not the
    # quadratic insertion of short runs); it must come back sorted by (distance, index)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, generator=gen) + 1e-4 * torch.randn(300, 16, generator=gen)
    x[10], x[250] = x[3], x[3]  # exact duplicates inside the run
    d, ids = knn(x, x, 299, "cosine", exclude_self=True)
    assert bool((d[:, 1:] >= d[:, :-1]).all())
    ties = (d[:, 1:] == d[:, :-1])
    assert bool((ids[:, 1:][ties] > ids[:, :-1][ties]).all())
    # |x|^2 beyond float64: the same ranking as the vectors scaled down (the norms overflowed to inf:
    # unit rows of zeros, and the pair formula's fallback gave NaN, read as cosine -1)
    y = torch.randn(40, 8, dtype=torch.float64, generator=gen)
    small, huge = knn(y[:5], y, 6, "cosine"), knn(y[:5] * 1e170, y * 1e170, 6, "cosine")
    assert torch.equal(small[1], huge[1]) and torch.allclose(small[0], huge[0], atol=1e-12)
    scaled = y * 1e170
    exact.unit_rows(scaled)
    assert torch.equal(scaled, y * 1e170)  # the caller's float64 rows are not written


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine", "dot"])
def test_float64_duplicates_come_back_in_gallery_order(distance):
    # MKL's float64 product scores identical gallery columns differently by their position; ties must
    # still keep gallery order, at the cut too. Oracle: each pair ranked by its base vectors' distance
    # (computed once per pair of base vectors, so duplicates tie exactly), then by gallery index.
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    which = torch.randint(0, 40, (160,), generator=gen)
    queries = torch.randn(30, 7, generator=gen, dtype=torch.float64)

    def dist(a, b):
        if distance == "dot":
            return -float(a @ b)
        if distance == "cosine":
            return 1 - float(a @ b) / float(a.norm() * b.norm())
        return float((a - b).pow(2).sum()) ** (0.5 if distance == "euclidean" else 1)

    for q, exclude in ((queries, False), (base[which], True)):
        _, ids = knn(q, base[which], 10, distance, exclude_self=exclude)
        for r in range(q.shape[0]):
            others = [j for j in range(160) if not (exclude and j == r)]
            expected = sorted(others, key=lambda j: (dist(q[r], base[which[j]]), j))[:10]
            assert ids[r].tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_searches_leave_their_inputs_unchanged(dtype):
    # x.double() of float64 is x itself: an in-place step on it once rewrote the caller's embeddings
    x = 3.0 + torch.randn(300, 8, generator=torch.Generator().manual_seed(2), dtype=dtype)
    copy = x.clone()
    knn(x, x, 5, exclude_self=True)
    knn(x[:20], x, 5)
    assert torch.equal(x, copy)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "dot"])
def test_exact_index_finds_the_nearest_in_a_cluster_of_near_duplicates(distance):
    # 100 near-duplicates 1e-4 apart among 2,000 unit vectors: their float32 product scores differ by
    # rounding more than by distance, so the k + REFINE_MARGIN candidates kept by score missed the
    # query's own copy in 80% of rows; rows whose cut lies within rounding are now searched deeper
    g = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(2100, 128, generator=g), dim=1)
    unit[2000:] = unit[2000] + 1e-5 * torch.randn(100, 128, generator=g)
    index = dmi.create("exact", distance=distance)
    index.add(unit)
    queries = unit[2000:2020]
    d, ids = index.search(queries, 10)
    truth = as_ascending(pairwise(queries.double(), unit.double(), distance), distance)
    expected = torch.sort(truth, dim=1, stable=True).indices[:, :10]
    assert torch.equal(ids, expected)
    if distance != "dot":
        assert torch.equal(ids[:, 0], torch.arange(2000, 2020)) and (d[:, 0] == 0).all()


def test_the_deeper_search_is_done_once_on_data_of_duplicates(monkeypatch):
    # every row of constant embeddings has its cut within rounding; searching deeper until the rows
    # cleared took 240 s and 4.3 GB on 20,000 items (margins 16 to 65,536): one deeper search now
    calls = []
    search = exact._Searcher.search
    monkeypatch.setattr(exact._Searcher, "search", lambda self, *a, **kw: calls.append(a[0].shape[0]) or
                        search(self, *a, **kw))
    index = dmi.create("exact")
    index.add(torch.ones(3000, 4))
    d, ids = index.search(torch.ones(50, 4), 10)
    assert ids.tolist() == [list(range(10))] * 50 and (d == 0).all()
    assert calls == [50, 50]


def test_compiled_kernels_restore_numbas_thread_count():
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        knn(torch.zeros(20, 3), torch.zeros(200, 3), 5)  # tied rows: the compiled kernel runs
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
