"""Notting-Hill face tracks: track-level and fine-grained (actor -> track) clip retrieval.

    OMP_NUM_THREADS=1 .venv/bin/python bench/notting_hill.py [--config configs/notting_hill.yaml]
        [--set key=value ...] [--folds-only 0 1] [--out-md FILE]

Pipeline (settings from the YAML config):

1. ``notting_hill_tracks(threshold, min_length)`` cuts the film's face crops into tracks (0.5 / 8:
   22 tracks); ``encode_tracks`` writes one libx264 video per track under ``OUT/videos`` and
   ``decode_tracks`` reads them back, so every experiment runs on decoded video frames.
2. Frozen frame encoder: no pretrained network is available offline, so each fold fits a PCA of
   the 60x60 pixels (``pca_components`` directions, scaled by the standard deviation of the first)
   on the frames of its *training* tracks only, and runs it through
   :func:`deepmetric.data.features.cache_features` (``OUT/features/pca{K}-fold{f}``): a second run
   reads the cache and says so.
3. k-fold cross-validation over tracks (:func:`deepmetric.data.av.track_folds`, stratified by
   actor): a fold's test tracks never reach training nor the PCA fit; results are mean ± standard
   deviation over folds. Every model trains ``steps`` Adam steps and the last step is evaluated
   (no checkpoint or hyper-parameter is chosen on test tracks).

(a) Track-level retrieval, actor = class. Queries are the test fold's clips (or whole tracks), the
    gallery the training fold's clips (or tracks): a new track of a known actor is identified by
    retrieval. Compared: the raw PCA features averaged over frames; a frame-level MLP trained with
    triplet + semi-hard on frames, averaged over the frames; and VideoEmbedder heads with a learned
    temporal pooling (attention, NetVLAD) trained with triplet + semi-hard on clips of T frames
    (a whole track is embedded by running the pooling over all its frames).
(b) Fine-grained clip retrieval, labels (actor, track): the same VideoEmbedder trained with
    triplet (+ semi-hard, on the finest label = track), quadlet, pentuplet and radial losses,
    same head, batches (HierarchicalBatchSampler: actors x tracks x clips) and budget. Queries: the
    test clips; gallery: every other clip of the data set (test and training clips; the query
    itself excluded by groups), so level_1 (same track) relevants are the other clips of the
    query's test track and level_0 (same actor) relevants also include the actor's training
    clips. Order preservation is computed exactly over every quadlet (q test clip, p same track,
    i same actor other track, n other actor) of that gallery.
"""
from __future__ import annotations

import argparse
import copy
import time
from itertools import count
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import deepmetric as dm
from deepmetric.data import HierarchicalBatchSampler, MPerClassSampler
from deepmetric.data.av import decode_tracks, encode_tracks, notting_hill_tracks, read_manifest, track_folds
from deepmetric.data.features import cache_features
from deepmetric.data.video import clips as frame_clips
from deepmetric.distances import l2_normalize
from deepmetric.models.heads import MLPHead
from deepmetric.models.temporal import VideoEmbedder

import common

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "notting_hill.yaml"


# ----------------------------------------------------------------------------- config


def load_config(path=CONFIG, overrides=()) -> dict:
    """The experiment's YAML config with ``key.sub=value`` overrides."""
    return common.load_config(path, overrides)


# ----------------------------------------------------------------------------- data


def prepare_tracks(config: dict, out: Path):
    """Cut the tracks, store them as videos under ``out/videos`` and decode them back.

    Returns ``(FaceTracks, decoded)`` with ``decoded`` one ``(T, 60, 60)`` uint8 tensor per track.
    Existing videos are reused when their manifest lists the same tracks and codec.
    """
    ft = notting_hill_tracks(threshold=float(config["threshold"]), min_length=int(config["min_length"]))
    video_dir = out / "videos"
    wanted = [[int(a), int(s), int(e)] for a, s, e in ft.tracks]
    try:
        manifest = read_manifest(video_dir)
        have = [[t["actor"], t["start"], t["end"]] for t in manifest["tracks"]]
        reuse = have == wanted and manifest.get("codec") == config["codec"]
    except (FileNotFoundError, ValueError, KeyError):
        reuse = False
    if reuse:
        print(f"videos: reusing {len(wanted)} {config['codec']} tracks in {video_dir}")
    else:
        encode_tracks(ft.frames, ft.tracks, video_dir, codec=config["codec"])
        print(f"videos: encoded {len(wanted)} tracks with {config['codec']} to {video_dir}")
    decoded = decode_tracks(video_dir)
    worst = max(int((d.int() - ft.frames[s:e].int()).abs().max()) for d, (_, s, e) in zip(decoded, ft.tracks))
    print(f"videos: decoded {sum(len(d) for d in decoded)} frames, largest grey-level change {worst}")
    return ft, decoded


