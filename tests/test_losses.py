"""Tests of deepmetric.losses (contrastive, ddml, triplet, multi-similarity) and their functional core.

Every loss is compared, in value and gradient, with a plain Python loop written from the paper's
formula, and with pytorch-metric-learning where both define the same loss.
"""
from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses

import deepmetric as dm
from deepmetric.functional import losses as FL
from deepmetric.losses import ContrastiveLoss, DDMLLoss, MultiSimilarityLoss, TripletMarginLoss
from deepmetric.tuples import Pairs, Quadlets, Triplets

# ----------------------------------------------------------------------------------------------
# Plain loop references, written from the formulas
# ----------------------------------------------------------------------------------------------


def ref_dist(u, v, distance):
    if distance == "euclidean":
        return torch.sqrt(((u - v) ** 2).sum())
    if distance == "squared_euclidean":
        return ((u - v) ** 2).sum()
    if distance == "cosine":
        return 1 - (u * v).sum() / (torch.sqrt((u * u).sum()) * torch.sqrt((v * v).sum()))
    if distance == "dot":
        return (u * v).sum()
    raise AssertionError(distance)


def loop_pairs(labels, ref_labels=None):
    """All positive and negative (i, j) pairs; (i, i) is left out when there is no reference set."""
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels
    pos, neg = [], []
    for i in range(len(labels)):
        for j in range(len(ref)):
            if same_set and i == j:
                continue
            if labels[i] == ref[j]:
                pos.append((i, j))
            else:
                neg.append((i, j))
    return pos, neg


def loop_triplets(pos, neg):
    """Every (a, p, n) with (a, p) a positive pair and (a, n) a negative pair."""
    return [(a, p, n) for (a, p) in pos for (a2, n) in neg if a == a2]


def reduce_ref(terms, reduction, zero):
    if reduction == "sum":
        return sum(terms, zero)
    if reduction == "mean":
        return sum(terms, zero) / max(len(terms), 1)
    nonzero = [t for t in terms if t > 0]
    return sum(nonzero, zero) / max(len(nonzero), 1)


def ref_contrastive(x, rx, pos, neg, pos_margin=0.0, neg_margin=1.0, distance="euclidean",
                    reduction="mean_nonzero"):
    zero = x.sum() * 0
    pos_terms = [torch.clamp(ref_dist(x[i], rx[j], distance) - pos_margin, min=0) for i, j in pos]
    neg_terms = [torch.clamp(neg_margin - ref_dist(x[i], rx[j], distance), min=0) for i, j in neg]
    return reduce_ref(pos_terms, reduction, zero) + reduce_ref(neg_terms, reduction, zero)


def ref_ddml(x, rx, pos, neg, tau=2.0, beta=1.0, reduction="mean"):
    def g(z):
        return torch.log(1 + torch.exp(beta * z)) / beta
    terms = []
    for i, j in pos:  # l_ij = +1
        terms.append(g(1 - (tau - ref_dist(x[i], rx[j], "squared_euclidean"))))
    for i, j in neg:  # l_ij = -1
        terms.append(g(1 + (tau - ref_dist(x[i], rx[j], "squared_euclidean"))))
    return reduce_ref(terms, reduction, x.sum() * 0)


def ref_triplet(x, rx, triplets, margin=0.2, distance="euclidean", soft_margin=False,
                reduction="mean_nonzero"):
    terms = []
    for a, p, n in triplets:
        d_ap, d_an = ref_dist(x[a], rx[p], distance), ref_dist(x[a], rx[n], distance)
        if distance == "dot":  # a similarity: larger is closer
            d_ap, d_an = -d_ap, -d_an
        if soft_margin:
            terms.append(torch.log(1 + torch.exp(d_ap - d_an)))
        else:
            terms.append(torch.clamp(d_ap - d_an + margin, min=0))
    return reduce_ref(terms, reduction, x.sum() * 0)


def ref_multi_similarity(x, rx, pos, neg, alpha=2.0, beta=50.0, base=0.5, distance="cosine",
                         reduction="mean"):
    pos, neg = set(pos), set(neg)
    losses = []
    for i in range(len(x)):
        pos_sum, neg_sum = x.sum() * 0, x.sum() * 0
        for k in range(len(rx)):
            s = ref_dist(x[i], rx[k], distance)
            if distance == "cosine":
                s = 1 - s
            if (i, k) in pos:
                pos_sum = pos_sum + torch.exp(-alpha * (s - base))
            if (i, k) in neg:
                neg_sum = neg_sum + torch.exp(beta * (s - base))
        losses.append(torch.log(1 + pos_sum) / alpha + torch.log(1 + neg_sum) / beta)
    return reduce_ref(losses, reduction, x.sum() * 0)


def reference(name, kwargs, x, rx, pos, neg, triplets):
    if name == "contrastive":
        return ref_contrastive(x, rx, pos, neg, **kwargs)
    if name == "ddml":
        return ref_ddml(x, rx, pos, neg, **kwargs)
    if name == "triplet":
        return ref_triplet(x, rx, triplets, **kwargs)
    if name == "multi-similarity":
        return ref_multi_similarity(x, rx, pos, neg, **kwargs)
    raise AssertionError(name)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def grads(value, tensors):
    out = torch.autograd.grad(value, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(out, tensors)]


