"""Tests of the granularity-aware losses (deepmetric.losses.granularity: SGML and IE) and their
functional core (deepmetric.functional.granularity).

Each loss is compared, in value and gradient (embeddings and learnable parameters), with a plain
Python loop written from the formula in its docstring (float64); SGML with hard labels is compared
with the existing binomial deviance loss.
"""
from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmetric.functional import granularity as FG
from deepmetric.losses import BinomialDevianceLoss
from deepmetric.losses import granularity as gran_mod
from deepmetric.losses.base import LOSSES
from deepmetric.losses.granularity import IELoss, SGMLLoss
from deepmetric.tuples import Pairs, Triplets

# ----------------------------------------------------------------------------------------------
# Plain loop references
# ----------------------------------------------------------------------------------------------


def norm(v):
    return torch.sqrt((v * v).sum())


def cos(u, v):
    return (u * v).sum() / (norm(u) * norm(v))


def softplus(z):
    return torch.log(1 + torch.exp(z))


def ref_similarity(a, b):
    """s for one pair of label rows (python lists / scalars)."""
    if isinstance(a, list) and a and isinstance(a[0], bool):
        inter = sum(1 for u, v in zip(a, b) if u and v)
        union = sum(1 for u, v in zip(a, b) if u or v)
        return inter / union if union else 0.0
    if not isinstance(a, list):
        return 1.0 if a == b else 0.0
    shared = 0
    for u, v in zip(a, b):
        if u != v:
            break
        shared += 1
    return shared / len(a)


def ref_sgml(x, labels, rx=None, ref_labels=None, pairs=None, alpha=2.0, beta=0.5, cost=25.0, distance="cosine",
             reduction="mean", head=None, num_attributes=None, attribute_weight=1.0):
    same_set = rx is None
    rx = x if same_set else rx
    lab = labels.tolist()
    rlab = lab if same_set else ref_labels.tolist()
    sim = cos if distance == "cosine" else (lambda u, v: (u * v).sum())
    zero = x.sum() * 0
    pos, neg, p_mass, n_mass = zero, zero, 0.0, 0.0
    for i in range(len(x)):
        for j in range(len(rx)):
            if pairs is not None:
                if (i, j) not in pairs:
                    continue
            elif same_set and i == j:
                continue
            s = ref_similarity(lab[i], rlab[j])
            z = sim(x[i], rx[j]) - beta
            pos = pos + s * softplus(-alpha * z)
            neg = neg + (1 - s) * softplus(alpha * cost * z)
            p_mass += s
            n_mass += 1 - s
    if reduction == "mean":
        value = (pos / p_mass if p_mass > 0 else pos) + (neg / n_mass if n_mass > 0 else neg)
    else:
        value = pos + neg
    if head is None:
        return value
    w, b = head
    terms = []
    if labels.dtype == torch.bool:
        for i in range(len(x)):
            for c in range(w.shape[0]):
                z = (w[c] * x[i]).sum() + b[c]
                y = 1.0 if lab[i][c] else 0.0
                terms.append(-(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))))
        attr = sum(terms, zero) / len(terms)
    else:
        offset, per_level = 0, []
        for level, n in enumerate(num_attributes):
            ce = zero
            for i in range(len(x)):
                logits = [(w[offset + c] * x[i]).sum() + b[offset + c] for c in range(n)]
                y = lab[i][level] if isinstance(lab[i], list) else lab[i]
                ce = ce - (logits[y] - torch.log(sum(torch.exp(v) for v in logits)))
            per_level.append(ce / len(x))
            offset += n
        attr = sum(per_level, zero) / len(per_level)
    return value + attribute_weight * attr


def ref_ie(x, centers, labels, gamma=1.0, margin=1.0, exclude_weight=1.0):
    k = len(centers)
    zero = x.sum() * 0 + centers.sum() * 0
    include = zero
    for i in range(len(x)):
        y = int(labels[i])
        d_y = ((x[i] - centers[y]) ** 2).sum()
        others = sum((((x[i] - centers[c]) ** 2).sum() for c in range(k) if c != y), zero) / (k - 1)
        include = include + softplus(gamma * (d_y - others + margin))
    include = include / max(len(x), 1)
    exclude, count = zero, 0
    for a in range(k):
        for b in range(a + 1, k):
            exclude = exclude + softplus(gamma * (margin - ((centers[a] - centers[b]) ** 2).sum()))
            count += 1
    return include + exclude_weight * exclude / count


