"""Hierarchical Omniglot (alphabet = class, character = sub-class): order-preserving losses against
flat ones at the same budget.

    .venv/bin/python bench/omniglot_hierarchical.py [--losses triplet quadlet ...] [--seeds 0 1 2]
        [--out runs/omniglot-hierarchical] [--plot docs/omniglot_hierarchical_distances.png]

Every run is configs/omniglot_hierarchical.yaml (4-block CNN, 128-d L2-normalised embeddings,
batches of 8 alphabets x 4 characters x 4 drawings, Adam lr 1e-3, 8 epochs, best epoch on the
character MAP@R of 6 background alphabets held out whole, never the test alphabets) with only the
loss changed. Test: the 20 evaluation alphabets, query-in-gallery. Each run writes
``OUT/<loss>/seed<k>/`` (a normal run directory, whose report.html plots its distance distributions)
and its test metrics to ``result.json`` there; finished runs are read back. Prints the table (mean ±
standard deviation over seeds) and plots, per loss, the test distances of a sampled set of quadlets
(same character / same alphabet / other alphabet) of its seed-0 model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deepmetric._io import write_text
from deepmetric.data import holdout_classes
from deepmetric.evaluation.hierarchy import quadlet_distances
from deepmetric.training import load_config, train
from deepmetric.training.trainer import embed, load_data, load_run

from common import summary

CONFIG = Path(__file__).parents[1] / "configs" / "omniglot_hierarchical.yaml"
LOSSES = {
    "triplet": ("triplet + semi-hard miner (flat)", ["loss={name: triplet, margin: 0.2}",
                                                      "miner={name: semi-hard, margin: 0.2}"]),
    "multi-similarity": ("multi-similarity + its miner (flat)", ["loss=multi-similarity",
                                                                 "miner={name: multi-similarity, epsilon: 0.1}"]),
    "quadlet": ("quadlet (m1 0.1, m2 0.2)", ["loss=quadlet"]),
    "pentuplet": ("pentuplet, one intermediate (weight decay 0.001)", ["loss=pentuplet",
                                                                      "optimizer.weight_decay=0.001"]),
    "radial": ("radial (c 3, m 0.3)", ["loss=radial"]),
    "sgml": ("SGML soft binomial deviance + alphabet head",
             ["loss={name: sgml, num_attributes: [{A}], embedding_size: 128}", "optimizer.loss_lr=0.01"]),
    "ie": ("IE loss (character centres)", ["loss={name: ie, num_classes: {C}, embedding_size: 128}",
                                           "optimizer.loss_lr=0.01"]),
}
COLUMNS = {"precision_at_1": "character P@1", "map_at_r": "character MAP@R", "alphabet_map_at_r": "alphabet MAP@R",
           "ndcg_at_100": "graded NDCG@100", "order_preservation": "order preservation"}


def training_counts(config: dict) -> tuple[int, int]:
    """(alphabets, characters) left for training after the validation alphabets are held out."""
    train_set, _ = load_data(config)
    fit, _ = holdout_classes(train_set, config["eval"]["val_classes"], seed=config["seed"], level=0)
    return int(fit.y[:, 0].unique().numel()), int(fit.num_classes)


def overrides(name: str, seed: int) -> list[str]:
    alphabets, characters = training_counts(load_config(CONFIG, [f"seed={seed}"]))
    return [o.replace("{A}", str(alphabets)).replace("{C}", str(characters)) for o in LOSSES[name][1]]


def run(name: str, seed: int, out: Path) -> dict:
    done = out / name / f"seed{seed}" / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    result = train(load_config(CONFIG, [*overrides(name, seed), f"seed={seed}"]), done.parent, progress=False,
                   log=lambda *a: None)
    test = result["test"]
    scores = {key: test[key] for key in COLUMNS if key in test}
    scores["alphabet_map_at_r"] = test["level_0"]["map_at_r"]
    write_text(done, json.dumps(scores))  # atomic: a crash never leaves a torn resume marker
    return scores


def plot(names: list[str], out: Path, path: Path, samples: int = 200_000) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepmetric.report import distance_histogram
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        model, state = load_run(out / name / "seed0")
        _, test_set = load_data(state["config"])
        with torch.no_grad():
            emb = embed(model, test_set.x)
        parts = quadlet_distances(emb, test_set.y, state["distance"], samples=samples)
        distance_histogram(ax, dict(zip(("same character", "same alphabet", "other alphabet"), parts)), name)
        ax.set_xlabel(f"{state['distance']} distance")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"distance distributions written to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/omniglot-hierarchical"))
    parser.add_argument("--plot", type=Path, default=Path("docs/omniglot_hierarchical_distances.png"))
    args = parser.parse_args()
    rows = {}
    for name in args.losses:
        rows[name] = [run(name, seed, args.out) for seed in args.seeds]
        print(f"{name}: " + "; ".join(f"seed {s} " + ", ".join(f"{k} {v:.4f}" for k, v in r.items())
                                      for s, r in zip(args.seeds, rows[name])), flush=True)
    print("\n| loss | " + " | ".join(COLUMNS.values()) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, rs in rows.items():
        print(f"| {LOSSES[name][0]} | " + " | ".join(summary([r[key] for r in rs]) for key in COLUMNS) + " |")
    if 0 in args.seeds:
        plot(list(rows), args.out, args.plot)


if __name__ == "__main__":
    main()
