"""Data sets: in-memory type, data root, built-in real sets, feature files, splits."""
from __future__ import annotations

import csv
import gc
import gzip
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from deepmetric.data import datasets as dsmod
from deepmetric.data import (
    DATASETS,
    ArrayDataset,
    data_root,
    holdout_classes,
    load,
    load_csv,
    load_dataset,
    load_npz,
    load_split,
    read_idx,
    save_npz,
    sha256_file,
    split_classes,
)

ROOT = data_root()
# sha256 checksums published in the data README
OMNIGLOT_SHA = {
    "images_background.npz": "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199",
    "images_evaluation.npz": "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276",
}
MNIST_SHA = {
    "t10k-images-idx3-ubyte.gz": "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
    "t10k-labels-idx1-ubyte.gz": "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
}


# ---------------------------------------------------------------------------------- ArrayDataset


def test_array_dataset_converts_integer_labels_and_keeps_fields():
    ds = ArrayDataset(torch.zeros(3, 2, dtype=torch.float64), torch.tensor([2, 0, 2], dtype=torch.uint8),
                      groups=torch.tensor([1, 1, 2], dtype=torch.int32), ids=np.array([10, 11, 12]),
                      name="toy", coarse=torch.tensor([0, 0, 0], dtype=torch.int16))
    assert ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == [2, 0, 2]
    assert ds.groups.dtype == torch.int64 and ds.ids.tolist() == [10, 11, 12]
    assert ds.coarse.dtype == torch.int64
    assert len(ds) == 3 and ds.classes.tolist() == [0, 2] and ds.num_classes == 2


def test_array_dataset_float_labels_name_the_dtype():
    with pytest.raises(TypeError, match="float32"):
        ArrayDataset(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0]))


