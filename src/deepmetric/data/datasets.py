"""In-memory data sets, the data root, built-in real sets, feature files and class splits.

A data SPEC (DESIGN.md) is a built-in name (``digits``, ``omniglot``, ``mnist-test``,
``notting-hill``) or ``npz:PATH`` / ``csv:PATH`` for a feature file. :func:`load` turns a SPEC into
the named parts the source ships (``{"background": ..., "evaluation": ...}`` for Omniglot,
``{"test": ...}`` for mnist-test, ``{"all": ...}`` for the others); :func:`load_split` turns it into
a ``(train, test)`` pair:

* ``split="zero-shot"``: train on the first ``ceil(C/2)`` of the sorted class ids, test on the rest
  (a ``seed`` shuffles the class order first), unless the set defines its own zero-shot split
  (Omniglot: background alphabets train, evaluation alphabets test; ``seed`` is then not used);
* ``split="all"``: every item in both parts, for evaluate-only use (query-in-gallery retrieval on a
  set the model never trained on, or embedding a whole file).

Validation classes for checkpoint selection come from :func:`holdout_classes`, applied to the train
part, so they are never test classes.

>>> train, test = load_split("digits", split="zero-shot")
>>> sorted(train.classes.tolist()), sorted(test.classes.tolist())
([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
"""
from __future__ import annotations

import csv
import gzip
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from deepmetric._checks import as_tensor, check_int, check_labels
from deepmetric._io import atomic_path, sha256_stream
from deepmetric.distances import check_distance
from deepmetric.labels import item_classes
from deepmetric.registry import Registry

__all__ = [
    "ArrayDataset", "DATASETS", "BuiltinDataset", "data_root", "load", "load_dataset", "load_split",
    "split_classes", "holdout_classes", "concat", "load_npz", "load_csv", "save_npz", "read_idx",
    "sha256_file", "SPLITS",
]

DATASETS = Registry("dataset")
SPLITS = ("zero-shot", "all")
ENV_VAR = "DEEPMETRIC_DATA"


# --------------------------------------------------------------------------------------------------
# the in-memory data set


def _int_vector(value, n: int, name: str) -> torch.Tensor | None:
    if value is None:
        return None
    value = as_tensor(value, name)
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer values, got {value.dtype}")
    if value.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) to match x, got {tuple(value.shape)}")
    if value.dtype == torch.uint64 and n and int(value.numpy().max()) > torch.iinfo(torch.int64).max:
        raise ValueError(f"{name}: expected values that fit in int64, got {int(value.numpy().max())}")
    return value.long()


def _check_ids(ids: torch.Tensor | None) -> None:
    """Item ids as an index takes them: unique and non-negative (an index marks empty slots with -1)."""
    if ids is None or not len(ids):
        return
    if bool((ids < 0).any()):
        raise ValueError(f"ids: expected non-negative ids (an index marks empty result slots with -1), got "
                         f"{ids[ids < 0][:5].tolist()}")
    values, counts = torch.unique(ids, return_counts=True)
    if bool((counts > 1).any()):
        raise ValueError(f"ids: expected unique ids, got duplicates: {values[counts > 1][:5].tolist()}")