def grads(value, tensors):
    out = torch.autograd.grad(value, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(out, tensors)]


def close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def make_labels(kind, batch, g):
    if kind == "flat":
        return torch.randint(0, 3, (batch,), generator=g)
    if kind == "hier2":
        return torch.stack([torch.randint(0, 2, (batch,), generator=g), torch.randint(0, 3, (batch,), generator=g)], 1)
    if kind == "hier3":
        return torch.stack([torch.randint(0, 2, (batch,), generator=g), torch.randint(0, 2, (batch,), generator=g),
                            torch.randint(0, 3, (batch,), generator=g)], 1)
    if kind == "multi":
        labels = torch.rand(batch, 4, generator=g) < 0.4
        labels[0] = False  # an empty row
        return labels
    raise AssertionError(kind)


def make_batch(kind, seed=0, batch=7, dim=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g, dtype=dtype).requires_grad_()
    return x, make_labels(kind, batch, g)


# ----------------------------------------------------------------------------------------------
# granularity_similarity on hand-worked cases
# ----------------------------------------------------------------------------------------------


def test_similarity_hierarchical_two_levels():
    labels = torch.tensor([[0, 0], [0, 1], [1, 0], [0, 0]])
    expected = torch.tensor([[1.0, 0.5, 0.0, 1.0],
                             [0.5, 1.0, 0.0, 0.5],
                             [0.0, 0.0, 1.0, 0.0],
                             [1.0, 0.5, 0.0, 1.0]])
    close(FG.granularity_similarity(labels), expected)


def test_similarity_hierarchical_three_levels_recurring_ids():
    # sub-class id 0 recurs under parents 0 and 1: [1, 0, 0] shares nothing with [0, 0, 0]
    labels = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    expected = torch.tensor([[1, 2 / 3, 1 / 3, 0],
                             [2 / 3, 1, 1 / 3, 0],
                             [1 / 3, 1 / 3, 1, 0],
                             [0, 0, 0, 1]], dtype=torch.float64)
    close(FG.granularity_similarity(labels, dtype=torch.float64), expected)


def test_similarity_flat_and_reference_set():
    labels, ref = torch.tensor([2, 0, 2]), torch.tensor([2, 1])
    close(FG.granularity_similarity(labels, ref), torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
    close(FG.granularity_similarity(labels), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))


def test_similarity_multilabel_jaccard_with_empty_rows():
    labels = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    expected = torch.tensor([[1, 1 / 3, 0, 1 / 2],
                             [1 / 3, 1, 0, 1 / 2],
                             [0, 0, 0, 0],
                             [1 / 2, 1 / 2, 0, 1]], dtype=torch.float64)
    out = FG.granularity_similarity(labels, dtype=torch.float64)
    assert out.dtype == torch.float64
    close(out, expected)


@pytest.mark.parametrize("kind", ["flat", "hier2", "hier3", "multi"])
def test_similarity_matches_loop(kind):
    _, labels = make_batch(kind, seed=3, batch=9)
    _, ref = make_batch(kind, seed=4, batch=5)
    out = FG.granularity_similarity(labels, ref, dtype=torch.float64)
    lab, rlab = labels.tolist(), ref.tolist()
    expected = torch.tensor([[ref_similarity(a, b) for b in rlab] for a in lab], dtype=torch.float64)
    close(out, expected)


# ----------------------------------------------------------------------------------------------
# SGML against the loop (values and gradients)
# ----------------------------------------------------------------------------------------------

