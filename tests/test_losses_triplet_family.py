"""Tests of the triplet-family losses: N-pair, angular and tuplet margin.

Each is compared, in value and gradient, with a plain loop written from the paper's formula, and
with pytorch-metric-learning (NPairsLoss, AngularLoss, TupletMarginLoss) on random inputs.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

import deepmetric as dm
from deepmetric.functional import triplet_family as TF
from deepmetric.losses import AngularLoss, NPairsLoss, TupletMarginLoss
from deepmetric.tuples import Pairs, Triplets

# ----------------------------------------------------------------------------------------------
# Plain loop references
# ----------------------------------------------------------------------------------------------


def loop_pos_pairs(labels, ref_labels=None):
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels
    return [(i, j) for i in range(len(labels)) for j in range(len(ref))
            if not (same_set and i == j) and labels[i] == ref[j]]


def loop_n_pairs(x, rx, labels, pairs):
    """Sohn 2016 eq. (3): first pair of each anchor class (in the given order), then
    1/N sum_i log(1 + sum_{j != i} exp(f_i.f_j+ - f_i.f_i+))."""
    chosen, seen = [], set()
    for a, p in pairs:
        c = int(labels[a])
        if c not in seen:
            seen.add(c)
            chosen.append((a, p))
    if not chosen:
        return (x * 0).sum()
    total = 0.0
    for i, (a, p) in enumerate(chosen):
        inner = 1.0
        for j, (_, q) in enumerate(chosen):
            if j != i:
                inner = inner + torch.exp(torch.dot(x[a], rx[q]) - torch.dot(x[a], rx[p]))
        total = total + torch.log(inner)
    return total / len(chosen)


def loop_angular(x, rx, labels, ref_labels, pairs, alpha_deg):
    """Wang et al. 2017 eq. (8): per positive pair, log(1 + sum over negatives of exp(f_apn))."""
    t2 = math.tan(math.radians(alpha_deg)) ** 2
    if not pairs:
        return (x * 0).sum()
    total = 0.0
    for a, p in pairs:
        inner = 1.0
        for n in range(len(rx)):
            if ref_labels[n] != labels[a]:
                f = 4 * t2 * torch.dot(x[a] + rx[p], rx[n]) - 2 * (1 + t2) * torch.dot(x[a], rx[p])
                inner = inner + torch.exp(f)
        total = total + torch.log(inner)
    return total / len(pairs)


def cos(u, v):
    return torch.dot(u, v) / (u.norm() * v.norm())


def loop_tuplet(x, rx, pos_pairs, neg_pairs, margin_deg, scale):
    """Yu & Tao 2019 eq. (4), with acos as in the paper: per positive pair (a, p),
    log(1 + sum over the negative pairs (a, n) of exp(s (cos theta_an - cos(theta_ap - beta))))."""
    beta = math.radians(margin_deg)
    if not pos_pairs:
        return (x * 0).sum()
    total = 0.0
    for a, p in pos_pairs:
        shifted = torch.cos(torch.acos(cos(x[a], rx[p])) - beta)
        inner = 1.0
        for a2, n in neg_pairs:
            if a2 == a:
                inner = inner + torch.exp(scale * (cos(x[a], rx[n]) - shifted))
        total = total + torch.log(inner)
    return total / len(pos_pairs)


def make_batch(seed, batch=10, n_classes=3, dim=4, use_ref=False, normalize=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    rx = torch.randn(batch + 3, dim, generator=g, dtype=torch.float64) if use_ref else None
    rl = torch.randint(0, n_classes, (batch + 3,), generator=g) if use_ref else None
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
        rx = None if rx is None else torch.nn.functional.normalize(rx, dim=1)
    return x, labels, rx, rl


def random_triplets(labels, ref_labels, seed, k=25):
    """Random valid triplets, with duplicates (anchor from the batch, p and n from the reference)."""
    g = torch.Generator().manual_seed(seed)
    ref = labels if ref_labels is None else ref_labels
    out = []
    while len(out) < k:
        a = int(torch.randint(len(labels), (1,), generator=g))
        pos = [j for j in range(len(ref)) if ref[j] == labels[a] and (ref_labels is not None or j != a)]
        neg = [j for j in range(len(ref)) if ref[j] != labels[a]]
        if pos and neg:
            out.append((a, pos[int(torch.randint(len(pos), (1,), generator=g))],
                        neg[int(torch.randint(len(neg), (1,), generator=g))]))
    out += out[:3]  # duplicates count as often as given
    return out


def grads_of(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True)


def assert_close(a, b, tol=1e-9):
    assert a is not None and b is not None
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# Loop references: values and gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("mode", ["all", "triplets", "pairs"])
def test_n_pairs_matches_loop(seed, use_ref, mode):
    x, labels, rx, rl = make_batch(seed, use_ref=use_ref)
    x.requires_grad_(True)
    if rx is not None:
        rx.requires_grad_(True)
    ref_x, ref_l = (x, labels) if rx is None else (rx, rl)
    if mode == "all":
        pairs, tuples = loop_pos_pairs(labels, rl), None
    elif mode == "triplets":
        trip = random_triplets(labels, rl, seed)
        pairs = [(a, p) for a, p, _ in trip]
        tuples = Triplets(*torch.tensor(trip).T)
    else:
        trip = random_triplets(labels, rl, seed + 7)[::-1]
        pairs = [(a, p) for a, p, _ in trip]
        tuples = Pairs(torch.tensor([a for a, _ in pairs]), torch.tensor([p for _, p in pairs]),
                       torch.tensor([a for a, _, _ in trip]), torch.tensor([n for _, _, n in trip]))
    ours = NPairsLoss()(x, labels, tuples, rx, rl)
    ref = loop_n_pairs(x, ref_x, labels, pairs)
    assert_close(ours, ref)
    tensors = [x] if rx is None else [x, rx]
    for g1, g2 in zip(grads_of(ours, tensors), grads_of(ref, tensors)):
        assert_close(g1, g2)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("mode", ["all", "triplets"])
@pytest.mark.parametrize("alpha", [40.0, 55.0])
def test_angular_matches_loop(seed, use_ref, mode, alpha):
    x, labels, rx, rl = make_batch(seed, use_ref=use_ref, normalize=True)
    x.requires_grad_(True)
    if rx is not None:
        rx.requires_grad_(True)
    ref_x, ref_l = (x, labels) if rx is None else (rx, rl)
    if mode == "all":
        pairs, tuples = loop_pos_pairs(labels, rl), None
    else:
        trip = random_triplets(labels, rl, seed)
        pairs = [(a, p) for a, p, _ in trip]
        tuples = Triplets(*torch.tensor(trip).T)
    # a small block bound forces several blocks of pairs
    ours = AngularLoss(alpha=alpha, max_elements=17)(x, labels, tuples, rx, rl)
    ref = loop_angular(x, ref_x, labels, ref_l, pairs, alpha)
    assert_close(ours, ref)
    tensors = [x] if rx is None else [x, rx]
    for g1, g2 in zip(grads_of(ours, tensors), grads_of(ref, tensors)):
        assert_close(g1, g2)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("mode", ["all", "triplets", "pairs"])
@pytest.mark.parametrize("margin,scale", [(5.73, 64.0), (20.0, 3.0), (0.0, 10.0)])
def test_tuplet_margin_matches_loop(seed, use_ref, mode, margin, scale):
    x, labels, rx, rl = make_batch(seed, use_ref=use_ref)
    x.requires_grad_(True)
    if rx is not None:
        rx.requires_grad_(True)
    ref_x, ref_l = (x, labels) if rx is None else (rx, rl)
    if mode == "all":
        pos = loop_pos_pairs(labels, rl)
        neg = [(i, j) for i in range(len(labels)) for j in range(len(ref_l)) if labels[i] != ref_l[j]]
        tuples = None
    elif mode == "triplets":
        trip = random_triplets(labels, rl, seed)
        pos, neg = [(a, p) for a, p, _ in trip], [(a, n) for a, _, n in trip]
        tuples = Triplets(*torch.tensor(trip).T)
    else:
        trip = random_triplets(labels, rl, seed + 3)
        pos, neg = [(a, p) for a, p, _ in trip[:20]], [(a, n) for a, _, n in trip[5:]]
        tuples = Pairs(*(torch.tensor(v, dtype=torch.long).reshape(-1) for v in
                         ([a for a, _ in pos], [p for _, p in pos], [a for a, _ in neg], [n for _, n in neg])))
    ours = TupletMarginLoss(margin=margin, scale=scale)(x, labels, tuples, rx, rl)
    ref = loop_tuplet(x, ref_x, pos, neg, margin, scale)
    assert_close(ours, ref, 1e-8)
    tensors = [x] if rx is None else [x, rx]
    for g1, g2 in zip(grads_of(ours, tensors), grads_of(ref, tensors)):
        assert_close(g1, g2, 1e-7)


def test_n_pairs_hierarchical_labels_use_finest_level():
    x, flat, _, _ = make_batch(3, batch=12, n_classes=4)
    hier = torch.stack([flat // 2, flat % 2], dim=1)  # (coarse, fine) with fine ids recurring
    loss = NPairsLoss()
    assert_close(loss(x, hier), loss(x, flat))


def test_n_pairs_other_distances_match_loop_with_their_similarity():
    x, labels, _, _ = make_batch(5, batch=12)
    ours = NPairsLoss(distance="cosine")(x, labels)
    xn = torch.nn.functional.normalize(x, dim=1)
    assert_close(ours, loop_n_pairs(xn, xn, labels, loop_pos_pairs(labels)))
    ours = NPairsLoss(distance="squared_euclidean")(x, labels)
    chosen, seen = [], set()
    for a, p in loop_pos_pairs(labels):
        if int(labels[a]) not in seen:
            seen.add(int(labels[a]))
            chosen.append((a, p))
    total = 0.0
    for a, p in chosen:
        logits = torch.stack([-((x[a] - x[q]) ** 2).sum() for _, q in chosen])
        total += torch.logsumexp(logits, 0) + ((x[a] - x[p]) ** 2).sum()
    assert_close(ours, total / len(chosen))


# ----------------------------------------------------------------------------------------------
# pytorch-metric-learning
# ----------------------------------------------------------------------------------------------

PML = {
    "n-pairs": (lambda: NPairsLoss(), lambda: pml_losses.NPairsLoss()),
    "angular": (lambda: AngularLoss(alpha=45.0), lambda: pml_losses.AngularLoss(alpha=45)),
    "tuplet-margin": (lambda: TupletMarginLoss(margin=5.73, scale=32.0),
                      lambda: pml_losses.TupletMarginLoss(margin=5.73, scale=32)),
}


@pytest.mark.parametrize("name", sorted(PML))
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("miner", [None, "triplet-margin", "multi-similarity"])
def test_equals_pytorch_metric_learning(name, seed, miner):
    g = torch.Generator().manual_seed(100 + seed)
    raw = torch.randn(32, 8, generator=g).requires_grad_(True)
    # on L2-normalised input (pml's AngularLoss normalises its anchors and positives inside the loss;
    # through this normalisation the gradients with respect to raw agree)
    x = torch.nn.functional.normalize(raw, dim=1)
    labels = torch.randint(0, 8, (32,), generator=g)
    ours_loss, pml_loss = (f() for f in PML[name])
    if miner is None:
        ours_t = pml_t = None
    elif miner == "triplet-margin":
        pml_t = pml_miners.TripletMarginMiner(margin=0.3)(x.detach(), labels)
        ours_t = Triplets(*pml_t)
    else:
        pml_t = pml_miners.MultiSimilarityMiner(epsilon=0.2)(x.detach(), labels)
        ours_t = Pairs(*pml_t)
    ours = ours_loss(x, labels, ours_t)
    theirs = pml_loss(torch.nn.functional.normalize(raw, dim=1), labels, pml_t)
    assert float(theirs.detach()) > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(grads_of(ours, [raw]), grads_of(theirs, [raw])):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)


def test_registry_names():
    assert isinstance(dm.losses.create("n-pairs"), NPairsLoss)
    assert isinstance(dm.losses.create({"name": "angular", "alpha": 36}), AngularLoss)
    assert isinstance(dm.losses.create("tuplet-margin", scale=16), TupletMarginLoss)


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------

LOSSES = [NPairsLoss, AngularLoss, TupletMarginLoss]


def _check_connected_zero(value, x):
    assert float(value.detach()) == 0.0 and not torch.isnan(value)
    assert value.requires_grad
    (grad,) = torch.autograd.grad(value, [x])
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("cls", LOSSES)
def test_no_positives_gives_connected_zero(cls):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    _check_connected_zero(cls()(x, torch.arange(5)), x)


@pytest.mark.parametrize("cls", LOSSES)
def test_empty_tuples_give_connected_zero(cls):
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    empty = torch.empty(0, dtype=torch.long)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    _check_connected_zero(cls()(x, labels, Triplets(empty, empty, empty)), x)
    _check_connected_zero(cls()(x, labels, Pairs(empty, empty, empty, empty)), x)


@pytest.mark.parametrize("cls", [AngularLoss, TupletMarginLoss])
def test_one_class_gives_connected_zero(cls):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    _check_connected_zero(cls()(x, torch.zeros(5, dtype=torch.long)), x)


def test_n_pairs_one_class_is_one_pair_and_zero():
    # a single pair: the softmax over one logit is 1, so the loss is 0 (as in pml)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    _check_connected_zero(NPairsLoss()(x, torch.zeros(5, dtype=torch.long)), x)


@pytest.mark.parametrize("cls", LOSSES)
def test_all_equal_embeddings_are_finite(cls):
    x = torch.ones(6, 4, dtype=torch.float64).div(2.0).requires_grad_(True)
    value = cls()(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    (grad,) = torch.autograd.grad(value, [x])
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert float(value.detach()) > 0  # every negative is as close as every positive


def test_all_equal_embeddings_values():
    x = torch.ones(6, 4, dtype=torch.float64) / 2.0  # unit norm
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # n-pairs: 3 pairs, all logits equal: log 3
    assert_close(NPairsLoss()(x, labels), torch.tensor(math.log(3.0), dtype=torch.float64))
    # angular: x_a.x_n = x_a.x_p = 1, f = 8 t2 - 2 (1 + t2), 4 negatives per anchor
    t2 = math.tan(math.radians(40)) ** 2
    assert_close(AngularLoss()(x, labels), torch.tensor(math.log1p(4 * math.exp(6 * t2 - 2)), dtype=torch.float64))
    # tuplet: theta_ap = 0, cos(-beta) = cos(beta)
    b = math.radians(5.73)
    expected = math.log1p(4 * math.exp(64 * (1 - math.cos(b))))
    assert_close(TupletMarginLoss()(x, labels), torch.tensor(expected, dtype=torch.float64), 1e-7)


def test_bad_hyper_parameters_and_labels():
    with pytest.raises(ValueError, match="alpha"):
        AngularLoss(alpha=90)
    with pytest.raises(ValueError, match="alpha"):
        AngularLoss(alpha=0)
    with pytest.raises(ValueError, match="max_elements"):
        AngularLoss(max_elements=0)
    with pytest.raises(ValueError, match="margin"):
        TupletMarginLoss(margin=-1)
    with pytest.raises(ValueError, match="scale"):
        TupletMarginLoss(scale=0)
    with pytest.raises(ValueError, match="distance"):
        NPairsLoss(distance="manhattan")
    with pytest.raises(ValueError, match="multi-label"):
        NPairsLoss()(torch.randn(4, 3), torch.eye(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="tuples"):
        NPairsLoss()(torch.randn(4, 3), torch.arange(4), (torch.arange(2), torch.arange(2)))


def test_functional_checks():
    with pytest.raises(ValueError, match="square"):
        TF.n_pairs_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="alpha"):
        TF.angular_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.arange(1), torch.arange(1),
                        torch.ones(2, 2, dtype=torch.bool), alpha=2.0)


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

label_lists = st.lists(st.integers(0, 3), min_size=2, max_size=9)


def _batch(labels, seed, dup):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(len(labels), 3, generator=g, dtype=torch.float64), dim=1)
    if dup:
        x[len(labels) // 2:] = x[0]  # duplicated embeddings
    return x, torch.tensor(labels)


@settings(max_examples=30, deadline=None)
@given(labels=label_lists, seed=st.integers(0, 1000), data=st.data())
def test_batch_permutation_invariance(labels, seed, data):
    x, y = _batch(labels, seed, dup=False)
    perm = torch.tensor(data.draw(st.permutations(range(len(labels)))))
    for loss in (AngularLoss(), TupletMarginLoss()):
        assert_close(loss(x[perm], y[perm]), loss(x, y), 1e-9)
    # N-pair keeps the first pair of each class, which depends on the order; with one given pair per
    # class (indices mapped through the permutation) it is invariant
    n = len(labels) // 2 * 2
    yp = torch.arange(n // 2).repeat_interleave(2)
    a, p = torch.arange(0, n, 2), torch.arange(1, n, 2)
    sub = perm[perm < n]
    where = torch.empty(n, dtype=torch.long)
    where[sub] = torch.arange(n)  # new position of each old item
    empty = torch.empty(0, dtype=torch.long)
    assert_close(NPairsLoss()(x[sub], yp[sub], Pairs(where[a], where[p], empty, empty)),
                 NPairsLoss()(x[:n], yp, Pairs(a, p, empty, empty)), 1e-9)


@settings(max_examples=30, deadline=None)
@given(labels=label_lists, seed=st.integers(0, 1000), scale=st.floats(0.0, 30.0))
def test_finite_gradients_with_duplicates(labels, seed, scale):
    x, y = _batch(labels, seed, dup=True)
    x = (x * scale).requires_grad_(True)
    for loss in (NPairsLoss(), AngularLoss(), TupletMarginLoss()):
        value = loss(x, y)
        (grad,) = torch.autograd.grad(value, [x])
        assert torch.isfinite(value) and torch.isfinite(grad).all()


@settings(max_examples=20, deadline=None)
@given(n_classes=st.integers(2, 4), per_class=st.integers(2, 3), radius=st.floats(3.0, 10.0))
def test_perfectly_separated(n_classes, per_class, radius):
    # classes on orthogonal axes, items of a class identical
    x = torch.eye(4, dtype=torch.float64)[:n_classes].repeat_interleave(per_class, 0)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    # N-pair: with x_i.x_j+ = 0 and x_i.x_i+ = r^2 the loss is log(1 + (N-1) exp(-r^2)), -> 0
    value = NPairsLoss()(x * radius, y)
    assert_close(value, torch.tensor(math.log1p((n_classes - 1) * math.exp(-radius ** 2)), dtype=torch.float64))
    # tuplet margin: exp(s (0 - cos beta)) is negligible
    assert float(TupletMarginLoss()(x, y)) < 1e-20
    # angular: its minimum on the unit sphere for these pairs, f = -2 (1 + tan^2 alpha) for every negative
    t2 = math.tan(math.radians(40)) ** 2
    expected = math.log1p((n_classes - 1) * per_class * math.exp(-2 * (1 + t2)))
    assert_close(AngularLoss()(x, y), torch.tensor(expected, dtype=torch.float64))
    # ... and moving a positive towards a negative class raises it
    x2 = x.clone()
    x2[1] = torch.nn.functional.normalize(x2[1] + 0.3 * x2[-1], dim=0)
    assert float(AngularLoss()(x2, y)) > expected
