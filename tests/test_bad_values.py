"""Extreme but finite values, mixed dtypes and label forms: a clear error or the right answer, never NaN,
a silently wrong value or a crashed process."""
import inspect

import numpy as np
import pytest
import torch

import deepmetric as dm
from deepmetric._checks import ExtremeValuesError
from deepmetric.data.samplers import HierarchicalBatchSampler, MPerClassSampler
from deepmetric.evaluation.clustering import kmeans
from deepmetric.evaluation.verification import pair_distances, verification_scores

B, D, C = 16, 8, 4
HIERARCHICAL = {"quadlet", "pentuplet", "radial", "sgml", "ie"}


def unit_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    flat = torch.arange(C).repeat_interleave(B // C)
    return x, flat, torch.stack([flat // 2, flat], 1)


def make_loss(name):
    kwargs = {}
    params = inspect.signature(dm.losses.LOSSES.get(name)).parameters
    for arg, value in (("num_classes", C), ("embedding_size", D)):
        if arg in params and params[arg].default is inspect.Parameter.empty:
            kwargs[arg] = value
    if name == "xbm":
        kwargs.update(loss=dm.losses.create("contrastive"), memory_size=64)
    torch.manual_seed(1)
    return dm.losses.create(name, **kwargs)


@pytest.mark.parametrize("name", dm.losses.LOSSES.names())
def test_every_loss_refuses_embeddings_it_cannot_compute_with(name):
    x, flat, hier = unit_batch()
    labels = hier if name in HIERARCHICAL else flat
    if name != "fast-ap":  # it needs unit rows (its own error)
        assert torch.isfinite(make_loss(name)(x * 1e17, labels))
        # half precision is computed in float32 (loss_precision), so its whole range is fine
        assert torch.isfinite(make_loss(name)(x.half() * 6e4, labels))
        # near the limits: a finite value or a clear error, never NaN or inf (angular and quadlet gave NaN at 9e18)
        for scale in (1e18, 5e18, 9e18, 1.5e19):
            try:
                value = make_loss(name)(x * scale, labels)
            except ExtremeValuesError as error:
                # a clear error, never a NaN returned (angular and the hierarchical losses reach inf - inf)
                assert "rows too long" in str(error) or "overflow their dtype" in str(error)
            else:
                assert torch.isfinite(value)
        if make_loss(name).distance == "cosine":  # normalising losses are exact up to |x|^2 = float32's largest
            torch.testing.assert_close(make_loss(name)(x * 1e19, labels), make_loss(name)(x, labels))
    # beyond every limit: triplet gave NaN, nt-xent the finite value of zero rows
    with pytest.raises(ExtremeValuesError, match=r"embeddings: rows too long for \w+ distances in torch.float32 "
                                                 r"\(the longest has norm 2e\+19"):
        make_loss(name)(x * 2e19, labels)


def test_a_loss_that_overflows_on_accepted_embeddings_says_so():
    x, _, hier = unit_batch()
    # (2 |x|)^2 = 4e36 fits float32, but the quadlet loss sums such terms past it (it returned inf)
    with pytest.raises(ExtremeValuesError, match="QuadletLoss: the loss is inf on finite embeddings"):
        dm.losses.create("quadlet")(x * 1e18, hier)
    with pytest.raises(ExtremeValuesError, match="rows too long for euclidean distances in torch.float64"):
        dm.losses.create("contrastive")(torch.tensor([[1e154, 0.0], [0.0, 1.0]], dtype=torch.float64),
                                        torch.tensor([0, 0]))  # its square overflowed Python's float


def test_reference_sets_too_long_and_of_another_dtype():
    x, flat, _ = unit_batch()
    loss = dm.losses.create("contrastive")
    with pytest.raises(ValueError, match="ref_embeddings: rows too long"):
        loss(x, flat, None, x * 2e19, flat)
    # a float64 reference set of a float32 batch: computed in float64, as if both were given so
    ref = unit_batch(1)[0].double()
    torch.testing.assert_close(loss(x, flat, None, ref, flat), loss(x.double(), flat, None, ref, flat))
    miner = dm.mining.create("batch-hard")
    for got, want in zip(miner(x, flat, ref, flat), miner(x.double(), flat, ref, flat)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", dm.mining.MINERS.names())
def test_every_miner_refuses_rows_whose_distances_overflow(name):
    x, flat, hier = unit_batch()
    labels = hier if name == "quadlet" else flat
    miner = dm.mining.create(name)
    if name != "distance-weighted":  # it needs unit rows (its own error)
        miner(x * 1e18, labels)
    with pytest.raises(ExtremeValuesError, match="embeddings: rows too long"):
        miner(x * 2e19, labels)


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_kmeans_is_scale_invariant_at_any_magnitude(backend):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, D, generator=g) * 5).repeat_interleave(8, 0) + torch.randn(32, D, generator=g)
    expected = kmeans(x, 4, backend=backend)
    # faiss aborted the process at 1e20 (its float32 squares overflow); scikit-learn gave nmi 0 at 1e160
    for scaled in (x * 1e20, x.double() * 1e160, x.double() * 1e-200):
        assert np.array_equal(kmeans(scaled, 4, backend=backend), expected)
    assert np.array_equal(kmeans(torch.zeros(5, 3), 2, backend=backend) >= 0, np.ones(5, dtype=bool))


def test_exact_index_refuses_float64_distances_beyond_float32():
    x = torch.randn(10, 4, dtype=torch.float64) * 1e30
    index = dm.index.create("exact")
    index.add(x)
    with pytest.raises(ValueError, match="queries: euclidean distances beyond the range of float32"):
        index.search(x[:1] * 1e10, 3)  # they were returned as +inf, the mark of an empty slot
    distances, ids = index.search(x[:1], 3)
    assert ids[0, 0] == 0 and torch.isfinite(distances).all()


def test_cosine_pairs_of_identical_rows_tie_at_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, D, generator=g)
    assert torch.equal(pair_distances(a, a * 4, "cosine"), torch.zeros(40))  # float32 noise was up to 1.2e-7
    scores = verification_scores(a, a, torch.arange(40) % 2 == 0, distance="cosine")
    assert scores["roc_auc"] == 0.5  # every distance is 0: no threshold tells the pairs apart (it was 0.431)
    b = torch.randn(40, D, generator=g)
    want = 1 - (a.double() @ b.double().T).diagonal() / (a.double().norm(dim=1) * b.double().norm(dim=1))
    torch.testing.assert_close(pair_distances(a, b, "cosine"), want.float())
    zero = torch.zeros(2, D)
    assert torch.equal(pair_distances(zero, torch.cat([zero[:1], a[:1]]), "cosine"), torch.ones(2))
    # rows shorter than 1e-12 are divided by 1e-12, as the losses and indexes do (distances.l2_normalize)
    tiny = a[:1] * 1e-14
    torch.testing.assert_close(pair_distances(tiny, a[:1], "cosine"), 1 - (tiny / 1e-12 * a[:1] / a[:1].norm()).sum(1))


def test_samplers_name_string_labels():
    with pytest.raises(TypeError, match="labels: expected a numeric or bool array, got dtype <U3"):
        MPerClassSampler(["cat", "cat", "dog", "dog"], 2, 4)
    with pytest.raises(TypeError, match="labels: expected a numeric or bool array"):
        HierarchicalBatchSampler([["a", "x"], ["a", "y"]], 1, 1, 1)
    assert [sorted(b) for b in MPerClassSampler([0, 0, 1, 1], 2, 4)] == [[0, 1, 2, 3]]


def test_small_argument_checks_of_the_error_audit():
    from deepmetric.data.video import resample_indices
    from deepmetric.evaluation.hierarchy import order_preservation
    from deepmetric.evaluation.ranking import relevance

    x = torch.tensor([[0.0], [0.1], [1.0], [5.0], [5.1], [6.0]])
    y = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0], [1, 0], [1, 1]])
    assert order_preservation(x, y) == 1.0
    bad = x.clone()
    bad[3] = float("nan")  # it gave 0.33 instead of an error
    with pytest.raises(ValueError, match=r"embeddings: contains NaN or infinite values \(first bad rows: \[3\]\)"):
        order_preservation(bad, y)
    with pytest.raises(ValueError, match="embeddings: expected 6 rows .*got 5"):
        order_preservation(x[:5], y)
    with pytest.raises(ValueError, match=r"distance: unknown name \['cosine'\]"):  # was "unhashable type: 'list'"
        dm.distances.check_distance(["cosine"])
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"indices: expected gallery indices in \[0, 2\) \(or -1 for padding\), "
                                         r"got -3"):  # below -1 was read as padding
        relevance(torch.tensor([[-1, 0], [1, -3]]), labels, labels)
    assert relevance(torch.tensor([[-1, 0], [1, 0]]), labels, labels).tolist() == [[False, True], [True, False]]
    for fps in (float("nan"), float("inf"), 0, True):
        with pytest.raises(ValueError, match="fps: expected a finite positive number"):
            resample_indices(torch.arange(4) / 10, fps)
    with pytest.raises(ValueError, match=r"timestamps: expected ascending finite times, got \[0.5, 0.1"):
        resample_indices(torch.tensor([0.5, 0.1, 0.9, 0.2]), 10)  # it returned the 0.1 s frame for 0.5 s
    assert resample_indices(torch.arange(10) / 10, 5)[0].tolist() == [0, 2, 4, 6, 8]
    from deepmetric.functional.mining import multi_similarity_pairs
    mask = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^sim: expected a \(B, R\) matrix, got shape \(4,\)"):  # it said "dist"
        multi_similarity_pairs(torch.zeros(4), mask, mask)


