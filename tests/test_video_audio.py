"""Reading video and audio: PyAV round trips on real Notting-Hill frames, FSDD WAV files, log-mel
features against direct numpy computations, the frame-feature cache and the YouTube-8M reader."""
import json
import struct
import wave

import numpy as np
import pytest
import torch

from deepmetric.data import audio, data_root, features, video

DATA = data_root()  # $DEEPMETRIC_DATA, else ../shared/data beside the checkout
NH = DATA / "notting-hill" / "Notting-Hill.mat"
FSDD_WAV = DATA / "fsdd" / "recordings" / "0_jackson_0.wav"


@pytest.fixture(scope="module")
def nh():
    """All Notting-Hill frames as uint8 (1494, 60, 60), column-major images."""
    from scipy.io import loadmat
    X = loadmat(str(NH))["X"]
    return torch.from_numpy(np.stack([X[:, j].reshape(60, 60, order="F") for j in range(X.shape[1])]))


# ----------------------------------------------------------------------------- video

def test_lossless_round_trip_gray_and_rgb(nh, tmp_path):
    frames = nh[:30]
    p = video.write_video(tmp_path / "g.mkv", frames, fps=10, codec="ffv1")
    got, t = video.read_video(p, gray=True)
    assert got.dtype == torch.uint8 and got.shape == (30, 60, 60)
    assert torch.equal(got, frames)  # exact, so also the right order
    assert torch.allclose(t, torch.arange(30, dtype=torch.float64) / 10)
    rgb = torch.stack([frames, frames.flip(-1), 255 - frames], dim=-1)
    video.write_video(tmp_path / "c.mkv", rgb, fps=10, codec="ffv1")
    got, _ = video.read_video(tmp_path / "c.mkv")
    assert got.shape == (30, 60, 60, 3) and torch.equal(got, rgb)


@pytest.mark.parametrize("codec,tol", [("libx264", 0.5), ("mpeg4", 2.5)])
def test_lossy_round_trip_within_codec_tolerance(nh, tmp_path, codec, tol):
    frames = nh[100:125]
    video.write_video(tmp_path / "v.mp4", frames, fps=25, codec=codec)
    got, t = video.read_video(tmp_path / "v.mp4", gray=True)
    assert got.shape == frames.shape
    err = (got.float() - frames.float()).abs().mean(dim=(1, 2))
    assert err.max() < tol
    # order: each decoded frame is closest to its own source frame
    d = (got.float().flatten(1)[:, None] - frames.float().flatten(1)[None]).abs().mean(-1)
    assert torch.equal(d.argmin(1), torch.arange(25))
    assert torch.allclose(t, torch.arange(25, dtype=torch.float64) / 25, atol=1e-6)


def test_odd_size_is_padded_for_yuv420(nh, tmp_path):
    frames = nh[:5, :59, :57]
    video.write_video(tmp_path / "odd.mp4", frames, codec="libx264")
    got, _ = video.read_video(tmp_path / "odd.mp4", gray=True)
    assert got.shape == (5, 60, 58)
    assert (got[:, :59, :57].float() - frames.float()).abs().mean() < 0.5


def test_fps_resampling_and_resize(nh, tmp_path):
    video.write_video(tmp_path / "v.mkv", nh[:10], fps=10, codec="ffv1")
    got, t = video.read_video(tmp_path / "v.mkv", fps=5, gray=True)
    assert torch.equal(got, nh[0:10:2])
    assert torch.allclose(t, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8], dtype=torch.float64))
    small, _ = video.read_video(tmp_path / "v.mkv", size=(30, 20))
    assert small.shape == (10, 30, 20, 3) and small.dtype == torch.uint8
    # antialiased downscale of a 60x60 frame stays close to 2x2 block averages along rows
    assert (small[..., 0].float().mean() - nh[:10].float().mean()).abs() < 2


