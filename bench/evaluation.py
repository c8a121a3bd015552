"""Query-in-gallery evaluation and index search against pytorch-metric-learning and faiss.

    .venv/bin/python bench/evaluation.py [--sizes 20000 100000] [--repeats 3] [--million 1000000]
    .venv/bin/python bench/evaluation.py --ivf-sweep 100000
    .venv/bin/python bench/evaluation.py --full-map 10000

Part 1: P@1 + R-precision + MAP@R, query-in-gallery, on N Gaussian-cluster embeddings (D = 128,
1,000 classes, MAP@R about 0.5): deepmetric's exact ``evaluate`` and its approximate mode
(``ivf-fastscan``: IVF, 4-bit PQ fast scan, exact re-ranking) against pytorch-metric-learning's
AccuracyCalculator (k = "max_bin_count", faiss exact search).
Each measurement runs in its own process, where the data are generated with the same seed, so the
peak resident memory of each is its own; the three sides are interleaved ``--repeats`` times and
the median time is reported (this machine's speed drifts by tens of percent over minutes). Time
counts the metric computation only (data generation and imports excluded). Ratios > 1 mean
deepmetric is faster / smaller.

Part 3 (``--full-map N``): mAP over the full ranking (every query ranks the whole gallery),
query-in-gallery on N items of the same data: ``evaluate(full_map=True)`` against AccuracyCalculator
(k = None, "mean_average_precision"), time and peak memory as in part 1.

Part 2: 1,000,000 x 128 vectors (same generator), faiss ``ivf-pq``, ``ivf-fastscan`` and ``hnsw``
through deepmetric.index: build time, query time for 1,000 queries (k = 10), index memory, recall@10
against exact search.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

D, CLASSES, SPREAD = 128, 1000, 1.4  # SPREAD gives MAP@R of about 0.5 (printed below)


def gaussian_clusters(n: int, seed: int = 0):
    """``n`` points of ``CLASSES`` Gaussian clusters in ``D`` dimensions, classes in random order."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, D, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = centres[y] + SPREAD * torch.randn(n, D, generator=g)
    return x, y


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(kind: str, n: int) -> dict:
    """One measurement in this process; returns seconds, peak memory and the metrics."""
    x, y = gaussian_clusters(n)
    full = kind.endswith("-map")  # part 3: mAP over the full ranking
    keys = ("map",) if full else ("precision_at_1", "r_precision", "map_at_r")
    if kind.startswith("pml"):
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        names = {"map": "mean_average_precision", "precision_at_1": "precision_at_1",
                 "r_precision": "r_precision", "map_at_r": "mean_average_precision_at_r"}
        calc = AccuracyCalculator(include=tuple(names[key] for key in keys), k=None if full else "max_bin_count",
                                  device=torch.device("cpu"))  # k=None: the whole ranking
        before = peak_rss_mb()
        t0 = time.perf_counter()
        out = calc.get_accuracy(x, y, ref_includes_query=True)
        seconds = time.perf_counter() - t0
        metrics = {key: out[names[key]] for key in keys}
    else:
        import deepmetric as dm
        options = {"full_map": True} if full else {} if kind == "exact" else {
            "index": "ivf-fastscan", "index_options": ivf_options(n)}
        dm.evaluate(x[:2000], y[:2000], ks=(1,), nmi=False, **options)  # warm-up (thread pools, allocator)
        before = peak_rss_mb()
        t0 = time.perf_counter()
        out = dm.evaluate(x, y, ks=(1,), nmi=False, **options)
        seconds = time.perf_counter() - t0
        metrics = {key: out[key] for key in keys}
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "before_mb": before, **metrics}


def ivf_options(n: int) -> dict:
    """The approximate mode's index: 256 lists (1,024 beyond 200,000 items), 24 probed per query."""
    return {"nlist": 256 if n <= 200_000 else 1024, "nprobe": 24}


