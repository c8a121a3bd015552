"""Tests of the pair-based losses of issue 4: binomial deviance, lifted structure (original and
generalized), margin, circle, NT-Xent, supervised contrastive, FastAP and histogram.

Each loss is compared, in value and gradient, with a plain Python loop written from the paper's
formula (float64), and with pytorch-metric-learning where it defines the same loss.
"""
from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses

import deepmetric as dm
from deepmetric.functional import losses as FL
from deepmetric.losses import (BinomialDevianceLoss, CircleLoss, FastAPLoss, GeneralizedLiftedStructureLoss,
                               HistogramLoss, LiftedStructureLoss, MarginLoss, NTXentLoss, SupConLoss)
from deepmetric.tuples import Pairs, Triplets

# ----------------------------------------------------------------------------------------------
# Plain loop references, written from the papers' formulas
# ----------------------------------------------------------------------------------------------


def norm(u):
    return torch.sqrt((u * u).sum())


def cos(u, v):
    return (u * v).sum() / (norm(u) * norm(v))


def dist_fn(distance):
    if distance == "euclidean":
        return lambda u, v: norm(u - v)
    if distance == "squared_euclidean":
        return lambda u, v: ((u - v) ** 2).sum()
    if distance == "cosine":
        return lambda u, v: 1 - cos(u, v)
    raise AssertionError(distance)


def sim_fn(distance):
    return cos if distance == "cosine" else (lambda u, v: (u * v).sum())


def loop_pairs(labels, ref_labels=None):
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels
    pos, neg = [], []
    for i in range(len(labels)):
        for j in range(len(ref)):
            if same_set and i == j:
                continue
            (pos if labels[i] == ref[j] else neg).append((i, j))
    return pos, neg


def mean(terms, zero):
    return sum(terms, zero) / max(len(terms), 1)


def mean_nonzero(terms, zero):
    nonzero = [t for t in terms if t > 0]
    return sum(nonzero, zero) / max(len(nonzero), 1)


def ref_binomial(x, rx, pos, neg, same_set, alpha=2.0, beta=0.5, cost=25.0, distance="cosine"):
    s, zero = sim_fn(distance), x.sum() * 0
    pos_terms = [torch.log(1 + torch.exp(-alpha * (s(x[i], rx[j]) - beta))) for i, j in pos]
    neg_terms = [torch.log(1 + torch.exp(alpha * cost * (s(x[i], rx[j]) - beta))) for i, j in neg]
    return mean(pos_terms, zero) + mean(neg_terms, zero)


def ref_lifted(x, rx, pos, neg, same_set, neg_margin=1.0, pos_margin=0.0, distance="euclidean"):
    d, zero = dist_fn(distance), x.sum() * 0
    terms = []
    for i, j in pos:
        total = zero
        for a, k in neg:
            if a == i:
                total = total + torch.exp(neg_margin - d(x[i], rx[k]))
            if same_set and a == j:  # negatives of j: row j
                total = total + torch.exp(neg_margin - d(x[j], rx[k]))
            if not same_set and k == j:  # negatives of reference item j: the batch items (a, j)
                total = total + torch.exp(neg_margin - d(x[a], rx[j]))
        if total > 0:
            big_j = torch.log(total) + d(x[i], rx[j]) - pos_margin
            terms.append(torch.clamp(big_j, min=0) ** 2 / 2)
        else:
            terms.append(zero)
    return mean(terms, zero)


def ref_generalized_lifted(x, rx, pos, neg, same_set, neg_margin=1.0, pos_margin=0.0, distance="euclidean"):
    d, zero = dist_fn(distance), x.sum() * 0
    losses = []
    for i in range(len(x)):
        p = [torch.exp(d(x[i], rx[j]) - pos_margin) for a, j in pos if a == i]
        n = [torch.exp(neg_margin - d(x[i], rx[k])) for a, k in neg if a == i]
        if p and n:
            losses.append(torch.clamp(torch.log(sum(p)) + torch.log(sum(n)), min=0))
        else:
            losses.append(zero)
    return mean(losses, zero)


def ref_margin(x, rx, triplets, beta_of, margin=0.2, nu=0.0, per_class=False, distance="euclidean"):
    """``beta_of(a)``: the beta of anchor a. Every triplet gives a positive and a negative term."""
    d, zero = dist_fn(distance), x.sum() * 0
    total, count, reg = zero, 0, zero
    for a, p, n in triplets:
        pos = torch.clamp(d(x[a], rx[p]) - beta_of(a) + margin, min=0)
        neg = torch.clamp(beta_of(a) - d(x[a], rx[n]) + margin, min=0)
        total = total + pos + neg
        count += int(pos > 0) + int(neg > 0)
        reg = reg + beta_of(a)
    if not triplets:
        return zero
    value = total / max(count, 1)
    if nu:
        value = value + nu * ((reg / count if count else zero) if per_class else beta_of(0))
    return value


