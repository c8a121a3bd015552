"""Functional forms of the losses and miners (tensors in, tensors out), as the loss and miner classes
call them."""
from deepmetric.functional import granularity, hierarchical, losses, mining, proxy, triplet_family

__all__ = ["granularity", "hierarchical", "losses", "mining", "proxy", "triplet_family"]
