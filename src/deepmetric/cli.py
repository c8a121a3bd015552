"""The ``deepmetric`` command (DESIGN.md "Public surface")."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click
from deepmetric._io import write_json

TABLE_KEYS = ("precision_at_1", "recall_at_4", "r_precision", "map_at_r", "mrr")


def format_table(rows: dict, keys=TABLE_KEYS) -> str:
    """A plain text table: one row per name, one column per key (floats to 4 decimals, integers as
    they are, ``-`` where a row has no such key)."""
    def cell(value):
        if value is None or (isinstance(value, float) and value != value):  # None, NaN
            return "-"
        return str(value) if isinstance(value, int) else f"{value:.4f}"

    width = max([len(str(name)) for name in rows] + [0]) + 2
    widths = [max(len(str(k)) + 2, 12) for k in keys]
    lines = ["".ljust(width) + "".join(str(k).rjust(w) for k, w in zip(keys, widths))]
    for name, metrics in rows.items():
        lines.append(str(name).ljust(width) + "".join(
            cell(metrics.get(k)).rjust(w) for k, w in zip(keys, widths)))
    return "\n".join(lines)


def metrics_table(metrics: dict, top: str) -> str:
    """:func:`deepmetric.evaluate`'s result as a table: one row per metric, one column for the top level
    (named ``top``) and one per nested result (hierarchy levels, class means)."""
    from deepmetric.report import metric_rows
    rows, columns = metric_rows(metrics, top)
    return format_table(rows, keys=columns)


class _Group(click.Group):
    """Turns the library's input errors into one clear line instead of a traceback (all of it with
    ``DEEPMETRIC_DEBUG=1``: the same exception types can also come from a bug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader left (e.g. `| head`): end quietly, as a tool SIGPIPE stops would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            ctx.exit(128 + 13)
        except (ValueError, KeyError, TypeError, OSError) as err:
            if os.environ.get("DEEPMETRIC_DEBUG") == "1":
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise click.ClickException(f"{type(err).__name__}: {message}") from err


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Root of the data sets (else $DEEPMETRIC_DATA, else ../shared/data).")
@click.pass_context
def main(ctx, data_dir):
    """deepmetric: deep metric learning, evaluation and search."""
    ctx.obj = {"data_dir": data_dir}


def _config_with_data_dir(config: dict, ctx) -> dict:
    if ctx.obj["data_dir"] is not None:
        config["data_dir"] = ctx.obj["data_dir"]
    return config


@main.command()
@click.option("--epochs", type=int, default=None, help="Override the number of epochs.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (default: temporary).")
@click.pass_context
def demo(ctx, epochs, out):
    """Train on scikit-learn's digits (zero-shot split) and compare raw features with the embedding."""
    from deepmetric.evaluation import evaluate
    from deepmetric.training import resolve, train
    from deepmetric.training.trainer import load_data

    overrides = [] if epochs is None else [f"epochs={epochs}"]
    config = _config_with_data_dir(resolve({}, overrides), ctx)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, out or tmp)
    _, test = load_data(config)
    raw = evaluate(test.x.flatten(1), test.y, distance="euclidean", nmi=False)
    click.echo(f"\nzero-shot retrieval on digits (test classes {[int(c) for c in test.classes]}):")
    click.echo(format_table({"raw pixels": raw, f"learned ({config['loss']['name']})": result["test"]}))


@main.command("list")
@click.argument("kind", required=False,
                type=click.Choice(["losses", "miners", "models", "datasets", "indexes"]))
def list_cmd(kind):
    """List registered components (all kinds when KIND is omitted)."""
    from deepmetric import index, losses, mining, models
    from deepmetric.data import DATASETS
    registries = {"losses": losses.LOSSES, "miners": mining.MINERS, "models": models.MODELS,
                  "datasets": DATASETS, "indexes": index.INDEXES}
    for name in [kind] if kind else registries:
        click.echo(f"{name}: {', '.join(registries[name].names())}")


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (default: runs/<config name>).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.pass_context
def train(ctx, config_file, overrides, out, no_progress):
    """Train from CONFIG_FILE and write a run directory. Under a launcher that sets WORLD_SIZE (e.g.
    torchrun --nproc_per_node 2), every process trains on its share of each epoch's batches and rank 0
    writes."""
    from deepmetric.training import load_config
    from deepmetric.training import train as run_training
    config = _config_with_data_dir(load_config(config_file, overrides), ctx)
    out = Path(out or Path("runs") / Path(config_file).stem)
    import torch.distributed as dist

    from deepmetric.training.distributed import is_main_process
    launched = (int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()
                and not dist.is_initialized())  # e.g. by torchrun
    if launched:  # RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from the launcher
        dist.init_process_group("gloo")  # the trainer runs on the CPU
    try:
        main = is_main_process()
        result = run_training(config, out, progress=not no_progress and main, log=print if main else lambda *a: None)
    finally:
        if launched:
            dist.destroy_process_group()
    if "test" in result:  # one column per hierarchy level: the selected one may be a level's
        click.echo(metrics_table(result["test"], f"test ({config['split']})"))
    if main:
        click.echo(f"run written to {out}")


