"""Cross-batch memory (XBM): past embeddings as the reference set of any loss that accepts one."""
from __future__ import annotations

import torch
from torch import nn

from deepmetric import mining
from deepmetric._checks import check_int, check_pair
from deepmetric.labels import pair_masks
from deepmetric.losses.base import LOSSES
from deepmetric.tuples import Pairs, Triplets


@LOSSES.register("xbm")
class CrossBatchMemory(nn.Module):
    """Cross-batch memory (Wang, Zhang, Huang, Scott, CVPR 2020, "Cross-Batch Memory for Embedding
    Learning").

    A FIFO queue ``M`` of the last ``memory_size`` embeddings (detached) and their labels. Each call
    enqueues the batch, then computes ``loss(x, y, tuples, M_x, M_y)``: anchors from the batch,
    references from the whole memory (the batch included), so a batch of B is compared with up to
    ``memory_size`` items at the cost of a ``(B, memory_size)`` distance matrix. ``tuples`` come from
    ``miner(x, y, M_x, M_y)``, or are every pair of the batch against the memory; in both cases an
    anchor's own slot in the memory is removed from its positives (no self-comparison), as in
    pytorch-metric-learning's ``CrossBatchMemory``, which this equals. Gradients reach the anchors
    only (memory entries are constants, as in the paper).

    The queue is a buffer, so it is saved in checkpoints with the loss. Flat labels only.

    Args:
        loss: the wrapped loss (a module, a registry name or a ``{name: ...}`` mapping); it must
            accept a reference set and Pairs (or Triplets, with a triplet miner).
        embedding_size: D.
        memory_size: queue length (>= the batch size).
        miner: optional miner (module, name or mapping), called against the memory.

    >>> import torch, deepmetric as dm
    >>> xbm = dm.losses.create("xbm", loss="contrastive", embedding_size=2, memory_size=8)
    >>> float(xbm(torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 0, 1])))
    0.0
    """

    def __init__(self, loss, embedding_size: int, memory_size: int = 1024, miner=None):
        super().__init__()
        embedding_size = check_int(embedding_size, "embedding_size", 1)
        self.memory_size = memory_size = check_int(memory_size, "memory_size", 1)
        self.loss = loss if isinstance(loss, nn.Module) else LOSSES.create(loss)
        self.miner = miner if miner is None or callable(miner) else mining.create(miner)
        self.register_buffer("memory", torch.zeros(memory_size, embedding_size))
        self.register_buffer("memory_labels", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # items in the queue
        self.register_buffer("head", torch.zeros((), dtype=torch.long))  # next slot to write

    @property
    def distance(self) -> str:
        return self.loss.distance

    def forward(self, embeddings, labels, tuples=None, ref_embeddings=None, ref_labels=None) -> torch.Tensor:
        if tuples is not None or ref_embeddings is not None or ref_labels is not None:
            raise ValueError("xbm: the memory is the reference set and its miner makes the tuples; "
                             "pass only embeddings and labels (set the miner inside the xbm config)")
        x, labels, _, _ = check_pair(embeddings, labels, distance=self.distance)  # before it enters the memory
        if labels.dim() != 1:
            raise ValueError(f"labels: xbm needs flat (B,) labels, got shape {tuple(labels.shape)}")
        if x.shape[1] != self.memory.shape[1]:
            raise ValueError(f"embeddings: expected dimension {self.memory.shape[1]} (embedding_size), "
                             f"got {x.shape[1]}")
        if x.shape[0] > self.memory_size:
            raise ValueError(f"embeddings: a batch of {x.shape[0]} does not fit a memory of {self.memory_size}")
        if self.memory.dtype != x.dtype or self.memory.device != x.device:  # the queue follows the embeddings
            self.memory = self.memory.to(device=x.device, dtype=x.dtype)
            self.memory_labels = self.memory_labels.to(x.device)
        slots = self._enqueue(x.detach(), labels)
        mem_x = self.memory[: int(self.filled)]
        mem_y = self.memory_labels[: int(self.filled)]
        with torch.no_grad():
            tuples = self._tuples(x, labels, mem_x, mem_y, slots)
        return self.loss(x, labels, tuples, mem_x, mem_y)

    def _enqueue(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        slots = (int(self.head) + torch.arange(x.shape[0], device=x.device)) % self.memory_size
        self.memory[slots] = x
        self.memory_labels[slots] = labels
        self.head.fill_((int(self.head) + x.shape[0]) % self.memory_size)
        self.filled.fill_(min(int(self.filled) + x.shape[0], self.memory_size))
        return slots

    def _tuples(self, x, labels, mem_x, mem_y, slots):
        """The miner's tuples (or all pairs) against the memory, without any anchor's own slot."""
        if self.miner is None:
            pos, neg = pair_masks(labels, mem_y)
            pos[torch.arange(x.shape[0], device=x.device), slots] = False
            a1, p = pos.nonzero(as_tuple=True)
            a2, n = neg.nonzero(as_tuple=True)
            return Pairs(a1, p, a2, n)
        mined = self.miner(x, labels, mem_x, mem_y)
        if isinstance(mined, Triplets):
            keep = mined.p != slots[mined.a]
            return Triplets(mined.a[keep], mined.p[keep], mined.n[keep])
        keep = mined.p != slots[mined.a1]
        return Pairs(mined.a1[keep], mined.p[keep], mined.a2, mined.n)

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}, embedding_size={self.memory.shape[1]}, miner={self.miner}"
