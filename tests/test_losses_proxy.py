"""Tests of the proxy, classification and centre losses (deepmetric.losses.proxy) and their
functional core (deepmetric.functional.proxy).

Every loss is compared, in value and gradient (embeddings and learnable parameters), with a plain
Python loop written from the paper's formula (float64), and with pytorch-metric-learning (float32, to
1e-5) after copying our initial parameters into its module.
"""
from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import losses as pml_losses

import deepmetric as dm
from deepmetric.functional import proxy as FP
from deepmetric.losses import proxy as proxy_mod
from deepmetric.losses import (ArcFaceLoss, CenterLoss, CosFaceLoss, NormalizedSoftmaxLoss, ProxyAnchorLoss,
                               ProxyNCALoss, SoftTripleLoss, SubCenterArcFaceLoss)
from deepmetric.tuples import Triplets

NUM_CLASSES, DIM = 4, 5

# name -> (class, kwargs of a small non-default configuration, name of the learnable parameter)
LOSSES = {
    "proxy-nca": (ProxyNCALoss, {"softmax_scale": 3.0}, "proxies"),
    "proxy-nca-sq": (ProxyNCALoss, {"softmax_scale": 0.7, "distance": "squared_euclidean"}, "proxies"),
    "proxy-anchor": (ProxyAnchorLoss, {"margin": 0.2, "alpha": 8.0}, "proxies"),
    "normalized-softmax": (NormalizedSoftmaxLoss, {"temperature": 0.3}, "weight"),
    "cosface": (CosFaceLoss, {"margin": 0.3, "scale": 5.0}, "weight"),
    "arcface": (ArcFaceLoss, {"margin": 0.4, "scale": 5.0}, "weight"),
    "sub-center-arcface": (SubCenterArcFaceLoss, {"margin": 0.4, "scale": 5.0, "sub_centers": 3}, "weight"),
    "soft-triple": (SoftTripleLoss, {"centers_per_class": 3, "la": 6.0, "gamma": 0.2, "margin": 0.05}, "centers"),
    "soft-triple-sharp": (SoftTripleLoss, {"centers_per_class": 2, "la": 6.0, "gamma": 0.01, "margin": 0.05},
                          "centers"),
    "soft-triple-reg": (SoftTripleLoss, {"centers_per_class": 3, "la": 6.0, "gamma": 0.2, "margin": 0.05,
                                         "tau": 0.5}, "centers"),
    "center": (CenterLoss, {}, "centers"),
    "center-sum": (CenterLoss, {"reduction": "sum"}, "centers"),
}


def build(key, dtype=torch.float64, num_classes=NUM_CLASSES, dim=DIM, seed=0):
    cls, kwargs, param = LOSSES[key]
    torch.manual_seed(seed)
    loss = cls(num_classes=num_classes, embedding_size=dim, **kwargs).to(dtype)
    return loss, getattr(loss, param)


def make_batch(seed, batch=10, num_classes=NUM_CLASSES, dim=DIM, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g, dtype=dtype).requires_grad_()
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    return x, labels


def grads(value, tensors):
    out = torch.autograd.grad(value, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(out, tensors)]


# ----------------------------------------------------------------------------------------------
# Plain loop references, written from the papers' formulas (one sample, one class at a time)
# ----------------------------------------------------------------------------------------------


def norm(v):
    return torch.sqrt((v * v).sum())


def cos(u, v):
    return (u * v).sum() / (norm(u) * norm(v))


def softmax_ce(logits, target):
    """-log(exp(logits[target]) / sum_j exp(logits[j])) for a list of scalar tensors."""
    return -(logits[target] - torch.log(sum(torch.exp(z) for z in logits)))


def mean(terms):
    return sum(terms) / len(terms)