def _check_run_data(files: dict, recorded: dict, run_dir) -> None:
    """The run's own data must be the files it was trained on (by checksum: a relative ``npz:`` path
    read from another directory, or a file changed since, would be evaluated silently otherwise)."""
    if not recorded:  # runs written before the checksums were kept
        return
    known = set(recorded.values())
    for path, sha in files.items():
        if sha not in known:
            raise click.ClickException(
                f"data: {path} is not a file the run {run_dir} was trained on (sha256 {sha[:12]}...; the run "
                f"recorded {', '.join(f'{p} ({h[:12]}...)' for p, h in recorded.items())}); run from the "
                "directory it was trained in, or pass --data to evaluate other data on purpose")


def _run_embeddings(ctx, run_dir, data, split):
    """Embeddings of the test part of ``data`` (default: the run's data) under the run's model."""
    from deepmetric.training import load_run
    from deepmetric.training.config import resolve
    from deepmetric.training.trainer import embed, load_data
    model, state = load_run(run_dir)
    config = dict(state["config"])
    if data:  # the SPEC as given (not read as YAML, where "npz:" would be a mapping)
        config["data"] = data
    config = _config_with_data_dir(resolve(config, [f"split={split}"] if split else [], strict=False), ctx)
    _, test = load_data(config)
    if not data:
        _check_run_data(test.files, state.get("data_files") or {}, run_dir)
    if list(test.x.shape[1:]) != list(state["in_shape"]):
        raise click.ClickException(f"--data: the model takes inputs of shape {tuple(state['in_shape'])}, "
                                   f"the data {test.name!r} has {tuple(test.x.shape[1:])}")
    return embed(model, test.x, config["eval"]["batch_size"], progress=True), test, state, config["split"]


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--data", default=None, help="Data SPEC (default: the run's data).")
@click.option("--split", default=None, help="Split whose test part is evaluated (default: the run's; 'all' for everything).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help="Also write metrics to this JSON file.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False), default=None,
              help="Also write an HTML report: metrics, recall curve, embeddings in 2-D, and for images the "
                   "nearest neighbours of a few queries.")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=None,
              help="Also report recall, precision, mAP and NDCG at this k "
                   "(besides 1, 2, 4, 8, 10, 100 where the gallery allows).")
@click.option("--full-map", is_flag=True,
              help="Also report mAP over the full ranking (every query ranks the whole gallery).")
@click.option("--per-class", is_flag=True,
              help="Also report every metric per class and the unweighted mean over classes (the printed "
                   "table shows the main metrics per class; --json and --report hold them all).")
@click.option("--exclude-groups/--include-groups", default=None,
              help="A query never retrieves items of its own group (e.g. frames of one video); default: as "
                   "the run was validated (eval.exclude_groups; unset: whenever the data have groups).")
@click.option("--kmeans", type=click.Choice(["sklearn", "faiss"]), default="sklearn", show_default=True,
              help="k-means for NMI/AMI/F1 (faiss is much faster with many classes).")