def test_resample_indices_hand_worked():
    t = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], dtype=torch.float64)
    idx, targets = video.resample_indices(t, 20)
    assert idx.tolist() == [i // 2 for i in range(20)]
    assert torch.allclose(targets, torch.arange(20, dtype=torch.float64) / 20)
    idx, _ = video.resample_indices(t, 4)  # targets 0, .25, .5, .75
    assert idx.tolist() == [0, 2, 5, 7]
    # irregular timestamps: last frame at or before each target
    # irregular timestamps, duration 0.6 + 0.2: targets 0, .2, .4, .6
    idx, _ = video.resample_indices(torch.tensor([0.0, 0.05, 0.31, 0.6]), 5, frame_period=0.2)
    assert idx.tolist() == [0, 1, 2, 3]
    idx, _ = video.resample_indices(torch.tensor([0.0, 0.05, 0.31, 0.6]), 10, frame_period=0.2)
    assert idx.tolist() == [0, 1, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="fps"):
        video.resample_indices(t, 0)


def test_sample_segments():
    assert video.sample_segments(100, 4).tolist() == [12, 37, 62, 87]
    assert video.sample_segments(10, 3).tolist() == [1, 5, 8]  # floor(10/3 * (k + .5))
    assert video.sample_segments(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    g = torch.Generator().manual_seed(0)
    r = video.sample_segments(100, 4, offset="random", generator=g)
    assert all(25 * k <= int(i) < 25 * (k + 1) for k, i in enumerate(r))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(video.sample_segments(50, 5, "random", g1), video.sample_segments(50, 5, "random", g2))
    with pytest.raises(ValueError, match="offset"):
        video.sample_segments(10, 2, offset="start")


def test_clips_shapes_and_views(nh):
    frames = nh[:20]
    c = video.clips(frames, length=8, stride=4)
    assert c.shape == (4, 8, 60, 60)
    assert torch.equal(c[1], frames[4:12]) and torch.equal(c[3], frames[12:20])
    assert c.untyped_storage().data_ptr() == frames.untyped_storage().data_ptr()  # a view
    rgb = torch.zeros(10, 4, 4, 3)
    assert video.clips(rgb, 10, 1).shape == (1, 10, 4, 4, 3)
    with pytest.raises(ValueError, match="shorter than one clip"):
        video.clips(frames[:5], 8, 1)


def test_shot_boundaries_on_two_real_tracks(nh):
    a, b = nh[0:20], nh[270:290]  # actor 1 and actor 2, each inside one track
    assert video.frame_correlations(a).min() > 0.5 and video.frame_correlations(b).min() > 0.5
    seq = torch.cat([a, b])
    assert video.shot_boundaries(seq, 0.5).tolist() == [20]
    assert video.split_shots(seq, 0.5, min_length=8) == [(0, 20), (20, 40)]
    assert video.split_shots(torch.cat([a, b[:5]]), 0.5, min_length=8) == [(0, 20)]


def test_shot_boundaries_constant_frames():
    const = torch.full((10, 8, 8), 7, dtype=torch.uint8)
    r = video.frame_correlations(const)
    assert not torch.isnan(r).any() and torch.all(r == 1)
    assert video.shot_boundaries(const).numel() == 0
    assert video.split_shots(const, min_length=8) == [(0, 10)]
    jump = torch.cat([const, torch.full((5, 8, 8), 200, dtype=torch.uint8)])
    assert video.shot_boundaries(jump).tolist() == [10]


def test_bad_video_files(tmp_path, nh):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(ValueError, match="notes.mp4"):
        video.read_video(text)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        video.read_video(tmp_path / "missing.mp4")
    for name, codec in (("full.mp4", "libx264"), ("full.mkv", "ffv1")):
        video.write_video(tmp_path / name, nh[:30], codec=codec)
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / ("cut_" + name)
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="cut_" + name):
            video.read_video(cut)
    # a container with a video stream but no frames
    import av
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 16, 16, "gray"
        c.start_encoding()  # header only
    with pytest.raises(ValueError, match="empty.mkv"):
        video.read_video(empty)


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        video.write_video(tmp_path / "x.mkv", torch.zeros(3, 4, 4), codec="ffv1")
    with pytest.raises(ValueError, match="codec"):
        video.write_video(tmp_path / "x.mkv", torch.zeros(3, 4, 4, dtype=torch.uint8), codec="vp9x")


# ----------------------------------------------------------------------------- audio

def _write_wav(path, samples: np.ndarray, rate: int, width: int):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if samples.ndim == 1 else samples.shape[0])
        w.setsampwidth(width)
        w.setframerate(rate)
        inter = samples if samples.ndim == 1 else samples.T.reshape(-1)
        w.writeframes(inter.tobytes())


