"""Forward+backward time and peak memory of every loss (+ its usual miner) that pytorch-metric-learning
also has, same inputs, same process.

    .venv/bin/python bench/losses.py [--sizes 128 512 1024] [--repeats 11] [--cases ...]

Embeddings: B x 128, L2-normalised, 4 samples per class (B / 4 classes). Each case times miner +
loss forward + backward (median of ``--repeats`` runs after 2 warm-ups; 2 runs when one takes more
than a second) and measures the peak resident memory above the starting point of one step after a
warm-up (Linux VmHWM, reset before it). A pml case that takes more than 5 s or 2 GB is not run at
larger B (pml's NT-Xent at B = 1,024 exhausts this machine's 24 GB). pytorch-metric-learning is
configured to compute the same thing (``LpDistance(normalize_embeddings=False)`` for euclidean
cases; ArcFace margins in degrees).
Ratios are pml / deepmetric: above 1, deepmetric is faster or smaller. The last lines give, at each
B, the median time ratio over all cases and the slowest case.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

import deepmetric as dm


def lp():
    return pml_distances.LpDistance(normalize_embeddings=False)


def dm_case(loss, miner=None, **kw):
    return lambda c: (dm.losses.create(loss, **{k: v(c) if callable(v) else v for k, v in kw.items()}),
                      None if miner is None else dm.mining.create(miner))


SLOW, HEAVY = 5.0, 2000.0  # a pml case slower (s) or heavier (MB) than this is not run at larger B
PROXY = {"num_classes": lambda c: c, "embedding_size": lambda c: 128}

#: name: (deepmetric factory, pml factory); a factory takes the number of classes and returns (loss, miner)
CASES = {
    "contrastive": (dm_case("contrastive"), lambda c: (pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=lp()), None)),
    "triplet + semi-hard": (
        lambda c: (dm.losses.create("triplet", margin=0.2), dm.mining.create("semi-hard", margin=0.2)),
        lambda c: (pml_losses.TripletMarginLoss(margin=0.2, distance=lp()),
                   pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=lp()))),
    "triplet + batch-hard": (
        lambda c: (dm.losses.create("triplet", margin=0.2), dm.mining.create("batch-hard")),
        lambda c: (pml_losses.TripletMarginLoss(margin=0.2, distance=lp()), pml_miners.BatchHardMiner(distance=lp()))),
    "triplet, all triplets": (dm_case("triplet", margin=0.2),
                              lambda c: (pml_losses.TripletMarginLoss(margin=0.2, distance=lp()), None)),
    "multi-similarity + miner": (
        lambda c: (dm.losses.create("multi-similarity"), dm.mining.create("multi-similarity", epsilon=0.1)),
        lambda c: (pml_losses.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner(epsilon=0.1))),
    "lifted structure": (dm_case("lifted-structure"),
                         lambda c: (pml_losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, distance=lp()), None)),
    "generalized lifted structure": (
        dm_case("generalized-lifted-structure"),
        lambda c: (pml_losses.GeneralizedLiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, distance=lp()), None)),
    "margin + distance-weighted": (
        dm_case("margin", miner="distance-weighted"),
        lambda c: (pml_losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2, distance=lp()),
                   pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4))),
    "circle": (dm_case("circle"), lambda c: (pml_losses.CircleLoss(m=0.4, gamma=80), None)),
    "NT-Xent": (dm_case("nt-xent"), lambda c: (pml_losses.NTXentLoss(temperature=0.07), None)),
    "supervised contrastive": (dm_case("supervised-contrastive"), lambda c: (pml_losses.SupConLoss(temperature=0.1), None)),
    "FastAP": (dm_case("fast-ap"), lambda c: (pml_losses.FastAPLoss(num_bins=10), None)),
    "histogram": (dm_case("histogram"), lambda c: (pml_losses.HistogramLoss(n_bins=100), None)),
    "N-pairs": (dm_case("n-pairs"), lambda c: (pml_losses.NPairsLoss(), None)),
    "angular": (dm_case("angular"), lambda c: (pml_losses.AngularLoss(alpha=40), None)),
    "tuplet margin": (dm_case("tuplet-margin"), lambda c: (pml_losses.TupletMarginLoss(margin=5.73, scale=64), None)),
    "proxy-NCA": (dm_case("proxy-nca", **PROXY), lambda c: (pml_losses.ProxyNCALoss(c, 128, softmax_scale=1), None)),
    "proxy-anchor": (dm_case("proxy-anchor", **PROXY), lambda c: (pml_losses.ProxyAnchorLoss(c, 128, margin=0.1, alpha=32), None)),
    "normalized softmax": (dm_case("normalized-softmax", **PROXY),
                           lambda c: (pml_losses.NormalizedSoftmaxLoss(c, 128, temperature=0.05), None)),
    "CosFace": (dm_case("cosface", **PROXY), lambda c: (pml_losses.CosFaceLoss(c, 128, margin=0.35, scale=64), None)),
    "ArcFace": (dm_case("arcface", **PROXY),
                lambda c: (pml_losses.ArcFaceLoss(c, 128, margin=math.degrees(0.5), scale=64), None)),
    "sub-center ArcFace": (dm_case("sub-center-arcface", **PROXY),
                           lambda c: (pml_losses.SubCenterArcFaceLoss(num_classes=c, embedding_size=128,
                                                                      margin=math.degrees(0.5), scale=64, sub_centers=3), None)),
    "SoftTriple": (dm_case("soft-triple", **PROXY),
                   lambda c: (pml_losses.SoftTripleLoss(c, 128, centers_per_class=10, la=20, gamma=0.1, margin=0.01), None)),
    "cross-batch memory + contrastive": (
        lambda c: (dm.losses.create("xbm", loss="contrastive", embedding_size=128, memory_size=2048), None),
        lambda c: (pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=lp()),
                                               embedding_size=128, memory_size=2048), None)),
}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def step(loss, miner, x, y):
    emb = x.clone().requires_grad_(True)
    tuples = miner(emb, y) if miner is not None else None
    value = loss(emb, y, tuples)
    value.backward()


def memory_ratio(m_pml: float, m_dm: float) -> str:
    """pml / deepmetric peak memory; a side below 1 MB is below what VmHWM resolves (reads 0)."""
    if m_dm >= 1 and m_pml >= 1:
        return f"{m_pml / m_dm:.1f}"
    if m_dm < 1:
        return "both < 1 MB" if m_pml < 1 else f"> {m_pml:.0f} (dm < 1 MB)"
    return f"< {1 / m_dm:.2g} (pml < 1 MB)"


def measure(loss, miner, x, y, repeats: int) -> tuple[float, float]:
    """(median seconds of miner + loss forward + backward, peak MB above the start of one step).

    After a warm-up step, the next step is measured for memory; a case whose steps take more than a
    second is timed on those two steps, a faster one on ``repeats`` steps after two warm-ups."""
    t0 = time.perf_counter()
    step(loss, miner, x, y)  # warm-up: one-off allocations and thread pools
    first = time.perf_counter() - t0
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM)
    before = _status("VmRSS:")
    t0 = time.perf_counter()
    step(loss, miner, x, y)
    times = [time.perf_counter() - t0]
    peak = (_status("VmHWM:") - before) / 1024
    if first > 1.0:
        return statistics.median([first, times[0]]), peak
    step(loss, miner, x, y)
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step(loss, miner, x, y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; D = {args.dim}, 4 samples per class")
    print("| case | B | deepmetric ms | pml ms | pml/dm time | deepmetric MB | pml MB | pml/dm memory |")
    print("|---|---|---|---|---|---|---|---|")
    ratios, slow = {}, {}  # slow: pml cases that took more than SLOW seconds at a smaller B
    for b in args.sizes:
        g = torch.Generator().manual_seed(b)
        x = torch.nn.functional.normalize(torch.randn(b, args.dim, generator=g), dim=1)
        y = torch.arange(b // 4).repeat_interleave(4)[torch.randperm(b, generator=g)]
        for name in args.cases:
            torch.manual_seed(0)
            t_dm, m_dm = measure(*CASES[name][0](b // 4), x, y, args.repeats)
            if name in slow:
                print(f"| {name} | {b} | {1e3 * t_dm:.2f} | not run (pml took {slow[name][0]:.0f} s and "
                      f"{slow[name][1]:.0f} MB at a smaller B) | | {m_dm:.1f} | | |", flush=True)
                continue
            torch.manual_seed(0)
            t_pml, m_pml = measure(*CASES[name][1](b // 4), x, y, args.repeats)
            if t_pml > SLOW or m_pml > HEAVY:
                slow[name] = (t_pml, m_pml)
            ratios.setdefault(b, {})[name] = t_pml / t_dm
            print(f"| {name} | {b} | {1e3 * t_dm:.2f} | {1e3 * t_pml:.2f} | {t_pml / t_dm:.2f} "
                  f"| {m_dm:.1f} | {m_pml:.1f} | {memory_ratio(m_pml, m_dm)} |", flush=True)
    for b, r in ratios.items():
        slowest = min(r, key=r.get)
        print(f"B = {b}: median pml/dm time ratio {statistics.median(r.values()):.2f} over {len(r)} cases; "
              f"lowest {r[slowest]:.2f} ({slowest})")


if __name__ == "__main__":
    main()
