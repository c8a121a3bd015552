"""Training: configs, the trainer, checkpoints and distributed helpers."""
from deepmetric.training.config import ConfigError, DEFAULTS, load as load_config, resolve
from deepmetric.training.trainer import embed, load_run, train

__all__ = ["ConfigError", "DEFAULTS", "load_config", "resolve", "train", "embed", "load_run"]
