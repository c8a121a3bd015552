"""Frame features: a memory-mapped cache of a frozen encoder's outputs, and a YouTube-8M TFRecord
reader that needs no TensorFlow.

>>> cache = cache_features("faces", videos, encoder, out_dir="cache")   # doctest: +SKIP
>>> cache["track_3"].shape                                              # doctest: +SKIP
torch.Size([41, 512])
>>> for video in read_youtube8m("train00.tfrecord", level="frame"):     # doctest: +SKIP
...     video["rgb"].shape, video["labels"]
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepmetric._checks import warn
from deepmetric._io import atomic_path, locked, write_json
from deepmetric.data.datasets import sha256_file

__all__ = [
    "cache_features", "FeatureCache", "encoder_description",
    "crc32c", "masked_crc32c", "read_tfrecords", "parse_example", "parse_sequence_example",
    "dequantize", "read_youtube8m",
]

# ----------------------------------------------------------------------------- feature cache

_MANIFEST = "manifest.json"
_FEATURES = "features.npy"
_FORMAT = "deepmetric-feature-cache"
_HEADER_BYTES = 128  # fixed .npy header size, so the data can be streamed before the shape is known


def encoder_description(encoder) -> str:
    """A string that identifies ``encoder`` for the cache manifest.

    Uses ``encoder.description`` when present; for an ``nn.Module`` its class, ``repr`` and the
    sha256 of its state dict (so changed weights invalidate the cache); for ``functools.partial`` the
    function's description and the bound arguments; otherwise the function's module and qualified name,
    and the values a closure captured (tensors and arrays by sha256). State that none of these shows (a
    module's plain attribute read by ``forward``) is not seen: pass ``description`` then.
    """
    desc = getattr(encoder, "description", None)
    if isinstance(desc, str):
        return desc
    if isinstance(encoder, torch.nn.Module):
        h = hashlib.sha256()
        for name, t in encoder.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return f"{type(encoder).__module__}.{type(encoder).__qualname__} {repr(encoder)} state:{h.hexdigest()[:16]}"
    if isinstance(encoder, functools.partial):
        return (f"partial({encoder_description(encoder.func)}, {[_value(a) for a in encoder.args]}, "
                f"{ {k: _value(v) for k, v in encoder.keywords.items()} })")
    fn = getattr(encoder, "__qualname__", type(encoder).__qualname__)
    mod = getattr(encoder, "__module__", None) or inspect.getmodule(encoder)
    cells = getattr(encoder, "__closure__", None) or ()
    captured = f" closure:{[_value(c.cell_contents) for c in cells]}" if cells else ""
    return f"{mod}.{fn}{captured}"


def _value(value) -> str:
    """A captured or bound value as the cache key sees it: tensors and arrays by the sha256 of their bytes,
    modules by their description, functions by their name (not their own closures, which may hold
    themselves), anything else by its repr."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return f"array{array.shape}:{hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]}"
    if isinstance(value, torch.nn.Module):
        return encoder_description(value)
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return repr(value)