@click.pass_context
def evaluate(ctx, run_dir, data, split, json_file, report_file, k, full_map, per_class, exclude_groups, kmeans):
    """Evaluate a trained run on the test part of its data (query-in-gallery): every applicable metric,
    one column per hierarchy level when the labels have levels."""
    from deepmetric.evaluation import evaluate as evaluate_embeddings
    for option, file in (("--json", json_file), ("--report", report_file)):  # fail before the work, not after
        if file and not Path(file).resolve().parent.is_dir():
            raise click.ClickException(f"{option}: no directory {Path(file).resolve().parent} to write {file} in")
    emb, test, state, split = _run_embeddings(ctx, run_dir, data, split)
    if exclude_groups and test.groups is None:
        raise click.ClickException(f"--exclude-groups: the data {test.name!r} has no groups")
    if exclude_groups is None:
        exclude_groups = state["config"]["eval"].get("exclude_groups") is not False and test.groups is not None
    metrics = evaluate_embeddings(emb, test.y, distance=state["distance"], k=k, full_map=full_map,
                                  per_class=per_class, groups=test.groups if exclude_groups else None,
                                  kmeans=kmeans)
    evaluated = {"run": str(run_dir), "checkpoint": "best", "data": test.name, "split": split, "items": len(test),
                 "data_files": test.files, "distance": state["distance"], "exclude_groups": exclude_groups}
    about = (f"{run_dir} (best checkpoint) on {test.name}, split {split} "
             f"({'all items' if split == 'all' else 'its test part'}), {test.y.shape[0]} items, "
             f"{state['distance']} distance, {'own group' if exclude_groups else 'only the query itself'} excluded")
    top = "all" if split == "all" else "test"
    click.echo(about)
    click.echo(metrics_table(metrics, top))
    if per_class:
        tables = {"": metrics}
        from deepmetric.report import coarser_levels
        tables.update({f" at {key}": value for key, value in coarser_levels(metrics).items()})
        for where, scores in tables.items():
            click.echo(f"\nper class{where}:")
            click.echo(format_table({f"class {c}": m for c, m in scores["per_class"].items()},
                                    keys=TABLE_KEYS + ("num_queries", "queries_without_relevant")))
    if json_file:
        write_json(json_file, {**metrics, "evaluated": evaluated})
        click.echo(f"metrics written to {json_file}")
    if report_file:
        from deepmetric.report import write_evaluation_report
        write_evaluation_report(report_file, metrics, emb, test.y, state["distance"], test.x,
                                groups=test.groups if exclude_groups else None,
                                title=f"evaluation of {Path(run_dir).name} on {test.name}", about=about, top=top)
        click.echo(f"report written to {report_file}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--data", default=None, help="Data SPEC (default: the run's data).")
@click.option("--split", default=None, help="Split whose test part is embedded (default: the run's; 'all' for everything).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file (X, y, ids, groups).")
@click.pass_context
def embed(ctx, run_dir, data, split, out):
    """Write the embeddings of a data set under a trained run's model to an .npz file."""
    from deepmetric.data import save_npz
    out = Path(out)
    if out.suffix != ".npz":
        raise click.ClickException(f"--out: expected a .npz file name, got {out}")
    if not out.resolve().parent.is_dir():
        raise click.ClickException(f"--out: no directory {out.resolve().parent} to write {out} in")
    emb, test, state, _ = _run_embeddings(ctx, run_dir, data, split)
    save_npz(out, emb.numpy(), test.y.numpy(), ids=test.ids, groups=test.groups, distance=state["distance"])
    click.echo(f"wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {out}")


@main.group("index")
def index_group():
    """Build and search nearest-neighbour indexes over embeddings files."""


def _read_vectors(path) -> dict:
    """Arrays of an embeddings .npz read without pickles: ``X`` (N, D), optional ``ids`` (integers or
    strings) and ``distance`` (the one the embeddings were trained for)."""
    from deepmetric.data.datasets import read_npz
    arrays = read_npz(path, ("X",), ("ids", "distance"))
    if arrays["X"].ndim != 2:
        raise ValueError(f"{path}: expected an (N, D) array 'X', got shape {arrays['X'].shape}")
    if "distance" in arrays:
        distance = arrays["distance"]
        if distance.size != 1 or distance.dtype.kind != "U":
            raise ValueError(f"{path}: expected 'distance' to be one string such as 'cosine', got {distance!r}")
        arrays["distance"] = str(distance.reshape(()))
    if arrays["X"].dtype.kind not in "fiub":  # binary codes too: bits, signs or bytes
        raise ValueError(f"{path}: expected real numbers in 'X', got dtype {arrays['X'].dtype}")
    if arrays["X"].dtype.byteorder == ">":  # torch reads native byte order only
        arrays["X"] = arrays["X"].astype(arrays["X"].dtype.newbyteorder("="))
    return arrays


def _float_array(x):
    import numpy as np
    return x if x.dtype.kind == "f" else x.astype(np.float32)