def ref_proxy_nca(x, labels, proxies, softmax_scale, distance):
    terms = []
    for i in range(len(x)):
        if distance == "cosine":
            d = [((x[i] / norm(x[i]) - p / norm(p)) ** 2).sum() for p in proxies]
        else:
            d = [((x[i] - p) ** 2).sum() for p in proxies]
        terms.append(softmax_ce([-softmax_scale * v for v in d], int(labels[i])))
    return mean(terms)


def ref_proxy_anchor(x, labels, proxies, margin, alpha):
    pos_terms, neg_terms = [], []
    for c, p in enumerate(proxies):
        pos = [cos(x[i], p) for i in range(len(x)) if labels[i] == c]
        neg = [cos(x[i], p) for i in range(len(x)) if labels[i] != c]
        if pos:
            pos_terms.append(torch.log(1 + sum(torch.exp(-alpha * (s - margin)) for s in pos)))
        neg_terms.append(torch.log(1 + sum((torch.exp(alpha * (s + margin)) for s in neg), x.sum() * 0)))
    return sum(pos_terms) / len(pos_terms) + sum(neg_terms) / len(proxies)


def ref_normalized_softmax(x, labels, weight, temperature):
    return mean([softmax_ce([cos(x[i], w) / temperature for w in weight], int(labels[i])) for i in range(len(x))])


def ref_cosface(x, labels, weight, margin, scale):
    terms = []
    for i in range(len(x)):
        y = int(labels[i])
        logits = [scale * (cos(x[i], w) - (margin if j == y else 0.0)) for j, w in enumerate(weight)]
        terms.append(softmax_ce(logits, y))
    return mean(terms)


def arc_target(c, margin):
    theta = torch.acos(c)
    return torch.cos(theta + margin) if theta <= math.pi - margin else c - margin * math.sin(margin)


