"""Forward+backward time of loss (+ miner) against pytorch-metric-learning, same inputs, same process.

    .venv/bin/python bench/losses.py [--sizes 256 512] [--repeats 15]

Embeddings: B x 128, L2-normalised, 4 samples per class. Each case times miner + loss forward +
backward; the table prints median milliseconds of both and the ratio pml / deepmetric (> 1 means
deepmetric is faster). pytorch-metric-learning is configured to compute the same thing:
LpDistance(normalize_embeddings=False) for euclidean cases (the inputs are already unit-norm).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

import deepmetric as dm


def pml_lp():
    return pml_distances.LpDistance(normalize_embeddings=False)


CASES = {
    "triplet+semi-hard": (
        lambda: (dm.losses.create("triplet", margin=0.2), dm.mining.create("semi-hard", margin=0.2)),
        lambda: (pml_losses.TripletMarginLoss(margin=0.2, distance=pml_lp()),
                 pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=pml_lp())),
    ),
    "triplet+batch-hard": (
        lambda: (dm.losses.create("triplet", margin=0.2), dm.mining.create("batch-hard")),
        lambda: (pml_losses.TripletMarginLoss(margin=0.2, distance=pml_lp()), pml_miners.BatchHardMiner(distance=pml_lp())),
    ),
    "triplet (all triplets)": (
        lambda: (dm.losses.create("triplet", margin=0.2), None),
        lambda: (pml_losses.TripletMarginLoss(margin=0.2, distance=pml_lp()), None),
    ),
    "multi-similarity+miner": (
        lambda: (dm.losses.create("multi-similarity"), dm.mining.create("multi-similarity", epsilon=0.1)),
        lambda: (pml_losses.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner(epsilon=0.1)),
    ),
    "contrastive (all pairs)": (
        lambda: (dm.losses.create("contrastive", pos_margin=0.0, neg_margin=1.0), None),
        lambda: (pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=pml_lp()), None),
    ),
}


def step_time(loss, miner, x, y, repeats: int) -> float:
    """Median seconds of miner + loss forward + backward over ``repeats`` runs (after 2 warm-ups)."""
    times = []
    for i in range(repeats + 2):
        emb = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        tuples = miner(emb, y) if miner is not None else None
        value = loss(emb, y, tuples)
        value.backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; D = {args.dim}, 4 samples per class")
    print(f"{'case':28s}{'B':>6s}{'deepmetric ms':>16s}{'pml ms':>12s}{'pml/dm':>10s}")
    for b in args.sizes:
        g = torch.Generator().manual_seed(b)
        x = torch.nn.functional.normalize(torch.randn(b, args.dim, generator=g), dim=1)
        y = torch.arange(b // 4).repeat_interleave(4)[torch.randperm(b, generator=g)]
        for name in args.cases:
            ours, theirs = (factory() for factory in CASES[name])
            t_dm = step_time(*ours, x, y, args.repeats)
            t_pml = step_time(*theirs, x, y, args.repeats)
            print(f"{name:28s}{b:6d}{1e3 * t_dm:16.2f}{1e3 * t_pml:12.2f}{t_pml / t_dm:10.2f}", flush=True)


if __name__ == "__main__":
    main()
