"""Multi-label retrieval metrics (issue 3): ``dm.evaluate`` on YouTube-8M-like labels against the dense
torch code a user writes without it (one distance matrix, one co-label product, one argsort).

    .venv/bin/python bench/multilabel.py [--n 3000 10000] [--classes 3862] [--labels 3]

Data: ``--n`` items of 64-d Gaussian embeddings, each with ``--labels`` distinct classes of
``--classes`` drawn with Zipf-like frequencies (p ~ 1 / rank^1.1), so that a few popular classes make
R, the number of items sharing a label with a query, a large share of the data (as in YouTube-8M,
whose vocabulary has 3,862 classes). Both sides compute query-in-gallery MAP@R (relevant = at least
one label shared) and must agree to 1e-6 (the dense side ranks by float64 distances). Wall time in
the same process, median of ``--repeats``, and the ratio.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import deepmetric as dm

from common import timed


def youtube8m_like(n: int, n_classes: int, n_labels: int, seed: int = 0):
    gen = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    labels = np.zeros((n, n_classes), dtype=bool)
    for i in range(n):
        labels[i, gen.choice(n_classes, size=n_labels, replace=False, p=p / p.sum())] = True
    return torch.from_numpy(gen.normal(size=(n, 64)).astype(np.float32)), torch.from_numpy(labels)


def dense_map_at_r(x: torch.Tensor, labels: torch.Tensor) -> float:
    """MAP@R with every (N, N) matrix in memory: distances, co-labels, the full argsort."""
    n = len(x)
    dist = torch.cdist(x.double(), x.double())
    dist.fill_diagonal_(float("inf"))
    related = (labels.float() @ labels.float().T) > 0
    related.fill_diagonal_(False)
    r = related.sum(1)
    order = torch.sort(dist, dim=1, stable=True).indices[:, : n - 1]
    rel = related.gather(1, order)
    within = rel & (torch.arange(n - 1) < r.unsqueeze(1))
    precision = within.double().cumsum(1) / torch.arange(1, n, dtype=torch.float64)
    scored = r > 0
    return float(((precision * within).sum(1)[scored] / r[scored]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[3000, 10000])
    parser.add_argument("--classes", type=int, default=3862)
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dm.evaluate(*youtube8m_like(50, args.classes, args.labels), nmi=False)  # compiled kernels loaded
    print("| N | classes | mean R | deepmetric s | dense torch s | speed-up | MAP@R |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        x, labels = youtube8m_like(n, args.classes, args.labels)
        ours, scores = timed(lambda: dm.evaluate(x, labels, nmi=False), args.repeats)
        theirs, value = timed(lambda: dense_map_at_r(x, labels), args.repeats)
        if abs(scores["map_at_r"] - value) > 1e-6:
            raise SystemExit(f"MAP@R differs: {scores['map_at_r']} against {value}")
        mean_r = float(dm.evaluation.ranking.count_relevant(labels, labels, True).double().mean())
        print(f"| {n:,} | {args.classes:,} | {mean_r:.0f} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.1f}x "
              f"| {value:.4f} |")


if __name__ == "__main__":
    main()