def ref_circle(x, rx, pos, neg, same_set, m=0.4, gamma=80.0, distance="cosine", reduction="mean_nonzero"):
    s, zero = sim_fn(distance), x.sum() * 0
    losses = []
    for i in range(len(x)):
        lp, ln = [], []
        for a, j in pos:
            if a == i:
                sp = s(x[i], rx[j])
                lp.append(-gamma * torch.clamp(1 + m - sp.detach(), min=0) * (sp - (1 - m)))
        for a, k in neg:
            if a == i:
                sn = s(x[i], rx[k])
                ln.append(gamma * torch.clamp(sn.detach() + m, min=0) * (sn - m))
        if lp and ln:  # log(1 + sum_n exp(.) sum_p exp(.)), as a softplus of the two logsumexps
            inner = torch.logsumexp(torch.stack(lp), 0) + torch.logsumexp(torch.stack(ln), 0)
            losses.append(torch.log1p(torch.exp(inner)))
        else:
            losses.append(zero)
    return mean_nonzero(losses, zero) if reduction == "mean_nonzero" else mean(losses, zero)


def ref_nt_xent(x, rx, pos, neg, same_set, temperature=0.07, distance="cosine"):
    s, zero = sim_fn(distance), x.sum() * 0
    terms = []
    for i, j in pos:
        num = torch.exp(s(x[i], rx[j]) / temperature)
        den = num + sum((torch.exp(s(x[i], rx[k]) / temperature) for a, k in neg if a == i), zero)
        terms.append(-torch.log(num / den))
    return mean(terms, zero)


def ref_supcon(x, rx, pos, neg, same_set, temperature=0.1, distance="cosine"):
    s, zero = sim_fn(distance), x.sum() * 0
    losses = []
    for i in range(len(x)):
        p = [j for a, j in pos if a == i]
        others = p + [k for a, k in neg if a == i]
        if not p:
            losses.append(zero)
            continue
        den = sum(torch.exp(s(x[i], rx[k]) / temperature) for k in others)
        losses.append(-sum(torch.log(torch.exp(s(x[i], rx[j]) / temperature) / den) for j in p) / len(p))
    return mean_nonzero(losses, zero)


def ref_fast_ap(x, rx, pos, neg, same_set, num_bins=10, max_distance=4.0):
    d, zero = dist_fn("squared_euclidean"), x.sum() * 0
    delta = max_distance / num_bins
    losses = []
    for q in range(len(x)):
        p = [j for a, j in pos if a == q]
        if not p:
            continue
        everyone = p + [k for a, k in neg if a == q]
        ap, cum_pos, cum_all = zero, zero, zero
        for b in range(num_bins + 1):
            z = b * delta
            h_pos = sum((torch.clamp(1 - torch.abs(d(x[q], rx[j]) - z) / delta, min=0) for j in p), zero)
            h_all = sum((torch.clamp(1 - torch.abs(d(x[q], rx[j]) - z) / delta, min=0) for j in everyone), zero)
            cum_pos, cum_all = cum_pos + h_pos, cum_all + h_all
            if h_pos * cum_pos > 0:
                ap = ap + h_pos * cum_pos / cum_all
        losses.append(1 - ap / len(p))
    return mean(losses, zero)


def ref_histogram(x, rx, pos, neg, same_set, num_bins=100):
    zero = x.sum() * 0
    if not pos or not neg:
        return zero
    delta = 2.0 / num_bins

    def hist(pairs):
        h = []
        for r in range(num_bins + 1):
            t = -1 + r * delta
            h.append(sum((torch.clamp(1 - torch.abs(cos(x[i], rx[j]) - t) / delta, min=0) for i, j in pairs), zero)
                     / len(pairs))
        return h

    h_pos, h_neg = hist(pos), hist(neg)
    value, phi = zero, zero
    for r in range(num_bins + 1):
        phi = phi + h_pos[r]
        value = value + h_neg[r] * phi
    return value