def in_process(kind: str, n: int) -> dict:
    """Run ``run_worker`` in a fresh interpreter so that peak memory is measured alone."""
    cmd = [sys.executable, __file__, "--worker", kind, "--sizes", str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit code {done.returncode}; negative: killed by that "
                           f"signal, e.g. -9 when out of memory):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_peak_gflops() -> tuple[float, float, float]:
    """(nominal float32 peak from the reported clock and the FMA width, best GFLOPS of torch.mm (MKL)
    and of the exact search's product (oneDNN, ``deepmetric.index.exact._mm_t``) on a block's shape).

    The reported clock is the nominal one; turbo makes the measured rates exceed it on some machines,
    so shares are given of the measured product rate (2048 x 130 @ 130 x 2048, a symmetric block).
    """
    from deepmetric.index.exact import _mm_t
    with open("/proc/cpuinfo") as f:
        info = f.read()
    mhz = max(float(v) for v in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info))
    flags = re.search(r"flags\s*:(.*)", info).group(1).split()
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 16  # 2 FMA units x lanes x 2
    nominal = torch.get_num_threads() * mhz / 1000 * per_cycle
    a, b = torch.randn(2048, 130), torch.randn(2048, 130)
    c = a @ b.T
    rates = []
    for product in (lambda: torch.mm(a, b.T, out=c), lambda: _mm_t(a, b)):
        best = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(10):
                product()
            best = max(best, 10 * 2 * 2048 * 2048 * 130 / (time.perf_counter() - t0) / 1e9)
        rates.append(best)
    return nominal, *rates


def part1(sizes, repeats: int):
    nominal, sgemm, product = machine_peak_gflops()
    print(f"machine: {torch.get_num_threads()} threads, nominal float32 peak {nominal:.0f} GFLOPS "
          f"(reported clock x FMA width); on a block's shape torch.mm (MKL) reaches {sgemm:.0f} GFLOPS, "
          f"the exact search's oneDNN product {product:.0f}")
    print("| N | pml s | exact s | ratio | pml MB | exact MB | ratio | GFLOPS (share of the product's) "
          "| ivf s | ivf / exact speed-up | MAP@R pml / exact / ivf |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        runs = {"pml": [], "exact": [], "ivf": []}
        for _ in range(repeats):  # interleaved, so that a slow spell of the machine hits every side
            for kind, results in runs.items():
                results.append(in_process(kind, n))
        pml, exact, ivf = ({**rs[0], "seconds": statistics.median(r["seconds"] for r in rs),
                            "peak_mb": max(r["peak_mb"] for r in rs)} for rs in runs.values())
        for name, r in (("pml", pml), ("exact", exact)):
            for key in ("precision_at_1", "r_precision", "map_at_r"):
                if abs(r[key] - pml[key]) > 1e-6:
                    print(f"  WARNING: {name} {key} {r[key]:.6f} differs from pml {pml[key]:.6f}")
        gflops = n * n * D / exact["seconds"] / 1e9  # the symmetric search computes n^2/2 dot products
        print(f"| {n:,} | {pml['seconds']:.2f} | {exact['seconds']:.2f} | {pml['seconds'] / exact['seconds']:.2f}x "
              f"| {pml['peak_mb']:.0f} | {exact['peak_mb']:.0f} | {pml['peak_mb'] / exact['peak_mb']:.2f}x "
              f"| {gflops:.0f} ({gflops / product:.0%}) | {ivf['seconds']:.2f} "
              f"| {exact['seconds'] / ivf['seconds']:.1f}x "
              f"| {pml['map_at_r']:.4f} / {exact['map_at_r']:.4f} / {ivf['map_at_r']:.4f} |", flush=True)


def part3(n: int, repeats: int):
    """mAP over the full ranking, query-in-gallery: AccuracyCalculator (k=None) against
    ``evaluate(full_map=True)``, each in its own process, interleaved, median time."""
    runs = {"pml-map": [], "exact-map": []}
    for _ in range(repeats):
        for kind, results in runs.items():
            results.append(in_process(kind, n))
    pml, ours = ({**rs[0], "seconds": statistics.median(r["seconds"] for r in rs),
                  "peak_mb": max(r["peak_mb"] for r in rs)} for rs in runs.values())
    print("| N | pml s | deepmetric s | ratio | pml MB | deepmetric MB | ratio | mAP pml / deepmetric |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {n:,} | {pml['seconds']:.2f} | {ours['seconds']:.2f} | {pml['seconds'] / ours['seconds']:.2f}x "
          f"| {pml['peak_mb']:.0f} | {ours['peak_mb']:.0f} | {pml['peak_mb'] / ours['peak_mb']:.2f}x "
          f"| {pml['map']:.6f} / {ours['map']:.6f} |", flush=True)


def part2(n: int, n_queries: int = 1000, k: int = 10):
    import deepmetric as dm
    x, _ = gaussian_clusters(n + n_queries, seed=1)
    gallery, queries = x[:n], x[n:]
    t0 = time.perf_counter()
    _, truth = dm.index.knn(queries, gallery, k)
    exact_s = time.perf_counter() - t0
    print(f"\n{n:,} x {D} vectors, {n_queries:,} queries, k = {k}; exact search of the queries: {exact_s:.2f} s")
    print("| backend (options) | build s | query s (1,000) | index MB (saved files) | recall@10 |")
    print("|---|---|---|---|---|")
    for name, options in (("ivf-pq", {"nlist": 1024, "m": 16, "nprobe": 16}),
                          ("ivf-fastscan", {"nlist": 1024, "nprobe": 16}),
                          ("hnsw", {"M": 32, "ef_construction": 40, "ef_search": 64})):
        index = dm.index.create(name, distance="euclidean", **options)
        t0 = time.perf_counter()
        index.add(gallery)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, found = index.search(queries, k)
        query = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "index")
            mb = sum(f.stat().st_size for f in (Path(tmp) / "index").iterdir()) / 2**20
        recall = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist())) / truth.numel()
        print(f"| {name} {options} | {build:.1f} | {query:.3f} | {mb:.0f} | {recall:.3f} |", flush=True)


