"""The ``Index`` protocol shared by every backend: user ids, search, remove, and save/load.

Every backend (DESIGN.md "Contracts") answers to::

    index.add(vectors, ids=None)            # ids: unique non-negative int64, or strings
    distances, ids = index.search(queries, k)  # torch (Q, k) float32 ascending, int64 ids
    index.remove(ids)                       # where the backend can; else NotImplementedError
    index.save(directory); deepmetric.index.load(directory)
    len(index), index.dim, index.distance

Ids. An index holds either int64 ids (the user's own, or consecutive when none are given, from one
past the largest id it has ever held, so removed ids are not handed out again) or string ids,
which are mapped to int64 labels and kept beside them; ``search`` always returns int64 labels and
:meth:`Index.names` maps them back to the user's ids. Slots beyond the items available hold id
``-1`` and distance ``+inf``, so user ids must be non-negative.

Saved layout (one directory)::

    manifest.json   format version, backend, options, distance, dimension, count, id type,
                    next default id, deepmetric version, size and sha256 of every other file, and a checksum of
                    the manifest itself
    ids.npy         (count,) int64 labels in insertion order
    ids.json        the string ids, aligned with ids.npy (string-id indexes only)
    <backend files> e.g. vectors.npy (exact), index.faiss (faiss), codes.faiss (binary)

Saving writes everything into a temporary sibling directory, flushes it to the disk and renames it
into place; an existing index is moved aside first and deleted only once the new one is in place
(put back if the rename fails), so neither a crash nor a power cut leaves a half-written index. Only
a missing path, an empty directory or a saved index whose manifest lists every file in it is
replaced. Saves to one path take turns (a lock file beside it) and remove what killed saves left.
Loading checks every file's presence, size and checksum before reading anything, never unpickles,
and names the bad file. It reads every file from the one directory it opened first, so a save that
replaces the index meanwhile (a nightly rebuild beside a running service) never gives a mix of the
two: the load starts again on the new index. The checksums catch damage, not tampering (whoever can
write the files can recompute them), and faiss allocates the sizes its file states: load indexes only
from sources you trust.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from stat import S_ISDIR, S_ISREG

import numpy as np
import torch

from deepmetric._checks import check_int
from deepmetric._io import locked, sha256_stream, sync, usual_mode
from deepmetric.registry import Registry

INDEXES = Registry("index", "indexes")
MANIFEST = "manifest.json"
FORMAT = "deepmetric-index"
FORMAT_VERSION = 1


def _sha256(f) -> str:
    """Hex sha256 of an open binary file from its start, read afresh (no cache: a verification must see
    the bytes on disk); the file is left at its start."""
    f.seek(0)
    digest = sha256_stream(f)
    f.seek(0)
    return digest


class _Held:
    """A saved index directory held open: every file is opened relative to the same directory (a
    directory file descriptor, ``O_PATH`` where there is one, so that search permission is enough),
    so a save that replaces the path meanwhile cannot mix two indexes. Without ``dir_fd`` support
    (Windows) files are opened by path, and a replacement is seen by the directory's identity."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = None
        if os.open in os.supports_dir_fd:
            flags = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0)
            self.fd = os.open(path, flags)
            self.identity = os.fstat(self.fd)
        else:
            self.identity = os.stat(path)
            if not S_ISDIR(self.identity.st_mode):
                raise NotADirectoryError(str(path))

    def open(self, name: str):
        """The regular file ``name`` of the held directory, opened for reading in binary mode. Errors name
        its path; anything but a regular file (a directory, a FIFO, a device) is a ValueError. A symbolic
        link is followed (hub and DVC caches store files so); its target is checked like any file."""
        path = self.path / name
        try:
            if self.fd is None:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            else:  # non-blocking: opening a FIFO would wait for a writer
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=self.fd)
        except OSError as err:
            raise OSError(err.errno, f"{path}: {err.strerror}") from None
        try:
            if not S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{path}: not a regular file (a saved index holds only regular files)")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def replaced(self) -> bool:
        """The path no longer names the held directory (a save put another in its place, or is doing so)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (now.st_dev, now.st_ino) != (self.identity.st_dev, self.identity.st_ino)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


#: how long a load waits for a save that has moved the old index aside to put the new one in place
_SWAP_WAIT = 2.0
#: loads started again because a save replaced the directory while it was read
_LOAD_ATTEMPTS = 5


def _hold(directory: Path) -> _Held:
    """Open ``directory``, waiting out a save that is between its two renames; a missing directory names
    the copy an interrupted save left (the newest). A symbolic link is followed: the copies lie beside
    the directory it names."""
    deadline = time.monotonic() + _SWAP_WAIT
    real = Path(os.path.realpath(directory))
    while True:
        try:
            return _Held(directory)
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            raise FileNotFoundError(f"index: {directory} is not a directory") from None
        left = _newest(real.parent.glob(f".{glob.escape(real.name)}.old-*"))
        if time.monotonic() > deadline or (left is None and not real.exists()):
            hint = f"; an interrupted save left the previous index at {left} (rename it back)" if left else ""
            raise FileNotFoundError(f"index: no index directory {directory}{hint}")
        if not real.exists():  # a save between its renames: wait for it
            time.sleep(0.02)


def _newest(paths) -> Path | None:
    """The most recently modified of ``paths`` that still exist, or None."""
    times = {}
    for path in paths:
        try:
            times[path] = path.stat().st_mtime
        except FileNotFoundError:
            pass
    return max(times, key=times.get) if times else None


def _file_entry(path: Path) -> dict:
    """The manifest's record of a written file: its size and sha256."""
    with open(path, "rb") as f:
        return {"size": os.fstat(f.fileno()).st_size, "sha256": _sha256(f)}


