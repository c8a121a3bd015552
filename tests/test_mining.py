"""Miners against plain Python loops, against pytorch-metric-learning, and on edge cases.

Loop references take the distance matrix of :mod:`deepmetric.distances` (float64 inputs, converted
to Python floats) so that they test the mining logic, and use the obviously-correct triple loop.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance

import deepmetric as dm
from deepmetric import distances, mining
from deepmetric.functional import mining as F
from deepmetric.mining import (BatchHardMiner, DistanceWeightedMiner, MultiSimilarityMiner, Pairs, SemiHardMiner,
                               TripletMarginMiner, Triplets)

TYPES = ["semihard", "hard", "easy", "all"]


# ---------------------------------------------------------------- helpers and loop references

def make_labels(pattern: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if pattern == "pairs":
        return torch.arange(n) // 2
    if pattern == "four-per-class":
        return torch.arange(n) // 4
    if pattern == "few-classes":
        return torch.randint(0, 3, (n,), generator=gen)
    if pattern == "many-classes":
        return torch.randint(0, max(1, n // 2), (n,), generator=gen)
    raise ValueError(pattern)


def make_case(batch: int, pattern: str, with_ref: bool, seed: int, dim: int = 6, normalise: bool = False):
    """Random float64 inputs: (x, y) or (x, y, ref_x, ref_y)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    y = make_labels(pattern, batch, gen)
    if normalise:
        x = torch.nn.functional.normalize(x, dim=1)
    if not with_ref:
        return (x, y)
    r = batch + 5
    rx = torch.randn(r, dim, generator=gen, dtype=torch.float64)
    ry = make_labels(pattern, r, gen)
    if normalise:
        rx = torch.nn.functional.normalize(rx, dim=1)
    return (x, y, rx, ry)


def as_set(tuples) -> list:
    return sorted(zip(*[t.tolist() for t in tuples]))


def pair_sets(pairs: Pairs):
    return as_set((pairs.a1, pairs.p)), as_set((pairs.a2, pairs.n))


def loop_relations(case):
    """Python lists pos[a][j], neg[a][j] from flat labels, written out."""
    y = case[1].tolist()
    ry = case[3].tolist() if len(case) == 4 else y
    pos = [[y[a] == ry[j] and (len(case) == 4 or a != j) for j in range(len(ry))] for a in range(len(y))]
    neg = [[y[a] != ry[j] for j in range(len(ry))] for a in range(len(y))]
    return pos, neg


def loop_matrix(case, distance: str, ascending: bool = True):
    x = case[0]
    r = case[2] if len(case) == 4 else x
    mat = distances.pairwise(x, r, distance).tolist()
    if ascending and distance == "dot":
        mat = [[-v for v in row] for row in mat]
    return mat


def loop_batch_hard(d, pos, neg):
    out = []
    for a in range(len(d)):
        best_p = best_n = None
        for j in range(len(d[a])):
            if pos[a][j] and (best_p is None or d[a][j] > d[a][best_p]):
                best_p = j
            if neg[a][j] and (best_n is None or d[a][j] < d[a][best_n]):
                best_n = j
        if best_p is not None and best_n is not None:
            out.append((a, best_p, best_n))
    return out


def loop_margin(d, pos, neg, margin, kind, hardest_only=False):
    out = []
    for a in range(len(d)):
        for p in range(len(d[a])):
            if not pos[a][p]:
                continue
            chosen = []
            for n in range(len(d[a])):
                if not neg[a][n]:
                    continue
                m = d[a][n] - d[a][p]
                ok = {"all": m <= margin, "hard": m <= margin and m <= 0,
                      "semihard": 0 < m <= margin, "easy": m > margin}[kind]
                if ok:
                    chosen.append(n)
            if hardest_only and chosen:
                best = chosen[0]
                for n in chosen:
                    if d[a][n] < d[a][best]:
                        best = n
                chosen = [best]
            out.extend((a, p, n) for n in chosen)
    return out


def loop_multi_similarity(s, pos, neg, eps):
    keep_pos, keep_neg = [], []
    for i in range(len(s)):
        max_neg = max([s[i][j] for j in range(len(s[i])) if neg[i][j]], default=-math.inf)
        min_pos = min([s[i][k] for k in range(len(s[i])) if pos[i][k]], default=math.inf)
        for k in range(len(s[i])):
            if pos[i][k] and s[i][k] - eps < max_neg:
                keep_pos.append((i, k))
        for j in range(len(s[i])):
            if neg[i][j] and s[i][j] + eps > min_pos:
                keep_neg.append((i, j))
    return keep_pos, keep_neg


