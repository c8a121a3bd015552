"""Omniglot zero-shot: deepmetric's recipe against the same training written with pytorch-metric-learning.

    .venv/bin/python bench/omniglot.py [--seeds 0 1 2] [--set key=value ...]   (e.g. --set epochs=8)

Both sides use the same data (28x28, background alphabets minus 20% validation characters for
training, evaluation alphabets for test), the same CNN (deepmetric's SmallCNN, L2-normalised
output), loss (triplet, margin 0.2), miner (semi-hard, margin 0.2), m-per-class sampling (m = 4),
batch size, optimiser, learning rate and epochs, and both keep the epoch with the best validation
MAP@R. The pytorch-metric-learning side is written as its users write it: its TripletMarginLoss,
TripletMarginMiner, MPerClassSampler and AccuracyCalculator (exact k-NN). Test metrics of both are
MAP@R and P@1 on the evaluation alphabets; seconds per epoch count the training loop only (the two
sides alternate which trains first, since the first training in a process pays a one-off warm-up).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from pytorch_metric_learning import distances, losses, miners, samplers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from deepmetric import models
from deepmetric.data import holdout_classes
from deepmetric.training import load_config, train

from common import summary
from deepmetric.training.trainer import embed, load_data, seed_everything

CONFIG = Path(__file__).parents[1] / "configs" / "omniglot.yaml"


def pml_accuracy(model, data):
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                              knn_func=CustomKNN(distances.LpDistance(normalize_embeddings=False)), device=torch.device("cpu"))
    emb = embed(model, data.x)
    scores = calc.get_accuracy(emb, data.y, ref_includes_query=True)
    return {"precision_at_1": scores["precision_at_1"], "map_at_r": scores["mean_average_precision_at_r"]}


def run_pml(config: dict) -> dict:
    """The same training written with pytorch-metric-learning's components."""
    seed_everything(config["seed"])
    train_set, test_set = load_data(config)
    fit, val = holdout_classes(train_set, config["eval"]["val_classes"], seed=config["seed"])
    model = models.create(config["model"], in_shape=tuple(fit.x.shape[1:]))
    lp = distances.LpDistance(normalize_embeddings=False)
    loss_fn = losses.TripletMarginLoss(margin=config["loss"]["margin"], distance=lp)
    miner = miners.TripletMarginMiner(margin=config["miner"]["margin"], type_of_triplets="semihard", distance=lp)
    opt = torch.optim.Adam(model.parameters(), lr=config["optimizer"]["lr"])
    sampler = samplers.MPerClassSampler(fit.y, m=config["sampler"]["m"], batch_size=config["batch_size"],
                                        length_before_new_iter=len(fit))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(fit.x, fit.y),
                                         batch_size=config["batch_size"], sampler=sampler, drop_last=True)
    best, best_state, seconds = -1.0, None, []
    for _ in range(config["epochs"]):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            emb = model(x)
            value = loss_fn(emb, y, miner(emb, y))
            opt.zero_grad()
            value.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
        score = pml_accuracy(model, val)["map_at_r"]
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return {**pml_accuracy(model, test_set), "seconds_per_epoch": statistics.mean(seconds)}


def run_deepmetric(config: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out, progress=False, log=lambda *a: None)
    return {"precision_at_1": result["test"]["precision_at_1"], "map_at_r": result["test"]["map_at_r"],
            "seconds_per_epoch": statistics.mean(e["seconds"] for e in result["epochs"])}



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    results = {"deepmetric": [], "pytorch-metric-learning": []}
    for seed in args.seeds:
        config = load_config(CONFIG, [*args.overrides, f"seed={seed}"])
        runs = [("deepmetric", run_deepmetric), ("pytorch-metric-learning", run_pml)]
        # The first training in a process pays torch's one-off warm-up: alternate who goes first.
        for name, fn in runs if seed % 2 == 0 else runs[::-1]:
            r = fn(config)
            results[name].append(r)
            print(f"seed {seed} {name:24s} MAP@R {r['map_at_r']:.4f}  P@1 {r['precision_at_1']:.4f}  "
                  f"{r['seconds_per_epoch']:.1f} s/epoch", flush=True)
    print(f"\n| library | MAP@R | P@1 | s/epoch |\n|---|---|---|---|")
    for name, rs in results.items():
        print(f"| {name} | {summary([r['map_at_r'] for r in rs])} | {summary([r['precision_at_1'] for r in rs])} "
              f"| {summary([r['seconds_per_epoch'] for r in rs])} |")


if __name__ == "__main__":
    main()
