"""Audio-visual built-in data: Notting-Hill face tracks (video) and audio-visual digits (MNIST + FSDD).

**Notting-Hill face tracks.** ``Notting-Hill.mat`` holds 1,494 face crops (60x60 grey, one column
each, column-major) grouped by actor in contiguous blocks; inside a block the actor's face tracks
are joined end to end. :func:`notting_hill_tracks` cuts each actor block where the Pearson
correlation of consecutive frames falls below a threshold (:func:`deepmetric.data.video.split_shots`)
and drops short runs. Measured on the real file (per actor block, runs of at least 8 frames kept):

=========  ========  ===================
threshold  segments  tracks (>= 8 frames)
=========  ========  ===================
0.3        21        19 (1,492 frames)
0.5        26        22 (1,482 frames)
0.7        49        31 (1,458 frames)
=========  ========  ===================

(the README's counts; cutting the whole sequence instead of each block merges tracks across actor
boundaries at 0.3). :func:`encode_tracks` / :func:`decode_tracks` store the tracks as real video files
(PyAV) with a JSON manifest, and the built-in data set ``notting-hill`` serves frames or clips with
hierarchical labels ``(actor, track)`` and ``groups = track``. The set has no split of its own: use
:func:`track_folds` for k-fold cross-validation over tracks, stratified by actor.

**Audio-visual digits** (AV-MNIST-like, :func:`av_digits`): MNIST test images paired with Free
Spoken Digit recordings of the same digit, as log-mel features padded or cropped to a fixed duration
with a mask; speakers (or recordings) and images are split so that no image and no recording appears
on both sides. The log-mels are cached in an ``.npz`` (default ``$DEEPMETRIC_CACHE`` or
``~/.cache/deepmetric``), never inside the data directory.

>>> tracks = notting_hill_tracks(None, threshold=0.5)            # doctest: +SKIP
>>> len(tracks.tracks), tracks.frames.shape                       # doctest: +SKIP
(22, torch.Size([1482, 60, 60]))
>>> folds = track_folds(tracks.tracks, k=5, seed=0)               # doctest: +SKIP
>>> ds = load_dataset("notting-hill")                             # doctest: +SKIP
>>> train = ds.subset(~torch.isin(ds.groups, folds[0][1]))        # doctest: +SKIP
>>> sides = av_digits(None, n_pairs_per_digit=50)                 # doctest: +SKIP
>>> sides["train"]["image"].shape, sides["train"]["audio"].shape  # doctest: +SKIP
(torch.Size([500, 1, 28, 28]), torch.Size([500, 48, 40]))
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from deepmetric._checks import check_int
from deepmetric._io import atomic_path, write_json
from deepmetric.data.audio import LOG_MEL_EPS, log_mel, pad_or_crop, read_wav
from deepmetric.data.datasets import (
    ArrayDataset, _builtin, _require_builtin, data_root, load, read_npz, sha256_file,
)
from deepmetric.data.video import clips as _clips
from deepmetric.data.video import split_shots

__all__ = [
    "Track", "FaceTracks", "read_notting_hill", "notting_hill_tracks", "encode_tracks", "decode_tracks",
    "read_manifest", "track_folds", "fsdd_log_mels", "av_digits", "default_cache_dir", "FSDD_RATE",
]

NH_FILE = "notting-hill/Notting-Hill.mat"
NH_SIZE = 60
FSDD_RATE = 8000
CACHE_ENV = "DEEPMETRIC_CACHE"
_CACHE_VERSION = 2  # 2: log-mel padding is silence, log(eps), not 0


# --------------------------------------------------------------------------------------------------
# Notting-Hill face tracks


class Track(NamedTuple):
    """One face track: ``actor`` id and the frames ``[start, end)`` of the array it indexes."""

    actor: int
    start: int
    end: int


class FaceTracks(NamedTuple):
    """Face tracks of Notting-Hill (frames of the kept tracks only, in file order).

    * ``frames``: ``(N, 60, 60)`` uint8, upright faces;
    * ``actor``: ``(N,)`` int64 actor id ``0..4`` (the file's ``gnd - 1``);
    * ``track``: ``(N,)`` int64 global track id ``0..K-1``;
    * ``tracks``: ``K`` :class:`Track` ``(actor, start, end)``, ``start``/``end`` index ``frames``;
    * ``source``: ``(N,)`` int64 column of each frame in ``Notting-Hill.mat``.
    """

    frames: torch.Tensor
    actor: torch.Tensor
    track: torch.Tensor
    tracks: list
    source: torch.Tensor


def read_notting_hill(root=None) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """All 1,494 frames of ``notting-hill/Notting-Hill.mat`` under the data ``root``.

    Returns ``(frames (N, 60, 60) uint8, actor (N,) int64 0..4, path)``. Each column of ``X`` is a
    60x60 image stored column-major, reshaped with ``order='F'`` (``order='C'`` gives transposed
    faces). Raises FileNotFoundError naming the missing file, ValueError naming a malformed one
    (missing ``X``/``gnd``, wrong shapes or values, actors not in contiguous blocks).
    """
    from scipy.io import loadmat

    root = data_root(root)
    path = _require_builtin(root, NH_FILE, "notting-hill")
    try:
        mat = loadmat(str(path))
    except Exception as err:  # scipy raises several types for a corrupt file
        raise ValueError(f"{path}: cannot read as a MATLAB file: {err}") from None
    if "X" not in mat or "gnd" not in mat:
        raise ValueError(f"{path}: expected variables 'X' and 'gnd', got "
                         f"{sorted(k for k in mat if not k.startswith('__'))}")
    x, gnd = np.asarray(mat["X"]), np.asarray(mat["gnd"]).reshape(-1)
    if x.ndim != 2 or x.shape[0] != NH_SIZE * NH_SIZE or x.shape[1] != gnd.shape[0]:
        raise ValueError(f"{path}: expected X (3600, N) and gnd (N, 1), got X {x.shape} and gnd "
                         f"{mat['gnd'].shape}")
    if not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() > 255:
        raise ValueError(f"{path}: X must hold uint8 grey levels 0..255, got {x.dtype}")
    if not np.issubdtype(gnd.dtype, np.integer) or gnd.min() < 1:
        raise ValueError(f"{path}: gnd must hold actor ids 1..K, got {gnd.dtype} from {gnd.min()}")
    actor = gnd.astype(np.int64) - 1
    starts = np.flatnonzero(np.diff(actor)) + 1
    if len(np.unique(actor)) != len(starts) + 1:
        raise ValueError(f"{path}: frames must be grouped by actor in contiguous blocks")
    frames = x.astype(np.uint8).T.reshape(-1, NH_SIZE, NH_SIZE).transpose(0, 2, 1)  # = order='F'
    return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(actor), path


def _actor_blocks(actor: torch.Tensor) -> list[tuple[int, int, int]]:
    """Contiguous ``(actor, start, end)`` runs of equal actor ids."""
    cuts = [0] + (torch.nonzero(actor[1:] != actor[:-1]).flatten() + 1).tolist() + [len(actor)]
    return [(int(actor[s]), s, e) for s, e in zip(cuts[:-1], cuts[1:])]


def notting_hill_tracks(root=None, threshold: float = 0.5, min_length: int = 8) -> FaceTracks:
    """Cut each actor's block of Notting-Hill into face tracks (see :class:`FaceTracks`).

    A new track starts where the Pearson correlation of consecutive frames
    (:func:`deepmetric.data.video.frame_correlations`) falls below ``threshold``; runs shorter than
    ``min_length`` frames are dropped, with their frames. Tracks never cross actor blocks. Measured
    on the real file: thresholds 0.3 / 0.5 / 0.7 give 21 / 26 / 49 segments, of which 19 / 22 / 31
    have at least 8 frames (1,492 / 1,482 / 1,458 of the 1,494 frames kept).
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: expected a correlation in [0, 1], got {threshold!r}")
    min_length = check_int(min_length, "min_length", 1)
    frames, actor, _ = read_notting_hill(root)
    keep, tracks, track_ids = [], [], []
    n = 0
    for a, s, e in _actor_blocks(actor):
        for ts, te in split_shots(frames[s:e], threshold=float(threshold), min_length=min_length):
            keep.append(torch.arange(s + ts, s + te))
            track_ids.append(torch.full((te - ts,), len(tracks), dtype=torch.int64))
            tracks.append(Track(a, n, n + te - ts))
            n += te - ts
    source = torch.cat(keep)
    return FaceTracks(frames[source], actor[source], torch.cat(track_ids), tracks, source)


def _video_suffix(codec: str) -> str:
    return ".mkv" if codec == "ffv1" else ".mp4"


def encode_tracks(frames, tracks, out_dir, codec: str = "libx264", fps: float = 25,
                  track_ids=None) -> dict:
    """Write each track ``frames[start:end]`` to its own video file in ``out_dir``.

    ``frames`` is ``(N, H, W)`` uint8 grey, ``tracks`` a list of ``(actor, start, end)`` (e.g.
    ``FaceTracks.tracks``); ``track_ids`` name them (default ``0..K-1``, their position). Files are
    ``track_{id:04d}.mp4`` (``.mkv`` for the lossless ``ffv1``), written with
    :func:`deepmetric.data.video.write_video`; ``libx264`` is ``crf=0`` (grey within one level).
    ``manifest.json`` lists codec, fps, frame size and per track ``file``, ``actor``, ``track``,
    ``start``, ``end`` and ``frames``; a previous manifest is removed first and the new one written
    last, atomically, and returned as a dict (an interrupted re-encode leaves no manifest that would
    describe a mix of old and new files).
    """
    from deepmetric.data.video import write_video

    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 3:
        raise ValueError(f"frames: expected (N, H, W) uint8 grey frames, got {tuple(frames.shape)} {frames.dtype}")
    track_ids = list(range(len(tracks))) if track_ids is None else [int(t) for t in track_ids]
    if len(track_ids) != len(tracks) or len(set(track_ids)) != len(track_ids):
        raise ValueError(f"track_ids: expected {len(tracks)} distinct ids, got {track_ids}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    entries = []
    for tid, (a, s, e) in zip(track_ids, tracks):
        if not 0 <= s < e <= len(frames):
            raise ValueError(f"tracks: track {tid} spans [{s}, {e}), outside the {len(frames)} frames")
        name = f"track_{tid:04d}{_video_suffix(codec)}"
        write_video(out_dir / name, frames[s:e], fps=fps, codec=codec, gray=True)
        entries.append({"file": name, "actor": int(a), "track": tid, "start": int(s), "end": int(e),
                        "frames": int(e - s)})
    manifest = {"codec": codec, "fps": fps, "height": int(frames.shape[1]), "width": int(frames.shape[2]),
                "tracks": entries}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def read_manifest(out_dir) -> dict:
    """The ``manifest.json`` written by :func:`encode_tracks`, checked; errors name the file."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"decode_tracks: missing manifest {path}")
    try:
        manifest = json.loads(path.read_text())
        entries = manifest["tracks"]
        for entry in entries:
            entry["file"], int(entry["frames"]), int(entry["track"]), int(entry["actor"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed track manifest ({type(err).__name__}: {err})") from None
    return manifest


def decode_tracks(out_dir) -> list[torch.Tensor]:
    """Read back the tracks of :func:`encode_tracks` through :func:`deepmetric.data.video.read_video`.

    Returns one ``(T, H, W)`` uint8 tensor per manifest entry, in manifest order. Raises ValueError
    naming the file when a video decodes to a different number of frames or size than the manifest
    says (frames padded to even sizes by the encoder are cropped back).
    """
    from deepmetric.data.video import read_video

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    h, w = int(manifest.get("height", 0)), int(manifest.get("width", 0))
    result = []
    for entry in manifest["tracks"]:
        path = out_dir / entry["file"]
        got, _ = read_video(path, gray=True)
        if h and w:
            if got.shape[1] < h or got.shape[2] < w:
                raise ValueError(f"{path}: frames are {tuple(got.shape[1:])}, the manifest says {(h, w)}")
            got = got[:, :h, :w]
        if len(got) != int(entry["frames"]):
            raise ValueError(f"{path}: decoded {len(got)} frames, the manifest says {entry['frames']}")
        result.append(got)
    return result


def track_folds(tracks, k: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k-fold cross-validation over tracks, stratified by actor: ``[(train_ids, test_ids), ...]``.

    ``tracks`` is a list of ``(actor, start, end)``; a track's id is its position. Each actor's
    tracks are shuffled (``torch.randperm`` with ``seed``) and dealt round-robin over the folds, the
    dealing continuing where the previous actor stopped, so fold sizes differ by at most one and each
    fold tests ``floor`` or ``ceil(n_a / k)`` tracks of an actor with ``n_a`` tracks. Every track is
    tested exactly once; every actor with at least 2 tracks keeps a track in every fold's train
    set (an actor with one track is absent from training in the fold that tests it). Ids are sorted
    int64 tensors; select items with ``torch.isin(dataset.groups, test_ids)``.
    """
    k = check_int(k, "k", 2, len(tracks), " (the number of tracks)")
    generator = torch.Generator().manual_seed(int(seed))
    actors = torch.tensor([int(t[0]) for t in tracks], dtype=torch.int64)
    fold_of = torch.empty(len(tracks), dtype=torch.int64)
    offset = 0
    for a in torch.unique(actors).tolist():
        ids = torch.nonzero(actors == a).flatten()
        ids = ids[torch.randperm(len(ids), generator=generator)]
        fold_of[ids] = (offset + torch.arange(len(ids))) % k
        offset = (offset + len(ids)) % k
    everything = torch.arange(len(tracks))
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


@_builtin("notting-hill",
          "Notting-Hill face tracks: 1,494 60x60 grey face crops of 5 actors cut into face tracks; "
          "y = (actor, track), groups = track; options threshold=0.5 (22 tracks), min_length=8, "
          "clip_length=None (T: clips of T frames as (N, T, 3600) features), clip_stride=None (= T); "
          "no split of its own: cross-validate over tracks with deepmetric.data.av.track_folds")
def _load_notting_hill(root: Path, threshold: float = 0.5, min_length: int = 8, clip_length: int | None = None,
                       clip_stride: int | None = None) -> dict[str, ArrayDataset]:
    """``{"all": ArrayDataset}``: frames ``x (N, 1, 60, 60)`` in ``[0, 1]``, or with ``clip_length=T``
    clips of ``T`` consecutive frames of one track as flattened frames ``x (N, T, 3600)`` (stride
    ``clip_stride``, default ``T``: non-overlapping; tracks shorter than ``T`` give no clip).
    ``y (N, 2)`` = (actor 0..4, global track id), ``groups`` = track id, ``ids`` = column in the
    .mat file of the (first) frame. ``meta["tracks"]`` lists ``(actor, start, end)``."""
    ft = notting_hill_tracks(root, threshold=threshold, min_length=min_length)
    path = root / NH_FILE
    meta = {"threshold": threshold, "min_length": min_length, "clip_length": clip_length,
            "tracks": [list(t) for t in ft.tracks], "image_size": NH_SIZE,
            "note": "no built-in split; use deepmetric.data.av.track_folds over groups (tracks)"}
    files = {str(path): sha256_file(path)}
    y = torch.stack([ft.actor, ft.track], dim=1)
    if clip_length is None:
        x = ft.frames.float().div_(255.0).unsqueeze(1)
        ds = ArrayDataset(x, y, groups=ft.track.clone(), ids=ft.source.clone(), name="notting-hill",
                          files=files, meta=meta)
        return {"all": ds}
    clip_length = check_int(clip_length, "clip_length", 1, why=" or None")
    stride = clip_length if clip_stride is None else check_int(clip_stride, "clip_stride", 1, why=" or None")
    xs, ys, firsts = [], [], []
    flat = ft.frames.reshape(len(ft.frames), -1)
    for tid, (_, s, e) in enumerate(ft.tracks):
        if e - s < clip_length:
            continue
        windows = _clips(flat[s:e], clip_length, stride)                   # (n, T, 3600) view
        xs.append(windows.float().div(255.0))
        ys.append(y[s].expand(len(windows), 2))
        firsts.append(ft.source[s + torch.arange(len(windows)) * stride])
    if not xs:
        raise ValueError(f"clip_length: {clip_length} is longer than every track "
                         f"(longest {max(e - s for _, s, e in ft.tracks)} frames)")
    y_clips = torch.cat(ys)
    meta["clip_stride"] = stride
    ds = ArrayDataset(torch.cat(xs), y_clips.clone(), groups=y_clips[:, 1].clone(), ids=torch.cat(firsts),
                      name="notting-hill", files=files, meta=meta)
    return {"all": ds}


# --------------------------------------------------------------------------------------------------
# audio-visual digits: MNIST test images + FSDD recordings


_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def default_cache_dir() -> Path:
    """``$DEEPMETRIC_CACHE`` if set, else ``~/.cache/deepmetric``."""
    env = os.environ.get(CACHE_ENV, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deepmetric"


def _fsdd_speakers(root: Path) -> list[str]:
    path = _require_builtin(root, "fsdd/speakers.csv", "fsdd")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [r.get("speaker", "").strip() for r in rows]
    if not names or not all(names) or len(set(names)) != len(names):
        raise ValueError(f"{path}: expected a 'speaker' column of distinct names, got {names}")
    return names


def _fsdd_files(root: Path, speakers: list[str]) -> list[tuple[Path, int, int, int]]:
    """``(path, digit, speaker id, index)`` of every recording, sorted by (digit, speaker, index)."""
    folder = root / "fsdd" / "recordings"
    if not folder.is_dir():
        raise FileNotFoundError(f"fsdd: missing data directory {folder} (data root {root})")
    speaker_id = {s: i for i, s in enumerate(speakers)}
    found = []
    for path in folder.iterdir():
        if path.suffix.lower() != ".wav":
            continue
        m = _FSDD_NAME.match(path.name)
        if m is None or m.group(2) not in speaker_id:
            raise ValueError(f"{path}: expected a name {{digit}}_{{speaker}}_{{index}}.wav with a speaker "
                             f"from speakers.csv ({', '.join(speakers)})")
        found.append((path, int(m.group(1)), speaker_id[m.group(2)], int(m.group(3))))
    if not found:
        raise FileNotFoundError(f"fsdd: no .wav recordings in {folder}")
    have = {(digit, speaker, index) for _, digit, speaker, index in found}
    count = 1 + max(index for *_, index in have)  # every speaker says every digit this many times, from 0
    if len(have) < 10 * len(speakers) * count:
        missing = (f"{digit}_{name}_{i}.wav" for digit in range(10) for speaker, name in enumerate(speakers)
                   for i in range(count) if (digit, speaker, i) not in have)
        raise FileNotFoundError(f"fsdd: {10 * len(speakers) * count - len(have)} recording(s) missing from {folder} "
                                f"(each speaker says each digit {count} times, numbered from 0): "
                                f"{', '.join(itertools.islice(missing, 5))}")
    return sorted(found, key=lambda r: (r[1], r[2], r[3]))


def _n_frames(duration: float, sample_rate: int = FSDD_RATE) -> int:
    """log-mel frames of ``duration`` seconds (25 ms windows, 10 ms hop, no centring)."""
    samples = int(round(duration * sample_rate))
    win, hop = int(round(0.025 * sample_rate)), int(round(0.010 * sample_rate))
    return 1 + max(0, samples - win) // hop


def _compute_log_mels(files, duration: float, n_mels: int):
    length = _n_frames(duration)
    audio = np.zeros((len(files), length, n_mels), dtype=np.float32)
    mask = np.zeros((len(files), length), dtype=bool)
    for i, (path, *_rest) in enumerate(files):
        signal, rate = read_wav(path)
        if rate != FSDD_RATE:
            raise ValueError(f"{path}: expected {FSDD_RATE} Hz audio, got {rate} Hz")
        if signal.ndim == 2:
            signal = signal.mean(0)
        feats, m = pad_or_crop(log_mel(signal, rate, n_mels=n_mels), length,
                               value=math.log(LOG_MEL_EPS))  # padded with silence
        audio[i], mask[i] = feats.numpy(), m.numpy()
    return audio, mask


def _cache_key(files, duration: float, n_mels: int, speakers: list[str]) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}|{duration!r}|{n_mels}|{','.join(speakers)}".encode())
    for path, *_rest in files:
        h.update(f"|{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _check_cache_dir(cache_dir: Path, root: Path) -> Path:
    cache_dir = Path(cache_dir).expanduser().resolve()
    if cache_dir == root or root in cache_dir.parents:
        raise ValueError(f"cache_dir: {cache_dir} lies inside the data directory {root}; the shared data "
                         f"must stay unchanged, pick another directory")
    return cache_dir


def fsdd_log_mels(root=None, duration: float = 0.5, n_mels: int = 40, cache=True) -> dict[str, np.ndarray]:
    """Log-mel features of every FSDD recording, padded or cropped to ``duration`` seconds.

    Each recording is read with :func:`deepmetric.data.audio.read_wav` (8 kHz), turned into
    :func:`deepmetric.data.audio.log_mel` frames (25 ms windows, 10 ms hop, ``n_mels`` bands) and
    brought to ``F = 1 + (duration * 8000 - 200) // 80`` frames by
    :func:`deepmetric.data.audio.pad_or_crop` (silence, ``log(1e-6)``, appended, or the centre kept). Returns numpy
    arrays ``audio (R, F, n_mels)`` float32, ``mask (R, F)`` bool (True on real frames), ``digit``,
    ``speaker`` (id in ``speakers.csv`` order), ``index`` (R,) int64, sorted by (digit, speaker, index).

    ``cache``: True uses :func:`default_cache_dir`, a path uses that directory, False disables it.
    The cache file ``fsdd_logmel_{key}.npz`` is keyed by the settings and the recordings' names and
    sizes, and is reused on the next call (no WAV is read then). A cache directory inside the data
    root is refused.
    """
    if not duration or duration <= 0:
        raise ValueError(f"duration: expected a positive number of seconds, got {duration!r}")
    root = data_root(root)
    speakers = _fsdd_speakers(root)
    files = _fsdd_files(root, speakers)
    labels = {"digit": np.array([f[1] for f in files], dtype=np.int64),
              "speaker": np.array([f[2] for f in files], dtype=np.int64),
              "index": np.array([f[3] for f in files], dtype=np.int64)}
    cache_path = None
    if cache is not False and cache is not None:
        cache_dir = _check_cache_dir(default_cache_dir() if cache is True else Path(cache), root)
        cache_path = cache_dir / f"fsdd_logmel_{_cache_key(files, duration, n_mels, speakers)}.npz"
        cached = _read_cache(cache_path, len(files), _n_frames(duration), n_mels)
        if cached is not None and all(np.array_equal(cached[k], v) for k, v in labels.items()):
            return cached
    audio, mask = _compute_log_mels(files, duration, n_mels)
    result = {"audio": audio, "mask": mask, **labels}
    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **result)
    return result


def _read_cache(path: Path, n: int, length: int, n_mels: int) -> dict[str, np.ndarray] | None:
    """The cached arrays if ``path`` holds a complete cache of the expected shapes, else None."""
    if not path.is_file():
        return None
    try:
        arrays = read_npz(path, ("audio", "mask", "digit", "speaker", "index"))
    except ValueError:
        return None  # unreadable or partial: recompute and overwrite
    if arrays["audio"].shape != (n, length, n_mels) or arrays["mask"].shape != (n, length):
        return None
    return arrays


def av_digits(root=None, n_pairs_per_digit: int | None = None, seed: int = 0, duration: float = 0.5,
              split: str = "speakers", n_mels: int = 40, cache=True) -> dict[str, dict[str, torch.Tensor]]:
    """Audio-visual digits (AV-MNIST-like): ``{"train": side, "test": side}``.

    Each item pairs an MNIST test image with an FSDD recording of the same digit. The two sides share
    no image and no recording:

    * images: per digit, the first half (in file order) of that digit's MNIST test images go to
      train, the second half to test;
    * recordings: ``split="speakers"`` (default) puts the first 4 speakers of ``speakers.csv``
      (jackson, nicolas, theo, yweweler) in train and the last 2 (george, lucas) in test, so test
      speakers are unseen; ``split="recordings"`` keeps all 6 speakers on both sides, recordings
      0..24 in train and 25..49 in test.

    Per side and digit, every recording of that side is used once (or ``n_pairs_per_digit`` of them,
    at most as many as there are), in an order shuffled with ``seed``, each paired with a distinct
    image drawn without replacement from the digit's half. A side is a dict of tensors:

    * ``image`` ``(N, 1, 28, 28)`` float32 in ``[0, 1]``;
    * ``audio`` ``(N, F, n_mels)`` float32 log-mels (``F = 48`` for 0.5 s; see :func:`fsdd_log_mels`),
      ``audio_mask`` ``(N, F)`` bool, True on real frames (padding is silence, ``log(1e-6)``, at the end);
    * ``y`` ``(N, 2)`` int64 ``(digit, speaker)``: speaker ids 0..5 in ``speakers.csv`` order, a
      sub-class meaningful only with its digit;
    * ``image_index`` ``(N,)`` int64 row of the image in the MNIST test file, ``recording`` ``(N,)``
      int64 ``digit * 10_000 + speaker * 100 + index`` naming the recording.

    ``cache`` is passed to :func:`fsdd_log_mels` (True: the default cache directory).
    """
    if split not in ("speakers", "recordings"):
        raise ValueError(f"split: expected 'speakers' or 'recordings', got {split!r}")
    if n_pairs_per_digit is not None:
        n_pairs_per_digit = check_int(n_pairs_per_digit, "n_pairs_per_digit", 1, why=" or None")
    root = data_root(root)
    feats = fsdd_log_mels(root, duration=duration, n_mels=n_mels, cache=cache)
    mnist = load("mnist-test", root)["test"]  # (N, 1, 28, 28) in [0, 1]
    image_labels = mnist.y.numpy()
    n_speakers = len(_fsdd_speakers(root))
    if split == "speakers":
        is_train_rec = feats["speaker"] < n_speakers - 2
    else:
        is_train_rec = feats["index"] < 25
    generator = torch.Generator().manual_seed(int(seed))
    sides = {}
    for side, rec_side in (("train", is_train_rec), ("test", ~is_train_rec)):
        rec_rows, img_rows = [], []
        for digit in range(10):
            recs = np.flatnonzero(rec_side & (feats["digit"] == digit))
            imgs = np.flatnonzero(image_labels == digit)
            half = (len(imgs) + 1) // 2
            imgs = imgs[:half] if side == "train" else imgs[half:]
            n = len(recs) if n_pairs_per_digit is None else min(n_pairs_per_digit, len(recs))
            if n > len(imgs):
                raise ValueError(f"av_digits: digit {digit} has {len(imgs)} {side} images for {n} recordings")
            recs = recs[torch.randperm(len(recs), generator=generator)[:n].numpy()]
            imgs = imgs[torch.randperm(len(imgs), generator=generator)[:n].numpy()]
            rec_rows.append(recs)
            img_rows.append(imgs)
        rec = np.concatenate(rec_rows)
        img = np.concatenate(img_rows)
        sides[side] = {
            "image": mnist.x[torch.from_numpy(img)],
            "audio": torch.from_numpy(feats["audio"][rec]),
            "audio_mask": torch.from_numpy(feats["mask"][rec]),
            "y": torch.from_numpy(np.stack([feats["digit"][rec], feats["speaker"][rec]], axis=1)),
            "image_index": torch.from_numpy(img.astype(np.int64)),
            "recording": torch.from_numpy(feats["digit"][rec] * 10_000 + feats["speaker"][rec] * 100
                                          + feats["index"][rec]),
        }
    return sides