class PCAEncoder(nn.Module):
    """Frozen frame encoder: ``z = V_K^T (x - mu) / s`` on the flattened pixels ``x`` in ``[0, 1]``,
    with ``mu`` the mean and ``V_K`` the top ``K`` principal directions of the fitting frames and
    ``s`` the standard deviation along the first one (directions from the eigenvectors of the Gram
    matrix of the centred frames). ``calls`` counts forward passes, so a caller
    can tell whether :func:`cache_features` ran the encoder or read its cache."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("components", components)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.calls = 0

    @classmethod
    def fit(cls, frames: torch.Tensor, k: int) -> "PCAEncoder":
        """Fit on ``frames`` ``(N, H, W)`` uint8 (the training tracks' frames only)."""
        if frames.dim() != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames: expected (N, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}")
        if not 1 <= k <= min(frames.shape[0], frames[0].numel()):
            raise ValueError(f"k: expected 1..{min(frames.shape[0], frames[0].numel())} components, got {k}")
        x = frames.flatten(1).double() / 255.0
        mean = x.mean(0)
        x = x - mean
        # principal directions from the (N, N) Gram matrix: faster than an SVD when N < H * W
        w, v = torch.linalg.eigh(x @ x.T)
        w, v = w.flip(0)[:k].clamp_min(1e-12), v.flip(1)[:, :k]
        components = (x.T @ v / w.sqrt()).T                                   # (k, H * W), unit rows
        scale = float(w[0].sqrt()) / max(len(x) - 1, 1) ** 0.5
        return cls(mean.float(), components.float().contiguous(), scale)

    def forward(self, frames):
        self.calls += 1
        x = torch.as_tensor(frames).flatten(1).float() / 255.0
        return (x - self.mean) @ self.components.T / self.scale


def fold_features(decoded, tracks, train_ids, k: int, cache_dir: Path, name: str) -> list[torch.Tensor]:
    """PCA fitted on the training tracks' frames, cached for every track: ``[(T_i, k)] per track``."""
    train = torch.cat([decoded[int(i)] for i in train_ids])
    encoder = PCAEncoder.fit(train, k)
    videos = [(f"track_{i:04d}", frames) for i, frames in enumerate(decoded)]
    cache = cache_features(name, videos, encoder, out_dir=cache_dir)
    how = "computed with the frozen encoder" if encoder.calls else "read from the cache (encoder not run)"
    print(f"  features {name}: {how}, {len(cache)} tracks x {cache.dim} dims")
    return [torch.as_tensor(cache[key]).float().clone() for key, _ in videos]


def track_clips(features, tracks, ids, length: int, stride: int):
    """Clips of ``length`` consecutive frames (step ``stride``) of each track in ``ids``.

    Returns ``x (N, length, D)``, ``y (N, 2)`` = (actor, track id), ``start (N,)`` first frame of
    each clip in its track. A track shorter than ``length`` gives no clip.
    """
    xs, ys, starts = [], [], []
    for tid in (int(i) for i in ids):
        feats = features[tid]
        if len(feats) < length:
            continue
        windows = frame_clips(feats, length, stride)
        xs.append(windows)
        ys.append(torch.tensor([[int(tracks[tid][0]), tid]]).expand(len(windows), 2))
        starts.append(torch.arange(len(windows)) * stride)
    if not xs:
        raise ValueError(f"track_clips: no track in {list(ids)} has {length} frames")
    return torch.cat(xs).contiguous(), torch.cat(ys).clone(), torch.cat(starts)


def fold_data(features, tracks, train_ids, test_ids, length: int, stride: int) -> dict:
    """Training and test clips, frames and tracks of one fold; raises if the sides share a track."""
    train_ids, test_ids = torch.as_tensor(train_ids), torch.as_tensor(test_ids)
    if torch.isin(train_ids, test_ids).any():
        raise ValueError(f"fold: tracks {train_ids[torch.isin(train_ids, test_ids)].tolist()} are on both sides")
    data = {}
    for side, ids in (("train", train_ids), ("test", test_ids)):
        x, y, _ = track_clips(features, tracks, ids, length, stride)
        frames = torch.cat([features[int(i)] for i in ids])
        frame_y = torch.cat([torch.tensor([[int(tracks[int(i)][0]), int(i)]]).expand(len(features[int(i)]), 2)
                             for i in ids])
        data[side] = {"clips": x, "clip_y": y, "frames": frames, "frame_y": frame_y.clone(),
                      "tracks": [features[int(i)] for i in ids],
                      "track_y": torch.tensor([[int(tracks[int(i)][0]), int(i)] for i in ids])}
    return data


# ----------------------------------------------------------------------------- training


def endless(sampler):
    """Batches of ``sampler`` epoch after epoch (``set_epoch`` before each)."""
    for epoch in count():
        sampler.set_epoch(epoch)
        yield from sampler


def fit(model: nn.Module, loss, miner, x, y, sampler, steps: int, lr: float, weight_decay: float = 0.0,
        desc: str = "train") -> nn.Module:
    """``steps`` Adam steps of ``loss(model(x[b]), y[b], miner(...))`` over the sampler's batches."""
    opt = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=lr, weight_decay=weight_decay)
    model.train()
    batches = endless(sampler)
    for _ in tqdm(range(steps), desc=desc, leave=False, mininterval=1.0):
        idx = torch.as_tensor(next(batches))
        emb, labels = model(x[idx]), y[idx]
        value = loss(emb, labels, miner(emb, labels) if miner is not None else None)
        opt.zero_grad()
        value.backward()
        opt.step()
    model.eval()
    return model


