"""Reading audio and turning it into log-mel features: WAV reader, HTK mel filterbank, log-mel
spectrogram and fixed-length padding/cropping with a mask.

>>> import torch
>>> signal, sr = read_wav("recordings/0_jackson_0.wav")     # doctest: +SKIP
>>> signal, sr = torch.sin(torch.arange(3360) * 0.3), 8000   # 0.42 s, a typical spoken digit
>>> feats = log_mel(signal, sr)                              # 25 ms windows, 10 ms hop, 40 bands
>>> feats.shape
torch.Size([40, 40])
>>> x, mask = pad_or_crop(feats, 100)                        # 1 s of frames, mask of real ones
>>> x.shape, int(mask.sum())
(torch.Size([100, 40]), 40)
"""
from __future__ import annotations

import math
import warnings
import wave
from pathlib import Path

import numpy as np
import torch

__all__ = ["read_wav", "hz_to_mel", "mel_to_hz", "mel_filterbank", "log_mel", "pad_or_crop"]

#: the floor :func:`log_mel` adds before the log: ``log(LOG_MEL_EPS)`` is the log-mel of silence
LOG_MEL_EPS = 1e-6


def read_wav(path):
    """Read a PCM WAV file into float32 in ``[-1, 1]``.

    Returns ``(signal, sample_rate)``: ``signal`` is ``(samples,)`` for mono and
    ``(channels, samples)`` otherwise. Integer samples are scaled as ``x / 2^(bits-1)``
    (8-bit WAV is unsigned: ``(x - 128) / 128``); 8, 16, 24 and 32-bit integer PCM are read with the
    standard ``wave`` module, IEEE-float and "extensible" WAV (format tag 0xFFFE) through
    ``scipy.io.wavfile``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file when it is not
    a WAV file, uses an unsupported encoding or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {str(path)!r} does not exist")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except wave.Error as e:
        if "unknown format" in str(e):  # IEEE float (3) or extensible (65534): scipy reads both
            return _read_scipy_wav(path)
        raise ValueError(f"{str(path)!r} is not a readable PCM WAV file: {e}") from e
    except EOFError as e:
        raise ValueError(f"{str(path)!r} is not a readable WAV file: the header is truncated") from e
    if len(raw) < n * channels * width:
        raise ValueError(f"{str(path)!r} is truncated: header declares {n} frames, data holds "
                         f"{len(raw) // max(1, channels * width)}")
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    else:
        raise ValueError(f"{str(path)!r}: unsupported sample width of {width} bytes")
    return _shape(x, channels), rate


def _read_scipy_wav(path: Path):
    from scipy.io import wavfile
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)
            rate, data = wavfile.read(str(path))
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable WAV file: {e}") from e
    eof = [str(w.message) for w in caught if "EOF" in str(w.message)]  # scipy returns what it read
    if eof:
        raise ValueError(f"{str(path)!r} is truncated: {eof[0]}")
    if data.dtype == np.uint8:  # integer PCM in an extensible header, scaled as read_wav does
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":  # scipy left-justifies 24-bit samples in int32
        data = data.astype(np.float64) / float(1 << (8 * data.dtype.itemsize - 1))
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == 1:
        return torch.from_numpy(x.copy()), int(rate)
    return torch.from_numpy(np.ascontiguousarray(x.T)), int(rate)


def _shape(x: np.ndarray, channels: int):
    if channels == 1:
        return torch.from_numpy(x.copy())
    return torch.from_numpy(np.ascontiguousarray(x.reshape(-1, channels).T))


def hz_to_mel(f):
    """HTK mel scale: ``m = 2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    """Inverse HTK mel scale: ``f = 700 (10^(m / 2595) - 1)``."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: float, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, ``(n_mels, n_fft // 2 + 1)`` float32.

    Centres ``f_0 < ... < f_{M+1}`` are ``n_mels + 2`` points equally spaced in mel between ``f_min``
    and ``f_max`` (default ``sample_rate / 2``), mapped back to Hz. FFT bin ``k`` sits at
    ``f = k * sample_rate / n_fft`` and filter ``m`` (1..M) weighs it by
    ``max(0, min((f - f_{m-1}) / (f_m - f_{m-1}), (f_{m+1} - f) / (f_{m+1} - f_m)))``: peak 1, no area
    normalisation (as HTK, librosa ``htk=True, norm=None``, torchaudio ``mel_scale="htk"``).
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"need n_mels >= 1 and n_fft >= 2, got n_mels={n_mels}, n_fft={n_fft}")
    if not 0 <= f_min < f_max <= sample_rate / 2.0 + 1e-9:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, "
                         f"sample_rate={sample_rate}")
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lo) / (mid - lo)
    falling = (hi - freqs[None]) / (hi - mid)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32))


def log_mel(signal, sample_rate: int, n_fft: int | None = None, hop_length: int | None = None,
            win_length: int | None = None, n_mels: int = 40, f_min: float = 0.0, f_max: float | None = None,
            eps: float = LOG_MEL_EPS) -> torch.Tensor:
    """Log-mel spectrogram ``log(M |STFT(x)|^2 + eps)``, ``(..., frames, n_mels)`` float32.

    Defaults suit 8 kHz speech (FSDD): ``win_length`` 25 ms (200 samples), ``hop_length`` 10 ms (80),
    ``n_fft`` the next power of two (256), 40 mel bands from ``f_min`` to ``sample_rate / 2``.

    Framing (no centring, as Kaldi and VGGish): frame ``t`` covers samples
    ``[t * hop, t * hop + win_length)``, multiplied by a periodic Hann window of ``win_length`` and
    zero-padded at its end to ``n_fft`` before the FFT; there are ``1 + (N - win_length) // hop``
    frames and a signal shorter than one window is zero-padded to one frame. Computed with
    ``torch.stft`` (window = Hann followed by zeros, signal padded by ``n_fft - win_length``).
    ``M`` is :func:`mel_filterbank`.

    For YouTube-8M / VGGish-style features use 16 kHz audio, ``win_length=400, hop_length=160,
    n_fft=512, n_mels=64, f_min=125, f_max=7500, eps=0.01``; VGGish feeds patches of 96 frames
    x 64 bands (0.96 s).
    """
    x = torch.as_tensor(signal)
    if not torch.is_floating_point(x):
        raise ValueError(f"signal must be floating point, got {x.dtype}")
    win_length = win_length or int(round(0.025 * sample_rate))
    hop_length = hop_length or int(round(0.010 * sample_rate))
    n_fft = n_fft or 1 << math.ceil(math.log2(win_length))
    if win_length > n_fft:
        raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
    batch_shape = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1]).to(torch.float32)
    if x.shape[-1] < win_length:
        x = torch.nn.functional.pad(x, (0, win_length - x.shape[-1]))
    x = torch.nn.functional.pad(x, (0, n_fft - win_length))
    window = torch.zeros(n_fft)
    window[:win_length] = torch.hann_window(win_length, periodic=True)
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=window,
                      center=False, return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2                      # (B, freqs, frames)
    fb = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max)
    mel = torch.einsum("mf,bft->btm", fb, power)
    return torch.log(mel + eps).reshape(*batch_shape, mel.shape[1], n_mels)


def pad_or_crop(x: torch.Tensor, length: int, dim: int = 0, random: bool = False, generator=None,
                value: float = 0.0):
    """Bring ``x`` to ``length`` along ``dim``; returns ``(y, mask)`` with ``mask`` bool ``(length,)``
    True on real (not padded) positions.

    Shorter inputs are padded at the end with ``value`` (for log-mel frames, the log of silence,
    ``log(eps)`` of :func:`log_mel`: a 0 there would read as loud sound to a model that ignores the
    mask). Longer inputs are cropped: the centre when ``random=False``, a uniformly random window
    (``torch.randint`` with ``generator``) otherwise.
    Spoken digits (FSDD) last about 0.4 s, i.e. about 40 frames of 10 ms.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    x = torch.as_tensor(x)
    dim = dim % x.ndim
    n = x.shape[dim]
    mask = torch.zeros(length, dtype=torch.bool)
    if n <= length:
        pad_shape = list(x.shape)
        pad_shape[dim] = length - n
        y = torch.cat([x, x.new_full(pad_shape, value)], dim=dim)
        mask[:n] = True
        return y, mask
    if random:
        start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
    else:
        start = (n - length) // 2
    mask[:] = True
    return x.narrow(dim, start, length), mask
