"""Streaming inserts into a large index: one vector per ``add`` with the user's own ids.

    .venv/bin/python bench/index_ids.py [--n 1000000] [--adds 100]

A ``flat`` index of N x 32 vectors with random int64 ids (or string ids) takes ``--adds`` more
vectors one call at a time, then searches one query whose results are all tied (so that the ids
are mapped to insertion order). deepmetric against faiss' own ``IndexIDMap(IndexFlatL2)``
(``add_with_ids``, ``search``), which keeps no string ids and does not check for duplicate ids. Times
are medians per call in milliseconds; ratios > 1 mean deepmetric is slower.
"""
from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np
import torch

import deepmetric as dm

D = 32


def per_call_ms(fn, calls) -> float:
    times = []
    for args in calls:
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--adds", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, D), dtype=np.float32)
    ids = rng.choice(2**62, args.n + args.adds, replace=False).astype(np.int64)
    new = rng.standard_normal((args.adds, D), dtype=np.float32)
    tie = np.zeros((4, D), np.float32)  # four identical vectors: every search of the origin is a tie

    peer = faiss.IndexIDMap(faiss.IndexFlatL2(D))
    peer.add_with_ids(x, ids[:args.n])
    peer_add = per_call_ms(lambda v, i: peer.add_with_ids(v, i),
                           [(new[j:j + 1], ids[args.n + j:args.n + j + 1]) for j in range(args.adds)])
    peer.add_with_ids(tie, np.arange(4) + 2**62)
    peer_search = per_call_ms(lambda q: peer.search(q, 3), [(tie[:1],)] * 20)

    print(f"flat index of {args.n:,} x {D}, {args.adds} adds of one vector (median ms per call)")
    print("| ids | deepmetric add | faiss add | ratio | deepmetric tied search | faiss search | ratio |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("int64", "string"):
        index = dm.index.create("flat")
        as_ids = (lambda a: a) if kind == "int64" else (lambda a: [f"item-{v}" for v in a])
        index.add(torch.from_numpy(x), ids=as_ids(ids[:args.n]))
        add = per_call_ms(lambda v, i: index.add(v, ids=i),
                          [(torch.from_numpy(new[j:j + 1]), as_ids(ids[args.n + j:args.n + j + 1]))
                           for j in range(args.adds)])
        index.add(torch.from_numpy(tie), ids=as_ids(np.arange(4) + 2**62))
        search = per_call_ms(lambda q: index.search(q, 3), [(torch.from_numpy(tie[:1]),)] * 20)
        print(f"| {kind} | {add:.3f} | {peer_add:.3f} | {add / peer_add:.1f}x | {search:.3f} | {peer_search:.3f} "
              f"| {search / peer_search:.1f}x |")


if __name__ == "__main__":
    main()
