"""Miners: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None) -> Pairs | Triplets``.

A miner validates its input, computes the ``(B, R)`` distance matrix and the label masks under
``torch.no_grad`` and hands them to a pure function of :mod:`deepmetric.functional.mining`. Anchor
indices refer to the batch; positive and negative indices to the reference set (the batch itself
when none is given, and then an item is never its own positive). Labels may be flat, hierarchical
(the finest level is used) or multi-label, as everywhere in deepmetric.

>>> import torch, deepmetric as dm
>>> miner = dm.mining.create("semi-hard", margin=0.2)
>>> emb, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
>>> a, p, n = miner(emb, labels)
>>> bool((labels[a] == labels[p]).all() and (labels[a] != labels[n]).all())
True

Each miner has a ``distance`` attribute (a name of :mod:`deepmetric.distances`) and records
``last_count``, the number of tuples of its last call (for ``Pairs``: positive plus negative pairs).
"""
from __future__ import annotations

import math
import numbers

import torch

from deepmetric import distances
from deepmetric._checks import check_flag, check_int, check_number, check_pair
from deepmetric.functional import mining as F
from deepmetric.functional.hierarchical import hierarchy_masks
from deepmetric.labels import pair_masks
from deepmetric.registry import Registry
from deepmetric.tuples import Pairs, Quadlets, Triplets

MINERS = Registry("miner")
create = MINERS.create
names = MINERS.names

__all__ = ["MINERS", "create", "names", "Miner", "BatchHardMiner", "SemiHardMiner", "TripletMarginMiner",
           "DistanceWeightedMiner", "MultiSimilarityMiner", "PairMarginMiner", "BatchEasyHardMiner", "AngularMiner",
           "UniformHistogramMiner", "QuadletMiner", "Pairs", "Triplets", "Quadlets"]