def _manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), the checksum field excluded."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _parse_ids(ids, n: int | None = None, name: str = "ids") -> tuple[np.ndarray, bool]:
    """``(array, is_string)``: int64 ids (non-negative) or a numpy str array, validated.

    Accepts an integer torch tensor or numpy array, a list/tuple of ints, or a list/tuple/array of
    strings; ``n`` is the expected count (None: any).
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    elif isinstance(ids, np.ndarray) and ids.dtype == object and ids.ndim == 1:  # e.g. a pandas column
        ids = ids.tolist()
    if isinstance(ids, (list, tuple)):
        if len(ids) and all(isinstance(i, str) for i in ids):
            if any("\0" in i for i in ids):  # numpy's str arrays drop trailing NULs: "a\0" would become "a"
                raise ValueError(f"{name}: expected strings without NUL characters, got "
                                 f"{[i for i in ids if chr(0) in i][:3]!r}")
            ids = np.array(ids, dtype=str)
        elif any(isinstance(i, str) for i in ids):
            raise TypeError(f"{name}: expected all strings or all integers, got a mix")
        else:
            array = np.asarray(ids) if len(ids) else np.empty(0, dtype=np.int64)
            if array.dtype.kind not in "iu":  # bools, floats, or ints beyond int64 (which numpy holds as objects)
                wrong = [i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
                if wrong:
                    raise TypeError(f"{name}: expected all strings or all integers, got {type(wrong[0]).__name__} "
                                    f"{wrong[0]!r}")
                raise ValueError(f"{name}: expected ids that fit in int64, got "
                                 f"{[int(i) for i in ids if not -2**63 <= int(i) < 2**63][:5]}")
            ids = array
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"{name}: expected int64 ids (tensor, array or list) or a list of strings, "
                        f"got {type(ids).__name__}")
    if ids.ndim != 1 or (n is not None and ids.shape[0] != n):
        expected = f"({n},) to match the vectors" if n is not None else "(N,)"
        raise ValueError(f"{name}: expected shape {expected}, got {ids.shape}")
    if ids.dtype.kind == "U":
        return ids, True
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer or string ids, got dtype {ids.dtype}")
    if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: expected ids that fit in int64, got {ids.max()}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name}: expected non-negative ids (-1 marks empty result slots), "
                         f"got {ids[ids < 0][:5].tolist()}")
    return ids, False


class KeyIndex:
    """Positions of distinct keys (int64 labels or string ids) found by binary search in a sorted copy.

    Built once (a sort), then kept in order as keys are appended (a merge: copying, no new sort), so
    that adding a few items to a large index costs O(n) copying rather than an O(n log n) sort or a
    scan per key. A removal moves positions, so the owner builds a new one after it."""

    def __init__(self, keys: np.ndarray, name: str):
        order = np.argsort(keys, kind="stable")
        self.sorted, self.positions = keys[order], order
        repeated = self.sorted[1:][self.sorted[1:] == self.sorted[:-1]]
        if repeated.size:
            raise ValueError(f"{name}: expected unique ids, got duplicates: {np.unique(repeated)[:5].tolist()}")

    def _where(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        where = np.searchsorted(self.sorted, keys).clip(max=max(len(self.sorted) - 1, 0))
        found = self.sorted[where] == keys if len(self.sorted) else np.zeros(len(keys), bool)
        return where, found

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Bool mask of the keys present."""
        return self._where(keys)[1]

    def find(self, keys: np.ndarray, name: str) -> np.ndarray:
        """Positions of ``keys`` (ValueError naming the missing ones)."""
        where, found = self._where(keys)
        if not found.all():
            raise ValueError(f"{name}: not in the index: {keys[~found][:5].tolist()}")
        return self.positions[where]

    def append(self, keys: np.ndarray, start: int) -> None:
        """Merge in new keys (absent so far) held at positions ``start, start + 1, ...``."""
        order = np.argsort(keys, kind="stable")
        at = np.searchsorted(self.sorted, keys[order])
        merged = self.sorted.astype(np.result_type(self.sorted, keys))  # longer strings are not cut
        self.sorted = np.insert(merged, at, keys[order])
        self.positions = np.insert(self.positions, at, start + order)