@dataclass(eq=False, repr=False)
class ArrayDataset:
    """Items held in memory: inputs ``x`` and labels ``y`` (plus optional groups, ids, super-class).

    * ``x``: ``(N, ...)`` float32 (other floating and bool inputs are converted; integer inputs are
      an error, so that unscaled uint8 images are not trained on by accident);
    * ``y``: ``(N,)`` int64 flat labels, ``(N, L)`` int64 hierarchy (column 0 the coarsest) or
      ``(N, C)`` bool multi-label; other integer dtypes become int64, float labels are a TypeError;
    * ``groups``, ``ids``: optional ``(N,)`` int64 (items of one group are excluded from each other's
      results when asked; ids name the items in search results, so they are unique and non-negative, as
      an index takes them);
    * ``coarse``: optional ``(N,)`` int64 super-class (e.g. the Omniglot alphabet);
    * ``files``: ``{path: sha256}`` of the files the items were read from, for run records;
    * ``meta``: free-form facts about the source (class names, image size, ...).

    >>> ds = ArrayDataset(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), name="toy")
    >>> len(ds), ds.classes.tolist(), len(ds.subset(torch.tensor([0, 2])))
    (4, [0, 1], 2)
    """

    x: torch.Tensor
    y: torch.Tensor
    groups: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    name: str = ""
    coarse: torch.Tensor | None = None
    files: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        x = as_tensor(self.x, "x")
        if x.dim() < 2:
            raise ValueError(f"x: expected shape (N, ...) with at least 2 dimensions, got {tuple(x.shape)}")
        if x.dtype == torch.bool:
            x = x.float()
        elif not x.is_floating_point():
            raise TypeError(f"x: expected floating inputs (scale integer data first, e.g. images / 255), "
                            f"got {x.dtype}")
        self.x = x.float()
        n = x.shape[0]
        self.y = check_labels(as_tensor(self.y, "y"), n, "y", "x")
        self.groups = _int_vector(self.groups, n, "groups")
        self.ids = _int_vector(self.ids, n, "ids")
        _check_ids(self.ids)
        self.coarse = _int_vector(self.coarse, n, "coarse")
        self.files = dict(self.files)
        self.meta = dict(self.meta)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __repr__(self) -> str:
        return (f"ArrayDataset(name={self.name!r}, n={len(self)}, x={tuple(self.x.shape)}, "
                f"y={tuple(self.y.shape)} {self.y.dtype}, classes={self.num_classes})")

    @property
    def classes(self) -> torch.Tensor:
        """Sorted distinct classes: ``(C,)`` ids for flat labels, ``(C, L)`` rows (finest classes, in
        lexicographic order) for a hierarchy, the ``(C,)`` column indices in use for multi-label."""
        if self.y.dtype == torch.bool:
            return self.y.any(dim=0).nonzero().flatten()
        if self.y.dim() == 1:
            return torch.unique(self.y)
        return torch.unique(self.y, dim=0)

    @property
    def num_classes(self) -> int:
        return int(self.classes.shape[0])

    def subset(self, index) -> "ArrayDataset":
        """The items at ``index`` (an integer index tensor/array/list or an ``(N,)`` bool mask)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(f"index: a bool mask must have shape ({len(self)},), got {tuple(index.shape)}")
            index = index.nonzero().flatten()
        elif index.is_floating_point():
            raise TypeError(f"index: expected integer indices or a bool mask, got {index.dtype}")
        index = index.long().flatten()

        def take(t):
            return None if t is None else t[index]

        return ArrayDataset(self.x[index], self.y[index], take(self.groups), take(self.ids), self.name,
                            take(self.coarse), dict(self.files), dict(self.meta))


def concat(parts: list[ArrayDataset], name: str | None = None) -> ArrayDataset:
    """One data set holding all items of ``parts`` in order (optional fields kept when all have them)."""
    if not parts:
        raise ValueError("parts: expected at least one ArrayDataset, got none")
    if len(parts) == 1:
        return parts[0]

    def cat(attr):
        values = [getattr(p, attr) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    files: dict[str, str] = {}
    for p in parts:
        files.update(p.files)
    return ArrayDataset(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), cat("groups"),
                        cat("ids"), parts[0].name if name is None else name, cat("coarse"), files,
                        dict(parts[0].meta))


# --------------------------------------------------------------------------------------------------
# data root and checksums


_PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # src/deepmetric/data/datasets.py -> project root


def _project_data_dirs():
    """Candidates for ``../shared/data`` next to a project root: from the working directory upwards,
    then from the installed package's source checkout."""
    for d in (Path.cwd(), *Path.cwd().parents):
        yield d
    yield _PACKAGE_ROOT


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the real data sets (DESIGN.md, "Data root").

    In order: ``data_dir`` (the ``--data-dir`` option / ``data_dir`` config key), else
    ``$DEEPMETRIC_DATA``, else ``../shared/data`` next to the project root (a directory holding
    ``pyproject.toml``, looked for from the current directory upwards, then at the installed
    package's source checkout), else a FileNotFoundError naming all three.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data_dir: the data directory {path.resolve()} does not exist")
        return path.resolve()
    env = os.environ.get(ENV_VAR, "")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${ENV_VAR}: the data directory {path.resolve()} does not exist")
        return path.resolve()
    for root in _project_data_dirs():
        candidate = root / ".." / "shared" / "data"
        if (root / "pyproject.toml").is_file() and candidate.is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        "no data directory: pass --data-dir DIR (or data_dir in the config), or set "
        f"${ENV_VAR}, or run from a project checkout with ../shared/data next to it "
        f"(looked upwards from {Path.cwd()}"
        f"{f' and at the checkout {_PACKAGE_ROOT}' if (_PACKAGE_ROOT / 'pyproject.toml').is_file() else ''})")


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, cached in-process per (path, mtime, size)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _SHA_CACHE:
        with open(path, "rb") as f:
            _SHA_CACHE[key] = sha256_stream(f)
    return _SHA_CACHE[key]


