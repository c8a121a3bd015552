"""deepmetric: deep metric learning for images, video, audio and interaction graphs.

>>> import deepmetric as dm
>>> loss = dm.losses.create("triplet", margin=0.2)
>>> miner = dm.mining.create("semi-hard", margin=0.2)
"""
from deepmetric import data, distances, index, labels, losses, mining, models
from deepmetric.evaluation import evaluate
from deepmetric.tuples import Pairs, Quadlets, Triplets

__version__ = "0.1.0"
__all__ = ["data", "distances", "index", "labels", "losses", "mining", "models", "evaluate", "Pairs", "Triplets", "Quadlets", "__version__"]
