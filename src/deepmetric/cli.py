"""The ``deepmetric`` command (DESIGN.md "Public surface")."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
from deepmetric._io import write_json

TABLE_KEYS = ("precision_at_1", "recall_at_4", "map_at_r")


def format_table(rows: dict[str, dict], keys=TABLE_KEYS) -> str:
    """A plain text table: one row per name, one column per metric key."""
    width = max(len(name) for name in rows) + 2
    lines = ["".ljust(width) + "".join(k.rjust(16) for k in keys)]
    for name, metrics in rows.items():
        lines.append(name.ljust(width) + "".join(
            (f"{metrics[k]:.4f}" if k in metrics else "-").rjust(16) for k in keys))
    return "\n".join(lines)


class _Group(click.Group):
    """Turns the library's input errors into one clear line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
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
    """Train from CONFIG_FILE and write a run directory."""
    from deepmetric.training import load_config
    from deepmetric.training import train as run_training
    config = _config_with_data_dir(load_config(config_file, overrides), ctx)
    out = Path(out or Path("runs") / Path(config_file).stem)
    result = run_training(config, out, progress=not no_progress)
    if "test" in result:
        click.echo(format_table({f"test ({config['split']})": result["test"]}))
    click.echo(f"run written to {out}")


def _run_embeddings(ctx, run_dir, data, split):
    """Embeddings of the test part of ``data`` (default: the run's data) under the run's model."""
    from deepmetric.training import load_run
    from deepmetric.training.config import resolve
    from deepmetric.training.trainer import embed, load_data
    model, state = load_run(run_dir)
    config = dict(state["config"])
    overrides = ([f"data={data}"] if data else []) + ([f"split={split}"] if split else [])
    config = _config_with_data_dir(resolve(config, overrides), ctx)
    _, test = load_data(config)
    return embed(model, test.x, progress=True), test, state


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--data", default=None, help="Data SPEC (default: the run's data).")
@click.option("--split", default=None, help="Split whose test part is evaluated (default: the run's; 'all' for everything).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help="Also write metrics to this JSON file.")
@click.pass_context
def evaluate(ctx, run_dir, data, split, json_file):
    """Evaluate a trained run on the test part of its data (query-in-gallery)."""
    from deepmetric.evaluation import evaluate as evaluate_embeddings
    emb, test, state = _run_embeddings(ctx, run_dir, data, split)
    metrics = evaluate_embeddings(emb, test.y, distance=state["distance"])
    click.echo(format_table({"test": metrics}))
    if json_file:
        write_json(json_file, metrics)
    else:
        click.echo(json.dumps(metrics, indent=2))


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
    emb, test, state = _run_embeddings(ctx, run_dir, data, split)
    save_npz(out, emb.numpy(), test.y.numpy(), ids=test.ids, groups=test.groups, distance=state["distance"])
    click.echo(f"wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {out}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
