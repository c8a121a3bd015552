"""The compiled screening kernels of the query-in-gallery search against plain loops."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmetric.index import _heaps


def empty_heaps(n, k, dtype=np.float32, thresholds=None):
    values = np.zeros((n, k), dtype=dtype)
    ids = np.zeros((n, k), dtype=np.int32)
    t = np.full(n, np.inf, dtype=dtype) if thresholds is None else np.asarray(thresholds, dtype=dtype)
    return values, ids, np.zeros(n, dtype=np.int32), t


def sorted_heaps(heaps):
    values, ids, sizes, _ = heaps
    _heaps.sort_heaps(values, ids, sizes, math.inf)
    return values, ids


def loop_best(pairs, k, threshold=math.inf):
    """Plain loop: the pairs (score, id) at or below the threshold, smallest by (score, id), padded."""
    kept = sorted(p for p in pairs if p[0] <= threshold)[:k]
    return kept + [(math.inf, -1)] * (k - len(kept))


def as_pairs(values, ids, row):
    return [(float(v), int(j)) for v, j in zip(values[row], ids[row])]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 12), st.integers(1, 150), st.integers(0, 10**6), st.booleans())
def test_rows_and_columns_keep_the_k_smallest_pairs_over_blocks(k, n_rows, n_cols, seed, float64):
    # small integer scores make ties frequent: ties must go to the smaller id, whatever the block order
    rng = np.random.default_rng(seed)
    dtype = np.float64 if float64 else np.float32
    s = rng.integers(0, 6, size=(n_rows, n_cols)).astype(dtype)
    row0, col0 = n_cols, 0  # rows are items n_cols.., columns items 0..n_cols - 1
    n = n_rows + n_cols
    heaps = empty_heaps(n, k, dtype)
    half = n_cols // 2  # the block arrives in two column blocks, the later one first
    _heaps.screen_rows(s[:, half:], row0, col0 + half, *heaps)
    _heaps.screen_rows(s[:, :half], row0, col0, *heaps)
    _heaps.screen_columns(s, row0, col0, *heaps)
    values, ids = sorted_heaps(heaps)
    for r in range(n_rows):
        expected = loop_best([(float(s[r, c]), col0 + c) for c in range(n_cols)], k)
        assert as_pairs(values, ids, row0 + r) == expected
    for c in range(n_cols):
        expected = loop_best([(float(s[r, c]), row0 + r) for r in range(n_rows)], k)
        assert as_pairs(values, ids, col0 + c) == expected


def test_thresholds_admit_only_scores_at_or_below_them():
    s = np.array([[3.0, 1.0, 2.0, 1.0, 5.0],
                  [0.5, 4.0, 4.0, 0.25, 9.0]], dtype=np.float32)
    heaps = empty_heaps(2, 3, thresholds=[2.0, 0.5])
    _heaps.screen_rows(s, 0, 0, *heaps)
    values, ids = sorted_heaps(heaps)
    # row 0: 1.0 (id 1), 1.0 (id 3), 2.0 (id 2); 3.0 and 5.0 are above 2.0
    assert as_pairs(values, ids, 0) == [(1.0, 1), (1.0, 3), (2.0, 2)]
    # row 1: only 0.25 (id 3) and 0.5 (id 0) pass; the third slot stays empty
    assert as_pairs(values, ids, 1) == [(0.25, 3), (0.5, 0), (math.inf, -1)]


def test_a_full_heap_tightens_its_threshold_to_its_worst_pair():
    s = np.array([[4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    heaps = empty_heaps(1, 2)
    _heaps.screen_rows(s, 0, 0, *heaps)
    assert heaps[2][0] == 2 and heaps[3][0] == 2.0  # kept 1.0 and 2.0; the worst kept is the threshold


@pytest.mark.parametrize("k", [1, 2, 64, 65])
def test_column_chunks_of_every_width(k):
    # more columns than one task's chunk, and a last chunk that is partly filled
    rng = np.random.default_rng(k)
    n_cols = 2 * _heaps.COLUMN_CHUNK + 3
    s = rng.standard_normal((70, n_cols)).astype(np.float32)
    heaps = empty_heaps(n_cols, k)
    _heaps.screen_columns(s, 1000, 0, *heaps)
    values, ids = sorted_heaps(heaps)
    for c in range(n_cols):
        assert as_pairs(values, ids, c) == loop_best([(float(s[r, c]), 1000 + r) for r in range(70)], k)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 80), st.integers(1, 40), st.integers(0, 10**6), st.booleans())
def test_tied_runs_take_ascending_ids_like_a_lexicographic_sort(n, k, levels, seed, float64):
    # rows sorted by value with many ties (and runs longer than the insertion-sort limit when levels
    # is small); ids a permutation, -1 padding under +inf
    rng = np.random.default_rng(seed)
    dtype = np.float64 if float64 else np.float32
    values = np.sort(rng.integers(0, levels, (n, k)).astype(dtype), axis=1)
    values[:, k - rng.integers(0, k) :] = np.inf
    ids = np.stack([rng.permutation(10 * k)[:k] for _ in range(n)]).astype(np.int64)
    ids[np.isinf(values)] = -1
    expected = [[j for _, j in sorted(zip(values[r].tolist(), ids[r].tolist()))] for r in range(n)]
    before = values.copy()
    _heaps.order_tied_runs(values, ids)
    assert ids.tolist() == expected and np.array_equal(values, before)


def test_a_read_only_install_imports_and_compiles_without_a_cache(tmp_path):
    # numba's cache=True raised at import where it finds no writable place (a read-only install and
    # home): `import deepmetric` failed. Now the kernels compile in each process, with one warning.
    import subprocess
    import sys
    script = tmp_path / "ro.py"
    script.write_text(
        "import warnings\n"
        "import numba.core.caching as caching\n"
        "caching.CacheImpl._locator_classes = []  # no writable place to cache\n"
        "import torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import deepmetric as dm\n"
        "    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0]]).bool()\n"
        "    print(dm.evaluation.ranking.count_relevant(labels, labels, True).tolist())\n"
        "ours = [w for w in caught if str(w.message).startswith('deepmetric:')]  # faiss < 1.14 warns too\n"
        "print(len(ours), ours[0].message)\n"
        "print(ours[0].filename)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counts, warning, where = done.stdout.splitlines()
    assert where == str(script)  # the user's line, through the import system's frames
    assert counts == "[1, 0, 1]"
    assert warning.startswith("1 deepmetric: numba has no writable place to cache") and "NUMBA_CACHE_DIR" in warning
