"""Tests of the pair margin, batch easy/hard, angular and uniform histogram miners: against plain
loops written from their definitions, against pytorch-metric-learning, edge cases and properties."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import miners as pml_miners

import deepmetric as dm
from deepmetric.functional import mining as FM
from deepmetric.mining import AngularMiner, BatchEasyHardMiner, PairMarginMiner, UniformHistogramMiner
from deepmetric.tuples import Pairs, Triplets


def make_batch(seed, batch=14, n_classes=4, dim=5, use_ref=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    if not use_ref:
        return x, labels, None, None
    rx = torch.nn.functional.normalize(torch.randn(batch + 4, dim, generator=g, dtype=torch.float64), dim=1)
    return x, labels, rx, torch.randint(0, n_classes, (batch + 4,), generator=g)


def loop_relations(labels, ref_labels):
    """(pos, neg) dicts: anchor -> list of positive / negative reference indices."""
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels
    pos = {i: [j for j in range(len(ref)) if labels[i] == ref[j] and not (same_set and i == j)]
           for i in range(len(labels))}
    neg = {i: [j for j in range(len(ref)) if labels[i] != ref[j]] for i in range(len(labels))}
    return pos, neg


def dist(u, v):
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(u, v)))


def as_lists(t):
    return [v.tolist() for v in t]


# ----------------------------------------------------------------------------------------------
# Pair margin
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("margins", [(0.5, 1.2), (1.0, 0.9), (0.0, 2.5)])
def test_pair_margin_matches_loop(seed, use_ref, margins):
    x, labels, rx, rl = make_batch(seed, use_ref=use_ref)
    ref_x = x if rx is None else rx
    pos, neg = loop_relations(labels, rl)
    exp_pos = [(i, j) for i in pos for j in pos[i] if dist(x[i], ref_x[j]) > margins[0]]
    exp_neg = [(i, j) for i in neg for j in neg[i] if dist(x[i], ref_x[j]) < margins[1]]
    out = PairMarginMiner(*margins)(x, labels, rx, rl)
    assert isinstance(out, Pairs)
    assert list(zip(out.a1.tolist(), out.p.tolist())) == exp_pos
    assert list(zip(out.a2.tolist(), out.n.tolist())) == exp_neg


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("distance,pml_distance,margins", [
    ("euclidean", pml_distances.LpDistance(), (0.8, 1.1)),
    ("squared_euclidean", pml_distances.LpDistance(power=2), (0.6, 1.4)),
    ("dot", pml_distances.DotProductSimilarity(), (0.3, 0.0)),
])
def test_pair_margin_equals_pml(seed, distance, pml_distance, margins):
    x, labels, _, _ = make_batch(10 + seed, batch=40, n_classes=6)
    ours = PairMarginMiner(*margins, distance=distance)(x, labels)
    theirs = pml_miners.PairMarginMiner(*margins, distance=pml_distance)(x, labels)
    assert len(ours.a1) > 0 and len(ours.a2) > 0
    assert as_lists(ours) == as_lists(theirs)


# ----------------------------------------------------------------------------------------------
# Batch easy/hard
# ----------------------------------------------------------------------------------------------

STRATEGIES = [(p, n) for p, n in itertools.product(FM.EASY_HARD_STRATEGIES, repeat=2)
              if not (p == n == "semihard") and not ("semihard" in (p, n) and "all" in (p, n))]


def loop_easy_hard(x, ref_x, labels, ref_labels, ps, ns, pos_range=None, neg_range=None):
    pos, neg = loop_relations(labels, ref_labels)
    d = lambda i, j: dist(x[i], ref_x[j])  # noqa: E731

    def inside(v, r):
        return r is None or r[0] <= v <= r[1]

    pos = {i: [j for j in pos[i] if inside(d(i, j), pos_range)] for i in pos}
    neg = {i: [j for j in neg[i] if inside(d(i, j), neg_range)] for i in neg}

    def choose(cands, i, largest):
        if not cands:
            return None
        return (max if largest else min)(cands, key=lambda j: (d(i, j), -j) if largest else (d(i, j), j))

    chosen_p, chosen_n = {}, {}
    for i in pos:
        if ps == "semihard":
            n = choose(neg[i], i, ns == "easy")
            p = choose([j for j in pos[i] if n is not None and d(i, j) < d(i, n)], i, True)
        elif ns == "semihard":
            p = choose(pos[i], i, ps != "easy")
            n = choose([j for j in neg[i] if p is not None and d(i, j) > d(i, p)], i, False)
        else:
            p = choose(pos[i], i, ps != "easy") if ps != "all" else None
            n = choose(neg[i], i, ns == "easy") if ns != "all" else None
        chosen_p[i], chosen_n[i] = p, n
    if "all" not in (ps, ns):
        return [(i, chosen_p[i], chosen_n[i]) for i in pos if chosen_p[i] is not None and chosen_n[i] is not None]
    pp = [(i, j) for i in pos for j in pos[i]] if ps == "all" else \
        [(i, chosen_p[i]) for i in pos if chosen_p[i] is not None]
    nn = [(i, j) for i in neg for j in neg[i]] if ns == "all" else \
        [(i, chosen_n[i]) for i in neg if chosen_n[i] is not None]
    return pp, nn


@pytest.mark.parametrize("strategies", STRATEGIES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("ranges", [(None, None), ((0.3, 1.2), (0.5, 1.6))])
def test_batch_easy_hard_matches_loop(strategies, seed, use_ref, ranges):
    x, labels, rx, rl = make_batch(seed, use_ref=use_ref)
    ref_x = x if rx is None else rx
    out = BatchEasyHardMiner(*strategies, *ranges)(x, labels, rx, rl)
    expected = loop_easy_hard(x, ref_x, labels, rl, *strategies, *ranges)
    if "all" in strategies:
        assert isinstance(out, Pairs)
        assert (list(zip(out.a1.tolist(), out.p.tolist())), list(zip(out.a2.tolist(), out.n.tolist()))) == expected
    else:
        assert isinstance(out, Triplets)
        assert list(zip(*as_lists(out))) == expected


@pytest.mark.parametrize("strategies", STRATEGIES)
@pytest.mark.parametrize("seed", range(2))
def test_batch_easy_hard_equals_pml(strategies, seed):
    x, labels, _, _ = make_batch(20 + seed, batch=40, n_classes=6)
    # pml ignores allowed ranges on an "all" side (documented difference): ranges only without "all"
    ranges = (None, None) if "all" in strategies else ((0.3, 1.3), (0.6, 1.6))
    for r in {(None, None), ranges}:
        ours = BatchEasyHardMiner(*strategies, *r)(x, labels)
        theirs = pml_miners.BatchEasyHardMiner(*strategies, *r)(x, labels)
        if isinstance(ours, Triplets):
            ours = (ours.a, ours.p, ours.a, ours.n)
        ours = tuple(ours)
        assert len(ours[0]) > 0
        assert as_lists(ours) == as_lists(theirs)


def test_batch_easy_hard_dot_similarity_equals_pml():
    x, labels, _, _ = make_batch(7, batch=30)
    for strategies in [("easy", "semihard"), ("hard", "hard"), ("semihard", "easy")]:
        ours = BatchEasyHardMiner(*strategies, distance="dot")(x, labels)
        theirs = pml_miners.BatchEasyHardMiner(*strategies, distance=pml_distances.DotProductSimilarity())(x, labels)
        assert as_lists((ours.a, ours.p, ours.a, ours.n)) == as_lists(theirs)


def test_batch_easy_hard_hard_hard_is_batch_hard():
    x, labels, _, _ = make_batch(3, batch=20)
    assert as_lists(BatchEasyHardMiner("hard", "hard")(x, labels)) == as_lists(dm.mining.BatchHardMiner()(x, labels))


def test_batch_easy_hard_bad_arguments():
    with pytest.raises(ValueError, match="pos_strategy"):
        BatchEasyHardMiner("medium", "hard")
    with pytest.raises(ValueError, match="semihard"):
        BatchEasyHardMiner("semihard", "semihard")
    with pytest.raises(ValueError, match="all"):
        BatchEasyHardMiner("all", "semihard")
    with pytest.raises(ValueError, match="allowed_pos_range"):
        BatchEasyHardMiner(allowed_pos_range=(1.0, 0.5))
    with pytest.raises(ValueError, match="allowed_neg_range"):
        BatchEasyHardMiner(allowed_neg_range=0.5)


# ----------------------------------------------------------------------------------------------
# Angular
# ----------------------------------------------------------------------------------------------


def loop_angular(x, ref_x, labels, ref_labels, angle_deg):
    pos, neg = loop_relations(labels, ref_labels)
    out = []
    for a in pos:
        for p in pos[a]:
            for n in neg[a]:
                c = (x[a] + ref_x[p]) / 2
                ap, nc = dist(x[a], ref_x[p]), dist(ref_x[n], c)
                angle = math.atan(ap / (2 * nc)) if nc > 0 else (math.pi / 2 if ap > 0 else -1.0)
                if angle > math.radians(angle_deg):
                    out.append((a, p, n))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("angle", [10.0, 20.0, 35.0])
def test_angular_matches_loop(seed, use_ref, angle):
    x, labels, rx, rl = make_batch(seed, use_ref=use_ref)
    ref_x = x if rx is None else rx
    out = AngularMiner(angle)(x, labels, rx, rl)
    assert list(zip(*as_lists(out))) == loop_angular(x, ref_x, labels, rl, angle)


def test_angular_chunks_agree():
    x, labels, _, _ = make_batch(5, batch=20)
    from deepmetric.labels import pair_masks
    pos, neg = pair_masks(labels)
    gram = x @ x.T
    whole = FM.angular_triplets(gram, gram, pos, neg, math.radians(20))
    chunked = FM.angular_triplets(gram, gram, pos, neg, math.radians(20), chunk_elements=7)
    assert as_lists(whole) == as_lists(chunked) and len(whole) > 0


@pytest.mark.parametrize("seed", range(3))
def test_angular_equals_pml(seed):
    x, labels, _, _ = make_batch(30 + seed, batch=40, n_classes=5)
    x = x.float()
    ours = AngularMiner(20)(x, labels)
    theirs = pml_miners.AngularMiner(angle=20)(x, labels)
    assert len(ours) > 0
    # pml's pairwise_distance adds 1e-6 to differences: compare as sets, allowing borderline flips
    a, b = set(zip(*as_lists(ours))), set(zip(*as_lists(theirs)))
    assert len(a ^ b) <= max(2, len(a) // 1000)


# ----------------------------------------------------------------------------------------------
# Uniform histogram
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_ref", [False, True])
def test_uniform_histogram_bins_match_loop(seed, use_ref):
    x, labels, rx, rl = make_batch(seed, batch=16, use_ref=use_ref)
    ref_x = x if rx is None else rx
    nb, kp, kn = 6, 3, 5
    out = UniformHistogramMiner(nb, kp, kn, seed=seed)(x, labels, rx, rl)
    pos, neg = loop_relations(labels, rl)
    for pairs, got, k in (([(i, j) for i in pos for j in pos[i]], list(zip(out.a1.tolist(), out.p.tolist())), kp),
                          ([(i, j) for i in neg for j in neg[i]], list(zip(out.a2.tolist(), out.n.tolist())), kn)):
        values = {pr: dist(x[pr[0]], ref_x[pr[1]]) for pr in pairs}
        lo, hi = min(values.values()), max(values.values())
        width = (hi - lo) / nb

        def bin_of(v):
            return min(int((v - lo) / width), nb - 1) if width > 0 else nb - 1

        full = sorted({bin_of(v) for v in values.values()})
        assert all(pr in values for pr in got)  # only valid pairs
        got_bins = [bin_of(values[pr]) for pr in got]
        assert got_bins == sorted(got_bins)  # bin by bin
        assert got_bins == [b for b in full for _ in range(k)]  # k draws from every non-empty bin


def test_uniform_histogram_per_bin_counts_equal_pml():
    x, labels, _, _ = make_batch(4, batch=40, n_classes=6)
    ours = tuple(UniformHistogramMiner(12, 4, 6, seed=1)(x, labels))
    theirs = pml_miners.UniformHistogramMiner(12, 4, 6)(x, labels)
    d = torch.cdist(x, x)
    same = labels[:, None] == labels[None]
    valid = {0: same & ~torch.eye(40, dtype=torch.bool), 2: ~same}
    for side in (0, 2):
        assert len(ours[side]) == len(theirs[side]) > 0
        side_values = d[valid[side]]
        edges = torch.linspace(float(side_values.min()), float(side_values.max()), 13, dtype=d.dtype)
        counts = [torch.bincount(torch.bucketize(d[t[side], t[side + 1]], edges[1:12], right=True), minlength=12)
                  for t in (ours, theirs)]
        assert torch.equal(counts[0], counts[1])


def test_uniform_histogram_seeded_and_distinct_draws():
    x, labels, _, _ = make_batch(2, batch=16)
    first = as_lists(UniformHistogramMiner(5, 4, 4, seed=3)(x, labels))
    assert first == as_lists(UniformHistogramMiner(5, 4, 4, seed=3)(x, labels))
    miner = UniformHistogramMiner(5, 4, 4, seed=3)
    miner(x, labels)
    assert as_lists(miner(x, labels)) != first  # the private generator moves on
    g = torch.Generator().manual_seed(9)
    assert UniformHistogramMiner(seed=g).generator(x.device) is g


def test_uniform_histogram_bad_arguments():
    with pytest.raises(ValueError, match="num_bins"):
        UniformHistogramMiner(num_bins=0)
    with pytest.raises(ValueError, match="pos_per_bin"):
        UniformHistogramMiner(pos_per_bin=1.5)
    with pytest.raises(TypeError, match="seed"):
        UniformHistogramMiner(seed="x")


# ----------------------------------------------------------------------------------------------
# Edge cases, registry, properties
# ----------------------------------------------------------------------------------------------

MINERS = [lambda: PairMarginMiner(0.1, 1.5), lambda: BatchEasyHardMiner("easy", "semihard"),
          lambda: BatchEasyHardMiner("all", "hard"), lambda: AngularMiner(10),
          lambda: UniformHistogramMiner(4, 2, 2, seed=0)]


@pytest.mark.parametrize("make", MINERS)
def test_no_positives_one_class_equal_embeddings(make):
    miner = make()
    x = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1)
    out = miner(x, torch.arange(6))  # no positives
    if isinstance(out, Triplets):
        assert len(out) == 0
    else:
        assert out.a1.numel() == 0
    out = miner(x, torch.zeros(6, dtype=torch.long))  # one class: no negatives
    if isinstance(out, Triplets):
        assert len(out) == 0
    else:
        assert out.a2.numel() == 0
    same = torch.ones(6, 3, dtype=torch.float64) / math.sqrt(3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = miner(same, labels)  # all equal: valid output, indices in range, labels respected
    a1, p, a2, n = (out.a, out.p, out.a, out.n) if isinstance(out, Triplets) else tuple(out)
    assert torch.equal(labels[a1], labels[p]) and (a1 != p).all()
    assert (labels[a2] != labels[n]).all()
    for v in out:
        assert v.dtype == torch.long and ((v >= 0) & (v < 6)).all()


def test_equal_embeddings_specifics():
    same = torch.ones(6, 3, dtype=torch.float64) / math.sqrt(3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # distance 0 everywhere: no positive is farther than 0.1, every negative is closer than 1.5
    out = PairMarginMiner(0.1, 1.5)(same, labels)
    assert out.a1.numel() == 0 and out.a2.numel() == 24
    # the angle is 0/0: no triplet (as pml)
    assert len(AngularMiner(10)(same, labels)) == 0
    # semihard needs D_an > D_ap: none
    assert len(BatchEasyHardMiner("easy", "semihard")(same, labels)) == 0


def test_registry_names():
    assert isinstance(dm.mining.create("pair-margin", pos_margin=0.1), PairMarginMiner)
    assert isinstance(dm.mining.create("batch-easy-hard", pos_strategy="hard"), BatchEasyHardMiner)
    assert isinstance(dm.mining.create("angular", angle=30), AngularMiner)
    assert isinstance(dm.mining.create({"name": "uniform-histogram", "seed": 1}), UniformHistogramMiner)
    with pytest.raises(ValueError, match="angle"):
        AngularMiner(95)


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=2, max_size=10), seed=st.integers(0, 999), data=st.data())
def test_permutation_equivariance(labels, seed, data):
    """Permuting the batch permutes the mined tuples (as sets of original indices)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(len(labels), 3, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor(labels)
    perm = torch.tensor(data.draw(st.permutations(range(len(labels)))))
    for miner in (PairMarginMiner(0.6, 1.2), AngularMiner(25), BatchEasyHardMiner("hard", "hard"),
                  BatchEasyHardMiner("easy", "easy")):
        a, b = miner(x, y), miner(x[perm], y[perm])
        back = [[perm[v].tolist() for v in t] for t in ([b.a1, b.p], [b.a2, b.n])] if isinstance(b, Pairs) \
            else [[perm[v].tolist() for v in b]]
        orig = [[v.tolist() for v in t] for t in ([a.a1, a.p], [a.a2, a.n])] if isinstance(a, Pairs) \
            else [[v.tolist() for v in a]]
        for u, w in zip(orig, back):
            assert sorted(zip(*u)) == sorted(zip(*w))