def loop_dw_log_weights(d, neg, dim, cutoff, nonzero):
    out = []
    for a in range(len(d)):
        row = []
        for j in range(len(d[a])):
            if not neg[a][j] or d[a][j] >= nonzero:
                row.append(-math.inf)
                continue
            dd = max(d[a][j], cutoff)
            q = dd ** (dim - 2) * max(1 - dd * dd / 4, np.finfo(np.float64).eps) ** ((dim - 3) / 2)
            row.append(math.log(1 / q))
        out.append(row)
    return out


def loop_dw_probabilities(d, neg, dim, cutoff, nonzero):
    logw = loop_dw_log_weights(d, neg, dim, cutoff, nonzero)
    out = []
    for a, row in enumerate(logw):
        w = [math.exp(v) if v > -math.inf else 0.0 for v in row]
        if sum(w) == 0:  # no negative with positive weight: uniform among negatives
            w = [1.0 if neg[a][j] else 0.0 for j in range(len(row))]
        total = sum(w)
        out.append([v / total if total else 0.0 for v in w])
    return out


CASES = [(b, pat, ref, seed) for seed, (b, pat) in enumerate(
    [(2, "pairs"), (7, "few-classes"), (16, "four-per-class"), (16, "many-classes"), (33, "few-classes"),
     (24, "pairs")]) for ref in (False, True)]


# ---------------------------------------------------------------- batch-hard

@pytest.mark.parametrize("batch,pattern,with_ref,seed", CASES)
@pytest.mark.parametrize("distance", distances.DISTANCES)
def test_batch_hard_matches_loop(batch, pattern, with_ref, seed, distance):
    case = make_case(batch, pattern, with_ref, seed)
    got = BatchHardMiner(distance=distance)(*case)
    assert isinstance(got, Triplets)
    pos, neg = loop_relations(case)
    assert as_set(got) == sorted(loop_batch_hard(loop_matrix(case, distance), pos, neg))


@pytest.mark.parametrize("batch,pattern,with_ref,seed", CASES)
def test_batch_hard_matches_pml(batch, pattern, with_ref, seed):
    case = make_case(batch, pattern, with_ref, seed)
    ours = BatchHardMiner()(*case)
    theirs = pml_miners.BatchHardMiner(distance=LpDistance(normalize_embeddings=False))(*case)
    assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]  # same order too
    dot_ours = BatchHardMiner(distance="dot")(*case)
    dot_theirs = pml_miners.BatchHardMiner(distance=DotProductSimilarity(normalize_embeddings=False))(*case)
    assert [t.tolist() for t in dot_ours] == [t.tolist() for t in dot_theirs]


@pytest.mark.parametrize("with_ref", [False, True])
def test_batch_hard_tie_breaking_matches_pml(with_ref):
    # Integer points on a tiny grid: many exactly equal distances, computed exactly by both libraries.
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 2, (30, 3), generator=gen).double()
    y = torch.randint(0, 3, (30,), generator=gen)
    case = (x, y) if not with_ref else (x, y, torch.randint(0, 2, (20, 3), generator=gen).double(),
                                        torch.randint(0, 3, (20,), generator=gen))
    ours = BatchHardMiner()(*case)
    theirs = pml_miners.BatchHardMiner(distance=LpDistance(normalize_embeddings=False))(*case)
    assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]
    pos, neg = loop_relations(case)
    assert as_set(ours) == loop_batch_hard(loop_matrix(case, "euclidean"), pos, neg)  # first index wins


# ---------------------------------------------------------------- semi-hard and triplet-margin

@pytest.mark.parametrize("batch,pattern,with_ref,seed", CASES)
@pytest.mark.parametrize("kind", TYPES)
def test_margin_triplets_match_loop(batch, pattern, with_ref, seed, kind):
    case = make_case(batch, pattern, with_ref, seed)
    pos, neg = loop_relations(case)
    d = loop_matrix(case, "euclidean")
    for hardest_only in (False, True):
        got = TripletMarginMiner(margin=0.6, type_of_triplets=kind, hardest_only=hardest_only)(*case)
        assert as_set(got) == sorted(loop_margin(d, pos, neg, 0.6, kind, hardest_only))


@pytest.mark.parametrize("distance", distances.DISTANCES)
@pytest.mark.parametrize("margin", [0.3, -0.1])
def test_semi_hard_distances_and_margins_match_loop(distance, margin):
    for seed, with_ref in enumerate((False, True)):
        case = make_case(20, "few-classes", with_ref, seed + 40)
        pos, neg = loop_relations(case)
        d = loop_matrix(case, distance)
        for hardest_only in (False, True):
            got = SemiHardMiner(margin=margin, distance=distance, hardest_only=hardest_only)(*case)
            assert as_set(got) == sorted(loop_margin(d, pos, neg, margin, "semihard", hardest_only))


