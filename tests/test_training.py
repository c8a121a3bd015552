"""The trainer on the embedded digits set: learning, checkpoints, resume, rank-0 writes."""
import json

import numpy as np
import pytest
import torch
import yaml

from deepmetric.data import data_root
from deepmetric.evaluation import evaluate
from deepmetric.training import checkpoint as ckpt
from deepmetric.training import load_run, resolve, train, trainer
from deepmetric.training.trainer import embed, load_data

FAST = ["epochs=2", "eval.nmi=false"]


def quiet(*args):
    pass


def noisy_features(path, n_classes=40, per_class=20, seed=0):
    """Classes separated in 4 of 20 dimensions, the other 16 carry large noise: raw euclidean
    retrieval is poor, and a metric that learns which dimensions matter transfers to unseen classes."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(n_classes, 4))
    y = np.repeat(np.arange(n_classes), per_class)
    x = np.concatenate([centres[y] + 0.1 * g.normal(size=(len(y), 4)), g.normal(size=(len(y), 16))], axis=1)
    np.savez(path, X=x.astype(np.float32), y=y)
    return f"npz:{path}"


def test_training_writes_a_run_and_beats_raw_features(tmp_path):
    spec = noisy_features(tmp_path / "f.npz")
    config = resolve({}, [f"data={spec}", "epochs=8", "batch_size=64", "sampler.m=4", "optimizer.lr=0.01",
                          "eval.val_classes=0.2", "eval.nmi=false"])
    out = tmp_path / "run"
    result = train(config, out, progress=False, log=quiet)
    tmp_path = out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.json", "report.html"]
    report = (tmp_path / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3 and "Test embeddings" in report  # features: no images
    assert f"split zero-shot (its test part), {len(load_data(config)[1])} items, only the query itself excluded" in report
    assert f"tested: the checkpoint of epoch {result['best_epoch']} (best map_at_r on the validation" in report
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["map_at_r"] == pytest.approx(result["test"]["map_at_r"])
    assert len(saved["epochs"]) == 8 and "val" in saved["epochs"][0]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config
    _, test = load_data(config)
    raw = evaluate(test.x, test.y, nmi=False)
    assert raw["map_at_r"] < 0.2 and result["test"]["map_at_r"] > 0.8


def test_checkpoints_select_on_validation_classes_only(tmp_path):
    config = resolve({}, FAST)
    train(config, tmp_path, progress=False, log=quiet)
    state = ckpt.load(tmp_path / "best.pt")
    train_set, test_set = load_data(config)
    fit_classes = set(state["classes"])
    assert fit_classes < set(train_set.classes.tolist())
    assert not fit_classes & set(test_set.classes.tolist())
    assert state["distance"] == "euclidean" and state["in_shape"] == [64]
    assert state["versions"]["torch"] == torch.__version__
    assert state["data_files"] == {**train_set.files, **test_set.files}
    model, _ = load_run(tmp_path)
    assert not model.training


def test_resume_continues_exactly_where_training_stopped(tmp_path):
    straight = train(resolve({}, FAST), tmp_path / "a", progress=False, log=quiet)
    train(resolve({}, ["epochs=1", *FAST[1:]]), tmp_path / "b", progress=False, log=quiet)
    (tmp_path / "b" / ".last.pt.x1y2.tmp").write_bytes(b"half")  # left by a run killed while writing
    resumed = train(resolve({}, FAST), tmp_path / "b", progress=False, log=quiet)
    assert not list((tmp_path / "b").glob(".*.tmp"))
    a = ckpt.load(tmp_path / "a" / "last.pt")["model"]
    b = ckpt.load(tmp_path / "b" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert resumed["test"] == straight["test"]


@pytest.mark.parametrize("setting", [
    "miner={name: distance-weighted, seed: 3}",
    "loss={name: xbm, loss: triplet, memory_size: 120, miner: {name: distance-weighted, seed: 3}}",
    "losses=[{name: triplet, miner: {name: distance-weighted, seed: 3}}, {name: xbm, loss: contrastive, "
    "memory_size: 120, miner: {name: distance-weighted, seed: 4}}]"])
def test_resume_continues_the_private_generators_of_seeded_miners(tmp_path, setting):
    # a miner given an int seed draws from a generator of its own; a resume that started it anew from
    # its seed trained on other tuples than the uninterrupted run
    unit = "model={name: linear, out_features: 64, normalize: true}"  # the miner needs unit rows
    straight = train(resolve({}, [*FAST, unit, setting]), tmp_path / "a", progress=False, log=quiet)
    train(resolve({}, ["epochs=1", *FAST[1:], unit, setting]), tmp_path / "b", progress=False, log=quiet)
    resumed = train(resolve({}, [*FAST, unit, setting]), tmp_path / "b", progress=False, log=quiet)
    a, b = (ckpt.load(tmp_path / run / "last.pt") for run in ("a", "b"))
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    assert len(a["rng"]["miners"]) == setting.count("distance-weighted")
    assert resumed["test"] == straight["test"]


def test_resume_with_another_evaluation_batch_size_goes_on(tmp_path):
    # eval.batch_size only trades memory for speed (and its default changed from 1,024 to 128)
    train(resolve({}, ["epochs=1", *FAST[1:], "eval.batch_size=1024"]), tmp_path, progress=False, log=quiet)
    result = train(resolve({}, [*FAST, "eval.batch_size=64"]), tmp_path, progress=False, log=quiet)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]


def test_resume_with_another_config_is_refused(tmp_path):
    train(resolve({}, ["epochs=1", *FAST[1:]]), tmp_path, progress=False, log=quiet)
    state = ckpt.load(tmp_path / "last.pt")
    del state["config"]["sampler"]  # a section the saved config lacks: named, not a KeyError
    ckpt.save(tmp_path / "last.pt", state)
    with pytest.raises(ValueError, match=r"trained with another config \(optimizer.lr: 0.0003 then, 0.5 now; "
                                         r"sampler.m: None then, 20 now; .*seed: 0 then, 3 now"):  # the changed keys are named
        train(resolve({}, [*FAST, "optimizer.lr=0.5", "seed=3"]), tmp_path, progress=False, log=quiet)


def test_a_new_run_never_replaces_the_users_files(tmp_path):
    config = resolve({}, ["epochs=1", *FAST[1:]])
    mine = tmp_path / "exp"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my notes\nepochs: 1\n")
    with pytest.raises(ValueError, match=r"config.yaml was not written by a run \(or was edited\)"):
        train(config, mine, progress=False, log=quiet)
    assert (mine / "config.yaml").read_text() == "# my notes\nepochs: 1\n"
    (mine / "config.yaml").unlink()
    (mine / "data.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds files a run does not write \(data.npz\)"):
        train(config, mine, progress=False, log=quiet)
    assert sorted(p.name for p in mine.iterdir()) == ["data.npz"]
    # a run stopped before its first checkpoint (only its config.yaml) starts again, with any config
    reference = train(config, tmp_path / "ref", progress=False, log=quiet)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.yaml").write_text(trainer._config_text(resolve({}, ["epochs=3", "seed=5"])))
    assert train(config, stopped, progress=False, log=quiet)["test"] == reference["test"]
    assert (stopped / "config.yaml").read_text() == (tmp_path / "ref" / "config.yaml").read_text()
    # a run's config.yaml edited by hand (a copy to start from) is the user's
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "config.yaml").write_text((tmp_path / "ref" / "config.yaml").read_text() + "# try lr 0.01\n")
    with pytest.raises(ValueError, match=r"was not written by a run \(or was edited\)"):
        train(config, edited, progress=False, log=quiet)
    # checkpoints of another configuration are never replaced, even without last.pt or with resume=False
    (tmp_path / "ref" / "last.pt").unlink()
    best = (tmp_path / "ref" / "best.pt").read_bytes()
    for resume in (True, False):
        with pytest.raises(ValueError, match="holds the checkpoints of a run of another configuration"):
            train(resolve({}, ["epochs=1", *FAST[1:], "seed=5"]), tmp_path / "ref", resume=resume,
                  progress=False, log=quiet)
    assert (tmp_path / "ref" / "best.pt").read_bytes() == best
    assert train(config, tmp_path / "ref", resume=False, progress=False, log=quiet)["test"] == reference["test"]


def test_one_process_at_a_time_trains_into_a_directory(tmp_path):
    import fcntl
    config = resolve({}, ["epochs=1", *FAST[1:]])
    run = tmp_path / "run"
    run.mkdir()
    with open(run / trainer.LOCK, "a") as held:  # another run's lock (flock: per open file, one process will do)
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match=r"another process is training into .*run \(it holds .*/\.deepmetric-run\.lock\)"):
            train(config, run, progress=False, log=quiet)
    assert [p.name for p in run.iterdir()] == [trainer.LOCK]  # nothing written
    train(config, run, progress=False, log=quiet)  # the file of a run that ended (or was killed) is no lock
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.json",
                                                     "report.html"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / ".lock").write_text("the user's")  # not the trainer's lock: never taken over
    with pytest.raises(ValueError, match=r"holds files a run does not write \(\.lock\)"):
        train(config, tmp_path / "mine", progress=False, log=quiet)
    assert (tmp_path / "mine" / ".lock").read_text() == "the user's"
    with pytest.raises(ValueError, match="split: 'all'"):  # a refused run leaves no directory behind
        train(resolve({}, FAST + ["split=all"]), tmp_path / "new" / "run", progress=False, log=quiet)
    assert not (tmp_path / "new" / "run").exists()


def test_any_k_can_be_selected_and_impossible_selections_fail_before_training(tmp_path):
    result = train(resolve({}, ["epochs=1", "eval.select=recall_at_3", "eval.nmi=false"]), tmp_path / "a",
                   progress=False, log=quiet)
    assert "recall_at_3" in result["epochs"][0]["val"]
    with pytest.raises(ValueError, match="eval.select: recall_at_5000 looks deeper than the 359 validation items"):
        train(resolve({}, ["epochs=1", "eval.select=recall_at_5000"]), tmp_path / "b", progress=False, log=quiet)
    with pytest.raises(ValueError, match="order_preservation needs hierarchical"):
        train(resolve({}, ["epochs=1", "eval.select=order_preservation"]), tmp_path / "b", progress=False, log=quiet)
    assert not (tmp_path / "b").exists()
    # without validation classes the selection is unused, so it is not checked (runs made before the check load)
    assert resolve({}, ["eval.val_classes=0", "eval.select=last"])["eval"]["select"] == "last"


def test_a_run_without_validation_says_so_in_its_report(tmp_path):
    train(resolve({}, ["epochs=1", "eval.val_classes=0", "eval.nmi=false"]), tmp_path, progress=False, log=quiet)
    report = (tmp_path / "report.html").read_text()
    assert "tested: the checkpoint of the last epoch (1; no validation classes)" in report and "best epoch" not in report


def test_checkpoints_can_be_selected_by_clustering_metrics(tmp_path):
    result = train(resolve({}, ["epochs=2", "eval.select=nmi", "eval.nmi=false"]), tmp_path, progress=False, log=quiet)
    history = result["epochs"]
    assert all("nmi" in record["val"] for record in history)
    best = max(range(2), key=lambda i: (history[i]["val"]["nmi"], -i))
    assert result["best_epoch"] == best + 1


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    from deepmetric.training import trainer
    monkeypatch.setattr(trainer, "is_main_process", lambda: False)
    train(resolve({}, ["epochs=1", *FAST[1:]]), tmp_path / "run", progress=False, log=quiet)
    assert not (tmp_path / "run").exists()


def test_loss_parameters_get_their_own_group():
    from deepmetric.training.trainer import build_optimizer
    model, loss = torch.nn.Linear(3, 2), torch.nn.Module()
    loss.proxies = torch.nn.Parameter(torch.zeros(4, 2))
    spec = resolve({}, ["optimizer.loss_lr=0.5"])["optimizer"]
    opt = build_optimizer(spec, model, loss)
    assert [g["name"] for g in opt.param_groups] == ["model", "loss"]
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[0]["lr"] == spec["lr"]


def test_embed_restores_training_mode():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5)).train()
    z = embed(model, torch.ones(5, 3), batch_size=2)
    assert model.training and z.shape == (5, 2)
    torch.testing.assert_close(z[0], z[1])  # dropout was off while embedding


def test_corrupt_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        ckpt.load(path)


def test_loss_sizes_are_filled_in_and_recorded(tmp_path):
    config = resolve({}, FAST + ["loss=proxy-anchor"])
    train(config, tmp_path, progress=False, log=quiet)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    state = ckpt.load(tmp_path / "best.pt")
    assert saved["loss"] == {"name": "proxy-anchor", "num_classes": len(state["classes"]), "embedding_size": 64}
    assert config["loss"] == {"name": "proxy-anchor"}  # the caller's config is not changed
    given = resolve({}, FAST + ["loss={name: proxy-anchor, num_classes: 99}"])
    train(given, tmp_path / "given", progress=False, log=quiet)
    assert yaml.safe_load((tmp_path / "given" / "config.yaml").read_text())["loss"]["num_classes"] == 99


def test_hierarchical_labels_train_with_super_class_batches_and_report_levels(tmp_path):
    g = np.random.default_rng(0)
    y = np.array([[s, c] for s in range(6) for c in range(4) for _ in range(10)])
    centres = 3 * g.normal(size=(6, 8))[y[:, 0]] + g.normal(size=(6, 4, 8))[y[:, 0], y[:, 1]]
    np.savez(tmp_path / "h.npz", X=(centres + 0.3 * g.normal(size=centres.shape)).astype(np.float32), y=y)
    config = resolve({}, [f"data=npz:{tmp_path / 'h.npz'}", "epochs=1", "eval.nmi=false", "loss=radial",
                          "sampler.m=2", "sampler.classes_per_super_class=2", "batch_size=8", "eval.val_classes=0.34"])
    result = train(config, tmp_path / "run", progress=False, log=quiet)
    state = ckpt.load(tmp_path / "run" / "best.pt")
    fit_supers = {c[0] for c in state["classes"]}
    train_set, test_set = load_data(config)
    assert fit_supers < set(train_set.y[:, 0].tolist())  # a whole super-class was held out for validation
    assert len(set(train_set.y[:, 0].tolist()) - fit_supers) == 1
    test = result["test"]
    assert {"level_0", "level_1", "level_1_within_parent"} <= set(test) and 0 <= test["order_preservation"] <= 1
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Test distance distributions" in report and report.count("data:image/png;base64,") == 4
    with pytest.raises(ValueError, match="classes_per_super_class: needs hierarchical"):
        train(resolve({}, FAST + ["sampler.classes_per_super_class=2"]), tmp_path / "flat", progress=False, log=quiet)
    with pytest.raises(ValueError, match="batch_size: expected a multiple of"):
        train(resolve({}, [f"data=npz:{tmp_path / 'h.npz'}", "epochs=1", "sampler.m=2",
                           "sampler.classes_per_super_class=2", "batch_size=10"]), tmp_path / "bad", progress=False,
              log=quiet)
    # the sampler's own argument was named, which no config sets
    with pytest.raises(ValueError, match=r"batch_size 40 / \(sampler.classes_per_super_class 2 x sampler.m 2\) = 10 "
                                         r"super-classes per batch: super_classes_per_batch: 10 distinct"):
        train(resolve({}, [f"data=npz:{tmp_path / 'h.npz'}", "epochs=1", "sampler.m=2",
                           "sampler.classes_per_super_class=2", "batch_size=40"]), tmp_path / "big", progress=False,
              log=quiet)


def test_too_few_top_level_classes_to_hold_out_name_the_setting(tmp_path):
    # two super-classes: the zero-shot split leaves one for training, so none can be held out for
    # validation; the error named an argument "n" with the range [1, 0]
    y = np.array([[s, c] for s in range(2) for c in range(4) for _ in range(6)])
    x = np.random.default_rng(0).normal(size=(len(y), 8)).astype(np.float32)
    np.savez(tmp_path / "h.npz", X=x, y=y)
    config = resolve({}, [f"data=npz:{tmp_path / 'h.npz'}", "epochs=1", "eval.nmi=false", "eval.val_classes=0.34"])
    with pytest.raises(ValueError, match=r"eval.val_classes: cannot hold out 0.34 .* 1 class at level 0; holding "
                                         r"classes out needs at least 2 .* set it to 0"):
        train(config, tmp_path / "run", progress=False, log=quiet)


def test_logged_rate_order_of_checkpoints_and_resume_limits(tmp_path, monkeypatch):
    config = resolve({}, FAST + ["optimizer.schedule=cosine", "optimizer.lr=0.01"])
    saved = []
    real_save = ckpt.save
    monkeypatch.setattr(ckpt, "save", lambda path, state: (saved.append(path.name), real_save(path, state)))
    result = train(config, tmp_path / "run", progress=False, log=quiet)
    # the rate each epoch trained with (cosine over 2 epochs: 0.01, then 0.005); it was read after the step
    assert [e["lr"] for e in result["epochs"]] == pytest.approx([0.01, 0.005])
    # best.pt before last.pt: a run killed between them repeats the epoch and saves best.pt again
    assert saved[:2] == ["best.pt", "last.pt"]
    with pytest.raises(ValueError, match="epochs: .* has trained 2 epochs already"):
        train(resolve({}, ["epochs=1", "eval.nmi=false", "optimizer.schedule=cosine", "optimizer.lr=0.01"]),
              tmp_path / "run", progress=False, log=quiet)
    with pytest.raises(ValueError, match="epochs: the cosine schedule of .* anneals over 2 epochs"):
        train(resolve({}, ["epochs=4", "eval.nmi=false", "optimizer.schedule=cosine", "optimizer.lr=0.01"]),
              tmp_path / "run", progress=False, log=quiet)


def test_training_refuses_split_all_and_files_named_like_a_runs(tmp_path):
    with pytest.raises(ValueError, match="split: 'all' puts every item in both parts"):
        train(resolve({}, FAST + ["split=all"]), tmp_path / "a", progress=False, log=quiet)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.json").write_text("{\"mine\": 1}")  # the user's, no config.yaml of a run
    with pytest.raises(ValueError, match="holds files named like a run's but no config.yaml of a run"):
        train(resolve({}, FAST), tmp_path / "b", progress=False, log=quiet)
    assert (tmp_path / "b" / "metrics.json").read_text() == "{\"mine\": 1}"


def test_weights_that_do_not_fit_the_config_name_the_checkpoint(tmp_path):
    # a RuntimeError of load_state_dict (a 37-line traceback in the CLI) for a checkpoint whose weights are
    # not those of the model its config describes
    torch.save({"config": resolve({}), "model": {"linear.weight": torch.zeros(3, 3)}, "in_shape": [64],
                "distance": "cosine"}, tmp_path / "best.pt")
    with pytest.raises(ValueError, match=r"best\.pt: the weights do not fit the model its config describes \(.*"
                                         r"size mismatch for linear\.weight"):
        load_run(tmp_path)


def test_exclude_groups_applies_to_validation_and_test_metrics(tmp_path):
    # items come in pairs of near-duplicates (one group each): without the exclusion P@1 is about 1
    g = np.random.default_rng(0)
    base = g.normal(size=(200, 8)).astype(np.float32)
    x = np.repeat(base, 2, axis=0) + 0.01 * g.normal(size=(400, 8)).astype(np.float32)
    y, groups = np.repeat(np.arange(40), 10), np.arange(400) // 2
    np.savez(tmp_path / "g.npz", X=x, y=y, groups=groups)
    config = resolve({}, [f"data=npz:{tmp_path / 'g.npz'}", "epochs=1", "eval.nmi=false", "sampler.m=4",
                          "batch_size=16", "eval.val_classes=0.3", "eval.exclude_groups=true"])
    result = train(config, tmp_path / "run", progress=False, log=quiet)
    model, _ = load_run(tmp_path / "run")
    _, test = load_data(config)
    emb = embed(model, test.x, 1024)
    assert result["test"]["precision_at_1"] == evaluate(emb, test.y, nmi=False, groups=test.groups)["precision_at_1"]
    assert result["test"]["precision_at_1"] < evaluate(emb, test.y, nmi=False)["precision_at_1"]
    # unset (the default): excluded too, since the data have groups (it was false: near-duplicate frames
    # of the query's own track inflated P@1 from 0.59 to 1.0 on Notting-Hill); false: included
    for setting, groups in (([], test.groups), (["eval.exclude_groups=false"], None)):
        config = resolve({}, [f"data=npz:{tmp_path / 'g.npz'}", "epochs=1", "eval.nmi=false", "sampler.m=4",
                              "batch_size=16", "eval.val_classes=0.3", *setting])
        result = train(config, tmp_path / f"run{len(setting)}", progress=False, log=quiet)
        emb = embed(load_run(tmp_path / f"run{len(setting)}")[0], test.x, 1024)
        assert result["test"]["precision_at_1"] == evaluate(emb, test.y, nmi=False, groups=groups)["precision_at_1"]
    with pytest.raises(ValueError, match="eval.exclude_groups: true needs data with groups"):
        train(resolve({}, FAST + ["eval.exclude_groups=true"]), tmp_path / "digits", progress=False, log=quiet)


def test_a_run_saved_before_a_section_key_existed_still_resumes(tmp_path):
    train(resolve({}, ["epochs=1", "eval.nmi=false"]), tmp_path, progress=False, log=quiet)
    state = ckpt.load(tmp_path / "last.pt")
    del state["config"]["eval"]["exclude_groups"]  # as saved before the key was added
    ckpt.save(tmp_path / "last.pt", state)
    result = train(resolve({}, FAST), tmp_path, progress=False, log=quiet)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    state = ckpt.load(tmp_path / "last.pt")
    state["config"]["eval"]["exclude_groups"] = False  # the default before null: the same on data without groups
    ckpt.save(tmp_path / "last.pt", state)
    result = train(resolve({}, ["epochs=3", *FAST[1:]]), tmp_path, progress=False, log=quiet)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3]


def test_a_level_metric_can_be_selected_and_undefined_selections_fail_before_training(tmp_path):
    # 12 super-classes of 3 sub-classes; each sub-class is one group (a face track of one actor):
    # excluding groups, no query has a relevant item at the finest level, so map_at_r is undefined
    g = np.random.default_rng(0)
    y = np.array([[s, 3 * s + c] for s in range(12) for c in range(3) for _ in range(6)])
    centres = 3 * g.normal(size=(12, 8))[y[:, 0]] + g.normal(size=(36, 8))[y[:, 1]]
    np.savez(tmp_path / "h.npz", X=(centres + 0.3 * g.normal(size=centres.shape)).astype(np.float32), y=y,
             groups=y[:, 1])
    base = [f"data=npz:{tmp_path / 'h.npz'}", "eval.nmi=false", "sampler.m=2", "batch_size=12",
            "eval.val_classes=0.34", "eval.exclude_groups=true"]
    with pytest.raises(ValueError, match=r"eval.select: 'map_at_r' is not among the validation metrics \(.*"
                                         r"level_0.map_at_r"):
        train(resolve({}, base + ["epochs=1"]), tmp_path / "finest", progress=False, log=quiet)
    assert not (tmp_path / "finest").exists()  # refused before the first epoch, and nothing written
    result = train(resolve({}, base + ["epochs=2", "eval.select=level_0.map_at_r"]), tmp_path / "run",
                   progress=False, log=quiet)
    scores = [record["val"]["level_0"]["map_at_r"] for record in result["epochs"]]
    assert result["select"] == "level_0.map_at_r"
    assert result["best_epoch"] == 1 + max(range(2), key=lambda i: (scores[i], -i))
    assert "map_at_r" not in result["epochs"][0]["val"]
    assert (tmp_path / "run" / "report.html").exists()  # the report plots what validation has (it raised KeyError)
    with pytest.raises(ValueError, match="eval.select: level_0.map_at_r: the validation classes hold 1 class at "
                                         "level_0, so every item is relevant"):
        train(resolve({}, base + ["epochs=1", "eval.select=level_0.map_at_r", "eval.val_classes=0.2"]),
              tmp_path / "one", progress=False, log=quiet)
    with pytest.raises(ValueError, match=r"eval.select: level_2.map_at_r needs hierarchical labels with a level_2"):
        train(resolve({}, base + ["epochs=1", "eval.select=level_2.map_at_r"]), tmp_path / "deep", progress=False,
              log=quiet)
    with pytest.raises(ValueError, match="or a hierarchy level's such as level_0.map_at_r, got 'level_x.map_at_r'"):
        resolve({}, ["eval.select=level_x.map_at_r"])


def test_settings_a_sweep_gets_wrong_fail_before_or_as_they_go_wrong(tmp_path):
    # each used to run to the end (or to a misleading error) and leave checkpoints that looked like results
    data = noisy_features(tmp_path / "f.npz", n_classes=12, per_class=10)
    base = [f"data={data}", "epochs=2", "eval.nmi=false", "sampler.m=5", "batch_size=20"]
    # a diverging learning rate: stopped at the step whose loss is not finite, naming epoch, step and rate
    with pytest.raises(ValueError, match=r"epoch 1, step \d+: (the loss is (nan|inf)|the loss cannot be computed "
                                         r"\(.*\)) at learning rate 1e\+38; the training diverged"):
        train(resolve({}, base + ["optimizer.name=sgd", "optimizer.lr=1e38", "eval.val_classes=0"]), tmp_path / "nan",
              progress=False, log=quiet)
    # a test part with no scorable query: refused before training (it failed after the last epoch)
    x = np.random.default_rng(0).normal(size=(130, 4)).astype(np.float32)
    y = np.concatenate([np.repeat(np.arange(6), 20), np.arange(6, 16)])  # zero-shot test classes 8..15: one item each
    np.savez(tmp_path / "single.npz", X=x, y=y)
    with pytest.raises(ValueError, match=r"no item of the test part .* has an item of its class besides itself"):
        train(resolve({}, [f"data=npz:{tmp_path / 'single.npz'}", "epochs=1", "eval.val_classes=0"]),
              tmp_path / "single", progress=False, log=quiet)
    assert not (tmp_path / "single").exists()
    # one training class left after the validation classes
    with pytest.raises(ValueError, match=r"the training part holds 1 class"):
        train(resolve({}, base + ["eval.val_classes=0.9", "sampler.m=10"]), tmp_path / "one", progress=False, log=quiet)
    # a miner that finds nothing: said at the end of each epoch
    said = []
    train(resolve({}, base + ["miner={name: semi-hard, margin: 0.0}", "loss.margin=0.0", "eval.val_classes=0"]),
          tmp_path / "zero", progress=False, log=said.append)
    assert any("the loss was 0 on every batch, so nothing was learned" in line for line in said)


def test_loss_lr_zero_freezes_the_proxies():
    # 0 was read as "not set": the proxies trained at the model's rate
    model, loss = torch.nn.Linear(4, 3), trainer.losses_mod.create({"name": "proxy-anchor", "num_classes": 2,
                                                                    "embedding_size": 3})
    spec = resolve({}, ["optimizer.loss_lr=0"])["optimizer"]
    optimizer = trainer.build_optimizer(spec, model, loss)
    before, weight = loss.proxies.detach().clone(), model.weight.detach().clone()
    loss(model(torch.randn(6, 4)), torch.tensor([0, 0, 0, 1, 1, 1])).backward()
    optimizer.step()
    assert torch.equal(loss.proxies, before) and not torch.equal(model.weight, weight)


@pytest.mark.parametrize("how", ["environment", "data_dir"])
def test_a_resume_after_the_data_root_moved_goes_on(tmp_path, monkeypatch, how):
    # the same files under another data root (a copied data directory, a recreated venv): checked by checksum,
    # the paths may differ, whether the root comes from $DEEPMETRIC_DATA or from the config's data_dir
    import shutil
    for root in ("a", "b"):
        shutil.copytree(data_root() / "mnist-test", tmp_path / root / "mnist-test")
    settings = ["data=mnist-test", "eval.nmi=false", "eval.val_classes=0", "sampler.m=6", "batch_size=30"]

    def at(root):
        if how == "environment":
            monkeypatch.setenv("DEEPMETRIC_DATA", str(tmp_path / root))
            return settings
        return [*settings, f"data_dir={tmp_path / root}"]

    train(resolve({}, at("a") + ["epochs=1"]), tmp_path / "run", progress=False, log=quiet)
    result = train(resolve({}, at("b") + ["epochs=2"]), tmp_path / "run", progress=False, log=quiet)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]


def test_a_checkpoint_without_file_checksums_still_compares_data_dir(tmp_path):
    # checkpoints written before the data files' checksums: data_dir is their only check of the data
    import shutil
    for root in ("a", "b"):
        shutil.copytree(data_root() / "mnist-test", tmp_path / root / "mnist-test")
    settings = ["data=mnist-test", "eval.nmi=false", "eval.val_classes=0", "sampler.m=6", "batch_size=30"]
    train(resolve({}, [*settings, "epochs=1", f"data_dir={tmp_path / 'a'}"]), tmp_path / "run", progress=False,
          log=quiet)
    state = ckpt.load(tmp_path / "run" / "last.pt")
    del state["data_files"]
    ckpt.save(tmp_path / "run" / "last.pt", state)
    with pytest.raises(ValueError, match=r"another config \(data_dir: "):
        train(resolve({}, [*settings, "epochs=2", f"data_dir={tmp_path / 'b'}"]), tmp_path / "run", progress=False,
              log=quiet)


def test_a_resume_on_other_data_is_refused(tmp_path):
    # the data file replaced by other features: the resume trained on, then the run could not be evaluated
    data = noisy_features(tmp_path / "f.npz", n_classes=12, per_class=10)
    settings = [f"data={data}", "eval.nmi=false", "sampler.m=5", "batch_size=20", "eval.val_classes=0"]
    train(resolve({}, settings + ["epochs=1"]), tmp_path / "run", progress=False, log=quiet)
    noisy_features(tmp_path / "f.npz", n_classes=12, per_class=10, seed=1)
    with pytest.raises(ValueError, match=r"resume: .*last.pt was trained on other data"):
        train(resolve({}, settings + ["epochs=2"]), tmp_path / "run", progress=False, log=quiet)


def test_a_run_saved_before_a_top_level_key_existed_still_resumes(tmp_path):
    # only the sections got the defaults of keys added since; a missing top-level key (losses, data_dir)
    # made an unchanged config "another config", naming nothing
    train(resolve({}, ["epochs=1", *FAST[1:]]), tmp_path, progress=False, log=quiet)
    state = ckpt.load(tmp_path / "last.pt")
    del state["config"]["losses"]
    ckpt.save(tmp_path / "last.pt", state)
    result = train(resolve({}, FAST), tmp_path, progress=False, log=quiet)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
