"""Helpers shared by the bench scripts: YAML experiment configs, mean ± std summaries, reports."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import yaml

from deepmetric._io import write_text


def load_config(path, overrides=()) -> dict:
    """The YAML config at ``path`` with ``key.sub=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file {path}")
    config = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return config


def timed(fn, repeats: int):
    """(median seconds, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def summary(values, digits: int = 4) -> str:
    """``mean ± sample standard deviation`` (0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def report(text: str, start: float, out_md: Path | None = None) -> None:
    """Print the result tables and the run's total time since ``start`` (``time.time()``); with
    ``out_md``, also write the tables there (atomically)."""
    print("\n" + text)
    print(f"\ntotal time {time.time() - start:.0f} s")
    if out_md is not None:
        write_text(out_md, text + "\n")