def test_semi_hard_chunking_gives_the_same_triplets():
    case = make_case(40, "few-classes", False, 3)
    dist = distances.pairwise(case[0], case[0])
    pos, neg = dm.labels.pair_masks(case[1])
    full = F.semi_hard_triplets(dist, pos, neg, 0.5)
    for chunk_elements in (7, 123, 10_000):
        for hardest_only in (False, True):
            chunked = F.semi_hard_triplets(dist, pos, neg, 0.5, hardest_only, chunk_elements=chunk_elements)
            ref = F.semi_hard_triplets(dist, pos, neg, 0.5, hardest_only)
            assert [t.tolist() for t in chunked] == [t.tolist() for t in ref]
    assert len(full) > 0


@pytest.mark.parametrize("batch,pattern,with_ref,seed", CASES)
@pytest.mark.parametrize("kind", TYPES)
def test_triplet_margin_matches_pml(batch, pattern, with_ref, seed, kind):
    case = make_case(batch, pattern, with_ref, seed)
    ours = TripletMarginMiner(margin=0.5, type_of_triplets=kind)(*case)
    theirs = pml_miners.TripletMarginMiner(margin=0.5, type_of_triplets=kind,
                                           distance=LpDistance(normalize_embeddings=False))(*case)
    assert as_set(ours) == as_set(theirs)
    dot_ours = TripletMarginMiner(margin=0.5, type_of_triplets=kind, distance="dot")(*case)
    dot_theirs = pml_miners.TripletMarginMiner(margin=0.5, type_of_triplets=kind,
                                               distance=DotProductSimilarity(normalize_embeddings=False))(*case)
    assert as_set(dot_ours) == as_set(dot_theirs)


@pytest.mark.parametrize("with_ref", [False, True])
def test_semi_hard_default_matches_pml(with_ref):
    case = make_case(32, "four-per-class", with_ref, 11)
    ours = SemiHardMiner(margin=0.2)(*case)
    theirs = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard",
                                           distance=LpDistance(normalize_embeddings=False))(*case)
    assert as_set(ours) == as_set(theirs)
    assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]  # also the same (a, p, n) order
    assert len(ours) > 0


def test_semi_hard_inequalities_on_exact_values():
    # Hand-made distances: anchor 0, positive 1 at 1.0; negatives at 0.5 (hard), 1.0 (equal: hard),
    # 1.125 (semi-hard), 1.25 (semi-hard, on the margin), 1.5 (easy). Margin 0.25, exact in binary.
    dist = torch.tensor([[0.0, 1.0, 0.5, 1.0, 1.125, 1.25, 1.5]])
    pos = torch.tensor([[False, True, False, False, False, False, False]])
    neg = torch.tensor([[False, False, True, True, True, True, True]])
    n_of = lambda kind, h=False: F.margin_triplets(dist, pos, neg, 0.25, kind, h).n.tolist()  # noqa: E731
    assert n_of("semihard") == [4, 5]
    assert n_of("hard") == [2, 3]
    assert n_of("all") == [2, 3, 4, 5]
    assert n_of("easy") == [6]
    assert n_of("semihard", True) == [4]
    assert n_of("hard", True) == [2]


def test_semi_hard_hardest_only_drops_pairs_without_semi_hard_negative():
    dist = torch.tensor([[0.0, 1.0, 0.5, 2.0], [1.0, 0.0, 1.2, 1.1]])
    pos = torch.tensor([[False, True, False, False], [True, False, False, False]])
    neg = torch.tensor([[False, False, True, True], [False, False, True, True]])
    got = F.semi_hard_triplets(dist, pos, neg, margin=0.2, hardest_only=True)
    # anchor 0: negatives at 0.5 (hard) and 2.0 (outside margin) -> dropped; anchor 1: 1.1 < 1.2
    assert as_set(got) == [(1, 0, 3)]


# ---------------------------------------------------------------- multi-similarity

@pytest.mark.parametrize("batch,pattern,with_ref,seed", CASES)
@pytest.mark.parametrize("distance", distances.DISTANCES)
def test_multi_similarity_matches_loop(batch, pattern, with_ref, seed, distance):
    case = make_case(batch, pattern, with_ref, seed)
    pos, neg = loop_relations(case)
    x = case[0]
    r = case[2] if with_ref else x
    if distance == "cosine":  # S = cos; the euclidean distances rank by S = -D
        sim = distances.cosine_similarity(x, r).tolist()
    elif distance == "dot":
        sim = distances.dot(x, r).tolist()
    else:
        sim = [[-v for v in row] for row in loop_matrix(case, distance)]
    got = MultiSimilarityMiner(epsilon=0.2, distance=distance)(*case)
    assert isinstance(got, Pairs)
    exp_pos, exp_neg = loop_multi_similarity(sim, pos, neg, 0.2)
    assert pair_sets(got) == (sorted(exp_pos), sorted(exp_neg))