def _require(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a FileNotFoundError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: missing data file {path.resolve()}")
    return path


def _require_builtin(root: Path, rel: str, dataset: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: missing data file {path} (data root {root}); point deepmetric at the "
            f"directory holding {Path(rel).parts[0]}/ with --data-dir DIR or ${ENV_VAR}")
    return path


# --------------------------------------------------------------------------------------------------
# file formats


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format, optionally gzipped): a big-endian header
    ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the values.

    ``expected_magic`` is the header read as one big-endian int (2051 for MNIST images, 2049 for
    labels). A wrong magic number, an unknown type or a size that does not match the data raises
    ValueError naming the file.
    """
    path = _require(Path(path), "read_idx")
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # zlib: a corrupt deflate stream inside the gzip
        raise ValueError(f"{path}: cannot read as {'gzip ' if path.suffix == '.gz' else ''}IDX: {err}") from None
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: bad IDX magic number: expected {expected_magic}, got {magic}")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: bad IDX magic number {magic} (expected 0x00 0x00 <type> <ndim>)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header announces {ndim} dimensions but the file has {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX sizes {shape} need {expected} bytes, the file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _from_arrays(path: Path, x, y, ids=None, groups=None, name: str = "") -> ArrayDataset:
    """Build a data set from feature-file arrays; errors name the file."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise TypeError(f"{path}: X: expected numeric features, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{path}: X: expected shape (N, D), got {x.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, by row
        x = x.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:  # found here, not as "embeddings" of a derived split after training
        raise ValueError(f"{path}: X: {bad.size} row(s) hold NaN or infinite values, or values beyond float32 "
                         f"(first bad rows of the file: {bad[:5].tolist()}); features must be finite")
    try:
        return ArrayDataset(x, np.asarray(y), groups, ids, name,
                            files={str(path.resolve()): sha256_file(path)})
    except (TypeError, ValueError) as err:
        raise type(err)(f"{path}: {err}") from None


def read_npz(path: str | os.PathLike, required: tuple[str, ...],
             optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The ``required`` arrays of an npz archive and those of ``optional`` it holds, never unpickling
    and never decompressing the others (an archive can hold a small file that inflates to gigabytes).
    A truncated or corrupt file, a single .npy array, or a missing required array is a ValueError
    naming the file."""
    try:
        with open(path, "rb") as handle:  # closed also when numpy fails on a truncated file (it leaked it)
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an archive of named arrays")
            with archive as f:
                names = f.files
                arrays = {k: f[k] for k in (*required, *optional) if k in names}  # read here: a corrupt member fails
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: expected an .npz archive (numpy.savez) without pickled objects; cannot read "
                         f"it (truncated or corrupt?): {err}") from None
    if any(k not in arrays for k in required):
        also = f" (optional {', '.join(optional)})" if optional else ""
        raise ValueError(f"{path}: expected arrays {', '.join(required)}{also}, got {sorted(names)}")
    return arrays


def load_npz(path: str | os.PathLike) -> ArrayDataset:
    """A feature file: ``X`` (N, D) numeric (stored as float32), ``y`` (N,) or (N, L) integer or
    (N, C) bool labels, optional ``ids`` (unique, non-negative) and ``groups`` (N,) integer. Never unpickles."""
    path = _require(Path(path), "npz")
    arrays = read_npz(path, ("X", "y"), ("ids", "groups"))
    return _from_arrays(path, arrays["X"], arrays["y"], arrays.get("ids"), arrays.get("groups"),
                        name=f"npz:{path}")


def save_npz(path: str | os.PathLike, x, y, ids=None, groups=None, distance: str | None = None) -> Path:
    """Write an embeddings/feature file (``X`` float32, ``y``, optional ``ids``, ``groups`` and the
    ``distance`` the embeddings were trained for) through a temporary name moved into place, so a
    crash never leaves a half-written file."""
    path = Path(path)
    arrays = {"X": np.asarray(x, dtype=np.float32), "y": np.asarray(y)}
    for key, value in (("ids", ids), ("groups", groups)):
        if value is not None:
            arrays[key] = np.asarray(value, dtype=np.int64)
    if distance is not None:
        arrays["distance"] = np.asarray(check_distance(distance))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def _parse_column(path: Path, column: str, values: np.ndarray, dtype) -> np.ndarray:
    try:
        return values.astype(dtype)
    except ValueError:
        kind = "integers" if dtype is np.int64 else "numbers"
        bad = next(i for i, v in enumerate(values) if not _parses(v, dtype))
        raise ValueError(f"{path}: column {column!r} must hold {kind}, got {values[bad]!r} "
                         f"on line {bad + 2}") from None


def _parses(value: str, dtype) -> bool:
    try:
        np.array([value]).astype(dtype)
        return True
    except ValueError:
        return False


def load_csv(path: str | os.PathLike) -> ArrayDataset:
    """A feature file as CSV: a header with ``label`` (or ``label_0`` .. ``label_{L-1}``, column 0 the
    coarsest), optional ``id`` and ``group``; every other column is a feature."""
    path = _require(Path(path), "csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty file, expected a header row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
    if not body:
        raise ValueError(f"{path}: no data rows after the header")
    cells = np.array(body, dtype=str)
    col = {h: i for i, h in enumerate(header)}
    if len(col) != len(header):
        raise ValueError(f"{path}: duplicate column names in the header {header}")
    if "label" in col:
        label_cols = ["label"]
    else:
        label_cols = []
        while f"label_{len(label_cols)}" in col:
            label_cols.append(f"label_{len(label_cols)}")
        if not label_cols:
            raise ValueError(f"{path}: expected a 'label' column (or label_0..label_{{L-1}}), "
                             f"got columns {header}")
    stray = [h for h in header if h.startswith("label_") and h not in label_cols]
    if stray:
        raise ValueError(f"{path}: label columns must be label_0..label_{{L-1}} without gaps, "
                         f"found also {stray}")
    special = set(label_cols) | {"id", "group"}
    features = [h for h in header if h not in special]
    if not features:
        raise ValueError(f"{path}: no feature columns besides {sorted(special & set(header))}")
    y = np.stack([_parse_column(path, c, cells[:, col[c]], np.int64) for c in label_cols], axis=1)
    y = y[:, 0] if label_cols == ["label"] else y
    x = np.stack([_parse_column(path, c, cells[:, col[c]], np.float64) for c in features], axis=1)
    ids = _parse_column(path, "id", cells[:, col["id"]], np.int64) if "id" in col else None
    groups = _parse_column(path, "group", cells[:, col["group"]], np.int64) if "group" in col else None
    ds = _from_arrays(path, x, y, ids, groups, name=f"csv:{path}")
    ds.meta["features"] = features
    return ds


# --------------------------------------------------------------------------------------------------
# built-in sets


@dataclass(frozen=True)
class BuiltinDataset:
    """A registered real data set: ``loader(root, **options) -> {part: ArrayDataset}``.

    ``splits`` maps a split name to the ``(train part, test part)`` the set defines itself (Omniglot's
    background / evaluation); ``needs_root`` is False for sets shipped inside a Python package.
    """

    name: str
    loader: Callable[..., dict[str, ArrayDataset]]
    description: str
    splits: dict[str, tuple[str, str]] = field(default_factory=dict)
    needs_root: bool = True

    def __call__(self, data_dir: str | os.PathLike | None = None, **options) -> dict[str, ArrayDataset]:
        root = data_root(data_dir) if self.needs_root else None
        return self.loader(root, **options)


def _builtin(name: str, description: str, splits=None, needs_root: bool = True):
    def wrap(fn):
        DATASETS.register(name)(BuiltinDataset(name, fn, description, dict(splits or {}), needs_root))
        return fn
    return wrap


@_builtin("digits", "scikit-learn's 8x8 handwritten digits: 1,797 items, 64 features in [0, 1], 10 classes",
          needs_root=False)
def _load_digits(root: None) -> dict[str, ArrayDataset]:
    from sklearn.datasets import load_digits
    import sklearn.datasets

    bunch = load_digits()
    source = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    files = {str(source): sha256_file(source)} if source.is_file() else {}
    ds = ArrayDataset(torch.from_numpy(bunch.data.astype(np.float32) / 16.0),
                      torch.from_numpy(bunch.target.astype(np.int64)), name="digits", files=files)
    return {"all": ds}


def _omniglot_alphabets(root: Path):
    """``(first, last, names)``: 1-based character-id ranges of the 50 alphabets from alphabets.csv."""
    path = _require_builtin(root, "omniglot/alphabets.csv", "omniglot")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        first = np.array([int(r["first_character"]) for r in rows], dtype=np.int64)
        last = np.array([int(r["last_character"]) for r in rows], dtype=np.int64)
        names = [r["alphabet"] for r in rows]
    except (KeyError, ValueError) as err:  # ValueError includes a file that is not UTF-8 text
        raise ValueError(f"{path}: expected columns alphabet, split, first_character, last_character "
                         f"with integer ranges: {err}") from None
    if len(first) == 0 or first[0] != 1 or np.any(first[1:] != last[:-1] + 1) or np.any(last < first):
        raise ValueError(f"{path}: alphabet character ranges must be contiguous from 1")
    return first, last, names, path


def _strokes(background: np.ndarray, size: int | None, chunk: int = 2048) -> torch.Tensor:
    """``(N, H, W)`` bool with True = background -> ``(N, 1, size, size)`` float32 stroke intensity
    (1.0 = ink): area averaging (adaptive average pooling) of the inverted image, in chunks so memory
    stays bounded; ``size=None`` keeps the original resolution."""
    n, h, w = background.shape
    out = torch.empty(n, 1, size or h, size or w)
    for start in range(0, n, chunk):
        block = torch.from_numpy(background[start:start + chunk]).unsqueeze(1)
        if size is None:
            out[start:start + chunk] = (~block).float()
        else:  # mean of (1 - b) = 1 - mean of b
            out[start:start + chunk] = 1.0 - torch.nn.functional.adaptive_avg_pool2d(block.float(), size)
    return out


@_builtin("omniglot",
          "Omniglot (Lake et al.): 32,460 character images, 1,623 characters x 20 drawers, "
          "50 alphabets; zero-shot split = background / evaluation alphabets; options size=28 "
          "(None keeps 105x105), hierarchical=False (True: y = (alphabet, character))",
          splits={"zero-shot": ("background", "evaluation")})
def _load_omniglot(root: Path, size: int | None = 28, hierarchical: bool = False) -> dict[str, ArrayDataset]:
    if size is not None:
        size = check_int(size, "size", 1, why=" (or None for the original 105)")
    first, last, names, alpha_path = _omniglot_alphabets(root)
    alpha_sha = sha256_file(alpha_path)
    parts = {}
    label_offset, char_offset = 0, 1  # character id = label + 1 (background), label + 965 (evaluation)
    for part in ("background", "evaluation"):
        path = _require_builtin(root, f"omniglot/images_{part}.npz", "omniglot")
        arrays = read_npz(path, ("images", "labels"))
        images, labels = arrays["images"], arrays["labels"]
        if images.ndim != 4 or labels.shape != images.shape[:2] or images.dtype != np.bool_:
            raise ValueError(f"{path}: expected images (C, 20, H, W) bool and labels (C, 20), "
                             f"got {images.shape} {images.dtype} and {labels.shape}")
        n_chars = images.shape[0]
        labels = labels.reshape(-1).astype(np.int64)
        if labels.min() < 0 or labels.max() >= n_chars:
            raise ValueError(f"{path}: labels must lie in 0..{n_chars - 1}")
        char_id = labels + char_offset
        alphabet = np.searchsorted(first, char_id, side="right") - 1
        if np.any(alphabet < 0) or np.any(char_id > last[alphabet]):
            raise ValueError(f"{alpha_path}: character ids {char_id.min()}..{char_id.max()} of {path} "
                             f"are not covered by the alphabet ranges")
        x = _strokes(images.reshape(-1, *images.shape[2:]), size)  # True = background in the file
        y = torch.from_numpy(labels + label_offset)
        coarse = torch.from_numpy(alphabet)
        if hierarchical:
            y = torch.stack([coarse, y], dim=1)
        parts[part] = ArrayDataset(
            x, y, name=f"omniglot:{part}", coarse=coarse,
            files={str(path): sha256_file(path), str(alpha_path): alpha_sha},
            meta={"alphabets": names, "image_size": size or images.shape[-1]})
        label_offset += n_chars
        char_offset += n_chars
    return parts


@_builtin("mnist-test", "MNIST test set: 10,000 28x28 digits in [0, 1], 10 classes")
def _load_mnist_test(root: Path) -> dict[str, ArrayDataset]:
    img_path = _require_builtin(root, "mnist-test/t10k-images-idx3-ubyte.gz", "mnist-test")
    lab_path = _require_builtin(root, "mnist-test/t10k-labels-idx1-ubyte.gz", "mnist-test")
    images = read_idx(img_path, expected_magic=2051)
    labels = read_idx(lab_path, expected_magic=2049)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"mnist-test: {img_path} holds {images.shape[0]} images but {lab_path} "
                         f"holds {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"mnist-test: {lab_path} holds labels up to {labels.max()}, expected digits 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    ds = ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)), name="mnist-test",
                      files={str(img_path): sha256_file(img_path), str(lab_path): sha256_file(lab_path)})
    return {"test": ds}


# --------------------------------------------------------------------------------------------------
# SPEC -> data sets and splits


def _file_spec(spec: str) -> tuple[str, str] | None:
    for prefix in ("npz:", "csv:"):
        if spec.startswith(prefix):
            if not spec[len(prefix):]:
                raise ValueError(f"data spec {spec!r}: expected a path after {prefix!r}")
            return prefix[:-1], spec[len(prefix):]
    return None


def load(spec: str, data_dir: str | os.PathLike | None = None, **options) -> dict[str, ArrayDataset]:
    """The named parts of a data SPEC: ``{"background", "evaluation"}`` for Omniglot, ``{"test"}`` for
    mnist-test, ``{"all"}`` for digits and feature files. ``options`` go to a built-in loader
    (e.g. ``size=28`` for Omniglot); ``data_dir`` overrides the data root (see :func:`data_root`).
    A feature-file PATH is relative to the current directory."""
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a data set name or 'npz:PATH' / 'csv:PATH', got {type(spec).__name__}")
    file_spec = _file_spec(spec)
    if file_spec is not None:
        if options:
            raise TypeError(f"data spec {spec!r}: feature files take no options, got {sorted(options)}")
        kind, path = file_spec
        return {"all": (load_npz if kind == "npz" else load_csv)(Path(path).expanduser())}
    if spec not in DATASETS:
        raise KeyError(f"unknown dataset {spec!r}; known datasets: {', '.join(DATASETS.names())}; "
                       f"or a feature file as npz:PATH / csv:PATH")
    return DATASETS.create(spec, data_dir=data_dir, **options)


def load_dataset(spec: str, data_dir: str | os.PathLike | None = None, **options) -> ArrayDataset:
    """Every item of a SPEC as one data set (the parts of :func:`load` joined in order)."""
    parts = load(spec, data_dir, **options)
    return concat(list(parts.values()), name=spec)


def _class_index(y: torch.Tensor, what: str = "split") -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted classes and each item's index into them (hierarchies: the finest level, i.e. rows)."""
    if y.dtype == torch.bool:
        raise ValueError(f"{what}: multi-label (bool) labels have no single class per item; "
                         f"use split='all' or split the items yourself")
    return item_classes(y)


def split_classes(dataset: ArrayDataset, seed: int | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """Zero-shot split by class: the first ``ceil(C/2)`` of the sorted classes train, the rest test.

    With a ``seed`` the class order is shuffled (``torch.randperm`` with that seed) before cutting.
    Hierarchical labels split by their finest classes (rows in lexicographic order, so without a
    seed whole super-classes mostly stay on one side)."""
    classes, inverse = _class_index(dataset.y, "zero-shot split")
    c = classes.shape[0]
    if c < 2:
        raise ValueError(f"zero-shot split: {dataset.name or 'the data set'} has {c} class; needs at least 2")
    order = torch.arange(c)
    if seed is not None:
        order = torch.randperm(c, generator=torch.Generator().manual_seed(int(seed)))
    is_train = torch.zeros(c, dtype=torch.bool)
    is_train[order[: math.ceil(c / 2)]] = True
    mask = is_train[inverse]
    return _renamed(dataset.subset(mask), "train"), _renamed(dataset.subset(~mask), "test")


def _renamed(ds: ArrayDataset, suffix: str) -> ArrayDataset:
    ds.name = f"{ds.name}/{suffix}" if ds.name else suffix
    return ds


def load_split(spec: str, split: str = "zero-shot", data_dir: str | os.PathLike | None = None,
               seed: int | None = None, **options) -> tuple[ArrayDataset, ArrayDataset]:
    """``(train, test)`` for a SPEC.

    * ``"zero-shot"``: the set's own split if it defines one (Omniglot: background / evaluation;
      ``seed`` is not used), else :func:`split_classes` on all items (``seed`` shuffles the class order);
    * ``"all"``: every item in both parts (evaluate-only use: query-in-gallery retrieval or embedding a
      whole set; never train and test on it).
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    parts = load(spec, data_dir, **options)
    builtin = DATASETS.get(spec) if _file_spec(spec) is None else None
    if split == "zero-shot" and builtin is not None and split in builtin.splits:
        train_part, test_part = builtin.splits[split]
        return parts[train_part], parts[test_part]
    everything = concat(list(parts.values()), name=spec)
    if split == "all":
        return everything, everything
    return split_classes(everything, seed)


def holdout_classes(dataset: ArrayDataset, fraction: float = 0.2, *, n: int | None = None,
                    seed: int = 0, level: int | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """Carve validation classes out of a training set for checkpoint selection: ``(train, val)``.

    ``n`` classes (or ``round(fraction * C)``, at least 1) are drawn at random with ``seed``; at least
    one class stays in training. Apply it to the train part of a split, so validation never sees a
    test class. For hierarchical labels, ``level`` holds out whole classes of that level (``0``: whole
    super-classes, e.g. Omniglot alphabets, with all their sub-classes); ``None`` the finest classes."""
    y = dataset.y
    if level is not None:
        if y.dim() != 2 or y.dtype == torch.bool or not 0 <= level < y.shape[1]:
            raise ValueError(f"level: expected a level of hierarchical (N, L) labels, got {level!r} for labels "
                             f"of shape {tuple(y.shape)} {y.dtype}")
        y = y[:, : level + 1]
    classes, inverse = _class_index(y, "holdout_classes")
    c = classes.shape[0]
    if c < 2:
        where = "" if level is None else f" at level {level}"
        raise ValueError(f"dataset: {c} class{'' if c == 1 else 'es'}{where}; holding classes out needs at least 2 "
                         f"(one stays in training)")
    if n is None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
        n = max(1, round(fraction * c))
    n = check_int(n, "n", 1, c - 1, f" (the data set has {c} classes)")
    val_classes = torch.randperm(c, generator=torch.Generator().manual_seed(int(seed)))[:n]
    is_val = torch.zeros(c, dtype=torch.bool)
    is_val[val_classes] = True
    mask = is_val[inverse]
    return _renamed(dataset.subset(~mask), "fit"), _renamed(dataset.subset(mask), "val")
