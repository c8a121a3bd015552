import json

import pytest
import torch

from deepmetric._io import atomic_path, write_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_json_has_null_for_nan_and_infinities(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": (2, "x")})
    assert json.loads(target.read_text()) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2, "x"]}


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    # torch names the archive's records after the file it is given: the random temporary name made
    # every copy of a checkpoint differ
    from deepmetric.training import checkpoint as ckpt
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    ckpt.save(tmp_path / "a.pt", state)
    ckpt.save(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(ckpt.load(tmp_path / "b.pt")["model"]["w"], state["model"]["w"])