def make_batch(seed, batch, n_classes=3, dim=4, use_ref=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (0.6 * torch.randn(batch, dim, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    if not use_ref:
        return g, x, labels, None, None
    n_ref = batch + 3
    rx = (0.6 * torch.randn(n_ref, dim, generator=g, dtype=dtype)).requires_grad_()
    ref_labels = torch.randint(0, n_classes, (n_ref,), generator=g)
    return g, x, labels, rx, ref_labels


def subset(items, g, p=0.5):
    keep = torch.rand(len(items), generator=g) < p
    return [t for t, k in zip(items, keep) if k]


def as_index(items, k):
    return torch.tensor([t[k] for t in items], dtype=torch.long)


def all_close(a, b, tol=1e-9):
    return torch.allclose(a, b, rtol=tol, atol=tol)


LOSS_CASES = [
    ("contrastive", dict(pos_margin=0.1, neg_margin=1.5, distance="euclidean")),
    ("contrastive", dict(pos_margin=0.2, neg_margin=0.9, distance="cosine")),
    ("contrastive", dict(neg_margin=2.0, distance="squared_euclidean", reduction="mean")),
    ("ddml", dict(tau=2.0, beta=1.0)),
    ("ddml", dict(tau=1.0, beta=3.0, reduction="sum")),
    ("triplet", dict(margin=0.3)),
    ("triplet", dict(margin=0.5, distance="squared_euclidean", reduction="sum")),
    ("triplet", dict(distance="cosine", soft_margin=True)),
    ("triplet", dict(margin=0.1, distance="dot", reduction="mean")),
    ("multi-similarity", dict()),
    ("multi-similarity", dict(alpha=1.0, beta=10.0, base=0.2, distance="dot", reduction="mean_nonzero")),
]
CASE_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(LOSS_CASES)]


# ----------------------------------------------------------------------------------------------
# Against the loop references: values and gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs", LOSS_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("batch", [2, 7, 16])
@pytest.mark.parametrize("use_ref", [False, True], ids=["self", "ref"])
@pytest.mark.parametrize("mode", ["all", "pairs", "triplets"])
def test_matches_loop_reference(name, kwargs, batch, use_ref, mode):
    ours, expected, params = loop_case(name, kwargs, batch, use_ref, mode)
    assert torch.isfinite(ours)
    assert all_close(ours, expected), (float(ours), float(expected))
    for a, b in zip(grads(ours, params), grads(expected, params)):
        assert all_close(a, b, 1e-8)


def loop_case(name, kwargs, batch, use_ref, mode):
    """``(ours, expected, params)``: the module and the loop reference on one seeded case."""
    seed = zlib.crc32(repr((name, kwargs, batch, use_ref, mode)).encode())
    g, x, labels, rx, ref_labels = make_batch(seed, batch, use_ref=use_ref)
    pos, neg = loop_pairs(labels.tolist(), None if rx is None else ref_labels.tolist())
    triplets = loop_triplets(pos, neg)
    tuples = None
    if mode == "pairs":
        pos, neg = subset(pos, g), subset(neg, g)
        triplets = loop_triplets(pos, neg)
        tuples = Pairs(as_index(pos, 0), as_index(pos, 1), as_index(neg, 0), as_index(neg, 1))
    elif mode == "triplets" and triplets:
        picks = torch.randint(0, len(triplets), (min(len(triplets), 25),), generator=g).tolist()
        triplets = [triplets[k] for k in picks]  # with replacement: duplicates count as given
        pos = [(a, p) for a, p, _ in triplets]
        neg = [(a, n) for a, _, n in triplets]
        tuples = Triplets(as_index(triplets, 0), as_index(triplets, 1), as_index(triplets, 2))
    elif mode == "triplets":
        pos, neg = [], []
        tuples = Triplets(*[torch.empty(0, dtype=torch.long)] * 3)

    loss = dm.losses.create(name, **kwargs)
    params = [x] if rx is None else [x, rx]
    ours = loss(x, labels, tuples, rx, ref_labels)
    expected = reference(name, kwargs, x, x if rx is None else rx, pos, neg, triplets)
    return ours, expected, params


def test_reference_cases_are_not_trivial():
    """The loop comparison exercises non-zero losses and gradients for every loss, mode and reference
    set at the largest batch (at batch 2 a case may have no valid tuple)."""
    for name, kwargs in LOSS_CASES:
        for use_ref in (False, True):
            for mode in ("all", "pairs", "triplets"):
                _, expected, params = loop_case(name, kwargs, 16, use_ref, mode)
                assert expected.item() > 1e-3, (name, use_ref, mode)
                assert any(bool(g.abs().sum() > 0) for g in grads(expected, params)), (name, use_ref, mode)


@pytest.mark.parametrize("name,kwargs", LOSS_CASES, ids=CASE_IDS)
def test_hierarchical_and_multilabel_labels_use_finest_level(name, kwargs):
    _, x, labels, _, _ = make_batch(11, 12, n_classes=4)
    coarse = labels // 2
    hierarchical = torch.stack([coarse, labels % 2], dim=1)  # (coarse, fine) with fine ids recurring
    multilabel = torch.nn.functional.one_hot(labels, 4).bool()
    loss = dm.losses.create(name, **kwargs)
    flat = loss(x, labels)
    assert all_close(loss(x, hierarchical), flat)
    assert all_close(loss(x, multilabel), flat)


# ----------------------------------------------------------------------------------------------
# Against pytorch-metric-learning (float32, to 1e-5)
# ----------------------------------------------------------------------------------------------


def pml_lp():
    return pml_distances.LpDistance(normalize_embeddings=False, p=2, power=1)


def pml_batch(seed, batch=16, use_ref=False):
    _, x, labels, rx, ref_labels = make_batch(seed, batch, n_classes=4, dim=8, use_ref=use_ref,
                                              dtype=torch.float32)
    return x, labels, rx, ref_labels


def assert_same_as_pml(ours_fn, pml_fn, params):
    ours, theirs = ours_fn(), pml_fn()
    assert theirs.item() > 0, "the comparison must be on a non-zero loss"
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5), (float(ours), float(theirs))
    for a, b in zip(grads(ours, params), grads(theirs, params)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_ref", [False, True], ids=["self", "ref"])
def test_triplet_all_triplets_equals_pml(use_ref):
    """pytorch-metric-learning with LpDistance(normalize_embeddings=False): plain Euclidean."""
    x, labels, rx, ref_labels = pml_batch(1, use_ref=use_ref)
    params = [x] if rx is None else [x, rx]
    assert_same_as_pml(
        lambda: TripletMarginLoss(margin=0.2)(x, labels, None, rx, ref_labels),
        lambda: pml_losses.TripletMarginLoss(margin=0.2, distance=pml_lp())(x, labels, None, rx, ref_labels),
        params)


def test_triplet_soft_margin_equals_pml_smooth_loss_with_zero_margin():
    x, labels, _, _ = pml_batch(2)
    assert_same_as_pml(
        lambda: TripletMarginLoss(soft_margin=True)(x, labels),
        lambda: pml_losses.TripletMarginLoss(margin=0.0, smooth_loss=True, distance=pml_lp())(x, labels),
        [x])


@pytest.mark.parametrize("use_ref", [False, True], ids=["self", "ref"])
def test_triplet_given_triplets_and_pairs_equal_pml(use_ref):
    x, labels, rx, ref_labels = pml_batch(3, use_ref=use_ref)
    params = [x] if rx is None else [x, rx]
    g = torch.Generator().manual_seed(0)
    pos, neg = loop_pairs(labels.tolist(), None if rx is None else ref_labels.tolist())
    trip = subset(loop_triplets(pos, neg), g, 0.3)
    a, p, n = as_index(trip, 0), as_index(trip, 1), as_index(trip, 2)
    assert_same_as_pml(
        lambda: TripletMarginLoss(margin=0.3)(x, labels, Triplets(a, p, n), rx, ref_labels),
        lambda: pml_losses.TripletMarginLoss(margin=0.3, distance=pml_lp())(x, labels, (a, p, n), rx, ref_labels),
        params)
    pos, neg = subset(pos, g), subset(neg, g)
    pairs = (as_index(pos, 0), as_index(pos, 1), as_index(neg, 0), as_index(neg, 1))
    assert_same_as_pml(
        lambda: TripletMarginLoss(margin=0.3)(x, labels, Pairs(*pairs), rx, ref_labels),
        lambda: pml_losses.TripletMarginLoss(margin=0.3, distance=pml_lp())(x, labels, pairs, rx, ref_labels),
        params)


def tuples_for_mode(mode, pos, neg, g, triplet_fraction):
    """(deepmetric tuples, pml tuples) for a comparison mode: all pairs (None), a random subset of the
    pairs, or a random subset of the triplets built from them."""
    if mode == "pairs":
        pos, neg = subset(pos, g), subset(neg, g)
        theirs = (as_index(pos, 0), as_index(pos, 1), as_index(neg, 0), as_index(neg, 1))
        return Pairs(*theirs), theirs
    if mode == "triplets":
        trip = subset(loop_triplets(pos, neg), g, triplet_fraction)
        theirs = (as_index(trip, 0), as_index(trip, 1), as_index(trip, 2))
        return Triplets(*theirs), theirs
    return None, None


@pytest.mark.parametrize("use_ref", [False, True], ids=["self", "ref"])
@pytest.mark.parametrize("mode", ["all", "pairs", "triplets"])
def test_contrastive_equals_pml(use_ref, mode):
    x, labels, rx, ref_labels = pml_batch(4, use_ref=use_ref)
    params = [x] if rx is None else [x, rx]
    g = torch.Generator().manual_seed(1)
    pos, neg = loop_pairs(labels.tolist(), None if rx is None else ref_labels.tolist())
    ours_tuples, theirs_tuples = tuples_for_mode(mode, pos, neg, g, triplet_fraction=0.2)
    assert_same_as_pml(
        lambda: ContrastiveLoss(pos_margin=0.5, neg_margin=4.0)(x, labels, ours_tuples, rx, ref_labels),
        lambda: pml_losses.ContrastiveLoss(pos_margin=0.5, neg_margin=4.0, distance=pml_lp())(
            x, labels, theirs_tuples, rx, ref_labels),
        params)


@pytest.mark.parametrize("use_ref", [False, True], ids=["self", "ref"])
@pytest.mark.parametrize("mode", ["all", "pairs", "triplets"])
def test_multi_similarity_equals_pml(use_ref, mode):
    """pytorch-metric-learning's default CosineSimilarity normalises internally: unnormalised input."""
    x, labels, rx, ref_labels = pml_batch(5, use_ref=use_ref)
    params = [x] if rx is None else [x, rx]
    g = torch.Generator().manual_seed(2)
    pos, neg = loop_pairs(labels.tolist(), None if rx is None else ref_labels.tolist())
    ours_tuples, theirs_tuples = tuples_for_mode(mode, pos, neg, g, triplet_fraction=0.1)
    assert_same_as_pml(
        lambda: MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.3)(x, labels, ours_tuples, rx, ref_labels),
        lambda: pml_losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.3)(
            x, labels, theirs_tuples, rx, ref_labels),
        params)


