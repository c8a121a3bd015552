"""Every test starts from the same global state: torch's thread count and the torch, numpy and Python
random generators are restored after each test (the benchmarks' main() set one thread, and many tests
seed the generators)."""
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_global_state():
    threads, python_state, numpy_state = torch.get_num_threads(), random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