def ref_arcface(x, labels, weight, margin, scale, sub_centers=1):
    terms = []
    for i in range(len(x)):
        y = int(labels[i])
        cosines = [max(cos(x[i], w) for w in weight[j * sub_centers:(j + 1) * sub_centers])
                   for j in range(len(weight) // sub_centers)]
        logits = [scale * (arc_target(c, margin) if j == y else c) for j, c in enumerate(cosines)]
        terms.append(softmax_ce(logits, y))
    return mean(terms)


def ref_soft_triple(x, labels, centers, centers_per_class, la, gamma, margin, tau=0.0):
    k = centers_per_class
    terms = []
    for i in range(len(x)):
        y = int(labels[i])
        logits = []
        for c in range(len(centers) // k):
            sims = [cos(x[i], w) for w in centers[c * k:(c + 1) * k]]
            z = sum(torch.exp(s / gamma) for s in sims)
            s_c = sum(torch.exp(s / gamma) / z * s for s in sims)
            logits.append(la * (s_c - (margin if c == y else 0.0)))
        terms.append(softmax_ce(logits, y))
    value = mean(terms)
    if tau > 0:
        n_classes = len(centers) // k
        reg = sum(torch.sqrt(2 + 1e-5 - 2 * cos(centers[c * k + t], centers[c * k + s]))
                  for c in range(n_classes) for t in range(k) for s in range(t + 1, k))
        value = value + tau * reg / (n_classes * k * (k - 1))
    return value


def ref_center(x, labels, centers, reduction):
    total = sum(0.5 * ((x[i] - centers[int(labels[i])]) ** 2).sum() for i in range(len(x)))
    return total / len(x) if reduction == "mean" else total


def reference(key, loss, x, labels):
    _, kw, _ = LOSSES[key]
    if isinstance(loss, ProxyNCALoss):
        return ref_proxy_nca(x, labels, loss.proxies, loss.softmax_scale, loss.distance)
    if isinstance(loss, ProxyAnchorLoss):
        return ref_proxy_anchor(x, labels, loss.proxies, kw["margin"], kw["alpha"])
    if isinstance(loss, NormalizedSoftmaxLoss):
        return ref_normalized_softmax(x, labels, loss.weight, kw["temperature"])
    if isinstance(loss, CosFaceLoss):
        return ref_cosface(x, labels, loss.weight, kw["margin"], kw["scale"])
    if isinstance(loss, SubCenterArcFaceLoss):
        return ref_arcface(x, labels, loss.weight, kw["margin"], kw["scale"], kw["sub_centers"])
    if isinstance(loss, ArcFaceLoss):
        return ref_arcface(x, labels, loss.weight, kw["margin"], kw["scale"])
    if isinstance(loss, SoftTripleLoss):
        return ref_soft_triple(x, labels, loss.centers, kw["centers_per_class"], kw["la"], kw["gamma"],
                               kw["margin"], kw.get("tau", 0.0))
    if isinstance(loss, CenterLoss):
        return ref_center(x, labels, loss.centers, loss.reduction)
    raise AssertionError(key)


# ----------------------------------------------------------------------------------------------
# Against the loops (float64, values and gradients)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(LOSSES))
@pytest.mark.parametrize("seed", [1, 2])
def test_equals_loop(key, seed):
    loss, param = build(key, seed=seed)
    x, labels = make_batch(seed)
    ours, theirs = loss(x, labels), reference(key, loss, x, labels)
    assert theirs.item() > 0
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12), (float(ours), float(theirs))
    for a, b in zip(grads(ours, [x, param]), grads(theirs, [x, param])):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_arcface_fallback_branch_equals_loop():
    """Target angles beyond pi - m take the fallback cos(theta) - m sin(m): put each item opposite
    its class weight."""
    loss, w = build("arcface")
    labels = torch.tensor([0, 1, 2, 3, 0])
    x = (-w.detach()[labels] + 0.05 * torch.randn(5, DIM, dtype=torch.float64)).requires_grad_()
    assert (dm.distances.cosine_similarity(x, w)[torch.arange(5), labels] < -math.cos(0.4)).all()
    ours, theirs = loss(x, labels), ref_arcface(x, labels, w, 0.4, 5.0)
    assert torch.allclose(ours, theirs, rtol=1e-10)
    for a, b in zip(grads(ours, [x, w]), grads(theirs, [x, w])):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Against pytorch-metric-learning (float32, to 1e-5), with our initial parameters copied into it
# ----------------------------------------------------------------------------------------------


def pml_pair(name, **kwargs):
    """(ours, pml, our parameter, a function copying it into pml's layout)."""
    torch.manual_seed(7)
    if name == "proxy-nca":
        ours = ProxyNCALoss(NUM_CLASSES, DIM, **kwargs)
        theirs = pml_losses.ProxyNCALoss(NUM_CLASSES, DIM, **kwargs)
        theirs.proxies.data = ours.proxies.data.clone()
        return ours, theirs, ours.proxies, theirs.proxies
    if name == "proxy-anchor":
        ours = ProxyAnchorLoss(NUM_CLASSES, DIM, **kwargs)
        theirs = pml_losses.ProxyAnchorLoss(NUM_CLASSES, DIM, **kwargs)
        theirs.proxies.data = ours.proxies.data.clone()
        return ours, theirs, ours.proxies, theirs.proxies
    if name == "normalized-softmax":
        ours = NormalizedSoftmaxLoss(NUM_CLASSES, DIM, **kwargs)
        theirs = pml_losses.NormalizedSoftmaxLoss(NUM_CLASSES, DIM, **kwargs)
        theirs.W.data = ours.weight.data.T.clone()
        return ours, theirs, ours.weight, theirs.W
    if name == "cosface":
        ours = CosFaceLoss(NUM_CLASSES, DIM, **kwargs)
        theirs = pml_losses.CosFaceLoss(NUM_CLASSES, DIM, **kwargs)
        theirs.W.data = ours.weight.data.T.clone()
        return ours, theirs, ours.weight, theirs.W
    if name == "arcface":
        ours = ArcFaceLoss(NUM_CLASSES, DIM, **kwargs)
        theirs = pml_losses.ArcFaceLoss(NUM_CLASSES, DIM, margin=math.degrees(kwargs["margin"]),
                                        scale=kwargs["scale"])
        theirs.W.data = ours.weight.data.T.clone()
        return ours, theirs, ours.weight, theirs.W
    if name == "sub-center-arcface":
        ours = SubCenterArcFaceLoss(NUM_CLASSES, DIM, **kwargs)
        theirs = pml_losses.SubCenterArcFaceLoss(num_classes=NUM_CLASSES, embedding_size=DIM,
                                                 margin=math.degrees(kwargs["margin"]), scale=kwargs["scale"],
                                                 sub_centers=kwargs["sub_centers"])
        theirs.W.data = ours.weight.data.T.clone()
        return ours, theirs, ours.weight, theirs.W
    if name == "soft-triple":
        ours = SoftTripleLoss(NUM_CLASSES, DIM, **kwargs)
        theirs = pml_losses.SoftTripleLoss(NUM_CLASSES, DIM, **kwargs)
        theirs.fc.data = ours.centers.data.T.clone()
        return ours, theirs, ours.centers, theirs.fc
    raise AssertionError(name)


PML_CASES = [
    ("proxy-nca", {}),
    ("proxy-nca", {"softmax_scale": 4.0}),
    ("proxy-anchor", {}),
    ("proxy-anchor", {"margin": 0.3, "alpha": 10.0}),
    ("normalized-softmax", {}),
    ("normalized-softmax", {"temperature": 0.4}),
    ("cosface", {"margin": 0.35, "scale": 64.0}),
    ("cosface", {"margin": 0.2, "scale": 8.0}),
    ("arcface", {"margin": 0.5, "scale": 64.0}),
    ("arcface", {"margin": 0.3, "scale": 8.0}),
    ("sub-center-arcface", {"margin": 0.5, "scale": 64.0, "sub_centers": 3}),
    ("sub-center-arcface", {"margin": 0.3, "scale": 8.0, "sub_centers": 2}),
    ("soft-triple", {}),
    ("soft-triple", {"centers_per_class": 3, "la": 8.0, "gamma": 0.2, "margin": 0.05}),
    ("soft-triple", {"centers_per_class": 4, "la": 8.0, "gamma": 0.01, "margin": 0.05}),
]


@pytest.mark.parametrize("name,kwargs", PML_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PML_CASES)])
def test_equals_pml(name, kwargs):
    ours, theirs, p_ours, p_theirs = pml_pair(name, **kwargs)
    x, labels = make_batch(11, batch=16, dtype=torch.float32)
    a, b = ours(x, labels), theirs(x, labels)
    assert b.item() > 0, "the comparison must be on a non-zero loss"
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (float(a), float(b))
    gx_a, gp_a = grads(a, [x, p_ours])
    gx_b, gp_b = grads(b, [x, p_theirs])
    if gp_b.shape != gp_a.shape:  # pml stores (D, C) weights
        gp_b = gp_b.T
    scale = max(1.0, float(gx_b.abs().max()), float(gp_b.abs().max()))
    assert torch.allclose(gx_a, gx_b, rtol=1e-5, atol=1e-5 * scale)
    assert torch.allclose(gp_a, gp_b, rtol=1e-5, atol=1e-5 * scale)


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------


