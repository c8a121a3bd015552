"""Helpers for multi-process training on ``torch.distributed``; all are no-ops in a single process."""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process, ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Only rank 0 writes files (checkpoints, metrics, reports)."""
    return rank_and_world()[0] == 0


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (rows may differ per rank) from every rank, in rank order.

    The local part keeps its gradient (the others arrive detached), so a loss computed against the
    gathered set as reference still trains this rank's embeddings.
    """
    rank, world = rank_and_world()
    if world == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [p[: int(s.item())] for p, s in zip(parts, sizes)]
    parts[rank] = tensor
    return torch.cat(parts)


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects, e.g. random states)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def rank_zero_error(error: Exception | None) -> None:
    """Raise on every rank the error rank 0 met (``None``: none; the others raise a ValueError quoting
    it), so that no rank waits in a collective for a rank 0 that has stopped."""
    if rank_and_world()[1] == 1:
        if error is not None:
            raise error
        return
    message = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(message, 0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise ValueError(f"rank 0 stopped: {message[0]}")


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers: for modules outside DistributedDataParallel,
    such as a loss's proxies or centres, which each rank initialises from its own seed."""
    if rank_and_world()[1] == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, 0)


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over the ranks, as DistributedDataParallel does for the
    model's. A parameter without gradient on some ranks counts as zero there; one without gradient on
    every rank keeps none (the optimizer then skips it, as in a single process)."""
    world = rank_and_world()[1]
    parameters = list(parameters)
    if world == 1 or not parameters:
        return
    has = torch.tensor([float(p.grad is not None) for p in parameters])
    dist.all_reduce(has)  # the same on every rank, so every rank reduces the same tensors
    for p, count in zip(parameters, has.tolist()):
        if count == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)
