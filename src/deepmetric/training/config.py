"""Run configuration: YAML files, defaults, ``--set a.b=value`` overrides and validation.

A component (``data``, ``model``, ``loss``, ``miner``) is a name or a mapping ``{name: ..., **kwargs}``;
``--set loss=radial`` picks the name with its defaults and ``--set loss.c=3.0`` sets one argument.
Fixed sections (``sampler``, ``optimizer``, ``eval``) only accept the keys listed in ``DEFAULTS``.
``losses:`` (a list of loss components, each with optional ``weight`` and its own ``miner``) trains on
their weighted sum and replaces ``loss`` and ``miner``, which must then be left at their defaults or
null. Settings training would ignore are refused: ``optimizer.momentum`` other than its default under
``adam``/``adamw`` (sgd only). ``optimizer.loss_lr`` (the loss's own parameters): null, the model's
rate; 0 keeps them fixed.

``eval.select`` is the validation metric that picks the checkpoint kept as ``best.pt``: a ranking key
of :func:`deepmetric.evaluate` (``map_at_r``, ``precision_at_1``, ``r_precision``, ``mrr``,
``recall_at_{k}``, ``precision_at_{k}``, ``map_at_{k}``, ``ndcg_at_{k}`` for any k, ``order_preservation``
for hierarchical labels) or a clustering key (``nmi``, ``ami``, ``f1``: k-means then runs every epoch);
``eval.nmi`` adds the clustering keys to the final test metrics. ``eval.exclude_groups`` makes the
validation and test searches skip the items of the query's own group (e.g. the other frames of its
video track): null (the default) whenever the data define groups, true requires groups, false never
(the query's near-duplicates then count as matches).
"""
from __future__ import annotations

import copy
import math
import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "data": "digits",
    "data_dir": None,
    "split": "zero-shot",
    "model": {"name": "linear", "out_features": 64},
    "loss": {"name": "triplet", "margin": 0.2},
    "miner": None,
    "losses": None,
    "sampler": {"m": 20, "seed": None, "classes_per_super_class": None},
    "optimizer": {"name": "adam", "lr": 3e-4, "weight_decay": 0.0, "momentum": 0.9, "loss_lr": None,
                  "schedule": "none", "step_size": 10, "gamma": 0.1},
    "epochs": 20,
    "batch_size": 60,
    "seed": 0,
    "eval": {"val_classes": 0.4, "select": "map_at_r", "batch_size": 128, "nmi": True, "exclude_groups": None},
}
COMPONENTS = ("data", "model", "loss", "miner")
#: the metrics ``eval.select`` may name (keys of ``deepmetric.evaluate`` on a validation set, or a
#: hierarchy level's: ``level_0.map_at_r``)
SELECTABLE = re.compile(r"(level_[0-9]+\.)?(r_precision|map_at_r|mrr|order_preservation|nmi|ami|f1"
                        r"|(recall|precision|map|ndcg)_at_[1-9][0-9]*)")
CLUSTERING_KEYS = ("nmi", "ami", "f1")
SECTIONS = ("sampler", "optimizer", "eval")


def _show(value) -> str:
    """A value's repr for an error message, cut short: YAML aliases can make a small file hold a huge value."""
    text = _SHORT.repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 80, 80


class ConfigError(ValueError):
    """A configuration key or value that does not exist or has the wrong form."""


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load`` that also reads ``1e-3`` and ``5E4`` as numbers: YAML 1.1, which PyYAML
    follows, needs a dot and a signed exponent (``1.0e-3``) and reads the others as strings."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def _yaml(text, where: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None


#: numeric settings: (section or None, key) -> (type, smallest value)
NUMBERS = {(None, "epochs"): (int, 1), (None, "batch_size"): (int, 1), (None, "seed"): (int, 0),
           ("optimizer", "lr"): (float, 0.0), ("optimizer", "weight_decay"): (float, 0.0),
           ("optimizer", "momentum"): (float, 0.0), ("optimizer", "step_size"): (int, 1),
           ("optimizer", "gamma"): (float, 0.0), ("optimizer", "loss_lr"): (float, 0.0),
           ("eval", "batch_size"): (int, 1), ("eval", "val_classes"): (float, 0.0),
           ("sampler", "m"): (int, 1), ("sampler", "classes_per_super_class"): (int, 1)}


#: true/false settings (section, key)
FLAGS = (("eval", "nmi"), ("eval", "exclude_groups"))
#: settings that may also be null (the loss's learning rate: the model's; the groups: decided by the data; no
#: super-classes: m-per-class sampling)
NULLABLE = (("optimizer", "loss_lr"), ("eval", "exclude_groups"), ("sampler", "classes_per_super_class"))