class Miner:
    """Base class: subclasses implement ``mine(embeddings, ref_embeddings, *masks)``, the masks being
    those of :meth:`relation_masks` (positives and negatives, unless a subclass says otherwise)."""

    def __init__(self, distance: str = "euclidean"):
        self.distance = distances.check_distance(distance)
        self.last_count = 0

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor | None = None,
                 ref_labels: torch.Tensor | None = None) -> Pairs | Triplets | Quadlets:
        embeddings, labels, ref_emb, ref_lab = check_pair(embeddings, labels, ref_embeddings, ref_labels,
                                                          distance=self.distance)
        with torch.no_grad():
            same = ref_emb is embeddings
            embeddings = embeddings.detach()
            ref_emb = embeddings if same else ref_emb.detach()
            ref_lab = None if ref_embeddings is None else ref_lab  # None: the batch is its own reference set
            out = self.mine(embeddings, ref_emb, *self.relation_masks(labels, ref_lab))
        self.last_count = len(out)
        return out

    def relation_masks(self, labels, ref_labels) -> tuple:
        """The ``(B, R)`` masks handed to :meth:`mine`: positives and negatives."""
        return pair_masks(labels, ref_labels)

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        raise NotImplementedError

    def _seed(self, seed) -> None:
        """For miners that sample: ``seed`` is None (torch's global generator), an int (a private
        generator per device, seeded once) or a ``torch.Generator``."""
        if isinstance(seed, bool) or not (seed is None or isinstance(seed, (numbers.Integral, torch.Generator))):
            raise TypeError(f"seed: expected None, an int or a torch.Generator, got {type(seed).__name__}")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The generator used on ``device`` (None: torch's global one)."""
        if self.seed is None or isinstance(self.seed, torch.Generator):
            return self.seed
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(int(self.seed))
        return self._generators[device]

    def rng_state(self) -> dict:
        """The states of the private generators of an int ``seed`` (by device; empty otherwise), so that
        a resumed training draws what an uninterrupted one would."""
        return {str(device): g.get_state() for device, g in getattr(self, "_generators", {}).items()}

    def set_rng_state(self, state: dict) -> None:
        """Restore what :meth:`rng_state` returned."""
        for device, generator_state in state.items():
            self.generator(torch.device(device)).set_state(generator_state)

    def ascending_distances(self, embeddings: torch.Tensor, ref_embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, R)`` matrix of ``self.distance`` where smaller is closer (``dot`` negated)."""
        return distances.as_ascending(distances.pairwise(embeddings, ref_embeddings, self.distance), self.distance)

    def _params(self) -> dict:
        return {"distance": self.distance}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


@MINERS.register("batch-hard")
class BatchHardMiner(Miner):
    """Batch-hard mining (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

    For each anchor with at least one positive and one negative, the triplet of its farthest
    positive and its closest negative: ``(a, argmax_p D(a,p), argmin_n D(a,n))``. Equal to
    pytorch-metric-learning's ``BatchHardMiner``, ties included (smallest index wins).

    >>> a, p, n = BatchHardMiner()(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]))
    >>> len(a)
    6
    """

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        return F.batch_hard_triplets(self.ascending_distances(embeddings, ref_embeddings), pos_mask, neg_mask)


@MINERS.register("triplet-margin")
class TripletMarginMiner(Miner):
    """Triplets selected by their margin ``m = D(a,n) - D(a,p)`` against ``margin`` (alpha); the
    semi-hard case is FaceNet's (Schroff, Kalenichenko, Philbin, CVPR 2015).

    ``type_of_triplets``: ``"all"`` (``m <= alpha``), ``"hard"`` (``m <= min(0, alpha)``),
    ``"semihard"`` (``0 < m <= alpha``) or ``"easy"`` (``m > alpha``), the inequalities of
    pytorch-metric-learning's ``TripletMarginMiner``. ``hardest_only=True`` keeps only the closest
    qualifying negative of each positive pair. See :func:`deepmetric.functional.mining.margin_triplets`.
    """

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all", distance: str = "euclidean",
                 hardest_only: bool = False):
        super().__init__(distance)
        self.margin = check_number("margin", margin)
        if type_of_triplets not in F.TRIPLET_TYPES:
            raise ValueError(f"type_of_triplets: expected one of {', '.join(F.TRIPLET_TYPES)}, "
                             f"got {type_of_triplets!r}")
        self.type_of_triplets = type_of_triplets
        self.hardest_only = check_flag(hardest_only, "hardest_only")

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        dist = self.ascending_distances(embeddings, ref_embeddings)
        return F.margin_triplets(dist, pos_mask, neg_mask, self.margin, self.type_of_triplets, self.hardest_only)

    def _params(self) -> dict:
        return {"margin": self.margin, "type_of_triplets": self.type_of_triplets, "distance": self.distance,
                "hardest_only": self.hardest_only}


@MINERS.register("semi-hard")
class SemiHardMiner(TripletMarginMiner):
    """Semi-hard triplets (Schroff, Kalenichenko & Philbin 2015, "FaceNet").

    Default: every triplet with ``D(a,p) < D(a,n)`` and ``D(a,n) - D(a,p) <= margin``, the same set as
    pytorch-metric-learning's ``TripletMarginMiner(margin, type_of_triplets="semihard")``.
    ``hardest_only=True``: FaceNet's online semi-hard mining, for each positive pair the closest
    negative farther than the positive, kept only if inside the margin; a positive pair with no
    semi-hard negative is dropped (FaceNet falls back to another negative; we do not).
    ``type_of_triplets`` may be set to ``"hard"``, ``"easy"`` or ``"all"`` as in
    :class:`TripletMarginMiner`.

    >>> miner = SemiHardMiner(margin=0.2, hardest_only=True)
    """

    def __init__(self, margin: float = 0.2, distance: str = "euclidean", hardest_only: bool = False,
                 type_of_triplets: str = "semihard"):
        super().__init__(margin, type_of_triplets, distance, hardest_only)


@MINERS.register("distance-weighted")
class DistanceWeightedMiner(Miner):
    """Distance-weighted sampling (Wu, Manmatha, Smola & Krahenbuhl, ICCV 2017, "Sampling Matters in
    Deep Embedding Learning").

    On L2-normalised embeddings in dimension n, pairwise distances of uniform points follow
    ``q(d) ∝ d^{n-2} [1 - d^2/4]^{(n-3)/2}``; for each positive pair ``(a, p)`` one negative is drawn
    with probability ∝ ``1 / q(max(D(a,n), cutoff))`` and 0 where ``D(a,n) >= nonzero_loss_cutoff``
    (computed in log space). An anchor whose negatives all have zero weight samples uniformly among
    them. The distance is euclidean; the paper's distribution holds on the unit sphere only, so
    embeddings (and ``ref_embeddings``) must be L2-normalised (normalise in the model head): other
    input raises a ``ValueError``.

    ``seed``: None (use torch's global generator), an int (a private generator seeded once at
    construction, so two miners with the same seed give the same sequence of outputs) or a
    ``torch.Generator``.

    >>> miner = DistanceWeightedMiner(seed=0)
    >>> emb = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    >>> a, p, n = miner(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    >>> len(a)
    8
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                 seed: int | torch.Generator | None = None):
        super().__init__("euclidean")
        self.cutoff = check_number("cutoff", cutoff, low=0.0, strict=True)
        self.nonzero_loss_cutoff = check_number("nonzero_loss_cutoff", nonzero_loss_cutoff, low=0.0, strict=True)
        if self.nonzero_loss_cutoff <= self.cutoff:
            raise ValueError(f"nonzero_loss_cutoff: expected a value above cutoff={self.cutoff}, "
                             f"got {self.nonzero_loss_cutoff}")
        self._seed(seed)

    @staticmethod
    def _check_unit_norm(x: torch.Tensor, name: str) -> None:
        tol = max(1e-3, 10 * torch.finfo(x.dtype).eps)
        norms = x.float().norm(dim=1)
        if x.shape[0] and ((norms - 1).abs() > tol).any():
            raise ValueError(
                f"{name}: DistanceWeightedMiner expects L2-normalised rows (the distance distribution of "
                f"Wu et al. 2017 holds on the unit sphere); got norms in [{norms.min().item():.4g}, "
                f"{norms.max().item():.4g}]. Normalise in the model head (e.g. F.normalize(x, dim=1)).")

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        self._check_unit_norm(embeddings, "embeddings")
        if ref_embeddings is not embeddings:
            self._check_unit_norm(ref_embeddings, "ref_embeddings")
        dist = distances.euclidean(embeddings, ref_embeddings)
        return F.distance_weighted_negatives(dist, pos_mask, neg_mask, embeddings.shape[1], self.cutoff,
                                             self.nonzero_loss_cutoff, self.generator(embeddings.device))

    def _params(self) -> dict:
        return {"cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff, "seed": self.seed}


@MINERS.register("multi-similarity")
class MultiSimilarityMiner(Miner):
    """Multi-similarity pair mining (Wang, Han, Huang, Dong & Scott, CVPR 2019).

    With similarities S, keeps positive pairs with ``S_ik - epsilon < max_{j in N(i)} S_ij`` and
    negative pairs with ``S_ij + epsilon > min_{k in P(i)} S_ik``. S is the cosine similarity for
    ``distance="cosine"`` (the default), the dot product for ``"dot"`` and ``-D`` for the euclidean
    distances. Equal, as sets of pairs, to pytorch-metric-learning's ``MultiSimilarityMiner(epsilon)``.

    >>> a1, p, a2, n = MultiSimilarityMiner(epsilon=0.1)(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]))
    """

    def __init__(self, epsilon: float = 0.1, distance: str = "cosine"):
        super().__init__(distance)
        self.epsilon = check_number("epsilon", epsilon)

    def similarities(self, embeddings: torch.Tensor, ref_embeddings: torch.Tensor) -> torch.Tensor:
        if self.distance == "cosine":  # the similarity itself, not 1 - (1 - cos), to agree bit for bit
            return distances.cosine_similarity(embeddings, ref_embeddings)
        if self.distance == "dot":
            return distances.dot(embeddings, ref_embeddings)
        return -distances.pairwise(embeddings, ref_embeddings, self.distance)

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        return F.multi_similarity_pairs(self.similarities(embeddings, ref_embeddings), pos_mask, neg_mask,
                                        self.epsilon)

    def _params(self) -> dict:
        return {"epsilon": self.epsilon, "distance": self.distance}


@MINERS.register("pair-margin")
class PairMarginMiner(Miner):
    """Pair margin mining: positive pairs farther than ``pos_margin`` and negative pairs closer than
    ``neg_margin``, the pairs a contrastive loss with these margins penalises (Hadsell, Chopra, LeCun,
    CVPR 2006). With ``distance="dot"`` (a similarity) the inequalities flip: positives with
    ``S < pos_margin``, negatives with ``S > neg_margin``. Margins are in the units of ``distance``
    (``cosine`` is the cosine *distance* ``1 - cos``). Equal, pair for pair, to
    pytorch-metric-learning's ``PairMarginMiner(pos_margin, neg_margin)`` with the same distance (pml's
    default ``LpDistance`` normalises embeddings; deepmetric never does, so normalise in the head).
    See :func:`deepmetric.functional.mining.pair_margin_pairs`.

    >>> a1, p, a2, n = PairMarginMiner(0.2, 0.8)(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]))
    """

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 0.8, distance: str = "euclidean"):
        super().__init__(distance)
        self.pos_margin = check_number("pos_margin", pos_margin)
        self.neg_margin = check_number("neg_margin", neg_margin)

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        matrix = distances.pairwise(embeddings, ref_embeddings, self.distance)
        return F.pair_margin_pairs(matrix, pos_mask, neg_mask, self.pos_margin, self.neg_margin,
                                   similarity=distances.is_similarity(self.distance))

    def _params(self) -> dict:
        return {"pos_margin": self.pos_margin, "neg_margin": self.neg_margin, "distance": self.distance}


def _check_range(name: str, value):
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name}: expected None or a (low, high) pair, got {value!r}")
    low, high = (check_number(name, v) for v in value)
    if low > high:
        raise ValueError(f"{name}: expected low <= high, got {value!r}")
    return (low, high)


