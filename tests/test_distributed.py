"""Two real processes on torch.distributed (gloo, CPU): gathering embeddings and training."""
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepmetric.training.distributed import gather, rank_and_world


def _gather_worker(rank, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x = torch.full((rank + 2, 3), float(rank), requires_grad=True)  # ranks hold 2 and 3 rows
        both = gather(x)
        both.sum().backward()
        out[rank] = (rank_and_world(), both.detach().tolist(), x.grad.tolist())
    finally:
        dist.destroy_process_group()


def test_gather_concatenates_ranks_in_order_and_keeps_local_gradient(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    expected = [[0.0] * 3] * 2 + [[1.0] * 3] * 3
    for rank in (0, 1):
        (r, world), both, grad = out[rank]
        assert (r, world) == (rank, 2)
        assert both == expected
        assert grad == [[1.0] * 3] * (rank + 2)


def _train_worker(rank, init_file, run_dir):
    from deepmetric.training import resolve, train
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train(resolve({}, ["epochs=1", "eval.nmi=false"]), run_dir, progress=False, log=lambda *a: None)
    finally:
        dist.destroy_process_group()


def test_two_process_training_writes_once_from_rank_zero(tmp_path):
    run = tmp_path / "run"
    mp.spawn(_train_worker, args=(str(tmp_path / "init"), str(run)), nprocs=2, join=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and "test" in metrics
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.json", "report.html"]


def _proxy_worker(rank, init_file, run_dir, out):
    import deepmetric.training.trainer as trainer
    from deepmetric.training import resolve, train
    created = []
    create = trainer.losses_mod.create
    trainer.losses_mod.create = lambda *a, **k: created.append(create(*a, **k)) or created[-1]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train(resolve({}, ["epochs=1", "eval.nmi=false", "loss=proxy-anchor"]), run_dir, progress=False,
              log=lambda *a: None)
        out[rank] = {k: v.tolist() for k, v in created[0].state_dict().items()}
    finally:
        dist.destroy_process_group()


def test_two_process_training_keeps_the_loss_parameters_equal(tmp_path):
    # the proxies live in the loss, outside DistributedDataParallel: each rank drew its own (stream_seed(seed, rank))
    # and updated them with its own gradients, 3.2 apart after one epoch; rank 0's alone were saved
    out = mp.Manager().dict()
    mp.spawn(_proxy_worker, args=(str(tmp_path / "init"), str(tmp_path / "run"), out), nprocs=2, join=True)
    assert out[0].keys() == out[1].keys() and out[0]
    for key in out[0]:
        assert torch.equal(torch.tensor(out[0][key]), torch.tensor(out[1][key])), key


def _average_worker(rank, init_file, out):
    from deepmetric.training.distributed import average_gradients
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        a, b, c = (torch.zeros(2, requires_grad=True) for _ in range(3))
        a.grad = torch.full((2,), float(rank + 1))  # 1 and 2: mean 1.5
        if rank == 0:
            b.grad = torch.full((2,), 4.0)  # none on rank 1: counts as 0, mean 2
        average_gradients([a, b, c])  # c has no gradient anywhere: stays None
        out[rank] = (a.grad.tolist(), b.grad.tolist(), c.grad)
    finally:
        dist.destroy_process_group()


def test_average_gradients_over_ranks(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_average_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank] == ([1.5, 1.5], [2.0, 2.0], None)


def _run_worker(rank, init_file, run_dir, overrides, out):
    import datetime

    from deepmetric.training import resolve, train
    from deepmetric.training import checkpoint as ckpt
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        train(resolve({}, ["eval.nmi=false", *overrides]), run_dir, progress=False, log=lambda *a: None)
        out[rank] = "trained"
        out[f"rng{rank}"] = torch.get_rng_state().tolist()
        if rank == 0:
            out["model"] = {k: v.tolist() for k, v in ckpt.load(f"{run_dir}/last.pt")["model"].items()}
    except Exception as err:
        out[rank] = f"{type(err).__name__}: {err}"
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, name, run_dir, overrides):
    out = mp.Manager().dict()
    mp.spawn(_run_worker, args=(str(tmp_path / name), str(run_dir), overrides, out), nprocs=2, join=True)
    return dict(out)


def test_two_process_resume_is_exact_with_random_mining(tmp_path):
    # each rank draws its own random numbers (stream_seed(seed, rank)); the checkpoint held rank 0's alone, so
    # after a resume rank 1 went on with rank 0's stream (models 1e-3 apart with distance-weighted mining)
    mining = ["loss=margin", "miner=distance-weighted", "model.normalize=true"]
    straight = _spawn(tmp_path, "a", tmp_path / "straight", ["epochs=2", *mining])["model"]
    _spawn(tmp_path, "b", tmp_path / "resumed", ["epochs=1", *mining])
    resumed = _spawn(tmp_path, "c", tmp_path / "resumed", ["epochs=2", *mining])["model"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(torch.tensor(straight[key]), torch.tensor(resumed[key])), key


def test_every_rank_stops_when_rank_zero_cannot_take_the_run_directory(tmp_path):
    # only rank 0 takes the lock; rank 1 used to wait in DistributedDataParallel's first collective
    import fcntl
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".deepmetric-run.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = _spawn(tmp_path, "init", run, ["epochs=1"])
    assert "another process is training into" in out[0]
    assert out[1].startswith("ValueError: rank 0 stopped: ValueError: out: another process is training into")
    (tmp_path / "file").write_text("")  # a run directory that cannot be made: not a ValueError
    out = _spawn(tmp_path, "init2", tmp_path / "file" / "run", ["epochs=1"])
    assert out[0].startswith(("NotADirectoryError", "FileExistsError"))
    assert out[1].startswith(f"ValueError: rank 0 stopped: {out[0]}")


def test_a_resume_by_more_processes_gives_each_rank_its_own_stream(tmp_path):
    # a run saved by one process has one random state: rank 1 took it too, and drew what rank 0 drew
    from deepmetric.training import resolve, train
    train(resolve({}, ["epochs=1", "eval.nmi=false"]), tmp_path / "run", progress=False, log=lambda *a: None)
    out = _spawn(tmp_path, "init", tmp_path / "run", ["epochs=2"])
    assert out[0] == out[1] == "trained" and out["rng0"] != out["rng1"]


def test_the_command_line_trains_under_torchrun(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    config = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "deepmetric", "train", str(config), "--set", "epochs=1", "--set", "eval.nmi=false",
                           "--out", str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})  # torchrun's logs: not in /tmp
    lines = [line for line in done.stderr.splitlines() if "Warning" not in line and line.strip()]
    assert done.returncode == 0, "\n".join(lines[:40] + ["..."] + lines[-20:])  # the ranks' own errors come first
    assert done.stdout.count("run written to") == 1  # rank 0 speaks
    assert "test" in json.loads((tmp_path / "run" / "metrics.json").read_text())