# name, kwargs, loop reference (called with the same kwargs), accepts tuples
CASES = [
    ("binomial-deviance", dict(), ref_binomial),
    ("binomial-deviance", dict(alpha=3.0, beta=0.2, cost=5.0, distance="dot"), ref_binomial),
    ("lifted-structure", dict(), ref_lifted),
    ("lifted-structure", dict(neg_margin=0.5, pos_margin=0.1, distance="squared_euclidean"), ref_lifted),
    ("generalized-lifted-structure", dict(), ref_generalized_lifted),
    ("generalized-lifted-structure", dict(neg_margin=0.3, pos_margin=0.2, distance="cosine"), ref_generalized_lifted),
    ("circle", dict(), ref_circle),
    ("circle", dict(m=0.25, gamma=32.0, distance="dot", reduction="mean"), ref_circle),
    ("nt-xent", dict(), ref_nt_xent),
    ("nt-xent", dict(temperature=0.5, distance="dot"), ref_nt_xent),
    ("supervised-contrastive", dict(), ref_supcon),
    ("supervised-contrastive", dict(temperature=0.3, distance="dot"), ref_supcon),
    ("fast-ap", dict(), ref_fast_ap),
    ("fast-ap", dict(num_bins=7, max_distance=3.0), ref_fast_ap),
    ("histogram", dict(), ref_histogram),
    ("histogram", dict(num_bins=9), ref_histogram),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


def call_ref(ref, x, rx, pos, neg, same_set, kwargs):
    """The loop reference with the keyword arguments it takes (the loss's own, e.g. no distance)."""
    params = inspect.signature(ref).parameters
    return ref(x, rx, pos, neg, same_set, **{k: v for k, v in kwargs.items() if k in params})


def make_batch(seed, batch, n_classes=3, dim=4, use_ref=False, dtype=torch.float64, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(batch, dim, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    if not use_ref:
        return g, x, labels, None, None
    rx = (scale * torch.randn(batch + 3, dim, generator=g, dtype=dtype)).requires_grad_()
    ref_labels = torch.randint(0, n_classes, (batch + 3,), generator=g)
    return g, x, labels, rx, ref_labels


def grads(value, tensors):
    out = torch.autograd.grad(value, tensors, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(out, tensors)]


def all_close(a, b, tol=1e-9):
    return torch.allclose(a, b, rtol=tol, atol=tol)


def inputs_for(name, x):
    """FastAP's histogram covers [0, 4]: L2-normalised embeddings (as the model head gives)."""
    return torch.nn.functional.normalize(x, dim=1) if name == "fast-ap" else x


# ----------------------------------------------------------------------------------------------
# Against the loops: values and gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs,ref", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference(name, kwargs, ref, use_ref, seed):
    g, x0, labels, rx0, ref_labels = make_batch(seed, 9, use_ref=use_ref)
    leaves = [x0] if rx0 is None else [x0, rx0]
    x = inputs_for(name, x0)
    rx = x if rx0 is None else inputs_for(name, rx0)
    loss = dm.losses.create(name, **kwargs)
    value = loss(x, labels, None, *([] if rx0 is None else [rx, ref_labels]))
    pos, neg = loop_pairs(labels.tolist(), None if rx0 is None else ref_labels.tolist())
    expected = call_ref(ref, x, rx, pos, neg, rx0 is None, kwargs)
    assert expected.item() > 0  # the case is not trivial
    assert all_close(value, expected), (value.item(), expected.item())
    for got, want in zip(grads(value, leaves), grads(expected, leaves)):
        assert all_close(got, want, 1e-8)


TUPLE_CASES = [c for c in CASES if c[0] != "fast-ap"]


@pytest.mark.parametrize("name,kwargs,ref", TUPLE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TUPLE_CASES)])
@pytest.mark.parametrize("kind", ["pairs", "triplets"])
def test_given_tuples_match_loop_on_their_pairs(name, kwargs, ref, kind):
    """Given tuples select pairs (each once, duplicates included in the input)."""
    g, x, labels, _, _ = make_batch(3, 10)
    pos, neg = loop_pairs(labels.tolist())
    pick_pos = [pos[i] for i in torch.randperm(len(pos), generator=g)[: len(pos) // 2 + 1].tolist()]
    pick_neg = [neg[i] for i in torch.randperm(len(neg), generator=g)[: len(neg) // 2 + 1].tolist()]
    if kind == "pairs":
        given = pick_pos + pick_pos[:2], pick_neg + pick_neg[:3]  # duplicates
        tuples = Pairs(torch.tensor([a for a, _ in given[0]]), torch.tensor([p for _, p in given[0]]),
                       torch.tensor([a for a, _ in given[1]]), torch.tensor([n for _, n in given[1]]))
        tpos, tneg = sorted(set(pick_pos)), sorted(set(pick_neg))
    else:
        trip = [(a, p, n) for a, p in pick_pos for a2, n in pick_neg if a == a2]
        assert trip
        tuples = Triplets(*(torch.tensor(c) for c in zip(*trip)))
        tpos, tneg = sorted({(a, p) for a, p, _ in trip}), sorted({(a, n) for a, _, n in trip})
    value = dm.losses.create(name, **kwargs)(x, labels, tuples)
    expected = call_ref(ref, x, x, tpos, tneg, True, kwargs)
    assert expected.item() > 0
    assert all_close(value, expected), (value.item(), expected.item())
    assert all_close(grads(value, [x])[0], grads(expected, [x])[0], 1e-8)


MARGIN_CASES = [
    dict(),
    dict(margin=0.5, beta=0.8, distance="squared_euclidean"),
    dict(margin=0.1, beta=0.3, learn_beta=True, nu=0.1, distance="cosine"),
    dict(beta=1.0, learn_beta=True, nu=0.05, num_classes=3),
    dict(beta=1.0, num_classes=3),
]


def margin_beta_of(loss, labels):
    beta = loss.beta
    if beta.dim():
        return lambda a: beta[labels[a]]
    return lambda a: beta


@pytest.mark.parametrize("kwargs", MARGIN_CASES)
@pytest.mark.parametrize("mode", ["all", "all-ref", "triplets", "pairs"])
def test_margin_matches_loop_over_triplets(kwargs, mode):
    use_ref = mode == "all-ref"
    g, x, labels, rx, ref_labels = make_batch(5, 10, use_ref=use_ref)
    loss = MarginLoss(**kwargs).double()
    if loss.beta.dim():  # distinct per-class betas, so that the class lookup matters
        with torch.no_grad():
            loss.beta.add_(torch.tensor([0.0, 0.3, -0.2], dtype=torch.float64))
    rx_ = x if rx is None else rx
    pos, neg = loop_pairs(labels.tolist(), None if rx is None else ref_labels.tolist())
    args = [] if rx is None else [rx, ref_labels]
    if mode in ("all", "all-ref"):
        triplets = [(a, p, n) for a, p in pos for a2, n in neg if a == a2]
        value = loss(x, labels, None, *args)
    elif mode == "triplets":
        all_t = [(a, p, n) for a, p in pos for a2, n in neg if a == a2]
        idx = torch.randint(0, len(all_t), (40,), generator=g).tolist()  # with duplicates
        triplets = [all_t[i] for i in idx]
        value = loss(x, labels, Triplets(*(torch.tensor(c) for c in zip(*triplets))))
    else:
        pp = [pos[i] for i in torch.randint(0, len(pos), (12,), generator=g).tolist()]
        nn_ = [neg[i] for i in torch.randint(0, len(neg), (20,), generator=g).tolist()]
        triplets = [(a, p, n) for a, p in pp for a2, n in nn_ if a == a2]  # pml's convert_to_triplets
        value = loss(x, labels, Pairs(torch.tensor([a for a, _ in pp]), torch.tensor([p for _, p in pp]),
                                      torch.tensor([a for a, _ in nn_]), torch.tensor([n for _, n in nn_])))
    expected = ref_margin(x, rx_, triplets, margin_beta_of(loss, labels), loss.margin,
                          loss.nu if loss.learn_beta else 0.0, bool(loss.num_classes), loss.distance)
    assert expected.item() > 0
    assert all_close(value, expected), (value.item(), expected.item())
    leaves = [x] + ([rx] if rx is not None else []) + ([loss.beta] if loss.learn_beta else [])
    for got, want in zip(grads(value, leaves), grads(expected, leaves)):
        assert all_close(got, want, 1e-8)


# ----------------------------------------------------------------------------------------------
# Equality with pytorch-metric-learning
# ----------------------------------------------------------------------------------------------


def pml_lp(power=1):
    return pml_distances.LpDistance(normalize_embeddings=False, p=2, power=power)


PML_CASES = [
    ("lifted-structure", dict(neg_margin=1.0, pos_margin=0.0),
     lambda: pml_losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, distance=pml_lp())),
    ("lifted-structure", dict(neg_margin=0.4, pos_margin=0.2, distance="squared_euclidean"),
     lambda: pml_losses.LiftedStructureLoss(neg_margin=0.4, pos_margin=0.2, distance=pml_lp(2))),
    ("generalized-lifted-structure", dict(neg_margin=1.0, pos_margin=0.0),
     lambda: pml_losses.GeneralizedLiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, distance=pml_lp())),
    ("margin", dict(margin=0.2, beta=1.2),
     lambda: pml_losses.MarginLoss(margin=0.2, beta=1.2, triplets_per_anchor="all", distance=pml_lp())),
    ("margin", dict(margin=0.1, beta=0.9, nu=0.1, learn_beta=True),
     lambda: pml_losses.MarginLoss(margin=0.1, beta=0.9, nu=0.1, learn_beta=True, triplets_per_anchor="all",
                                   distance=pml_lp())),
    ("margin", dict(margin=0.2, beta=1.0, nu=0.2, learn_beta=True, num_classes=6),
     lambda: pml_losses.MarginLoss(margin=0.2, beta=1.0, nu=0.2, learn_beta=True, num_classes=6,
                                   triplets_per_anchor="all", distance=pml_lp())),
    ("circle", dict(m=0.4, gamma=80.0), lambda: pml_losses.CircleLoss(m=0.4, gamma=80)),
    ("circle", dict(m=0.25, gamma=256.0), lambda: pml_losses.CircleLoss(m=0.25, gamma=256)),
    ("nt-xent", dict(temperature=0.07), lambda: pml_losses.NTXentLoss(temperature=0.07)),
    ("nt-xent", dict(temperature=0.5), lambda: pml_losses.NTXentLoss(temperature=0.5)),
    ("supervised-contrastive", dict(temperature=0.1), lambda: pml_losses.SupConLoss(temperature=0.1)),
    ("supervised-contrastive", dict(temperature=0.5), lambda: pml_losses.SupConLoss(temperature=0.5)),
    ("fast-ap", dict(num_bins=10), lambda: pml_losses.FastAPLoss(num_bins=10)),
    ("fast-ap", dict(num_bins=25), lambda: pml_losses.FastAPLoss(num_bins=25)),
    ("histogram", dict(num_bins=100), lambda: pml_losses.HistogramLoss(n_bins=100)),
    ("histogram", dict(num_bins=20), lambda: pml_losses.HistogramLoss(n_bins=20)),
]
PML_IDS = [f"{c[0]}-{i}" for i, c in enumerate(PML_CASES)]


def four_per_class(seed, n_classes=6, dim=8, dtype=torch.float32):
    """Every item has positives and negatives (where the libraries' conventions for anchors
    without one differ, see the docstrings)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(4)[torch.randperm(4 * n_classes, generator=g)]
    x = torch.nn.functional.normalize(torch.randn(4 * n_classes, dim, generator=g, dtype=dtype), dim=1)
    return x, labels


@pytest.mark.parametrize("name,kwargs,make_pml", PML_CASES, ids=PML_IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pml(name, kwargs, make_pml, seed):
    x, labels = four_per_class(seed)
    ours, theirs = dm.losses.create(name, **kwargs), make_pml()
    # through a normalisation of the leaves: pml's FastAP normalises inside its distance
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = ours(torch.nn.functional.normalize(x1, dim=1), labels)
    b = theirs(torch.nn.functional.normalize(x2, dim=1), labels)
    assert b.item() > 0
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a.item(), b.item())
    a.backward()
    b.backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    if kwargs.get("learn_beta"):
        assert torch.allclose(ours.beta.grad, theirs.beta.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,kwargs,make_pml",
                         [c for c in PML_CASES if c[0] in ("lifted-structure", "circle", "nt-xent",
                                                           "supervised-contrastive", "margin")][::2])
def test_given_pairs_equal_pml(name, kwargs, make_pml):
    """Duplicate-free given pairs: the same pairs in both libraries."""
    x, labels = four_per_class(4)
    pos, neg = loop_pairs(labels.tolist())
    g = torch.Generator().manual_seed(0)
    pp = [pos[i] for i in torch.randperm(len(pos), generator=g)[:30].tolist()]
    nn_ = [neg[i] for i in torch.randperm(len(neg), generator=g)[:200].tolist()]
    tup = (torch.tensor([a for a, _ in pp]), torch.tensor([p for _, p in pp]),
           torch.tensor([a for a, _ in nn_]), torch.tensor([n for _, n in nn_]))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = dm.losses.create(name, **kwargs)(x1, labels, Pairs(*tup))
    b = make_pml()(x2, labels, tup)
    assert b.item() > 0
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a.item(), b.item())
    a.backward()
    b.backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_margin_given_triplets_equal_pml():
    x, labels = four_per_class(5)
    g = torch.Generator().manual_seed(1)
    a, p, n = (torch.randint(0, len(x), (300,), generator=g) for _ in range(3))
    keep = (labels[a] == labels[p]) & (a != p) & (labels[a] != labels[n])
    a, p, n = a[keep], p[keep], n[keep]
    assert a.numel() > 5
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    v1 = MarginLoss(margin=0.2, beta=0.9)(x1, labels, Triplets(a, p, n))
    v2 = pml_losses.MarginLoss(margin=0.2, beta=0.9, distance=pml_lp())(x2, labels, (a, p, n))
    assert torch.allclose(v1, v2, rtol=1e-5, atol=1e-6)
    v1.backward()
    v2.backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Edge cases: no pair, one class, all-equal embeddings
# ----------------------------------------------------------------------------------------------

ALL = [(name, kwargs) for name, kwargs, _ in CASES] + [("margin", dict()), ("margin", dict(learn_beta=True, nu=0.1))]
ALL_IDS = [f"{c[0]}-{i}" for i, c in enumerate(ALL)]
EMPTY = torch.empty(0, dtype=torch.long)
NEEDS_BOTH = {"lifted-structure", "generalized-lifted-structure", "circle", "nt-xent", "margin", "histogram"}


def assert_connected_zero(value, x):
    assert value.dim() == 0 and value.item() == 0.0 and value.requires_grad
    (grad,) = torch.autograd.grad(value, [x], retain_graph=True)
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("name,kwargs", ALL, ids=ALL_IDS)
def test_no_pair_gives_connected_zero(name, kwargs):
    loss = dm.losses.create(name, **kwargs)
    x = torch.randn(6, 3, dtype=torch.float64)
    if name == "fast-ap":  # FastAP takes unit vectors only
        x = torch.nn.functional.normalize(x, dim=1)
    x.requires_grad_()
    assert_connected_zero(loss(x[:1], torch.tensor([0])), x)
    if name != "fast-ap":
        labels = torch.tensor([0, 1, 0, 1, 2, 2])
        assert_connected_zero(loss(x, labels, Pairs(EMPTY, EMPTY, EMPTY, EMPTY)), x)
        assert_connected_zero(loss(x, labels, Triplets(EMPTY, EMPTY, EMPTY)), x)


@pytest.mark.parametrize("name,kwargs", ALL, ids=ALL_IDS)
def test_no_positive_and_one_class(name, kwargs):
    """All labels distinct (no positive) and all one class (no negative): zero where the loss
    needs both sides; otherwise the value of the one side there is, finite."""
    loss = dm.losses.create(name, **kwargs)
    x = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1).requires_grad_()
    distinct, one = loss(x, torch.arange(6)), loss(x, torch.zeros(6, dtype=torch.long))
    if name in NEEDS_BOTH or name in ("supervised-contrastive", "fast-ap"):
        assert_connected_zero(distinct, x)
    if name in NEEDS_BOTH:
        assert_connected_zero(one, x)
    if name == "fast-ap" and not kwargs:  # every other item relevant (all within [0, 4]): AP = 1
        assert one.item() == pytest.approx(0.0, abs=1e-12)
    if name == "binomial-deviance":  # only one side of the paper's W-weighted sum
        pos, neg = loop_pairs(list(range(6)))
        assert all_close(distinct, ref_binomial(x, x, pos, neg, True, **kwargs))
        pos, neg = loop_pairs([0] * 6)
        assert all_close(one, ref_binomial(x, x, pos, neg, True, **kwargs))
    for value in (distinct, one):
        assert torch.isfinite(value) and torch.isfinite(grads(value, [x])[0]).all()


@pytest.mark.parametrize("name,kwargs", ALL, ids=ALL_IDS)
def test_all_equal_embeddings_are_finite(name, kwargs):
    x = torch.ones(8, 4, dtype=torch.float64).mul_(0.5).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    value = dm.losses.create(name, **kwargs)(x, labels)
    (grad,) = torch.autograd.grad(value, [x])
    assert torch.isfinite(value) and torch.isfinite(grad).all()


# ----------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ----------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(case=st.sampled_from(ALL), labels=st.lists(st.integers(0, 2), min_size=2, max_size=10),
       seed=st.integers(0, 2 ** 16), data=st.data())
def test_batch_permutation_invariance(case, labels, seed, data):
    name, kwargs = case
    labels = torch.tensor(labels)
    x = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = inputs_for(name, x)
    perm = torch.tensor(data.draw(st.permutations(range(len(labels)))))
    loss = dm.losses.create(name, **kwargs)
    assert all_close(loss(x, labels), loss(x[perm], labels[perm]))


@settings(max_examples=30, deadline=None)
@given(case=st.sampled_from(ALL), rows=st.lists(st.integers(0, 2), min_size=2, max_size=10),
       labels=st.lists(st.integers(0, 2), min_size=10, max_size=10), seed=st.integers(0, 2 ** 16))
def test_finite_gradients_with_duplicate_embeddings(case, rows, labels, seed):
    """Embeddings drawn from at most three distinct rows (all equal when ``rows`` is constant)."""
    name, kwargs = case
    distinct = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
    x = distinct[torch.tensor(rows)].clone().requires_grad_()
    value = dm.losses.create(name, **kwargs)(inputs_for(name, x), torch.tensor(labels[:len(rows)]))
    (grad,) = torch.autograd.grad(value, [x])
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def separated(labels, noise, seed, scale):
    """Class c at scale * e_c (one-hot), items jitter by at most noise / 2 per coordinate."""
    jitter = noise * (torch.rand(len(labels), 4, generator=torch.Generator().manual_seed(seed),
                                 dtype=torch.float64) - 0.5)
    return (scale * torch.eye(4, dtype=torch.float64)[labels] + jitter).requires_grad_()


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=2, max_size=12), noise=st.floats(0.0, 0.01),
       seed=st.integers(0, 2 ** 16),
       case=st.sampled_from([("lifted-structure", dict(), 10.0), ("generalized-lifted-structure", dict(), 10.0),
                             ("margin", dict(), 10.0), ("margin", dict(beta=0.5, margin=0.3), 1.0),
                             ("fast-ap", dict(), 1.0), ("histogram", dict(), 1.0)]))
# distances so small that some round to exactly 0: FastAP's derivative there used to lose a node
@example(labels=[0, 0], noise=1e-9, seed=0, case=("fast-ap", dict(), 1.0))
def test_zero_loss_on_perfectly_separated_embeddings(labels, noise, seed, case):
    name, kwargs, scale = case
    labels = torch.tensor(labels)
    x = separated(labels, noise, seed, scale)
    value = dm.losses.create(name, **kwargs)(inputs_for(name, x), labels)
    (grad,) = torch.autograd.grad(value, [x])
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=2, max_size=12), seed=st.integers(0, 2 ** 16),
       name=st.sampled_from(["binomial-deviance", "circle", "nt-xent", "supervised-contrastive"]))
def test_minimal_loss_on_perfectly_separated_embeddings(labels, seed, name):
    """Cosine losses without a zero: at s_p = 1, s_n = 0 they reach the formula's floor
    (binomial deviance: log(1 + e^-1) with positives; circle and NT-Xent: ~0; SupCon: log|P_i|)."""
    labels = torch.tensor(labels)
    x = separated(labels, 0.0, seed, 1.0)
    value = dm.losses.create(name)(x, labels).item()
    pos, neg = loop_pairs(labels.tolist())
    if name == "binomial-deviance":
        expected = math.log1p(math.exp(-1.0)) if pos else 0.0
        assert value == pytest.approx(expected, abs=1e-9)
    elif name == "supervised-contrastive":
        counts = [sum(1 for a, _ in pos if a == i) for i in range(len(labels))]
        floors = [math.log(c) for c in counts if c]
        has_nonzero = [c for c in counts if c and (c > 1 or neg)]
        expected = sum(floors) / max(len(has_nonzero), 1)
        assert value == pytest.approx(expected, abs=1e-3)
    else:
        assert 0.0 <= value < 1e-4


# ----------------------------------------------------------------------------------------------
# Bounded memory at B = 1,200
# ----------------------------------------------------------------------------------------------


def test_b1200_contrastive_family_runs_in_bounded_memory():
    """NT-Xent, SupCon and lifted structure at B = 1,200, D = 128 (300 classes of 4) in a fresh
    process: finite values and gradients, peak RSS well below 2 GiB (pytorch-metric-learning's
    pair-by-pair tensors for NT-Xent and lifted structure would be (P x N) = 3,600 x 1.4M)."""
    script = textwrap.dedent("""
        import json, resource, torch, deepmetric as dm
        g = torch.Generator().manual_seed(0)
        x = torch.nn.functional.normalize(torch.randn(1200, 128, generator=g), dim=1).requires_grad_()
        labels = torch.arange(300).repeat_interleave(4)
        out = {}
        for name in ["nt-xent", "supervised-contrastive", "lifted-structure", "generalized-lifted-structure"]:
            x.grad = None
            value = dm.losses.create(name)(x, labels)
            value.backward()
            out[name] = [value.item(), bool(torch.isfinite(x.grad).all())]
        out["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ["nt-xent", "supervised-contrastive", "lifted-structure", "generalized-lifted-structure"]:
        value, finite = result[name]
        assert math.isfinite(value) and value > 0 and finite
    assert result["max_rss_kib"] < 2 * 1024 ** 2, result["max_rss_kib"]


# ----------------------------------------------------------------------------------------------
# Functional core, registry, hyper-parameters, errors
# ----------------------------------------------------------------------------------------------


def test_functional_hand_worked_values():
    # NT-Xent: one anchor, one positive (s = 0), one negative (s = 0): -log(1/2)
    sim = torch.tensor([[0.0, 0.0]])
    pos, neg = torch.tensor([[True, False]]), torch.tensor([[False, True]])
    assert FL.nt_xent_loss(sim, pos, neg, temperature=1.0).item() == pytest.approx(math.log(2))
    # SupCon, same: -log(1/2)
    assert FL.supervised_contrastive_loss(sim, pos, neg, temperature=1.0).item() == pytest.approx(math.log(2))
    # histogram: a positive at s = -1 and a negative at s = 1: the negative is surely more similar
    sim = torch.tensor([[-1.0, 1.0]])
    assert FL.histogram_loss(sim, pos, neg, num_bins=4).item() == pytest.approx(1.0)
    assert FL.histogram_loss(-sim, pos, neg, num_bins=4).item() == pytest.approx(0.0)
    # lifted: D_pos = 1, one negative at D = 1 on the anchor's side only (same_set=False, column
    # of the positive empty): J = log(exp(1 - 1)) + 1 = 1 -> 1/2
    dist = torch.tensor([[1.0, 1.0]])
    assert FL.lifted_structure_loss(dist, pos, neg, same_set=False).item() == pytest.approx(0.5)
    # margin: D_ap = 0.5, D_an = 1.0, beta = 1.0, alpha = 0.2: pos term 0, neg term 0.2 -> 0.2 / 1
    dist = torch.tensor([[0.5, 1.0]])
    v = FL.margin_loss(dist, pos.double().float(), neg.float(), torch.tensor(1.0), margin=0.2)
    assert v.item() == pytest.approx(0.2)
    # FastAP: a positive at distance 0 and a negative at distance 4: AP = 1
    dist = torch.tensor([[0.0, 4.0]])
    assert FL.fast_ap_loss(dist, pos, neg).item() == pytest.approx(0.0)
    assert FL.fast_ap_loss(dist.flip(1), pos, neg).item() == pytest.approx(0.5)  # the positive ranks 2nd


def test_masked_logsumexp_empty_rows_have_zero_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    value, has = FL.masked_logsumexp(x, mask)
    assert has.tolist() == [True, False, True]
    assert torch.allclose(value[0], torch.logsumexp(x[0, [0, 2]], 0)) and value[1].item() == 0.0
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[1], torch.zeros(4))


def test_registry_names_and_classes():
    expected = {"binomial-deviance": BinomialDevianceLoss, "lifted-structure": LiftedStructureLoss,
                "generalized-lifted-structure": GeneralizedLiftedStructureLoss, "margin": MarginLoss,
                "circle": CircleLoss, "nt-xent": NTXentLoss, "supervised-contrastive": SupConLoss,
                "fast-ap": FastAPLoss, "histogram": HistogramLoss}
    for name, cls in expected.items():
        assert name in dm.losses.names() and type(dm.losses.create(name)) is cls
    assert dm.losses.create("fast-ap").distance == "squared_euclidean"
    assert dm.losses.create("histogram").distance == "cosine"


def test_margin_beta_is_a_parameter_only_when_learned():
    assert [n for n, _ in MarginLoss(learn_beta=True).named_parameters()] == ["beta"]
    assert MarginLoss(learn_beta=True, num_classes=5).beta.shape == (5,)
    assert list(MarginLoss().parameters()) == [] and "beta" in dict(MarginLoss().named_buffers())
    for name in ["binomial-deviance", "lifted-structure", "circle", "nt-xent", "supervised-contrastive",
                 "fast-ap", "histogram"]:
        assert list(dm.losses.create(name).parameters()) == []


def test_margin_per_class_beta_learns_per_class():
    x, labels = four_per_class(0, n_classes=3)
    loss = MarginLoss(learn_beta=True, num_classes=5, nu=0.1)
    loss(x, labels).backward()
    assert loss.beta.grad[:3].abs().min() > 0 and torch.equal(loss.beta.grad[3:], torch.zeros(2))


@pytest.mark.parametrize("make,message", [
    (lambda: BinomialDevianceLoss(alpha=0), "alpha"),
    (lambda: BinomialDevianceLoss(cost=-1.0), "cost"),
    (lambda: BinomialDevianceLoss(distance="euclidean"), "distance"),
    (lambda: LiftedStructureLoss(neg_margin=float("nan")), "neg_margin"),
    (lambda: LiftedStructureLoss(distance="dot"), "distance"),
    (lambda: GeneralizedLiftedStructureLoss(pos_margin="1"), "pos_margin"),
    (lambda: MarginLoss(margin=-0.1), "margin"),
    (lambda: MarginLoss(nu=-1), "nu"),
    (lambda: MarginLoss(num_classes=0), "num_classes"),
    (lambda: MarginLoss(learn_beta="yes"), "learn_beta"),
    (lambda: CircleLoss(gamma=0), "gamma"),
    (lambda: CircleLoss(m=-0.1), "m"),
    (lambda: NTXentLoss(temperature=0), "temperature"),
    (lambda: SupConLoss(temperature=-1), "temperature"),
    (lambda: FastAPLoss(num_bins=0), "num_bins"),
    (lambda: FastAPLoss(num_bins=2.5), "num_bins"),
    (lambda: FastAPLoss(max_distance=0), "max_distance"),
    (lambda: HistogramLoss(num_bins=True), "num_bins"),
    (lambda: NTXentLoss(reduction="avg"), "reduction"),
])
def test_bad_hyper_parameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_calls_raise_clear_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="num_classes"):
        MarginLoss(num_classes=2)(x, torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="flat"):
        MarginLoss(num_classes=2)(x, torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]))
    with pytest.raises(ValueError, match="tuples"):
        FastAPLoss()(x, torch.tensor([0, 0, 1, 1]), Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="both as a positive and as a negative"):
        NTXentLoss()(x, torch.tensor([0, 0, 1, 1]), Pairs(torch.tensor([0]), torch.tensor([1]),
                                                         torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(ValueError):
        CircleLoss()(torch.full((4, 3), float("nan")), torch.tensor([0, 0, 1, 1]))


def test_multilabel_and_hierarchical_labels_use_relation_masks():
    x = torch.randn(6, 3, dtype=torch.float64)
    flat = torch.tensor([0, 0, 1, 1, 2, 2])
    hier = torch.stack([torch.tensor([0, 0, 0, 0, 1, 1]), flat], dim=1)
    for name in ["nt-xent", "supervised-contrastive", "lifted-structure", "circle", "histogram"]:
        loss = dm.losses.create(name)
        assert all_close(loss(x, flat), loss(x, hier))


def test_docstring_examples_run():
    import doctest

    import deepmetric.losses.pair
    result = doctest.testmod(deepmetric.losses.pair)
    assert result.attempted >= 12 and result.failed == 0


@pytest.mark.parametrize("name", ["lifted-structure", "generalized-lifted-structure", "circle", "nt-xent",
                                  "supervised-contrastive", "tuplet-margin", "binomial-deviance", "margin"])
def test_empty_batch_or_reference_set_is_a_connected_zero(name):
    # a max over a (B, 0) or (0, R) score matrix raised IndexError in the log-sum-exp losses
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    loss = dm.losses.create(name)
    for args in ((x[:0].clone().requires_grad_(), y[:0]), (x.clone().requires_grad_(), y, None, x[:0], y[:0])):
        value = loss(*args)
        value.backward()
        assert value.item() == 0.0 and value.requires_grad and torch.equal(args[0].grad, torch.zeros_like(args[0]))


def test_fast_ap_refuses_embeddings_beyond_its_histogram():
    """Raw embeddings put (nearly) every squared distance beyond the histogram's [0, 4]: the loss was
    the constant 1 with a zero gradient (pml normalises inside its distance, so it trained). Norms up
    to sqrt(max_distance) / 2 keep every distance inside, zero rows (as l2_normalize leaves them) too."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    labels = torch.arange(4).repeat_interleave(4)
    loss = dm.losses.create("fast-ap")
    with pytest.raises(ValueError, match=r"embeddings: FastAP expects unit vectors, or norms up to "
                                         r"sqrt\(max_distance\) / 2 .* \[0, 4\]; got a norm of"):
        loss(x, labels)
    unit = torch.nn.functional.normalize(x, dim=1)
    with pytest.raises(ValueError, match=r"ref_embeddings: FastAP expects unit vectors"):
        loss(unit, labels, ref_embeddings=x, ref_labels=labels)
    assert 0 < float(loss(unit, labels)) < 1
    unit[3] = 0  # a zero row: within the histogram
    assert 0 < float(loss(unit, labels)) < 1
    assert 0 < float(dm.losses.create("fast-ap", max_distance=16.0)(2 * unit, labels)) < 1