def test_array_dataset_integer_inputs_are_an_error():
    with pytest.raises(TypeError, match="x: .*uint8"):
        ArrayDataset(torch.zeros(3, 2, dtype=torch.uint8), torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("field, value", [
    ("y", torch.tensor([0, 1])),
    ("groups", torch.tensor([0, 1])),
    ("ids", torch.tensor([0, 1, 2, 3])),
    ("coarse", torch.tensor([[0, 1, 2]])),
])
def test_array_dataset_lengths_must_agree(field, value):
    kwargs = {"x": torch.zeros(3, 2), "y": torch.tensor([0, 1, 1]), field: value}
    with pytest.raises(ValueError, match=field):
        ArrayDataset(**kwargs)


def test_array_dataset_float_groups_are_an_error():
    with pytest.raises(TypeError, match="groups"):
        ArrayDataset(torch.zeros(2, 2), torch.tensor([0, 1]), groups=torch.tensor([0.0, 1.0]))


def test_classes_for_each_label_form():
    x = torch.zeros(4, 1)
    assert ArrayDataset(x, torch.tensor([5, -1, 5, 3])).classes.tolist() == [-1, 3, 5]
    hier = ArrayDataset(x, torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]]))
    assert hier.classes.tolist() == [[0, 0], [0, 1], [1, 0]]
    multi = ArrayDataset(x, torch.tensor([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=torch.bool))
    assert multi.classes.tolist() == [0, 2]


def test_subset_by_index_and_mask():
    ds = ArrayDataset(torch.arange(10.0).view(5, 2), torch.tensor([0, 1, 2, 3, 4]), groups=torch.arange(5) * 10,
                      ids=torch.arange(5) + 100, name="toy", coarse=torch.tensor([0, 0, 1, 1, 1]),
                      files={"a": "b"})
    sub = ds.subset(torch.tensor([4, 1]))
    assert sub.x.tolist() == [[8.0, 9.0], [2.0, 3.0]]
    assert sub.y.tolist() == [4, 1] and sub.groups.tolist() == [40, 10] and sub.ids.tolist() == [104, 101]
    assert sub.coarse.tolist() == [1, 0] and sub.files == {"a": "b"} and sub.name == "toy"
    masked = ds.subset(torch.tensor([True, False, False, True, False]))
    assert masked.y.tolist() == [0, 3]
    with pytest.raises(ValueError, match="mask"):
        ds.subset(torch.tensor([True, False]))


# ---------------------------------------------------------------------------------- data root


def _project(tmp_path: Path) -> Path:
    """A fake checkout: tmp/proj/pyproject.toml with tmp/shared/data beside it."""
    (tmp_path / "proj" / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    return tmp_path / "proj"


def test_data_root_order(tmp_path, monkeypatch):
    proj = _project(tmp_path)
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setattr(dsmod, "_PACKAGE_ROOT", tmp_path / "nowhere")
    monkeypatch.chdir(proj / "sub" / "deeper")
    monkeypatch.setenv("DEEPMETRIC_DATA", str(env))
    assert data_root(explicit) == explicit.resolve()  # 1. the argument
    assert data_root() == env.resolve()  # 2. the environment
    monkeypatch.delenv("DEEPMETRIC_DATA")
    assert data_root() == (tmp_path / "shared" / "data").resolve()  # 3. walking up from cwd
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:  # nothing: all three named
        data_root()
    assert "--data-dir" in str(err.value) and "DEEPMETRIC_DATA" in str(err.value)
    assert "../shared/data" in str(err.value)


def test_data_root_falls_back_to_package_checkout(tmp_path, monkeypatch):
    proj = _project(tmp_path)
    monkeypatch.delenv("DEEPMETRIC_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no pyproject.toml from here upwards
    monkeypatch.setattr(dsmod, "_PACKAGE_ROOT", proj)
    assert data_root() == (tmp_path / "shared" / "data").resolve()


def test_data_root_skips_a_project_without_data(tmp_path, monkeypatch):
    proj = _project(tmp_path)
    inner = proj / "sub"
    (inner / "pyproject.toml").write_text("")  # no ../shared/data next to this one
    monkeypatch.delenv("DEEPMETRIC_DATA", raising=False)
    monkeypatch.setattr(dsmod, "_PACKAGE_ROOT", tmp_path / "nowhere")
    monkeypatch.chdir(inner / "deeper")
    assert data_root() == (tmp_path / "shared" / "data").resolve()


def test_data_root_missing_explicit_or_env_directory(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="data_dir.*missing-dir"):
        data_root(tmp_path / "missing-dir")
    monkeypatch.setenv("DEEPMETRIC_DATA", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="DEEPMETRIC_DATA.*gone"):
        data_root()


# ---------------------------------------------------------------------------------- digits


def test_digits():
    parts = load("digits")
    ds = parts["all"]
    assert ds.x.shape == (1797, 64) and ds.x.dtype == torch.float32
    assert ds.num_classes == 10 and torch.bincount(ds.y).min() >= 170
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert torch.equal(ds.x * 16, (ds.x * 16).round())  # sixteenths: 4-bit counts / 16
    assert all(len(v) == 64 for v in ds.files.values())


def test_digits_zero_shot_and_all():
    train, test = load_split("digits", "zero-shot")
    assert train.classes.tolist() == [0, 1, 2, 3, 4] and test.classes.tolist() == [5, 6, 7, 8, 9]
    assert len(train) + len(test) == 1797
    a, b = load_split("digits", "all")
    assert len(a) == len(b) == 1797 and a.num_classes == 10


def test_unknown_names():
    with pytest.raises(KeyError, match="digits.*mnist-test.*omniglot.*npz:PATH"):
        load("cifar")
    with pytest.raises(ValueError, match="zero-shot"):
        load_split("digits", "random")
    with pytest.raises(TypeError, match="size"):
        load("digits", size=28)
    assert {"digits", "omniglot", "mnist-test"} <= set(DATASETS.names())


# ---------------------------------------------------------------------------------- omniglot


@pytest.fixture(scope="module")
def omniglot():
    return load("omniglot", size=28)


def test_omniglot_counts_and_labels(omniglot):
    bg, ev = omniglot["background"], omniglot["evaluation"]
    assert bg.x.shape == (964 * 20, 1, 28, 28) and ev.x.shape == (659 * 20, 1, 28, 28)
    assert bg.x.dtype == torch.float32 and 0 <= bg.x.min() and bg.x.max() <= 1
    assert bg.classes.tolist() == list(range(964)) and ev.classes.tolist() == list(range(964, 1623))
    assert torch.bincount(bg.y).eq(20).all() and torch.bincount(ev.y - 964).eq(20).all()
    assert bg.coarse.unique().numel() == 30 and ev.coarse.unique().numel() == 20
    assert set(bg.coarse.tolist()).isdisjoint(ev.coarse.tolist())


def test_omniglot_alphabets_follow_alphabets_csv(omniglot):
    bg, ev = omniglot["background"], omniglot["evaluation"]
    names = bg.meta["alphabets"]
    assert len(names) == 50
    # character id = label + 1 (background), label + 965 (evaluation); ranges from alphabets.csv
    assert names[int(bg.coarse[bg.y == 0][0])] == "Arcadian"  # ids 1-26
    assert names[int(bg.coarse[bg.y == 26][0])] == "Armenian"  # id 27
    assert names[int(bg.coarse[bg.y == 963][0])] == "Tifinagh"  # id 964
    assert names[int(ev.coarse[ev.y == 964][0])] == "Angelic"  # id 965
    assert names[int(ev.coarse[ev.y == 964 + 658][0])] == "ULOG"  # id 1623
    assert (bg.coarse == names.index("Arcadian")).sum() == 26 * 20
    assert (ev.coarse == names.index("Tibetan")).sum() == (1597 - 1556 + 1) * 20
    # a character never spans two alphabets
    pairs = torch.unique(torch.stack([bg.y, bg.coarse], 1), dim=0)
    assert pairs.shape[0] == 964


def test_omniglot_pixels_are_inverted_and_area_averaged(omniglot):
    with np.load(ROOT / "omniglot" / "images_evaluation.npz") as f:
        raw = f["images"][3, 7]  # character 3, drawer 7 -> item 3 * 20 + 7
    ink = 1.0 - raw.astype(np.float64)
    expected = np.empty((28, 28))
    for i in range(28):  # adaptive average pooling windows [floor(i*105/28), ceil((i+1)*105/28))
        r0, r1 = (i * 105) // 28, -(-(i + 1) * 105 // 28)
        for j in range(28):
            c0, c1 = (j * 105) // 28, -(-(j + 1) * 105 // 28)
            expected[i, j] = ink[r0:r1, c0:c1].mean()
    got = omniglot["evaluation"].x[3 * 20 + 7, 0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_omniglot_strokes_are_the_minority(omniglot):
    bg = omniglot["background"]
    per_image = bg.x.mean(dim=(1, 2, 3))
    assert (per_image < 0.5).all()
    assert 0.03 < float(per_image.mean()) < 0.15  # README: about 92% of pixels are background


def test_omniglot_zero_shot_is_background_evaluation(omniglot, tmp_path):
    bg, ev = omniglot["background"], omniglot["evaluation"]
    assert set(bg.classes.tolist()).isdisjoint(ev.classes.tolist())
    _fake_omniglot(tmp_path)  # load_split on a small copy: the real one was checked above
    train, test = load_split("omniglot", "zero-shot", data_dir=tmp_path, seed=3)
    assert train.name == "omniglot:background" and test.name == "omniglot:evaluation"
    assert train.classes.tolist() == [0, 1, 2] and test.classes.tolist() == [3, 4]
    both, same = load_split("omniglot", "all", data_dir=tmp_path)
    assert both is same and len(both) == 10 and both.classes.tolist() == [0, 1, 2, 3, 4]


def test_omniglot_checksums_match_readme(omniglot):
    files = {**omniglot["background"].files, **omniglot["evaluation"].files}
    by_name = {Path(p).name: sha for p, sha in files.items()}
    for name, sha in OMNIGLOT_SHA.items():
        assert by_name[name] == sha
    assert "alphabets.csv" in by_name


def _fake_omniglot(root: Path):
    """A tiny Omniglot-shaped directory: background 3 characters x 2 drawers, evaluation 2 x 2."""
    d = root / "omniglot"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, n in (("background", 3), ("evaluation", 2)):
        images = rng.random((n, 2, 105, 105)) < 0.9
        labels = np.repeat(np.arange(n), 2).reshape(n, 2)
        np.savez(d / f"images_{part}.npz", images=images, labels=labels)
    (d / "alphabets.csv").write_text(
        "alphabet,split,first_character,last_character\n"
        "A,background,1,2\nB,background,3,3\nC,evaluation,4,5\n")
    return d


def test_omniglot_options_on_a_small_copy(tmp_path):
    d = _fake_omniglot(tmp_path)
    parts = load("omniglot", data_dir=tmp_path, size=None, hierarchical=True)
    bg, ev = parts["background"], parts["evaluation"]
    with np.load(d / "images_background.npz") as f:
        raw = f["images"]
    assert bg.x.shape == (6, 1, 105, 105)
    assert torch.equal(bg.x[:, 0], torch.from_numpy(~raw.reshape(6, 105, 105)).float())
    assert bg.y.tolist() == [[0, 0], [0, 0], [0, 1], [0, 1], [1, 2], [1, 2]]  # (alphabet, character)
    assert ev.y.tolist() == [[2, 3], [2, 3], [2, 4], [2, 4]]
    assert ev.coarse.tolist() == [2, 2, 2, 2]
    small = load("omniglot", data_dir=tmp_path, size=7)["background"]
    assert small.x.shape == (6, 1, 7, 7)  # 105 = 7 * 15: plain block means
    block = 1.0 - raw[0, 0].reshape(7, 15, 7, 15).mean(axis=(1, 3))
    np.testing.assert_allclose(small.x[0, 0].numpy(), block, atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        load("omniglot", data_dir=tmp_path, size=0)


def test_omniglot_missing_file_names_path_and_how_to_fix(tmp_path):
    d = _fake_omniglot(tmp_path)
    (d / "images_evaluation.npz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load("omniglot", data_dir=tmp_path)
    msg = str(err.value)
    assert str(d / "images_evaluation.npz") in msg and "--data-dir" in msg and "DEEPMETRIC_DATA" in msg


# ---------------------------------------------------------------------------------- mnist-test


@pytest.fixture(scope="module")
def mnist():
    return load("mnist-test")["test"]


def test_mnist_test(mnist):
    assert mnist.x.shape == (10000, 1, 28, 28) and mnist.x.dtype == torch.float32
    assert mnist.x.min() == 0.0 and mnist.x.max() == 1.0
    counts = torch.bincount(mnist.y)
    assert counts.shape == (10,) and counts.min() == 892 and counts.max() == 1135  # README
    assert {Path(p).name: s for p, s in mnist.files.items()} == MNIST_SHA


def test_mnist_bytes_land_where_idx_says(mnist):
    with gzip.open(ROOT / "mnist-test" / "t10k-images-idx3-ubyte.gz") as f:
        images = f.read()
    with gzip.open(ROOT / "mnist-test" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = f.read()
    for item, row, col in [(0, 14, 14), (1234, 10, 20), (9999, 20, 9)]:
        assert mnist.x[item, 0, row, col] * 255 == images[16 + item * 784 + row * 28 + col]
        assert mnist.y[item] == labels[8 + item]


def _write_mnist(root: Path, images: bytes, labels: bytes):
    d = root / "mnist-test"
    d.mkdir(parents=True, exist_ok=True)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return d


def _idx(magic: int, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in dims) + payload


def test_mnist_small_valid_copy(tmp_path):
    pixels = bytes(range(2 * 2 * 3))
    _write_mnist(tmp_path, _idx(2051, (2, 2, 3), pixels), _idx(2049, (2,), bytes([7, 1])))
    ds = load("mnist-test", data_dir=tmp_path)["test"]
    assert ds.x.shape == (2, 1, 2, 3) and ds.y.tolist() == [7, 1]
    assert ds.x[1, 0, 1, 2] * 255 == 11


def test_mnist_bad_magic_fails_clearly(tmp_path):
    d = _write_mnist(tmp_path, _idx(2049, (2, 2, 2), bytes(8)), _idx(2049, (2,), bytes(2)))
    with pytest.raises(ValueError) as err:
        load("mnist-test", data_dir=tmp_path)
    msg = str(err.value)
    assert "magic" in msg and "2051" in msg and str(d / "t10k-images-idx3-ubyte.gz") in msg


def test_mnist_truncated_and_mismatched_files_fail_clearly(tmp_path):
    _write_mnist(tmp_path, _idx(2051, (2, 2, 2), bytes(7)), _idx(2049, (2,), bytes(2)))
    with pytest.raises(ValueError, match="need 24 bytes.*23"):
        load("mnist-test", data_dir=tmp_path)
    _write_mnist(tmp_path, _idx(2051, (3, 2, 2), bytes(12)), _idx(2049, (2,), bytes(2)))
    with pytest.raises(ValueError, match="3 images.*2 labels"):
        load("mnist-test", data_dir=tmp_path)
    _write_mnist(tmp_path, _idx(2051, (2, 2, 2), bytes(8)), _idx(2049, (2,), bytes([3, 200])))  # an 11th class
    with pytest.raises(ValueError, match="labels up to 200, expected digits 0..9"):
        load("mnist-test", data_dir=tmp_path)
    d = tmp_path / "mnist-test"
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load("mnist-test", data_dir=tmp_path)


def test_read_idx_big_endian_int32(tmp_path):
    values = [1, -2, 70000, 5]
    payload = b"".join(v.to_bytes(4, "big", signed=True) for v in values)
    path = tmp_path / "a.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + payload)
    assert read_idx(path).tolist() == [[1, -2], [70000, 5]]


def test_mnist_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load("mnist-test", data_dir=tmp_path)
    assert str(tmp_path / "mnist-test" / "t10k-images-idx3-ubyte.gz") in str(err.value)
    assert "--data-dir" in str(err.value)


# ---------------------------------------------------------------------------------- feature files


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3))  # float64 in the file
    path = tmp_path / "f.npz"
    np.savez(path, X=x, y=np.array([3, 1, 3, 2, 1, 2], dtype=np.int32), ids=np.arange(6) + 50,
             groups=np.array([0, 0, 1, 1, 2, 2], dtype=np.uint8))
    ds = load(f"npz:{path}")["all"]
    assert ds.x.dtype == torch.float32 and np.allclose(ds.x.numpy(), x.astype(np.float32))
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == [3, 1, 3, 2, 1, 2]
    assert ds.ids.tolist() == list(range(50, 56)) and ds.groups.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.files == {str(path.resolve()): hashlib.sha256(path.read_bytes()).hexdigest()}


def test_save_npz_round_trip_hierarchical(tmp_path):
    y = torch.tensor([[0, 1], [0, 2], [1, 1]])
    path = save_npz(tmp_path / "sub" / "emb.npz", torch.randn(3, 4), y, ids=[7, 8, 9])
    ds = load_npz(path)
    assert ds.y.tolist() == y.tolist() and ds.ids.tolist() == [7, 8, 9] and ds.groups is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["emb.npz"]  # no temporary left behind


def test_npz_float_labels_and_missing_arrays(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.zeros((2, 2)), y=np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match=f"{path}.*float64"):
        load(f"npz:{path}")
    np.savez(path, features=np.zeros((2, 2)), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"bad.npz: expected arrays X, y \(optional ids, groups\), "
                                         r"got \['features', 'y'\]"):
        load(f"npz:{path}")


def test_feature_file_missing(tmp_path):
    for kind in ("npz", "csv"):
        path = tmp_path / "nope" / f"f.{kind}"
        with pytest.raises(FileNotFoundError, match=str(path)):
            load(f"{kind}:{path}")


def _write_csv(path: Path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_csv_round_trip(tmp_path):
    path = tmp_path / "f.csv"
    _write_csv(path, ["f0", "label", "id", "f1", "group"],
               [[0.5, 2, 10, -1.0, 0], [1.5, 0, 11, 2.0, 0], ["3e-1", 2, 12, 4, 1]])
    ds = load(f"csv:{path}")["all"]
    np.testing.assert_allclose(ds.x.numpy(), [[0.5, -1.0], [1.5, 2.0], [0.3, 4.0]], rtol=1e-6)
    assert ds.y.tolist() == [2, 0, 2] and ds.ids.tolist() == [10, 11, 12] and ds.groups.tolist() == [0, 0, 1]
    assert ds.meta["features"] == ["f0", "f1"]
    assert len(ds.files[str(path.resolve())]) == 64


def test_csv_hierarchical_labels(tmp_path):
    path = tmp_path / "h.csv"
    _write_csv(path, ["label_0", "label_1", "a", "b"], [[0, 0, 1, 2], [0, 1, 3, 4], [1, 0, 5, 6]])
    ds = load_csv(path)
    assert ds.y.tolist() == [[0, 0], [0, 1], [1, 0]] and ds.x.shape == (3, 2) and ds.ids is None


def test_csv_errors(tmp_path):
    path = tmp_path / "e.csv"
    _write_csv(path, ["label", "a"], [[0, 1.0], [1.5, 2.0]])
    with pytest.raises(ValueError, match="'label'.*integers.*'1.5'.*line 3"):
        load_csv(path)
    _write_csv(path, ["a", "b"], [[0, 1.0]])
    with pytest.raises(ValueError, match="'label' column"):
        load_csv(path)
    _write_csv(path, ["label", "a"], [[0, "x"]])
    with pytest.raises(ValueError, match="'a'.*numbers"):
        load_csv(path)
    _write_csv(path, ["label_0", "label_2", "a"], [[0, 1, 1.0]])
    with pytest.raises(ValueError, match="label_2"):
        load_csv(path)
    path.write_text("label,a\n0,1\n1\n")
    with pytest.raises(ValueError, match="line 3 has 1 fields"):
        load_csv(path)


# ---------------------------------------------------------------------------------- splits


def _feature_file(tmp_path, labels) -> str:
    labels = np.asarray(labels)
    path = tmp_path / "split.npz"
    np.savez(path, X=np.arange(len(labels) * 2, dtype=np.float64).reshape(-1, 2), y=labels)
    return f"npz:{path}"


def test_zero_shot_odd_number_of_classes(tmp_path):
    spec = _feature_file(tmp_path, [11, 2, 5, 9, 7, 2, 11, 5, 7, 9, 2])  # 5 classes
    train, test = load_split(spec, "zero-shot")
    assert train.classes.tolist() == [2, 5, 7] and test.classes.tolist() == [9, 11]
    assert len(train) == 7 and len(test) == 4
    # items keep their features
    assert torch.equal(train.x[:, 0] // 2, torch.tensor([1, 2, 4, 5, 7, 8, 10]).float())


def test_zero_shot_seed_shuffles_classes(tmp_path):
    spec = _feature_file(tmp_path, np.repeat(np.arange(9), 2))
    seen = set()
    for seed in range(6):
        train, test = load_split(spec, "zero-shot", seed=seed)
        tr, te = set(train.classes.tolist()), set(test.classes.tolist())
        assert len(tr) == 5 and len(te) == 4 and tr | te == set(range(9)) and not tr & te
        again, _ = load_split(spec, "zero-shot", seed=seed)
        assert again.classes.tolist() == train.classes.tolist()
        seen.add(tuple(sorted(tr)))
    assert len(seen) > 1


def test_zero_shot_hierarchical_splits_finest_classes():
    y = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 0], [0, 0]])
    train, test = split_classes(ArrayDataset(torch.zeros(5, 1), y))
    assert train.y.tolist() == [[0, 0], [0, 1], [0, 0]] and test.y.tolist() == [[1, 0], [1, 0]]


def test_zero_shot_refuses_multilabel_and_single_class():
    multi = ArrayDataset(torch.zeros(2, 1), torch.tensor([[True, False], [False, True]]))
    with pytest.raises(ValueError, match="multi-label"):
        split_classes(multi)
    with pytest.raises(ValueError, match="at least 2"):
        split_classes(ArrayDataset(torch.zeros(2, 1), torch.tensor([4, 4])))


def test_load_dataset_joins_parts():
    ds = load_dataset("digits")
    assert len(ds) == 1797


def test_holdout_never_touches_test_classes(tmp_path):
    spec = _feature_file(tmp_path, np.repeat(np.arange(20), 3))
    train, test = load_split(spec, "zero-shot", seed=4)
    test_classes = set(test.classes.tolist())
    for seed in range(5):
        fit, val = holdout_classes(train, 0.2, seed=seed)
        assert val.num_classes == 2 and fit.num_classes == 8
        assert set(val.classes.tolist()) <= set(train.classes.tolist())
        assert not set(val.classes.tolist()) & test_classes and not set(fit.classes.tolist()) & test_classes
        assert not set(val.classes.tolist()) & set(fit.classes.tolist())
        assert len(fit) + len(val) == len(train)
    _, val3 = holdout_classes(train, n=3, seed=0)
    assert val3.num_classes == 3
    with pytest.raises(ValueError, match="n: expected an integer in \\[1, 9\\]"):
        holdout_classes(train, n=10)
    with pytest.raises(ValueError, match="fraction"):
        holdout_classes(train, 1.5)


# ---------------------------------------------------------------------------------- checksums


def test_sha256_cache_follows_file_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abcd")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert sha256_file(path) == hashlib.sha256(b"abcd").hexdigest()


def test_holdout_by_super_class_keeps_whole_super_classes():
    # 6 super-classes x 3 classes x 2 items; class ids recur under different super-classes
    y = torch.tensor([[s, c] for s in range(6) for c in range(3) for _ in range(2)])
    ds = ArrayDataset(torch.randn(len(y), 4), y)
    for seed in range(4):
        fit, val = holdout_classes(ds, n=2, seed=seed, level=0)
        val_supers, fit_supers = set(val.y[:, 0].tolist()), set(fit.y[:, 0].tolist())
        assert len(val_supers) == 2 and len(fit_supers) == 4 and not val_supers & fit_supers
        assert len(val) == 2 * 3 * 2 and len(fit) + len(val) == len(ds)
    _, finest = holdout_classes(ds, n=2, seed=0)  # level None: two (super-class, class) rows
    assert finest.num_classes == 2 and len(finest) == 4
    with pytest.raises(ValueError, match="level: expected a level of hierarchical"):
        holdout_classes(ds, n=1, level=2)
    with pytest.raises(ValueError, match="level: expected a level of hierarchical"):
        holdout_classes(ArrayDataset(torch.randn(4, 2), torch.tensor([0, 0, 1, 1])), n=1, level=0)


def test_truncated_or_corrupt_files_are_named(tmp_path):
    # a truncated npz raised zipfile.BadZipFile and a corrupt deflate stream zlib.error, as tracebacks
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.savez_compressed(tmp_path / "f.npz", X=x, y=np.arange(50) % 5)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "f.npz").read_bytes()[:300])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"cut.npz: expected an .npz archive .*cannot read it \(truncated or "
                                             r"corrupt\?\)"):
            dsmod.load_npz(tmp_path / "cut.npz")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]  # numpy's NpzFile left it open
    with open(tmp_path / "single.npz", "wb") as f:  # one .npy array under an .npz name: was a TypeError
        np.save(f, x)
    with pytest.raises(ValueError, match=r"single.npz: .* a single .npy array, not an archive"):
        dsmod.load_npz(tmp_path / "single.npz")
    raw = gzip.compress(bytes(2000))
    (tmp_path / "bad.gz").write_bytes(raw[:20] + bytes(range(200)) + raw[220:])
    with pytest.raises(ValueError, match="bad.gz: cannot read as gzip IDX"):
        dsmod.read_idx(tmp_path / "bad.gz")


def test_feature_files_with_nan_or_overflow_are_refused_naming_the_rows(tmp_path):
    # they used to train, then fail at the test evaluation as "embeddings" rows of the derived split
    x = np.ones((100, 3))
    x[95, 1], x[40, 0] = np.nan, 1e39  # 1e39 overflows float32 to inf
    np.savez(tmp_path / "f.npz", X=x, y=np.arange(100) % 5)
    with pytest.raises(ValueError, match=r"f.npz: X: 2 row\(s\) hold NaN or infinite.*first bad rows of the file: "
                                         r"\[40, 95\]"):
        load_npz(tmp_path / "f.npz")
    _write_csv(tmp_path / "f.csv", ["label", "a"], [[0, 1.0], [1, "nan"]])
    with pytest.raises(ValueError, match=r"f.csv: X: 1 row\(s\) hold NaN.*\[1\]"):
        load_csv(tmp_path / "f.csv")


def test_npz_arrays_nobody_asked_for_are_not_read(tmp_path):
    # every member was decompressed: a 1 MB archive holding a zero-filled gigabyte took 1.2 GB and 12 s;
    # here an unused member that cannot be read at all stands for it
    import zipfile
    path = tmp_path / "f.npz"
    np.savez(path, X=np.ones((4, 2), np.float32), y=np.arange(4))
    with zipfile.ZipFile(path, "a") as archive:  # an .npy header stating 1,000 floats, then none
        archive.writestr("junk.npy", np.lib.format.magic(1, 0) + b"\x46\x00{'descr': '<f8', 'fortran_order': "
                         b"False, 'shape': (1000,), }".ljust(70) + b"\n")
    data = load(f"npz:{path}")["all"]
    assert data.x.shape == (4, 2) and data.y.tolist() == [0, 1, 2, 3]


def test_item_ids_are_those_an_index_takes(tmp_path):
    # embed wrote such ids and index build refused them; ids beyond int64 were wrapped to negatives silently
    x, y = np.zeros((3, 2), np.float32), np.array([0, 0, 1])
    for ids, message in ((np.array([1, 2, 2**63 + 5], dtype=np.uint64), "ids: expected values that fit in int64"),
                         (np.array([0, -1, 2]), r"ids: expected non-negative ids .* got \[-1\]"),
                         (np.array([0, 1, 1]), r"ids: expected unique ids, got duplicates: \[1\]")):
        np.savez(tmp_path / "f.npz", X=x, y=y, ids=ids)
        with pytest.raises(ValueError, match=f"f.npz.*{message}"):
            load(f"npz:{tmp_path / 'f.npz'}")