def video_model(config: dict, in_features: int, pool: str, seed: int) -> VideoEmbedder:
    torch.manual_seed(seed)
    m = config["model"]
    return VideoEmbedder(in_features, pool=pool, hidden=tuple(m["hidden"]), out_features=int(m["out_features"]))


def hierarchical_sampler(y: torch.Tensor, batch: dict, seed: int) -> HierarchicalBatchSampler:
    """Batches of actors x tracks x clips: every query has a same-track positive, a same-actor
    intermediate (when the actor has two training tracks) and other-actor negatives."""
    actors = int(y[:, 0].unique().numel())
    return HierarchicalBatchSampler(y, min(int(batch["actors"]), actors), int(batch["tracks_per_actor"]),
                                    int(batch["clips_per_track"]), seed=seed)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def embed_tracks(model, tracks) -> torch.Tensor:
    """One embedding per whole track (the pooling runs over all its frames)."""
    return torch.cat([model(t.unsqueeze(0)) for t in tracks])


def retrieval(q, q_y, g, g_y) -> dict:
    """P@1 and MAP@R of queries against a separate gallery (flat labels)."""
    r = dm.evaluate(q, q_y, gallery=g, gallery_labels=g_y, nmi=False)
    return {"precision_at_1": r["precision_at_1"], "map_at_r": r["map_at_r"]}


def order_preservation(q, q_y, q_ids, g, g_y, g_ids) -> float:
    """Fraction of all quadlets (q, p, i, n) with ``d(q,p) < d(q,i) < d(q,n)``: ``p`` same track
    (``p != q``), ``i`` same actor other track, ``n`` other actor, all from the gallery; exact
    (sorted counts per query, no enumeration). NaN when no query has a full quadlet."""
    d = torch.cdist(q.double(), g.double())
    ok = total = 0.0
    for r in range(len(q)):
        actor, track = q_y[r, 0], q_y[r, 1]
        pos = (g_y[:, 0] == actor) & (g_y[:, 1] == track) & (g_ids != q_ids[r])
        inter = (g_y[:, 0] == actor) & (g_y[:, 1] != track)
        neg = g_y[:, 0] != actor
        dp, di, dn = d[r, pos], d[r, inter], d[r, neg]
        if not (len(dp) and len(di) and len(dn)):
            continue
        dn = dn.sort().values
        n_above = len(dn) - torch.searchsorted(dn, di, right=True)          # negatives beyond each i
        di, order = di.sort()
        suffix = torch.cat([n_above[order].flip(0).cumsum(0).flip(0), n_above.new_zeros(1)])
        ok += float(suffix[torch.searchsorted(di, dp, right=True)].sum())
        total += len(dp) * len(di) * len(dn)
    return ok / total if total else float("nan")


