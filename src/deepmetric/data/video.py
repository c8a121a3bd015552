"""Reading, writing and cutting video: PyAV decoding, frame-rate resampling, TSN segment sampling,
sliding clips and the frame-difference baseline shot splitter.

Frames are uint8 tensors ``(T, H, W, C)`` (RGB) or ``(T, H, W)`` (grey); timestamps are float64
seconds ``(T,)``.

>>> frames, times = read_video("clip.mp4", fps=5, size=(112, 112))    # doctest: +SKIP
>>> idx = sample_segments(len(frames), segments=8)                     # doctest: +SKIP
>>> windows = clips(frames, length=16, stride=8)                       # doctest: +SKIP
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepmetric._io import atomic_path

__all__ = [
    "read_video", "write_video", "resample_indices", "sample_segments", "clips",
    "frame_correlations", "shot_boundaries", "split_shots", "LOSSLESS_CODECS",
]

#: Codecs that ``write_video`` stores without loss (decoding returns the input exactly).
LOSSLESS_CODECS = ("ffv1",)
_LOSSY_CODECS = ("libx264", "mpeg4")


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a declared dependency
        raise ImportError("reading video needs PyAV: pip install 'av>=12'") from e
    return av


def read_video(path, fps: float | None = None, size: tuple[int, int] | None = None, gray: bool = False):
    """Decode the first video stream of ``path`` with PyAV.

    Returns ``(frames, timestamps)``: uint8 frames ``(T, H, W, 3)`` RGB, or ``(T, H, W)`` when
    ``gray``, and float64 presentation times in seconds ``(T,)``.

    ``fps`` resamples to that rate with :func:`resample_indices` (the last frame at or before each
    target time ``t_0 + k / fps``); the timestamps returned are then the target times.
    ``size=(h, w)`` resizes with antialiased bilinear interpolation.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything
    that is not a decodable video: not a media file, no video stream, a truncated file (fewer frames
    decoded than the container declares, frames ending well before its declared duration, or a
    decoder error) or zero decodable frames.
    """
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise ValueError(f"{str(path)!r} is not a readable video file: {e}") from e
    fmt = "gray" if gray else "rgb24"
    arrays, times = [], []
    with container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        declared = stream.frames or 0
        declared_seconds = (container.duration or 0) / 1e6  # AV_TIME_BASE units
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        try:
            for frame in container.decode(stream):
                arrays.append(frame.to_ndarray(format=fmt))
                t = frame.time
                if t is None:
                    t = len(times) / rate if rate else float(len(times))
                times.append(float(t))
        except av.FFmpegError as e:
            raise ValueError(f"{str(path)!r} is corrupt or truncated: decoding failed after "
                             f"{len(arrays)} frames ({e})") from e
    if not arrays:
        raise ValueError(f"{str(path)!r} has zero decodable video frames")
    if declared and len(arrays) < declared:
        raise ValueError(f"{str(path)!r} is truncated: decoded {len(arrays)} of the {declared} frames "
                         "its container declares")
    frames = torch.from_numpy(np.stack(arrays))
    timestamps = torch.tensor(times, dtype=torch.float64)
    period = 1.0 / rate if rate else (float(timestamps.diff().median()) if len(times) > 1 else 0.0)
    if declared_seconds and period and times[-1] + period < declared_seconds - 2 * period - 0.05:
        raise ValueError(f"{str(path)!r} is truncated: frames end at {times[-1] + period:.3f} s but the "
                         f"container declares {declared_seconds:.3f} s")
    if fps is not None:
        idx, timestamps = resample_indices(timestamps, fps, frame_period=1.0 / rate if rate else None)
        frames = frames[idx]
    if size is not None:
        frames = _resize(frames, size, gray)
    return frames, timestamps


def resample_indices(timestamps, fps: float, frame_period: float | None = None):
    """Frame indices that resample a video with ``timestamps`` (seconds, ascending) to ``fps``.

    Target times are ``t_k = t_0 + k / fps`` for every ``t_k < t_0 + duration``, where
    ``duration = t_last - t_0 + frame_period`` (the last frame lasts one frame period; by default the
    median gap between timestamps). Each target takes the last frame whose time is ``<= t_k``.
    Returns ``(indices int64 (K,), target_times float64 (K,))``.

    Example: 10 frames at 10 fps resampled to 5 fps give frames 0, 2, 4, 6, 8 at 0.0, 0.2, ... 0.8 s.
    """
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < math.inf:
        raise ValueError(f"fps: expected a finite positive number, got {fps!r}")
    t = torch.as_tensor(timestamps, dtype=torch.float64)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"timestamps must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t.diff() < 0).any()):
        raise ValueError(f"timestamps: expected ascending finite times, got {t[:8].tolist()}")
    if frame_period is None:
        frame_period = float(t.diff().median()) if len(t) > 1 else 1.0 / fps
    duration = float(t[-1] - t[0]) + frame_period
    n = max(1, int(np.ceil(duration * fps - 1e-6)))
    targets = t[0] + torch.arange(n, dtype=torch.float64) / fps
    idx = torch.searchsorted(t, targets + 1e-6, right=True) - 1  # 1 us tolerance
    return idx.clamp_(0, len(t) - 1), targets


def _resize(frames: torch.Tensor, size, gray: bool) -> torch.Tensor:
    h, w = int(size[0]), int(size[1])
    x = frames.unsqueeze(1) if gray else frames.permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x[:, 0] if gray else x.permute(0, 2, 3, 1).contiguous()


def write_video(path, frames, fps: float = 25, codec: str = "libx264", gray: bool | None = None):
    """Encode uint8 ``frames`` ``(T, H, W, 3)`` RGB or ``(T, H, W)`` grey to ``path`` (atomically).

    Codecs:
    - ``"ffv1"``: lossless (grey stored as ``gray``, colour as ``bgr0``); use a ``.mkv`` or ``.avi``
      file. Decoding returns the input exactly.
    - ``"libx264"``: ``crf=0``, ``yuv420p`` (plays everywhere); grey frames come back within one
      level, colour loses chroma resolution (about half a level on average for natural images).
    - ``"mpeg4"``: ``yuv420p`` at a high bit rate; about one level of mean absolute error.

    ``yuv420p`` needs even height and width: odd sizes are padded by repeating the last row/column,
    so the decoded video is then one pixel larger. ``gray`` defaults to ``frames.ndim == 3``;
    grey frames are read back with ``read_video(..., gray=True)``. Returns the path written.
    """
    av = _av()
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if gray is None:
        gray = frames.ndim == 3
    if gray and frames.ndim == 4:
        if frames.shape[-1] != 1:
            raise ValueError(f"gray=True needs frames (T, H, W) or (T, H, W, 1), got {tuple(frames.shape)}")
        frames = frames[..., 0]
    expected = 3 if gray else 4
    if frames.ndim != expected or (not gray and frames.shape[-1] != 3) or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty (T, H, W{'' if gray else ', 3'}) uint8 tensor, "
                         f"got shape {tuple(frames.shape)}")
    if codec not in LOSSLESS_CODECS + _LOSSY_CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {LOSSLESS_CODECS + _LOSSY_CODECS}")
    x = frames.numpy()
    if codec == "ffv1":
        pix_fmt = "gray" if gray else "bgr0"
    else:
        pix_fmt = "yuv420p"
        pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
        if pad_h or pad_w:
            pad = [(0, 0), (0, pad_h), (0, pad_w)] + ([] if gray else [(0, 0)])
            x = np.pad(x, pad, mode="edge")
    if gray and codec != "ffv1":
        x = np.repeat(x[..., None], 3, axis=-1)  # through RGB, so the limited-range Y maps back exactly
        in_fmt = "rgb24"
    else:
        in_fmt = "gray" if gray else "rgb24"
    path = Path(path)
    with atomic_path(path) as tmp:
        fmt = {".mkv": "matroska", ".avi": "avi", ".mp4": "mp4", ".mov": "mov"}.get(path.suffix.lower())
        fmt = fmt or ("matroska" if codec == "ffv1" else "mp4")
        with av.open(str(tmp), mode="w", format=fmt) as container:
            options = {"crf": "0"} if codec == "libx264" else {}
            stream = container.add_stream(codec, rate=_rate(fps), options=options)
            stream.height, stream.width = int(x.shape[1]), int(x.shape[2])
            stream.pix_fmt = pix_fmt
            if codec == "mpeg4":
                stream.bit_rate = 20_000_000
            for image in x:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=in_fmt)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def _rate(fps):
    from fractions import Fraction
    return Fraction(fps).limit_denominator(1001)


def sample_segments(n_frames: int, segments: int, offset: str = "middle", generator=None) -> torch.Tensor:
    """TSN-style sampling (Wang et al., 2016): one frame index from each of ``segments`` equal parts.

    With segment length ``L = n_frames / segments``, segment ``k`` spans ``[k L, (k+1) L)`` and gives
    ``floor((k + 0.5) L)`` for ``offset="middle"`` (testing) or ``floor((k + u_k) L)`` with
    ``u_k ~ U[0, 1)`` for ``offset="random"`` (training). Indices repeat when
    ``n_frames < segments``. Returns int64 ``(segments,)``.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    k = torch.arange(segments, dtype=torch.float64)
    if offset == "middle":
        u = torch.full((segments,), 0.5, dtype=torch.float64)
    elif offset == "random":
        u = torch.rand(segments, generator=generator, dtype=torch.float64)
    else:
        raise ValueError(f"offset must be 'middle' or 'random', got {offset!r}")
    idx = torch.floor((k + u) * (n_frames / segments)).long()
    return idx.clamp_(0, n_frames - 1)


