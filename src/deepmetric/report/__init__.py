"""HTML report of a run: training curves and test retrieval metrics, with plots embedded as PNG."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from deepmetric._io import write_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def distance_histogram(ax, distances: dict, title: str = "") -> None:
    """Overlaid density histograms of sampled distances by relation (e.g. same sub-class, same class,
    other) on one matplotlib axis, with shared bins."""
    import numpy as np
    values = {name: np.asarray(v, dtype=np.float64) for name, v in distances.items() if len(v)}
    if not values:
        return
    bins = np.linspace(min(v.min() for v in values.values()), max(v.max() for v in values.values()), 60)
    for name, v in values.items():
        ax.hist(v, bins=bins, density=True, histtype="stepfilled", alpha=0.4, label=name)
    ax.set(xlabel="distance", ylabel="density", title=title)
    ax.legend()


def _plots(metrics: dict, distances: dict | None = None) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = metrics["epochs"]
    figures = []
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    ax[0].plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], marker="o")
    ax[0].set(xlabel="epoch", ylabel="training loss", title="Loss")
    val = [e for e in epochs if "val" in e]
    if val:
        for key in ("map_at_r", "precision_at_1"):
            ax[1].plot([e["epoch"] for e in val], [e["val"][key] for e in val], marker="o", label=key)
        ax[1].axvline(metrics["best_epoch"], color="grey", ls="--", label="best")
        ax[1].legend()
    ax[1].set(xlabel="epoch", title="Validation classes")
    figures.append(("Training", _png(fig)))
    plt.close(fig)
    test = metrics.get("test")
    if test:
        ks = sorted(int(k.rsplit("_", 1)[1]) for k in test if k.startswith("recall_at_"))
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(ks, [test[f"recall_at_{k}"] for k in ks], marker="o")
        ax.set(xscale="log", xlabel="K", ylabel="Recall@K (hit rate)", ylim=(0, 1.02), title="Test recall curve")
        ax.set_xticks(ks, [str(k) for k in ks])
        figures.append(("Test recall@K", _png(fig)))
        plt.close(fig)
    if distances:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        distance_histogram(ax, distances, "Test distances by relation (sampled quadlets)")
        figures.append(("Test distance distributions", _png(fig)))
        plt.close(fig)
    return figures


def write_report(run_dir: str | Path, metrics: dict, distances: dict | None = None) -> Path:
    """Write ``run_dir/report.html`` from a run's ``metrics.json`` content and return its path;
    ``distances`` (``{relation: 1-D array}``, e.g. from
    :func:`deepmetric.evaluation.hierarchy.quadlet_distances`) adds their histograms."""
    path = Path(run_dir) / "report.html"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                   for k, v in (metrics.get("test") or {}).items() if isinstance(v, float))
    images = "".join(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}'>"
                     for title, data in _plots(metrics, distances))
    write_text(path, f"<!doctype html><meta charset='utf-8'><title>deepmetric run</title>"
                     f"<h1>deepmetric run: {html.escape(str(Path(run_dir).name))}</h1>"
                     f"<p>distance: {html.escape(metrics['distance'])}, best epoch {metrics['best_epoch']}</p>"
                     f"<h2>Test metrics</h2><table>{rows}</table>{images}")
    return path
