"""MPerClassSampler: coverage, batch structure, replacement, epochs, ranks, errors."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from deepmetric.data import MPerClassSampler


def _check_batch(batch, labels, m, batch_size):
    """A batch has batch_size items: batch_size / m classes, m items each, distinct items within a
    class whenever the class has at least m items."""
    assert len(batch) == batch_size
    assert all(0 <= i < len(labels) for i in batch)
    by_class: dict[int, list[int]] = {}
    for i in batch:
        by_class.setdefault(labels[i], []).append(i)
    assert len(by_class) == batch_size // m
    class_sizes = Counter(labels)
    for c, items in by_class.items():
        assert len(items) == m
        if class_sizes[c] >= m:
            assert len(set(items)) == m


@st.composite
def label_patterns(draw):
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=10))
    ids = draw(st.lists(st.integers(-50, 50), min_size=len(sizes), max_size=len(sizes), unique=True))
    labels = [c for c, n in zip(ids, sizes) for _ in range(n)]
    order = draw(st.permutations(range(len(labels))))
    labels = [labels[i] for i in order]
    m = draw(st.integers(1, 5))
    per_batch = draw(st.integers(1, len(sizes)))
    return labels, m, per_batch * m


@settings(max_examples=150, deadline=None)
@given(label_patterns(), st.integers(0, 3))
def test_every_item_at_least_once_and_batches_well_formed(pattern, epoch):
    labels, m, batch_size = pattern
    sampler = MPerClassSampler(torch.tensor(labels), m=m, batch_size=batch_size, seed=epoch * 7)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    seen = set()
    for batch in batches:
        _check_batch(batch, labels, m, batch_size)
        seen.update(batch)
    assert seen == set(range(len(labels)))
    # the fewest batches that can hold every class's chunks with distinct classes per batch
    chunks = [math.ceil(n / m) for n in Counter(labels).values()]
    assert len(batches) == max(math.ceil(sum(chunks) / (batch_size // m)), max(chunks))


def test_small_class_drawn_with_replacement():
    labels = [0] * 8 + [1] + [2] * 2  # class 1 has one item, class 2 two, m = 4
    sampler = MPerClassSampler(labels, m=4, batch_size=8, seed=1)
    batches = list(sampler)
    with_single = [b for b in batches if 8 in b]
    assert with_single and all(b.count(8) == 4 for b in with_single)
    with_pair = [b for b in batches if 9 in b or 10 in b]
    assert with_pair and all(Counter(i for i in b if i in (9, 10)).total() == 4 for b in with_pair)
    assert {9, 10} <= set().union(*batches)


def test_top_up_of_last_chunk_stays_in_class_without_repeats():
    labels = [0] * 5 + [1] * 5 + [2] * 5  # 5 = 4 + 1: the second chunk needs 3 more items
    for epoch in range(10):
        sampler = MPerClassSampler(labels, m=4, batch_size=8, seed=0)
        sampler.set_epoch(epoch)
        for batch in sampler:
            _check_batch(batch, labels, 4, 8)


def test_dominant_class_gets_partners_in_every_batch():
    labels = [0] * 40 + [1] * 2 + [2] * 2
    sampler = MPerClassSampler(labels, m=2, batch_size=4)
    batches = list(sampler)
    assert len(batches) == 20  # class 0 needs 20 chunks, one per batch
    for batch in batches:
        _check_batch(batch, labels, 2, 4)
    assert sum(1 for b in batches for i in b if labels[i] == 0) == 40


def test_classes_mix_across_batches():
    """Chunks of one class meet many different classes over an epoch (not a fixed set of partners)."""
    labels = np.repeat(np.arange(40), 8).tolist()
    sampler = MPerClassSampler(labels, m=2, batch_size=8)
    partners = set()
    for batch in sampler:
        classes = {labels[i] for i in batch}
        if 0 in classes:
            partners |= classes - {0}
    assert len(partners) >= 7  # 4 batches with class 0, 3 partners each: far more than one batch's worth


def test_hierarchical_labels_use_the_finest_level():
    # sub-class ids recur under different parents: (0, 0) and (1, 0) are different classes
    labels = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [0, 1], [0, 1]])
    sampler = MPerClassSampler(labels, m=2, batch_size=6)
    (batch,) = list(sampler)
    rows = Counter(tuple(labels[i].tolist()) for i in batch)
    assert rows == {(0, 0): 2, (1, 0): 2, (0, 1): 2}


def test_set_epoch_changes_order_and_reproduces():
    labels = np.repeat(np.arange(10), 6)
    a = MPerClassSampler(labels, m=3, batch_size=9, seed=5)
    b = MPerClassSampler(labels, m=3, batch_size=9, seed=5)
    first = list(a)
    assert first == list(b) == list(a)  # same seed and epoch: same order, also when iterated again
    a.set_epoch(1)
    second = list(a)
    assert second != first and len(second) == len(first)
    a.set_epoch(0)
    assert list(a) == first
    state = a.state_dict()
    c = MPerClassSampler(labels, m=3, batch_size=9, seed=99)
    c.load_state_dict(state)
    assert list(c) == first
    assert list(MPerClassSampler(labels, m=3, batch_size=9, seed=6)) != first


def test_neighbouring_seeds_do_not_replay_each_others_epochs():
    # seeded with seed + epoch, seed 6 replayed seed 5's batches one epoch later: runs "over seeds"
    # saw the same batches; the hierarchical sampler shares the seeding
    from deepmetric.data import HierarchicalBatchSampler
    from deepmetric.data.samplers import stream_seed
    flat = np.repeat(np.arange(10), 6)
    hier = np.stack([np.arange(60) // 20, np.arange(60) // 5], 1)
    for make in (lambda seed: MPerClassSampler(flat, m=3, batch_size=9, seed=seed),
                 lambda seed: HierarchicalBatchSampler(hier, 2, 2, 2, seed=seed)):
        epochs = {}
        for seed in (0, 1, 2):
            sampler = make(seed)
            for epoch in range(4):
                sampler.set_epoch(epoch)
                epochs[seed, epoch] = list(sampler)
        for (s, e), batches in epochs.items():
            assert all(batches != other for (s2, e2), other in epochs.items() if s2 != s)
    # the run's random streams: rank r of seed s is not rank 0 of seed s + r; seed 0 keeps its streams
    assert len({stream_seed(s, r) for s in range(1000) for r in range(64)}) == 1000 * 64
    assert [stream_seed(0, e) for e in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("n_classes, replicas", [(12, 3), (13, 3), (7, 4), (3, 5)])
def test_distributed_ranks(n_classes, replicas):
    labels = np.repeat(np.arange(n_classes), 4)
    samplers = [MPerClassSampler(labels, m=2, batch_size=4, seed=2, num_replicas=replicas, rank=r)
                for r in range(replicas)]
    for s in samplers:
        s.set_epoch(3)
    per_rank = [list(s) for s in samplers]
    whole = samplers[0].epoch_batches().tolist()
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    assert len(per_rank[0]) == math.ceil(len(whole) / replicas)
    # rank r takes batches r, r + R, ... of the same epoch, padded by repeating the first batches
    padded = [whole[i % len(whole)] for i in range(len(per_rank[0]) * replicas)]
    for r in range(replicas):
        assert per_rank[r] == padded[r::replicas]
    # without padding the ranks' batches are disjoint; together they cover every item
    if len(whole) % replicas == 0:
        keys = [set(map(tuple, p)) for p in per_rank]
        assert all(not keys[i] & keys[j] for i in range(replicas) for j in range(i + 1, replicas))
    assert set().union(*(set(i for b in p for i in b) for p in per_rank)) == set(range(len(labels)))


def test_dataloader_batches():
    labels = torch.tensor(np.repeat(np.arange(6), 5))
    data = TensorDataset(torch.arange(30.0), labels)
    loader = DataLoader(data, batch_sampler=MPerClassSampler(labels, m=5, batch_size=10))
    for x, y in loader:
        assert x.shape == (10,) and sorted(Counter(y.tolist()).values()) == [5, 5]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"m": 3, "batch_size": 8}, ValueError, "batch_size: expected a multiple of m=3, got 8"),
    ({"m": 2, "batch_size": 10}, ValueError, "5 classes per batch.*only 4 classes"),
    ({"m": 0, "batch_size": 4}, ValueError, "m: expected an integer >= 1, got 0"),
    ({"m": 2, "batch_size": 0}, ValueError, "batch_size: expected an integer >= 1"),
    ({"m": 2.0, "batch_size": 4}, ValueError, "m: expected an integer >= 1, got 2.0"),
    ({"m": 2, "batch_size": 4, "num_replicas": 2, "rank": 2}, ValueError, r"rank: expected an integer in \[0, 1\]"),
    ({"m": 2, "batch_size": 4, "num_replicas": 0}, ValueError, "num_replicas"),
    ({"m": 2, "batch_size": 4, "seed": "a"}, ValueError, "seed"),
])
def test_bad_arguments(kwargs, error, match):
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(error, match=match):
        MPerClassSampler(labels, **kwargs)


def test_bad_labels():
    with pytest.raises(TypeError, match="float32"):
        MPerClassSampler(torch.tensor([0.0, 1.0]), m=1, batch_size=1)
    with pytest.raises(ValueError, match="multi-label"):
        MPerClassSampler(torch.tensor([[True, False], [False, True]]), m=1, batch_size=1)
    with pytest.raises(ValueError, match="non-empty"):
        MPerClassSampler(torch.tensor([], dtype=torch.long), m=1, batch_size=1)
    with pytest.raises(ValueError, match="epoch"):
        MPerClassSampler(torch.tensor([0, 1]), m=1, batch_size=1).set_epoch(-1)


def test_large_label_set_is_fast_enough():
    labels = torch.randint(0, 1000, (30000,), generator=torch.Generator().manual_seed(0))
    sampler = MPerClassSampler(labels, m=4, batch_size=64)
    batches = sampler.epoch_batches()
    assert batches.shape == (len(sampler), 64)
    assert torch.unique(batches).numel() == 30000