def test_read_wav_fsdd():
    x, sr = audio.read_wav(FSDD_WAV)
    assert sr == 8000 and x.dtype == torch.float32 and x.ndim == 1
    assert 0.1 < len(x) / sr < 1.5 and x.abs().max() <= 1
    with wave.open(str(FSDD_WAV)) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert torch.equal(x, torch.from_numpy(raw.astype(np.float32) / 32768))


def test_read_wav_written_formats(tmp_path):
    s16 = np.array([0, 16384, -32768, 32767, -1], dtype="<i2")
    _write_wav(tmp_path / "a.wav", s16, 16000, 2)
    x, sr = audio.read_wav(tmp_path / "a.wav")
    assert sr == 16000 and x.tolist() == [0.0, 0.5, -1.0, 32767 / 32768, -1 / 32768]
    u8 = np.array([128, 255, 0, 192], dtype=np.uint8)
    _write_wav(tmp_path / "b.wav", u8, 8000, 1)
    x, _ = audio.read_wav(tmp_path / "b.wav")
    assert x.tolist() == [0.0, 127 / 128, -1.0, 0.5]
    stereo = np.array([[0, 8192, -8192], [100, 200, 300]], dtype="<i2")
    _write_wav(tmp_path / "c.wav", stereo, 8000, 2)
    x, _ = audio.read_wav(tmp_path / "c.wav")
    assert x.shape == (2, 3) and torch.allclose(x, torch.from_numpy(stereo / 32768).float())
    s32 = np.array([1 << 30, -(1 << 31)], dtype="<i4")
    _write_wav(tmp_path / "d.wav", s32, 8000, 4)
    assert audio.read_wav(tmp_path / "d.wav")[0].tolist() == [0.5, -1.0]