@MINERS.register("batch-easy-hard")
class BatchEasyHardMiner(Miner):
    """Batch easy/hard mining: for each anchor one positive and one negative chosen by strategy
    (Xuan, Stylianou, Pless, WACV 2020, "Improved Embeddings with Easy Positive Triplet Mining";
    ``pos_strategy="hard", neg_strategy="hard"`` is batch-hard, Hermans et al. 2017).

    Strategies ``"easy"``, ``"hard"``, ``"semihard"`` (relative to the pair chosen on the other side)
    or ``"all"`` (every pair of that side): see
    :func:`deepmetric.functional.mining.batch_easy_hard` for the rules. ``allowed_pos_range`` /
    ``allowed_neg_range`` ``(low, high)`` restrict the candidate pairs to values of ``distance`` in
    ``[low, high]`` (similarities for ``dot``), an ``"all"`` side included. Returns
    :class:`Triplets` ``(a, p, n)``, or :class:`Pairs` when a strategy is ``"all"``. Equal to
    pytorch-metric-learning's ``BatchEasyHardMiner`` with the same arguments (which returns the
    triplets as 4-tuples of pairs), except that pml ignores the allowed range on an ``"all"`` side.

    >>> a, p, n = BatchEasyHardMiner("easy", "semihard")(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]))
    """

    def __init__(self, pos_strategy: str = "easy", neg_strategy: str = "semihard",
                 allowed_pos_range: tuple[float, float] | None = None,
                 allowed_neg_range: tuple[float, float] | None = None, distance: str = "euclidean"):
        super().__init__(distance)
        F.check_easy_hard_strategies(pos_strategy, neg_strategy)
        self.pos_strategy, self.neg_strategy = pos_strategy, neg_strategy
        self.allowed_pos_range = _check_range("allowed_pos_range", allowed_pos_range)
        self.allowed_neg_range = _check_range("allowed_neg_range", allowed_neg_range)

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        matrix = distances.pairwise(embeddings, ref_embeddings, self.distance)
        return F.batch_easy_hard(distances.as_ascending(matrix, self.distance), pos_mask, neg_mask,
                                 self.pos_strategy, self.neg_strategy, self.allowed_pos_range,
                                 self.allowed_neg_range, range_values=matrix)

    def _params(self) -> dict:
        return {"pos_strategy": self.pos_strategy, "neg_strategy": self.neg_strategy,
                "allowed_pos_range": self.allowed_pos_range, "allowed_neg_range": self.allowed_neg_range,
                "distance": self.distance}