def _fingerprint(item) -> tuple[str, str, object]:
    """(key, fingerprint, source) for a (key, frames) pair or a video path."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"video file {str(path)!r} does not exist")
        return str(item), "file:" + sha256_file(path), path
    try:
        key, frames = item
    except (TypeError, ValueError) as e:
        raise ValueError(f"videos must yield paths or (key, frames) pairs, got {type(item).__name__}") from e
    frames = torch.as_tensor(frames)
    h = hashlib.sha256(f"{frames.dtype}{tuple(frames.shape)}".encode())
    h.update(frames.detach().cpu().contiguous().numpy().tobytes())
    return str(key), "tensor:" + h.hexdigest(), frames


def _encode(encoder, frames: torch.Tensor, batch_size: int, key: str) -> np.ndarray:
    outs = []
    with torch.inference_mode():
        for i in range(0, len(frames), batch_size):
            chunk = frames[i:i + batch_size]
            y = torch.as_tensor(encoder(chunk))
            if y.ndim != 2 or y.shape[0] != len(chunk):
                raise ValueError(f"encoder must map {len(chunk)} frames to a ({len(chunk)}, D) tensor, got "
                                 f"shape {tuple(y.shape)} for video {key!r}")
            if not torch.isfinite(y).all():
                raise ValueError(f"encoder returned NaN or infinite features for video {key!r}")
            outs.append(y.detach().to(torch.float32).cpu().numpy())
    if not outs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outs)


def _npy_header(shape) -> bytes:
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % shape
    body = d.encode("latin1")
    pad = _HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:  # pragma: no cover - shapes below 10^40
        raise ValueError(f"shape {shape} too large for the cache header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", _HEADER_BYTES - 10) + body + b" " * pad + b"\n"


def cache_features(name_or_dir, videos, encoder, out_dir=None, batch_size: int = 64,
                   description: str | None = None, progress: bool = True) -> "FeatureCache":
    """Run a frozen ``encoder`` once over each video and cache the per-frame features.

    ``videos`` yields ``(key, frames)`` pairs or video paths (read with :func:`read_video`, key =
    the path as given). ``encoder`` maps a batch of up to ``batch_size`` frames to a ``(n, D)``
    tensor; it runs under ``torch.inference_mode`` (an ``nn.Module`` in eval mode, restored after).
    The cache lives in ``out_dir / name_or_dir`` (or ``name_or_dir`` itself when ``out_dir`` is None):

    - ``features.npy``: float32 ``(sum T_i, D)``, all videos concatenated, memory-mapped on read;
    - ``manifest.json``: keys, offsets, lengths, ``dim``, encoder description, a fingerprint per input
      (sha256 of the frames or of the video file) and the sha256 of ``features.npy``.

    When the manifest already matches (same keys in the same order, same input fingerprints, same
    encoder description) and the feature file verifies, the cache is returned without calling the
    encoder; otherwise everything is recomputed. Both files are written to a temporary name and
    renamed. (key, frames) inputs are held in memory while the cache is checked; pass paths for
    large collections.
    """
    directory = Path(out_dir) / str(name_or_dir) if out_dir is not None else Path(name_or_dir)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = [_fingerprint(v) for v in videos]
    keys = [k for k, _, _ in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"video keys must be unique; repeated: {dup}")
    desc = description if description is not None else encoder_description(encoder)
    fingerprints = [f for _, f, _ in items]
    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory / ".lock"):  # writers take turns: a manifest must describe the features beside it
        existing = _try_open(directory)
        if existing is not None:
            m = existing.manifest
            if m.get("keys") == keys and m.get("inputs") == fingerprints and m.get("encoder") == desc:
                return existing
        return _write_cache(directory, items, keys, fingerprints, desc, encoder, batch_size, progress)


def _write_cache(directory: Path, items, keys, fingerprints, desc: str, encoder, batch_size: int,
                 progress: bool) -> "FeatureCache":
    """Encode every item into ``directory``'s feature file and write its manifest (under the lock)."""
    was_training = isinstance(encoder, torch.nn.Module) and encoder.training
    if was_training:
        encoder.eval()
    offsets, lengths, dim, total = [], [], None, 0
    try:
        with atomic_path(directory / _FEATURES) as tmp, open(tmp, "wb") as f:
            f.write(b"\0" * _HEADER_BYTES)
            bar = tqdm(items, desc=f"caching features {directory.name}", unit="video", disable=not progress)
            for key, _, source in bar:
                if isinstance(source, Path):
                    from deepmetric.data.video import read_video
                    source, _ = read_video(source)
                feats = _encode(encoder, source, batch_size, key)
                if len(feats):
                    if dim is None:
                        dim = feats.shape[1]
                    elif feats.shape[1] != dim:
                        raise ValueError(f"encoder gave {feats.shape[1]}-dim features for video {key!r}, "
                                         f"{dim} before")
                    f.write(np.ascontiguousarray(feats, dtype="<f4").tobytes())
                offsets.append(total)
                lengths.append(len(feats))
                total += len(feats)
            bar.close()
            f.seek(0)
            f.write(_npy_header((total, dim or 0)))
    finally:
        if was_training:
            encoder.train()
    manifest = {
        "format": _FORMAT, "version": 1, "keys": keys, "offsets": offsets, "lengths": lengths,
        "dim": dim or 0, "count": total, "encoder": desc, "inputs": fingerprints,
        "features_file": _FEATURES, "sha256": sha256_file(directory / _FEATURES),
    }
    write_json(directory / _MANIFEST, manifest)
    return FeatureCache.open(directory, verify=False)


def _try_open(directory: Path):
    if not (directory / _MANIFEST).is_file():
        return None
    try:
        return FeatureCache.open(directory)
    except (ValueError, FileNotFoundError) as e:
        warn(f"recomputing the feature cache in {str(directory)!r}: {e}")
        return None