def _extensible_wav(path, data: bytes, subformat: int, bits: int, rate: int = 8000):
    """A mono WAV with format tag 0xFFFE (WAVE_FORMAT_EXTENSIBLE), sub-format 1 (PCM) or 3 (float)."""
    block = bits // 8
    guid = struct.pack("<H", subformat) + bytes.fromhex("000000001000800000aa00389b71")
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, rate, rate * block, block, bits) + struct.pack("<HHI", 22, bits, 0) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if subformat == 3:
        body += b"fact" + struct.pack("<II", 4, len(data) // block)
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_read_wav_extensible_and_truncated_float(tmp_path):
    # the extensible header (sox, libsndfile, DAWs) was refused; scipy reads it, scaled like wave's PCM
    _extensible_wav(tmp_path / "f.wav", np.array([0.5, -0.25, 1.0], np.float32).tobytes(), 3, 32)
    assert audio.read_wav(tmp_path / "f.wav")[0].tolist() == [0.5, -0.25, 1.0]
    _extensible_wav(tmp_path / "i.wav", np.array([16384, -16384, 0], "<i2").tobytes(), 1, 16)
    assert audio.read_wav(tmp_path / "i.wav")[0].tolist() == [0.5, -0.5, 0.0]
    # a truncated float WAV: scipy only warns and returns what it read
    data = (tmp_path / "f.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="cut.wav' is truncated"):
        audio.read_wav(tmp_path / "cut.wav")


def test_read_wav_bad_files(tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFX not really a wav file at all")
    with pytest.raises(ValueError, match="noise.wav"):
        audio.read_wav(bad)
    _write_wav(tmp_path / "full.wav", np.arange(1000, dtype="<i2"), 8000, 2)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "short.wav").write_bytes(data[:500])
    with pytest.raises(ValueError, match="short.wav"):
        audio.read_wav(tmp_path / "short.wav")
    (tmp_path / "header.wav").write_bytes(data[:20])
    with pytest.raises(ValueError, match="header.wav"):
        audio.read_wav(tmp_path / "header.wav")
    with pytest.raises(FileNotFoundError, match="none.wav"):
        audio.read_wav(tmp_path / "none.wav")


def _numpy_filterbank(n_mels, n_fft, sr, f_min, f_max):
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    pts = inv(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(1, n_mels + 1):
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if pts[m - 1] <= f <= pts[m]:
                fb[m - 1, k] = (f - pts[m - 1]) / (pts[m] - pts[m - 1])
            elif pts[m] < f <= pts[m + 1]:
                fb[m - 1, k] = (pts[m + 1] - f) / (pts[m + 1] - pts[m])
    return fb


def test_mel_filterbank_matches_formula():
    fb = audio.mel_filterbank(40, 256, 8000)
    assert fb.shape == (40, 129) and fb.dtype == torch.float32
    np.testing.assert_allclose(fb.numpy(), _numpy_filterbank(40, 256, 8000, 0, 4000), atol=1e-6)
    fb = audio.mel_filterbank(64, 512, 16000, f_min=125, f_max=7500)
    np.testing.assert_allclose(fb.numpy(), _numpy_filterbank(64, 512, 16000, 125, 7500), atol=1e-6)
    assert float(audio.hz_to_mel(700)) == pytest.approx(2595 * np.log10(2))
    with pytest.raises(ValueError, match="f_max"):
        audio.mel_filterbank(10, 256, 8000, f_max=5000)


def test_log_mel_matches_numpy_stft():
    x, sr = audio.read_wav(FSDD_WAV)
    got = audio.log_mel(x, sr)
    win, hop, n_fft = 200, 80, 256
    n_frames = 1 + (len(x) - win) // hop
    assert got.shape == (n_frames, 40)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    xs = x.numpy().astype(np.float64)
    frames = np.stack([xs[t * hop: t * hop + win] * hann for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, n=n_fft)) ** 2
    expected = np.log(power @ _numpy_filterbank(40, n_fft, sr, 0, sr / 2).T + 1e-6)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-3, rtol=1e-4)
    batch = audio.log_mel(torch.stack([x, x]), sr)
    assert batch.shape == (2, n_frames, 40) and torch.allclose(batch[1], got)
    assert audio.log_mel(torch.zeros(50), sr).shape == (1, 40)  # shorter than a window: one frame


def test_pad_or_crop():
    x = torch.arange(12.0).reshape(6, 2)
    y, m = audio.pad_or_crop(x, 10)
    assert y.shape == (10, 2) and torch.equal(y[:6], x) and (y[6:] == 0).all()
    assert m.tolist() == [True] * 6 + [False] * 4
    y, m = audio.pad_or_crop(x, 8, value=-13.8)  # log-mel silence
    assert torch.equal(y[:6], x) and (y[6:] == -13.8).all() and m.tolist() == [True] * 6 + [False] * 2
    y, m = audio.pad_or_crop(x, 4)
    assert torch.equal(y, x[1:5]) and m.all()
    y, m = audio.pad_or_crop(x, 3, dim=1)
    assert y.shape == (6, 3) and m.tolist() == [True, True, False]
    g = torch.Generator().manual_seed(1)
    starts = {int(audio.pad_or_crop(torch.arange(10), 4, random=True, generator=g)[0][0]) for _ in range(50)}
    assert starts <= set(range(7)) and len(starts) > 1
    with pytest.raises(ValueError, match="length"):
        audio.pad_or_crop(x, 0)


# ----------------------------------------------------------------------------- feature cache

class CountingEncoder:
    description = "mean-pool-4x4 v1"

    def __init__(self):
        self.calls = 0

    def __call__(self, frames):
        self.calls += 1
        x = frames.float() / 255
        return torch.nn.functional.avg_pool2d(x[:, None], 15).flatten(1)  # (n, 16)


def test_feature_cache_build_reopen_and_reuse(nh, tmp_path, capsys):
    vids = [("a", nh[:7]), ("b", nh[300:312]), ("c", nh[600:605])]
    enc = CountingEncoder()
    cache = features.cache_features("faces", vids, enc, out_dir=tmp_path, batch_size=4)
    assert "caching features" in capsys.readouterr().err  # tqdm progress bar
    assert enc.calls == 2 + 3 + 2
    assert len(cache) == 3 and cache.keys == ["a", "b", "c"] and cache.dim == 16
    assert torch.allclose(cache["b"], enc(nh[300:312]))
    m = json.loads((tmp_path / "faces" / "manifest.json").read_text())
    assert m["offsets"] == [0, 7, 19] and m["lengths"] == [7, 12, 5] and m["encoder"] == enc.description
    arr = np.load(tmp_path / "faces" / "features.npy", mmap_mode="r")
    assert arr.shape == (24, 16) and arr.dtype == np.float32

    reopened = features.FeatureCache.open(tmp_path / "faces")
    assert torch.equal(reopened["c"], cache["c"]) and "a" in reopened
    with pytest.raises(KeyError, match="zz"):
        reopened["zz"]

    enc.calls = 0
    again = features.cache_features("faces", vids, enc, out_dir=tmp_path, batch_size=4)
    assert enc.calls == 0 and torch.equal(again["a"], cache["a"])

    changed = [("a", nh[:7]), ("b", nh[301:313]), ("c", nh[600:605])]
    features.cache_features("faces", changed, enc, out_dir=tmp_path, batch_size=4)
    assert enc.calls > 0
    enc.calls = 0
    enc.description = "mean-pool-4x4 v2"
    features.cache_features("faces", changed, enc, out_dir=tmp_path, batch_size=4, progress=False)
    assert enc.calls > 0
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "faces").iterdir())


