"""A weighted sum of losses with their own miners, and the trainer's ``losses:`` config list."""
import pytest
import torch

import deepmetric as dm
from deepmetric.training import checkpoint as ckpt
from deepmetric.training import resolve, train
from deepmetric.training.config import ConfigError


def quiet(*args):
    pass


def test_equals_the_weighted_sum_of_its_parts_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 6, generator=g, dtype=torch.float64), torch.arange(6).repeat(4)
    combined = dm.losses.combine([{"name": "triplet", "margin": 0.3, "miner": {"name": "semi-hard", "margin": 0.3}},
                                  {"name": "contrastive", "neg_margin": 2.0, "weight": 0.25},
                                  {"name": "multi-similarity", "weight": 2.0, "miner": "multi-similarity"}])
    a = x.clone().requires_grad_(True)
    combined(a, y).backward()
    b = x.clone().requires_grad_(True)
    triplet, contrastive = dm.losses.create("triplet", margin=0.3), dm.losses.create("contrastive", neg_margin=2.0)
    ms, semi, msm = (dm.losses.create("multi-similarity"), dm.mining.create("semi-hard", margin=0.3),
                     dm.mining.create("multi-similarity"))
    expected = triplet(b, y, semi(b, y)) + 0.25 * contrastive(b, y) + 2.0 * ms(b, y, msm(b, y))
    expected.backward()
    torch.testing.assert_close(combined(x, y), expected.detach())
    torch.testing.assert_close(a.grad, b.grad)
    assert combined.distance == "euclidean"


def test_given_tuples_reach_the_losses_without_a_miner():
    x, y = torch.randn(12, 4), torch.arange(3).repeat(4)
    tuples = dm.mining.create("batch-hard")(x, y)
    combined = dm.losses.combine(["triplet", {"name": "triplet", "miner": "semi-hard"}])
    triplet = dm.losses.create("triplet")
    expected = triplet(x, y, tuples) + triplet(x, y, dm.mining.create("semi-hard")(x, y))
    torch.testing.assert_close(combined(x, y, tuples), expected)


def test_learnable_parameters_of_every_loss_are_trained_in_the_loss_group(tmp_path):
    """Triplet with batch-hard mining beside a centre loss (Wen et al. 2016) on digits: the centres
    are parameters of the combined loss, get their own optimizer group and move during training."""
    losses = [{"name": "triplet", "miner": "batch-hard"},
              {"name": "center", "num_classes": 3, "embedding_size": 64, "weight": 0.01}]
    config = resolve({"losses": losses}, ["epochs=1", "eval.nmi=false", "optimizer.loss_lr=0.01"])
    torch.manual_seed(config["seed"])
    initial = dm.losses.combine(config["losses"]).state_dict()
    train(config, tmp_path, progress=False, log=quiet)
    state = ckpt.load(tmp_path / "last.pt")
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["model", "loss"]
    assert state["optimizer"]["param_groups"][1]["lr"] == 0.01
    (key,) = [k for k in state["loss"] if k.startswith("losses.1.")]
    assert state["loss"][key].shape == (3, 64)
    assert not torch.equal(state["loss"][key], initial[key])


def test_config_validation():
    config = resolve({"losses": ["triplet", {"name": "contrastive", "miner": "batch-hard", "weight": 0.5}]})
    assert config["losses"] == [{"name": "triplet"},
                                {"name": "contrastive", "miner": {"name": "batch-hard"}, "weight": 0.5}]
    for bad in ([], "triplet", [{"margin": 0.2}], [{"name": "triplet", "miner": {"margin": 1}}]):
        with pytest.raises(ConfigError, match="losses"):
            resolve({"losses": bad})
    with pytest.raises(ValueError, match="weights"):
        dm.losses.combine([{"name": "triplet", "weight": -1.0}])
    with pytest.raises(KeyError, match="no-such-loss"):
        dm.losses.combine(["no-such-loss"])


def test_an_xbm_entry_keeps_its_miner_for_its_memory():
    # the miner of an xbm entry mines against the memory; taken as the entry's miner, it handed batch
    # tuples to xbm, which refused them
    combined = dm.losses.combine([{"name": "xbm", "loss": "triplet", "embedding_size": 2, "memory_size": 8,
                         "miner": "batch-hard"}])
    assert combined.miners == [None] and type(combined.losses[0].miner).__name__ == "BatchHardMiner"
    x, y = torch.tensor([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0], [3.0, 0.2]]), torch.tensor([0, 0, 1, 1])
    alone = dm.losses.create("xbm", loss="triplet", embedding_size=2, memory_size=8, miner="batch-hard")
    torch.testing.assert_close(combined(x, y), alone(x, y))
