"""`deepmetric evaluate RUN_DIR`: every applicable metric in a table and in --json, with --k,
--full-map and --per-class passed through, hierarchy levels as columns, clear errors."""
import html
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import deepmetric as dm
from deepmetric.cli import format_table, main
from deepmetric.data import load_npz, load_split
from deepmetric.training import embed, load_run

DIGITS = str(Path(__file__).parents[1] / "configs" / "digits.yaml")
FEATURES = str(Path(__file__).parents[1] / "configs" / "features.yaml")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_evaluate") / "run"
    result = run("train", DIGITS, "--set", "epochs=1", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


def expected_metrics(run_dir, x, y, **options):
    """What the command must report: dm.evaluate on the run's embeddings, as JSON would store it."""
    model, state = load_run(run_dir)
    metrics = dm.evaluate(embed(model, x), y, distance=state["distance"], **options)
    return json.loads(json.dumps(metrics))


def table_row(output, name):
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [name])


def test_evaluate_prints_and_writes_every_metric(run_dir, tmp_path):
    out = tmp_path / "m.json"
    result = run("evaluate", run_dir, "--json", out, "--k", 5, "--full-map", "--per-class")
    assert result.exit_code == 0, result.output
    _, test = load_split("digits", split="zero-shot")
    expected = expected_metrics(run_dir, test.x, test.y, k=5, full_map=True, per_class=True)
    written = json.loads(out.read_text())
    # what was evaluated is recorded beside the metrics
    assert written.pop("evaluated") == {
        "run": str(run_dir), "checkpoint": "best", "data": test.name, "split": "zero-shot", "items": len(test),
        "data_files": test.files, "distance": "euclidean", "exclude_groups": False}
    assert written == expected
    for key in ("precision_at_5", "map_at_5", "ndcg_at_5", "map", "mrr", "nmi", "ami"):
        assert key in written
    assert set(written["per_class"]) == {"5", "6", "7", "8", "9"}
    # the table: one row per metric, columns "test" and "class_mean"; then one row per class
    about, header = result.stdout.splitlines()[:2]
    assert about == (f"{run_dir} (best checkpoint) on {test.name}, split zero-shot (its test part), "
                     f"{len(test.y)} items, euclidean distance, only the query itself excluded")
    assert header.split() == ["test", "class_mean"]
    assert table_row(result.stdout, "map_at_r") == [
        "map_at_r", f"{expected['map_at_r']:.4f}", f"{expected['class_mean']['map_at_r']:.4f}"]
    assert table_row(result.stdout, "num_queries") == ["num_queries", str(len(test.y)), "-"]
    assert "per class:" in result.stdout
    first_class = expected["per_class"]["5"]
    assert table_row(result.stdout, "class")[:3] == ["class", "5", f"{first_class['precision_at_1']:.4f}"]