def test_feature_cache_corruption_is_detected(nh, tmp_path):
    enc = CountingEncoder()
    features.cache_features(tmp_path / "c", [("x", nh[:6])], enc, progress=False)
    f = tmp_path / "c" / "features.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        features.FeatureCache.open(tmp_path / "c")
    f.write_bytes(bytes(data[:-40]))
    with pytest.raises(ValueError, match="truncated"):
        features.FeatureCache.open(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="manifest"):
        features.FeatureCache.open(tmp_path / "nothing")
    enc.calls = 0
    with pytest.warns(UserWarning, match="recomputing") as caught:
        rebuilt = features.cache_features(tmp_path / "c", [("x", nh[:6])], enc, progress=False)
    assert caught[0].filename == __file__  # the caller's line, not the library's
    assert enc.calls == 1 and rebuilt["x"].shape == (6, 16)


def test_feature_cache_from_video_paths(nh, tmp_path):
    p = video.write_video(tmp_path / "t.mkv", nh[:9], codec="ffv1")
    enc = CountingEncoder()
    enc.description = "rgb-mean"
    enc_fn = lambda fr: fr.float().mean(dim=(1, 2))  # (n, 3)  # noqa: E731
    cache = features.cache_features(tmp_path / "pc", [p], enc_fn, progress=False, description="rgb-mean")
    assert cache.keys == [str(p)] and cache[str(p)].shape == (9, 3)
    assert torch.allclose(cache[str(p)][:, 0], nh[:9].float().mean(dim=(1, 2)))


# ----------------------------------------------------------------------------- YouTube-8M

# A minimal protobuf + TFRecord writer, written from the format description:
# tag = field << 3 | wire; wire 0 varint, 2 length-delimited, 5 fixed32.
# Example{features=1}; Features{map<string,Feature> feature=1}; map entry {key=1, value=2};
# Feature{bytes_list=1, float_list=2, int64_list=3}; *List{value=1} (floats/int64 packed);
# SequenceExample{context=1, feature_lists=2}; FeatureLists{map<string,FeatureList> feature_list=1};
# FeatureList{repeated Feature feature=1}.

def _vint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _vint(field << 3 | 2) + _vint(len(payload)) + payload


def _bytes_feature(values):
    return _ld(1, b"".join(_ld(1, v) for v in values))


