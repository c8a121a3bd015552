"""Audio-visual built-in data on the real files: Notting-Hill face tracks (orientation, track cuts,
video round trips, folds, the built-in set) and audio-visual digits (MNIST + FSDD, cache)."""
import json
import shutil

import numpy as np
import pytest
import torch

from deepmetric.data import av, data_root, load_dataset
from deepmetric.data.audio import read_wav
from deepmetric.data.datasets import read_idx
from deepmetric.data.video import frame_correlations

DATA = data_root()  # $DEEPMETRIC_DATA, else ../shared/data beside the checkout
NH = DATA / "notting-hill" / "Notting-Hill.mat"
FSDD = DATA / "fsdd" / "recordings"
MNIST = DATA / "mnist-test"



@pytest.fixture(scope="module")
def raw_x():
    from scipy.io import loadmat
    return loadmat(str(NH))["X"]


@pytest.fixture(scope="module")
def tracks():
    return av.notting_hill_tracks(DATA, threshold=0.5, min_length=8)


def _pearson(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


# ----------------------------------------------------------------------------- Notting-Hill

def test_frames_are_column_major_and_upright(raw_x):
    frames, actor, path = av.read_notting_hill(DATA)
    assert frames.shape == (1494, 60, 60) and frames.dtype == torch.uint8 and path == NH
    assert torch.equal(frames[7], torch.from_numpy(raw_x[:, 7].reshape(60, 60, order="F")))
    assert actor.unique().tolist() == [0, 1, 2, 3, 4] and actor.dtype == torch.int64
    # the README's mean consecutive correlation (Pearson is blind to transposing both frames, so it
    # cannot tell 'F' from 'C' by itself) ...
    assert 0.90 < float(frame_correlations(frames).mean()) < 0.92
    # ... but a face is left-right symmetric, not up-down: the mean face tells the orientation
    f_mean = frames.double().mean(0).numpy()
    c_mean = np.stack([raw_x[:, j].reshape(60, 60, order="C") for j in range(raw_x.shape[1])]).mean(0)
    assert _pearson(f_mean, f_mean[:, ::-1]) > 0.7 > 0.2 > _pearson(f_mean, f_mean[::-1])
    assert _pearson(c_mean, c_mean[::-1]) > 0.7 > 0.2 > _pearson(c_mean, c_mean[:, ::-1])


@pytest.mark.parametrize("threshold,segments,kept", [(0.3, 21, 19), (0.5, 26, 22), (0.7, 49, 31)])
def test_track_counts_match_readme(threshold, segments, kept):
    assert len(av.notting_hill_tracks(DATA, threshold, min_length=1).tracks) == segments
    assert len(av.notting_hill_tracks(DATA, threshold, min_length=8).tracks) == kept


def test_tracks_within_one_actor_block(tracks):
    _, all_actor, _ = av.read_notting_hill(DATA)
    frames, actor, track, spans, source = tracks
    assert 19 <= len(spans) <= 31 and len(frames) == len(actor) == len(track) == len(source)
    assert spans[0].start == 0 and spans[-1].end == len(frames)
    for tid, (a, s, e) in enumerate(spans):
        assert e - s >= 8
        assert (track[s:e] == tid).all() and (actor[s:e] == a).all()
        src = source[s:e]
        assert torch.equal(src, torch.arange(int(src[0]), int(src[0]) + e - s))  # consecutive frames
        assert (all_actor[src] == a).all()                                        # one actor block
        if tid + 1 < len(spans):
            assert spans[tid + 1].start == e
    assert torch.equal(track.unique(), torch.arange(len(spans)))


@pytest.mark.parametrize("codec,max_mae", [("libx264", 1.0), ("ffv1", 0.0)])
def test_encode_decode_round_trip(tracks, tmp_path, codec, max_mae):
    chosen = [tracks.tracks[1], tracks.tracks[-1]]  # two actors
    chosen = [(a, s, min(e, s + 24)) for a, s, e in chosen]
    manifest = av.encode_tracks(tracks.frames, chosen, tmp_path, codec=codec, fps=25, track_ids=[1, 21])
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest and on_disk["codec"] == codec
    assert [t["track"] for t in on_disk["tracks"]] == [1, 21]
    assert [t["actor"] for t in on_disk["tracks"]] == [chosen[0][0], chosen[1][0]]
    assert all((tmp_path / t["file"]).is_file() for t in on_disk["tracks"])
    decoded = av.decode_tracks(tmp_path)
    for (a, s, e), got, entry in zip(chosen, decoded, on_disk["tracks"]):
        want = tracks.frames[s:e]
        assert got.shape == want.shape == (entry["frames"], 60, 60) and got.dtype == torch.uint8
        err = (got.float() - want.float()).abs()
        assert float(err.mean()) <= max_mae
        if max_mae == 0:
            assert torch.equal(got, want)
        # order: each decoded frame is nearest to its own original
        d = torch.cdist(got.reshape(len(got), -1).float(), want.reshape(len(want), -1).float())
        assert torch.equal(d.argmin(1), torch.arange(len(got)))


def test_an_interrupted_re_encode_leaves_no_manifest(tracks, tmp_path, monkeypatch):
    # the old manifest stayed valid while the videos were overwritten: decode gave other frames without error
    from deepmetric.data import video
    a, s, _ = tracks.tracks[0]
    spans = [(a, s, s + 8), (a, s + 8, s + 16)]
    av.encode_tracks(tracks.frames, spans, tmp_path, codec="ffv1")
    written = []

    def write_then_stop(path, frames, **options):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        return real(path, frames, **options)

    real = video.write_video
    monkeypatch.setattr(video, "write_video", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        av.encode_tracks(tracks.frames.flip(1), spans, tmp_path, codec="ffv1")
    with pytest.raises(FileNotFoundError, match="manifest"):
        av.decode_tracks(tmp_path)


def test_decode_names_the_bad_file(tracks, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        av.decode_tracks(tmp_path)
    a, s, _ = tracks.tracks[0]
    av.encode_tracks(tracks.frames, [(a, s, s + 8)], tmp_path, codec="ffv1")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["tracks"][0]["frames"] = 9
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="track_0000.mkv"):
        av.decode_tracks(tmp_path)


def test_missing_data_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Notting-Hill.mat"):
        av.read_notting_hill(tmp_path)
    with pytest.raises(FileNotFoundError, match="speakers.csv"):
        av.fsdd_log_mels(tmp_path, cache=False)
    # every speaker says every digit equally often, numbered from 0: a recording missing inside a run, at
    # its end, or a whole (digit, speaker) pair is named, not skipped (the last two loaded silently)
    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    (tmp_path / "fsdd" / "speakers.csv").write_text("speaker,gender\ntheo,male\nanna,female\n")
    gone = {"2_theo_1.wav", "5_anna_0.wav", "5_anna_1.wav", "5_anna_2.wav", "9_anna_2.wav"}
    for name in {f"{d}_{s}_{i}.wav" for d in range(10) for s in ("theo", "anna") for i in range(3)} - gone:
        shutil.copy(FSDD / "0_jackson_0.wav", recordings / name)
    with pytest.raises(FileNotFoundError, match="5 recording\\(s\\) missing .*: 2_theo_1.wav, 5_anna_0.wav, "
                                                "5_anna_1.wav, 5_anna_2.wav, 9_anna_2.wav"):
        av.fsdd_log_mels(tmp_path, cache=False)


def test_track_folds_stratified_and_disjoint(tracks):
    spans = tracks.tracks
    folds = av.track_folds(spans, k=5, seed=3)
    assert len(folds) == 5
    tested = torch.cat([test for _, test in folds])
    assert torch.equal(tested.sort().values, torch.arange(len(spans)))  # every track tested once
    actors = torch.tensor([t.actor for t in spans])
    for train, test in folds:
        assert not set(train.tolist()) & set(test.tolist())
        assert len(train) + len(test) == len(spans)
        assert set(actors[train].tolist()) == set(actors.tolist())     # every actor trains
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 1
    again = av.track_folds(spans, k=5, seed=3)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, again))
    with pytest.raises(ValueError, match="k"):
        av.track_folds(spans, k=1)