def test_multi_similarity_dot_equals_pml_dot_product():
    x, labels, _, _ = pml_batch(6)
    assert_same_as_pml(
        lambda: MultiSimilarityLoss(alpha=1.0, beta=5.0, base=0.1, distance="dot")(x, labels),
        lambda: pml_losses.MultiSimilarityLoss(
            alpha=1.0, beta=5.0, base=0.1,
            distance=pml_distances.DotProductSimilarity(normalize_embeddings=False))(x, labels),
        [x])


# ----------------------------------------------------------------------------------------------
# No valid tuple: a zero connected to the graph
# ----------------------------------------------------------------------------------------------

EMPTY = torch.empty(0, dtype=torch.long)


def no_tuple_batches(name):
    x = torch.randn(6, 3, dtype=torch.float64)
    batches = [
        (x[:1], torch.tensor([0]), None),  # a single item: no pair at all
        (x, torch.tensor([0, 1, 0, 1, 2, 2]), Pairs(EMPTY, EMPTY, EMPTY, EMPTY)),
        (x, torch.tensor([0, 1, 0, 1, 2, 2]), Triplets(EMPTY, EMPTY, EMPTY)),
    ]
    if name == "triplet":
        batches += [
            (x, torch.zeros(6, dtype=torch.long), None),  # all one class: no negative
            (x, torch.arange(6), None),  # all distinct classes: no positive
            (x, torch.tensor([0, 1, 0, 1, 2, 2]), Pairs(torch.tensor([0]), torch.tensor([2]),
                                                        torch.tensor([1]), torch.tensor([0]))),
        ]
    return batches


@pytest.mark.parametrize("name,kwargs", LOSS_CASES, ids=CASE_IDS)
def test_no_valid_tuple_gives_connected_zero(name, kwargs):
    loss = dm.losses.create(name, **kwargs)
    for x, labels, tuples in no_tuple_batches(name):
        x = x.clone().requires_grad_()
        value = loss(x, labels, tuples)
        assert value.dim() == 0 and value.item() == 0.0 and not torch.isnan(value)
        assert value.requires_grad
        value.backward()
        assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ----------------------------------------------------------------------------------------------

labels_strategy = st.lists(st.integers(0, 2), min_size=2, max_size=10)


@settings(max_examples=30, deadline=None)
@given(case=st.sampled_from(LOSS_CASES), labels=labels_strategy, seed=st.integers(0, 2 ** 16), data=st.data())
def test_batch_permutation_invariance(case, labels, seed, data):
    name, kwargs = case
    labels = torch.tensor(labels)
    x = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    perm = torch.tensor(data.draw(st.permutations(range(len(labels)))))
    loss = dm.losses.create(name, **kwargs)
    assert all_close(loss(x, labels), loss(x[perm], labels[perm]))


@settings(max_examples=30, deadline=None)
@given(case=st.sampled_from(LOSS_CASES), rows=st.lists(st.integers(0, 2), min_size=2, max_size=10),
       labels=st.lists(st.integers(0, 2), min_size=10, max_size=10), seed=st.integers(0, 2 ** 16))
def test_finite_gradients_with_duplicate_embeddings(case, rows, labels, seed):
    """Embeddings drawn from at most three distinct rows (all equal when ``rows`` is constant)."""
    name, kwargs = case
    distinct = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
    x = distinct[torch.tensor(rows)].clone().requires_grad_()
    value = dm.losses.create(name, **kwargs)(x, torch.tensor(labels[:len(rows)]))
    (grad,) = torch.autograd.grad(value, [x])
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=2, max_size=12), scale=st.floats(3.0, 100.0),
       noise=st.floats(0.0, 0.01), seed=st.integers(0, 2 ** 16),
       case=st.sampled_from([("contrastive", dict(pos_margin=0.05, neg_margin=1.0)),
                             ("contrastive", dict(pos_margin=0.05, neg_margin=2.0, distance="squared_euclidean")),
                             ("triplet", dict(margin=0.2)),
                             ("triplet", dict(margin=1.0, distance="squared_euclidean"))]))
def test_zero_loss_on_perfectly_separated_embeddings(labels, scale, noise, seed, case):
    """Class c sits at scale * e_c (classes >= 3 * sqrt(2) apart), items jitter by <= 0.01."""
    name, kwargs = case
    labels = torch.tensor(labels)
    jitter = noise * (torch.rand(len(labels), 4, generator=torch.Generator().manual_seed(seed)) - 0.5)
    x = (scale * torch.eye(4)[labels] + jitter).requires_grad_()
    value = dm.losses.create(name, **kwargs)(x, labels)
    (grad,) = torch.autograd.grad(value, [x])
    assert value.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


# ----------------------------------------------------------------------------------------------
# All triplets in bounded memory
# ----------------------------------------------------------------------------------------------