@MINERS.register("angular")
class AngularMiner(Miner):
    """Angular mining (Wang, Zhou, Wen, Liu, Lin, ICCV 2017, "Deep Metric Learning with Angular
    Loss"): every valid triplet whose angle at the negative,
    ``atan(||x_a - x_p|| / (2 ||x_n - (x_a + x_p)/2||))``, exceeds ``angle`` degrees: the triplets
    violating the angular constraint. The paper's embeddings are L2-normalised; normalise in the model
    head (deepmetric never normalises inside a miner; pytorch-metric-learning's ``AngularMiner(angle)``
    does, and on normalised input the two give the same triplets). Memory ``O(B R)`` per chunk of
    positive pairs, and ``O(R^2)`` with a separate reference set (its Gram matrix); see
    :func:`deepmetric.functional.mining.angular_triplets`.

    >>> a, p, n = AngularMiner(angle=20)(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]))
    """

    def __init__(self, angle: float = 20.0):
        super().__init__("euclidean")
        self.angle = check_number("angle", angle)
        if not 0.0 <= self.angle < 90.0:
            raise ValueError(f"angle: expected degrees in [0, 90), got {angle}")

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        same = ref_embeddings is embeddings
        gram = embeddings @ ref_embeddings.T
        ref_gram = gram if same else ref_embeddings @ ref_embeddings.T
        sq = None if same else embeddings.pow(2).sum(1)
        return F.angular_triplets(gram, ref_gram, pos_mask, neg_mask, math.radians(self.angle), sq)

    def _params(self) -> dict:
        return {"angle": self.angle}