def assert_finite_connected(value, tensors):
    assert torch.isfinite(value)
    assert value.requires_grad
    for g in grads(value, tensors):
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("key", sorted(LOSSES))
def test_all_equal_and_zero_embeddings(key):
    loss, param = build(key)
    for x in (torch.ones(6, DIM, dtype=torch.float64), torch.zeros(6, DIM, dtype=torch.float64)):
        x.requires_grad_()
        assert_finite_connected(loss(x, torch.tensor([0, 0, 1, 1, 2, 3])), [x, param])


@pytest.mark.parametrize("key", sorted(LOSSES))
def test_embeddings_equal_to_their_weights_have_finite_gradients(key):
    """cos = 1 exactly (acos has an infinite derivative there)."""
    loss, param = build(key)
    labels = torch.tensor([0, 1, 2, 3])
    rows = labels * (param.shape[0] // NUM_CLASSES)
    x = param.detach()[rows].clone().requires_grad_()
    assert_finite_connected(loss(x, labels), [x, param])


@pytest.mark.parametrize("key", sorted(LOSSES))
def test_one_class(key):
    """One class: the softmax losses are exactly 0 (one logit); proxy-anchor has no negatives."""
    loss, param = build(key, num_classes=1)
    x, labels = make_batch(3, batch=5, num_classes=1)
    value = loss(x, labels)
    assert_finite_connected(value, [x, param])
    if key.startswith(("normalized", "cosface", "arcface", "sub-center", "proxy-nca", "soft-triple")) \
            and not key.endswith("reg"):
        assert value.item() == 0.0
    else:
        assert torch.allclose(value, reference(key, loss, x, labels))


@pytest.mark.parametrize("key", sorted(LOSSES))
def test_empty_batch_is_connected_zero(key):
    loss, param = build(key)
    x = torch.zeros(0, DIM, dtype=torch.float64, requires_grad=True)
    value = loss(x, torch.zeros(0, dtype=torch.long))
    assert_finite_connected(value, [x, param])
    if not key.endswith("reg"):
        assert value.item() == 0.0


def test_proxy_anchor_proxies_without_positives_leave_the_positive_term():
    """Only classes 0 and 1 occur: the positive term averages over those two proxies, the negative
    term over all four."""
    loss, proxies = build("proxy-anchor")
    x, _ = make_batch(5, batch=6)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.allclose(loss(x, labels), ref_proxy_anchor(x, labels, proxies, 0.2, 8.0))
    # a loop over all four proxies in the positive term gives another value
    sim = dm.distances.cosine_similarity(x, proxies)
    all_four = sum(torch.log(1 + sum((torch.exp(-8.0 * (sim[i, c] - 0.2)) for i in range(6) if labels[i] == c),
                                     x.sum() * 0)) for c in range(4)) / 4
    neg = sum(torch.log(1 + sum(torch.exp(8.0 * (sim[i, c] + 0.2)) for i in range(6) if labels[i] != c))
              for c in range(4)) / 4
    assert not torch.allclose(loss(x, labels), all_four + neg)


def test_log1p_sum_exp_with_empty_mask_has_zero_gradient():
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False], [True, False], [False, False]])
    value = FP.log1p_sum_exp(z, mask, dim=0)
    assert value[1].item() == 0.0
    assert torch.allclose(value[0], torch.log(1 + torch.exp(z[0, 0]) + torch.exp(z[1, 0])))
    (g,) = torch.autograd.grad(value.sum(), z)
    assert torch.isfinite(g).all() and (g[:, 1] == 0).all() and g[2, 0] == 0


