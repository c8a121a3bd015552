"""The shared argument checks (`deepmetric._checks`) and their use across the public API."""
import numpy as np
import pytest
import torch

from deepmetric import _checks
from deepmetric.data.samplers import MPerClassSampler
import deepmetric as dm
from deepmetric.index import create, load
from deepmetric.losses.proxy import ProxyAnchorLoss
from deepmetric.losses.triplet import TripletMarginLoss


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_check_int_accepts_python_and_numpy_integers(value):
    out = _checks.check_int(value, "n", 1, 5)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value, low, high, match", [
    (True, None, None, r"n: expected an integer, got True"),
    (np.bool_(True), 0, None, r"n: expected an integer >= 0, got"),
    (3.0, None, None, r"n: expected an integer, got 3.0"),
    ("3", 1, None, r"n: expected an integer >= 1, got '3'"),
    (None, 1, None, r"n: expected an integer >= 1, got None"),
    (0, 1, None, r"n: expected an integer >= 1, got 0"),
    (6, 1, 5, r"n: expected an integer in \[1, 5\], got 6"),
    (6, None, 5, r"n: expected an integer <= 5, got 6"),
    (-3, -2, 1, r"n: expected an integer in \[-2, 1\], got -3"),
])
def test_check_int_refuses_with_the_name_and_the_range(value, low, high, match):
    with pytest.raises(ValueError, match=match):
        _checks.check_int(value, "n", low, high)


def test_check_int_says_where_a_bound_comes_from():
    with pytest.raises(ValueError, match=r"k: expected an integer in \[2, 4\] \(the number of tracks\), got 5"):
        _checks.check_int(5, "k", 2, 4, " (the number of tracks)")


def test_check_ints():
    assert _checks.check_ints([np.int64(5), 1], "ks", 1) == (5, 1)
    for bare in (5, np.int64(5), "5"):
        with pytest.raises(TypeError, match=r"ks: expected a sequence of integers, e\.g\. \(1, 10\)"):
            _checks.check_ints(bare, "ks", 1)
    with pytest.raises(ValueError, match="ks: expected an integer >= 1, got 0"):
        _checks.check_ints((1, 0), "ks", 1)


def test_numpy_integers_accepted_everywhere():
    """Sizes read from numpy (e.g. ``len(np.unique(y))`` or ``x.shape`` of an array) are plain integers;
    some constructors used to refuse them."""
    loss = ProxyAnchorLoss(num_classes=np.int64(4), embedding_size=np.int64(8))
    assert loss.proxies.shape == (4, 8)
    assert TripletMarginLoss(max_elements=np.int64(10)).max_elements == 10
    sampler = MPerClassSampler(torch.arange(8) // 2, m=np.int64(2), batch_size=np.int64(4))
    assert all(len(batch) == 4 for batch in sampler)
    index = create("exact")
    index.add(torch.eye(3))
    assert index.search(torch.eye(3), k=np.int64(1))[1][:, 0].tolist() == [0, 1, 2]
    assert type(dm.losses.create("margin", num_classes=np.int64(3)).num_classes) is int
    assert dm.losses.create("sgml", num_attributes=np.int64(4), embedding_size=8).num_attributes == (4,)


def test_faiss_options_from_numpy_integers_are_saved(tmp_path):
    """The manifest is JSON: options given as numpy integers made save fail ("int64 is not JSON serializable")."""
    index = create("ivf-flat", nlist=np.int64(2), nprobe=np.int64(2))
    index.add(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))
    index.save(tmp_path / "ivf")
    assert load(tmp_path / "ivf").options == {"nlist": 2, "nprobe": 2}
