"""Binary codes: bits from every accepted form, packing, Hamming distances against loops and faiss."""
import faiss
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmetric.codes import hamming_distances, pack_bits, to_bits, unpack_bits


def loop_hamming(q, db):
    """Plain reference: count differing bits pair by pair (bits given as lists of 0/1)."""
    return [[sum(int(a != b) for a, b in zip(qi, di)) for di in db] for qi in q]


def random_bits(n, b, seed):
    return torch.randint(0, 2, (n, b), generator=torch.Generator().manual_seed(seed)).bool()


# ------------------------------------------------------------------ to_bits

def test_to_bits_accepts_every_form_and_agrees():
    expected = torch.tensor([[True, False, True], [False, False, True]])
    pm1 = [[1, -1, 1], [-1, -1, 1]]
    forms = [
        torch.tensor(pm1),                                   # {-1, +1} int
        torch.tensor(pm1, dtype=torch.float32),              # {-1, +1} float
        torch.tensor([[1, 0, 1], [0, 0, 1]]),                # {0, 1} int
        torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.uint8),
        expected.clone(),                                    # bool
        np.array(pm1, dtype=np.int8),                        # numpy {-1, +1}
        np.array([[1, 0, 1], [0, 0, 1]], dtype=np.int64),    # numpy {0, 1}
        np.array([[True, False, True], [False, False, True]]),
        np.array([[0.3, -2.0, 7.5], [-0.1, -1e-9, 1e-9]]),   # real values: x > 0 -> 1
        torch.tensor([[0.3, 0.0, 7.5], [-0.0, -1.0, 2.0]], dtype=torch.float64),  # 0 and -0 -> bit 0
    ]
    for codes in forms:
        bits = to_bits(codes)
        assert bits.dtype == torch.bool
        assert torch.equal(bits, expected), codes


def test_to_bits_bad_input():
    with pytest.raises(ValueError, match=r"codes: expected shape \(N, b\).*1-D"):
        to_bits(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"codes: expected shape \(N, b\).*3-D"):
        to_bits(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match=r"codes: contains NaN.*\[1\]"):
        to_bits(torch.tensor([[1.0, -1.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="query_codes: contains NaN"):
        hamming_distances(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="at least one bit"):
        to_bits(torch.ones(3, 0))
    with pytest.raises(TypeError, match="codes: expected a torch.Tensor or numpy array.*list"):
        to_bits([[1, -1]])
    with pytest.raises(TypeError, match="codes: expected a numeric or bool array.*<U1"):
        to_bits(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="codes: expected real or bool"):
        to_bits(torch.ones(2, 2, dtype=torch.complex64))
    # bytes of packed codes are not bits (each would read as one bit 1)
    packed = pack_bits(torch.tensor([[1, -1] * 8, [-1, 1] * 8]))
    with pytest.raises(ValueError, match=r"codes: integer codes must hold one bit per column .*\[0, 1\].*unpack_bits"):
        to_bits(packed)
    with pytest.raises(ValueError, match=r"first bad rows: \[1\]"):
        to_bits(torch.tensor([[0, 1], [2, 0]]))


# ------------------------------------------------------------------ packing

def test_pack_bits_hand_worked():
    # bits 1000 0001 | 1 (zero-padded to 1000 0000): bytes 128 + 1 = 129 and 128
    # second code 0101 0101 | 0: 64 + 16 + 4 + 1 = 85, and 0
    codes = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1, 0]])
    packed = pack_bits(codes)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [[129, 128], [85, 0]]
    assert torch.equal(unpack_bits(packed, 9), codes.bool())
    assert torch.equal(unpack_bits(torch.from_numpy(packed), 9), codes.bool())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 6), b=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_pack_unpack_roundtrip_and_loop_layout(n, b, seed):
    bits = random_bits(n, b, seed)
    packed = pack_bits(bits * 2 - 1)  # as {-1, +1}
    assert packed.shape == (n, (b + 7) // 8)
    # plain layout: byte j // 8 holds bit j at weight 2^(7 - j % 8)
    expected = np.zeros((n, (b + 7) // 8), dtype=np.int64)
    for i in range(n):
        for j in range(b):
            expected[i, j // 8] += int(bits[i, j]) << (7 - j % 8)
    assert packed.tolist() == expected.tolist()
    assert torch.equal(unpack_bits(packed, b), bits)


def test_unpack_bits_bad_input():
    packed = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"packed: expected shape \(N, 1\) for 8 bits, got \(2, 2\)"):
        unpack_bits(packed, 8)
    with pytest.raises(ValueError, match=r"packed: expected shape \(N, 3\) for 17 bits"):
        unpack_bits(packed, 17)
    with pytest.raises(TypeError, match="packed: expected dtype uint8.*int64"):
        unpack_bits(packed.astype(np.int64), 16)
    with pytest.raises(TypeError, match="packed: expected a uint8 numpy array"):
        unpack_bits([[0, 0]], 16)
    with pytest.raises(ValueError, match="n_bits: expected an integer >= 1"):
        unpack_bits(packed, 0)


# ------------------------------------------------------------------ Hamming distances

def test_hamming_hand_worked():
    # q = +-+-; db0 = ++++ differs at bits 1, 3 -> 2; db1 = -+-+ differs everywhere -> 4;
    # db2 = +-+- -> 0; via the product: q.db0 = 1 - 1 + 1 - 1 = 0 -> (4 - 0) / 2 = 2
    q = torch.tensor([[1, -1, 1, -1]])
    db = torch.tensor([[1, 1, 1, 1], [-1, 1, -1, 1], [1, -1, 1, -1]])
    d = hamming_distances(q, db)
    assert d.dtype == torch.int64
    assert d.tolist() == [[2, 4, 0]]
    # the same codes as {0, 1} numpy and as bool give the same distances
    assert hamming_distances((q.numpy() > 0).astype(np.uint8), db > 0).tolist() == [[2, 4, 0]]


@settings(max_examples=30, deadline=None)
@given(nq=st.integers(1, 5), ndb=st.integers(1, 7), b=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_hamming_equals_loop(nq, ndb, b, seed):
    q, db = random_bits(nq, b, seed), random_bits(ndb, b, seed + 1)
    assert hamming_distances(q, db).tolist() == loop_hamming(q.int().tolist(), db.int().tolist())


def test_hamming_long_codes_exact_and_equal_to_faiss():
    # 1,000-bit codes: float32 +-1 products are exact integers, so the distances are too
    q, db = random_bits(7, 1000, 1), random_bits(50, 1000, 2)
    ours = hamming_distances(q, db)
    assert ours.tolist() == loop_hamming(q.int().tolist(), db.int().tolist())
    # faiss' brute-force binary index on the packed bytes: same distances for every pair
    q64, db64 = random_bits(9, 64, 3), random_bits(40, 64, 4)
    index = faiss.IndexBinaryFlat(64)
    index.add(pack_bits(db64))
    dist, ids = index.search(pack_bits(q64), 40)
    full = np.zeros((9, 40), dtype=np.int64)
    np.put_along_axis(full, ids, dist, axis=1)
    assert hamming_distances(q64, db64).tolist() == full.tolist()


def test_hamming_bad_input():
    with pytest.raises(ValueError, match="db_codes: expected codes of 4 bits to match query_codes, got 3"):
        hamming_distances(torch.ones(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="db_codes: expected shape"):
        hamming_distances(torch.ones(2, 4), torch.ones(4))