SGML_CASES = [
    ("flat", {}),
    ("hier2", {}),
    ("hier3", {"alpha": 3.0, "beta": 0.2, "cost": 5.0}),
    ("hier2", {"distance": "dot", "cost": 2.0}),
    ("hier3", {"reduction": "sum"}),
    ("multi", {"cost": 4.0}),
    ("hier2", {"num_attributes": [2], "attribute_weight": 0.7}),
    ("hier3", {"num_attributes": [2, 2], "cost": 3.0}),
    ("hier2", {"num_attributes": 2}),
    ("flat", {"num_attributes": [3], "attribute_weight": 2.0}),
    ("multi", {"num_attributes": 4, "attribute_weight": 0.5}),
]


def build_sgml(kwargs, dim=4, dtype=torch.float64):
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    if "num_attributes" in kwargs:
        kwargs["embedding_size"] = dim
    return SGMLLoss(**kwargs).to(dtype)


def ref_kwargs(loss):
    out = dict(alpha=loss.alpha, beta=loss.beta, cost=loss.cost, distance=loss.distance, reduction=loss.reduction,
               attribute_weight=loss.attribute_weight, num_attributes=loss.num_attributes)
    if loss.attribute_head is not None:
        out["head"] = (loss.attribute_head.weight, loss.attribute_head.bias)
    return out


@pytest.mark.parametrize("kind, kwargs", SGML_CASES)
def test_sgml_matches_loop(kind, kwargs):
    loss = build_sgml(kwargs)
    x, labels = make_batch(kind, seed=1)
    params = [x] + list(loss.parameters())
    value = loss(x, labels)
    expected = ref_sgml(x, labels, **ref_kwargs(loss))
    close(value, expected)
    for got, want in zip(grads(value, params), grads(expected, params)):
        close(got, want)


@pytest.mark.parametrize("kind, kwargs", [("hier2", {}), ("multi", {"num_attributes": 4}), ("flat", {"beta": 0.1})])
def test_sgml_reference_set_matches_loop(kind, kwargs):
    loss = build_sgml(kwargs)
    x, labels = make_batch(kind, seed=2, batch=5)
    rx, ref_labels = make_batch(kind, seed=5, batch=6)
    params = [x, rx] + list(loss.parameters())
    value = loss(x, labels, ref_embeddings=rx, ref_labels=ref_labels)
    expected = ref_sgml(x, labels, rx, ref_labels, **ref_kwargs(loss))
    close(value, expected)
    for got, want in zip(grads(value, params), grads(expected, params)):
        close(got, want)


def test_sgml_tuples_restrict_pairs():
    loss = build_sgml({})
    x, labels = make_batch("hier2", seed=6, batch=6)
    # pair (0, 1) given twice and (2, 3) given both as "positive" and as "negative": each counts once
    pairs = Pairs(torch.tensor([0, 0, 2]), torch.tensor([1, 1, 3]), torch.tensor([2, 4, 5]), torch.tensor([3, 5, 0]))
    value = loss(x, labels, pairs)
    given = {(0, 1), (2, 3), (4, 5), (5, 0)}
    expected = ref_sgml(x, labels, pairs=given)
    close(value, expected)
    close(grads(value, [x])[0], grads(expected, [x])[0])
    triplets = Triplets(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    close(loss(x, labels, triplets), ref_sgml(x, labels, pairs={(0, 2), (1, 3), (0, 4), (1, 5)}))


# ----------------------------------------------------------------------------------------------
# SGML with hard labels is binomial deviance
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"alpha": 3.0, "beta": 0.2, "cost": 5.0}, {"distance": "dot", "cost": 2.0}])
def test_sgml_hard_labels_equal_binomial_deviance(kwargs):
    sgml, bd = SGMLLoss(**kwargs), BinomialDevianceLoss(**kwargs)
    x, labels = make_batch("flat", seed=7, batch=9)
    a, b = sgml(x, labels), bd(x, labels)
    close(a, b)
    close(grads(a, [x])[0], grads(b, [x])[0])
    # one-level hierarchy and a reference set
    rx, ref_labels = make_batch("flat", seed=8, batch=4)
    close(sgml(x, labels[:, None], ref_embeddings=rx, ref_labels=ref_labels[:, None]),
          bd(x, labels, ref_embeddings=rx, ref_labels=ref_labels))
    # tuples that agree with the labels
    pos = [(i, j) for i in range(9) for j in range(9) if i != j and labels[i] == labels[j]][:5]
    neg = [(i, j) for i in range(9) for j in range(9) if labels[i] != labels[j]][::3]
    pairs = Pairs(*(torch.tensor(v) for v in zip(*pos)), *(torch.tensor(v) for v in zip(*neg)))
    close(sgml(x, labels, pairs), bd(x, labels, pairs))


# ----------------------------------------------------------------------------------------------
# IE against the loop
# ----------------------------------------------------------------------------------------------

IE_CASES = [({}, "flat"), ({"gamma": 0.5, "margin": 2.0, "exclude_weight": 0.3}, "flat"),
            ({"margin": 0.0}, "hier2"), ({"level": 0, "gamma": 2.0}, "hier2"), ({"level": 1}, "hier3")]


def nested(labels, level=-1):
    """Hierarchical labels whose ids at ``level`` are unique across the hierarchy, as the IE loss needs:
    the parent columns follow from them."""
    if labels.dim() == 2:
        column = level % labels.shape[1]
        labels = labels.clone()
        labels[:, :column] = labels[:, column:column + 1] // 2
    return labels


def build_ie(kwargs, num_classes=3, dim=4, dtype=torch.float64):
    torch.manual_seed(0)
    return IELoss(num_classes=num_classes, embedding_size=dim, **kwargs).to(dtype)


@pytest.mark.parametrize("kwargs, kind", IE_CASES)
def test_ie_matches_loop(kwargs, kind):
    loss = build_ie(kwargs)
    x, labels = make_batch(kind, seed=9, batch=8)
    labels = nested(labels, loss.level)
    flat = labels if labels.dim() == 1 else labels[:, loss.level]
    value = loss(x, labels)
    expected = ref_ie(x, loss.centers, flat, loss.gamma, loss.margin, loss.exclude_weight)
    close(value, expected)
    for got, want in zip(grads(value, [x, loss.centers]), grads(expected, [x, loss.centers])):
        close(got, want)


def test_ie_refuses_ids_that_recur_under_different_parents():
    # sub-class 0 of alphabet 0 and sub-class 0 of alphabet 1 would share centre 0
    local = torch.tensor([[a, c] for a in range(2) for c in range(2) for _ in range(2)])
    x = torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"class ids \[0, 1\] of level 1 recur under different parents"):
        build_ie({}, num_classes=4)(x, local)
    build_ie({}, num_classes=4)(x, torch.stack([local[:, 0], 2 * local[:, 0] + local[:, 1]], 1))  # global ids
    build_ie({"level": 0}, num_classes=2)(x, local)  # the top level has no parent


def test_ie_minimal_on_centres_far_apart():
    loss = build_ie({})
    with torch.no_grad():
        loss.centers.copy_(torch.eye(3, 4, dtype=torch.float64) * 20.0)
    labels = torch.tensor([0, 1, 2, 2])
    on_centres = loss.centers.detach()[labels].clone().requires_grad_()
    value = loss(on_centres, labels)
    assert 0 <= value.item() < 1e-100
    moved = (on_centres.detach() + torch.tensor([5.0, -5.0, 0.0, 0.0], dtype=torch.float64))
    assert loss(moved, labels).item() > value.item()
    # centres on top of each other: the exclude term is softplus(gamma * m) per pair
    with torch.no_grad():
        loss.centers.zero_()
    x = torch.zeros(2, 4, dtype=torch.float64)
    close(loss(x, torch.tensor([0, 1])), torch.tensor(2 * math.log1p(math.e), dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------


def finite_grads(value, tensors):
    assert torch.isfinite(value).all()
    for g in grads(value, tensors):
        assert torch.isfinite(g).all()


def test_single_class_batch():
    x, _ = make_batch("flat", seed=10, batch=5)
    labels = torch.zeros(5, dtype=torch.long)
    loss = build_sgml({"num_attributes": [1]})
    value = loss(x, labels)
    close(value, ref_sgml(x, labels, **ref_kwargs(loss)))  # no negative mass: that side is 0
    finite_grads(value, [x] + list(loss.parameters()))
    ie = build_ie({})
    finite_grads(ie(x, labels), [x, ie.centers])


@pytest.mark.parametrize("fill", [0.0, 1.5])
def test_all_equal_embeddings_give_finite_gradients(fill):
    x = torch.full((6, 4), fill, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [0, 0], [1, 1]])
    loss = build_sgml({"num_attributes": [2, 2]})
    finite_grads(loss(x, labels), [x] + list(loss.parameters()))
    ie = build_ie({"level": 0}, num_classes=2)
    finite_grads(ie(x, labels), [x, ie.centers])
    with torch.no_grad():
        ie.centers.fill_(fill)
    finite_grads(ie(x, labels), [x, ie.centers])


def test_one_item():
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    plain = SGMLLoss()(x, torch.tensor([0]))
    assert plain.item() == 0.0 and plain.requires_grad
    plain.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    loss = build_sgml({"num_attributes": [2]})
    close(loss(x, torch.tensor([1])), ref_sgml(x, torch.tensor([1]), **ref_kwargs(loss)))
    ie = build_ie({})
    close(ie(x, torch.tensor([2])), ref_ie(x, ie.centers, torch.tensor([2])))


def test_empty_batch():
    x = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    loss = build_sgml({"num_attributes": [2]})
    value = loss(x, torch.zeros(0, dtype=torch.long))
    assert value.item() == 0.0
    value.backward()
    ie = build_ie({})
    finite_grads(ie(x, torch.zeros(0, dtype=torch.long)), [ie.centers])


# ----------------------------------------------------------------------------------------------
# Hypothesis properties
# ----------------------------------------------------------------------------------------------

KINDS = st.sampled_from(["flat", "hier2", "hier3", "multi"])


def head_kwargs(kind):
    return {"num_attributes": {"multi": 4, "flat": [3]}.get(kind, [2])}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 8), kind=KINDS)
def test_sgml_permutation_invariant(seed, batch, kind):
    x, labels = make_batch(kind, seed=seed, batch=batch)
    loss = build_sgml(head_kwargs(kind))
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    close(loss(x, labels), loss(x[perm], labels[perm]), tol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 8), kind=st.sampled_from(["flat", "hier2", "hier3"]))
def test_ie_permutation_invariant(seed, batch, kind):
    x, labels = make_batch(kind, seed=seed, batch=batch)
    labels = nested(labels)
    loss = build_ie({})
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    close(loss(x, labels), loss(x[perm], labels[perm]), tol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 6), kind=KINDS,
       scale=st.sampled_from([0.0, 1e-6, 1.0, 1e3]), dup=st.integers(0, 3))
def test_finite_gradients_with_duplicated_rows(seed, batch, kind, scale, dup):
    x, labels = make_batch(kind, seed=seed, batch=batch)
    x = torch.cat([x.detach(), x.detach()[:1].expand(dup, -1)]) * scale
    labels = torch.cat([labels, labels[:1].expand(dup, *labels.shape[1:])])
    x.requires_grad_()
    sgml = build_sgml(head_kwargs(kind))
    finite_grads(sgml(x, labels), [x] + list(sgml.parameters()))
    if kind != "multi":
        ie = build_ie({})
        finite_grads(ie(x, nested(labels)), [x, ie.centers])


# ----------------------------------------------------------------------------------------------
# Errors, registry, parameters, doctests
# ----------------------------------------------------------------------------------------------


def test_bad_num_attributes():
    x, labels = make_batch("hier2")
    with pytest.raises(ValueError, match="num_attributes: 3 class counts"):
        SGMLLoss(num_attributes=[2, 3, 2], embedding_size=4)(x, labels)
    _, multi = make_batch("multi")
    with pytest.raises(ValueError, match="num_attributes=C=4"):
        SGMLLoss(num_attributes=3, embedding_size=4)(x, multi)
    with pytest.raises(ValueError, match="num_attributes"):
        SGMLLoss(num_attributes=[0], embedding_size=4)
    with pytest.raises(ValueError, match="num_attributes"):
        SGMLLoss(num_attributes=[], embedding_size=4)
    with pytest.raises(ValueError, match="num_attributes"):
        SGMLLoss(num_attributes="3", embedding_size=4)
    with pytest.raises(ValueError, match="embedding_size: required"):
        SGMLLoss(num_attributes=[2])
    with pytest.raises(ValueError, match="embedding_size=5"):
        SGMLLoss(num_attributes=[2], embedding_size=5)(x, labels)