def clips(frames: torch.Tensor, length: int, stride: int = 1) -> torch.Tensor:
    """Sliding windows over the first dimension: ``(T, ...) -> (N, length, ...)``.

    ``N = (T - length) // stride + 1``; window ``i`` holds frames ``[i*stride, i*stride + length)``.
    The result is a view of ``frames`` (``Tensor.unfold``), no copy; a trailing remainder shorter
    than ``stride`` is dropped.
    """
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1, got length={length}, stride={stride}")
    if frames.shape[0] < length:
        raise ValueError(f"video has {frames.shape[0]} frames, shorter than one clip of length {length}")
    return frames.unfold(0, length, stride).movedim(-1, 1)


def frame_correlations(frames: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of consecutive frames, flattened: ``(T, ...) -> (T-1,)`` float64.

    ``r_t = sum((a - mean a)(b - mean b)) / sqrt(sum (a - mean a)^2 sum (b - mean b)^2)`` for
    ``a = x_t, b = x_{t+1}``. Where a frame has zero variance the correlation is undefined; it is
    taken as 1 when both frames are constant and equal (within half a grey level), else 0. Never NaN.
    """
    x = torch.as_tensor(frames).reshape(len(frames), -1).to(torch.float64)
    if len(x) < 2:
        return torch.zeros(0, dtype=torch.float64)
    means = x.mean(1, keepdim=True)
    c = x - means
    ss = (c * c).sum(1)
    num = (c[:-1] * c[1:]).sum(1)
    den = (ss[:-1] * ss[1:]).sqrt()
    degenerate = den <= 1e-12 * x.shape[1]
    r = num / torch.where(degenerate, torch.ones_like(den), den)
    both_flat = (ss[:-1] <= 1e-12) & (ss[1:] <= 1e-12)
    same = (means[:-1, 0] - means[1:, 0]).abs() <= 0.5
    fill = torch.where(both_flat & same, 1.0, 0.0).to(torch.float64)
    return torch.where(degenerate, fill, r)


def shot_boundaries(frames: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Indices ``t`` (int64) where a new shot starts: frames whose correlation with the previous frame
    (:func:`frame_correlations`) falls below ``threshold``.

    This is the frame-difference baseline splitter; on the Notting-Hill face tracks 0.3 / 0.5 / 0.7
    give 21 / 26 / 49 segments (see data/README.md), so state the threshold you use.
    """
    r = frame_correlations(frames)
    return (torch.nonzero(r < threshold).flatten() + 1).long()


def split_shots(frames: torch.Tensor, threshold: float = 0.5, min_length: int = 8) -> list[tuple[int, int]]:
    """Cut ``frames`` at :func:`shot_boundaries` into ``[(start, end), ...]`` runs (``end`` exclusive),
    dropping runs shorter than ``min_length`` frames. Frame-difference baseline splitter."""
    cuts = [0] + shot_boundaries(frames, threshold).tolist() + [len(frames)]
    return [(s, e) for s, e in zip(cuts[:-1], cuts[1:]) if e - s >= min_length]
