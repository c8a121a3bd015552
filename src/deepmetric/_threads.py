"""Running numpy work that releases the GIL (sorting, gathering) on torch's threads."""
from __future__ import annotations

import concurrent.futures

import numpy as np
import torch


def over_rows(fn, n: int) -> None:
    """Call ``fn(r0, r1)`` on consecutive row ranges that cover ``[0, n)``, one range per thread of
    ``torch.get_num_threads()``, in parallel (numpy sorts and gathers release the GIL)."""
    n_threads = max(1, min(torch.get_num_threads(), n))
    bounds = np.linspace(0, n, n_threads + 1).astype(int)
    if n_threads == 1:
        fn(0, n)
        return
    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(fn, bounds[:-1], bounds[1:]))  # list(): raise the workers' exceptions here
