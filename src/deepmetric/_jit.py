"""The compiled (numba) kernels' decorator: parallel, and cached on disk where the process can write."""
from __future__ import annotations

from numba import njit

from deepmetric._checks import warn

_uncached: list[str] = []


def kernel(**options):
    """``numba.njit(parallel=True, cache=True, **options)``. Where numba finds no writable place for its
    cache (a read-only install, and a home directory that is not writable either), the kernel is
    compiled afresh in each process instead of failing the import, with one warning naming
    ``NUMBA_CACHE_DIR``, which gives numba a writable place."""
    def wrap(fn):
        try:
            return njit(parallel=True, cache=True, **options)(fn)
        except RuntimeError as err:
            if "cannot cache" not in str(err):
                raise
        if not _uncached:
            warn(f"deepmetric: numba has no writable place to cache its compiled kernels ({fn.__module__}); "
                 "each process compiles them again (seconds on first use). Set NUMBA_CACHE_DIR to a writable "
                 "directory to keep them")
        _uncached.append(fn.__name__)
        return njit(parallel=True, **options)(fn)
    return wrap
