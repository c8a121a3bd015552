"""`deepmetric index build` and `deepmetric index search` through click's CliRunner."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import deepmetric.index as dmi
from deepmetric.cli import main
from deepmetric.data import save_npz


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write(path, x, **arrays):
    np.savez(path, X=np.asarray(x), **arrays)
    return path


def test_list_indexes():
    result = run("list", "indexes")
    assert result.exit_code == 0
    assert result.output.strip() == "indexes: binary, exact, faiss, flat, hnsw, ivf-fastscan, ivf-flat, ivf-pq"


def test_build_and_search_hand_worked(tmp_path):
    # gallery on a line: 0, 1, 3, 6 with ids 10, 11, 13, 16; queries 2 and 5.5
    # query 2: distances 2, 1, 1, 4 -> 11 and 13 tie (1; insertion order), then 10 (2); k = 3
    # query 5.5: distances 5.5, 4.5, 2.5, 0.5 -> 16, 13, 11
    emb = save_npz(tmp_path / "emb.npz", [[0.0], [1.0], [3.0], [6.0]], [0, 0, 1, 1],
                   ids=[10, 11, 13, 16], distance="euclidean")
    queries = write(tmp_path / "q.npz", np.array([[2.0], [5.5]], dtype=np.float32))
    result = run("index", "build", emb, "--out", tmp_path / "idx")
    assert result.exit_code == 0, result.output
    assert f"wrote an exact index of 4 vectors (dimension 1, distance euclidean) to {tmp_path / 'idx'}" in result.output
    result = run("index", "search", tmp_path / "idx", queries, "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out == {"ids": [[11, 13, 10], [16, 13, 11]], "distances": [[1.0, 1.0, 2.0], [0.5, 2.5, 4.5]]}
    # k beyond the index: every item, then empty slots (null)
    out = json.loads(run("index", "search", tmp_path / "idx", queries, "-k", 5, "--json").output)
    assert out == {"ids": [[11, 13, 10, 16, None], [16, 13, 11, 10, None]],
                   "distances": [[1.0, 1.0, 2.0, 4.0, None], [0.5, 2.5, 4.5, 5.5, None]]}
    result = run("index", "search", tmp_path / "idx", queries, "-k", 10**12, "--json")
    assert result.exit_code != 0 and "-k: 2 queries x 1000000000000 neighbours are more than" in result.output
    # readable output
    result = run("index", "search", tmp_path / "idx", queries, "-k", 2)
    assert result.exit_code == 0
    assert "query 0: 11 (1), 13 (1)" in result.output and "query 1: 16 (0.5), 13 (2.5)" in result.output


@pytest.mark.parametrize("backend,options", [("flat", []), ("hnsw", ["--option", "M=8"]),
                                             ("ivf-flat", ["--option", "nlist=4", "--option", "nprobe=4"]),
                                             ("IVF4,Flat", ["--option", "nprobe=4"])])
def test_cli_matches_the_python_api(backend, options, tmp_path):
    gen = torch.Generator().manual_seed(0)
    x, q = torch.randn(200, 8, generator=gen), torch.randn(5, 8, generator=gen)
    emb = save_npz(tmp_path / "emb.npz", x.numpy(), np.zeros(200, dtype=np.int64), distance="cosine")
    queries = write(tmp_path / "q.npz", q.numpy())
    result = run("index", "build", emb, "--out", tmp_path / "idx", "--backend", backend, *options)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["distance"] == "cosine"  # recorded in the embeddings file
    out = json.loads(run("index", "search", tmp_path / "idx", queries, "-k", 4, "--json").output)
    exact = dmi.create("exact", distance="cosine")
    exact.add(x)
    d, ids = exact.search(q, 4)
    assert np.allclose(out["distances"], d.numpy(), atol=1e-4)
    if backend in ("flat", "IVF4,Flat"):  # exact: nprobe = nlist
        assert out["ids"] == ids.tolist()


def test_string_ids_and_distance_override(tmp_path):
    x = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    emb = write(tmp_path / "emb.npz", x, y=np.zeros(3, dtype=np.int64), ids=np.array(["up", "right", "left"]))
    queries = write(tmp_path / "q.npz", np.array([[2.0, 0.1]], dtype=np.float32))
    # dot: q.x = 0.1, 2, -2 -> right (-2), up (-0.1), left (2)
    result = run("index", "build", emb, "--out", tmp_path / "idx", "--backend", "flat", "--distance", "dot")
    assert result.exit_code == 0, result.output
    out = json.loads(run("index", "search", tmp_path / "idx", queries, "-k", 3, "--json").output)
    assert out["ids"] == [["right", "up", "left"]]
    assert out["distances"][0] == pytest.approx([-2.0, -0.1, 2.0], abs=1e-6)


def test_binary_backend(tmp_path):
    # codes as +-1: a = ++++, b = +--+, c = ----; query ++-+: H = 1, 1, 3
    codes = np.array([[1, 1, 1, 1], [1, -1, -1, 1], [-1, -1, -1, -1]], dtype=np.float32)
    emb = write(tmp_path / "codes.npz", codes, ids=np.array(["a", "b", "c"]))
    queries = write(tmp_path / "q.npz", np.array([[1, 1, -1, 1]], dtype=np.float32))
    result = run("index", "build", emb, "--out", tmp_path / "idx", "--backend", "binary")
    assert result.exit_code == 0, result.output
    assert "wrote a binary index of 3 vectors (dimension 4, distance hamming)" in result.output
    out = json.loads(run("index", "search", tmp_path / "idx", queries, "-k", 3, "--json").output)
    assert out == {"ids": [["a", "b", "c"]], "distances": [[1.0, 1.0, 3.0]]}


def test_errors_are_clear(tmp_path):
    emb = save_npz(tmp_path / "emb.npz", np.random.default_rng(0).normal(size=(20, 4)), np.zeros(20, dtype=np.int64))
    result = run("index", "build", emb, "--out", tmp_path / "idx", "--distance", "manhattan")
    assert result.exit_code != 0 and "unknown name 'manhattan'" in result.output
    result = run("index", "build", emb, "--out", tmp_path / "idx", "--backend", "IVFnope")
    assert result.exit_code != 0 and "factory: faiss cannot build 'IVFnope'" in result.output
    result = run("index", "build", emb, "--out", tmp_path / "idx", "--option", "nlist")
    assert result.exit_code != 0 and "--option: expected KEY=VALUE, got 'nlist'" in result.output
    result = run("index", "build", emb, "--out", tmp_path / "idx", "--backend", "ivf-flat")  # nlist=100 > 20
    assert result.exit_code != 0 and "cannot train the ivf-flat index" in result.output
    not_npz = tmp_path / "x.npz"
    not_npz.write_text("hello")
    result = run("index", "build", not_npz, "--out", tmp_path / "idx")
    assert result.exit_code != 0 and f"{not_npz}: expected an .npz archive" in result.output
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((3, 4)))
    result = run("index", "build", npy, "--out", tmp_path / "idx")
    assert result.exit_code != 0 and f"{npy}: expected an .npz archive" in result.output
    complex_x = write(tmp_path / "c.npz", np.ones((3, 4), dtype=np.complex64))
    result = run("index", "build", complex_x, "--out", tmp_path / "idx")
    assert result.exit_code != 0 and "expected real numbers in 'X', got dtype complex64" in result.output
    strings = write(tmp_path / "s.npz", np.array([["a", "b"], ["c", "d"]]))  # binary codes were converted by torch
    result = run("index", "build", strings, "--out", tmp_path / "idx", "--backend", "binary")
    assert result.exit_code != 0 and f"{strings}: expected real numbers in 'X', got dtype <U1" in result.output
    result = run("index", "build", emb, "--out", tmp_path / "idx", "--backend", "faiss")
    assert result.exit_code != 0 and "'faiss' takes a factory string" in result.output
    twice = write(tmp_path / "twice.npz", np.ones((2, 4), np.float32), ids=np.array([7, 7]))
    result = run("index", "build", twice, "--out", tmp_path / "idx")
    assert result.exit_code != 0 and f"{twice}: ids: expected unique ids, got duplicates: [7]" in result.output
    result = run("index", "build", emb, "--out", emb / "idx")  # under a file
    assert result.exit_code != 0 and "Traceback" not in result.output and str(emb) in result.output
    assert not (tmp_path / "idx").exists()
    assert run("index", "build", emb, "--out", tmp_path / "idx").exit_code == 0
    queries = write(tmp_path / "q.npz", np.zeros((1, 3), dtype=np.float32))
    result = run("index", "search", tmp_path / "idx", queries, "--json")
    assert result.exit_code != 0 and "queries: expected dimension 4 like the index, got 3" in result.output
    result = run("index", "search", tmp_path / "idx", queries, "-k", 0)
    assert result.exit_code != 0 and "0 is not in the range x>=1" in result.output
    ids_file = tmp_path / "idx" / "ids.npy"
    ids_file.write_bytes(ids_file.read_bytes()[:-8])
    result = run("index", "search", tmp_path / "idx", write(tmp_path / "q4.npz", np.zeros((1, 4))))
    assert result.exit_code != 0 and str(ids_file) in result.output and "truncated" in result.output


def test_stored_distance_forms_and_big_endian_vectors(tmp_path):
    x = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    queries = write(tmp_path / "q.npz", np.array([[2.0, 0.1]], dtype=np.float32))
    # a one-element array and a big-endian X: dot ranks right (-2), up (-0.1), left (2)
    emb = write(tmp_path / "emb.npz", x.astype(">f4"), distance=np.array(["dot"]))
    assert run("index", "build", emb, "--out", tmp_path / "idx", "--backend", "flat").exit_code == 0
    out = json.loads(run("index", "search", tmp_path / "idx", queries, "-k", 3, "--json").output)
    assert out["ids"] == [[1, 0, 2]] and out["distances"][0] == pytest.approx([-2.0, -0.1, 2.0], abs=1e-6)
    bad = write(tmp_path / "bad.npz", x, distance=np.array(["dot", "cosine"]))
    result = run("index", "build", bad, "--out", tmp_path / "idx2")
    assert result.exit_code != 0 and "expected 'distance' to be one string" in result.output


def test_search_time_options_on_the_command_line(tmp_path):
    # nprobe 1 of 8 lists misses neighbours that the exact search finds; --nprobe 8 scans every list
    gen = torch.Generator().manual_seed(3)
    x, q = torch.randn(400, 8, generator=gen), torch.randn(20, 8, generator=gen)
    emb = save_npz(tmp_path / "emb.npz", x.numpy(), np.zeros(400, dtype=np.int64))
    queries = write(tmp_path / "q.npz", q.numpy())
    assert run("index", "build", emb, "--out", tmp_path / "idx", "--backend", "ivf-flat",
               "--option", "nlist=8", "--option", "nprobe=1").exit_code == 0
    exact = dmi.knn(q, x, 10)[1].tolist()
    ids = {n: json.loads(run("index", "search", tmp_path / "idx", queries, "-k", 10, "--json", *extra).output)["ids"]
           for n, extra in ((1, []), (8, ["--nprobe", 8]))}
    assert ids[8] == exact and ids[1] != exact
    result = run("index", "search", tmp_path / "idx", queries, "--ef-search", 16)
    assert result.exit_code != 0 and "ef_search: does not apply to the faiss index 'IVF8,Flat'" in result.output
    assert run("index", "build", emb, "--out", tmp_path / "exact").exit_code == 0
    result = run("index", "search", tmp_path / "exact", queries, "--nprobe", 2)
    assert result.exit_code != 0 and "the exact index has no search-time options" in result.output


@pytest.mark.parametrize("backend", ["exact", "flat"])
def test_a_full_disk_is_one_clear_line_and_keeps_the_old_index(backend, tmp_path):
    # faiss' own writer raised a RuntimeError through the CLI (a 37-line traceback); the write is
    # cut here by the file size limit, as a full disk would
    import resource
    import subprocess
    import sys
    write(tmp_path / "small.npz", np.ones((3, 8), np.float32))
    write(tmp_path / "big.npz", np.random.default_rng(0).normal(size=(20000, 16)).astype(np.float32))
    assert run("index", "build", str(tmp_path / "small.npz"), "--out", str(tmp_path / "idx"),
               "--backend", backend).exit_code == 0

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))

    done = subprocess.run([sys.executable, "-m", "deepmetric", "index", "build", str(tmp_path / "big.npz"),
                           "--out", str(tmp_path / "idx"), "--backend", backend],
                          capture_output=True, text=True, preexec_fn=limit)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'idx'}: cannot save the index (" in done.stderr  # numpy: "... requested and ... written"
    assert "is unchanged" in done.stderr and (backend == "exact" or "File too large" in done.stderr)
    assert len(dmi.load(tmp_path / "idx")) == 3 and sorted(p.name for p in tmp_path.iterdir()) == [
        "big.npz", "idx", "small.npz"]


def test_a_reader_that_leaves_early_ends_the_search_quietly(tmp_path):
    # `deepmetric index search ... | head`: the broken pipe was reported as an error (exit 1, a message on
    # stderr); a tool stopped by SIGPIPE ends quietly, with the shell's status 128 + 13
    import os
    import subprocess
    import sys
    x = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32)
    emb = save_npz(tmp_path / "emb.npz", x, np.zeros(5000, dtype=np.int64))
    assert run("index", "build", emb, "--out", tmp_path / "idx").exit_code == 0
    search = subprocess.Popen([sys.executable, "-m", "deepmetric", "index", "search", str(tmp_path / "idx"),
                               str(emb), "-k", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    search.stdout.readline()
    search.stdout.close()  # as head does after its lines
    assert search.wait(timeout=120) == 141 and search.stderr.read() == b""


def test_search_checks_the_queries_file_against_the_index(tmp_path):
    # the distance `embed` records in the queries' file was never read by search: a wrong name passed, and
    # queries embedded for another distance than the index's went without a word; a wrong dimension did not
    # name the file
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    emb = save_npz(tmp_path / "emb.npz", x, np.zeros(20, dtype=np.int64), distance="cosine")
    assert run("index", "build", emb, "--out", tmp_path / "idx").exit_code == 0
    np.savez(tmp_path / "bad.npz", X=x, distance=np.array("manhattan"))
    result = run("index", "search", tmp_path / "idx", tmp_path / "bad.npz")
    assert result.exit_code != 0 and f"{tmp_path / 'bad.npz'}: distance: unknown name 'manhattan'" in result.output
    other = save_npz(tmp_path / "dot.npz", x, np.zeros(20, dtype=np.int64), distance="dot")
    result = run("index", "search", tmp_path / "idx", other)
    assert result.exit_code == 0 and ("warning: " + f"{other}: the queries were embedded for the dot distance; the "
                                      "index measures cosine") in result.output
    result = run("index", "search", tmp_path / "idx", emb)  # the same distance: no warning
    assert result.exit_code == 0 and "warning" not in result.output
    codes = save_npz(tmp_path / "codes.npz", np.sign(x), np.zeros(20, dtype=np.int64), distance="cosine")
    assert run("index", "build", codes, "--backend", "binary", "--out", tmp_path / "bin").exit_code == 0
    result = run("index", "search", tmp_path / "bin", codes)  # binary codes: hamming, whatever the embedding's
    assert result.exit_code == 0 and "warning" not in result.output
    narrow = save_npz(tmp_path / "narrow.npz", x[:, :3], np.zeros(20, dtype=np.int64))
    result = run("index", "search", tmp_path / "idx", narrow)
    assert result.exit_code != 0 and f"{narrow}: queries: expected dimension 4" in result.output
