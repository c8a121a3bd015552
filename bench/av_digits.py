"""Audio-visual digits: visual-only, audio-only, early and late fusion, and cross-modal retrieval.

    OMP_NUM_THREADS=1 .venv/bin/python bench/av_digits.py [--config configs/av_digits.yaml]
        [--set key=value ...] [--out-md FILE]

Data: :func:`deepmetric.data.av.av_digits` with the speakers split: training pairs use 4 FSDD
speakers and the first half of each digit's MNIST test images, test pairs the 2 other speakers
(unseen) and the other images. Inputs: images as 784 pixels in [0, 1]; log-mels (48 frames x 40
bands) standardised per band with the training side's real frames, padded frames set to 0, then
flattened (1,920 values) for the MLPs, or read frame by frame with the mask by a GRU pooling
(``audio-gru``: :class:`~deepmetric.models.temporal.VideoEmbedder` with ``recurrent`` pooling).

Every model is trained with the same loss (multi-similarity + its miner, digit labels), the same
batches (10 digits x 8) and the same number of Adam steps; the last step is evaluated, nothing is
chosen on the test speakers. Evaluation on the test side, query-in-gallery with hierarchical
labels (digit, speaker): digit P@1 / MAP@R (level_0) and digit+speaker MAP@R (level_1).

Cross-modal: :class:`~deepmetric.models.temporal.ModalityEncoders` (one MLP per modality into one
64-d space) trained with ``loss(audio, y, ref_embeddings=image, ref_labels=y) + loss(image, y,
ref_embeddings=audio, ref_labels=y)`` (digit labels), evaluated as spoken-digit queries against
the test images (``dm.evaluate(q, q_labels, gallery=g, gallery_labels=g_labels)``) and the reverse.
Results: mean ± standard deviation over seeds.
"""
from __future__ import annotations

import argparse
import copy
import time
from itertools import count
from pathlib import Path

import torch
from tqdm.auto import tqdm

import deepmetric as dm
from deepmetric.data import MPerClassSampler
from deepmetric.data.av import av_digits
from deepmetric.models.heads import MLPHead
from deepmetric.models.temporal import EarlyFusion, LateFusion, ModalityEncoders, VideoEmbedder

import common
from common import summary

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "av_digits.yaml"
MODELS = ("visual", "audio", "audio-gru", "early-fusion", "late-fusion")
NAMES = {"visual": "visual only (MLP on pixels)", "audio": "audio only (MLP on log-mels)",
         "audio-gru": "audio only (GRU pooling over log-mel frames)", "early-fusion": "early fusion (concat + MLP)",
         "late-fusion": "late fusion (MLP per modality, product)"}


def load_config(path=CONFIG, overrides=()) -> dict:
    """The experiment's YAML config with ``key.sub=value`` overrides; ``models`` must be known names."""
    config = common.load_config(path, overrides)
    unknown = [m for m in config.get("models", []) if m not in MODELS]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; expected some of {list(MODELS)}")
    return config


def standardise_audio(sides: dict) -> dict:
    """Per-band mean / std of the training side's real log-mel frames applied to both sides.

    Returns ``{side: {"image": (N, 784), "audio": (N, F * B), "frames": (N, F, B), "mask": (N, F),
    "y": (N, 2)}}``; padded frames are 0 after standardisation.
    """
    train = sides["train"]
    real = train["audio"][train["audio_mask"]]
    mean, std = real.mean(0), real.std(0).clamp_min(1e-6)
    out = {}
    for name, side in sides.items():
        frames = (side["audio"] - mean) / std * side["audio_mask"].unsqueeze(-1)
        out[name] = {"image": side["image"].flatten(1), "frames": frames, "audio": frames.flatten(1),
                     "mask": side["audio_mask"], "y": side["y"]}
    return out


def build(name: str, data: dict, config: dict, seed: int):
    """``(model, inputs)`` for a model name: ``inputs(side, idx)`` gives the model's arguments."""
    torch.manual_seed(seed)
    hidden, out = tuple(config["model"]["hidden"]), int(config["model"]["out_features"])
    d_img, d_aud = data["image"].shape[1], data["audio"].shape[1]
    if name == "visual":
        return MLPHead((d_img,), hidden, out, normalize=True), lambda s, i: (s["image"][i],)
    if name == "audio":
        return MLPHead((d_aud,), hidden, out, normalize=True), lambda s, i: (s["audio"][i],)
    if name == "audio-gru":
        model = VideoEmbedder(data["frames"].shape[2], pool={"name": "recurrent", "hidden": int(config["gru_hidden"])},
                              hidden=hidden, out_features=out)
        return model, lambda s, i: (s["frames"][i], s["mask"][i])
    dims = {"image": d_img, "audio": d_aud}
    both = lambda s, i: ({"image": s["image"][i], "audio": s["audio"][i]},)  # noqa: E731
    if name == "early-fusion":
        return EarlyFusion(dims, hidden=hidden, out_features=out), both
    if name == "late-fusion":
        return LateFusion(dims, hidden=hidden, out_features=out), both
    raise ValueError(f"model: unknown {name!r}; expected one of {list(MODELS)}")


def endless(sampler):
    """Batches of ``sampler`` epoch after epoch (``set_epoch`` before each)."""
    for epoch in count():
        sampler.set_epoch(epoch)
        yield from sampler


def fit(model, batch_loss, y, config: dict, seed: int, desc: str) -> None:
    """``config["steps"]`` Adam steps on ``batch_loss(idx)`` over m-per-class batches of the labels
    ``y`` (``config["batch"]``); the model is in training mode during the steps, in eval mode after."""
    b = config["batch"]
    batches = endless(MPerClassSampler(y, int(b["m"]), int(b["batch_size"]), seed=seed))
    opt = torch.optim.Adam(list(model.parameters()), lr=float(config["lr"]))
    model.train()
    for _ in tqdm(range(int(config["steps"])), desc=desc, leave=False, mininterval=1.0):
        value = batch_loss(torch.as_tensor(next(batches)))
        opt.zero_grad()
        value.backward()
        opt.step()
    model.eval()