def read_npy(held: _Held, name: str, shape: tuple, dtypes) -> np.ndarray:
    """The ``.npy`` file ``name`` of a held directory, read without pickles and checked against the
    manifest's shape and dtypes."""
    path = held.path / name
    names = "/".join(np.dtype(d).name for d in dtypes)
    with held.open(name) as f:
        try:  # the header first: nothing is allocated for what it claims before it is checked
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            found, _, dtype = header(f)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: cannot read as .npy: {err}") from None
        if found != shape or dtype.name not in names.split("/"):
            raise ValueError(f"{path}: expected shape {shape} and dtype {names} as the manifest says, "
                             f"got {found} {dtype}")
        data = os.fstat(f.fileno()).st_size - f.tell()
        if data != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{path}: {data} bytes of data for shape {shape} of {dtype} (truncated or modified)")
        f.seek(0)
        return np.load(f, allow_pickle=False)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


#: the manifest's "ids" by the index's id type: string, int64, or not fixed yet (only empty adds so far)
_ID_TYPES = {True: "string", False: "int64", None: None}


def _written_by(manifest: dict) -> str:
    """Which deepmetric wrote a manifest, when it is not this one (a newer release may write what this
    one cannot read)."""
    from deepmetric import __version__
    version = manifest.get("deepmetric_version")
    if version in (None, __version__):
        return ""
    return f"; it was written by deepmetric {version}, this is {__version__}"


def _check_manifest_fields(manifest: dict, path: Path) -> None:
    """The fields :meth:`Index.load` reads, of the types :meth:`Index.save` writes, and the id files
    among the checked ones (a manifest edited by hand, with its checksum recomputed)."""
    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    files = manifest.get("files")
    expected = {"backend": str, "distance": str, "options": dict, "files": dict}
    wrong = [key for key, kind in expected.items() if not isinstance(manifest.get(key), kind)]
    wrong += [key for key in ("dimension", "count") if not is_int(manifest.get(key))]
    wrong += [] if manifest.get("ids") in _ID_TYPES.values() else ["ids"]
    if not wrong and not all(isinstance(e, dict) and is_int(e.get("size")) and isinstance(e.get("sha256"), str)
                             for e in files.values()):
        wrong.append("files")
    if wrong:
        raise ValueError(f"{path}: missing or malformed fields {wrong} (the manifest was edited by hand?)")
    if manifest["ids"] is None and manifest["count"]:
        raise ValueError(f"{path}: ids null (no id type) with count {manifest['count']}: only an empty index has "
                         f"no id type")
    needed = ["ids.npy"] + (["ids.json"] if manifest["ids"] == "string" else [])
    if any(name not in files for name in needed):
        raise ValueError(f"{path}: expected {needed} among the checked files, got {sorted(files)}")