def fine_grained_scores(test_emb, test_y, train_emb, train_y, ndcg_k: int) -> dict:
    """Test clips against all clips (test and training), hierarchical labels (actor, track)."""
    gallery = torch.cat([test_emb, train_emb])
    gallery_y = torch.cat([test_y, train_y])
    ids = torch.arange(len(gallery))
    r = dm.evaluate(test_emb, test_y, gallery=gallery, gallery_labels=gallery_y, groups=ids[:len(test_emb)],
                    gallery_groups=ids, nmi=False, ks=(1, ndcg_k))
    return {"actor_map_at_r": r["level_0"]["map_at_r"], "track_map_at_r": r["level_1"]["map_at_r"],
            "track_precision_at_1": r["level_1"]["precision_at_1"], f"ndcg_at_{ndcg_k}": r[f"ndcg_at_{ndcg_k}"],
            "order_preservation": order_preservation(test_emb, test_y, ids[:len(test_emb)], gallery, gallery_y, ids)}


# ----------------------------------------------------------------------------- experiments


def track_level(config: dict, data: dict, seed: int) -> dict:
    """(a): ``{method: {"clip": scores, "track": scores}}`` for one fold (actor = class)."""
    cfg, steps, lr = config["track_level"], int(config["steps"]), float(config["lr"])
    tr, te = data["train"], data["test"]
    margin = float(cfg["margin"])
    results = {}

    def score(clip_q, clip_g, track_q, track_g):
        return {"clip": retrieval(clip_q, te["clip_y"][:, 0], clip_g, tr["clip_y"][:, 0]),
                "track": retrieval(track_q, te["track_y"][:, 0], track_g, tr["track_y"][:, 0])}

    mean_tracks = lambda ts: torch.stack([t.mean(0) for t in ts])  # noqa: E731
    results["frozen PCA, mean over frames"] = score(te["clips"].mean(1), tr["clips"].mean(1),
                                                    mean_tracks(te["tracks"]), mean_tracks(tr["tracks"]))

    # frame-level MLP, triplet + semi-hard on frames; clips and tracks = mean of frame embeddings
    torch.manual_seed(seed)
    m = config["model"]
    frame_model = MLPHead(in_shape=(tr["frames"].shape[1],), hidden=tuple(m["hidden"]),
                          out_features=int(m["out_features"]), normalize=True)
    fb = cfg["frame_batch"]
    fit(frame_model, dm.losses.create("triplet", margin=margin), dm.mining.create("semi-hard", margin=margin),
        tr["frames"], tr["frame_y"][:, 0], MPerClassSampler(tr["frame_y"][:, 0], int(fb["m"]), int(fb["batch_size"]),
                                                            seed=seed), steps, lr, desc="frame MLP")
    with torch.no_grad():
        def clip_mean(x):
            return l2_normalize(frame_model(x.flatten(0, 1)).reshape(*x.shape[:2], -1).mean(1))

        def track_mean(ts):
            return l2_normalize(torch.stack([frame_model(t).mean(0) for t in ts]))

        results["frame MLP (triplet), mean over frames"] = score(clip_mean(te["clips"]), clip_mean(tr["clips"]),
                                                                 track_mean(te["tracks"]), track_mean(tr["tracks"]))

    cb = cfg["clip_batch"]
    for pool in cfg["poolings"]:
        model = video_model(config, tr["clips"].shape[2], pool, seed)
        fit(model, dm.losses.create("triplet", margin=margin), dm.mining.create("semi-hard", margin=margin),
            tr["clips"], tr["clip_y"][:, 0], MPerClassSampler(tr["clip_y"][:, 0], int(cb["m"]), int(cb["batch_size"]),
                                                              seed=seed), steps, lr, desc=f"{pool} pooling")
        with torch.no_grad():
            results[f"VideoEmbedder {pool} pooling (triplet)"] = score(
                model(te["clips"]), model(tr["clips"]), embed_tracks(model, te["tracks"]),
                embed_tracks(model, tr["tracks"]))
    return results


