"""Binary codes of deep hashing: bits, packed bytes and Hamming distances.

A code of ``b`` bits is a row of a ``(N, b)`` matrix. Hashing models output ``{-1, +1}`` codes
(``sign`` of a real-valued layer, as in DPSH, HashNet and CSQ); indexes store them packed eight
bits to a byte. Every function here accepts any of these forms through :func:`to_bits`:

* ``{-1, +1}`` (or any real values): bit 1 where ``x > 0``;
* ``{0, 1}`` integers: bit 1 where ``x > 0``, i.e. where ``x == 1``;
* bool.

>>> hamming_distances(torch.tensor([[1, -1, 1]]), torch.tensor([[1, 1, 1], [-1, 1, -1]]))
tensor([[1, 3]])
"""
from __future__ import annotations

import numpy as np
import torch

from deepmetric._checks import as_tensor, check_int

__all__ = ["to_bits", "pack_bits", "unpack_bits", "hamming_distances"]

#: largest code length whose ±1 dot products float32 represents exactly (integers up to 2^24)
_FLOAT32_EXACT_BITS = 1 << 24


def to_bits(codes, name: str = "codes") -> torch.Tensor:
    """``(N, b)`` torch.bool bits of binary codes: bit 1 where ``x > 0``.

    ``codes`` is a torch tensor or numpy array of shape ``(N, b)``: ``{-1, +1}`` codes (any real
    values are binarised by sign, ``x > 0`` -> 1, as ``h = sgn(u)`` in DPSH, Li et al. 2016),
    ``{0, 1}`` integers, or bool; integers outside ``[-1, 1]`` are refused (bytes of packed codes are
    not bits: see :func:`unpack_bits`). A torch tensor keeps its device.

    >>> to_bits(torch.tensor([[-1, 1], [1, 1]]))
    tensor([[False,  True],
            [ True,  True]])
    """
    codes = as_tensor(codes, name)
    if codes.is_complex():
        raise TypeError(f"{name}: expected real or bool binary codes, got {codes.dtype}")
    if codes.dim() != 2:
        raise ValueError(f"{name}: expected shape (N, b) (one code per row), got {tuple(codes.shape)} "
                         f"({codes.dim()}-D)")
    if codes.shape[1] == 0:
        raise ValueError(f"{name}: expected codes of at least one bit, got shape {tuple(codes.shape)}")
    if codes.dtype == torch.bool:
        return codes
    if codes.is_floating_point() and torch.isnan(codes).any():
        bad = torch.isnan(codes).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name}: contains NaN, which has no sign (first bad rows: {bad})")
    if not codes.is_floating_point() and codes.numel() and not -1 <= int(codes.min()) <= int(codes.max()) <= 1:
        wide = codes.long()  # comparisons with -1 on unsigned bytes would wrap around
        bad = ((wide < -1) | (wide > 1)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name}: integer codes must hold one bit per column ({{-1, +1}} or {{0, 1}}), got "
                         f"values outside [-1, 1] (first bad rows: {bad}); unpack packed bytes with "
                         f"deepmetric.codes.unpack_bits first")
    return codes > 0


def pack_bits(codes, name: str = "codes") -> np.ndarray:
    """``(N, ceil(b / 8))`` numpy uint8: the bits of :func:`to_bits` packed with ``np.packbits(axis=1)``.

    Bit ``j`` of a code is bit ``7 - j % 8`` (big-endian order) of byte ``j // 8``; the last byte is
    zero-padded. Hamming distances do not depend on the bit order, so faiss' binary indexes take
    these bytes as they are. faiss' own packer (``faiss.real_to_binary``) is little-endian within a
    byte: bytes from it are not for :func:`unpack_bits`.

    >>> pack_bits(torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1]]))
    array([[129, 128]], dtype=uint8)
    """
    bits = to_bits(codes, name)
    return np.packbits(bits.cpu().numpy(), axis=1)


def unpack_bits(packed, n_bits: int, name: str = "packed") -> torch.Tensor:
    """``(N, n_bits)`` torch.bool bits from ``(N, ceil(n_bits / 8))`` uint8 bytes of :func:`pack_bits`.

    >>> unpack_bits(np.array([[129, 128]], dtype=np.uint8), 9).int()
    tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1]], dtype=torch.int32)
    """
    n_bits = check_int(n_bits, "n_bits", 1)
    if isinstance(packed, torch.Tensor):
        packed = packed.detach().cpu().numpy()
    if not isinstance(packed, np.ndarray):
        raise TypeError(f"{name}: expected a uint8 numpy array or torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8 (packed bytes), got {packed.dtype}")
    n_bytes = (int(n_bits) + 7) // 8
    if packed.ndim != 2 or packed.shape[1] != n_bytes:
        raise ValueError(f"{name}: expected shape (N, {n_bytes}) for {n_bits} bits, got {packed.shape}")
    return torch.from_numpy(np.unpackbits(packed, axis=1, count=int(n_bits)).astype(bool))


def _signs(bits: torch.Tensor) -> torch.Tensor:
    """``{-1, +1}`` codes ``2 h - 1`` of bits ``h``, in the float type whose products of them are exact
    (float32 up to ``2^24`` bits, float64 beyond)."""
    dtype = torch.float32 if bits.shape[1] <= _FLOAT32_EXACT_BITS else torch.float64
    return bits.to(dtype).mul_(2).sub_(1)


def _hamming(query_signs: torch.Tensor, db_signs: torch.Tensor) -> torch.Tensor:
    """Hamming distances of ``{-1, +1}`` codes as whole floats: ``(b - q.d) / 2``."""
    return (query_signs.shape[1] - query_signs @ db_signs.T).div_(2).round_()


def hamming_distances(query_codes, db_codes) -> torch.Tensor:
    """``(Q, N)`` int64 Hamming distances: the number of bits in which two codes differ.

    With ``{-1, +1}`` codes ``q`` and ``d`` of ``b`` bits, ``q.d = (b - H) - H``, so
    ``H(q, d) = (b - q.d) / 2`` (Liu et al. 2012, "Supervised Hashing with Kernels"; DPSH): one
    matrix product, exact in float32 for ``b <= 2^24`` (float64 beyond). The result is on the device
    of ``query_codes``.

    >>> hamming_distances(np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 0], [0, 0, 1, 1]]))
    tensor([[2, 0]])
    """
    q = to_bits(query_codes, "query_codes")
    db = to_bits(db_codes, "db_codes").to(q.device)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"db_codes: expected codes of {q.shape[1]} bits to match query_codes, got {db.shape[1]}")
    return _hamming(_signs(q), _signs(db)).long()