def read_manifest(directory: str | os.PathLike) -> dict:
    """The verified manifest of a saved index: every listed file present, of the recorded size and
    sha256; the manifest's own checksum matches. Errors name the offending file."""
    held = _hold(Path(directory))
    try:
        return _verified_manifest(held)
    finally:
        held.close()


def _json(text: bytes):
    """Parsed UTF-8 JSON; any failure (also nesting too deep for the parser) is a ValueError."""
    try:
        return json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"not valid JSON: {type(err).__name__}: {str(err)[:200]}") from None


def _verified_manifest(held: _Held) -> dict:
    """:func:`read_manifest` of a held directory."""
    path = held.path / MANIFEST
    try:
        with held.open(MANIFEST) as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing manifest (not a saved deepmetric index?)") from None
    try:
        manifest = _json(text)
    except ValueError as err:
        raise ValueError(f"{path}: corrupt manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: corrupt manifest (expected a JSON object)")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:  # before the
        # checksum, which a later format may compute otherwise
        raise ValueError(f"{path}: expected format {FORMAT} version {FORMAT_VERSION}, got "
                         f"{manifest.get('format')} version {manifest.get('format_version')}"
                         f"{_written_by(manifest)}")
    if manifest.get("checksum") != _manifest_checksum(manifest):
        raise ValueError(f"{path}: checksum mismatch (the manifest is corrupted or was modified)")
    _check_manifest_fields(manifest, path)
    for name, entry in manifest["files"].items():
        file = held.path / name
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{path}: bad file name {name!r} (expected a plain file name)")
        try:
            f = held.open(name)
        except FileNotFoundError:
            raise FileNotFoundError(f"{file}: missing index file (listed in {MANIFEST})") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size != entry["size"]:
                raise ValueError(f"{file}: size {size} bytes, the manifest says {entry['size']} "
                                 f"(truncated or modified file)")
            if _sha256(f) != entry["sha256"]:
                raise ValueError(f"{file}: checksum mismatch (the file is corrupted or was modified after saving)")
    return manifest


def _check_replaceable(target: Path) -> None:
    """Refuse to replace anything but a missing path, an empty directory or a saved index."""
    if target.is_symlink():  # replacing it would turn the link into a directory and strand its target
        raise ValueError(f"directory: {target} is a symbolic link; give the directory it points to "
                         f"({target.resolve()}) or a new path")
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"directory: {target} exists and is not a directory")
    present = {path.name for path in target.iterdir()}
    if not present:
        return
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        listed = {MANIFEST, *manifest["files"]} if manifest.get("format") == FORMAT else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        listed = None
    if listed is None:
        raise ValueError(f"directory: {target} exists and is not a saved index (no readable deepmetric "
                         f"{MANIFEST}); refusing to replace it")
    if present - listed:
        raise ValueError(f"directory: {target} holds files its {MANIFEST} does not list "
                         f"({', '.join(sorted(present - listed)[:5])}); refusing to replace it and lose them")


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is kept aside until the new one is in place."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