def test_evaluate_without_options_reports_the_defaults(run_dir, tmp_path):
    result = run("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()}
    assert {"precision_at_1", "recall_at_100", "map_at_100", "ndcg_at_8", "r_precision", "map_at_r",
            "mrr", "nmi", "ami"} <= rows
    assert "map" not in rows and "per class:" not in result.stdout
    assert not list(tmp_path.iterdir())  # nothing written without --json


def test_evaluate_hierarchical_labels_shows_every_level(run_dir, tmp_path):
    digits = load_split("digits", split="all")[1]
    y = np.stack([digits.y.numpy() % 2, digits.y.numpy()], axis=1)  # parent: odd/even, child: the digit
    np.savez(tmp_path / "tree.npz", X=digits.x.numpy().astype(np.float32), y=y)
    out = tmp_path / "m.json"
    result = run("evaluate", run_dir, "--data", f"npz:{tmp_path / 'tree.npz'}", "--split", "all", "--json", out)
    assert result.exit_code == 0, result.output
    data = load_npz(tmp_path / "tree.npz")
    expected = expected_metrics(run_dir, data.x, data.y)
    written = json.loads(out.read_text())
    assert written.pop("evaluated")["split"] == "all"
    assert written == expected
    # --split all evaluates every item: the first column says so
    assert "split all (all items)" in result.stdout.splitlines()[0]
    assert result.stdout.splitlines()[1].split() == ["all", "level_0", "level_1", "level_1_within_parent"]
    assert table_row(result.stdout, "precision_at_1") == ["precision_at_1"] + [
        f"{column['precision_at_1']:.4f}" for column in (
            expected, expected["level_0"], expected["level_1"], expected["level_1_within_parent"])]
    # per class at every level too: the parents (even, odd) as their own table
    result = run("evaluate", run_dir, "--data", f"npz:{tmp_path / 'tree.npz'}", "--split", "all", "--per-class")
    assert result.exit_code == 0, result.output
    parents = expected_metrics(run_dir, data.x, data.y, per_class=True)["level_0"]["per_class"]
    tables = result.stdout.split("\nper class at ")
    assert [table.splitlines()[0] for table in tables[1:]] == ["level_0:"]  # level_1's: the first table's
    odd = next(line.split() for line in tables[1].splitlines() if line.split()[:2] == ["class", "1"])
    assert odd == ["class", "1"] + [
        f"{parents['1'][key]:.4f}" for key in ("precision_at_1", "recall_at_4", "r_precision", "map_at_r", "mrr")] + [
        str(parents["1"]["num_queries"]), "0"]


def test_evaluate_errors_are_clear(run_dir, tmp_path):
    result = run("evaluate", run_dir, "--k", 0)
    assert result.exit_code != 0
    assert "0 is not in the range x>=1" in result.output
    narrow = tmp_path / "narrow.npz"
    np.savez(narrow, X=np.zeros((20, 16), dtype=np.float32), y=np.arange(20) % 4)
    result = run("evaluate", run_dir, "--data", f"npz:{narrow}")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--data: the model takes inputs of shape (64,), the data" in result.output and "has (16,)" in result.output
    result = run("evaluate", run_dir, "--json", tmp_path / "missing" / "m.json")
    assert result.exit_code != 0 and f"--json: no directory {tmp_path / 'missing'}" in result.output
    result = run("evaluate", run_dir, "--k", "many")
    assert result.exit_code != 0 and "'many' is not a valid integer" in result.output


def test_evaluate_writes_a_report_with_plots(run_dir, tmp_path):
    result = run("evaluate", run_dir, "--report", tmp_path / "r.html", "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.html").read_text()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert f"<td>map_at_r</td><td>{metrics['map_at_r']:.4f}</td>" in text
    assert f"<p>{html.escape(result.stdout.splitlines()[0])}</p>" in text  # what was evaluated
    # digits are 64 features, not images: recall curve and embeddings, no neighbour grid
    assert text.count("data:image/png;base64,") == 2 and "Test embeddings" in text and "Nearest" not in text
    result = run("evaluate", run_dir, "--report", tmp_path / "missing" / "r.html")
    assert result.exit_code != 0 and f"--report: no directory {tmp_path / 'missing'}" in result.output


def test_format_table_hand_worked():
    table = format_table({"a": {"x": 0.5, "n": 3}, "bb": {"x": 1.0}}, keys=("x", "n"))
    # first column as wide as the longest name + 2, then each column max(len(key) + 2, 12) wide
    assert table.splitlines() == [
        "    " + "x".rjust(12) + "n".rjust(12),
        "a   " + "0.5000".rjust(12) + "3".rjust(12),
        "bb  " + "1.0000".rjust(12) + "-".rjust(12),
    ]


def test_evaluate_excludes_groups_and_uses_faiss_kmeans(run_dir, tmp_path):
    """Digits has no groups: the flag is refused; with faiss k-means the JSON equals dm.evaluate's."""
    result = run("evaluate", run_dir, "--exclude-groups")
    assert result.exit_code != 0 and "has no groups" in result.output
    out = tmp_path / "m.json"
    result = run("evaluate", run_dir, "--kmeans", "faiss", "--json", out)
    assert result.exit_code == 0, result.output
    _, test = load_split("digits", split="zero-shot")
    written = json.loads(out.read_text())
    assert written.pop("evaluated")["exclude_groups"] is False
    assert written == expected_metrics(run_dir, test.x, test.y, kmeans="faiss")


def test_evaluate_follows_the_runs_group_exclusion_and_refuses_other_data(tmp_path, monkeypatch):
    # items in pairs of near-duplicates (one group each); the run validated without them (eval.exclude_groups
    # unset: whenever the data have groups), so evaluate must too unless told otherwise (it used to report
    # the inflated P@1 silently)
    monkeypatch.chdir(tmp_path)
    g = np.random.default_rng(0)
    base = g.normal(size=(200, 8)).astype(np.float32)
    x = np.repeat(base, 2, axis=0) + 0.01 * g.normal(size=(400, 8)).astype(np.float32)
    np.savez("g.npz", X=x, y=np.repeat(np.arange(40), 10), groups=np.arange(400) // 2)
    result = run("train", FEATURES, "--set", "data=npz:g.npz", "--set", "epochs=1", "--set", "eval.nmi=false",
                 "--set", "sampler.m=4", "--set", "batch_size=16", "--set", "eval.val_classes=0.3",
                 "--out", "run", "--no-progress")
    assert result.exit_code == 0, result.output
    test = json.loads(Path("run/metrics.json").read_text())["test"]
    assert run("evaluate", "run", "--json", "same.json").exit_code == 0
    same = json.loads(Path("same.json").read_text())
    assert same["precision_at_1"] == test["precision_at_1"] and same["evaluated"]["exclude_groups"] is True
    assert run("evaluate", "run", "--include-groups", "--json", "all.json").exit_code == 0
    every = json.loads(Path("all.json").read_text())
    assert every["precision_at_1"] > test["precision_at_1"] and every["evaluated"]["exclude_groups"] is False
    # the relative npz:g.npz read from another directory is another file: refused, not evaluated
    Path("other").mkdir()
    np.savez("other/g.npz", X=x[::-1].copy(), y=np.repeat(np.arange(40), 10), groups=np.arange(400) // 2)
    monkeypatch.chdir(tmp_path / "other")
    result = run("evaluate", tmp_path / "run")
    assert result.exit_code != 0 and f"data: {tmp_path / 'other' / 'g.npz'} is not a file the run" in result.output
    assert run("evaluate", tmp_path / "run", "--data", "npz:g.npz").exit_code == 0  # on purpose: allowed


def test_foreign_checkpoints_specs_and_output_directories_are_named(run_dir, tmp_path):
    import torch
    fake = tmp_path / "fake"
    fake.mkdir()
    torch.save({"weights": torch.zeros(2)}, fake / "best.pt")  # a torch file, not a run: was "KeyError: config"
    result = run("evaluate", fake)
    assert result.exit_code != 0 and "is not a deepmetric run checkpoint (missing ['config', 'model'" in result.output
    torch.save({"config": Path("x")}, fake / "best.pt")  # a pickled object: torch advised weights_only=False
    result = run("evaluate", fake)
    assert result.exit_code != 0 and "not a deepmetric checkpoint (corrupt, or holding objects other" in result.output
    assert "weights_only" not in result.output
    result = run("evaluate", run_dir, "--data", "npz:")  # was read as the YAML mapping {npz: null}
    assert result.exit_code != 0 and "data spec 'npz:': expected a path after 'npz:'" in result.output
    result = run("embed", run_dir, "--out", tmp_path / "missing" / "e.npz")  # created the directory before
    assert result.exit_code != 0 and f"--out: no directory {tmp_path / 'missing'}" in result.output
    assert not (tmp_path / "missing").exists()