def numpy_all_triplets(x, labels, margin):
    """Chunked over anchors: sum and count of the non-zero hinge terms, in float64."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    total, count = 0.0, 0
    for a in range(len(x)):
        d = np.sqrt(((x[a] - x) ** 2).sum(1))
        pos = labels == labels[a]
        pos[a] = False
        neg = labels != labels[a]
        terms = np.maximum(d[pos][:, None] - d[neg][None, :] + margin, 0.0)
        total += terms.sum()
        count += int((terms > 0).sum())
    return total, count


def test_all_triplets_at_batch_1024_in_bounded_memory():
    """B = 1024 in a fresh process: the value matches a chunked numpy loop over anchors and the
    process's peak memory stays far below a (B, B, B) float32 tensor (4 GiB)."""
    script = textwrap.dedent("""
        import json, resource, torch, deepmetric as dm
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1024, 16, generator=g, dtype=torch.float64).requires_grad_()
        labels = torch.randint(0, 8, (1024,), generator=g)
        value = dm.losses.create("triplet", margin=0.5, reduction="sum")(x, labels)
        value.backward()
        print(json.dumps({"value": value.item(), "grad_finite": bool(torch.isfinite(x.grad).all()),
                          "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 8, (1024,), generator=g)
    total, count = numpy_all_triplets(x.numpy(), labels.numpy(), 0.5)
    assert count > 10 ** 6
    assert math.isclose(result["value"], total, rel_tol=1e-9)
    assert result["grad_finite"]
    assert result["max_rss_kib"] < 2 * 1024 ** 2, result["max_rss_kib"]  # < 2 GiB


@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("max_elements", [1, 50, 10 ** 9])
def test_all_triplets_block_size_does_not_change_value_or_gradient(soft_margin, max_elements):
    _, x, labels, _, _ = make_batch(7, 16)
    pos, neg = loop_pairs(labels.tolist())
    expected = ref_triplet(x, x, loop_triplets(pos, neg), margin=0.3, soft_margin=soft_margin)
    loss = TripletMarginLoss(margin=0.3, soft_margin=soft_margin, max_elements=max_elements)
    value = loss(x, labels)
    assert all_close(value, expected)
    assert all_close(grads(value, [x])[0], grads(expected, [x])[0], 1e-8)


def test_all_triplets_functional_counts_terms():
    dist = torch.tensor([[0.0, 1.0, 2.0, 0.5], [1.0, 0.0, 3.0, 1.5]])
    pos = torch.tensor([[False, True, False, False], [True, False, False, False]])
    neg = torch.tensor([[False, False, True, True], [False, False, True, True]])
    # anchor 0: (1 - 2 + 1)_+ = 0, (1 - 0.5 + 1)_+ = 1.5; anchor 1: (1 - 3 + 1)_+ = 0, (1 - 1.5 + 1) = 0.5
    assert float(FL.all_triplets_margin_loss(dist, pos, neg, margin=1.0, reduction="sum")) == 2.0
    assert float(FL.all_triplets_margin_loss(dist, pos, neg, margin=1.0, reduction="mean")) == 0.5
    assert float(FL.all_triplets_margin_loss(dist, pos, neg, margin=1.0)) == 1.0


# ----------------------------------------------------------------------------------------------
# Hand-worked values of the functional core
# ----------------------------------------------------------------------------------------------


def test_functional_hand_worked_values():
    # contrastive: positives 0.5, 1.5 with m_pos 1 -> [0, 0.5]; negatives 0.2, 3 with m_neg 1 -> [0.8, 0]
    value = FL.contrastive_loss(torch.tensor([0.5, 1.5]), torch.tensor([0.2, 3.0]), 1.0, 1.0)
    assert math.isclose(float(value), 0.5 + 0.8, rel_tol=1e-6)
    value = FL.contrastive_loss(torch.tensor([0.5, 1.5]), torch.tensor([0.2, 3.0]), 1.0, 1.0, "mean")
    assert math.isclose(float(value), 0.25 + 0.4, rel_tol=1e-6)
    # ddml: d^2 = 1 positive, tau 2 -> z = 0 -> log 2; d^2 = 3 negative -> z = 1 - 1 = 0 -> log 2
    value = FL.ddml_loss(torch.tensor([1.0]), torch.tensor([3.0]), tau=2.0, beta=1.0)
    assert math.isclose(float(value), math.log(2), rel_tol=1e-6)
    # ddml is stable for large beta z: g(z) -> z
    value = FL.ddml_loss(torch.tensor([1000.0]), torch.tensor([]), tau=2.0, beta=10.0)
    assert math.isclose(float(value), 999.0, rel_tol=1e-6)
    # triplet: (0.3 - 0.1 + 0.2)_+ = 0.4, (0.1 - 0.9 + 0.2)_+ = 0
    value = FL.triplet_margin_loss(torch.tensor([0.3, 0.1]), torch.tensor([0.1, 0.9]), margin=0.2)
    assert math.isclose(float(value), 0.4, rel_tol=1e-6)
    # multi-similarity, one anchor: S_pos = 0.5 = lambda -> log(2)/alpha; no negatives -> 0
    sim = torch.tensor([[0.5, 0.9]])
    value = FL.multi_similarity_loss(sim, torch.tensor([[True, False]]), torch.tensor([[False, False]]),
                                     alpha=2.0, beta=50.0, base=0.5)
    assert math.isclose(float(value), math.log(2) / 2, rel_tol=1e-6)
    # large beta (S - lambda) stays finite: log(1 + e^{50 * 10}) / 50 = 10
    sim = torch.tensor([[10.5]])
    value = FL.multi_similarity_loss(sim, torch.tensor([[False]]), torch.tensor([[True]]), beta=50.0, base=0.5)
    assert math.isclose(float(value), 10.0, rel_tol=1e-6)


def test_reduce_sum_options():
    losses = torch.tensor([0.0, 2.0, 0.0, 4.0])
    assert float(FL.reduce_losses(losses, "mean_nonzero")) == 3.0
    assert float(FL.reduce_losses(losses, "mean")) == 1.5
    assert float(FL.reduce_losses(losses, "sum")) == 6.0
    for reduction in FL.REDUCTIONS:
        assert float(FL.reduce_losses(torch.zeros(0), reduction)) == 0.0
    with pytest.raises(ValueError, match="reduction: expected one of mean_nonzero, mean, sum, got 'avg'"):
        FL.reduce_losses(losses, "avg")


# ----------------------------------------------------------------------------------------------
# Registry, attributes, bad input
# ----------------------------------------------------------------------------------------------


def test_registry_names_and_distance_attribute():
    assert {"contrastive", "ddml", "triplet", "multi-similarity"} <= set(dm.losses.names())
    assert dm.losses.create({"name": "triplet", "margin": 0.1, "distance": "squared_euclidean"}).distance \
        == "squared_euclidean"
    assert dm.losses.create("contrastive").distance == "euclidean"
    assert dm.losses.create("ddml").distance == "squared_euclidean"
    assert dm.losses.create("multi-similarity").distance == "cosine"
    assert dm.losses.create("triplet").margin == 0.2


def with_nan_row(x, row):
    x = x.clone()
    x[row, 0] = float("nan")
    return x


BAD_INPUTS = [
    (lambda x, y: (with_nan_row(x, 1), y), ValueError, r"embeddings: contains NaN .*first bad rows: \[1\]"),
    (lambda x, y: (x[:, 0], y), ValueError, r"embeddings: expected shape \(B, D\), got \(6,\)"),
    (lambda x, y: (x, y[:5]), ValueError, "labels: expected 6 rows to match the embeddings, got 5"),
    (lambda x, y: (x, y.float()), TypeError, "labels: expected integer .* got torch.float32"),
]


@pytest.mark.parametrize("name", ["contrastive", "ddml", "triplet", "multi-similarity"])
@pytest.mark.parametrize("make,error,message", BAD_INPUTS)
def test_bad_input_raises_clear_error(name, make, error, message):
    x, labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    bad_x, bad_labels = make(x, labels)
    with pytest.raises(error, match=message):
        dm.losses.create(name)(bad_x, bad_labels)


@pytest.mark.parametrize("name", ["contrastive", "ddml", "triplet", "multi-similarity"])
def test_bad_tuples_raise_clear_error(name):
    loss = dm.losses.create(name)
    x, labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(TypeError, match=r"tuples: expected deepmetric.tuples.Pairs or Triplets .* got tuple; "
                                         r"wrap a plain \(a, p, n\) as deepmetric.Triplets\(\*t\).*\(a tuple of 3 was given\)"):
        loss(x, labels, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))  # a pml miner's output
    with pytest.raises(TypeError, match=r"deepmetric.Pairs\(\*t\) \(a list of 4 was given\)"):
        loss(x, labels, [torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2])])
    with pytest.raises(TypeError, match=r"\(or None\), got dict$"):
        loss(x, labels, {})
    with pytest.raises(TypeError, match="got Quadlets"):
        loss(x, labels, Quadlets(*[torch.tensor([0])] * 4))
    with pytest.raises(ValueError, match=r"tuples.p: expected indices in \[0, 6\), got values in \[1, 9\]"):
        loss(x, labels, Triplets(torch.tensor([0, 0]), torch.tensor([1, 9]), torch.tensor([2, 3])))
    with pytest.raises(ValueError, match=r"tuples.n: expected indices in \[0, 4\)"):
        loss(x, labels, Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([5])),
             x[:4], labels[:4])
    with pytest.raises(TypeError, match="tuples.a: expected a 1-D integer tensor of indices, got torch.float32"):
        loss(x, labels, Triplets(torch.tensor([0.0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="tuples: expected len\\(a1\\) == len\\(p\\)"):
        loss(x, labels, Pairs(torch.tensor([0, 1]), torch.tensor([1]), EMPTY, EMPTY))
    with pytest.raises(ValueError, match="ref_embeddings and ref_labels must be given together"):
        loss(x, labels, None, x)


def test_multi_similarity_rejects_a_pair_both_positive_and_negative():
    x, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    pairs = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"tuples: pair \(0, 1\) is given both as a positive and as a negative"):
        MultiSimilarityLoss()(x, labels, pairs)


@pytest.mark.parametrize("make,message", [
    (lambda: TripletMarginLoss(margin=-0.1), "margin: expected a number >= 0.0, got -0.1"),
    (lambda: TripletMarginLoss(margin=float("nan")), "margin: expected a finite number"),
    (lambda: TripletMarginLoss(distance="manhattan"), "distance: unknown name 'manhattan'"),
    (lambda: TripletMarginLoss(reduction="avg"), "reduction: expected one of"),
    (lambda: TripletMarginLoss(max_elements=0), "max_elements: expected an integer >= 1"),
    (lambda: ContrastiveLoss(neg_margin=-1.0), "neg_margin: expected a number >= 0.0, got -1.0"),
    (lambda: ContrastiveLoss(pos_margin=-1.0), "pos_margin: expected a number >= 0.0"),
    (lambda: ContrastiveLoss(distance="dot"), "ContrastiveLoss: distance 'dot' is not supported"),
    (lambda: DDMLLoss(tau=0.0), "tau: expected a number > 0.0, got 0.0"),
    (lambda: DDMLLoss(beta=-1.0), "beta: expected a number > 0.0"),
    (lambda: MultiSimilarityLoss(alpha=0), "alpha: expected a number > 0.0"),
    (lambda: MultiSimilarityLoss(base=float("inf")), "base: expected a finite number, got inf"),
    (lambda: MultiSimilarityLoss(distance="euclidean"), "MultiSimilarityLoss: distance 'euclidean' is not"),
])
def test_bad_hyper_parameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_hyper_parameters_are_real_numbers_of_any_kind():
    with pytest.raises(ValueError, match="base: expected a number, got '0.5'"):
        MultiSimilarityLoss(base="0.5")
    with pytest.raises(ValueError, match="margin: expected a number, got True"):
        TripletMarginLoss(margin=True)
    # numpy scalars, as a sweep over np.linspace gives them (they were refused by the losses, not the miners)
    assert TripletMarginLoss(margin=np.float32(0.25)).margin == 0.25
    assert dm.losses.create("contrastive", neg_margin=np.int64(2)).neg_margin == 2.0
    assert dm.mining.create("triplet-margin", margin=np.float32(0.25)).margin == 0.25


def test_triplet_soft_margin_must_be_bool():
    with pytest.raises(TypeError, match="soft_margin: expected a bool, got 'yes'"):
        TripletMarginLoss(soft_margin="yes")


def test_ddml_has_no_distance_argument():
    with pytest.raises(TypeError, match=r"loss 'ddml': unknown arguments \['distance'\]; it takes \["):
        dm.losses.create("ddml", distance="cosine")


def test_int32_labels_and_indices_are_accepted():
    x, labels = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.int32)
    trip = Triplets(torch.tensor([0, 2], dtype=torch.int32), torch.tensor([1, 3], dtype=torch.int32),
                    torch.tensor([4, 5], dtype=torch.int32))
    loss = TripletMarginLoss(margin=10.0)
    expected = ref_triplet(x, x, [(0, 1, 4), (2, 3, 5)], margin=10.0)
    assert all_close(loss(x, labels, trip), expected)


def test_losses_have_no_learnable_parameters():
    """The four losses have no learnable state (so nothing to save in a checkpoint)."""
    for name in ["contrastive", "ddml", "triplet", "multi-similarity"]:
        assert list(dm.losses.create(name).parameters()) == []


def test_duplicate_free_enumeration_helper_is_sane():
    """The loop helpers themselves: 2 classes of 2 -> 4 positive pairs, 8 negative, 8 triplets."""
    pos, neg = loop_pairs([0, 0, 1, 1])
    assert len(pos) == 4 and len(neg) == 8
    assert sorted(loop_triplets(pos, neg)) == sorted(
        (a, p, n) for a, p, n in itertools.product(range(4), repeat=3)
        if a != p and [0, 0, 1, 1][a] == [0, 0, 1, 1][p] and [0, 0, 1, 1][a] != [0, 0, 1, 1][n])


def test_docstring_examples_run():
    import doctest

    import deepmetric.losses.pair
    import deepmetric.losses.triplet
    for module in [dm.losses, deepmetric.losses.pair, deepmetric.losses.triplet]:
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ----------------------------------------------------------------------------------------------
# Dense formulations against the gathered ones (value and gradient), and the distance backward
# ----------------------------------------------------------------------------------------------


def random_dist(seed, b=7, r=9, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.rand(b, r, generator=g, dtype=dtype)).requires_grad_(), g


def random_triplets(g, b, r, count, grouped):
    a = torch.randint(0, b, (count,), generator=g)
    p = torch.randint(0, r, (count,), generator=g)
    n = torch.randint(0, r, (count,), generator=g)
    if grouped:  # runs of equal (a, p), as miners emit them (sorted by pair)
        a, p = a[: count // 6].repeat_interleave(6), p[: count // 6].repeat_interleave(6)
        n = n[: a.numel()]
    return a, p, n


@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("reduction", FL.REDUCTIONS)
@pytest.mark.parametrize("grouped", [False, True], ids=["shuffled", "runs"])
def test_given_triplets_dense_gradient_equals_gathered_form(soft_margin, reduction, grouped):
    dist, g = random_dist(1)
    for count in (0, 1, 60, 600):
        a, p, n = random_triplets(g, 7, 9, count, grouped)
        ours = FL.given_triplets_margin_loss(dist, a, p, n, 0.3, soft_margin, reduction)
        ref = FL.triplet_margin_loss(dist[a, p], dist[a, n], 0.3, soft_margin, reduction)
        assert all_close(ours, ref, 1e-12), (count, float(ours), float(ref))
        assert all_close(grads(ours, [dist])[0], grads(ref, [dist])[0], 1e-12)


def test_given_triplets_float32_equals_pml_on_miner_output():
    """Many triplets in runs (the semi-hard miner's output) through the module, against pml."""
    x, labels, _, _ = pml_batch(9, batch=48)
    triplets = dm.mining.create("semi-hard", margin=0.5)(x, labels)
    assert len(triplets) > 200
    assert_same_as_pml(
        lambda: TripletMarginLoss(margin=0.5)(x, labels, triplets),
        lambda: pml_losses.TripletMarginLoss(margin=0.5, distance=pml_lp())(x, labels, tuple(triplets)),
        [x])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scatter_add_runs_equals_scatter_add(dtype):
    g = torch.Generator().manual_seed(0)
    for index in (torch.randint(0, 50, (400,), generator=g),                      # no runs: plain scatter
                  torch.randint(0, 50, (40,), generator=g).repeat_interleave(10),  # runs (some repeated later)
                  torch.zeros(5, dtype=torch.long), torch.zeros(1, dtype=torch.long), EMPTY):
        values = torch.rand(index.numel(), generator=g).to(dtype)
        ours = FL.scatter_add_runs_(torch.zeros(50, dtype=dtype), index, values)
        ref = torch.zeros(50, dtype=torch.float64).index_put_((index,), values.double(), accumulate=True)
        assert torch.allclose(ours.double(), ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-6)


def random_masks(g, b, r, p=0.4):
    pos = torch.rand(b, r, generator=g) < p
    neg = ~pos & (torch.rand(b, r, generator=g) < 0.8)
    return pos, neg


@pytest.mark.parametrize("reduction", FL.REDUCTIONS)
def test_masked_contrastive_and_ddml_equal_gathered_forms(reduction):
    for seed in range(4):
        dist, g = random_dist(seed)
        pos, neg = random_masks(g, 7, 9)
        if seed == 3:
            pos = torch.zeros_like(pos)  # no positive pair at all
        ours = FL.masked_contrastive_loss(dist, pos, neg, 0.4, 1.2, reduction)
        ref = FL.contrastive_loss(dist[pos], dist[neg], 0.4, 1.2, reduction)
        assert all_close(ours, ref, 1e-12) and ours.item() > 0
        assert all_close(grads(ours, [dist])[0], grads(ref, [dist])[0], 1e-12)
        ours = FL.masked_ddml_loss(dist, pos, neg, 1.5, 2.0, reduction)
        ref = FL.ddml_loss(dist[pos], dist[neg], 1.5, 2.0, reduction)
        assert all_close(ours, ref, 1e-12)
        assert all_close(grads(ours, [dist])[0], grads(ref, [dist])[0], 1e-12)


def reference_multi_similarity(sim, pos, neg, alpha, beta, base):
    """The logsumexp form with a zero column for the 1 + ...: autograd does the gradient."""
    def log1p_sum_exp(x, mask):
        x = x.masked_fill(~mask, float("-inf"))
        return torch.logsumexp(torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1), dim=1)
    return (log1p_sum_exp(-alpha * (sim - base), pos) / alpha + log1p_sum_exp(beta * (sim - base), neg) / beta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["cosine-range", "large-dot"])
@pytest.mark.parametrize("pos_density,neg_density", [(0.3, 0.8), (0.02, 0.8), (0.3, 0.03), (0.0, 0.0)],
                         ids=["dense", "sparse-pos", "sparse-neg", "empty"])
def test_multi_similarity_rows_equal_logsumexp_reference(dtype, scale, pos_density, neg_density):
    """Large similarities make exp(beta (S - base)) overflow without the shift, and push many
    exponents below log(tiny) (the clamped range); some rows have no positive or no negative.
    Masks under 1/16 of the matrix take the list (sparse) path, the others the dense one."""
    g = torch.Generator().manual_seed(0)
    b, r = 12, 40
    sim = (scale * (2 * torch.rand(b, r, generator=g, dtype=torch.float64) - 1)).to(dtype).requires_grad_()
    pos = torch.rand(b, r, generator=g) < pos_density
    neg = ~pos & (torch.rand(b, r, generator=g) < neg_density)
    if pos_density:
        pos[3, :3] = True  # a row with several positives, also on the sparse path
    pos[0], neg[1], pos[2], neg[2] = False, False, False, False
    sim64 = sim.detach().double().requires_grad_()  # the reference in float64 on the same values
    for alpha, beta, base in [(2.0, 50.0, 0.5), (1.0, 5.0, -0.3)]:
        ours = FL._MultiSimilarityRows.apply(sim, pos, neg, alpha, beta, base)
        ref = reference_multi_similarity(sim64, pos, neg, alpha, beta, base)
        assert torch.isfinite(ours).all() and ours[2].item() == 0.0
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert torch.allclose(ours.double(), ref, rtol=tol, atol=tol)
        w = torch.rand(b, generator=g, dtype=torch.float64)
        g_ours, = torch.autograd.grad(ours, sim, w.to(dtype))
        g_ref, = torch.autograd.grad(ref, sim64, w)
        assert torch.allclose(g_ours.double(), g_ref, rtol=tol, atol=tol)
        assert torch.equal(g_ours[~(pos | neg)], torch.zeros_like(g_ours[~(pos | neg)]))


def test_tuple_masks_equal_index_put():
    from deepmetric.losses.base import tuple_masks
    g = torch.Generator().manual_seed(0)
    a1, p = torch.randint(0, 5, (30,), generator=g), torch.randint(0, 8, (30,), generator=g)
    a2, n = torch.randint(0, 5, (12,), generator=g), torch.randint(0, 8, (12,), generator=g)
    pos, neg = tuple_masks(Pairs(a1, p, a2, n), 5, 8)
    expected_pos = torch.zeros(5, 8, dtype=torch.bool).index_put_((a1, p), torch.tensor(True))
    expected_neg = torch.zeros(5, 8, dtype=torch.bool).index_put_((a2, n), torch.tensor(True))
    assert torch.equal(pos, expected_pos) and torch.equal(neg, expected_neg)
    pos, neg = tuple_masks(Triplets(EMPTY, EMPTY, EMPTY), 5, 8)
    assert pos.shape == (5, 8) and not pos.any() and not neg.any()


def plain_euclidean(x, y):
    """The formula of distances.euclidean, through autograd."""
    d2 = (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.T)).clamp_min(0.0)
    return torch.where(d2 > 1e-12, d2.clamp_min(1e-12).sqrt(), torch.zeros_like(d2))