@pytest.mark.parametrize("batch,pattern,with_ref,seed", CASES)
def test_multi_similarity_matches_pml(batch, pattern, with_ref, seed):
    case = make_case(batch, pattern, with_ref, seed)
    epsilon = (0.1, 0.5)[seed % 2]
    for ours, theirs in [
        (MultiSimilarityMiner(epsilon), pml_miners.MultiSimilarityMiner(epsilon)),
        (MultiSimilarityMiner(epsilon, "cosine"), pml_miners.MultiSimilarityMiner(epsilon, distance=CosineSimilarity())),
        (MultiSimilarityMiner(epsilon, "euclidean"),
         pml_miners.MultiSimilarityMiner(epsilon, distance=LpDistance(normalize_embeddings=False))),
        (MultiSimilarityMiner(epsilon, "dot"),
         pml_miners.MultiSimilarityMiner(epsilon, distance=DotProductSimilarity(normalize_embeddings=False))),
    ]:
        a1, p, a2, n = theirs(*case)
        assert pair_sets(ours(*case)) == (as_set((a1, p)), as_set((a2, n)))


def test_multi_similarity_float32_matches_pml_bitwise_cosine():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=gen)
    y = torch.randint(0, 8, (64,), generator=gen)
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(0.1)(x, y)
    assert pair_sets(MultiSimilarityMiner(0.1)(x, y)) == (as_set((a1, p)), as_set((a2, n)))


# ---------------------------------------------------------------- distance-weighted

@pytest.mark.parametrize("batch,pattern,with_ref,seed", CASES)
@pytest.mark.parametrize("dim", [2, 3, 8, 64])
def test_distance_weighted_weights_match_loop(batch, pattern, with_ref, seed, dim):
    case = make_case(batch, pattern, with_ref, seed, dim=dim, normalise=True)
    _, neg = loop_relations(case)
    d = loop_matrix(case, "euclidean")
    dist = torch.tensor(d, dtype=torch.float64)
    neg_t = torch.tensor(neg, dtype=torch.bool).reshape(dist.shape)
    for cutoff, nonzero in [(0.5, 1.4), (0.2, 2.5), (0.5, 0.9)]:
        logw = F.distance_weighted_log_weights(dist, neg_t, dim, cutoff, nonzero)
        exp = torch.tensor(loop_dw_log_weights(d, neg, dim, cutoff, nonzero), dtype=torch.float64).reshape(dist.shape)
        assert torch.equal(torch.isinf(logw), torch.isinf(exp))
        fin = torch.isfinite(exp)
        torch.testing.assert_close(logw[fin], exp[fin], rtol=1e-9, atol=1e-9)
        probs = F.distance_weighted_probabilities(dist, neg_t, dim, cutoff, nonzero)
        exp_p = torch.tensor(loop_dw_probabilities(d, neg, dim, cutoff, nonzero), dtype=torch.float64)
        torch.testing.assert_close(probs, exp_p.reshape(dist.shape), rtol=1e-9, atol=1e-12)


def test_distance_weighted_probabilities_hand_worked():
    # dim 3: q(d) ∝ d, so the weight is 1 / max(d, cutoff); zero at d >= 1.4.
    dist = torch.tensor([[0.0, 0.25, 1.0, 1.5], [0.0, 1.5, 1.6, 0.3]], dtype=torch.float64)
    neg = torch.tensor([[False, True, True, True], [False, True, True, False]])
    probs = F.distance_weighted_probabilities(dist, neg, 3, cutoff=0.5, nonzero_loss_cutoff=1.4)
    # row 0: weights 1/0.5 = 2 and 1/1 = 1 -> 2/3, 1/3; row 1: no weight -> uniform over negatives
    torch.testing.assert_close(probs, torch.tensor([[0, 2 / 3, 1 / 3, 0], [0, 0.5, 0.5, 0]], dtype=torch.float64))