class FeatureCache:
    """Read side of :func:`cache_features`: ``len(cache)``, ``cache.keys``, ``key in cache`` and
    ``cache[key] -> (T, D)`` float32 tensor read from the memory-mapped feature file."""

    def __init__(self, directory: Path, manifest: dict, features: np.ndarray):
        self.directory = directory
        self.manifest = manifest
        self.features = features
        self._index = {k: (o, n) for k, o, n in zip(manifest["keys"], manifest["offsets"], manifest["lengths"])}

    @classmethod
    def open(cls, directory, verify: bool = True) -> "FeatureCache":
        """Open a cache directory, checking the manifest against the feature file (shape, dtype and,
        when ``verify``, its sha256). Raises ``FileNotFoundError``/``ValueError`` naming the file."""
        directory = Path(directory)
        mpath = directory / _MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"feature cache manifest {str(mpath)!r} does not exist")
        try:
            manifest = json.loads(mpath.read_text())
            if manifest.get("format") != _FORMAT:
                raise ValueError(f"format is {manifest.get('format')!r}, expected {_FORMAT!r}")
            keys, offsets, lengths = manifest["keys"], manifest["offsets"], manifest["lengths"]
            dim, count = int(manifest["dim"]), int(manifest["count"])
            if not len(keys) == len(offsets) == len(lengths) or sum(lengths) != count:
                raise ValueError("keys, offsets and lengths disagree")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"feature cache manifest {str(mpath)!r} is invalid: {what}") from e
        fpath = directory / manifest.get("features_file", _FEATURES)
        if not fpath.is_file():
            raise FileNotFoundError(f"feature file {str(fpath)!r} named by {str(mpath)!r} does not exist")
        expected_bytes = _HEADER_BYTES + count * dim * 4
        size = fpath.stat().st_size
        if size != expected_bytes:
            raise ValueError(f"feature file {str(fpath)!r} is truncated or wrong: {size} bytes, manifest "
                             f"implies {expected_bytes}")
        if verify:
            digest = sha256_file(fpath)
            if digest != manifest.get("sha256"):
                raise ValueError(f"feature file {str(fpath)!r} fails its checksum: sha256 {digest[:16]}..., "
                                 f"manifest says {str(manifest.get('sha256'))[:16]}...")
        try:
            features = np.load(fpath, mmap_mode="r") if count and dim else np.zeros((count, dim), np.float32)
        except ValueError as e:
            raise ValueError(f"feature file {str(fpath)!r} is unreadable: {e}") from e
        if features.shape != (count, dim) or features.dtype != np.float32:
            raise ValueError(f"feature file {str(fpath)!r} holds {features.dtype} {features.shape}, manifest "
                             f"says float32 {(count, dim)}")
        return cls(directory, manifest, features)

    @property
    def keys(self) -> list[str]:
        return list(self.manifest["keys"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> str:
        return self.manifest["encoder"]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key) -> bool:
        return str(key) in self._index

    def __iter__(self):
        return iter(self.keys)

    def __getitem__(self, key) -> torch.Tensor:
        try:
            offset, length = self._index[str(key)]
        except KeyError:
            raise KeyError(f"{key!r} is not in feature cache {str(self.directory)!r} "
                           f"({len(self)} videos, e.g. {self.keys[:3]})") from None
        return torch.from_numpy(np.array(self.features[offset:offset + length], dtype=np.float32))

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r}, videos={len(self)}, frames={self.manifest['count']}, dim={self.dim})"


# ----------------------------------------------------------------------------- TFRecord + protobuf

def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli polynomial, bit-reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


_CRC_TABLE_NP = np.array(_CRC_TABLE, dtype=np.uint32)


def _crc_update_serial(reg: int, data) -> int:
    """Raw CRC-32C register update (no initial or final xor), one table lookup per byte."""
    table = _CRC_TABLE
    for b in data:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _gf2_apply(cols: list[int], v: int) -> int:
    r, j = 0, 0
    while v:
        if v & 1:
            r ^= cols[j]
        v >>= 1
        j += 1
    return r


def _zeros_operator(n: int) -> list[int]:
    """The 32x32 GF(2) matrix (as 32 column ints) of feeding ``n`` zero bytes to the CRC register."""
    result = [1 << j for j in range(32)]
    power = [_crc_update_serial(1 << j, b"\0") for j in range(32)]
    while n:
        if n & 1:
            result = [_gf2_apply(power, c) for c in result]
        power = [_gf2_apply(power, c) for c in power]
        n >>= 1
    return result