def plain_cosine_similarity(x, y):
    return torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T


@pytest.mark.parametrize("name,plain", [("euclidean", plain_euclidean), ("cosine_similarity", plain_cosine_similarity),
                                        ("dot", lambda x, y: x @ y.T)])
@pytest.mark.parametrize("same", [True, False], ids=["y-is-x", "y-other"])
def test_distance_backward_equals_autograd_of_formula(name, plain, same):
    """Same values bit for bit; gradients of the hand-written backward (euclidean) or the one-product
    Gram backward (y is x) equal autograd's, with coincident and zero rows (finite, zero gradient
    where points coincide); double backward works."""
    fn = getattr(dm.distances, name)
    g = torch.Generator().manual_seed(0)
    # cosine normalises with a multiplication by rsqrt (l2_normalize): equal up to the last bit
    same_values = torch.equal if name != "cosine_similarity" else (
        lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-7))
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(7, 4, generator=g, dtype=dtype)
        x[3] = x[1]
        x[5] = 0.0
        y = x if same else torch.cat([x[:2], torch.randn(4, 4, generator=g, dtype=dtype)])
        assert same_values(fn(x, y), plain(x, y))
        xs, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
        ys, yp = (xs, xp) if same else (y.clone().requires_grad_(), y.clone().requires_grad_())
        out_s, out_p = fn(xs, ys), plain(xp, yp)
        assert same_values(out_s, out_p)
        w = torch.randn(out_s.shape, generator=g, dtype=dtype)
        params_s, params_p = ([xs], [xp]) if same else ([xs, ys], [xp, yp])
        for a, b in zip(torch.autograd.grad(out_s, params_s, w), torch.autograd.grad(out_p, params_p, w)):
            assert torch.isfinite(a).all()
            if dtype == torch.float64:
                assert torch.allclose(a, b, rtol=1e-10, atol=1e-10 if name != "cosine_similarity" else 1e-2)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = x if same else torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    inputs = (x,) if same else (x, y)
    call = (lambda a: fn(a, a)) if same else fn
    assert torch.autograd.gradcheck(call, inputs) and torch.autograd.gradgradcheck(call, inputs)