# ----------------------------------------------------------------------------------------------
# Parameters, registry, errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(LOSSES))
def test_parameters_are_reproducible_and_trainable(key):
    a, pa = build(key, seed=3)
    b, pb = build(key, seed=3)
    c, pc = build(key, seed=4)
    assert isinstance(pa, torch.nn.Parameter) and pa.requires_grad
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    rows = {"sub-center-arcface": 3, "soft-triple": 3, "soft-triple-reg": 3, "soft-triple-sharp": 2}.get(key, 1)
    assert pa.shape == (NUM_CLASSES * rows, DIM)
    assert [n for n, _ in a.named_parameters()] == [LOSSES[key][2]]


def test_trainer_puts_the_parameters_in_their_own_group():
    from deepmetric.training.trainer import build_optimizer
    model = torch.nn.Linear(3, DIM)
    loss = dm.losses.create({"name": "proxy-anchor", "num_classes": 4, "embedding_size": DIM})
    opt = build_optimizer({"name": "adam", "lr": 1e-3, "loss_lr": 0.1, "weight_decay": 0.0}, model, loss)
    group = [g for g in opt.param_groups if g.get("name") == "loss"][0]
    assert group["lr"] == 0.1 and group["params"][0] is loss.proxies


@pytest.mark.parametrize("name", ["proxy-nca", "proxy-anchor", "normalized-softmax", "cosface", "arcface",
                                  "sub-center-arcface", "soft-triple", "center"])
