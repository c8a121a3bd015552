"""HTML reports with plots embedded as PNG: a run's (training curves, test metrics) and an evaluation's
(metrics, recall curve, the embeddings projected to 2-D, and for image data the nearest neighbours of
a few queries)."""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import torch

from deepmetric._io import write_text
from deepmetric.labels import class_names, is_hierarchical, is_multilabel, item_classes, same_mask, shared_levels


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


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plots(metrics: dict, distances: dict | None = None) -> list[tuple[str, str]]:
    """Training curves, and the histograms of ``distances``."""
    plt = _pyplot()
    epochs = metrics["epochs"]
    figures = []
    val = [e for e in epochs if "val" in e]
    fig, ax = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 5, 3.2), squeeze=False)
    ax = ax[0]
    ax[0].plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], marker="o")
    ax[0].set(xlabel="epoch", ylabel="training loss", title="Loss")
    for a in ax:
        a.xaxis.get_major_locator().set_params(integer=True)
    if val:  # the metric that chose the checkpoint, and MAP@R and P@1 where validation has them
        for key in dict.fromkeys([metrics.get("select", "map_at_r"), "map_at_r", "precision_at_1"]):
            points = [(e["epoch"], metric_value(e["val"], key)) for e in val]
            points = [(epoch, value) for epoch, value in points if value is not None]
            if points:
                ax[1].plot(*zip(*points), marker="o", label=key)
        ax[1].axvline(metrics["best_epoch"], color="grey", ls="--", label="best")
        ax[1].legend()
        ax[1].set(xlabel="epoch", title="Validation classes")
    figures.append(("Training", _png(fig)))
    plt.close(fig)
    if distances:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        distance_histogram(ax, distances, "Test distances by relation (sampled quadlets)")
        figures.append(("Test distance distributions", _png(fig)))
        plt.close(fig)
    return figures


def metric_value(metrics: dict, key: str):
    """The value of ``key`` in :func:`deepmetric.evaluate`'s result, ``level_0.map_at_r`` for a nested
    one; None when there is none."""
    level, _, name = key.rpartition(".")
    value = (metrics.get(level) or {} if level else metrics).get(name)
    return value if isinstance(value, (int, float)) else None


def metric_columns(metrics: dict, top: str = "test") -> dict:
    """``{column: {metric: value}}`` of :func:`deepmetric.evaluate`'s result: the top-level values
    (named ``top``), then each nested result (hierarchy levels, within the parent, the class mean, a
    level's class mean as ``level_0.class_mean``); ``per_class`` is left to its own table."""
    def values(scores):
        return {k: v for k, v in scores.items() if not isinstance(v, dict)}

    columns = {top: values(metrics)}
    for name, nested in metrics.items():
        if isinstance(nested, dict) and name != "per_class":
            columns[name] = values(nested)
            if "class_mean" in nested:
                columns[f"{name}.class_mean"] = nested["class_mean"]
    return columns


def coarser_levels(metrics: dict) -> dict:
    """``{level_l: its results}`` of the levels with a ``per_class`` but the finest, whose classes are
    those of the top-level ``per_class``."""
    levels = [key for key, value in metrics.items() if isinstance(value, dict) and "per_class" in value]
    return {key: metrics[key] for key in levels[:-1]}


def metric_rows(metrics: dict, top: str = "test") -> tuple[dict, list]:
    """``({metric: {column: value}}, columns)``: the table of :func:`metric_columns`, one row per metric,
    as ``deepmetric evaluate`` prints it and the reports show it."""
    columns = metric_columns(metrics, top)
    names = dict.fromkeys(name for column in columns.values() for name in column)
    return {name: {c: column.get(name) for c, column in columns.items()} for name in names}, list(columns)