def test_distance_weighted_output_structure_and_seed():
    case = make_case(24, "few-classes", False, 7, dim=8, normalise=True)
    out = DistanceWeightedMiner(seed=3)(*case)
    assert isinstance(out, Triplets)
    x, y = case
    pos, neg = dm.labels.pair_masks(y)
    has_neg = neg.any(1, keepdim=True)
    exp_a, exp_p = (pos & has_neg).nonzero(as_tuple=True)  # one triplet per positive pair, in order
    assert out.a.tolist() == exp_a.tolist() and out.p.tolist() == exp_p.tolist()
    probs = F.distance_weighted_probabilities(distances.euclidean(x, x), neg, 8)
    assert bool((probs[out.a, out.n] > 0).all())
    assert bool((y[out.a] != y[out.n]).all())
    # same seed -> same output, over a sequence of calls; a different seed differs
    m1, m2, m3 = DistanceWeightedMiner(seed=3), DistanceWeightedMiner(seed=3), DistanceWeightedMiner(seed=4)
    for _ in range(3):
        o1, o2, o3 = m1(*case), m2(*case), m3(*case)
        assert [t.tolist() for t in o1] == [t.tolist() for t in o2]
    assert o1.n.tolist() != o3.n.tolist()
    assert DistanceWeightedMiner(seed=3)(*case).n.tolist() == out.n.tolist()
    # an explicit generator and torch's global one are reproducible too
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert DistanceWeightedMiner(seed=g1)(*case).n.tolist() == DistanceWeightedMiner(seed=g2)(*case).n.tolist()
    torch.manual_seed(1)
    first = DistanceWeightedMiner()(*case).n.tolist()
    torch.manual_seed(1)
    assert DistanceWeightedMiner()(*case).n.tolist() == first


def test_distance_weighted_with_reference_set():
    case = make_case(10, "few-classes", True, 8, dim=4, normalise=True)
    x, y, rx, ry = case
    out = DistanceWeightedMiner(seed=0)(*case)
    pos, neg = dm.labels.pair_masks(y, ry)
    exp_a, exp_p = (pos & neg.any(1, keepdim=True)).nonzero(as_tuple=True)
    assert out.a.tolist() == exp_a.tolist() and out.p.tolist() == exp_p.tolist()
    assert bool((y[out.a] == ry[out.p]).all() and (y[out.a] != ry[out.n]).all())