SWEEP = (("ivf-flat", {"nlist": 256, "nprobe": 8}), ("ivf-flat", {"nlist": 256, "nprobe": 32}),
         *(("ivf-fastscan", {"nlist": 256, "nprobe": p}) for p in (8, 16, 24, 32)),
         ("ivf-fastscan", {"nlist": 128, "nprobe": 12}), ("ivf-fastscan", {"nlist": 512, "nprobe": 48}),
         ("ivf-fastscan", {"nlist": 1024, "nprobe": 32}), ("hnsw", {"M": 16, "ef_search": 160}))


def ivf_sweep(n: int, grid=SWEEP):
    """The approximate mode's speed and accuracy trade-off on N items: ``dm.evaluate`` with an
    approximate index for each (backend, options) against the exact search, in this process."""
    import deepmetric as dm
    x, y = gaussian_clusters(n)
    dm.evaluate(x[:2000], y[:2000], ks=(1,), nmi=False)  # warm-up
    t0 = time.perf_counter()
    exact = dm.evaluate(x, y, ks=(1,), nmi=False)["map_at_r"]
    exact_s = time.perf_counter() - t0
    print(f"\nApproximate sweep, N = {n:,}: exact {exact_s:.2f} s, MAP@R {exact:.4f}")
    print("| index | options | s | speed-up | MAP@R | vs exact |")
    print("|---|---|---|---|---|---|")
    for name, options in grid:
        t0 = time.perf_counter()
        approx = dm.evaluate(x, y, ks=(1,), nmi=False, index=name, index_options=options)["map_at_r"]
        seconds = time.perf_counter() - t0
        shown = ", ".join(f"{key} {value}" for key, value in options.items())
        print(f"| {name} | {shown} | {seconds:.2f} | {exact_s / seconds:.1f}x "
              f"| {approx:.4f} | {approx / exact - 1:+.1%} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (median time)")
    parser.add_argument("--million", type=int, default=1000000, help="gallery size of part 2 (0 skips it)")
    parser.add_argument("--ivf-sweep", type=int, default=0, metavar="N",
                        help="only the approximate indexes' sweep on N items")
    parser.add_argument("--full-map", type=int, default=0, metavar="N",
                        help="only part 3, mAP over the full ranking on N items")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.sizes[0])))
        return
    if args.ivf_sweep:
        ivf_sweep(args.ivf_sweep)
        return
    if args.full_map:
        part3(args.full_map, args.repeats)
        return
    part1(args.sizes, args.repeats)
    if args.million:
        part2(args.million)


if __name__ == "__main__":
    os.environ.setdefault("KMP_WARNINGS", "0")
    main()