def test_euclidean_gradient_is_zero_for_coincident_points():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    d = dm.distances.euclidean(x, x)
    (grad,) = torch.autograd.grad(d[0, 1] + d[1, 0] + d[2, 2], [x])
    assert torch.equal(grad, torch.zeros_like(grad))
    x = torch.zeros(3, 2, requires_grad=True)
    dm.distances.euclidean(x, x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("pos_density", [0.02, 0.3], ids=["sparse-pos", "dense-pos"])
def test_dense_forms_accept_non_contiguous_matrices(pos_density):
    """A transposed (column-major) matrix gives the same values and gradients as a contiguous one."""
    g = torch.Generator().manual_seed(1)
    base = torch.rand(40, 12, generator=g, dtype=torch.float64)
    pos = torch.rand(12, 40, generator=g) < pos_density
    pos[0, :2] = True
    neg = ~pos & (torch.rand(12, 40, generator=g) < 0.7)
    a, p, n = random_triplets(g, 12, 40, 120, True)
    for fn in (lambda m: FL.multi_similarity_loss(m, pos, neg),
               lambda m: FL.masked_contrastive_loss(m, pos, neg, 0.2, 0.6),
               lambda m: FL.given_triplets_margin_loss(m, a, p, n, 0.3)):
        strided = base.clone().requires_grad_()
        contiguous = base.T.contiguous().requires_grad_()
        v1, v2 = fn(strided.T), fn(contiguous)
        assert not strided.T.is_contiguous() and all_close(v1, v2, 1e-12) and v2.item() > 0
        assert all_close(grads(v1, [strided])[0].T, grads(v2, [contiguous])[0], 1e-12)


def test_l2_normalize_equals_torch_normalize_with_gradients():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x[2] = 0.0
    x[4] = 1e-14  # under eps: the norm is the constant eps
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = dm.distances.l2_normalize(xa), torch.nn.functional.normalize(xb, dim=1)
    assert torch.allclose(ya, yb, rtol=1e-14, atol=0)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    ga, = torch.autograd.grad(ya, xa, w)
    gb, = torch.autograd.grad(yb, xb, w)
    assert torch.allclose(ga, gb, rtol=1e-12, atol=0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dm.distances.l2_normalize, (x,))
    assert torch.autograd.gradgradcheck(dm.distances.l2_normalize, (x,))