def test_distance_weighted_frequencies_follow_weights():
    # Deterministic seed: the statistic is fixed, so this cannot flake; it fails if sampling ignores weights.
    gen = torch.Generator().manual_seed(0)
    dim = 5
    x = torch.nn.functional.normalize(torch.randn(12, dim, generator=gen, dtype=torch.float64), dim=1)
    y = torch.arange(12) // 4
    pos, neg = dm.labels.pair_masks(y)
    probs = F.distance_weighted_probabilities(distances.euclidean(x, x), neg, dim)
    miner = DistanceWeightedMiner(seed=123)
    counts = torch.zeros(12, 12, dtype=torch.float64)
    calls = 150
    for _ in range(calls):
        a, _, n = miner(x, y)
        counts.index_put_((a, n), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    expected = probs * 3 * calls  # 3 positives per anchor, one draw each
    cells = expected > 0
    assert bool((counts[~cells] == 0).all())
    chi2 = (((counts - expected) ** 2)[cells] / expected[cells]).sum().item()
    dof = int(cells.sum()) - 12
    assert chi2 < scipy.stats.chi2.ppf(0.999, dof)
    # and the weights are far from uniform, so a uniform sampler would fail the same test
    uniform = neg.double() / neg.double().sum(1, keepdim=True) * 3 * calls
    assert (((counts - uniform) ** 2)[cells] / uniform[cells]).sum().item() > scipy.stats.chi2.ppf(0.999, dof)


def test_distance_weighted_requires_unit_norm():
    x = torch.randn(8, 4) * 3
    with pytest.raises(ValueError, match="embeddings: DistanceWeightedMiner expects L2-normalised"):
        DistanceWeightedMiner()(x, torch.arange(8) // 2)
    xn = torch.nn.functional.normalize(x, dim=1)
    with pytest.raises(ValueError, match="ref_embeddings: .*L2-normalised"):
        DistanceWeightedMiner()(xn, torch.arange(8) // 2, x, torch.arange(8) // 2)


# ---------------------------------------------------------------- label forms

def test_multilabel_and_hierarchical_labels():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    multi = torch.rand(12, 4, generator=gen) < 0.3
    hier = torch.stack([torch.arange(12) // 6, torch.arange(12) % 2], 1)  # sub-class ids recur under parents
    for labels, related in [
        (multi, lambda i, j: bool((multi[i] & multi[j]).any())),
        (hier, lambda i, j: bool((hier[i] == hier[j]).all())),
    ]:
        pos = [[related(a, j) and a != j for j in range(12)] for a in range(12)]
        neg = [[not related(a, j) for j in range(12)] for a in range(12)]
        d = loop_matrix((x, labels), "euclidean")
        assert as_set(BatchHardMiner()(x, labels)) == loop_batch_hard(d, pos, neg)
        assert as_set(SemiHardMiner(margin=1.0)(x, labels)) == sorted(loop_margin(d, pos, neg, 1.0, "semihard"))
        s = [[-v for v in row] for row in d]
        exp_pos, exp_neg = loop_multi_similarity(s, pos, neg, 0.3)
        assert pair_sets(MultiSimilarityMiner(0.3, distance="euclidean")(x, labels)) == (exp_pos, exp_neg)


# ---------------------------------------------------------------- edge cases

ALL_MINERS = [
    lambda: BatchHardMiner(), lambda: SemiHardMiner(), lambda: SemiHardMiner(hardest_only=True),
    lambda: TripletMarginMiner(), lambda: DistanceWeightedMiner(seed=0), lambda: MultiSimilarityMiner(),
]


def check_empty(out, kind):
    assert isinstance(out, kind)
    assert len(out) == 0
    for t in out:
        assert t.dtype == torch.int64 and t.shape == (0,)


@pytest.mark.parametrize("make", ALL_MINERS)
@pytest.mark.parametrize("labels", [torch.zeros(6, dtype=torch.long), torch.arange(6), torch.zeros(1, dtype=torch.long)])
def test_one_class_or_all_distinct_gives_empty(make, labels):
    miner = make()
    x = torch.nn.functional.normalize(torch.randn(len(labels), 4), dim=1)
    out = miner(x, labels)
    check_empty(out, Pairs if isinstance(miner, MultiSimilarityMiner) else Triplets)
    assert miner.last_count == 0


def test_all_equal_embeddings():
    x = torch.ones(8, 3) / math.sqrt(3)
    y = torch.arange(8) // 2
    check_empty(SemiHardMiner()(x, y), Triplets)              # D(a,n) - D(a,p) = 0 is never semi-hard
    check_empty(SemiHardMiner(hardest_only=True)(x, y), Triplets)
    # all distances tie: the hardest positive and negative are the first ones, as in pytorch-metric-learning
    bh = BatchHardMiner()(x, y)
    theirs = pml_miners.BatchHardMiner(distance=LpDistance(normalize_embeddings=False))(x, y)
    assert [t.tolist() for t in bh] == [t.tolist() for t in theirs]
    assert bh.n.tolist() == [2, 2, 0, 0, 0, 0, 0, 0]
    hard = TripletMarginMiner(type_of_triplets="hard")(x, y)
    assert len(hard) == 8 * 6  # each anchor: 1 positive x 6 negatives, all at margin 0
    dw = DistanceWeightedMiner(seed=0)(x, y)  # all distances clip to the cutoff: uniform among negatives
    assert len(dw) == 8 and dw.n.dtype == torch.int64
    ms = MultiSimilarityMiner()(x, y)
    assert isinstance(ms, Pairs) and len(ms.a1) == 8 and len(ms.a2) == 8 * 6


def test_indices_are_int64_and_miners_do_not_track_gradients():
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    y = torch.arange(16) // 4
    for make in ALL_MINERS:
        miner = make()
        out = miner(x, y)
        assert len(out) > 0 and miner.last_count == len(out)
        for t in out:
            assert t.dtype == torch.int64 and not t.requires_grad


def test_uint8_labels_are_accepted():
    x = torch.randn(8, 3)
    assert as_set(BatchHardMiner()(x, (torch.arange(8) // 2).to(torch.uint8))) == \
        as_set(BatchHardMiner()(x, torch.arange(8) // 2))


@pytest.mark.parametrize("make", ALL_MINERS)
def test_bad_input_is_a_clear_error(make):
    miner = make()
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    y = torch.arange(6) // 2
    nan = x.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="embeddings: contains NaN"):
        miner(nan, y)
    with pytest.raises(ValueError, match=r"embeddings: expected shape \(B, D\)"):
        miner(x[:, 0], y)
    with pytest.raises(ValueError, match="labels: expected 6 rows"):
        miner(x, y[:5])
    with pytest.raises(TypeError, match="labels: expected integer"):
        miner(x, y.float())
    with pytest.raises(ValueError, match="ref_embeddings and ref_labels must be given together"):
        miner(x, y, x)
    with pytest.raises(ValueError, match="ref_embeddings: expected dimension 4"):
        miner(x, y, torch.randn(3, 5), torch.arange(3))
    with pytest.raises(TypeError, match="embeddings: expected a torch.Tensor"):
        miner(x.numpy(), y)


def test_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="distance: unknown name 'manhattan'"):
        BatchHardMiner(distance="manhattan")
    with pytest.raises(ValueError, match="type_of_triplets: expected one of"):
        TripletMarginMiner(type_of_triplets="semi-hard")
    with pytest.raises(ValueError, match="margin: expected a number, got '0.2'"):
        SemiHardMiner(margin="0.2")
    with pytest.raises(ValueError, match="epsilon: expected a finite number"):
        MultiSimilarityMiner(epsilon=float("nan"))
    with pytest.raises(ValueError, match=r"cutoff: expected a number > 0.0, got 0"):
        DistanceWeightedMiner(cutoff=0)
    with pytest.raises(ValueError, match="nonzero_loss_cutoff: expected a value above cutoff"):
        DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=0.4)
    with pytest.raises(TypeError, match="seed: expected None, an int or a torch.Generator"):
        DistanceWeightedMiner(seed=0.5)
    with pytest.raises(KeyError, match="unknown miner 'hardest'; known miners: .*batch-hard"):
        mining.create("hardest")
    with pytest.raises(ValueError, match="dist: expected a"):
        F.batch_hard_triplets(torch.zeros(3), torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="pos_mask: expected a bool tensor of shape"):
        F.multi_similarity_pairs(torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool))


def test_registry_and_public_surface():
    assert {"batch-hard", "semi-hard", "triplet-margin", "distance-weighted", "multi-similarity"} <= set(mining.names())
    miner = dm.mining.create("semi-hard", margin=0.3)
    assert isinstance(miner, SemiHardMiner) and miner.margin == 0.3 and miner.distance == "euclidean"
    miner = mining.create({"name": "multi-similarity", "epsilon": 0.2})
    assert isinstance(miner, MultiSimilarityMiner) and miner.epsilon == 0.2 and miner.distance == "cosine"
    assert mining.create("distance-weighted").distance == "euclidean"
    assert mining.Pairs is dm.Pairs and mining.Triplets is dm.Triplets
    assert "SemiHardMiner(margin=0.3" in repr(dm.mining.create("semi-hard", margin=0.3))


# ---------------------------------------------------------------- properties

@settings(max_examples=25, deadline=None)
@given(st.integers(2, 14), st.integers(0, 10_000), st.sampled_from(["semi-hard", "batch-hard", "multi-similarity"]))
def test_permuting_the_batch_permutes_the_tuples(batch, seed, name):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=gen)
    perm = torch.randperm(batch, generator=gen)
    miner = mining.create(name)
    out, out_perm = miner(x, y), miner(x[perm], y[perm])
    mapped = type(out_perm)(*(perm[t] for t in out_perm))  # back to the original indices
    canon = pair_sets if isinstance(out, Pairs) else as_set
    # ties are impossible on random floats, so batch-hard's argmax/argmin commute with the permutation
    assert canon(out) == canon(mapped)


# ---------------------------------------------------------------- scale (no timing asserts)

def test_scale_semi_hard_and_batch_hard_match_chunked_numpy():
    gen = torch.Generator().manual_seed(0)
    batch, dim = 1024, 128
    x = torch.randn(batch, dim, generator=gen)
    y = torch.randperm(batch, generator=gen) // 4  # 4 per class, shuffled
    margin = 0.2
    semi = SemiHardMiner(margin=margin)(x, y)
    hard = BatchHardMiner()(x, y)

    d = distances.euclidean(x, x).numpy()  # the same float32 matrix; numpy does the same float32 subtraction
    yn = y.numpy()
    same = yn[:, None] == yn[None, :]
    refs = []
    for start in range(0, batch, 128):  # chunk over anchors: (chunk, 3, R) working set
        rows = np.arange(start, start + 128)
        pos = same[rows] & (rows[:, None] != np.arange(batch)[None, :])
        p_idx = np.nonzero(pos)[1].reshape(len(rows), 3)
        d_ap = np.take_along_axis(d[rows], p_idx, 1)
        m = d[rows][:, None, :] - d_ap[:, :, None]
        keep = (m > 0) & (m <= np.float32(margin)) & ~same[rows][:, None, :]
        a, j, n = np.nonzero(keep)
        refs.append(np.stack([rows[a], p_idx[a, j], n], 1))
    ref = np.concatenate(refs)
    assert len(semi) == len(ref) > 0
    assert np.array_equal(np.stack([t.numpy() for t in semi], 1), ref)  # same (a, p, n) lexicographic order

    pos = same & ~np.eye(batch, dtype=bool)
    hp = np.where(pos, d, -np.inf).argmax(1)
    hn = np.where(~same, d, np.inf).argmin(1)
    assert hard.a.tolist() == list(range(batch))
    assert np.array_equal(hard.p.numpy(), hp) and np.array_equal(hard.n.numpy(), hn)


# ---------------------------------------------------------------- numpy (CPU) and torch code paths

def both_paths(fn, *args, **kwargs):
    """``fn`` run on numpy views (the CPU path) and with the torch path forced (other devices)."""
    assert F.use_numpy(args[0]) == (args[0].dtype in (torch.float32, torch.float64))
    fast = fn(*args, **kwargs)
    original = F.use_numpy
    F.use_numpy = lambda matrix: False
    try:
        slow = fn(*args, **kwargs)
    finally:
        F.use_numpy = original
    return fast, slow


def assert_same_tuples(fast, slow):
    assert type(fast) is type(slow)
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype == torch.long and a.device == b.device
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_and_torch_paths_agree(seed, dtype):
    """Integer coordinates make ties and exact margins frequent; rows without positives or negatives
    occur; chunks of 1 and 7 pairs exercise the concatenation."""
    gen = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 14, (), generator=gen))
    r = b + int(torch.randint(0, 4, (), generator=gen))
    x = torch.randint(0, 3, (b, 2), generator=gen).to(dtype)
    rx = torch.randint(0, 3, (r, 2), generator=gen).to(dtype)
    pos, neg = dm.labels.pair_masks(torch.randint(0, 3, (b,), generator=gen),
                                    torch.randint(0, 3, (r,), generator=gen))
    d = distances.euclidean(x, rx)
    assert_same_tuples(*both_paths(F.batch_hard_triplets, d, pos, neg))
    for kind in TYPES:
        for hardest_only in (False, True):
            for chunk in (1, 7, F.CHUNK_ELEMENTS):
                assert_same_tuples(*both_paths(F.margin_triplets, d, pos, neg, 0.5, kind, hardest_only, chunk))
    s = distances.cosine_similarity(x + 0.5, rx + 0.5)
    assert_same_tuples(*both_paths(F.multi_similarity_pairs, s, pos, neg, 0.1))


def test_both_paths_match_loops_on_random_data():
    case = make_case(16, "few-classes", True, 3)
    pos, neg = loop_relations(case)
    pm, nm = torch.tensor(pos), torch.tensor(neg)
    d = distances.euclidean(case[0], case[2])
    s = distances.cosine_similarity(case[0], case[2])
    for out in both_paths(F.margin_triplets, d, pm, nm, 0.4, "semihard"):
        assert as_set(out) == sorted(loop_margin(d.tolist(), pos, neg, 0.4, "semihard"))
    for out in both_paths(F.batch_hard_triplets, d, pm, nm):
        assert as_set(out) == loop_batch_hard(d.tolist(), pos, neg)
    for out in both_paths(F.multi_similarity_pairs, s, pm, nm, 0.1):
        assert pair_sets(out) == tuple(sorted(v) for v in loop_multi_similarity(s.tolist(), pos, neg, 0.1))


def test_empty_reference_set_and_half_precision():
    """R = 0 gives no tuple on both paths; float16 (no numpy path) follows float16 arithmetic."""
    d = torch.zeros(3, 0)
    m = torch.zeros(3, 0, dtype=torch.bool)
    for fn in (F.batch_hard_triplets, lambda *a: F.margin_triplets(*a, 0.2, "all")):
        for out in both_paths(fn, d, m, m):
            assert len(out) == 0 and all(t.dtype == torch.long for t in out)
    for out in both_paths(F.multi_similarity_pairs, d, m, m, 0.1):
        assert len(out) == 0
    case = make_case(12, "few-classes", False, 4)
    pos, neg = dm.labels.pair_masks(case[1])
    d16 = distances.euclidean(case[0].float(), case[0].float()).half()
    assert not F.use_numpy(d16)
    h = d16.numpy()  # numpy float16 subtraction rounds like torch's
    expected = [(a, p, n) for a in range(12) for p in range(12) for n in range(12)
                if pos[a, p] and neg[a, n] and 0 < h[a, n] - h[a, p] <= np.float16(0.25)]
    out = F.margin_triplets(d16, pos, neg, 0.25, "semihard")
    assert len(expected) > 0 and as_set(out) == expected


@pytest.mark.parametrize("ops", [F._NumpyOps, F._TorchOps(torch.device("cpu"))], ids=["numpy", "torch"])
def test_nonzero_2d_equals_torch_nonzero(ops):
    gen = torch.Generator().manual_seed(0)
    for shape, p in [((5, 7), 0.3), ((1, 9), 0.9), ((6, 1), 0.5), ((4, 4), 0.0), ((3, 5), 1.0), ((0, 3), 0.5)]:
        mask = torch.rand(shape, generator=gen) < p
        rows, cols = F._nonzero_2d(ops, mask.numpy() if ops is F._NumpyOps else mask)
        expected = mask.nonzero(as_tuple=True)
        assert torch.equal(torch.as_tensor(rows), expected[0]) and torch.equal(torch.as_tensor(cols), expected[1])
