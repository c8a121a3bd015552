"""The trainer: one run from a resolved config to a run directory.

A run directory holds ``config.yaml`` (the resolved config), ``last.pt`` and ``best.pt`` checkpoints,
``metrics.json`` (validation metrics per epoch and the final test metrics) and ``report.html``.
Checkpoints are chosen on validation classes carved out of the training classes, never on test classes.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import platform
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

import deepmetric
from deepmetric import losses as losses_mod
from deepmetric import mining
from deepmetric import models as models_mod
from deepmetric._checks import ExtremeValuesError
from deepmetric._io import locked, write_json, write_text
from deepmetric.data import HierarchicalBatchSampler, MPerClassSampler, holdout_classes, load_split
from deepmetric.data.samplers import stream_seed
from deepmetric.evaluation import evaluate
from deepmetric.evaluation.ranking import count_relevant
from deepmetric.evaluation.hierarchy import quadlet_distances
from deepmetric.labels import is_hierarchical, is_multilabel, level_ids
from deepmetric.report import metric_value, write_report
from deepmetric.training import checkpoint as ckpt
from deepmetric.training.config import CLUSTERING_KEYS, DEFAULTS, SECTIONS, SELECTABLE
from deepmetric.training.distributed import (average_gradients, broadcast_parameters, gather_objects,
                                              is_main_process, rank_and_world, rank_zero_error)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(config: dict):
    """``(train, test)`` ArrayDatasets for the config's ``data`` spec and ``split``."""
    spec = dict(config["data"])
    name = spec.pop("name")
    return load_split(name, split=config["split"], data_dir=config.get("data_dir"), **spec)


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    """Embeddings of ``x`` in eval mode, in batches (restores the model's training mode). On the CPU small
    batches are faster: the Omniglot CNN embeds its 3,860 validation images in 1.0 s in batches of 128
    and 2.3 s in batches of 1,024 (two threads), whose 200 MB activations are page-faulted afresh each time."""
    was_training = model.training
    model.eval()
    starts = range(0, x.shape[0], batch_size)
    out = [model(x[s:s + batch_size]) for s in tqdm(starts, desc="embed", disable=not progress, leave=False)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, getattr(model, "out_features", 0))


def _check_scorable(test_set, exclude_groups: bool) -> None:
    """Refuse, before training, a test part whose metrics would be undefined: no item has another item
    of its class (the top level for hierarchical labels) outside itself and its group."""
    y = test_set.y[:, :1] if is_hierarchical(test_set.y) else test_set.y
    groups = test_set.groups if exclude_groups else None
    if not bool((count_relevant(y, y, True, groups, groups) > 0).any()):
        raise ValueError(f"data: no item of the test part ({test_set.name}, {len(test_set)} items) has an item of "
                         f"its class besides itself{' and its group' if groups is not None else ''}, so no test "
                         f"metric would be defined; the test classes need at least 2 items")


