"""How much of each item's exact neighbourhood an IVF can reach on the evaluation bench's data.

    .venv/bin/python bench/ivf_recall.py

N = 100,000 Gaussian-cluster embeddings of bench/evaluation.py; the exact top-k (k = the largest class
size, 136) of every item by ``self_knn``; faiss k-means into 256 lists (10 iterations, every point).
For each nprobe: the share of the exact top-k whose list is among an item's nprobe nearest lists
(the recall bound of any IVF search, before quantisation), against the share of the data scanned;
the same when a group of items (those of one list) scans the union of its members' lists, and when
it scans the lists nearest to its centroid.
"""
import argparse
import sys
import time
from pathlib import Path

import faiss
import torch

sys.path.insert(0, str(Path(__file__).parent))
from evaluation import gaussian_clusters  # noqa: E402

from deepmetric.index.exact import self_knn  # noqa: E402


def main(n: int = 100_000, nlist: int = 256):
    x, y = gaussian_clusters(n)
    k = int(torch.bincount(y).max())
    t0 = time.perf_counter()
    _, truth = self_knn(x, k)
    print(f"N = {n:,}, k = {k}: exact search {time.perf_counter() - t0:.1f} s; {nlist} lists")
    km = faiss.Kmeans(x.shape[1], nlist, niter=10, seed=1, max_points_per_centroid=1024)
    km.train(x.numpy())
    centroids = torch.from_numpy(km.centroids)
    nearest = torch.cdist(x, centroids).argsort(1)
    own = nearest[:, 0]
    truth_lists = own[truth]
    sizes = torch.bincount(own, minlength=nlist).double()
    by_centroid = torch.cdist(centroids, centroids).argsort(1)
    print("| nprobe | share scanned | recall (per item) | recall (union of a list's items) | share scanned "
          "| recall (lists nearest the centroid) |")
    print("|---|---|---|---|---|---|")
    for nprobe in [p for p in (8, 16, 24, 32) if p <= nlist]:
        probes = nearest[:, :nprobe]
        mask = torch.zeros(n, nlist, dtype=torch.bool).scatter_(1, probes, True)
        union = torch.zeros(nlist, nlist, dtype=torch.bool)
        union[own[:, None].expand(-1, nprobe), probes] = True
        near = torch.zeros(nlist, nlist, dtype=torch.bool).scatter_(1, by_centroid[:, :nprobe], True)
        recall = float(mask.gather(1, truth_lists).float().mean())
        recall_union = float(union[own].gather(1, truth_lists).float().mean())
        scanned_union = float((union.double() @ sizes) @ sizes) / n / n
        recall_near = float(near[own].gather(1, truth_lists).float().mean())
        print(f"| {nprobe} | {nprobe / nlist:.1%} | {recall:.3f} | {recall_union:.3f} | {scanned_union:.1%} "
              f"| {recall_near:.3f} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="items (default 100,000)")
    parser.add_argument("--nlist", type=int, default=256, help="inverted lists (default 256)")
    args = parser.parse_args()
    main(args.n, args.nlist)