@index_group.command("build")
@click.argument("embeddings", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Index directory to write.")
@click.option("--backend", default="exact", show_default=True,
              help="exact, flat, ivf-flat, hnsw, ivf-pq, ivf-fastscan, binary, or any faiss factory string "
                   "(e.g. IVF64,PQ16).")
@click.option("--distance", default=None,
              help="Distance (default: the one recorded in the file, else euclidean; hamming for binary).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Backend option, e.g. nlist=256 or ef_search=128 (repeatable).")
def index_build(embeddings, out, backend, distance, options):
    """Index the vectors X of EMBEDDINGS (.npz as written by `deepmetric embed`) and save it to --out."""
    import torch
    import yaml
    from deepmetric import index as dmi
    kwargs = {}
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {item!r}")
        kwargs[key] = yaml.safe_load(raw)
    arrays = _read_vectors(embeddings)
    x = arrays["X"]
    if backend == "binary":
        index = dmi.create("binary", distance=distance or "hamming", **kwargs)
    else:
        distance = distance or arrays.get("distance") or "euclidean"
        x = _float_array(x)
        if backend == "faiss":
            raise ValueError("--backend: 'faiss' takes a factory string; give the string itself, e.g. IVF256,Flat")
        if backend in dmi.INDEXES:
            index = dmi.create(backend, distance=distance, **kwargs)
        else:
            index = dmi.create("faiss", factory=backend, distance=distance, **kwargs)
    try:
        index.add(torch.from_numpy(x), arrays.get("ids"))
    except (ValueError, TypeError) as err:  # e.g. ids the file holds: name the file
        raise (TypeError if isinstance(err, TypeError) else ValueError)(f"{embeddings}: {err}") from None
    index.save(out)
    article = "an" if index.backend[0] in "aeiou" else "a"
    click.echo(f"wrote {article} {index.backend} index of {len(index)} vectors (dimension {index.dim}, "
               f"distance {index.distance}) to {out}")


#: bound on the results one search command prints (queries x k)
_MAX_RESULTS = 100_000_000


@index_group.command("search")
@click.argument("index_dir", type=click.Path(file_okay=False, exists=True))
@click.argument("queries", type=click.Path(dir_okay=False, exists=True))
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Neighbours per query (slots beyond the indexed items are null).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON {ids, distances} (Q x k lists) on stdout.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="Inverted lists visited per query (IVF indexes; default: the saved value).")
@click.option("--ef-search", type=click.IntRange(min=1), default=None,
              help="Candidates kept while searching (HNSW indexes; default: the saved value).")
def index_search(index_dir, queries, k, as_json, nprobe, ef_search):
    """Search the saved index INDEX_DIR for the vectors X of QUERIES (.npz); empty slots (beyond the
    indexed items, or left by an approximate index) are null."""
    import math

    import torch
    from deepmetric import index as dmi
    index = dmi.load(index_dir)
    if nprobe is not None or ef_search is not None:
        if not hasattr(index, "set_search_options"):
            raise ValueError(f"--nprobe/--ef-search: the {index.backend} index has no search-time options")
        index.set_search_options(nprobe=nprobe, ef_search=ef_search)
    arrays = _read_vectors(queries)
    x = arrays["X"]
    if "distance" in arrays and index.backend != "binary":  # recorded by `embed`; binary codes are hamming
        from deepmetric.distances import check_distance
        try:
            check_distance(arrays["distance"])
        except ValueError as err:
            raise ValueError(f"{queries}: {err}") from None
        if arrays["distance"] != index.distance:  # the index may have been built for another on purpose
            click.echo(f"warning: {queries}: the queries were embedded for the {arrays['distance']} distance; the "
                       f"index measures {index.distance}", err=True)
    if x.shape[0] * k > _MAX_RESULTS:
        raise ValueError(f"-k: {x.shape[0]} queries x {k} neighbours are more than {_MAX_RESULTS:,} results "
                         f"(the index holds {len(index)} items)")
    try:
        distances, ids = index.search(torch.from_numpy(x if index.backend == "binary" else _float_array(x)), k)
    except ValueError as err:  # e.g. queries of another dimension than the index's
        raise ValueError(f"{queries}: {err}") from None
    names = index.names(ids)
    rows = [[None if math.isinf(v) else v for v in row] for row in distances.tolist()]
    if as_json:
        click.echo(json.dumps({"ids": names, "distances": rows}))
        return
    click.echo(f"{index.backend} index of {len(index)} items ({index.distance} distance); "
               f"top {k} of {len(names)} queries:")
    for q, (row_ids, row_distances) in enumerate(zip(names, rows)):
        hits = ", ".join(f"{i} ({d:.4g})" for i, d in zip(row_ids, row_distances) if i is not None)
        click.echo(f"query {q}: {hits or '(no results)'}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