def test_labels_out_of_range():
    x, labels = make_batch("hier2")  # level 0 in 0..1, level 1 in 0..2
    with pytest.raises(ValueError, match=r"level 1 expected class ids in \[0, 2\)"):
        SGMLLoss(num_attributes=[2, 2], embedding_size=4)(x, labels)
    with pytest.raises(ValueError, match=r"level 0 expected class ids"):
        SGMLLoss(num_attributes=[2], embedding_size=4)(x, labels - 1)
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        IELoss(num_classes=2, embedding_size=4)(x, nested(labels))  # finest level has ids up to 2
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\)"):
        IELoss(num_classes=3, embedding_size=4)(x, labels[:, 1] - 1)


def test_bad_labels_and_arguments():
    x, labels = make_batch("hier2")
    with pytest.raises(TypeError, match="labels"):
        SGMLLoss()(x, labels.double())
    with pytest.raises(TypeError, match="labels"):
        IELoss(num_classes=3, embedding_size=4)(x, labels.double())
    with pytest.raises(TypeError, match="multi-label"):
        IELoss(num_classes=3, embedding_size=4)(x, make_batch("multi")[1])
    with pytest.raises(ValueError, match="level"):
        IELoss(num_classes=3, embedding_size=4, level=2)(x, labels)
    with pytest.raises(ValueError, match="num_classes"):
        IELoss(num_classes=1, embedding_size=4)
    with pytest.raises(ValueError, match="tuples"):
        IELoss(num_classes=3, embedding_size=4)(x, labels, Triplets(*[torch.tensor([0])] * 3))
    with pytest.raises(ValueError, match="ref_embeddings"):
        IELoss(num_classes=3, embedding_size=4)(x, labels, ref_embeddings=x, ref_labels=labels)
    with pytest.raises(ValueError, match="gamma"):
        IELoss(num_classes=3, embedding_size=4, gamma=0.0)
    with pytest.raises(ValueError, match="alpha"):
        SGMLLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="distance"):
        SGMLLoss(distance="euclidean")
    with pytest.raises(ValueError, match="reduction"):
        SGMLLoss(reduction="mean_nonzero")
    with pytest.raises(ValueError, match="NaN"):
        SGMLLoss()(torch.full((3, 2), math.nan), torch.tensor([0, 0, 1]))


def test_registry_and_parameters():
    sgml = LOSSES.create({"name": "sgml", "num_attributes": [2, 3], "embedding_size": 4})
    assert isinstance(sgml, SGMLLoss) and sgml.distance == "cosine"
    assert sum(p.numel() for p in sgml.parameters()) == 4 * 5 + 5
    assert list(SGMLLoss().parameters()) == []
    ie = LOSSES.create("ie", num_classes=5, embedding_size=4)
    assert isinstance(ie, IELoss) and [p.shape for p in ie.parameters()] == [torch.Size([5, 4])]
    assert "gamma=1.0" in repr(ie) and "num_attributes=[2, 3]" in repr(sgml)


def test_float32_and_state_dict_roundtrip():
    x, labels = make_batch("hier2", dtype=torch.float32)
    sgml = SGMLLoss(num_attributes=[2], embedding_size=4)
    assert sgml(x, labels).dtype == torch.float32
    copy = SGMLLoss(num_attributes=[2], embedding_size=4)
    copy.load_state_dict(sgml.state_dict())
    assert torch.equal(copy(x, labels), sgml(x, labels))
    ie = IELoss(num_classes=3, embedding_size=4)
    assert ie(x.double(), nested(labels)).dtype == torch.float64  # centres cast to the embeddings' dtype


@pytest.mark.parametrize("module", [gran_mod, FG])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