def _float_feature(values):
    return _ld(2, _ld(1, np.asarray(values, "<f4").tobytes()))


def _int64_feature(values, packed=True):
    if packed:
        return _ld(3, _ld(1, b"".join(_vint(int(v)) for v in values)))
    return _ld(3, b"".join(_vint(1 << 3 | 0) + _vint(int(v)) for v in values))


def _features(d):
    return b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, v)) for k, v in d.items())


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data):
    c = _crc32c_bitwise(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(records):
    out = b""
    for r in records:
        length = struct.pack("<Q", len(r))
        out += length + struct.pack("<I", _masked(length)) + r + struct.pack("<I", _masked(r))
    return out


def test_crc32c_known_value():
    assert features.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert features.crc32c(b"") == 0
    data = bytes(range(256)) * 3
    assert features.crc32c(data) == _crc32c_bitwise(data)
    for n in (1 << 16, 200_003):  # the parallel-lane path agrees with the byte-serial one
        big = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
        assert features.crc32c(big) == features._crc_update_serial(0xFFFFFFFF, big) ^ 0xFFFFFFFF


def test_dequantize_values():
    q = torch.tensor([0, 128, 255], dtype=torch.uint8)
    expected = [-2 + 4 / 512, 128 * 4 / 255 - 2 + 4 / 512, 2 + 4 / 512]
    assert torch.allclose(features.dequantize(q), torch.tensor(expected))
    assert torch.allclose(features.dequantize(q, 1.0, 0.0), q.float() / 255 + 1 / 512)


def test_youtube8m_video_level_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgb, aud = rng.normal(size=(2, 1024)).astype(np.float32), rng.normal(size=(2, 128)).astype(np.float32)
    recs = []
    for i, labels in enumerate([[3, 17, 4000], [0]]):
        recs.append(_ld(1, _features({
            "id": _bytes_feature([f"vid{i}".encode()]),
            "labels": _int64_feature(labels, packed=(i == 0)),
            "mean_rgb": _float_feature(rgb[i]),
            "mean_audio": _float_feature(aud[i]),
        })))
    path = tmp_path / "train0.tfrecord"
    path.write_bytes(_tfrecord(recs))
    got = list(features.read_youtube8m(path, level="video"))
    assert [g["id"] for g in got] == ["vid0", "vid1"]
    assert got[0]["labels"].tolist() == [3, 17, 4000] and got[1]["labels"].dtype == torch.int64
    assert torch.equal(got[0]["rgb"], torch.from_numpy(rgb[0])) and got[1]["audio"].shape == (128,)
    assert torch.equal(got[1]["audio"], torch.from_numpy(aud[1]))


def test_youtube8m_frame_level_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    q_rgb = rng.integers(0, 256, size=(5, 1024), dtype=np.uint8)
    q_aud = rng.integers(0, 256, size=(5, 128), dtype=np.uint8)
    context = _features({"id": _bytes_feature([b"abcd"]), "labels": _int64_feature([7, 9])})
    lists = b"".join(
        _ld(1, _ld(1, name.encode()) + _ld(2, b"".join(_ld(1, _bytes_feature([row.tobytes()])) for row in q)))
        for name, q in (("rgb", q_rgb), ("audio", q_aud)))
    path = tmp_path / "frame.tfrecord"
    path.write_bytes(_tfrecord([_ld(1, context) + _ld(2, lists)]))
    (got,) = list(features.read_youtube8m(path, level="frame"))
    assert got["id"] == "abcd" and got["labels"].tolist() == [7, 9]
    assert got["rgb"].shape == (5, 1024) and got["audio"].shape == (5, 128)
    assert torch.allclose(got["rgb"], torch.from_numpy(q_rgb * (4 / 255) + 4 / 512 - 2).float(), atol=1e-6)
    assert torch.allclose(got["audio"], features.dequantize(torch.from_numpy(q_aud)))


def test_tfrecord_corruption_detected(tmp_path):
    rec = _ld(1, _features({"id": _bytes_feature([b"x"]), "mean_rgb": _float_feature(np.ones(8))}))
    data = bytearray(_tfrecord([rec, rec]))
    bad = tmp_path / "bad.tfrecord"
    data[len(data) - 10] ^= 0x01  # inside the second record's payload
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad.tfrecord.*record 1.*data CRC"):
        list(features.read_youtube8m(bad))
    assert len(list(features.read_tfrecords(bad, verify=False))) == 2
    good = _tfrecord([rec])
    (tmp_path / "len.tfrecord").write_bytes(good[:3] + bytes([good[3] ^ 0x10]) + good[4:])
    with pytest.raises(ValueError, match="length CRC"):
        list(features.read_tfrecords(tmp_path / "len.tfrecord"))
    (tmp_path / "short.tfrecord").write_bytes(good[:-6])
    with pytest.raises(ValueError, match=r"short.tfrecord.*truncated"):
        list(features.read_tfrecords(tmp_path / "short.tfrecord"))


@pytest.mark.parametrize("module", [video, audio, features])
def test_doctests(module):
    import doctest
    assert doctest.testmod(module).failed == 0


class _Wrap(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, frames):
        return self.net(frames.float() / 255)


def test_feature_cache_module_encoder(nh, tmp_path):
    torch.manual_seed(0)
    enc = _Wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3600, 4), torch.nn.Dropout(0.5)))
    vids = [("v", nh[:6])]
    first = features.cache_features(tmp_path / "m", vids, enc, progress=False)["v"]
    assert enc.training  # eval() during caching (no dropout), training mode restored after
    with torch.no_grad():
        assert torch.allclose(first, enc.eval()(nh[:6]), atol=1e-6)
        enc.net[1].weight.add_(1.0)  # new weights -> new description -> recomputed
    second = features.cache_features(tmp_path / "m", vids, enc, progress=False)["v"]
    assert not torch.allclose(first, second)


