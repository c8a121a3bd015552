"""Batch samplers that give a batch the structure metric learning needs.

``MPerClassSampler`` draws batches of ``P = batch_size / m`` classes with ``m`` items each (the
"P x K" batches of Hermans et al., 2017, "In Defense of the Triplet Loss for Person
Re-Identification"), so every item has ``m - 1`` positives and ``(P - 1) m`` negatives in its batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler

from deepmetric._checks import as_tensor, check_int, check_labels
from deepmetric.labels import item_classes

__all__ = ["MPerClassSampler", "HierarchicalBatchSampler"]


def _class_chunks(class_of: torch.Tensor, counts: torch.Tensor, k: torch.Tensor, m: int, g: torch.Generator):
    """Shuffle each class and cut it into ``k_c = ceil(n_c / m)`` chunks of ``m`` items.

    Returns ``(members, starts, first_chunk, chunks, chunk_class)``: the items grouped by class, each
    class in a random order (``members[starts[c] : starts[c] + n_c]``), the id of each class's first
    chunk, the ``(K, m)`` chunks (grouped by class) and each chunk's class. The last chunk of a
    class is topped up with the class's first items in its random order (distinct from the last
    chunk's) when ``n_c >= m``, else with random items of the class (with replacement).
    """
    n_items, n_classes, n_chunks = class_of.shape[0], counts.shape[0], int(k.sum())
    perm = torch.randperm(n_items, generator=g)
    members = perm[torch.argsort(class_of[perm], stable=True)]
    member_class = class_of[members]
    starts = torch.cumsum(counts, 0) - counts
    first_chunk = torch.cumsum(k, 0) - k
    rank_in_class = torch.arange(n_items) - starts[member_class]
    chunks = torch.empty(n_chunks, m, dtype=torch.long)
    chunks[first_chunk[member_class] + rank_in_class // m, rank_in_class % m] = members
    missing = k * m - counts
    top_class = torch.repeat_interleave(torch.arange(n_classes), missing)
    j = torch.arange(top_class.shape[0]) - torch.repeat_interleave(torch.cumsum(missing, 0) - missing, missing)
    n_top = counts[top_class]
    offset = torch.where(n_top >= m, j, (torch.rand(j.shape, generator=g) * n_top).long())
    chunks[first_chunk[top_class] + k[top_class] - 1, m - missing[top_class] + j] = members[starts[top_class] + offset]
    chunk_class = torch.repeat_interleave(torch.arange(n_classes), k)
    return members, starts, first_chunk, chunks, chunk_class


#: the golden-ratio step of a Weyl sequence modulo 2^32
GOLDEN_STEP = 0x9E3779B9


def stream_seed(seed: int, stream: int) -> int:
    """The 32-bit seed of stream ``stream`` (an epoch, a rank) of a run seeded with ``seed``::

        (stream + seed * 0x9E3779B9) mod 2^32

    torch's CPU generator keeps 32 bits of its seed. ``seed + stream`` gave seed ``s + 1`` the streams
    of seed ``s`` shifted by one (the batches of epoch e + 1, the random state of rank 1); the
    golden-ratio step puts the streams of seeds within 1,000 of each other at least 1.9 million apart,
    and leaves seed 0's streams as they were.
    """
    return (int(stream) + int(seed) * GOLDEN_STEP) % 2**32


class _EpochBatchSampler(Sampler[list[int]]):
    """Epoch state shared by the batch samplers, like ``DistributedSampler``: ``set_epoch``, a
    ``state_dict`` for resuming, and each rank's share of the epoch's batches.

    A subclass sets ``seed``, ``epoch``, ``num_batches``, ``num_replicas`` and ``rank``, and implements
    ``epoch_batches()`` -> ``(num_batches, batch_size)`` item indices of the current epoch. Ranks take
    alternate batches of the same epoch; the epoch is padded by repeating its first batches so that
    every rank gets the same number.
    """

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (see :meth:`epoch_generator`)."""
        self.epoch = check_int(epoch, "epoch", 0)

    def epoch_generator(self) -> torch.Generator:
        """The generator of the current epoch, seeded with :func:`stream_seed` ``(seed, epoch)``."""
        return torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"])

    def __len__(self) -> int:
        return math.ceil(self.num_batches / self.num_replicas)

    def __iter__(self):
        batches = self.epoch_batches()
        total = len(self) * self.num_replicas
        padded = batches[torch.arange(total) % batches.shape[0]]
        yield from padded[self.rank::self.num_replicas].tolist()