def recall_figure(metrics: dict, top: str = "test") -> tuple[str, str] | None:
    """Recall@K (hit rate) against K, from the ``recall_at_{K}`` keys of ``metrics``: one line for the
    top level (named ``top``, e.g. test) and one per nested result (hierarchy levels), each named in
    the legend; None when there are none."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    all_ks = set()
    for name, column in metric_columns(metrics, top).items():
        ks = sorted(int(k.rsplit("_", 1)[1]) for k in column if k.startswith("recall_at_"))
        if ks:
            ax.plot(ks, [column[f"recall_at_{k}"] for k in ks], marker="o", label=name)
            all_ks.update(ks)
    if not all_ks:
        plt.close(fig)
        return None
    ks = sorted(all_ks)
    ax.set(xscale="log", xlabel="K", ylabel="Recall@K (hit rate)", ylim=(0, 1.02),
           title=f"{top.capitalize()} recall curve")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend(fontsize=7)  # even for one line: it may be a level's (the finest has none with groups)
    figure = (f"{top.capitalize()} recall@K", _png(fig))
    plt.close(fig)
    return figure


def embedding_figure(embeddings: torch.Tensor, labels: torch.Tensor, max_classes: int = 10,
                     max_points: int = 5000, top: str = "test") -> tuple[str, str] | None:
    """The embeddings on their first two principal axes (PCA of at most ``max_points`` items, taken
    evenly): the ``max_classes`` largest classes of all items one colour each, the other items grey;
    None for multi-label labels."""
    if is_multilabel(labels) or embeddings.shape[0] < 2:
        return None
    plt = _pyplot()
    pick = torch.linspace(0, embeddings.shape[0] - 1, min(max_points, embeddings.shape[0])).long()
    classes, ids = item_classes(labels.cpu())  # a hierarchy's finest classes, named by their path
    names = class_names(classes)
    x, classes = embeddings.detach().cpu()[pick].double(), ids[pick]
    x = x - x.mean(0)
    axes = torch.linalg.svd(x, full_matrices=False).Vh[:2]
    xy = torch.nn.functional.pad(x @ axes.T, (0, 2 - axes.shape[0])).numpy()  # 1-D embeddings: a line
    largest = torch.bincount(ids).argsort(descending=True, stable=True)[:max_classes]  # over all items
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    others = ~torch.isin(classes, largest).numpy()
    if others.any():
        ax.scatter(xy[others, 0], xy[others, 1], s=4, color="lightgrey", label="other classes")
    for c in largest.tolist():
        rows = (classes == c).numpy()
        ax.scatter(xy[rows, 0], xy[rows, 1], s=8, label=str(names[c]))
    ax.set(xlabel="principal axis 1", ylabel="principal axis 2",
           title=f"{len(pick)} of {embeddings.shape[0]} items, the {len(largest)} largest classes coloured (PCA)")
    ax.legend(title="class", fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    figure = (f"{top.capitalize()} embeddings", _png(fig))
    plt.close(fig)
    return figure


def nearest_neighbours(embeddings: torch.Tensor, labels: torch.Tensor, distance: str, queries: torch.Tensor,
                       k: int, groups: torch.Tensor | None = None,
                       levels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, relevant)`` ``(len(queries), k)``: each query item's k nearest other items (exact search,
    ties in item order; with ``groups``, no item of the query's group) and whether each is relevant
    to it (same class; the finest class of a hierarchy; a shared label for multi-label). With
    ``levels=True`` and hierarchical labels, ``relevant`` is instead the number of leading levels they
    share (int64, ``L``: the same finest class). Slots beyond the items a query can retrieve hold id
    -1, not relevant (0)."""
    from deepmetric.index import knn
    groups = torch.arange(embeddings.shape[0]) if groups is None else groups
    k = min(k, embeddings.shape[0] - 1)
    _, ids = knn(embeddings[queries], embeddings, k, distance, query_groups=groups[queries], gallery_groups=groups)
    if levels and is_hierarchical(labels):
        return ids, shared_levels(labels[queries], labels).gather(1, ids.clamp_min(0)) * (ids >= 0)
    return ids, same_mask(labels[queries], labels).gather(1, ids.clamp_min(0)) & (ids >= 0)


def neighbours_figure(inputs: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, distance: str,
                      groups: torch.Tensor | None = None, n_queries: int = 6, k: int = 8) -> tuple[str, str] | None:
    """For image inputs ``(N, C, H, W)`` (C = 1 or 3): ``n_queries`` queries taken evenly over the
    items, each followed by its k nearest neighbours (:func:`nearest_neighbours`), framed green when
    relevant, red when not, and for a hierarchy orange when only coarser levels are shared (e.g. the
    same actor in another track: relevant to ``level_0``'s metrics); None for other inputs or fewer
    than 2 items."""
    if inputs.shape[0] != embeddings.shape[0]:
        raise ValueError(f"inputs: expected {embeddings.shape[0]} items like the embeddings, got {inputs.shape[0]}")
    if inputs.dim() != 4 or inputs.shape[1] not in (1, 3) or inputs.shape[0] < 2:
        return None
    plt = _pyplot()
    inputs, embeddings, labels = inputs.detach().cpu(), embeddings.detach().cpu(), labels.cpu()
    queries = torch.linspace(0, inputs.shape[0] - 1, min(n_queries, inputs.shape[0])).long().unique()
    ids, shared = nearest_neighbours(embeddings, labels, distance, queries, k, None if groups is None else groups.cpu(),
                                     levels=True)
    full = labels.shape[1] if is_hierarchical(labels) else 1
    fig, axes = plt.subplots(len(queries), ids.shape[1] + 1, squeeze=False,
                             figsize=(1.1 * (ids.shape[1] + 1), 1.1 * len(queries)))

    def show(ax, item, colour):
        image = inputs[item].float().permute(1, 2, 0)
        image = image.squeeze(-1) if image.shape[-1] == 1 else image
        low, high = float(image.min()), float(image.max())
        ax.imshow(((image - low) / (high - low if high > low else 1.0)).numpy(), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set(color=colour, linewidth=3)

    for row, q in enumerate(queries.tolist()):
        show(axes[row, 0], q, "black")
        for col in range(ids.shape[1]):
            if ids[row, col] >= 0:
                level = int(shared[row, col])
                show(axes[row, col + 1], int(ids[row, col]), "green" if level == full else "orange" if level else "red")
            else:
                axes[row, col + 1].axis("off")
    axes[0, 0].set_title("query", fontsize=8)
    legend = ("green: same finest class, orange: same coarser class only, red: other" if full > 1 else
              "green: relevant, red: not")
    figure = (f"Nearest neighbours ({legend}; {distance} distance)", _png(fig))
    plt.close(fig)
    return figure


def evaluation_figures(metrics: dict, embeddings: torch.Tensor, labels: torch.Tensor, distance: str,
                       inputs: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                       top: str = "test") -> list[tuple[str, str]]:
    """The plots of an evaluation: recall curve, embeddings, and nearest neighbours of image inputs
    (none of the query's group when ``groups`` is given, as in the metrics); ``top`` names what was
    evaluated (e.g. test, all)."""
    figures = [recall_figure(metrics, top), embedding_figure(embeddings, labels, top=top)]
    if inputs is not None:
        figures.append(neighbours_figure(inputs, embeddings, labels, distance, groups))
    return [f for f in figures if f is not None]


def _html_table(rows: dict, columns: list) -> str:
    """``rows`` ``{name: {column: value}}`` as an HTML table (floats to 4 decimals, ``-`` where missing)."""
    def cell(v):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):  # as metrics.json's null
            return "-"
        return html.escape(str(v)) if isinstance(v, (int, str)) else f"{v:.4f}"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["", *columns])
    body = "".join(f"<tr><td>{html.escape(str(name))}</td>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns)
                   + "</tr>" for name, row in rows.items())
    return f"<table><tr>{head}</tr>{body}</table>"