def _check_values(config: dict) -> None:
    """Numbers and flags checked when the config is read, not when the run first uses them (``eval.nmi``
    only at the end of training)."""
    for (section, key), (kind, least) in NUMBERS.items():
        value = (config[section] if section else config)[key]
        name = f"{section}.{key}" if section else key
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None and (section, key) in NULLABLE:
            continue
        if not number or (kind is int and not isinstance(value, int)) or not math.isfinite(value) or value < least:
            what = "an integer" if kind is int else "a finite number"
            also = " (or null)" if (section, key) in NULLABLE else ""
            raise ConfigError(f"{name}: expected {what} >= {least}{also}, got {_show(value)}")
    fraction = config["eval"]["val_classes"]
    if not (fraction == 0 or 0 < fraction < 1):
        raise ConfigError(f"eval.val_classes: expected 0 (no validation) or a fraction of the training classes in "
                          f"(0, 1), got {_show(fraction)}")
    for section, key in FLAGS:
        value = config[section][key]
        if not isinstance(value, bool) and not (value is None and (section, key) in NULLABLE):
            also = ", or null" if (section, key) in NULLABLE else ""
            raise ConfigError(f"{section}.{key}: expected true or false{also}, got {_show(value)}")


def _component(value, key: str):
    """Normalise a component to None or a mapping with a 'name'."""
    if value is None or isinstance(value, dict):
        if isinstance(value, dict) and "name" not in value:
            raise ConfigError(f"{key}: a mapping needs a 'name' key, got keys {sorted(value)}")
        return copy.deepcopy(value)
    if isinstance(value, str):
        return {"name": value}
    raise ConfigError(f"{key}: expected a name or a mapping with 'name', got {_show(value)}")


def resolve(config: dict | None = None, overrides: list[str] | tuple[str, ...] = (), strict: bool = True) -> dict:
    """Merge ``config`` over the defaults, apply ``key=value`` overrides and validate every key.

    ``strict``: also refuse settings that training would ignore (momentum under adam, a loss or miner
    beside a ``losses`` list); False for the config of a saved run, which may predate these checks."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known keys: {', '.join(DEFAULTS)}")
    out = copy.deepcopy(DEFAULTS)
    for key, value in config.items():
        if key in SECTIONS:
            _check_section(key, value)
            out[key].update(value or {})
        else:
            out[key] = value
    for item in overrides:
        _apply_override(out, item)
    for key in COMPONENTS:
        out[key] = _component(out[key], key)
    out["losses"] = _loss_list(out["losses"])
    _check_values(out)
    optimizer = out["optimizer"]
    ignored_momentum = optimizer["momentum"] != DEFAULTS["optimizer"]["momentum"]
    if strict and optimizer["name"] in ("adam", "adamw") and ignored_momentum:
        raise ConfigError(f"optimizer.momentum: used by sgd only; {optimizer['name']} has its own moments (betas)")
    if strict and out["losses"] is not None:  # the list replaces loss and miner: a setting of theirs is ignored
        ignored = [key for key in ("loss", "miner") if out[key] not in (None, _component(DEFAULTS[key], key))]
        if ignored:
            raise ConfigError(f"losses: replaces loss and miner, so {' and '.join(ignored)} would be ignored; give "
                              f"each loss of the list its own miner (losses: [{{name: ..., miner: ...}}]), and set "
                              f"{ignored[0]} to null")
    select = out["eval"]["select"]  # used only with validation classes
    if out["eval"]["val_classes"] and (not isinstance(select, str) or not SELECTABLE.fullmatch(select)):
        raise ConfigError(f"eval.select: expected a validation metric such as map_at_r, precision_at_1, "
                          f"recall_at_4, ndcg_at_10 or nmi, or a hierarchy level's such as level_0.map_at_r, "
                          f"got {_show(select)}")
    return out


def _loss_list(value):
    """``losses``: None, or a non-empty list of loss components, each with optional ``weight`` and ``miner``."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(f"losses: expected a non-empty list of losses (each a name or a mapping with 'name', "
                          f"optional 'weight' and 'miner'), got {_show(value)}")
    items = [_component(item, f"losses[{i}]") for i, item in enumerate(value)]
    for i, item in enumerate(items):
        if item.get("miner") is not None:
            item["miner"] = _component(item["miner"], f"losses[{i}].miner")
    return items


def _check_section(key: str, value) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
    unknown = sorted(set(value) - set(DEFAULTS[key]))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; known: {', '.join(DEFAULTS[key])}")


def _apply_override(config: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set: expected key=value, got {_show(item)}")
    path, raw = item.split("=", 1)
    value = _yaml(raw, f"--set {item}") if raw != "" else None
    keys = path.strip().split(".")
    top = keys[0]
    if top not in DEFAULTS:
        raise ConfigError(f"--set {path}: unknown config key {top!r}; known keys: {', '.join(DEFAULTS)}")
    if len(keys) == 1:
        if top in SECTIONS:
            _check_section(top, value)
            config[top].update(value or {})
        else:
            config[top] = value
        return
    if len(keys) != 2:
        raise ConfigError(f"--set {path}: expected at most one level below {top!r}")
    sub = keys[1]
    if top in SECTIONS:
        _check_section(top, {sub: value})
        config[top][sub] = value
    elif top in COMPONENTS:
        current = _component(config[top], top)
        if current is None:
            raise ConfigError(f"--set {path}: {top} is not set; choose one first with --set {top}=NAME")
        current[sub] = value
        config[top] = current
    else:
        raise ConfigError(f"--set {path}: {top!r} is a plain value, not a mapping")


def load(path: str | Path, overrides=()) -> dict:
    """Read a YAML config file (``yaml.safe_load``: no code runs) and resolve it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file {path}")
    with open(path) as f:
        data = _yaml(f, f"config {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level, got {type(data).__name__}")
    return resolve(data, overrides)
