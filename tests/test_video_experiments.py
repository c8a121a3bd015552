"""Logic of the video and audio-visual experiments (bench/notting_hill.py, bench/av_digits.py):
clip building, fold isolation, the frozen encoder and its cache, quadlet construction, exact order
preservation, config overrides, and tiny end-to-end runs on the real data."""
from __future__ import annotations

import importlib
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

import deepmetric as dm
from deepmetric.data.av import track_folds
from deepmetric.models.temporal import ModalityEncoders

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
nh = importlib.import_module("notting_hill")
avd = importlib.import_module("av_digits")


def synthetic_tracks():
    """Tracks (actor, start, end) of lengths 10, 3, 12, 9, 8, 11 over 3 actors, 2 tracks each."""
    lengths = [10, 3, 12, 9, 8, 11]
    actors = [0, 0, 1, 1, 2, 2]
    tracks, start = [], 0
    for a, n in zip(actors, lengths):
        tracks.append((a, start, start + n))
        start += n
    features = [torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + 100 * t for t, n in enumerate(lengths)]
    return tracks, features


# ----------------------------------------------------------------------------- clips and folds


def test_track_clips_windows_of_each_track():
    tracks, features = synthetic_tracks()
    x, y, start = nh.track_clips(features, tracks, [0, 1, 2], length=4, stride=2)
    # track 0 (10 frames): starts 0, 2, 4, 6; track 1 (3 frames): none; track 2 (12): 0..8
    assert y.tolist() == [[0, 0]] * 4 + [[1, 2]] * 5
    assert start.tolist() == [0, 2, 4, 6, 0, 2, 4, 6, 8]
    for clip, (_, tid), s in zip(x, y.tolist(), start.tolist()):
        assert torch.equal(clip, features[tid][s:s + 4])
    assert x.shape == (9, 4, 2)


def test_track_clips_error_when_every_track_is_short():
    tracks, features = synthetic_tracks()
    with pytest.raises(ValueError, match="no track"):
        nh.track_clips(features, tracks, [1], length=4, stride=2)


def test_fold_data_keeps_test_tracks_out_of_training():
    tracks, features = synthetic_tracks()
    for train_ids, test_ids in track_folds(tracks, k=2, seed=0):
        data = nh.fold_data(features, tracks, train_ids, test_ids, length=3, stride=1)
        test = set(test_ids.tolist())
        for key in ("clip_y", "frame_y", "track_y"):
            assert not test & set(data["train"][key][:, 1].tolist())
            assert set(data["test"][key][:, 1].tolist()) <= test
        assert len(data["train"]["frames"]) == sum(len(features[i]) for i in train_ids.tolist())
    with pytest.raises(ValueError, match="both sides"):
        nh.fold_data(features, tracks, [0, 1, 2], [2, 3], length=3, stride=1)


