"""Omniglot zero-shot retrieval for many losses at the same budget (the spine's recipe).

    .venv/bin/python bench/omniglot_losses.py [--losses triplet ms ...] [--seeds 0 1 2] [--out runs/omniglot-losses]

Every run is configs/omniglot.yaml (4-block CNN, 128-d L2-normalised embeddings, 4 images per
character in batches of 128, Adam lr 1e-3, 8 epochs, best epoch on validation MAP@R over 20% of the
background characters, never the test alphabets) with only the loss (and its miner) changed;
proxy and classification losses get their proxies at ``optimizer.loss_lr`` = 0.01. Each run writes
``OUT/<loss>/seed<k>/`` (a normal run directory) and its test metrics to ``result.json`` there; runs
already done are read back, so the script can be stopped and started again. Prints the table of
test MAP@R and P@1 (mean ± standard deviation over seeds).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepmetric._io import write_text
from deepmetric.data import holdout_classes
from deepmetric.training import load_config, train

from common import summary
from deepmetric.training.trainer import load_data

CONFIG = Path(__file__).parents[1] / "configs" / "omniglot.yaml"
PROXIES = "num_classes: {C}, embedding_size: 128"
LOSSES = {
    "triplet": ("triplet + semi-hard miner", ["loss={name: triplet, margin: 0.2}", "miner={name: semi-hard, margin: 0.2}"]),
    "multi-similarity": ("multi-similarity + its miner", ["loss=multi-similarity", "miner={name: multi-similarity, epsilon: 0.1}"]),
    "contrastive": ("contrastive, all pairs", ["loss={name: contrastive, pos_margin: 0.0, neg_margin: 1.0}", "miner=null"]),
    "proxy-anchor": ("proxy-anchor", ["loss={name: proxy-anchor, %s}" % PROXIES, "miner=null", "optimizer.loss_lr=0.01"]),
    "supervised-contrastive": ("supervised contrastive (T = 0.1)", ["loss=supervised-contrastive", "miner=null"]),
    "circle": ("circle (m 0.4, gamma 80)", ["loss=circle", "miner=null"]),
    "normalized-softmax": ("normalized softmax", ["loss={name: normalized-softmax, %s}" % PROXIES, "miner=null",
                                                  "optimizer.loss_lr=0.01"]),
    "margin": ("margin + distance-weighted miner", ["loss=margin", "miner=distance-weighted"]),
    "binomial-deviance": ("binomial deviance", ["loss=binomial-deviance", "miner=null"]),
    "arcface": ("ArcFace", ["loss={name: arcface, %s}" % PROXIES, "miner=null", "optimizer.loss_lr=0.01"]),
}


def training_classes(config: dict) -> int:
    """Characters left for training after the validation hold-out (the proxies' count)."""
    train_set, _ = load_data(config)
    fit, _ = holdout_classes(train_set, config["eval"]["val_classes"], seed=config["seed"])
    return len(fit.classes)


def run(name: str, seed: int, out: Path) -> dict:
    done = out / name / f"seed{seed}" / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    base = load_config(CONFIG, [f"seed={seed}"])
    overrides = [o.replace("{C}", str(training_classes(base))) for o in LOSSES[name][1]]
    result = train(load_config(CONFIG, [*overrides, f"seed={seed}"]), done.parent, progress=False,
                   log=lambda *a: None)
    scores = {key: result["test"][key] for key in ("map_at_r", "precision_at_1")}
    write_text(done, json.dumps(scores))  # atomic: a crash never leaves a torn resume marker
    return scores



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/omniglot-losses"))
    args = parser.parse_args()
    rows = {}
    for name in args.losses:
        rows[name] = [run(name, seed, args.out) for seed in args.seeds]
        print(f"{name}: " + ", ".join(f"seed {s} MAP@R {r['map_at_r']:.4f} P@1 {r['precision_at_1']:.4f}"
                                      for s, r in zip(args.seeds, rows[name])), flush=True)
    print(f"\n| loss | MAP@R | P@1 |\n|---|---|---|")
    for name, rs in rows.items():
        print(f"| {LOSSES[name][0]} | {summary([r['map_at_r'] for r in rs])} | "
              f"{summary([r['precision_at_1'] for r in rs])} |")


if __name__ == "__main__":
    main()