@MINERS.register("uniform-histogram")
class UniformHistogramMiner(Miner):
    """Uniform histogram mining (pytorch-metric-learning's ``UniformHistogramMiner``): for positive
    and negative pairs separately, the range of their distances is cut into ``num_bins`` equal bins
    and ``pos_per_bin`` / ``neg_per_bin`` pairs are drawn with replacement from every non-empty bin,
    so the mined pairs cover all distances evenly instead of following the batch's distribution.

    ``seed``: None (torch's global generator), an int (a private generator seeded once, so two
    miners with the same seed give the same sequence of outputs) or a ``torch.Generator``. The random
    draws differ from pml's; the bins and the number of pairs per bin are the same.

    >>> miner = UniformHistogramMiner(num_bins=5, pos_per_bin=2, neg_per_bin=2, seed=0)
    >>> a1, p, a2, n = miner(torch.randn(8, 3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    """

    def __init__(self, num_bins: int = 100, pos_per_bin: int = 10, neg_per_bin: int = 10,
                 distance: str = "euclidean", seed: int | torch.Generator | None = None):
        super().__init__(distance)
        self.num_bins = check_int(num_bins, "num_bins", 1)
        self.pos_per_bin = check_int(pos_per_bin, "pos_per_bin", 1)
        self.neg_per_bin = check_int(neg_per_bin, "neg_per_bin", 1)
        self._seed(seed)

    def mine(self, embeddings, ref_embeddings, pos_mask, neg_mask):
        matrix = distances.pairwise(embeddings, ref_embeddings, self.distance)
        return F.uniform_histogram_pairs(matrix, pos_mask, neg_mask, self.num_bins, self.pos_per_bin,
                                         self.neg_per_bin, self.generator(embeddings.device))

    def _params(self) -> dict:
        return {"num_bins": self.num_bins, "pos_per_bin": self.pos_per_bin, "neg_per_bin": self.neg_per_bin,
                "distance": self.distance, "seed": self.seed}