def _write_html(path: Path, title: str, intro: str, metrics: dict, figures: list[tuple[str, str]],
                top: str = "test") -> Path:
    """The metrics as a table (one column per hierarchy level, as ``deepmetric evaluate`` prints them,
    the first named ``top``), the per-class results if any, then the figures."""
    tables = "<h2>Metrics</h2>" + _html_table(*metric_rows(metrics, top))
    per_class = {"": metrics.get("per_class")}
    per_class.update({f" at {name}": nested["per_class"] for name, nested in coarser_levels(metrics).items()})
    for where, rows in per_class.items():
        if rows:
            keys = list(dict.fromkeys(key for row in rows.values() for key in row))
            tables += f"<h2>Per class{html.escape(where)}</h2>" + _html_table(rows, keys)
    images = "".join(f"<h2>{html.escape(name)}</h2><img src='data:image/png;base64,{data}'>" for name, data in figures)
    write_text(path, f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
                     f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>{tables}{images}")
    return path


def write_report(run_dir: str | Path, metrics: dict, distances: dict | None = None, test=None,
                 about: str = "") -> Path:
    """Write ``run_dir/report.html`` from a run's ``metrics.json`` content and return its path;
    ``distances`` (``{relation: 1-D array}``, e.g. from
    :func:`deepmetric.evaluation.hierarchy.quadlet_distances`) adds their histograms, ``test``
    ``(inputs, embeddings, labels, groups)`` the plots of :func:`evaluation_figures`, and ``about``
    says what was tested (data, split, items, exclusions)."""
    figures = _plots(metrics, distances)
    if metrics.get("test") and test is not None:
        inputs, embeddings, labels, groups = test
        figures += evaluation_figures(metrics["test"], embeddings, labels, metrics["distance"], inputs, groups)
    elif metrics.get("test"):
        figures += [f for f in [recall_figure(metrics["test"])] if f is not None]
    validated = any("val" in e for e in metrics["epochs"])
    chosen = (f"the checkpoint of epoch {metrics['best_epoch']} (best {metrics.get('select', 'map_at_r')} on the "
              "validation classes)" if validated else f"the checkpoint of the last epoch ({metrics['best_epoch']}; no "
              "validation classes)")
    intro = f"{about + '; ' if about else ''}distance: {metrics['distance']}; tested: {chosen}"
    return _write_html(Path(run_dir) / "report.html", f"deepmetric run: {Path(run_dir).name}", intro,
                       metrics.get("test") or {}, figures)


def write_evaluation_report(path: str | Path, metrics: dict, embeddings: torch.Tensor, labels: torch.Tensor,
                            distance: str, inputs: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                            title: str = "evaluation", about: str = "", top: str = "test") -> Path:
    """Write an HTML report of ``metrics`` (as :func:`deepmetric.evaluate` returns them) with the
    plots of :func:`evaluation_figures` to ``path`` and return it; ``about`` says what was evaluated,
    ``top`` names the column of the top-level metrics."""
    return _write_html(Path(path), f"deepmetric {title}",
                       about or f"distance: {distance}, {embeddings.shape[0]} items", metrics,
                       evaluation_figures(metrics, embeddings, labels, distance, inputs, groups, top), top)