def test_every_real_track_is_tested_once_and_never_trained_on():
    tracks = [(a, 0, 1) for a in (0,) * 5 + (1,) * 6 + (2,) * 3 + (3,) * 4 + (4,) * 4]  # real counts
    folds = track_folds(tracks, k=5, seed=0)
    tested = torch.cat([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(len(tracks)))
    for train_ids, test_ids in folds:
        assert not torch.isin(train_ids, test_ids).any()
        assert {tracks[i][0] for i in train_ids.tolist()} == set(range(5))  # every actor trained on


# ----------------------------------------------------------------------------- frozen encoder


def test_pca_encoder_is_fitted_on_training_frames_only():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 100, (30, 6, 6), generator=g, dtype=torch.uint8)
    enc = nh.PCAEncoder.fit(train, 4)
    assert torch.allclose(enc.mean, train.flatten(1).float().mean(0) / 255, atol=1e-6)
    z = enc(train)
    assert z.shape == (30, 4)
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-4)                # centred on the training mean
    assert abs(float(z[:, 0].std()) - 1.0) < 1e-4                               # scaled by the first std
    flat = train.flatten(1).double() / 255
    _, s, vh = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
    assert torch.allclose((enc.components.double() @ vh[:4].T).abs(), torch.eye(4, dtype=torch.double), atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        nh.PCAEncoder.fit(train.float(), 4)


def test_fold_features_are_cached_and_read_back(tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    decoded = [torch.randint(0, 255, (n, 6, 6), generator=g, dtype=torch.uint8) for n in (5, 7, 6)]
    first = nh.fold_features(decoded, None, [0, 1], 3, tmp_path, "fold0")
    assert "computed with the frozen encoder" in capsys.readouterr().out
    second = nh.fold_features(decoded, None, [0, 1], 3, tmp_path, "fold0")
    assert "read from the cache" in capsys.readouterr().out
    assert [f.shape for f in first] == [(5, 3), (7, 3), (6, 3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # the PCA of another fold (other training tracks) is another encoder: recomputed, not reused
    nh.fold_features(decoded, None, [1, 2], 3, tmp_path, "fold0")
    assert "computed with the frozen encoder" in capsys.readouterr().out


# ----------------------------------------------------------------------------- quadlets


def test_hierarchical_batches_give_every_query_a_quadlet():
    tracks, features = synthetic_tracks()
    _, y, _ = nh.track_clips(features, tracks, range(len(tracks)), length=3, stride=1)
    sampler = nh.hierarchical_sampler(y, {"actors": 3, "tracks_per_actor": 2, "clips_per_track": 2}, seed=0)
    batches = list(itertools.islice(nh.endless(sampler), 12))
    assert len(batches) == 12
    for batch in batches:
        b = y[torch.as_tensor(batch)]
        for r in range(len(b)):
            same_actor = b[:, 0] == b[r, 0]
            same_track = same_actor & (b[:, 1] == b[r, 1])
            assert same_track.sum() >= 2                       # q and a positive p of the same track
            assert (same_actor & ~same_track).any()            # an intermediate: same actor, other track
            assert (~same_actor).any()                         # a negative: other actor


def test_quadlet_miner_on_actor_track_labels():
    tracks, features = synthetic_tracks()
    _, y, _ = nh.track_clips(features, tracks, range(len(tracks)), length=3, stride=3)
    q, p, i, n = dm.mining.create("quadlet")(torch.randn(len(y), 4), y)
    assert len(q) > 0
    assert (q != p).all()
    assert (y[q] == y[p]).all()                                          # same track
    assert ((y[q, 0] == y[i, 0]) & (y[q, 1] != y[i, 1])).all()           # same actor, other track
    assert (y[q, 0] != y[n, 0]).all()                                    # other actor


def brute_force_order(q, q_y, q_ids, g, g_y, g_ids):
    ok = total = 0
    d = torch.cdist(q.double(), g.double())
    for r in range(len(q)):
        for p, i, n in itertools.product(range(len(g)), repeat=3):
            if not (g_ids[p] != q_ids[r] and (g_y[p] == q_y[r]).all()):
                continue
            if not (g_y[i, 0] == q_y[r, 0] and g_y[i, 1] != q_y[r, 1]):
                continue
            if g_y[n, 0] == q_y[r, 0]:
                continue
            total += 1
            ok += bool(d[r, p] < d[r, i] < d[r, n])
    return ok / total if total else float("nan")


def test_order_preservation_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    gallery = torch.randn(14, 2, generator=g)
    g_y = torch.tensor([[a, t] for a, t in [(0, 0)] * 4 + [(0, 1)] * 3 + [(1, 2)] * 4 + [(1, 3)] * 3])
    ids = torch.arange(14)
    q_rows = torch.tensor([0, 1, 4, 8, 12])
    got = nh.order_preservation(gallery[q_rows], g_y[q_rows], q_rows, gallery, g_y, ids)
    want = brute_force_order(gallery[q_rows], g_y[q_rows], q_rows, gallery, g_y, ids)
    assert 0 < want < 1
    assert got == pytest.approx(want)
    # perfectly ordered embedding: tracks tight, actors apart
    ordered = torch.tensor([[10.0 * a + 1.0 * (t % 2), 0.0] for a, t in g_y.tolist()])
    ordered += 0.01 * torch.randn(14, 2, generator=g)
    assert nh.order_preservation(ordered[q_rows], g_y[q_rows], q_rows, ordered, g_y, ids) == 1.0
    # no intermediate anywhere: NaN, not 0
    flat_y = torch.stack([g_y[:, 1], g_y[:, 1]], dim=1)
    assert math.isnan(nh.order_preservation(gallery[q_rows], flat_y[q_rows], q_rows, gallery, flat_y, ids))


# ----------------------------------------------------------------------------- config and end to end


def test_load_config_overrides_and_errors(tmp_path):
    config = nh.load_config(nh.CONFIG, ["steps=7", "clip.length=4", "track_level.poolings=[mean]"])
    assert config["steps"] == 7 and config["clip"]["length"] == 4 and config["clip"]["stride"] == 4
    assert config["track_level"]["poolings"] == ["mean"]
    with pytest.raises(ValueError, match="key=value"):
        nh.load_config(nh.CONFIG, ["steps"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        nh.load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown"):
        avd.load_config(avd.CONFIG, ["models=[visual, smell]"])


def test_notting_hill_end_to_end_one_fold(tmp_path, capsys):
    overrides = ["steps=2", f"out={tmp_path}", "track_level.poolings=[attention]",
                 "fine_grained.losses={triplet: {loss: {name: triplet}, miner: {name: semi-hard}}, "
                 "quadlet: {loss: {name: quadlet}}}"]
    args = ["--folds-only", "1", "--out-md", str(tmp_path / "t.md")] + [a for o in overrides for a in ("--set", o)]
    folds_a, folds_b = nh.main(args)
    out = capsys.readouterr().out
    assert "encoded 22 tracks with libx264" in out and "largest grey-level change" in out
    assert set(folds_b[0]) == {"no training (frozen PCA, mean over frames)", "triplet", "quadlet"}
    for scores in folds_b[0].values():
        assert 0 <= scores["actor_map_at_r"] <= 1 and 0 <= scores["track_map_at_r"] <= 1
        assert 0 <= scores["ndcg_at_10"] <= 1
    assert len(folds_a[0]) == 3
    table = (tmp_path / "t.md").read_text()
    assert "| frozen PCA, mean over frames |" in table and "mean ± std over folds [1] only." in table
    with pytest.raises(SystemExit):  # refused before any work
        nh.main(["--folds-only", "5"])
    assert "--folds-only: expected fold numbers 0 to 4, got [5]" in capsys.readouterr().err


def test_standardise_audio_uses_training_frames_and_zeroes_padding():
    g = torch.Generator().manual_seed(0)

    def side(n):
        mask = torch.ones(n, 5, dtype=torch.bool)
        mask[:, 3:] = False
        audio = torch.randn(n, 5, 2, generator=g) * 3 + 1
        return {"image": torch.rand(n, 1, 4, 4, generator=g), "audio": audio, "audio_mask": mask,
                "y": torch.zeros(n, 2, dtype=torch.int64)}

    data = avd.standardise_audio({"train": side(20), "test": side(10)})
    train = data["train"]["frames"]
    assert torch.allclose(train[:, :3].reshape(-1, 2).mean(0), torch.zeros(2), atol=1e-5)
    assert (data["test"]["frames"][:, 3:] == 0).all()
    assert data["train"]["audio"].shape == (20, 10) and data["train"]["image"].shape == (20, 16)


def test_cross_modal_loss_pulls_both_encoders():
    torch.manual_seed(0)
    enc = ModalityEncoders({"audio": 6, "image": 4}, hidden=(8,), out_features=3)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    value = avd.cross_modal_loss(dm.losses.create("multi-similarity"), enc(torch.randn(6, 6), modality="audio"),
                                 enc(torch.randn(6, 4), modality="image"), y)
    value.backward()
    assert value > 0
    for m in ("audio", "image"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.encoders[m].parameters())


def test_av_digits_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPMETRIC_CACHE", str(tmp_path / "cache"))  # compute the log-mels, not read ~/.cache
    args = ["--set", "steps=2", "--set", "seeds=[0]", "--set", "data.n_pairs_per_digit=6",
            "--set", "models=[visual, audio-gru, late-fusion]", "--out-md", str(tmp_path / "av.md")]
    rows, cross = avd.main(args)
    assert set(rows) == {"visual", "audio-gru", "late-fusion"}
    for results in rows.values():
        assert 0 <= results[0]["digit_p1"] <= 1 and 0 <= results[0]["speaker_map_at_r"] <= 1
    assert 0 <= cross[0]["a2v_map_at_r"] <= 1
    assert "spoken digit -> image" in (tmp_path / "av.md").read_text()