def make_loss(config: dict):
    spec = copy.deepcopy(config["loss"])
    loss = dm.losses.create(spec.pop("name"), **spec)
    miner = None
    if config.get("miner"):
        spec = copy.deepcopy(config["miner"])
        miner = dm.mining.create(spec.pop("name"), **spec)
    return loss, miner


def run_model(name: str, data: dict, config: dict, seed: int) -> dict:
    """Train one single- or fused-modality model; its test scores."""
    model, inputs = build(name, data["train"], config, seed)
    loss, miner = make_loss(config)
    y = data["train"]["y"][:, 0]

    def batch_loss(idx):
        emb = model(*inputs(data["train"], idx))
        return loss(emb, y[idx], miner(emb, y[idx]) if miner is not None else None)

    fit(model, batch_loss, y, config, seed, desc=f"{name} seed {seed}")
    test = data["test"]
    with torch.no_grad():
        emb = model(*inputs(test, torch.arange(len(test["y"]))))
    r = dm.evaluate(emb, test["y"], nmi=False)
    return {"digit_p1": r["level_0"]["precision_at_1"], "digit_map_at_r": r["level_0"]["map_at_r"],
            "speaker_map_at_r": r["level_1"]["map_at_r"]}


def cross_modal_loss(loss, audio_emb, image_emb, y):
    """Audio anchors against image references plus image anchors against audio references."""
    return (loss(audio_emb, y, ref_embeddings=image_emb, ref_labels=y)
            + loss(image_emb, y, ref_embeddings=audio_emb, ref_labels=y))


def run_cross_modal(data: dict, config: dict, seed: int) -> dict:
    """ModalityEncoders with the cross-modal loss; audio->image and image->audio test retrieval."""
    torch.manual_seed(seed)
    tr = data["train"]
    model = ModalityEncoders({"audio": tr["audio"].shape[1], "image": tr["image"].shape[1]},
                             hidden=tuple(config["model"]["hidden"]), out_features=int(config["model"]["out_features"]))
    loss, _ = make_loss(config)
    y = tr["y"][:, 0]

    def batch_loss(idx):
        return cross_modal_loss(loss, model(tr["audio"][idx], modality="audio"),
                                model(tr["image"][idx], modality="image"), y[idx])

    fit(model, batch_loss, y, config, seed, desc=f"cross-modal seed {seed}")
    te = data["test"]
    with torch.no_grad():
        a, v = model(te["audio"], modality="audio"), model(te["image"], modality="image")
    digits = te["y"][:, 0]
    a2v = dm.evaluate(a, digits, gallery=v, gallery_labels=digits, nmi=False)
    v2a = dm.evaluate(v, digits, gallery=a, gallery_labels=digits, nmi=False)
    return {"a2v_p1": a2v["precision_at_1"], "a2v_map_at_r": a2v["map_at_r"],
            "v2a_p1": v2a["precision_at_1"], "v2a_map_at_r": v2a["map_at_r"]}



def tables(config: dict, rows: dict, cross: list, sizes: tuple[int, int]) -> str:
    seeds = config["seeds"]
    lines = [f"Audio-visual digits (MNIST test images + FSDD, speakers split: {sizes[0]} training pairs of 4 "
             f"speakers, {sizes[1]} test pairs of 2 unseen speakers); {config['loss']['name']} loss + miner, "
             f"{config['steps']} steps of {config['batch']['batch_size']}; mean ± std over seeds {seeds}.", "",
             "| embedding | digit P@1 | digit MAP@R | digit+speaker MAP@R (level_1) |", "|---|---|---|---|"]
    for name, results in rows.items():
        lines.append(f"| {NAMES[name]} | " + " | ".join(
            summary([r[k] for r in results], 3) for k in ("digit_p1", "digit_map_at_r", "speaker_map_at_r")) + " |")
    if cross:
        lines += ["", "Cross-modal retrieval (ModalityEncoders, cross-modal loss), test side, digit = class", "",
                  "| query -> gallery | P@1 | MAP@R |", "|---|---|---|",
                  f"| spoken digit -> image | {summary([c['a2v_p1'] for c in cross], 3)} | "
                  f"{summary([c['a2v_map_at_r'] for c in cross], 3)} |",
                  f"| image -> spoken digit | {summary([c['v2a_p1'] for c in cross], 3)} | "
                  f"{summary([c['v2a_map_at_r'] for c in cross], 3)} |"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out-md", type=Path, default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config, args.overrides)
    start = time.time()
    d = config["data"]
    sides = av_digits(None, seed=int(d["seed"]), duration=float(d["duration"]), split=d["split"],
                      n_mels=int(d["n_mels"]), n_pairs_per_digit=d.get("n_pairs_per_digit"))
    data = standardise_audio(sides)
    print(f"data: {len(data['train']['y'])} training and {len(data['test']['y'])} test pairs", flush=True)
    rows = {name: [] for name in config["models"]}
    cross = []
    for seed in tqdm(config["seeds"], desc="seeds"):
        for name in config["models"]:
            rows[name].append(run_model(name, data, config, int(seed)))
        if config.get("cross_modal", True):
            cross.append(run_cross_modal(data, config, int(seed)))
    text = tables(config, rows, cross, (len(data["train"]["y"]), len(data["test"]["y"])))
    common.report(text, start, args.out_md)
    return rows, cross


if __name__ == "__main__":
    main()