def test_the_cache_key_sees_bound_arguments_and_captured_values(tmp_path):
    # every functools.partial was "functools.partial" and a closure only its name: a changed argument or
    # captured value returned the stale features
    import functools

    def scaled(frames, k=1.0):
        return torch.as_tensor(frames).flatten(1).float()[:, :2] * k

    def make(k):
        return lambda frames: scaled(frames, k)

    frames = torch.arange(12.0).reshape(3, 2, 2)
    first = features.cache_features(tmp_path / "p", [("x", frames)], functools.partial(scaled, k=2.0), progress=False)
    again = features.cache_features(tmp_path / "p", [("x", frames)], functools.partial(scaled, k=3.0), progress=False)
    assert torch.equal(first["x"] * 1.5, again["x"])
    weights = torch.ones(2)
    described = features.encoder_description(make(weights))
    assert described != features.encoder_description(make(torch.full((2,), 2.0)))
    assert described == features.encoder_description(make(torch.ones(2)))  # the values, not the objects
    close = features.cache_features(tmp_path / "c", [("x", frames)], make(1.0), progress=False)
    far = features.cache_features(tmp_path / "c", [("x", frames)], make(100.0), progress=False)
    assert torch.equal(close["x"] * 100, far["x"])


def test_two_writers_of_one_cache_take_turns(tmp_path):
    # unlocked, a writer's manifest could describe the other writer's features (and pass the checksum)
    import threading
    frames = torch.arange(48.0).reshape(12, 2, 2)
    results, errors = {}, []

    def write(scale):
        try:
            encoder = lambda f: torch.as_tensor(f).flatten(1).float() * scale  # noqa: E731
            results[scale] = features.cache_features(tmp_path / "c", [("x", frames)], encoder, batch_size=1,
                                                     progress=False)["x"].clone()
        except Exception as err:  # noqa: BLE001 - any failure of either writer fails the test
            errors.append(err)

    threads = [threading.Thread(target=write, args=(s,)) for s in (1.0, 2.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and torch.equal(results[2.0], 2 * results[1.0])
    final = features.FeatureCache.open(tmp_path / "c")  # the manifest describes the features beside it
    assert torch.equal(final["x"], results[1.0]) or torch.equal(final["x"], results[2.0])