def _crc_update(reg: int, data: bytes) -> int:
    """Raw register update; long inputs run as parallel numpy lanes combined by linearity:
    ``update(r, A || B) = Z_|B| update(r, A) xor update(0, B)`` with ``Z_n`` the n-zero-bytes operator."""
    n = len(data)
    if n < 1 << 16:
        return _crc_update_serial(reg, data)
    lanes = 1024 if n < 1 << 22 else 4096
    step = n // lanes
    head = n - lanes * step
    reg = _crc_update_serial(reg, data[:head])
    cols = np.ascontiguousarray(np.frombuffer(data, np.uint8, offset=head).reshape(lanes, step).T)
    table, crc = _CRC_TABLE_NP, np.zeros(lanes, dtype=np.uint32)
    for column in cols:
        crc = table[(crc ^ column) & 0xFF] ^ (crc >> 8)
    shift = _zeros_operator(step)
    for c in crc.tolist():
        reg = _gf2_apply(shift, reg) ^ c
    return reg


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF),
    table-driven; inputs of 64 KiB and more are split into lanes computed together with numpy."""
    return _crc_update(0xFFFFFFFF, bytes(data)) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: ``((c >> 15) | (c << 17)) + 0xa282ead8`` mod 2^32, ``c = crc32c(data)``."""
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path, verify: bool = True):
    """Yield the payload bytes of each record of a TFRecord file.

    Framing per record: ``uint64 length`` (little-endian), ``uint32 masked_crc32c(length bytes)``,
    ``data[length]``, ``uint32 masked_crc32c(data)``. With ``verify`` both CRCs are checked; a
    mismatch or a short read raises ``ValueError`` naming the file, record number and byte offset.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFRecord file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        index = 0
        while True:
            offset = f.tell()
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise ValueError(f"{str(path)!r}: record {index} at byte {offset} is truncated (header)")
            length, length_crc = struct.unpack("<QI", head)
            if verify and masked_crc32c(head[:8]) != length_crc:
                raise ValueError(f"{str(path)!r}: record {index} at byte {offset} is corrupt (length CRC "
                                 "mismatch)")
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                raise ValueError(f"{str(path)!r}: record {index} at byte {offset} is truncated: expected "
                                 f"{length} bytes of data")
            if verify and masked_crc32c(data) != struct.unpack("<I", tail)[0]:
                raise ValueError(f"{str(path)!r}: record {index} at byte {offset} is corrupt (data CRC "
                                 "mismatch)")
            yield data
            index += 1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("protobuf message ends inside a varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("protobuf varint longer than 10 bytes")


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)`` of a protobuf message; value is an int for
    varints, bytes for fixed32/fixed64/length-delimited fields."""
    pos, n = 0, len(buf)
    while pos < n:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field})")
        if pos > n:
            raise ValueError(f"protobuf field {field} runs past the end of the message")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: bytes):
    """tf.train.Feature: oneof bytes_list = 1, float_list = 2, int64_list = 3 (each ``value = 1``)."""
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field == 1:
            return "bytes", [v for f, w, v in _fields(value) if f == 1 and w == 2]
        if field == 2:
            parts = []
            for f, w, v in _fields(value):
                if f == 1:
                    parts.append(np.frombuffer(v, "<f4"))  # packed (wire 2) or single fixed32 (wire 5)
            return "float", np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if field == 3:
            vals = []
            for f, w, v in _fields(value):
                if f != 1:
                    continue
                if w == 0:
                    vals.append(_signed64(v))
                else:  # packed
                    pos = 0
                    while pos < len(v):
                        x, pos = _varint(v, pos)
                        vals.append(_signed64(x))
            return "int64", np.array(vals, dtype=np.int64)
    return "empty", []


def _parse_map(buf: bytes, value_parser) -> dict:
    """A protobuf ``map<string, V>`` field's entries: ``key = 1``, ``value = 2``."""
    out = {}
    for field, wire, entry in _fields(buf):
        if field != 1 or wire != 2:
            continue
        key, value = "", b""
        for f, w, v in _fields(entry):
            if f == 1:
                key = v.decode("utf-8")
            elif f == 2:
                value = v
        out[key] = value_parser(value)
    return out


def parse_example(data: bytes) -> dict:
    """Decode a serialised ``tf.train.Example`` (``features = 1`` -> ``Features.feature = 1`` map) into
    ``{name: (kind, values)}`` with kind ``"bytes"`` (list of bytes), ``"float"`` (float32 array) or
    ``"int64"`` (int64 array)."""
    feats = {}
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:
            feats.update(_parse_map(value, _parse_feature))
    return feats