def test_registry_and_distance(name):
    loss = dm.losses.create(name, num_classes=3, embedding_size=4)
    assert loss.distance == ("euclidean" if name == "center" else "cosine")
    assert "num_classes=3" in repr(loss)


def test_float32_module_accepts_float64_embeddings():
    loss, _ = build("cosface", dtype=torch.float32)
    x, labels = make_batch(2)
    value = loss(x, labels)
    assert value.dtype == torch.float64 and loss.weight.dtype == torch.float32
    value.backward()
    assert loss.weight.grad is not None and torch.isfinite(loss.weight.grad).all()


@pytest.mark.parametrize("labels,err,match", [
    (torch.tensor([0, 1, 4]), ValueError, r"contiguous class ids in \[0, 4\).*\[0, 4\]"),
    (torch.tensor([-1, 1, 2]), ValueError, "contiguous class ids"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integer class ids"),
    (torch.tensor([True, False, True]), TypeError, "integer class ids"),
    (torch.tensor([[0, 1], [1, 1], [2, 0]]), ValueError, r"expected shape \(3,\)"),
    (torch.tensor([0, 1]), ValueError, r"expected shape \(3,\)"),
    ([0, 1, 2], TypeError, "torch.Tensor"),
])
@pytest.mark.parametrize("name", ["proxy-anchor", "arcface", "center"])
def test_bad_labels(name, labels, err, match):
    loss = dm.losses.create(name, num_classes=4, embedding_size=DIM)
    with pytest.raises(err, match=match):
        loss(torch.randn(3, DIM), labels)


def test_bad_call():
    loss = dm.losses.create("proxy-nca", num_classes=4, embedding_size=DIM)
    x, labels = torch.randn(3, DIM), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="tuples are not used"):
        loss(x, labels, Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="ref_embeddings"):
        loss(x, labels, None, x, labels)
    with pytest.raises(ValueError, match="embedding_size=5, got 4"):
        loss(torch.randn(3, 4), labels)
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full((3, DIM), math.nan), labels)


@pytest.mark.parametrize("name,kwargs,match", [
    ("proxy-nca", {"num_classes": 0}, "num_classes"),
    ("proxy-nca", {"num_classes": 2.0}, "num_classes"),
    ("proxy-nca", {"embedding_size": -1}, "embedding_size"),
    ("proxy-nca", {"softmax_scale": 0.0}, "softmax_scale"),
    ("proxy-nca", {"distance": "dot"}, "distance"),
    ("proxy-anchor", {"margin": -0.1}, "margin"),
    ("proxy-anchor", {"alpha": math.inf}, "alpha"),
    ("normalized-softmax", {"temperature": 0}, "temperature"),
    ("cosface", {"scale": -1.0}, "scale"),
    ("arcface", {"margin": 28.6}, "radians"),
    ("sub-center-arcface", {"sub_centers": 0}, "sub_centers"),
    ("soft-triple", {"centers_per_class": 0}, "centers_per_class"),
    ("soft-triple", {"gamma": 0.0}, "gamma"),
    ("soft-triple", {"tau": -1.0}, "tau"),
    ("center", {"reduction": "mean_nonzero"}, "reduction"),
])
def test_bad_hyper_parameters(name, kwargs, match):
    args = {"num_classes": 3, "embedding_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        dm.losses.create(name, **args)


def test_docstring_examples():
    for module in (proxy_mod, FP):
        result = doctest.testmod(module, verbose=False)
        assert result.failed == 0
    assert doctest.testmod(proxy_mod).attempted >= 8


# ----------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ----------------------------------------------------------------------------------------------

KEYS = sorted(LOSSES)


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(KEYS), seed=st.integers(0, 10_000), batch=st.integers(1, 12))
def test_batch_permutation_leaves_loss_unchanged(key, seed, batch):
    loss, _ = build(key)
    x, labels = make_batch(seed, batch=batch)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.allclose(loss(x, labels), loss(x[perm], labels[perm]), rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(KEYS), seed=st.integers(0, 10_000), scale=st.sampled_from([1e-6, 1.0, 1e3]))