def test_builtin_notting_hill_frames_and_clips(tracks):
    ds = load_dataset("notting-hill", data_dir=DATA)
    assert ds.x.shape == (len(tracks.frames), 1, 60, 60) and ds.x.dtype == torch.float32
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert torch.equal(ds.y, torch.stack([tracks.actor, tracks.track], 1)) and ds.y.dtype == torch.int64
    assert torch.equal(ds.groups, tracks.track) and ds.num_classes == len(tracks.tracks)
    assert torch.equal((ds.x[:, 0] * 255).round().to(torch.uint8), tracks.frames)
    clips = load_dataset("notting-hill", data_dir=DATA, clip_length=8)
    assert clips.x.shape[1:] == (8, 3600) and torch.equal(clips.groups, clips.y[:, 1])
    first = int(clips.ids[0])  # .mat column of the first clip's first frame
    row = int(torch.nonzero(tracks.source == first)[0])
    assert torch.equal(clips.x[0], ds.x[row:row + 8].reshape(8, 3600))
    expected = sum((e - s) // 8 for _, s, e in tracks.tracks)
    assert len(clips) == expected


# ----------------------------------------------------------------------------- audio-visual digits

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("avcache")


@pytest.fixture(scope="module")
def digits(cache_dir):
    return av.av_digits(DATA, seed=0, duration=0.5, cache=cache_dir)


def test_av_digits_shapes_and_labels(digits):
    mnist_labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    for side, n in (("train", 2000), ("test", 1000)):  # 4 / 2 speakers x 10 digits x 50
        d = digits[side]
        assert d["image"].shape == (n, 1, 28, 28) and d["image"].dtype == torch.float32
        assert 0 <= float(d["image"].min()) and float(d["image"].max()) <= 1
        assert d["audio"].shape == (n, 48, 40) and d["audio_mask"].shape == (n, 48)
        assert d["audio_mask"].dtype == torch.bool and d["y"].shape == (n, 2) and d["y"].dtype == torch.int64
        assert torch.equal(torch.from_numpy(mnist_labels)[d["image_index"]], d["y"][:, 0])  # same digit
        assert torch.equal(d["recording"] // 10_000, d["y"][:, 0])
        assert len(d["image_index"].unique()) == n and len(d["recording"].unique()) == n
    assert sorted(digits["train"]["y"][:, 1].unique().tolist()) == [0, 1, 2, 3]
    assert sorted(digits["test"]["y"][:, 1].unique().tolist()) == [4, 5]
    for key in ("image_index", "recording"):
        assert not set(digits["train"][key].tolist()) & set(digits["test"][key].tolist())


def test_av_digits_speaker_ids_and_mask(digits):
    speakers = [line.split(",")[0] for line in (DATA / "fsdd" / "speakers.csv").read_text().splitlines()[1:]]
    d = digits["train"]
    for i in (0, 777, 1999):
        digit, speaker = d["y"][i].tolist()
        rec = int(d["recording"][i])
        path = FSDD / f"{digit}_{speakers[speaker]}_{rec % 100}.wav"
        signal, rate = read_wav(path)
        real = min(1 + (len(signal) - 200) // 80, 48)
        mask = d["audio_mask"][i]
        assert int(mask.sum()) == real and mask[:real].all()                 # a prefix of real frames
        # padded with silence, log(1e-6) (was 0: louder than most real frames, a length cue without the mask)
        assert (d["audio"][i][~mask] == np.float32(np.log(1e-6))).all() and torch.isfinite(d["audio"][i]).all()
    lengths = d["audio_mask"].sum(1)
    assert (lengths == 48).any() and (lengths < 48).any()                    # some cropped, some padded


def test_av_digits_cache_reused_and_other_split(digits, cache_dir, monkeypatch):
    assert len(list(cache_dir.glob("fsdd_logmel_*.npz"))) == 1

    def fail(path):
        raise AssertionError(f"read {path}: the cache should have been used")

    monkeypatch.setattr(av, "read_wav", fail)
    again = av.av_digits(DATA, seed=0, duration=0.5, cache=cache_dir)
    for key, value in digits["train"].items():
        assert torch.equal(again["train"][key], value)
    by_rec = av.av_digits(DATA, n_pairs_per_digit=30, split="recordings", cache=cache_dir)
    for side in ("train", "test"):
        assert by_rec[side]["y"].shape == (300, 2)
        assert sorted(by_rec[side]["y"][:, 1].unique().tolist()) == list(range(6))
    idx = {side: (by_rec[side]["recording"] % 100) for side in by_rec}
    assert idx["train"].max() < 25 <= idx["test"].min()
    for key in ("image_index", "recording"):
        assert not set(by_rec["train"][key].tolist()) & set(by_rec["test"][key].tolist())
    with pytest.raises(ValueError, match="inside the data directory"):
        av.fsdd_log_mels(DATA, cache=DATA / "cache")
