"""HierarchicalBatchSampler (structure, coverage, epochs, ranks, errors) and the split of
MPerClassSampler / HierarchicalBatchSampler over simulated torch.distributed ranks."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmetric.data.samplers import HierarchicalBatchSampler, MPerClassSampler


def check_batch(batch, labels, s, c, m):
    """s distinct super-classes, c distinct classes in each, m items per class (distinct items when
    the class has at least m)."""
    rows = [tuple(labels[i].tolist()) for i in batch]
    assert len(batch) == s * c * m
    by_super: dict[int, Counter] = {}
    for r in rows:
        by_super.setdefault(r[0], Counter())[r] += 1
    assert len(by_super) == s
    sizes = Counter(tuple(r.tolist()) for r in labels)
    for classes in by_super.values():
        assert len(classes) == c
        assert all(v == m for v in classes.values())
    by_class: dict[tuple, list[int]] = {}
    for i, r in zip(batch, rows):
        by_class.setdefault(r, []).append(i)
    for r, items in by_class.items():
        if sizes[r] >= m:
            assert len(set(items)) == m


@st.composite
def hierarchies(draw):
    s = draw(st.integers(1, 3))
    c = draw(st.integers(1, 3))
    m = draw(st.integers(1, 3))
    n_super = draw(st.integers(s, s + 3))
    rows = []
    for sup in range(n_super):
        n_cls = draw(st.integers(c, c + 2))
        for cls in range(n_cls):
            size = draw(st.integers(1, 7))
            rows += [[sup * 7 - 3, cls]] * size  # class ids recur under different super-classes
    order = draw(st.permutations(range(len(rows))))
    return torch.tensor([rows[i] for i in order]), s, c, m


@settings(max_examples=30, deadline=None)
@given(h=hierarchies(), seed=st.integers(0, 100), epoch=st.integers(0, 5))
def test_structure_and_coverage(h, seed, epoch):
    labels, s, c, m = h
    sampler = HierarchicalBatchSampler(labels, s, c, m, seed=seed)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for b in batches:
        check_batch(b, labels, s, c, m)
    seen = {i for b in batches for i in b}
    assert seen == set(range(len(labels)))  # every item at least once


@settings(max_examples=20, deadline=None)
@given(h=hierarchies(), seed=st.integers(0, 100))
def test_len_depends_on_labels_only_and_is_minimal(h, seed):
    labels, s, c, m = h
    a = HierarchicalBatchSampler(labels, s, c, m, seed=seed)
    lengths = set()
    for epoch in range(3):
        a.set_epoch(epoch)
        lengths.add(len(list(a)))
    assert lengths == {len(a)}
    # at least enough batches to hold every item once, and no more than needed by the largest class
    assert len(a) * s * c * m >= len(labels)


def test_epochs_and_seeds_are_reproducible():
    labels = torch.tensor([[s, c] for s in range(4) for c in range(3) for _ in range(5)])
    a = HierarchicalBatchSampler(labels, 2, 2, 2, seed=1)
    b = HierarchicalBatchSampler(labels, 2, 2, 2, seed=1)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    b.load_state_dict(a.state_dict())
    assert list(b) == list(a)
    assert list(HierarchicalBatchSampler(labels, 2, 2, 2, seed=2)) != first


def test_small_classes_drawn_with_replacement():
    labels = torch.tensor([[0, 0], [0, 1], [0, 1], [1, 0], [1, 1], [1, 1], [1, 1]])
    sampler = HierarchicalBatchSampler(labels, 2, 2, 3)
    batches = list(sampler)
    for b in batches:
        check_batch(b, labels, 2, 2, 3)
    assert {i for b in batches for i in b} == set(range(7))


def test_longer_hierarchy_uses_full_row_as_class():
    labels = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]])
    for b in HierarchicalBatchSampler(labels, 2, 2, 2):
        check_batch(b, labels, 2, 2, 2)


def test_dataloader_usage():
    from torch.utils.data import DataLoader, TensorDataset
    labels = torch.tensor([[s, c] for s in range(3) for c in range(2) for _ in range(4)])
    ds = TensorDataset(torch.arange(len(labels)), labels)
    loader = DataLoader(ds, batch_sampler=HierarchicalBatchSampler(labels, 3, 2, 2))
    for idx, lab in loader:
        assert idx.shape == (12,) and torch.equal(lab, labels[idx])


def test_errors():
    labels = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    with pytest.raises(ValueError, match="labels"):
        HierarchicalBatchSampler(torch.tensor([0, 1, 2]), 1, 1, 1)
    with pytest.raises(ValueError, match="super_classes_per_batch"):
        HierarchicalBatchSampler(labels, 3, 1, 1)
    with pytest.raises(ValueError, match="classes_per_super_class"):
        HierarchicalBatchSampler(labels, 1, 3, 1)
    with pytest.raises(ValueError, match="samples_per_class"):
        HierarchicalBatchSampler(labels, 1, 1, 0)
    with pytest.raises(ValueError, match="rank"):
        HierarchicalBatchSampler(labels, 1, 1, 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="epoch"):
        HierarchicalBatchSampler(labels, 1, 1, 1).set_epoch(-1)
    with pytest.raises(TypeError, match="labels"):
        HierarchicalBatchSampler(torch.zeros(4, 2), 1, 1, 1)


# ----------------------------------------------------------------------------------------------
# Distributed: two simulated ranks
# ----------------------------------------------------------------------------------------------

def _make(kind, labels, seed, world, rank):
    if kind == "hierarchical":
        return HierarchicalBatchSampler(labels, 2, 2, 2, seed=seed, num_replicas=world, rank=rank)
    return MPerClassSampler(labels[:, 0] * 10 + labels[:, 1], m=2, batch_size=8, seed=seed,
                            num_replicas=world, rank=rank)


@pytest.mark.parametrize("kind", ["hierarchical", "m-per-class"])
@pytest.mark.parametrize("sizes", [(3, 3, 4), (4, 3, 5), (5, 2, 3)])
@pytest.mark.parametrize("epoch", [0, 3])
def test_two_ranks_disjoint_shards_of_one_epoch(kind, sizes, epoch):
    n_super, n_cls, per = sizes
    labels = torch.tensor([[s, c] for s in range(n_super) for c in range(n_cls) for _ in range(per)])
    ranks = [_make(kind, labels, 7, 2, r) for r in range(2)]
    single = _make(kind, labels, 7, 1, 0)
    for smp in ranks + [single]:
        smp.set_epoch(epoch)
    shards = [list(smp) for smp in ranks]
    epoch_batches = single.epoch_batches().tolist()
    # both ranks compute the same epoch (same seed and epoch) as one process does ...
    assert ranks[0].epoch_batches().tolist() == ranks[1].epoch_batches().tolist() == epoch_batches
    # ... and take alternating, disjoint positions of it, padded by repeating the first batches
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == -(-len(epoch_batches) // 2)
    padded = [epoch_batches[i % len(epoch_batches)] for i in range(2 * len(shards[0]))]
    assert shards[0] == padded[0::2] and shards[1] == padded[1::2]
    # every item is seen by some rank in the epoch
    assert {i for sh in shards for b in sh for i in b} == set(range(len(labels)))
    # a different epoch gives a different order on each rank
    for smp in ranks:
        smp.set_epoch(epoch + 1)
    assert [list(smp) for smp in ranks] != shards