def fine_grained(config: dict, data: dict, seed: int) -> dict:
    """(b): ``{loss: scores}`` for one fold, labels (actor, track)."""
    cfg, steps, lr = config["fine_grained"], int(config["steps"]), float(config["lr"])
    tr, te = data["train"], data["test"]
    # what the metrics give with no training: neighbouring clips of a track share frames
    results = {"no training (frozen PCA, mean over frames)": fine_grained_scores(
        te["clips"].mean(1), te["clip_y"], tr["clips"].mean(1), tr["clip_y"], int(cfg["ndcg_k"]))}
    for name, spec in cfg["losses"].items():
        spec = copy.deepcopy(spec)
        loss = dm.losses.create(spec["loss"].pop("name"), **spec["loss"])
        miner = None
        if spec.get("miner"):
            miner = dm.mining.create(spec["miner"].pop("name"), **spec["miner"])
        model = video_model(config, tr["clips"].shape[2], cfg["pool"], seed)
        fit(model, loss, miner, tr["clips"], tr["clip_y"], hierarchical_sampler(tr["clip_y"], cfg["batch"], seed),
            steps, lr, weight_decay=float(spec.get("weight_decay", 0.0)), desc=name)
        with torch.no_grad():
            results[name] = fine_grained_scores(model(te["clips"]), te["clip_y"], model(tr["clips"]), tr["clip_y"],
                                                int(cfg["ndcg_k"]))
    return results


def fold_summary(values) -> str:
    """``mean ± sample standard deviation``, NaN entries left out (and counted)."""
    kept = [v for v in values if v == v]
    if not kept:
        return "n/a"
    text = common.summary(kept, 3)
    return text + (f" ({len(kept)}/{len(values)} folds)" if len(kept) < len(values) else "")


def tables(config: dict, folds_a: list, folds_b: list, n_tracks: int, n_folds: int, chosen: list) -> str:
    """The markdown tables of (a) and (b) over the folds ``chosen``."""
    over = "folds" if len(chosen) == n_folds else f"folds {chosen} only"
    lines = [f"Notting-Hill, threshold {config['threshold']}, min_length {config['min_length']}: {n_tracks} tracks, "
             f"{n_folds}-fold cross-validation over tracks; clips of {config['clip']['length']} frames, stride "
             f"{config['clip']['stride']}; frozen encoder PCA-{config['pca_components']} per fold; "
             f"{config['steps']} steps per model; mean ± std over {over}.", "",
             "(a) Actor retrieval: test clips / test tracks against training clips / tracks", "",
             "| embedding | clip P@1 | clip MAP@R | track P@1 | track MAP@R |", "|---|---|---|---|---|"]
    for method in folds_a[0]:
        cells = [fold_summary([f[method][lvl][key] for f in folds_a]) for lvl in ("clip", "track")
                 for key in ("precision_at_1", "map_at_r")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    k = config["fine_grained"]["ndcg_k"]
    cols = {"actor_map_at_r": "actor MAP@R (level_0)", "track_map_at_r": "track MAP@R (level_1)",
            "track_precision_at_1": "track P@1", f"ndcg_at_{k}": f"graded NDCG@{k}",
            "order_preservation": "order preservation"}
    lines += ["", f"(b) Fine-grained clip retrieval (actor -> track), VideoEmbedder "
                  f"{config['fine_grained']['pool']} pooling: test clips against all other clips", "",
              "| loss | " + " | ".join(cols.values()) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in folds_b[0]:
        lines.append(f"| {name} | " + " | ".join(fold_summary([f[name][c] for f in folds_b]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--folds-only", type=int, nargs="+", default=None, help="run only these folds")
    parser.add_argument("--out-md", type=Path, default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config, args.overrides)
    k = int(config["folds"])
    chosen = list(range(k)) if args.folds_only is None else sorted(set(args.folds_only))
    if not set(chosen) <= set(range(k)):
        parser.error(f"--folds-only: expected fold numbers 0 to {k - 1}, got {args.folds_only}")
    out = Path(config["out"])
    start = time.time()
    ft, decoded = prepare_tracks(config, out)
    folds = track_folds(ft.tracks, k=k, seed=int(config["fold_seed"]))
    folds_a, folds_b = [], []
    for f in tqdm(chosen, desc="folds"):
        train_ids, test_ids = folds[f]
        print(f"fold {f}: test tracks {test_ids.tolist()}", flush=True)
        features = fold_features(decoded, ft.tracks, train_ids, int(config["pca_components"]), out / "features",
                                 f"pca{config['pca_components']}-fold{f}")
        data = fold_data(features, ft.tracks, train_ids, test_ids, int(config["clip"]["length"]),
                         int(config["clip"]["stride"]))
        folds_a.append(track_level(config, data, int(config["seed"])))
        folds_b.append(fine_grained(config, data, int(config["seed"])))
    text = tables(config, folds_a, folds_b, len(ft.tracks), len(folds), chosen)
    common.report(text, start, args.out_md)
    return folds_a, folds_b


if __name__ == "__main__":
    main()
