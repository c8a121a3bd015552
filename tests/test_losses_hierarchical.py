"""Tests of the hierarchical losses (quadlet, pentuplet, radial) and of the quadlet miner.

Each loss is compared, in value and gradient, with a plain loop over explicitly enumerated tuples
written from the formula; the miner's strategies with loop definitions.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deepmetric as dm
from deepmetric.functional import hierarchical as H
from deepmetric.functional import mining as FM
from deepmetric.losses.base import LOSSES
from deepmetric.losses.hierarchical import PentupletLoss, QuadletLoss, RadialLoss
from deepmetric.losses.triplet import TripletMarginLoss
from deepmetric.mining import MINERS, QuadletMiner
from deepmetric.tuples import Pairs, Quadlets, Triplets

# ----------------------------------------------------------------------------------------------
# Plain loop references
# ----------------------------------------------------------------------------------------------


def rows(labels):
    return [tuple(int(v) for v in (r if r.dim() else r.view(1))) for r in labels]


def relations(labels, ref_labels=None, level=0):
    """(pos, inter, neg) as sets of (q, r) index pairs, from the definitions."""
    same_set = ref_labels is None
    a = rows(labels)
    b = a if same_set else rows(ref_labels)
    n_levels = len(a[0]) if a else 1
    pos, inter, neg = set(), set(), set()
    for q, lq in enumerate(a):
        for r, lr in enumerate(b):
            shared = 0
            while shared < n_levels and lq[shared] == lr[shared]:
                shared += 1
            if shared == n_levels and not (same_set and q == r):
                pos.add((q, r))
            if level < shared < n_levels:
                inter.add((q, r))
            if shared <= level:
                neg.add((q, r))
    return pos, inter, neg


def loop_tuples(labels, ref_labels=None, level=0):
    """Every valid quadlet, and the triplets (q, p, n) of the queries with no intermediate."""
    pos, inter, neg = relations(labels, ref_labels, level)
    n_ref = len(labels) if ref_labels is None else len(ref_labels)
    quads, trips = [], []
    for q in range(len(labels)):
        ps = [r for r in range(n_ref) if (q, r) in pos]
        its = [r for r in range(n_ref) if (q, r) in inter]
        ns = [r for r in range(n_ref) if (q, r) in neg]
        if its:
            quads += [(q, p, i, n) for p in ps for i in its for n in ns]
        else:
            trips += [(q, p, n) for p in ps for n in ns]
    return quads, trips


def sq(u, v):
    return ((u - v) ** 2).sum()


def loop_quadlet(x, rx, quads, trips, m1=0.1, m2=0.2):
    total = (x * 0).sum()
    for q, p, i, n in quads:
        total = total + torch.relu(m1 + sq(x[q], rx[p]) - sq(x[q], rx[i])) \
            + torch.relu(m2 + sq(x[q], rx[i]) - sq(x[q], rx[n]))
    for q, p, n in trips:
        total = total + torch.relu(m1 + m2 + sq(x[q], rx[p]) - sq(x[q], rx[n]))
    return total / max(len(quads) + len(trips), 1)


def loop_pentuplet(x, rx, quads, trips, g=(0.7, 0.5, 0.4, 0.1)):
    total = (x * 0).sum()
    for q, p, i, n in quads:  # one-intermediate form: i1 = i2 = i, no g4 term
        total = total + torch.relu(g[0] + sq(x[q], rx[p]) - sq(x[q], rx[n])) \
            + torch.relu(g[1] + sq(rx[p], rx[i]) - sq(rx[p], rx[n])) \
            + torch.relu(g[2] + sq(rx[p], rx[i]) - sq(rx[p], rx[n]))
    for q, p, n in trips:
        total = total + torch.relu(g[0] + sq(x[q], rx[p]) - sq(x[q], rx[n]))
    return total / max(len(quads) + len(trips), 1)


def loop_radial(x, rx, quads, trips, c=3.0, m=0.3):
    total = (x * 0).sum()
    for q, p, i, n in quads:
        centre = (x[q] + rx[p] + rx[i]) / 3
        radius = max(torch.linalg.norm(v - centre) for v in (x[q], rx[p], rx[i]))
        total = total + torch.relu((c * radius) ** 2 - sq(rx[n], centre)) \
            + torch.relu(m + sq(x[q], rx[p]) - sq(x[q], rx[i]))
    for q, p, n in trips:
        centre = (x[q] + rx[p]) / 2
        radius = torch.linalg.norm(x[q] - rx[p]) / 2
        total = total + torch.relu((c * radius) ** 2 - sq(rx[n], centre))
    return total / max(len(quads) + len(trips), 1)


LOOPS = {"quadlet": loop_quadlet, "pentuplet": loop_pentuplet, "radial": loop_radial}


def make_loss(name):
    return LOSSES.create(name)


def value_and_grads(fn, *tensors):
    value = fn()
    grads = torch.autograd.grad(value, tensors, allow_unused=True)
    return value.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


def assert_same(fn_a, fn_b, *tensors):
    va, ga = value_and_grads(fn_a, *tensors)
    vb, gb = value_and_grads(fn_b, *tensors)
    assert torch.allclose(va, vb, atol=1e-10), (float(va), float(vb))
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-9)


HIER = torch.tensor([[0, 0], [0, 0], [0, 1], [0, 1], [0, 2], [1, 0], [1, 0], [1, 3], [2, 4], [2, 4]])


def emb(n, d=3, seed=0, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# Losses against loops
# ----------------------------------------------------------------------------------------------


def test_registered():
    assert {"quadlet", "pentuplet", "radial"} <= set(LOSSES.names())
    assert "quadlet" in MINERS.names()
    assert isinstance(LOSSES.create("quadlet"), QuadletLoss)
    assert LOSSES.create("quadlet").distance == "squared_euclidean"
    assert LOSSES.create("pentuplet").distance == "squared_euclidean"
    assert LOSSES.create("radial").distance == "euclidean"


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
@pytest.mark.parametrize("level_labels", ["hier", "three_levels", "flat"])
def test_all_tuples_match_loop(name, level_labels):
    labels = {"hier": HIER,
              "three_levels": torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 2]]),
              "flat": torch.tensor([0, 0, 1, 1, 1, 2, 2])}[level_labels]
    x = emb(len(labels))
    quads, trips = loop_tuples(labels)
    loss = make_loss(name)
    assert_same(lambda: loss(x, labels), lambda: LOOPS[name](x, x, quads, trips), x)


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
def test_level_one_of_three(name):
    labels = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 2]])
    x = emb(len(labels), seed=3)
    quads, trips = loop_tuples(labels, level=1)
    loss = {"quadlet": QuadletLoss(level=1), "pentuplet": PentupletLoss(level=1),
            "radial": RadialLoss(level=1)}[name]
    assert_same(lambda: loss(x, labels), lambda: LOOPS[name](x, x, quads, trips), x)


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
def test_reference_set_matches_loop(name):
    labels, ref_labels = HIER[[0, 2, 3, 5, 8]], HIER[3:]
    x, rx = emb(5, seed=1), emb(7, seed=2)
    quads, trips = loop_tuples(labels, ref_labels)
    assert quads and trips
    loss = make_loss(name)
    assert_same(lambda: loss(x, labels, ref_embeddings=rx, ref_labels=ref_labels),
                lambda: LOOPS[name](x, rx, quads, trips), x, rx)
    mined = QuadletMiner("all")(x, labels, rx, ref_labels)
    assert as_set(mined) == set(quads)
    assert_same(lambda: loss(x, labels, mined, rx, ref_labels), lambda: LOOPS[name](x, rx, quads, []), x, rx)
    assert_same(lambda: loss(x, labels, Triplets(*torch.tensor(trips).T), rx, ref_labels),
                lambda: LOOPS[name](x, rx, [], trips), x, rx)


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
def test_given_quadlets_and_triplets_match_loop(name):
    x = emb(len(HIER), seed=4)
    quads, _ = loop_tuples(HIER)
    picked = [quads[k] for k in (0, 3, 3, 7, len(quads) - 1)]  # a duplicate counts twice
    given = Quadlets(*torch.tensor(picked).T)
    loss = make_loss(name)
    assert_same(lambda: loss(x, HIER, given), lambda: LOOPS[name](x, x, picked, []), x)
    trips = [(0, 1, 5), (5, 6, 9), (8, 9, 0)]
    assert_same(lambda: loss(x, HIER, Triplets(*torch.tensor(trips).T)), lambda: LOOPS[name](x, x, [], trips), x)


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
def test_mined_all_quadlets_equal_loop_over_quadlets(name):
    x = emb(len(HIER), seed=5)
    quads, _ = loop_tuples(HIER)
    mined = QuadletMiner("all")(x, HIER)
    loss = make_loss(name)
    assert_same(lambda: loss(x, HIER, mined), lambda: LOOPS[name](x, x, quads, []), x)


def test_sum_reduction_and_euclidean_distance():
    x = emb(len(HIER), seed=6)
    quads, trips = loop_tuples(HIER)
    n = len(quads) + len(trips)
    assert_same(lambda: QuadletLoss(reduction="sum")(x, HIER), lambda: loop_quadlet(x, x, quads, trips) * n, x)
    assert_same(lambda: PentupletLoss(reduction="sum")(x, HIER), lambda: loop_pentuplet(x, x, quads, trips) * n, x)

    def eu(u, v):
        return torch.linalg.norm(u - v)

    def loop_eu():
        total = (x * 0).sum()
        for q, p, i, n_ in quads:
            total = total + torch.relu(0.1 + eu(x[q], x[p]) - eu(x[q], x[i])) + torch.relu(0.2 + eu(x[q], x[i])
                                                                                           - eu(x[q], x[n_]))
        for q, p, n_ in trips:
            total = total + torch.relu(0.3 + eu(x[q], x[p]) - eu(x[q], x[n_]))
        return total / n

    assert_same(lambda: QuadletLoss(distance="euclidean")(x, HIER), loop_eu, x)


def test_functional_pentuplet_two_intermediates():
    d = [torch.tensor([v], dtype=torch.float64) for v in (1.0, 1.5, 0.9, 1.2, 1.1)]
    d_qp, d_qn, d_pi1, d_pn, d_pi2 = d
    out = H.pentuplet_terms(d_qp, d_qn, d_pi1, d_pn, d_pi2)
    expected = max(0.7 + 1.0 - 1.5, 0) + max(0.5 + 0.9 - 1.2, 0) + max(0.4 + 1.1 - 1.2, 0) + max(0.1 + 0.9 - 1.1, 0)
    assert torch.allclose(out, torch.tensor([expected], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# Miner
# ----------------------------------------------------------------------------------------------


def as_set(quads):
    return set(zip(*(t.tolist() for t in quads)))


def test_miner_all_matches_loop():
    x = emb(len(HIER), seed=7)
    quads, _ = loop_tuples(HIER)
    mined = QuadletMiner("all")(x, HIER)
    assert as_set(mined) == set(quads) and len(mined) == len(quads)
    assert [tuple(t) for t in zip(*(v.tolist() for v in mined))] == sorted(quads)  # lexicographic
    ref_x, ref_labels = emb(7, seed=8), HIER[3:]
    quads, _ = loop_tuples(HIER[:6], ref_labels)
    mined = QuadletMiner("all")(x[:6], HIER[:6], ref_x, ref_labels)
    assert as_set(mined) == set(quads) and len(mined) == len(quads)


def test_miner_hard_matches_loop():
    x = emb(len(HIER), seed=9)
    d = dm.distances.pairwise(x.detach(), x.detach(), "squared_euclidean")
    pos, inter, neg = relations(HIER)
    expected = []
    for q, p in sorted(pos):
        its = [i for i in range(len(HIER)) if (q, i) in inter]
        ns = [n for n in range(len(HIER)) if (q, n) in neg]
        if its and ns:
            expected.append((q, p, min(its, key=lambda i: (float(d[q, i]), i)),
                             min(ns, key=lambda n: (float(d[q, n]), n))))
    mined = QuadletMiner("hard")(x, HIER)
    assert [tuple(t) for t in zip(*(v.tolist() for v in mined))] == expected


@pytest.mark.parametrize("m1,m2", [(0.1, 0.2), (0.5, 1.0), (2.0, 0.0)])
def test_miner_semi_hard_matches_loop(m1, m2):
    x = emb(len(HIER), seed=10)
    d = dm.distances.pairwise(x.detach(), x.detach(), "squared_euclidean")
    quads, _ = loop_tuples(HIER)
    expected = {(q, p, i, n) for q, p, i, n in quads
                if d[q, p] < d[q, i] < d[q, n] and (d[q, i] < d[q, p] + m1 or d[q, n] < d[q, i] + m2)}
    mined = QuadletMiner("semi-hard", margin1=m1, margin2=m2)(x, HIER)
    assert as_set(mined) == expected and len(mined) == len(expected)
    if m1 == 0.5:
        assert expected


def test_miner_cap_is_seeded_subset():
    x = emb(len(HIER), seed=11)
    full = as_set(QuadletMiner("all")(x, HIER))
    a = QuadletMiner("all", max_quadlets=17, seed=3)(x, HIER)
    b = QuadletMiner("all", max_quadlets=17, seed=3)(x, HIER)
    assert len(a) == 17 and len(as_set(a)) == 17 and as_set(a) <= full
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    miner = QuadletMiner("semi-hard", margin1=5.0, margin2=5.0, max_quadlets=5, seed=0)
    assert len(miner(x, HIER)) == 5 and miner.last_count == 5
    # the large-total branch: distinct, sorted, in range, deterministic
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    s1 = FM.sample_indices(10 ** 12, 1000, g1)
    assert s1.numel() == 1000 and torch.unique(s1).numel() == 1000 and int(s1.max()) < 10 ** 12
    assert torch.equal(s1, FM.sample_indices(10 ** 12, 1000, g2)) and bool((s1[1:] > s1[:-1]).all())


def test_miner_flat_and_single_class_give_nothing():
    x = emb(6, seed=12)
    assert len(QuadletMiner("all")(x, torch.tensor([0, 0, 1, 1, 2, 2]))) == 0
    single = torch.tensor([[0, 0], [0, 0], [0, 1], [0, 1], [0, 2], [0, 2]])
    for strategy in ("all", "hard", "semi-hard"):
        out = QuadletMiner(strategy)(x, single)
        assert isinstance(out, Quadlets) and len(out) == 0 and out.q.dtype == torch.long


def test_miner_doctest_example_and_repr():
    miner = dm.mining.create("quadlet", strategy="hard", seed=0)
    assert "strategy='hard'" in repr(miner)
    labels = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2], [1, 2], [1, 3]])
    q, p, i, n = miner(torch.randn(6, 3), labels)
    assert len(q) == 4 and miner.last_count == 4


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------


def class_of(labels):
    return labels[:, 0]


def test_no_intermediate_reduces_to_triplet():
    labels = torch.tensor([[0, 0], [0, 0], [0, 0], [1, 5], [1, 5], [2, 7], [2, 7]])  # one sub-class per class
    x = emb(len(labels), seed=13)
    flat = class_of(labels)
    for loss, margin in ((QuadletLoss(0.1, 0.2), 0.3), (PentupletLoss(), 0.7)):
        ref = TripletMarginLoss(margin=margin, distance="squared_euclidean", reduction="mean")
        assert_same(lambda: loss(x, labels), lambda: ref(x, flat), x)
        assert_same(lambda: loss(x, flat), lambda: ref(x, flat), x)
    quads, trips = loop_tuples(labels)
    assert not quads
    assert_same(lambda: RadialLoss()(x, labels), lambda: loop_radial(x, x, [], trips), x)


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
def test_single_class_and_empty_quadlets_give_connected_zero(name):
    loss = make_loss(name)
    x = emb(6, seed=14)
    single = torch.tensor([[0, 0], [0, 0], [0, 1], [0, 1], [0, 2], [0, 2]])
    empty = Quadlets(*(torch.empty(0, dtype=torch.long) for _ in range(4)))
    for value in (loss(x, single), loss(x, HIER[:6], empty), loss(x, torch.tensor([0, 1, 2, 3, 4, 5]))):
        assert value.item() == 0.0 and value.requires_grad
        (grad,) = torch.autograd.grad(value, x)
        assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
def test_all_equal_embeddings_finite(name):
    x = torch.ones(len(HIER), 4, dtype=torch.float64, requires_grad=True)
    for tuples in (None, QuadletMiner("all")(x, HIER)):
        value = make_loss(name)(x, HIER, tuples)
        (grad,) = torch.autograd.grad(value, x)
        assert torch.isfinite(value) and value > 0 and torch.isfinite(grad).all()


def satisfying_embedding():
    """Sub-classes as tight points, classes as clusters of them far apart (1-D positions)."""
    labels, points = [], []
    for c in range(3):
        for s in range(3):
            for k in range(2):
                labels.append((c, 3 * c + s))
                points.append([100.0 * c + 10.0 * s + 0.01 * k, 0.0])
    return torch.tensor(points, dtype=torch.float64, requires_grad=True), torch.tensor(labels)


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
def test_zero_on_satisfying_embedding(name):
    x, labels = satisfying_embedding()
    loss = make_loss(name)
    for tuples in (None, QuadletMiner("all")(x, labels)):
        value = loss(x, labels, tuples)
        assert value.item() == 0.0
        (grad,) = torch.autograd.grad(value, x)
        assert torch.equal(grad, torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

label_rows = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=2, max_size=9)


@settings(max_examples=25, deadline=None)
@given(rows_=label_rows, seed=st.integers(0, 1000), name=st.sampled_from(["quadlet", "pentuplet", "radial"]))
def test_permutation_invariance(rows_, seed, name):
    labels = torch.tensor(rows_)
    x = emb(len(rows_), seed=seed).detach()
    perm = torch.randperm(len(rows_), generator=torch.Generator().manual_seed(seed))
    loss = make_loss(name)
    assert torch.allclose(loss(x, labels), loss(x[perm], labels[perm]), atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(rows_=label_rows, seed=st.integers(0, 1000), dup=st.integers(0, 8),
       scale=st.sampled_from([0.0, 1e-8, 1.0, 1e3]), name=st.sampled_from(["quadlet", "pentuplet", "radial"]))
def test_finite_gradients_with_duplicates(rows_, seed, dup, scale, name):
    labels = torch.tensor(rows_)
    x = emb(len(rows_), seed=seed, scale=scale).detach()
    x[dup % len(rows_)] = x[0]
    x = x.float().requires_grad_(True)
    loss = make_loss(name)
    for tuples in (None, QuadletMiner("all", max_quadlets=50, seed=0)(x, labels)):
        value = loss(x, labels, tuples)
        (grad,) = torch.autograd.grad(value, x)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


@settings(max_examples=25, deadline=None)
@given(rows_=label_rows, seed=st.integers(0, 1000))
def test_miner_all_property(rows_, seed):
    labels = torch.tensor(rows_)
    x = emb(len(rows_), seed=seed)
    quads, _ = loop_tuples(labels)
    assert as_set(QuadletMiner("all")(x, labels)) == set(quads)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="margin1"):
        QuadletLoss(margin1="0.1")
    with pytest.raises(ValueError, match="margin2"):
        QuadletLoss(margin2=-1.0)
    with pytest.raises(ValueError, match="g3"):
        PentupletLoss(g3=None)
    with pytest.raises(ValueError, match="c"):
        RadialLoss(c=float("nan"))
    with pytest.raises(ValueError, match="level: expected an integer"):
        QuadletLoss(level="0")
    with pytest.raises(ValueError, match="distance"):
        QuadletLoss(distance="cosine")
    with pytest.raises(ValueError, match="reduction"):
        PentupletLoss(reduction="mean_nonzero")
    with pytest.raises(ValueError, match="strategy"):
        QuadletMiner("easy")
    with pytest.raises(ValueError, match="margin1: expected a number, got '1'"):
        QuadletMiner(margin1="1")
    with pytest.raises(ValueError, match="max_quadlets"):
        QuadletMiner(max_quadlets=0)


@pytest.mark.parametrize("name", ["quadlet", "pentuplet", "radial"])
def test_bad_tuples_and_labels(name):
    loss = make_loss(name)
    x = emb(len(HIER))
    idx = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="equal length"):
        loss(x, HIER, Quadlets(idx, idx, idx, torch.tensor([2])))
    with pytest.raises(ValueError, match=r"tuples\.i"):
        loss(x, HIER, Quadlets(idx, idx, torch.tensor([0, 99]), idx))
    with pytest.raises(TypeError, match="tuples.q"):
        loss(x, HIER, Quadlets(idx.float(), idx, idx, idx))
    with pytest.raises(TypeError, match="Quadlets or Triplets"):
        loss(x, HIER, Pairs(idx, idx, idx, idx))
    with pytest.raises(ValueError, match="level"):
        type(loss)(level=2)(x, HIER)
    with pytest.raises(ValueError, match="multi-label"):
        loss(x, torch.ones(len(HIER), 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="level"):
        QuadletMiner(level=5)(x, HIER)


def test_other_losses_reject_quadlets():
    x = emb(len(HIER))
    idx = torch.tensor([0])
    with pytest.raises(TypeError, match="does not take Quadlets"):
        TripletMarginLoss()(x, HIER, Quadlets(idx, idx, idx, idx))


def test_loops_are_exhaustive():  # sanity check of the reference enumeration itself
    quads, trips = loop_tuples(HIER)
    pos, inter, neg = relations(HIER)
    count = sum(len([p for p in range(10) if (q, p) in pos]) * len([n for n in range(10) if (q, n) in neg])
                * max(len([i for i in range(10) if (q, i) in inter]), 1) for q in range(10))
    assert len(quads) + len(trips) == count
    masks = H.hierarchy_masks(HIER)
    assert int(H.tuple_count(*masks)) == count
    assert all(set(map(tuple, m.nonzero().tolist())) == s for m, s in zip(masks, (pos, inter, neg)))
    assert list(itertools.islice(quads, 1))


def test_radial_all_tuples_blocks_do_not_change_the_result():
    # tiny blocks split the triples of each block of queries and the groups into many pieces
    x = emb(len(HIER), seed=21)
    pos, inter, neg = H.hierarchy_masks(HIER)
    whole = H.radial_loss_all(x, x, pos, inter, neg)
    for block in (1, 7, 50):
        part = H.radial_loss_all(x, x, pos, inter, neg, block=block)
        assert part[1] == whole[1] and torch.allclose(part[0], whole[0])
    quads = FM.all_quadlets(pos, inter, neg)
    no_inter = ~inter.any(dim=1, keepdim=True)
    assert whole[1] == len(quads) + len(FM.all_triplets(pos & no_inter, neg))


@pytest.mark.parametrize("block", [1, 7, 50, 1 << 22])
def test_radial_all_tuples_gradients_taken_per_block_match_the_loop(block):
    # under autograd each block's gradient is taken in the forward pass and accumulated; the batch
    # and a separate reference set both receive theirs, scaled by the upstream gradient (2)
    x, rx = emb(len(HIER), seed=22).requires_grad_(), emb(len(HIER), seed=23).requires_grad_()
    pos, inter, neg = H.hierarchy_masks(HIER, HIER)
    total, count = H.radial_loss_all(x, rx, pos, inter, neg, block=block)
    (2 * total).backward()
    quads = list(zip(*(t.tolist() for t in FM.all_quadlets(pos, inter, neg))))
    no_inter = ~inter.any(dim=1, keepdim=True)
    trips = list(zip(*(t.tolist() for t in FM.all_triplets(pos & no_inter, neg))))
    x2, rx2 = x.detach().clone().requires_grad_(), rx.detach().clone().requires_grad_()
    expected = loop_radial(x2, rx2, quads, trips) * count
    (2 * expected).backward()
    assert count == len(quads) + len(trips)
    torch.testing.assert_close(total, expected.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rx.grad, rx2.grad, rtol=1e-5, atol=1e-4)


def test_plain_tuple_error_names_quadlets_for_losses_that_take_them():
    x, labels = torch.randn(4, 3), torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2]])
    t = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([3]))
    with pytest.raises(TypeError, match=r"Pairs, Triplets or Quadlets .* or \(q, p, i, n\) as "
                                        r"deepmetric.Quadlets\(\*t\)"):
        QuadletLoss()(x, labels, t)