def test_gradients_finite_with_duplicated_embeddings(key, seed, scale):
    loss, param = build(key)
    x, labels = make_batch(seed, batch=4)
    x = (torch.cat([x.detach(), x.detach(), x.detach()[:1]]) * scale).requires_grad_()
    labels = torch.cat([labels, labels, labels[:1]])
    assert_finite_connected(loss(x, labels), [x, param])


@settings(max_examples=20, deadline=None)
@given(key=st.sampled_from([k for k in KEYS if not k.endswith("reg")]), seed=st.integers(0, 10_000))
def test_separated_embeddings(key, seed):
    """Items on (a sub-centre of) their class's weight, with orthogonal class weights: centre loss is
    exactly 0, each softmax loss is close to 0 with a large scale, and every loss is lower than with
    the labels moved to another class."""
    cls, kwargs, param = LOSSES[key]
    kwargs = dict(kwargs)
    if "scale" in kwargs:
        kwargs["scale"] = 64.0
    if "temperature" in kwargs:
        kwargs["temperature"] = 0.02
    if "la" in kwargs:
        kwargs["la"] = 60.0
    if "softmax_scale" in kwargs and kwargs.get("distance", "cosine") == "cosine":
        kwargs["softmax_scale"] = 30.0
    loss = cls(num_classes=NUM_CLASSES, embedding_size=DIM, **kwargs).double()
    weights = getattr(loss, param)
    rows_per_class = weights.shape[0] // NUM_CLASSES
    with torch.no_grad():  # orthogonal classes, every sub-centre of a class on the same direction
        weights.copy_(torch.eye(NUM_CLASSES, DIM, dtype=torch.float64).repeat_interleave(rows_per_class, 0) * 3.0)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (8,), generator=g)
    x = weights.detach()[labels * rows_per_class].clone()
    value = loss(x, labels)
    wrong = loss(x, (labels + 1) % NUM_CLASSES)
    assert value < wrong
    if key.startswith("center"):
        assert value.item() == 0.0
    elif key != "proxy-anchor" and key != "proxy-nca-sq":
        assert value.item() < 1e-3


def test_center_loss_beside_a_softmax_loss_trains_both():
    """Centre loss is used beside a discriminative loss, L = L_S + lambda L_C: a few optimizer steps
    on the sum (embeddings, class weights and centres all learnable) lower both parts."""
    torch.manual_seed(0)
    softmax = dm.losses.create("normalized-softmax", num_classes=3, embedding_size=4, temperature=0.1)
    center = dm.losses.create("center", num_classes=3, embedding_size=4)
    x = torch.randn(9, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2] * 3)
    opt = torch.optim.Adam([x, *softmax.parameters(), *center.parameters()], lr=0.05)
    first = (softmax(x, labels).item(), center(x, labels).item())
    for _ in range(30):
        opt.zero_grad()
        (softmax(x, labels) + 0.5 * center(x, labels)).backward()
        opt.step()
    assert center.centers.grad is not None and softmax.weight.grad is not None
    assert softmax(x, labels).item() < first[0] and center(x, labels).item() < first[1]