class Index:
    """Base of every backend: ids, validation, ``search``/``remove`` plumbing and save/load.

    A backend sets ``backend`` (its registry name) and ``options`` (the keyword arguments that
    rebuild it, stored in the manifest) and implements ``_prepare`` (validate and convert input,
    return it with its dimension), ``_add``, ``_search``, ``_remove``, ``_write`` and ``_read``.

    Threads: ``search`` (and the binary index's ``radius_search``) may run from many threads at once.
    ``add`` and ``remove`` must not overlap a search or each other, as with faiss' own indexes: guard
    them with a lock of your own, or build the new index beside the one being searched and swap.
    """

    backend = ""
    _file = ""  # the backend's own file in a saved index

    def __init__(self, distance: str):
        self.distance = distance
        self.options: dict = {}
        self._dim: int | None = None
        self._labels = np.empty(0, dtype=np.int64)
        self._names: np.ndarray | None = None  # string ids aligned with _labels
        self._string_ids: bool | None = None  # fixed by the first add of items (or of an empty str array)
        self._next_id = 0  # one past the largest label ever held: the next default id
        self._label_index: KeyIndex | None = None  # built when first needed, dropped by a removal
        self._name_index: KeyIndex | None = None

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}(distance={self.distance!r}{options}; n={len(self)}, dim={self.dim})"

    @property
    def dim(self) -> int | None:
        """Dimension of the vectors (bits for binary codes); None until the first add."""
        return self._dim

    def _labels_keys(self) -> KeyIndex:
        """The :class:`KeyIndex` of the int64 labels (positions in insertion order)."""
        if self._label_index is None:
            self._label_index = KeyIndex(self._labels, "ids")
        return self._label_index

    def _names_keys(self) -> KeyIndex:
        """The :class:`KeyIndex` of the string ids."""
        if self._name_index is None:
            self._name_index = KeyIndex(self._names if self._names is not None else np.empty(0, dtype=str), "ids")
        return self._name_index

    def _check_dim(self, d: int, name: str) -> None:
        if self._dim is not None and d != self._dim:
            raise ValueError(f"{name}: expected dimension {self._dim} like the index, got {d}")

    # ---------------------------------------------------------------------------------- ids

    def _new_labels(self, ids, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """int64 labels for ``n`` new items and their string ids (None for int ids), validated."""
        if ids is None:
            if self._string_ids and n:
                raise ValueError("ids: this index has string ids; pass one string id per vector")
            return self._default_labels(n), None
        ids, is_string = _parse_ids(ids, n)
        if n == 0:  # nothing added: an empty array of strings still makes a new index a string index
            return np.empty(0, dtype=np.int64), (np.empty(0, dtype=str) if is_string else None)
        if self._string_ids is not None and is_string != self._string_ids:
            kinds = ("int64", "string") if self._string_ids else ("string", "int64")
            raise TypeError(f"ids: this index has {kinds[1]} ids, got {kinds[0]} ids")
        unique, counts = np.unique(ids, return_counts=True)
        if unique.shape[0] != n:
            raise ValueError(f"ids: expected unique ids, got duplicates: {unique[counts > 1][:5].tolist()}")
        clash = (self._names_keys() if is_string else self._labels_keys()).contains(ids)
        if clash.any():
            raise ValueError(f"ids: already in the index: {ids[clash][:5].tolist()}")
        if not is_string:
            return ids, None
        return self._default_labels(n), ids

    def _default_labels(self, n: int) -> np.ndarray:
        if self._next_id + n - 1 > np.iinfo(np.int64).max:
            raise ValueError(f"ids: {n} default ids from {self._next_id} would pass the int64 range; pass ids")
        return np.arange(self._next_id, self._next_id + n, dtype=np.int64)

    def names(self, ids) -> list:
        """The user's ids for int64 labels returned by :meth:`search`, as nested lists of the same
        shape: strings for a string-id index, ints otherwise, None for empty slots (``-1``)."""
        labels = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"ids: expected int64 labels as returned by search, got dtype {labels.dtype}")
        out = np.full(labels.shape, None, dtype=object)
        valid = labels >= 0
        values = labels[valid]
        positions = self._labels_keys().find(values, "ids")
        if self._string_ids:
            values = self._names[positions]
        out[valid] = values.tolist()
        return out.tolist()

    # ------------------------------------------------------------------------------ protocol

    def add(self, vectors, ids=None) -> None:
        """Add ``(N, D)`` vectors with unique ids (int64 or strings; default consecutive int64
        from one past the largest id ever held). The first add fixes the dimension and the id type."""
        vectors, d = self._prepare(vectors, "vectors")
        if d == 0:
            raise ValueError(f"vectors: expected at least one dimension, got shape {tuple(vectors.shape)}")
        labels, names = self._new_labels(ids, int(vectors.shape[0]))
        self._add(vectors, labels)
        self._dim = d
        start = len(self)
        self._labels = np.concatenate([self._labels, labels])
        if self._label_index is not None:
            self._label_index.append(labels, start)
        if names is not None and self._name_index is not None:
            self._name_index.append(names, start)
        if labels.size:
            self._next_id = max(self._next_id, int(labels.max()) + 1)
        if self._string_ids is None and (labels.size or names is not None):  # fixed by what is added
            self._string_ids = names is not None
        if names is not None and self._string_ids:
            self._names = names if self._names is None else np.concatenate([self._names, names])

    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distances, ids)``, both ``(Q, k)``: float32 distances in ascending order and int64 ids
        (labels for string ids; see :meth:`names`). Empty slots hold id -1 and distance +inf."""
        k = check_int(k, "k", 1)
        if self._dim is None:
            raise ValueError("search: the index has no vectors and no dimension yet; add vectors first")
        queries, _ = self._prepare(queries, "queries")
        if len(self):
            distances, ids = self._search(queries, min(k, len(self)))  # no backend searches beyond its items
        else:  # emptied by removals, or by adds of nothing: every slot is empty
            distances, ids = torch.empty((queries.shape[0], 0)), torch.empty((queries.shape[0], 0), dtype=torch.long)
        if k > len(self):
            shape = (distances.shape[0], k - len(self))
            distances = torch.cat([distances, distances.new_full(shape, math.inf)], dim=1)
            ids = torch.cat([ids, ids.new_full(shape, -1)], dim=1)
        return distances, ids

    def remove(self, ids) -> int:
        """Remove the items with these ids (all must be in the index); returns how many."""
        ids, is_string = _parse_ids(ids)
        if len(ids) == 0:
            return 0
        if self._string_ids is not None and is_string != self._string_ids:
            raise TypeError(f"ids: this index has {'string' if self._string_ids else 'int64'} ids")
        positions = (self._names_keys() if is_string else self._labels_keys()).find(np.unique(ids), "ids")
        keep = np.ones(len(self), dtype=bool)
        keep[positions] = False
        self._remove(self._labels[positions], positions, keep)
        self._labels = self._labels[keep]
        if self._names is not None:
            self._names = self._names[keep]
        self._label_index = self._name_index = None  # positions have moved
        return int(positions.shape[0])

    # ---------------------------------------------------------------------------- save/load

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index to ``directory`` atomically (see the module docstring); returns the path."""
        from deepmetric import __version__

        if self._dim is None:
            raise ValueError("save: the index has no dimension yet; add vectors first")
        target = Path(os.path.abspath(directory))
        cwd, resolved = Path.cwd().resolve(), target.resolve()
        if resolved == cwd or resolved in cwd.parents:  # the swap would leave this process in a deleted directory
            raise ValueError(f"save: {directory!r} is the current directory or holds it; an index directory is "
                             "replaced as a whole, so save it to a path of its own (e.g. 'index')")
        _check_replaceable(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(target.parent / f".{target.name}.lock"):  # another save to this path: wait for it
            _check_replaceable(target)
            name = glob.escape(target.name)
            for stale in target.parent.glob(f".{name}.tmp-*"):  # of saves that were killed
                shutil.rmtree(stale, ignore_errors=True)
            self._save_into(target, __version__)
            for stale in target.parent.glob(f".{name}.old-*"):  # indexes a killed save had moved aside
                shutil.rmtree(stale, ignore_errors=True)
        return target

    def _save_into(self, target: Path, version: str) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        usual_mode(tmp, directory=True)
        try:
            files = list(self._write(tmp))
            _write_npy(tmp / "ids.npy", self._labels)
            files.append("ids.npy")
            if self._string_ids:
                (tmp / "ids.json").write_text(json.dumps(self._names.tolist()) + "\n")
                files.append("ids.json")
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "backend": self.backend,
                "options": self.options, "distance": self.distance, "dimension": self._dim,
                "count": len(self), "ids": _ID_TYPES[self._string_ids], "next_id": self._next_id,
                "deepmetric_version": version,
                "files": {name: _file_entry(tmp / name) for name in files},
            }
            manifest["checksum"] = _manifest_checksum(manifest)
            # no trailing newline: cutting any byte off the end breaks the JSON
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            for name in [*files, MANIFEST, "."]:  # on the disk before the old index is replaced
                sync(tmp / name)
            _move_into_place(tmp, target)
        except OSError as err:  # the same OSError subclass for the same errno (e.g. PermissionError)
            shutil.rmtree(tmp, ignore_errors=True)
            message = f"{target}: cannot save the index ({err.strerror or err}); the index there, if any, is unchanged"
            raise (OSError(err.errno, message) if err.errno is not None else OSError(message)) from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        sync(target.parent)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Index":
        """Read an index saved by :meth:`save`, verifying the manifest first. ``Index.load`` (and
        ``deepmetric.index.load``) builds whichever backend the manifest names.

        Every file is read from the one directory opened first and checked against its manifest. A
        save that replaces the directory meanwhile (a rebuild beside a running service) makes the load
        start again on the new one; errors of a directory that stayed in place are raised."""
        directory = Path(directory)
        for attempt in range(_LOAD_ATTEMPTS):
            held = _hold(directory)
            try:
                return cls._load_held(held)
            except (ValueError, OSError):
                if attempt + 1 == _LOAD_ATTEMPTS or not held.replaced():
                    raise
            finally:
                held.close()

    @classmethod
    def _load_held(cls, held: _Held) -> "Index":
        directory = held.path
        manifest = _verified_manifest(held)
        try:
            klass = INDEXES.get(manifest["backend"]) if cls is Index else cls
        except KeyError as err:
            raise ValueError(f"{directory / MANIFEST}: {err.args[0]}{_written_by(manifest)}") from None
        if klass.backend != manifest["backend"]:
            raise ValueError(f"{directory}: holds a {manifest['backend']!r} index, not {cls.backend!r}; "
                             f"use deepmetric.index.load")
        if klass._file not in manifest["files"]:
            raise ValueError(f"{directory / MANIFEST}: expected {klass._file!r} among the checked files of a "
                             f"{klass.backend!r} index, got {sorted(manifest['files'])}")
        try:
            index = klass(distance=manifest["distance"], **manifest["options"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{directory / MANIFEST}: cannot build the {klass.backend!r} index it describes "
                             f"({err}){_written_by(manifest)}") from None
        count = manifest["count"]
        index._dim = manifest["dimension"]
        index._read(held, manifest)
        index._labels = read_npy(held, "ids.npy", (count,), [np.int64])
        try:
            if count and index._labels.min() < 0:
                raise ValueError(f"expected non-negative ids, got {index._labels[index._labels < 0][:5].tolist()}")
            index._labels_keys()
        except ValueError as err:
            raise ValueError(f"{directory / 'ids.npy'}: {err}") from None
        index._string_ids = {kind: string for string, kind in _ID_TYPES.items()}[manifest["ids"]]
        largest = int(index._labels.max()) if count else -1
        index._next_id = manifest.get("next_id", largest + 1)  # saved before next_id: one past the largest
        if isinstance(index._next_id, bool) or not isinstance(index._next_id, int) or index._next_id <= largest:
            raise ValueError(f"{directory / MANIFEST}: next_id {index._next_id!r} must be an integer above the "
                             f"largest id {largest}")
        if index._string_ids:
            with held.open("ids.json") as f:
                try:
                    names = _json(f.read())
                except ValueError as err:
                    raise ValueError(f"{directory / 'ids.json'}: {err}") from None
            if (not isinstance(names, list) or len(names) != count
                    or not all(isinstance(s, str) and "\0" not in s for s in names)):
                raise ValueError(f"{directory / 'ids.json'}: expected a list of {count} strings without NUL "
                                 f"characters")
            index._names = np.array(names, dtype=str)
            try:
                index._names_keys()
            except ValueError as err:
                raise ValueError(f"{directory / 'ids.json'}: {err}") from None
        return index

    # ------------------------------------------------------------------------ backend hooks

    def _prepare(self, vectors, name: str) -> tuple[object, int]:
        """``(converted, dimension)``: validated input in the backend's form, dimension checked."""
        raise NotImplementedError

    def _add(self, vectors, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _remove(self, labels: np.ndarray, positions: np.ndarray, keep: np.ndarray) -> None:
        raise NotImplementedError(f"remove: the {self.backend} index cannot remove vectors")

    def _write(self, directory: Path) -> list[str]:
        raise NotImplementedError

    def _read(self, directory: Path, manifest: dict) -> None:
        raise NotImplementedError


def load(directory: str | os.PathLike) -> Index:
    """Load a saved index of any backend (dispatching on its manifest); see :meth:`Index.load`."""
    return Index.load(directory)