@MINERS.register("quadlet")
class QuadletMiner(Miner):
    """Quadlets ``(q, p, i, n)`` for hierarchical (order-preserving) losses, from ``(B, L)`` labels
    (column 0 the coarsest) and a "class" ``level`` (default 0): ``p`` shares every level with ``q``
    (same sub-class, ``p != q``), ``i`` shares levels ``0..level`` but not the finest (same class,
    other sub-class), ``n`` differs at a level ``<= level`` (other class). Flat labels have no
    intermediates, so they give no quadlets. Multi-label labels are rejected.

    ``strategy`` (``D`` the ``distance``, smaller is closer):

    * ``"all"``: every valid quadlet (see :func:`deepmetric.functional.mining.all_quadlets`);
    * ``"hard"``: for every positive pair ``(q, p)``, ``i* = argmin_{i} D(q,i)`` and
      ``n* = argmin_{n} D(q,n)`` (see :func:`deepmetric.functional.mining.hard_quadlets`);
    * ``"semi-hard"``: every quadlet with ``D(q,p) < D(q,i) < D(q,n)`` and
      ``D(q,i) < D(q,p) + margin1`` or ``D(q,n) < D(q,i) + margin2`` (ordered, but inside a margin;
      see :func:`deepmetric.functional.mining.semi_hard_quadlets`).

    ``max_quadlets`` caps ``"all"`` and ``"semi-hard"`` (whose output can be ``O(B^4)``): above it,
    that many quadlets are drawn uniformly without replacement with the miner's generator
    (``seed``: None for torch's global generator, an int for a private generator seeded once, or a
    ``torch.Generator``). Mining holds the ``(q, p, i)`` triples and ``O(B R)`` besides, never a ``(B, R, R)``
    tensor.

    >>> labels = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2], [1, 2], [1, 3]])
    >>> q, p, i, n = QuadletMiner("hard")(torch.randn(6, 3), labels)
    >>> len(q)  # one quadlet per positive pair
    4
    """

    def __init__(self, strategy: str = "all", margin1: float = 0.1, margin2: float = 0.2, level: int = 0,
                 distance: str = "squared_euclidean", max_quadlets: int | None = None,
                 seed: int | torch.Generator | None = None):
        super().__init__(distance)
        if strategy not in F.QUADLET_STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(F.QUADLET_STRATEGIES)}, got {strategy!r}")
        self.strategy = strategy
        self.margin1 = check_number("margin1", margin1)
        self.margin2 = check_number("margin2", margin2)
        if self.margin1 < 0 or self.margin2 < 0:
            raise ValueError(f"margin1, margin2: expected numbers >= 0, got {margin1}, {margin2}")
        self.level = check_int(level, "level")
        self.max_quadlets = None if max_quadlets is None else check_int(max_quadlets, "max_quadlets", 1)
        self._seed(seed)

    def relation_masks(self, labels, ref_labels) -> tuple:
        """Positives, intermediates and negatives (:func:`~deepmetric.functional.hierarchical.hierarchy_masks`)."""
        return hierarchy_masks(labels, ref_labels, self.level)

    def mine(self, embeddings, ref_embeddings, pos, inter, neg) -> Quadlets:
        if self.strategy == "all":
            return F.all_quadlets(pos, inter, neg, self.max_quadlets, self.generator(embeddings.device))
        dist = self.ascending_distances(embeddings, ref_embeddings)
        if self.strategy == "hard":
            return F.hard_quadlets(dist, pos, inter, neg)
        return F.semi_hard_quadlets(dist, pos, inter, neg, self.margin1, self.margin2, self.max_quadlets,
                                    self.generator(embeddings.device))

    def _params(self) -> dict:
        return {"strategy": self.strategy, "margin1": self.margin1, "margin2": self.margin2, "level": self.level,
                "distance": self.distance, "max_quadlets": self.max_quadlets, "seed": self.seed}