def parse_sequence_example(data: bytes) -> tuple[dict, dict]:
    """Decode a ``tf.train.SequenceExample``: ``context = 1`` (Features) and ``feature_lists = 2``
    (``FeatureLists.feature_list = 1`` map of ``FeatureList``, whose ``feature = 1`` repeats).
    Returns ``(context, feature_lists)``: ``{name: (kind, values)}`` and ``{name: [(kind, values), ...]}``."""
    context, lists = {}, {}

    def feature_list(buf):
        return [_parse_feature(v) for f, w, v in _fields(buf) if f == 1 and w == 2]

    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:
            context.update(_parse_map(value, _parse_feature))
        elif field == 2 and wire == 2:
            lists.update(_parse_map(value, feature_list))
    return context, lists


def dequantize(x, max_quantized_value: float = 2.0, min_quantized_value: float = -2.0) -> torch.Tensor:
    """YouTube-8M dequantisation of uint8 features, as the public starter code's ``utils.Dequantize``:

    ``x * (max - min) / 255 + (max - min) / 512 + min``; with the defaults ``max = 2, min = -2``,
    ``0 -> -1.9921875`` and ``255 -> 2.0078125`` (each code maps near its bin centre).
    """
    if max_quantized_value <= min_quantized_value:
        raise ValueError("max_quantized_value must exceed min_quantized_value")
    r = max_quantized_value - min_quantized_value
    x = torch.as_tensor(x).to(torch.float32)
    return x * (r / 255.0) + (r / 512.0 + min_quantized_value)


def _video_id(feats: dict, path, index) -> str:
    for name in ("id", "video_id"):
        if name in feats and feats[name][0] == "bytes" and feats[name][1]:
            return feats[name][1][0].decode("utf-8", "replace")
    raise ValueError(f"{str(path)!r}: record {index} has no 'id' feature")


def _labels(feats: dict) -> torch.Tensor:
    kind, vals = feats.get("labels", ("int64", np.zeros(0, np.int64)))
    if kind not in ("int64", "empty"):
        raise ValueError(f"'labels' must be an int64 list, got {kind}")
    return torch.from_numpy(np.asarray(vals, dtype=np.int64).copy())


def read_youtube8m(path, level: str = "video", verify: bool = True):
    """Yield YouTube-8M videos from TFRecord file(s) as dicts ``{id, labels, rgb, audio}``.

    - ``level="video"`` (``tf.train.Example``): features ``id`` (bytes), ``labels`` (int64 list),
      ``mean_rgb`` (1024 floats) and ``mean_audio`` (128 floats) -> ``rgb (1024,)``, ``audio (128,)``.
    - ``level="frame"`` (``tf.train.SequenceExample``): context ``id`` and ``labels``; feature lists
      ``rgb`` and ``audio`` with one bytes feature per frame of uint8 quantised values, dequantised by
      :func:`dequantize` -> ``rgb (T, 1024)``, ``audio (T, 128)``.

    ``labels`` is int64 ``(n,)``; ``path`` may be one file or a list of files. Also accepts the
    older ``video_id`` name.
    """
    if level not in ("video", "frame"):
        raise ValueError(f"level must be 'video' or 'frame', got {level!r}")
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for p in paths:
        for index, record in enumerate(read_tfrecords(p, verify=verify)):
            try:
                if level == "video":
                    yield _video_level(parse_example(record), p, index)
                else:
                    yield _frame_level(*parse_sequence_example(record), p, index)
            except ValueError as e:
                if str(p) in str(e):
                    raise
                raise ValueError(f"{str(p)!r}: record {index} is not a valid YouTube-8M {level}-level "
                                 f"record: {e}") from e


def _video_level(feats, path, index):
    out = {"id": _video_id(feats, path, index), "labels": _labels(feats)}
    for name, key in (("rgb", "mean_rgb"), ("audio", "mean_audio")):
        kind, vals = feats.get(key, ("float", np.zeros(0, np.float32)))
        if kind != "float":
            raise ValueError(f"{key!r} must be a float list, got {kind}")
        out[name] = torch.from_numpy(np.asarray(vals, np.float32).copy())
    return out


def _frame_level(context, lists, path, index):
    out = {"id": _video_id(context, path, index), "labels": _labels(context)}
    for name in ("rgb", "audio"):
        frames = lists.get(name, [])
        rows = []
        for kind, vals in frames:
            if kind != "bytes" or len(vals) != 1:
                raise ValueError(f"each {name!r} frame must be one bytes feature")
            rows.append(np.frombuffer(vals[0], np.uint8))
        if rows and len({len(r) for r in rows}) != 1:
            raise ValueError(f"{name!r} frames have different sizes")
        q = np.stack(rows) if rows else np.zeros((0, 0), np.uint8)
        out[name] = dequantize(torch.from_numpy(q.copy()))
    return out
