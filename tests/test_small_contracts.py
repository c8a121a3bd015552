"""Small contracts of the index, labels, distances, tuples, samplers, models and checkpoints, each worked
by hand. Each was found by mutation testing: a plausible slip in the code that no other test caught."""
import random

import numpy as np
import pytest
import torch

import deepmetric as dm
import deepmetric.index as dmi
from deepmetric.data.samplers import _fill_absent
from deepmetric.distances import euclidean, squared_euclidean
from deepmetric.labels import same_mask
from deepmetric.models.heads import LinearHead, MLPHead
from deepmetric.models.temporal import RecurrentPool, VideoEmbedder
from deepmetric.training.checkpoint import rng_state, set_rng_state
from deepmetric.tuples import Pairs, Triplets


@pytest.mark.parametrize("name", ["exact", "flat"])
def test_removing_a_repeated_id_removes_it_once(name):
    index = dmi.create(name)
    index.add(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), ids=torch.tensor([10, 11, 12]))
    assert index.remove(torch.tensor([11, 11])) == 1 and len(index) == 2


def test_cosine_distances_of_an_inner_product_index_are_never_negative():
    # 1 - cos of a vector with itself rounds below 0 for some vectors (35 of 2,000 random ones)
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    index = dmi.create("flat", distance="cosine")
    index.add(x)
    assert (index.search(x, 1)[0] >= 0).all()


def test_empty_slots_of_an_approximate_search_are_infinitely_far():
    # two far clusters of 50, one list probed: 10 of the 60 slots have no result
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 2, generator=g) * 0.1 + 10, torch.randn(50, 2, generator=g) * 0.1 - 10])
    index = dmi.create("ivf-flat", nlist=2, nprobe=1)
    index.add(x)
    d, ids = index.search(torch.tensor([[10.0, 10.0]]), 60)
    assert (ids[0, 50:] == -1).all() and torch.isinf(d[0, 50:]).all() and torch.isfinite(d[0, :50]).all()


def test_negative_levels_count_from_the_finest():
    y = torch.tensor([[0, 0], [0, 1], [1, 0]])
    assert torch.equal(same_mask(y, level=-2), same_mask(y, level=0))
    assert same_mask(y, level=0).int().tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_distances_of_near_duplicates():
    # rounding makes ||x||^2 + ||y||^2 - 2 x.y slightly negative for near-duplicates: clamped at 0
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0)) * 10
    y = x + torch.randn(300, 8, generator=torch.Generator().manual_seed(1)) * 1e-6
    assert (squared_euclidean(x, y) >= 0).all()
    # a distance of 5e-5 is kept, not rounded to 0 (the square root's guard applies below 1e-12 only)
    d = euclidean(torch.tensor([[0.0, 0.0]]), torch.tensor([[3e-5, 4e-5]]))
    assert d.item() == pytest.approx(5e-5, rel=1e-3)


def test_pairs_count_both_sides():
    assert len(Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0, 1]), torch.tensor([2, 2]))) == 3


def test_tuples_pointing_past_the_batch_or_the_reference_set_are_named():
    loss = dm.losses.create("triplet", margin=1.0)
    x, y = torch.tensor([[0.0], [1.0], [5.0]]), torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="tuples.p"):  # index 3 of a batch of 3
        loss(x, y, Triplets(torch.tensor([0]), torch.tensor([3]), torch.tensor([2])))
    # batch of 2, reference set of 4: a2 indexes the batch
    rx, ry = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="tuples.a2"):
        dm.losses.create("contrastive")(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1]),
                                        Pairs(torch.tensor([0]), torch.tensor([2]), torch.tensor([3]),
                                              torch.tensor([1])), rx, ry)


def test_a_missing_super_class_is_filled_uniformly_from_the_absent_ones():
    # a batch holding super-class 1 and an empty slot, 3 super-classes: the filler is 0 or 2, both drawn
    picks = {int(_fill_absent(torch.tensor([[1, -1]]), 3, torch.Generator().manual_seed(s))[0, 1])
             for s in range(50)}
    assert picks == {0, 2}


def test_heads_keep_their_options():
    layers = [type(layer).__name__ for layer in MLPHead(in_shape=(4,), hidden=(3,), out_features=2, dropout=0.5).net]
    assert layers == ["Linear", "ReLU", "Dropout", "Linear"]  # no dropout on the output
    head = LinearHead(in_shape=(2,), out_features=1, bias=True)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.fill_(3.0)
    assert head(torch.tensor([[1.0, 2.0]])).tolist() == [[3.0]]


def test_recurrent_pooling_of_long_masked_clips_reads_the_real_frames_in_order():
    # padded frames interleaved with the real ones: the pool must see the real frames, in their order
    torch.manual_seed(0)
    pool = RecurrentPool(1, hidden=2)
    for t in (17, 33):
        x = torch.arange(1.0, t + 1).view(1, t, 1)
        mask = torch.ones(1, t, dtype=torch.bool)
        mask[0, 1::3] = False
        torch.testing.assert_close(pool(x, mask), pool(x[:, mask[0]]))


def test_video_embedder_without_normalisation_keeps_the_scale():
    model = VideoEmbedder(in_features=3, pool="mean", hidden=(), out_features=2, normalize=False)
    with torch.no_grad():
        model.head.net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        model.head.net[0].bias.zero_()
    assert model(torch.tensor([[[3.0, 4.0, 0.0], [3.0, 4.0, 0.0]]])).tolist() == [[3.0, 4.0]]


def test_a_saved_random_state_gives_the_same_draws_including_cached_normals():
    # numpy's position and cached normal, and Python's cached gauss value (lost before: resumes differed)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    np.random.standard_normal()  # caches the pair's second normal
    random.gauss(0, 1)
    state = rng_state()
    first = (torch.rand(2).tolist(), np.random.rand(2).tolist(), np.random.standard_normal(), random.gauss(0, 1))
    set_rng_state(state)
    again = (torch.rand(2).tolist(), np.random.rand(2).tolist(), np.random.standard_normal(), random.gauss(0, 1))
    assert first == again
    np.random.seed(1)
    state = rng_state()
    first = np.random.rand(3).tolist()
    set_rng_state(state)
    assert np.random.rand(3).tolist() == first