def build_optimizer(spec: dict, model: torch.nn.Module, loss: torch.nn.Module):
    """Adam or SGD with two parameter groups: the model, and the loss's own parameters (proxies,
    centres, ...) at ``loss_lr`` (default: the model's learning rate)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "model"}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "name": "loss", "lr": spec["lr"] if spec["loss_lr"] is None
                       else spec["loss_lr"]})  # 0 freezes them
    name = spec["name"]
    if name == "adam":
        return torch.optim.Adam(groups, lr=spec["lr"], weight_decay=spec["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=spec["lr"], weight_decay=spec["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=spec["lr"], momentum=spec["momentum"], weight_decay=spec["weight_decay"])
    raise ValueError(f"optimizer.name: expected one of adam, adamw, sgd; got {name!r}")


def build_scheduler(spec: dict, optimizer, epochs: int):
    """Per-epoch learning-rate schedule: ``none``, ``cosine`` (to 0 over the run) or ``step``."""
    schedule = spec["schedule"]
    if schedule == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec["step_size"], gamma=spec["gamma"])
    raise ValueError(f"optimizer.schedule: expected one of none, cosine, step; got {schedule!r}")


def with_loss_sizes(config: dict, num_classes: int, embedding_size: int) -> dict:
    """The config with ``num_classes`` (the training classes, finest level) and ``embedding_size``
    (the model's output) filled in for every loss that takes them and was not given them, so that
    ``--set loss=proxy-anchor`` or ``--set loss=ie`` works as it is; the run's config.yaml records
    the values used."""
    sizes = {"num_classes": num_classes, "embedding_size": embedding_size}

    def fill(spec):
        if spec is None:
            return spec
        params = inspect.signature(losses_mod.LOSSES.get(spec["name"])).parameters
        return {**spec, **{k: v for k, v in sizes.items() if k in params and k not in spec}}

    config = dict(config)
    config["loss"] = fill(config["loss"])
    if config["losses"]:
        config["losses"] = [fill(spec) for spec in config["losses"]]
    return config


def build_sampler(config: dict, labels: torch.Tensor, seed: int, world: int, rank: int):
    """m items per class in every batch; with ``sampler.classes_per_super_class`` set (hierarchical
    labels), ``batch_size / (classes_per_super_class * m)`` super-classes per batch, that many classes of
    each and ``m`` items of each class (:class:`~deepmetric.data.HierarchicalBatchSampler`)."""
    spec, batch_size = config["sampler"], config["batch_size"]
    per_super = spec["classes_per_super_class"]
    if per_super is None:
        return MPerClassSampler(labels, m=spec["m"], batch_size=batch_size, seed=seed, num_replicas=world, rank=rank)
    if labels.dim() != 2:
        raise ValueError("sampler.classes_per_super_class: needs hierarchical (N, L) labels (e.g. data "
                         "{name: omniglot, hierarchical: true}); these labels are flat")
    unit = per_super * spec["m"]
    if batch_size % unit:
        raise ValueError(f"batch_size: expected a multiple of sampler.classes_per_super_class x sampler.m = {unit}, "
                         f"got {batch_size}")
    try:
        return HierarchicalBatchSampler(labels, batch_size // unit, per_super, spec["m"], seed=seed,
                                        num_replicas=world, rank=rank)
    except ValueError as err:  # its arguments are derived: say from which settings
        raise ValueError(f"batch_size {batch_size} / (sampler.classes_per_super_class {per_super} x sampler.m "
                         f"{spec['m']}) = {batch_size // unit} super-classes per batch: {err}") from err


def contiguous_labels(y: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Map flat label ids to ``0..C-1`` in the order of ``classes`` (proxy and centre losses need it).

    Hierarchical ``(N, L)`` labels map column by column: column ``l`` becomes the index of the item's
    level-``l`` class (its prefix of columns ``0..l``) among the sorted prefixes present in ``y``, so
    every column is ``0..C_l-1`` and the finest column numbers the finest classes."""
    if y.dim() == 2:
        return level_ids(y)
    lookup = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long)
    lookup[torch.as_tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    return lookup[y]


def _miners(loss_fn: torch.nn.Module, miner) -> list:
    """Every miner of a run in a fixed order: the run's own, then those its losses hold (``losses:``
    entries, ``xbm``)."""
    held = [m for module in loss_fn.modules() for m in (getattr(module, "miner", None), *getattr(module, "miners", ()))]
    return [m for m in (miner, *held) if isinstance(m, mining.Miner)]


def _versions() -> dict:
    import sklearn
    return {"deepmetric": deepmetric.__version__, "torch": str(torch.__version__), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


def _comparable(config: dict, has_groups: bool, files_checked: bool = True) -> dict:
    """The config without ``epochs``, ``data_dir`` (with ``files_checked``: the data files are compared
    by checksum, so the data root may move; checkpoints that predate the checksums keep it) and
    ``eval.batch_size``, as flat ``{"seed": ..., "optimizer.lr": ...}``, completed with the
    defaults of keys added since a run was saved (top-level and in sections), and ``eval.exclude_groups``
    as it acts on the data (false was the default before null), so that such runs still resume."""
    top = {**{k: v for k, v in DEFAULTS.items() if k not in SECTIONS}, **config}  # keys added since: defaults
    out = {k: v for k, v in top.items() if k not in ("epochs", *SECTIONS) and (k != "data_dir" or not files_checked)}
    for section in SECTIONS:
        if isinstance(config.get(section), dict):
            out.update({f"{section}.{k}": v for k, v in {**DEFAULTS[section], **config[section]}.items()})
    out.pop("eval.batch_size", None)  # speed and memory only (the default changed from 1,024 to 128)
    if out.get("eval.exclude_groups", False) is None:
        out["eval.exclude_groups"] = has_groups
    return out


#: first line of a run's config.yaml, with the sha256 of the rest: a file without it (or edited) is the
#: user's, and never replaced
CONFIG_HEADER = "# deepmetric run configuration, written by the trainer; sha256 of what follows: "
#: the file a running training holds locked in its run directory
LOCK = ".deepmetric-run.lock"
#: the files a run directory holds (and the temporary names they are written under)
RUN_FILES = re.compile(r"\.?(config\.yaml|metrics\.json|last\.pt|best\.pt|report\.html)(\..*\.tmp)?"
                       r"|\.deepmetric-run\.lock")


def _config_text(config: dict) -> str:
    """``config.yaml`` of a run: :data:`CONFIG_HEADER` with the checksum, then the YAML."""
    body = yaml.safe_dump(config, sort_keys=False)
    return f"{CONFIG_HEADER}{hashlib.sha256(body.encode()).hexdigest()}\n{body}"


def _written_by_trainer(text: str) -> bool:
    first, _, body = text.partition("\n")
    return first == f"{CONFIG_HEADER}{hashlib.sha256(body.encode()).hexdigest()}"


def _check_new_run_dir(out: Path, config_text: str) -> None:
    """Refuse to start a run in a directory holding anything but an earlier run's files, a
    ``config.yaml`` the trainer did not write as it is (a user's own or edited config, whose text
    would be lost), or the checkpoints of a run of another configuration."""
    if not out.is_dir():
        if out.exists():
            raise ValueError(f"out: {out} exists and is not a directory")
        return
    foreign = sorted(p.name for p in out.iterdir() if not RUN_FILES.fullmatch(p.name))
    if foreign:
        raise ValueError(f"out: {out} holds files a run does not write ({', '.join(foreign[:5])}); "
                         f"give a new or empty run directory")
    config_file = out / "config.yaml"
    text = config_file.read_text() if config_file.exists() else None
    if text is not None and not _written_by_trainer(text):
        raise ValueError(f"out: {config_file} was not written by a run (or was edited) and would be "
                         f"overwritten; give a new run directory")
    if text is None and any(p.suffix != ".tmp" and p.name != LOCK for p in out.iterdir()):  # config first
        raise ValueError(f"out: {out} holds files named like a run's but no config.yaml of a run, so they are not "
                         f"a run's and would be overwritten; give a new or empty run directory")
    if text != config_text and any((out / name).exists() for name in ("last.pt", "best.pt")):
        raise ValueError(f"out: {out} holds the checkpoints of a run of another configuration; give a new "
                         f"run directory")


@contextlib.contextmanager
def _run_lock(out: Path):
    """Hold ``out/`` :data:`LOCK` while a run writes ``out``: a second run into the same directory would interleave
    checkpoints and delete the first one's temporary files. A directory this call created is removed
    again if the run wrote nothing into it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with locked(out / LOCK, busy=f"out: another process is training into {out} (it holds {out / LOCK}); "
                                      "wait for it to end or give another run directory"):
            yield
    finally:
        if created and not any(out.iterdir()):
            out.rmdir()


def train(config: dict, out_dir: str | Path, *, resume: bool = True, progress: bool = True, log=print) -> dict:
    """Train the model a resolved ``config`` describes and write the run to ``out_dir``.

    Resumes from ``out_dir/last.pt`` when it exists (and ``resume``), continuing to ``epochs``. A new
    run needs a missing or empty directory, or one holding only the files of a run: with checkpoints
    only of the same configuration (``resume=False`` starts it again), without them of any (a run
    stopped before its first checkpoint), so no file of the user's is replaced.
    One process at a time trains into a directory (it holds ``out_dir/.deepmetric-run.lock``).
    Returns the content of ``metrics.json``.
    """
    out = Path(out_dir)
    with contextlib.ExitStack() as stack:
        error = None
        if is_main_process():
            try:
                stack.enter_context(_run_lock(out))
            except Exception as err:  # e.g. another run holds it, or the directory cannot be made
                error = err
        rank_zero_error(error)  # the other ranks stop too, rather than wait for rank 0 in a collective
        return _train(config, out, resume=resume, progress=progress, log=log)


def _train(config: dict, out: Path, *, resume: bool, progress: bool, log) -> dict:
    rank, world = rank_and_world()
    seed_everything(stream_seed(config["seed"], rank))
    if config["split"] == "all":  # validation classes and the test metrics would be training items
        raise ValueError("split: 'all' puts every item in both parts (for evaluating an embedding); training "
                         "needs disjoint parts, 'zero-shot'")
    train_set, test_set = load_data(config)
    ev = config["eval"]
    if ev["exclude_groups"] and train_set.groups is None:
        raise ValueError(f"eval.exclude_groups: true needs data with groups (e.g. frames of one video); "
                         f"{train_set.name!r} has none")
    exclude_groups = train_set.groups is not None if ev["exclude_groups"] is None else ev["exclude_groups"]
    _check_scorable(test_set, exclude_groups)  # before training, not after it
    hierarchical = is_hierarchical(train_set.y)
    select = ev["select"]
    select_level, _, select_key = str(select).rpartition(".")  # "level_0.map_at_r": a level's metric
    clustering = select_key in CLUSTERING_KEYS
    if ev["val_classes"] and clustering and is_multilabel(train_set.y):
        raise ValueError(f"eval.select: {select} clusters single-label classes; multi-label data have none")
    if ev["val_classes"] and select_key == "order_preservation" and not hierarchical:
        raise ValueError("eval.select: order_preservation needs hierarchical (N, L) labels")
    if ev["val_classes"] and select_level and not (hierarchical and int(select_level[6:]) < train_set.y.shape[1]):
        raise ValueError(f"eval.select: {select} needs hierarchical labels with a {select_level}; the labels "
                         f"have shape {tuple(train_set.y.shape)}")
    select_k = re.search(r"_at_([0-9]+)$", str(select))  # validation reports this k too
    if ev["val_classes"]:  # hierarchical labels: whole top-level classes (e.g. alphabets) are held out
        try:
            fit_set, val_set = holdout_classes(train_set, ev["val_classes"], seed=config["seed"],
                                               level=0 if hierarchical else None)
        except ValueError as err:
            raise ValueError(f"eval.val_classes: cannot hold out {ev['val_classes']} of the training classes "
                             f"for validation ({err}); set it to 0 to keep the last epoch") from None
        if len(val_set.classes) < 2:
            raise ValueError(f"eval.val_classes: {ev['val_classes']} holds out {len(val_set.classes)} class(es) of "
                             f"{len(train_set.classes)}; validation needs at least 2 (raise it, or 0 to keep the "
                             "last epoch)")
        if select_level:  # one class at the selected level: every item relevant, a constant score
            n_level = int(torch.unique(val_set.y[:, :int(select_level[6:]) + 1], dim=0).shape[0])
            if n_level < 2:
                raise ValueError(f"eval.select: {select}: the validation classes hold {n_level} class at "
                                 f"{select_level}, so every item is relevant and the score is constant; hold out more "
                                 "top-level classes (eval.val_classes), or set it to 0 to keep the last epoch")
        if select_k and int(select_k[1]) >= len(val_set):  # every item would be retrieved: a constant score
            raise ValueError(f"eval.select: {select} looks deeper than the {len(val_set)} validation items allow")
    else:  # no validation: the last epoch is kept
        fit_set, val_set = train_set, train_set.subset(torch.zeros(0, dtype=torch.long))
    classes = fit_set.classes.tolist()
    if len(classes) < 2:
        raise ValueError(f"data: the training part holds {len(classes)} class after the validation classes "
                         f"(eval.val_classes {ev['val_classes']}); metric learning needs at least 2")
    y_fit = contiguous_labels(fit_set.y, classes)

    model = models_mod.create(config["model"], in_shape=tuple(fit_set.x.shape[1:]))
    config = with_loss_sizes(config, num_classes=len(classes), embedding_size=model.out_features)
    if config["losses"]:
        loss_fn, miner = losses_mod.combine(config["losses"]), None
    else:
        loss_fn = losses_mod.create(config["loss"])
        miner = mining.create(config["miner"]) if config["miner"] else None
    distance = loss_fn.distance
    miners = _miners(loss_fn, miner)  # their private generators are saved with the random state
    loss_params = list(loss_fn.parameters())  # proxies, centres: kept equal on every rank by hand
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
        broadcast_parameters(loss_fn)
    core = model.module if world > 1 else model
    optimizer = build_optimizer(config["optimizer"], model, loss_fn)
    scheduler = build_scheduler(config["optimizer"], optimizer, config["epochs"])
    sampler_seed = config["sampler"]["seed"] if config["sampler"]["seed"] is not None else config["seed"]
    sampler = build_sampler(config, y_fit, sampler_seed, world, rank)

    history, best, best_epoch, start = [], -math.inf, -1, 0
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.exists():
        state = ckpt.load(last_path)
        saved, now = (_comparable(c, train_set.groups is not None, "data_files" in state)
                      for c in (state["config"], config))
        if saved != now:
            changed = [f"{key}: {saved.get(key)!r} then, {now.get(key)!r} now" for key in sorted(set(saved) | set(now))
                       if saved.get(key) != now.get(key)]
            raise ValueError(f"resume: {last_path} was trained with another config ({'; '.join(changed)[:500]}); "
                             f"use a new --out directory or the same config (only 'epochs', 'data_dir' and "
                             f"'eval.batch_size' may change)")
        files = train_set.files | test_set.files  # by checksum: the data root may have moved since
        if (sorted(state.get("data_files", files).values()) != sorted(files.values())
                or state.get("classes", classes) != classes):  # (checkpoints that predate either are taken)
            raise ValueError(f"resume: {last_path} was trained on other data (the files' checksums or the classes "
                             f"differ); use a new --out directory")
        done, planned = state["epoch"], state["config"]["epochs"]
        if config["epochs"] < done:
            raise ValueError(f"epochs: {last_path} has trained {done} epochs already; resume with at least "
                             f"{done} or use a new --out directory")
        if config["optimizer"]["schedule"] == "cosine" and config["epochs"] != planned:
            raise ValueError(f"epochs: the cosine schedule of {last_path} anneals over {planned} epochs; resuming "
                             f"with {config['epochs']} would restart its learning rate; use a new --out directory")
        core.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if len(state.get("rng_ranks", [])) == world:  # each rank's own random state and loss buffers
            loss_fn.load_state_dict(state["loss_ranks"][rank])
            ckpt.set_rng_state(state["rng_ranks"][rank], miners)
        elif rank == 0:  # saved by another number of processes: rank 0 goes on with rank 0's stream
            ckpt.set_rng_state(state["rng"], miners)
            if world > 1:
                log(f"resume: {last_path} was saved by {len(state.get('rng_ranks', [])) or 1} process(es), not "
                    f"{world}: the other ranks go on with new random streams (not an exact resume)")
        else:  # a stream of this rank's own, not rank 0's
            seed_everything(stream_seed(config["seed"], rank + world * state["epoch"]))
        history, best, best_epoch, start = state["history"], state["best"], state["best_epoch"], state["epoch"]
        log(f"resumed from {last_path} at epoch {start}")

    main = is_main_process()
    config_text = _config_text(config)
    if not (resume and last_path.exists()):
        _check_new_run_dir(out, config_text)
    meta = {"config": config, "in_shape": list(fit_set.x.shape[1:]), "classes": classes, "distance": distance,
            "normalize": bool(getattr(core, "normalize", False)), "versions": _versions(),
            "data_files": {**train_set.files, **test_set.files}}

    def validate() -> dict:
        """The validation metrics of the model now; the selected one must be among them."""
        broadcast_parameters(core)  # rank 0's BatchNorm statistics (each rank's last batch updated its own)
        val = evaluate(embed(core, val_set.x, ev["batch_size"]), val_set.y, distance=distance, nmi=clustering,
                       groups=val_set.groups if exclude_groups else None,
                       k=int(select_k[1]) if select_k else None)
        if metric_value(val, select) is None:
            defined = [key for key, value in val.items() if isinstance(value, float)] + [
                f"{level}.{key}" for level, values in val.items() if isinstance(values, dict)
                for key, value in values.items() if isinstance(value, float)]
            raise ValueError(f"eval.select: {select!r} is not among the validation metrics "
                             f"({', '.join(k for k in defined if SELECTABLE.fullmatch(k))})")
        return val

    if len(val_set) and start == 0:
        validate()  # which metrics exist depends on the labels and groups: fail now, not after an epoch
    if main:  # after that check: a refused run writes nothing
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):  # a write of a killed run, never renamed into place
            if RUN_FILES.fullmatch(stale.name):
                stale.unlink()
        write_text(out / "config.yaml", config_text)

    for epoch in range(start, config["epochs"]):
        sampler.set_epoch(epoch)
        model.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        bar = tqdm(sampler, desc=f"epoch {epoch + 1}/{config['epochs']}", disable=not (progress and main),
                   leave=False)
        for batch in bar:
            index = torch.as_tensor(batch, dtype=torch.long)
            x, y = fit_set.x[index], y_fit[index]
            emb = model(x)
            try:
                tuples = miner(emb, y) if miner is not None else None
                value = loss_fn(emb, y, tuples)
                what = None if torch.isfinite(value) else f"the loss is {float(value.detach())}"
            except ExtremeValuesError as error:
                what = f"the loss cannot be computed ({error})"
            if what is not None:  # nothing after this can recover; the checkpoints so far are kept
                raise ValueError(f"epoch {epoch + 1}, step {steps + 1}: {what} at learning rate "
                                 f"{optimizer.param_groups[0]['lr']:g}; the training diverged (lower optimizer.lr) "
                                 "or the inputs hold extreme values")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            average_gradients(loss_params)
            optimizer.step()
            total, steps = total + float(value.detach()), steps + 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        scheduler.step()
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": total / max(steps, 1), "seconds": seconds, "lr": lr}
        if len(val_set):
            record["val"] = validate()
            score = metric_value(record["val"], select)
        else:
            score = float(epoch)  # no validation classes: keep the last epoch
        history.append(record)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch + 1
        ranks = {"rng_ranks": gather_objects(ckpt.rng_state(miners)),  # every rank's, for an exact resume
                 "loss_ranks": gather_objects(loss_fn.state_dict())} if world > 1 else {}
        if main:
            state = {**meta, "model": core.state_dict(), "loss": loss_fn.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": ckpt.rng_state(miners), **ranks, "epoch": epoch + 1, "history": history,
                     "best": best, "best_epoch": best_epoch}
            if improved:  # before last.pt: a run killed in between repeats this epoch and saves it again
                ckpt.save(best_path, state)
            ckpt.save(last_path, state)
            write_json(out / "metrics.json", {"distance": distance, "select": select, "best_epoch": best_epoch,
                                              "epochs": history})
        val_text = f" val {ev['select']} {score:.4f}" if len(val_set) else ""
        if main:
            log(f"epoch {epoch + 1}: loss {record['loss']:.4f}{val_text} ({seconds:.1f} s)")
            if steps and total == 0:
                log(f"epoch {epoch + 1}: the loss was 0 on every batch, so nothing was learned (did the miner find "
                    f"no tuples, or does each batch hold one class?)")

    result = {"distance": distance, "select": select, "best_epoch": best_epoch, "epochs": history}
    if main and best_path.exists():
        core.load_state_dict(ckpt.load(best_path)["model"])
        test_emb = embed(core, test_set.x, ev["batch_size"])
        test_groups = test_set.groups if exclude_groups else None
        result["test"] = evaluate(test_emb, test_set.y, distance=distance, nmi=ev["nmi"], groups=test_groups)
        write_json(out / "metrics.json", result)
        distances = None
        if "order_preservation" in result["test"]:
            relations = ("same sub-class", "same class", "other class")
            distances = dict(zip(relations, quadlet_distances(test_emb, test_set.y, distance, samples=100_000)))
        about = (f"data {test_set.name}, split {config['split']} (its test part), {len(test_set)} items, "
                 f"{'own group' if test_groups is not None else 'only the query itself'} excluded")
        write_report(out, result, distances, test=(test_set.x, test_emb, test_set.y, test_groups), about=about)
    return result


def load_run(run_dir: str | Path, which: str = "best"):
    """``(model, checkpoint)`` of a finished run; the model is in eval mode on the CPU."""
    run = Path(run_dir)
    path = run / f"{which}.pt"
    if not path.exists():
        raise FileNotFoundError(f"run: no checkpoint {path} (is {run} a deepmetric run directory?)")
    state = ckpt.load(path)
    missing = [key for key in ("config", "model", "in_shape", "distance")
               if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"run: {path} is not a deepmetric run checkpoint (missing {missing})")
    config = state["config"]
    model = models_mod.create(config["model"], in_shape=tuple(state["in_shape"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:  # the weights are not those of the model its config describes
        detail = " ".join(line.strip() for line in str(err).splitlines())
        raise ValueError(f"run: {path}: the weights do not fit the model its config describes ({detail[:500]})") \
            from None
    return model.eval(), state