class MPerClassSampler(_EpochBatchSampler):
    """Batch sampler: each batch holds ``batch_size / m`` distinct classes with ``m`` items each.

    Use it as ``DataLoader(dataset, batch_sampler=MPerClassSampler(labels, m=4, batch_size=32))``
    and call ``set_epoch(epoch)`` before each epoch (as with ``DistributedSampler``): the order of an
    epoch depends only on ``(seed, epoch)``, so an epoch can be reproduced and a run resumed.

    Guarantees (DESIGN.md): every item appears at least once per epoch (over all ranks); a class with
    fewer than ``m`` items is drawn with replacement so that it still contributes ``m``; no batch holds
    two chunks of one class. Labels are ``(N,)`` integers, or an ``(N, L)`` hierarchy whose finest
    level (the combination of all columns) is the class.

    Algorithm for one epoch, with ``n_c`` items in class ``c``:

    1. shuffle each class and cut it into ``k_c = ceil(n_c / m)`` chunks of ``m``; the last chunk is
       topped up with other items of its class (without replacement when ``n_c >= m``, with
       replacement when the class is smaller than ``m``);
    2. the number of batches is the smallest that can hold every chunk with distinct classes per
       batch, ``B = max(ceil(K / P), max_c k_c)`` with ``K = sum_c k_c`` chunks: it depends on the
       labels only, so ``len()`` is known before iterating;
    3. lay the chunks out class after class (classes in a random order) and deal them into the batches
       level by level: positions ``l*B .. l*B + B - 1`` fill slot ``l`` of the batches in a random
       order ``sigma_l``. A class spans at most two consecutive levels (``k_c <= B``); when it does,
       ``sigma_l`` sends its chunks on level ``l`` to batches it did not use on level ``l - 1``;
    4. empty slots (``B * P - K`` of them) get an extra chunk from a class not yet in that batch, drawn
       uniformly; then the batches are shuffled.

    With ``num_replicas > 1`` every rank computes the same epoch, the list of batches is padded by
    repeating its first batches to a multiple of ``num_replicas``, and rank ``r`` takes batches
    ``r, r + num_replicas, ...``; ``len()`` is that per-rank count.

    >>> s = MPerClassSampler(torch.tensor([0, 0, 1, 1, 2, 2, 2]), m=2, batch_size=4)
    >>> len(s), all(len(b) == 4 for b in s)
    (2, True)
    """

    def __init__(self, labels, m: int, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        labels = as_tensor(labels if isinstance(labels, torch.Tensor) else np.asarray(labels), "labels")
        if labels.dim() == 0 or labels.shape[0] == 0:
            raise ValueError(f"labels: expected a non-empty (N,) or (N, L) tensor, got shape {tuple(labels.shape)}")
        labels = check_labels(labels, labels.shape[0], "labels")
        if labels.dtype == torch.bool:
            raise ValueError("labels: m-per-class sampling needs one class per item: (N,) or (N, L) integers, "
                             "got (N, C) bool multi-label")
        self.m = check_int(m, "m", 1)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        if self.batch_size % self.m:
            raise ValueError(f"batch_size: expected a multiple of m={self.m}, got {self.batch_size}")
        self.num_replicas = check_int(num_replicas, "num_replicas", 1)
        self.rank = check_int(rank, "rank", 0, self.num_replicas - 1)
        self.seed = check_int(seed, "seed")
        self.epoch = 0

        self._class_of = item_classes(labels)[1]
        self._counts = torch.bincount(self._class_of)
        self.num_classes = int(self._counts.shape[0])
        self.classes_per_batch = self.batch_size // self.m
        if self.num_classes < self.classes_per_batch:
            raise ValueError(
                f"batch_size: {self.batch_size} / m={self.m} needs {self.classes_per_batch} classes per batch, "
                f"but labels hold only {self.num_classes} classes; lower batch_size or raise m")
        self._chunks_per_class = (self._counts + self.m - 1) // self.m
        num_chunks = int(self._chunks_per_class.sum())
        self.num_batches = max(math.ceil(num_chunks / self.classes_per_batch), int(self._chunks_per_class.max()))

    # -- one epoch --------------------------------------------------------------------------------

    def epoch_batches(self) -> torch.Tensor:
        """All ``(B, batch_size)`` item indices of the current epoch, before the split over ranks."""
        g = self.epoch_generator()
        m, p, b = self.m, self.classes_per_batch, self.num_batches
        counts, k = self._counts, self._chunks_per_class
        n_classes, n_chunks = self.num_classes, int(k.sum())

        # 1. items grouped by class, each class in a random order, cut into chunks of m
        members, starts, first_chunk, chunks, chunk_class = _class_chunks(self._class_of, counts, k, m, g)

        # 3. lay chunks out class after class in a random class order, deal level by level
        class_order = torch.randperm(n_classes, generator=g)
        k_ordered = k[class_order]
        seq_class = torch.repeat_interleave(class_order, k_ordered)
        seq_within = torch.arange(n_chunks) - torch.repeat_interleave(torch.cumsum(k_ordered, 0) - k_ordered, k_ordered)
        seq_chunk = first_chunk[seq_class] + seq_within
        table = torch.full((b, p), -1, dtype=torch.long)  # chunk id per (batch, slot)
        sigma = torch.randperm(b, generator=g)
        for level in range(math.ceil(n_chunks / b)):
            lo = level * b
            if level > 0 and seq_within[lo] > 0:  # a class runs over from the previous level
                c = seq_class[lo]
                later = int(k[c] - seq_within[lo])  # its chunks on this level: positions 0..later-1
                a = b - int(seq_within[lo])  # it used sigma[a:] on the previous level
                free = sigma[:a][torch.randperm(a, generator=g)]
                rest = torch.cat([free[later:], sigma[a:]])
                sigma = torch.cat([free[:later], rest[torch.randperm(rest.shape[0], generator=g)]])
            elif level > 0:
                sigma = torch.randperm(b, generator=g)
            hi = min(lo + b, n_chunks)
            table[sigma[: hi - lo], level] = seq_chunk[lo:hi]

        # 4. fill empty slots with an extra chunk of a class absent from that batch
        batch_class = torch.where(table >= 0, chunk_class[table.clamp(min=0)], -1)
        batch_items = torch.empty(b, p, m, dtype=torch.long)
        batch_items[table >= 0] = chunks[table[table >= 0]]
        needy = (table < 0).any(dim=1).nonzero().flatten()
        rows_per_block = max(1, (1 << 22) // (n_classes + 1))
        for block in needy.split(rows_per_block):
            cls = batch_class[block]
            keys = torch.rand(block.shape[0], n_classes + 1, generator=g)
            keys.scatter_(1, torch.where(cls >= 0, cls, n_classes), 2.0)  # present classes never drawn
            absent = torch.topk(keys[:, :n_classes], p, dim=1, largest=False).indices
            empty = cls < 0
            pick = absent.gather(1, (torch.cumsum(empty.long(), 1) - 1).clamp(min=0))
            batch_class[block] = torch.where(empty, pick, cls)
        empty = table < 0
        fill_class = batch_class[empty]
        if fill_class.numel():
            n_fill = counts[fill_class]
            start = (torch.rand(fill_class.shape, generator=g) * n_fill).long()
            window = (start.unsqueeze(1) + torch.arange(m)) % n_fill.unsqueeze(1)  # m distinct when n_c >= m
            random = (torch.rand(fill_class.shape[0], m, generator=g) * n_fill.unsqueeze(1)).long()
            offset = torch.where((n_fill >= m).unsqueeze(1), window, random)
            batch_items[empty] = members[starts[fill_class].unsqueeze(1) + offset]

        batches = batch_items.reshape(b, p * m)
        return batches[torch.randperm(b, generator=g)]


def _check_rank(num_replicas, rank) -> tuple[int, int]:
    num_replicas = check_int(num_replicas, "num_replicas", 1)
    return num_replicas, check_int(rank, "rank", 0, num_replicas - 1)


def _deal(group_sizes: torch.Tensor, slots: int, g: torch.Generator):
    """Deal ``sum(group_sizes)`` items, grouped, into ``n`` bins of ``slots`` slots so that no bin gets
    two items of one group: ``n = max(ceil(total / slots), max size)``; groups are laid out one after
    the other in a random order, and position ``j`` goes to bin ``j mod n``, slot ``j div n`` (a group
    of at most ``n`` consecutive positions never meets a bin twice). Returns ``n`` and the
    ``(n, slots)`` table of item ids (items numbered group after group, in the given group order;
    ``-1`` for an empty slot)."""
    total = int(group_sizes.sum())
    n = max(math.ceil(total / slots), int(group_sizes.max()))
    first = torch.cumsum(group_sizes, 0) - group_sizes
    order = torch.randperm(group_sizes.shape[0], generator=g)
    sizes = group_sizes[order]
    within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    items = torch.repeat_interleave(first[order], sizes) + within
    table = torch.full((slots * n,), -1, dtype=torch.long)
    table[:total] = items
    return n, table.view(slots, n).T.contiguous()


def _fill_absent(table_groups: torch.Tensor, n_groups: int, g: torch.Generator) -> torch.Tensor:
    """For a ``(rows, slots)`` table of group ids (``-1`` empty), a group for every empty slot, drawn
    uniformly among the groups absent from its row (distinct within a row; needs ``n_groups >=
    slots``). Returns the completed table."""
    rows, slots = table_groups.shape
    empty = table_groups < 0
    if not empty.any():
        return table_groups
    keys = torch.rand(rows, n_groups + 1, generator=g)
    keys.scatter_(1, torch.where(empty, n_groups, table_groups), 2.0)  # present groups never drawn
    absent = torch.topk(keys[:, :n_groups], slots, dim=1, largest=False).indices
    pick = absent.gather(1, (torch.cumsum(empty.long(), 1) - 1).clamp(min=0))
    return torch.where(empty, pick, table_groups)


class HierarchicalBatchSampler(_EpochBatchSampler):
    """Batch sampler for two-level labels: each batch holds ``super_classes_per_batch`` super-classes,
    ``classes_per_super_class`` classes of each, and ``samples_per_class`` items of each class
    (the batches of hierarchical retrieval, e.g. Stanford Online Products' super-classes).

    ``labels`` is ``(N, 2)`` int64 (DESIGN.md): column 0 the super-class, column 1 the class within it
    (class ids may recur under different super-classes; the class is the pair). A longer hierarchy
    ``(N, L)`` uses column 0 as the super-class and the full row as the class. ``batch_size`` is
    ``S * C * m``.

    Use it as ``DataLoader(dataset, batch_sampler=...)`` and call ``set_epoch(epoch)`` before each
    epoch: the order depends only on ``(seed, epoch)``. Guarantees, as :class:`MPerClassSampler`:
    every item appears at least once per epoch (over all ranks); a class with fewer than ``m`` items is
    drawn with replacement; within a batch, the ``S`` super-classes are distinct and so are the ``C``
    classes of each. ``len()`` depends on the labels only.

    Algorithm for one epoch: (1) shuffle each class and cut it into chunks of ``m`` (the last one
    topped up with other items of its class); (2) within each super-class, deal its chunks into
    *units* of ``C`` chunks of distinct classes (classes in a random order, position ``j`` to unit
    ``j mod U``; ``U = max(ceil(K_s / C), max_c k_c)``), filling empty slots with a fresh chunk of a
    class absent from the unit; (3) deal the units the same way into batches of ``S`` units of
    distinct super-classes, filling empty slots with a fresh unit (``C`` random distinct classes) of
    an absent super-class; (4) shuffle the batches.

    With ``num_replicas > 1`` every rank computes the same epoch (same seed), the batches are padded by
    repeating the first ones to a multiple of ``num_replicas``, and rank ``r`` takes batches
    ``r, r + num_replicas, ...``: the ranks' shards are disjoint parts of one epoch.

    >>> labels = torch.tensor([[s, c] for s in range(3) for c in range(3) for _ in range(2)])
    >>> sampler = HierarchicalBatchSampler(labels, 2, 2, 2)
    >>> batches = list(sampler)
    >>> len(batches[0]), len(sampler) == len(batches)
    (8, True)
    """

    def __init__(self, labels, super_classes_per_batch: int, classes_per_super_class: int,
                 samples_per_class: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        labels = as_tensor(labels if isinstance(labels, torch.Tensor) else np.asarray(labels), "labels")
        if labels.dim() != 2 or labels.shape[0] == 0 or labels.shape[1] < 2:
            raise ValueError(f"labels: expected a non-empty (N, L) hierarchical tensor with L >= 2 (column 0 the "
                             f"super-class), got shape {tuple(labels.shape)}")
        labels = check_labels(labels, labels.shape[0], "labels")
        if labels.dtype == torch.bool:
            raise ValueError("labels: expected (N, L) integer hierarchical labels, got bool multi-label")
        self.super_classes_per_batch = check_int(super_classes_per_batch, "super_classes_per_batch", 1)
        self.classes_per_super_class = check_int(classes_per_super_class, "classes_per_super_class", 1)
        self.samples_per_class = check_int(samples_per_class, "samples_per_class", 1)
        self.batch_size = self.super_classes_per_batch * self.classes_per_super_class * self.samples_per_class
        self.num_replicas, self.rank = _check_rank(num_replicas, rank)
        self.seed = check_int(seed, "seed")
        self.epoch = 0

        self._class_of = item_classes(labels)[1]
        self._counts = torch.bincount(self._class_of)
        n_classes = self._counts.shape[0]
        # super-class of each class (classes are sorted rows, so column 0 is sorted too)
        super_of_item = torch.unique(labels[:, 0], return_inverse=True)[1]
        self._super_of_class = torch.zeros(n_classes, dtype=torch.long).scatter_(0, self._class_of, super_of_item)
        self.num_classes = int(n_classes)
        self.num_super_classes = int(self._super_of_class.max()) + 1
        classes_per_super = torch.bincount(self._super_of_class, minlength=self.num_super_classes)
        if self.num_super_classes < self.super_classes_per_batch:
            raise ValueError(f"super_classes_per_batch: {self.super_classes_per_batch} distinct super-classes per "
                             f"batch, but labels hold only {self.num_super_classes}")
        small = (classes_per_super < self.classes_per_super_class).nonzero().flatten()
        if small.numel():
            ids = torch.unique(labels[:, 0])[small][:5].tolist()
            raise ValueError(f"classes_per_super_class: {self.classes_per_super_class} distinct classes per "
                             f"super-class, but super-classes {ids} have only "
                             f"{classes_per_super[small][:5].tolist()}")
        # classes ordered by super-class: rank of each class within its super-class
        self._classes_by_super = torch.argsort(self._super_of_class, stable=True)
        self._class_start = torch.cumsum(classes_per_super, 0) - classes_per_super
        self._classes_per_super = classes_per_super
        self._chunks_per_class = (self._counts + self.samples_per_class - 1) // self.samples_per_class
        chunks_per_super = torch.zeros(self.num_super_classes, dtype=torch.long).index_add_(
            0, self._super_of_class, self._chunks_per_class)
        max_chunks = torch.zeros(self.num_super_classes, dtype=torch.long).scatter_reduce_(
            0, self._super_of_class, self._chunks_per_class, "amax")
        c = self.classes_per_super_class
        self._units_per_super = torch.maximum((chunks_per_super + c - 1) // c, max_chunks)
        s = self.super_classes_per_batch
        self.num_batches = max(math.ceil(int(self._units_per_super.sum()) / s), int(self._units_per_super.max()))

    def _random_chunks(self, classes: torch.Tensor, members, starts, g) -> torch.Tensor:
        """``(len(classes), m)`` fresh chunks: ``m`` random items of each class, distinct when the
        class has at least ``m`` items."""
        m = self.samples_per_class
        n = self._counts[classes]
        start = (torch.rand(classes.shape, generator=g) * n).long()
        window = (start.unsqueeze(1) + torch.arange(m)) % n.unsqueeze(1)
        random = (torch.rand(classes.shape[0], m, generator=g) * n.unsqueeze(1)).long()
        offset = torch.where((n >= m).unsqueeze(1), window, random)
        return members[starts[classes].unsqueeze(1) + offset]

    def epoch_batches(self) -> torch.Tensor:
        """All ``(num_batches, batch_size)`` item indices of the current epoch, before the split over ranks."""
        g = self.epoch_generator()
        m, c, s = self.samples_per_class, self.classes_per_super_class, self.super_classes_per_batch
        counts, k = self._counts, self._chunks_per_class

        # 1. chunks of m items of one class, chunk ids grouped by class
        members, starts, first_chunk, chunks, _ = _class_chunks(self._class_of, counts, k, m, g)

        # 2. per super-class, units of c chunks of distinct classes: (units, c, m) item tables
        units, unit_super = [], []
        for sup in range(self.num_super_classes):
            lo = int(self._class_start[sup])
            classes = self._classes_by_super[lo:lo + int(self._classes_per_super[sup])]
            n_units, table = _deal(k[classes], c, g)  # ids of this super-class's chunks, class after class
            kc = k[classes]
            chunk_ids = torch.repeat_interleave(first_chunk[classes], kc) + torch.arange(int(kc.sum())) \
                - torch.repeat_interleave(torch.cumsum(kc, 0) - kc, kc)
            local = torch.where(table >= 0, torch.repeat_interleave(torch.arange(classes.shape[0]), k[classes])[
                table.clamp(min=0)], -1)  # local class index per slot
            local = _fill_absent(local, classes.shape[0], g)
            items = torch.empty(n_units, c, m, dtype=torch.long)
            filled = table >= 0
            items[filled] = chunks[chunk_ids[table[filled]]]
            if (~filled).any():
                items[~filled] = self._random_chunks(classes[local[~filled]], members, starts, g)
            units.append(items)
            unit_super.append(torch.full((n_units,), sup, dtype=torch.long))
        units = torch.cat(units)

        # 3. batches of s units of distinct super-classes
        n_batches, table = _deal(self._units_per_super, s, g)
        unit_super_of = torch.cat(unit_super)
        sup_table = torch.where(table >= 0, unit_super_of[table.clamp(min=0)], -1)
        sup_table = _fill_absent(sup_table, self.num_super_classes, g)
        batch_items = torch.empty(n_batches, s, c, m, dtype=torch.long)
        filled = table >= 0
        batch_items[filled] = units[table[filled]]
        need = sup_table[~filled]
        if need.numel():
            # a fresh unit per empty slot: c random distinct classes of the super-class, a random chunk each
            keys = torch.rand(need.shape[0], int(self._classes_per_super.max()), generator=g)
            keys = keys.masked_fill(torch.arange(keys.shape[1]) >= self._classes_per_super[need].unsqueeze(1), 2.0)
            local = torch.topk(keys, c, dim=1, largest=False).indices
            classes = self._classes_by_super[self._class_start[need].unsqueeze(1) + local]
            batch_items[~filled] = self._random_chunks(classes.reshape(-1), members, starts, g).view(-1, c, m)
        assert n_batches == self.num_batches
        batches = batch_items.reshape(n_batches, self.batch_size)
        return batches[torch.randperm(n_batches, generator=g)]