def test_model_sizes_and_switches_are_checked_not_converted(tmp_path):
    models = dm.models.MODELS
    # out_features=12.7 built 12 outputs, normalize="false" normalised, clusters=2.5 made 2, -5 a raw torch error
    for spec, message in [({"name": "mlp", "out_features": 12.7}, "out_features: expected an integer >= 1, got 12.7"),
                          ({"name": "linear", "out_features": -5}, "out_features: expected an integer >= 1, got -5"),
                          ({"name": "mlp", "hidden": (8, 0)}, "hidden: expected an integer >= 1, got 0"),
                          ({"name": "cnn", "channels": (4, 2.5)}, "channels: expected an integer >= 1, got 2.5")]:
        with pytest.raises(ValueError, match=message):
            models.create(spec, in_shape=(1, 28, 28) if spec["name"] == "cnn" else (6,))
    with pytest.raises(TypeError, match="normalize: expected True or False, got 'false'"):
        models.create({"name": "mlp", "normalize": "false"}, in_shape=(6,))
    for spec in ({"name": "video", "hidden": [12.7]}, {"name": "video", "pool": {"name": "attention", "hidden": 2.5}}):
        with pytest.raises(ValueError, match=r"hidden: expected an integer >= 1, got 1?2.[57]"):
            models.create(spec, in_shape=(4, 6))
    video = models.create({"name": "video", "hidden": np.int64(5), "out_features": 3}, in_shape=(4, 6))
    assert video.head.net[0].out_features == 5
    with pytest.raises(ValueError, match="clusters: expected an integer >= 1, got 2.5"):
        models.create({"name": "video", "pool": {"name": "netvlad", "clusters": 2.5}}, in_shape=(4, 6))
    with pytest.raises(TypeError, match="hardest_only: expected True or False"):
        dm.mining.create("triplet-margin", hardest_only="no")
    assert models.create({"name": "mlp", "out_features": np.int64(3), "normalize": np.bool_(True)},
                         in_shape=(6,))(torch.zeros(2, 6)).shape == (2, 3)
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04not a pickle")  # torch advised weights_only=False
    with pytest.raises(ValueError, match="weights: checkpoint .*junk.pt could not be read") as raised:
        models.create({"name": "frozen", "backbone": "linear", "weights": str(tmp_path / "junk.pt")}, in_shape=(4,))
    assert "weights_only" not in str(raised.value)


def test_a_feature_cache_manifest_without_a_key_says_which(tmp_path):
    import json

    from deepmetric.data import features
    cache = features.cache_features("c", [("a", torch.zeros(2, 3, 4, 4))], lambda x: x.flatten(1)[:, :5],
                                    out_dir=tmp_path, description="first five", progress=False)
    manifest = json.loads((cache.directory / "manifest.json").read_text())
    del manifest["dim"]
    (cache.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest .* is invalid: missing key 'dim'"):  # it said only: 'dim'
        features.FeatureCache.open(cache.directory)
