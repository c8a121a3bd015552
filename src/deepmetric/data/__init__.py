"""Data: in-memory data sets, built-in real sets, feature files, class splits and batch samplers.

Video and audio live in submodules imported on demand (they load PyAV): :mod:`deepmetric.data.video`
(decoding, frame sampling, clips, shot splitting), :mod:`deepmetric.data.audio` (WAV, log-mel
features, padding with masks) and :mod:`deepmetric.data.features` (a cache of per-frame features,
YouTube-8M TFRecords); :mod:`deepmetric.data.av` builds the real audio-visual sets (Notting-Hill face
tracks, spoken and written digits).

>>> from deepmetric import data
>>> train, test = data.load_split("digits", split="zero-shot")
>>> sampler = data.MPerClassSampler(train.y, m=4, batch_size=20)  # 5 classes x 4 items
>>> len(sampler), len(next(iter(sampler)))
(46, 20)
"""
from deepmetric.data.datasets import (
    DATASETS,
    SPLITS,
    ArrayDataset,
    BuiltinDataset,
    concat,
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
from deepmetric.data.samplers import HierarchicalBatchSampler, MPerClassSampler
from deepmetric.data import av  # noqa: E402,F401  (registers the built-in 'notting-hill')

__all__ = [
    "DATASETS", "SPLITS", "ArrayDataset", "BuiltinDataset", "concat", "data_root", "holdout_classes", "load",
    "load_csv", "load_dataset", "load_npz", "load_split", "read_idx", "save_npz", "sha256_file",
    "split_classes", "MPerClassSampler", "HierarchicalBatchSampler",
]
