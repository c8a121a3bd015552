import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deepmetric.cli import main

ROOT = Path(__file__).parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_list_shows_registered_components():
    result = run("list", "losses")
    assert result.exit_code == 0
    assert "triplet" in result.output and "multi-similarity" in result.output
    assert "semi-hard" in run("list").output


def test_train_evaluate_embed(tmp_path):
    out = tmp_path / "run"
    result = run("train", DIGITS, "--set", "epochs=1", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").exists()
    train_output = result.output
    result = run("evaluate", out, "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    recorded = json.loads((out / "metrics.json").read_text())["test"]
    assert metrics["map_at_r"] == pytest.approx(recorded["map_at_r"], abs=1e-6)
    # train printed the test metrics one per row (a column per hierarchy level where there are levels)
    assert f"map_at_r{recorded['map_at_r']:.4f}".replace(" ", "") in train_output.replace(" ", "")
    result = run("embed", out, "--data", "digits", "--out", tmp_path / "e.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "e.npz") as f:
        assert f["X"].shape == (len(f["y"]), 64) and f["X"].dtype == np.float32
        assert str(f["distance"]) == "euclidean"
        assert set(f["y"].tolist()) == {5, 6, 7, 8, 9}


@pytest.mark.parametrize("args,message", [
    (["--set", "loss=tripletz"], "unknown loss 'tripletz'; known losses: "),
    (["--set", "epochz=1"], "unknown config key 'epochz'"),
    (["--set", "data=npz:/nonexistent/features.npz"], "/nonexistent/features.npz"),
])
def test_train_errors_are_clear(tmp_path, args, message):
    result = run("train", DIGITS, *args, "--out", tmp_path / "r")
    assert result.exit_code != 0
    assert message in result.output


def test_debug_shows_the_traceback_and_components_are_named(tmp_path, monkeypatch):
    result = run("train", DIGITS, "--set", "miner={name: triplet-margin, margin: abc}", "--out", tmp_path / "r")
    assert result.exit_code != 0  # the loss has a margin too: the message says whose it is
    assert "miner 'triplet-margin': margin: expected a number, got 'abc'" in result.output
    monkeypatch.setenv("DEEPMETRIC_DEBUG", "1")
    result = run("train", DIGITS, "--set", "loss=tripletz", "--out", tmp_path / "r")
    assert isinstance(result.exception, KeyError) and "unknown loss 'tripletz'" in str(result.exception)


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "deepmetric", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout
