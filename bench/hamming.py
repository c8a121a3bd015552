"""Binary codes against float vectors (issue 3): brute-force top-k speed and memory, and radius
search by multi-index hashing against brute-force binary range search.

    .venv/bin/python bench/hamming.py [--n 1000000] [--queries 1000] [--k 100] [--bits 64] [--dim 128]
    .venv/bin/python bench/hamming.py --n 20000          # a quick small run

Top-k: deepmetric's ``binary`` index (faiss IndexBinaryFlat) over N random codes of 64 bits against
its float ``flat`` index (faiss IndexFlatL2) over N random 128-d float32 vectors, 1,000 queries,
top-100. Ratios: speed = float time / binary time (median of --repeats runs), memory = bytes of the
saved float index / bytes of the saved binary index, each counting the index file and the ids
(what the index holds in memory). Targets: >= 3.5x faster, >= 30x smaller.

Radius: every code within Hamming distance 2 of each query, by multi-index hashing
(``BinaryIndex.radius_search``, faiss IndexBinaryMultiHash) against brute force (faiss
IndexBinaryFlat.range_search over the same codes). The queries are database codes with 0, 1 or 2
random bits flipped, so every query has at least one result. Ratio: brute-force time / multi-index
time (the hash tables' one-off build time and memory printed apart), and whether both return the
same items at the same distances. Target: >= 10x faster at equal results. Then, for each radius of
--sweep, hashing and scanning timed once, with the method ``radius_search(method="auto")`` picks.

Prints ratios; asserts nothing about timings.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

import deepmetric.index as dmi
from deepmetric.codes import pack_bits

from common import timed


def resident_mb() -> float:
    """The process' resident memory now (Linux VmRSS), in MB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def saved_bytes(index) -> int:
    """Bytes of the saved index files (index file(s) and ids; the manifest is left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = index.save(Path(tmp) / "index")
        return sum(f.stat().st_size for f in path.iterdir() if f.name != "manifest.json")


def flipped(codes: np.ndarray, rng) -> np.ndarray:
    """Copies of bool codes with 0, 1 or 2 distinct random bits flipped per row."""
    out = codes.copy()
    n, bits = codes.shape
    n_flips = rng.integers(0, 3, n)
    order = np.argsort(rng.random((n, bits)), axis=1)[:, :2]  # two distinct positions per row
    for f in range(2):
        rows = np.nonzero(n_flips > f)[0]
        out[rows, order[rows, f]] ^= True
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database size")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128, help="dimension of the float vectors")
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--sweep", type=int, nargs="*", default=[0, 2, 4, 6, 8, 10, 12],
                        help="radii timed by hashing and by scanning, once each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; N = {args.n:,}, "
          f"{args.queries} queries, top-{args.k}; {args.bits}-bit codes vs {args.dim}-d float32")

    codes = rng.integers(0, 2, size=(args.n, args.bits), dtype=np.uint8).astype(bool)
    query_codes = torch.from_numpy(flipped(codes[rng.choice(args.n, args.queries, replace=False)], rng))
    t0 = time.perf_counter()
    binary = dmi.create("binary")
    binary.add(torch.from_numpy(codes))
    t_binary_build = time.perf_counter() - t0
    # the radius search's hash tables, built first so that their memory is new pages, not freed ones
    rss, t0 = resident_mb(), time.perf_counter()
    binary.radius_search(query_codes[:1], args.radius, method="hash")
    t_tables, tables_mb = time.perf_counter() - t0, resident_mb() - rss

    vectors = torch.from_numpy(rng.standard_normal((args.n, args.dim), dtype=np.float32))
    query_vectors = torch.from_numpy(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    t0 = time.perf_counter()
    flat = dmi.create("flat", distance="euclidean")
    flat.add(vectors)
    t_flat_build = time.perf_counter() - t0
    del vectors

    t_binary, _ = timed(lambda: binary.search(query_codes, args.k), args.repeats)
    t_flat, _ = timed(lambda: flat.search(query_vectors, args.k), args.repeats)
    bytes_binary, bytes_flat = saved_bytes(binary), saved_bytes(flat)
    print(f"\ntop-{args.k} brute force        binary        float flat     ratio (float / binary)")
    print(f"  add (s)               {t_binary_build:10.3f}    {t_flat_build:10.3f}")
    print(f"  search (s)            {t_binary:10.3f}    {t_flat:10.3f}     {t_flat / t_binary:6.1f}x faster "
          f"(target >= 3.5x)")
    print(f"  index + ids (MB)      {bytes_binary / 2**20:10.1f}    {bytes_flat / 2**20:10.1f}     "
          f"{bytes_flat / bytes_binary:6.1f}x smaller (target >= 30x)")
    del flat

    # radius search: multi-index hashing against brute-force binary range search
    brute = faiss.IndexBinaryFlat(8 * -(-args.bits // 8))
    brute.add(pack_bits(codes))
    packed_queries = pack_bits(query_codes)
    t_mih, (mih_d, mih_ids) = timed(lambda: binary.radius_search(query_codes, args.radius, method="hash"),
                                    args.repeats)
    t_brute, (lims, brute_d, brute_i) = timed(lambda: brute.range_search(packed_queries, args.radius + 1),
                                              args.repeats)
    # same items at the same distances: sort brute force by (query, distance, position) like radius_search
    query = np.repeat(np.arange(args.queries), np.diff(lims.astype(np.int64)))
    order = np.lexsort((brute_i, brute_d, query))
    counts_equal = np.array_equal(np.diff(lims.astype(np.int64)), [len(ids) for ids in mih_ids])
    equal = (counts_equal and np.array_equal(torch.cat(mih_ids).numpy(), brute_i[order])
             and np.array_equal(torch.cat(mih_d).numpy(), brute_d[order].astype(np.float32)))
    print(f"\nradius-{args.radius} search          multi-index   brute force    ratio (brute / multi-index)")
    print(f"  search (s)            {t_mih:10.4f}    {t_brute:10.4f}     {t_brute / t_mih:6.1f}x faster "
          f"(target >= 10x)")
    print(f"  hash tables built once in {t_tables:.3f} s, {tables_mb:.0f} MB more resident memory "
          f"({tables_mb * 2**20 / args.n:.0f} bytes a code); {int(lims[-1]):,} results "
          f"({lims[-1] / args.queries:.2f} per query); results equal: {equal}")

    # which radii hashing pays for (one run each; method="auto" picks by its cost estimate)
    print("\nradius   hash (s)   scan (s)   auto picks")
    for radius in args.sweep:
        t_hash, _ = timed(lambda: binary.radius_search(query_codes, radius, method="hash"), 1)
        t_scan, _ = timed(lambda: binary.radius_search(query_codes, radius, method="scan"), 1)
        pick = "hash" if binary._hash_plan(radius)[2] else "scan"
        print(f"{radius:6d} {t_hash:10.4f} {t_scan:10.4f}   {pick}")


if __name__ == "__main__":
    main()
