"""Hamming-ranking metrics (issue 3): deepmetric's ``hashing_scores`` against the per-query numpy loop
of the deep-hashing repositories (DPSH's ``CalcMap`` / ``CalcTopMap``, also HashNet's and CSQ's).

    .venv/bin/python bench/hashing_metrics.py [--db 100000] [--queries 1000] [--bits 64] [--top-k 1000]

Data: database and query codes are the signs of noisy class centres (``--classes`` classes, one label
per item), so each query's Hamming ranking holds many ties, as real codes do. Both sides compute mAP
over the full Hamming ranking and mAP@top-k with the literature's denominator (relevant items found
in the top k), ties in database order (the loop's argsort made stable, so that the two agree exactly;
the repositories' unstable argsort breaks ties arbitrarily). Wall time of each, in the same process,
median of ``--repeats``; prints the ratio and the largest difference of the two results.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from deepmetric.evaluation import hashing_scores


def loop_scores(q_codes, q_labels, db_codes, db_labels, top_k):
    """mAP and mAP@top_k query by query, as the deep-hashing repositories compute them: ``{-1, +1}``
    codes, ``H = (b - q.d) / 2``, an argsort of H, the ranks of the relevant items."""
    n_bits = q_codes.shape[1]
    total, total_top, scored = 0.0, 0.0, 0
    for q in range(q_codes.shape[0]):
        relevant = (db_labels == q_labels[q]).astype(np.float32)
        n_relevant = int(relevant.sum())
        if n_relevant == 0:
            continue
        scored += 1
        hamming = 0.5 * (n_bits - db_codes @ q_codes[q])
        ranked = relevant[np.argsort(hamming, kind="stable")]
        ranks = np.flatnonzero(ranked) + 1.0
        total += np.mean(np.arange(1, n_relevant + 1) / ranks)
        top = ranks[ranks <= top_k]
        if top.size:
            total_top += np.mean(np.arange(1, top.size + 1) / top)
    return {"map": total / scored, f"map_at_{top_k}": total_top / scored}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.classes, args.bits))
    db_labels = rng.integers(0, args.classes, args.db)
    q_labels = rng.integers(0, args.classes, args.queries)
    db = np.sign(centres[db_labels] + 1.5 * rng.standard_normal((args.db, args.bits))).astype(np.float32)
    q = np.sign(centres[q_labels] + 1.5 * rng.standard_normal((args.queries, args.bits))).astype(np.float32)
    print(f"{args.queries} queries x {args.db:,} codes of {args.bits} bits, {args.classes} classes, "
          f"{torch.get_num_threads()} torch threads")

    def ours():
        return hashing_scores(q, q_labels, db, db_labels, top_k=args.top_k, precision_ns=(), radius=None)

    def theirs():
        return loop_scores(q, q_labels, db, db_labels, args.top_k)

    results, times = {}, {"deepmetric": [], "loop": []}
    for _ in range(args.repeats):
        for name, fn in (("deepmetric", ours), ("loop", theirs)):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    t_ours, t_loop = statistics.median(times["deepmetric"]), statistics.median(times["loop"])
    keys = ("map", f"map_at_{args.top_k}")
    print(f"  per-query numpy loop  {t_loop:8.2f} s")
    print(f"  deepmetric            {t_ours:8.2f} s    {t_loop / t_ours:6.1f}x faster")
    difference = max(abs(results["deepmetric"][key] - results["loop"][key]) for key in keys)
    print("  " + ", ".join(f"{key} {results['deepmetric'][key]:.6f}" for key in keys)
          + f"; largest difference from the loop {difference:.1e}")


if __name__ == "__main__":
    main()
